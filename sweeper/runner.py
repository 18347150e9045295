"""Runs a sweep on Ray Tune: searcher, scheduler, resources, storage, checkpoints, resume.

    outcome = launch(sweep, address=None)   # local Ray sized to this machine, or join a cluster

The Ray experiment lives at `storage/name`: a local directory, or a URI (`s3://bucket/prefix`,
`gs://...`, any pyarrow/fsspec filesystem; query parameters such as `?endpoint_override=...`
stay at the end). Launching a sweep whose experiment already exists there continues it
(finished trials are not rerun, running ones resume from their last checkpoint, MLflow runs
continue in place; a damaged Tune state is restored from sweeper's copy or refused, never
started over: `sweeper.tune_state`); `fresh=True` moves a local experiment aside. Before any trial is
dispatched, a node-local `storage` on a multi-node cluster is refused (`storage_problem`).
The runner knows nothing about detection: it drives `sweeper.trainable.run_trial`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sweeper.config import Sweep, redact_uri

STATE_FILE = "sweeper.json"
TENSORBOARD_ENV = "SWEEPER_TENSORBOARD"  # "1": Tune also writes TensorBoard event files per trial
# The schedulers' records, so a resumed sweep keeps judging trials alike. In a subdirectory: on
# restore Tune copies the experiment's top-level .json/.pkl files into its staging dir and, while
# the sweep runs, back over the originals, so a top-level file would revert to its pre-resume state.
ASHA_STATE = "scheduler/asha_rungs.json"
PROMOTION_STATE = "scheduler/promotion.json"
CONSOLE_LOG = "console.log"  # the console's event lines, dated (sweeper.console)


def _failure_budget_class():  # noqa: ANN202 - defined lazily: Ray is imported only when a sweep runs
    from ray.tune import Callback, Stopper

    class FailureBudget(Callback, Stopper):
        """Stops the whole sweep once more than `limit` trials have failed for good: a broken
        dataset or script should not burn a cluster-night failing trial after trial."""

        def __init__(self, limit: int) -> None:
            self.limit, self.failed = limit, 0

        def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
            self.failed += 1

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.failed > self.limit

    return FailureBudget


@dataclass
class Outcome:
    """What a launch ended with."""

    name: str
    experiment_dir: str
    parent_run_id: str
    num_trials: int
    finished: int
    stopped: int
    failed: int
    interrupted: bool
    resumed: bool
    failure_budget_hit: bool
    best: dict[str, Any] | None
    wall_s: float
    board: dict[str, Any] | None = None  # the leaderboard read at the end (None: no launch recorded yet)
    time_limit_reached: bool = False  # budget.time_limit ended it: running trials checkpointed, resumable


def config_hash(sweep: Sweep) -> str:
    """Identity of a sweep's content: a relaunch must not silently continue a different sweep.
    `budget.time_limit` is left out: it bounds one launch, not what trials compute, so a resume
    may run with another limit; so are secret values (`secret_keys.public_raw`), which a resume
    is given again."""
    from sweeper.config.secret_keys import public_raw

    raw = public_raw(sweep.raw)  # a secret's value is not part of a sweep's identity (and may be rotated)
    if isinstance(raw.get("budget"), dict) and "time_limit" in raw["budget"]:
        raw = {**raw, "budget": {k: v for k, v in raw["budget"].items() if k != "time_limit"}}
    doc = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def trial_dirname(trial) -> str:  # noqa: ANN001 - ray.tune.experiment.Trial
    """`trial_<id>`: Ray's default name embeds the params (`lr=0.01,bs=4`), which breaks scripts
    that get the trial dir on their command line (Hydra reads `=` and `,` as syntax)."""
    return f"trial_{trial.trial_id}"


def _local_dir(path: str) -> Path | None:
    """The directory of a local path or `file://` URI; None for remote storage."""
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    return None if "://" in path else Path(path)


def driver_dir(sweep: Sweep) -> Path:
    """Where the driver keeps its own files: the experiment directory for local storage; for a
    URI, `runs/NAME` in the launch directory (a copy of the state, so `sweeper resume NAME`
    finds the experiment, and ASHA's rungs)."""
    return _local_dir(sweep.experiment_dir) or Path(sweep.cwd) / "runs" / sweep.name


def _filesystem(uri: str):  # noqa: ANN202 - (pyarrow.fs.FileSystem, path in it)
    """The filesystem Ray itself would use for `uri`: pyarrow's (s3, gs, hdfs), else fsspec's."""
    import pyarrow
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def _read_state(experiment: str | Path) -> dict[str, Any] | None:
    """What launch recorded in the experiment (`sweeper.json`), local or remote; None if absent."""
    local = _local_dir(str(experiment))
    if local is not None:
        path = local / STATE_FILE
        return _parse_state(path.read_bytes(), str(path)) if path.is_file() else None
    fs, path = _filesystem(str(experiment))
    try:
        with fs.open_input_stream(f"{path}/{STATE_FILE}") as fh:
            return _parse_state(fh.read(), f"{redact_uri(str(experiment))}/{STATE_FILE}")
    except FileNotFoundError:
        return None


def _parse_state(data: bytes, where: str) -> dict[str, Any]:
    """`sweeper.json` as launch wrote it; a damaged one is a SweepConfigError naming the file (the
    CLI prints it without a traceback and exits 2)."""
    from sweeper.config import SweepConfigError

    try:
        state = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SweepConfigError(where, None, f"damaged ({exc}); it records which sweep file and MLflow run the "
                               "experiment belongs to: restore it from a backup, or start over with "
                               "`sweeper launch SWEEP_FILE --fresh` (the old experiment is moved aside)") from None
    if not isinstance(state, dict) or "parent_run_id" not in state:
        raise SweepConfigError(where, None, "not a sweeper state file (no parent_run_id); restore it or launch "
                               "with --fresh")
    return state


def _write_state(experiment: str, state: dict[str, Any]) -> None:
    local = _local_dir(experiment)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        (local / STATE_FILE).write_text(json.dumps(state))
        return
    fs, path = _filesystem(experiment)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{STATE_FILE}") as fh:
        fh.write(json.dumps(state).encode())


# --------------------------------------------------------------------------- shared storage
#: filesystem types (/proc/mounts) that every node of a cluster can mount at the same path
SHARED_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph", "glusterfs",
    "fuse.glusterfs", "wekafs", "panfs", "fuse.juicefs", "fuse.gcsfuse", "fuse.s3fs", "fuse.sshfs",
    "fuse.mountpoint-s3", "fuse.rclone",
})
SHARED_ENV = "SWEEPER_SHARED_STORAGE"  # directories, ':'-separated, that every node mounts at the same path


def storage_problem(storage: str, alive_nodes: int, fstype: str | None, declared: list[str]) -> str | None:
    """Why `storage` cannot hold a sweep on a cluster of `alive_nodes` nodes; None if it can.

    Ray's trials write their checkpoints to `storage` from the node they run on, and a retried
    or resumed trial restores from it on whichever node it lands. A directory on one node's local
    disk breaks both as soon as a second node exists, and Ray only notices when a trial first
    saves. Accepted: any URI (`s3://`, `gs://`, ...), a path on a network filesystem (`fstype`
    in SHARED_FSTYPES, as /proc/mounts names it), or a path under a directory the user declares
    shared in $SWEEPER_SHARED_STORAGE (an NFS mount this check cannot recognise, or several Ray
    nodes on one machine).
    """
    local = _local_dir(storage)
    if local is None or alive_nodes <= 1 or (fstype or "") in SHARED_FSTYPES:
        return None
    path = Path(os.path.abspath(local))
    for root in declared:
        if root and (path == Path(os.path.abspath(root)) or Path(os.path.abspath(root)) in path.parents):
            return None
    return (f"{storage} is on this machine's local disk ({fstype or 'unknown filesystem'}) but the Ray "
            f"cluster has {alive_nodes} nodes: trials on the other nodes would write their checkpoints "
            "to their own disks, where the driver cannot see them and a retried or resumed trial "
            "cannot restore them. Use object storage (storage: s3://bucket/prefix or gs://bucket/prefix; "
            "credentials from the usual AWS_*/GOOGLE_* variables on every node), a path on a shared "
            f"filesystem (NFS, Lustre, GPFS, ...), or declare a directory every node mounts at the same "
            f"path: {SHARED_ENV}=/mnt/team (':'-separated)")


def _fstype(path: Path) -> str | None:
    """The filesystem type of the mount holding `path` (longest mount point), from /proc/mounts."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    real = Path(os.path.realpath(path))
    best, kind = "", None
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        if (real == Path(point) or Path(point) in real.parents) and len(point) > len(best):
            best, kind = point, fstype
    return kind


def check_storage(sweep: Sweep) -> None:
    """Refuse a node-local `storage` on a multi-node cluster, before any trial is dispatched."""
    import ray

    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    local = _local_dir(sweep.spec.storage)
    fstype = _fstype(local) if local is not None and alive > 1 else None
    problem = storage_problem(sweep.spec.storage, alive, fstype, os.environ.get(SHARED_ENV, "").split(":"))
    if problem:
        from sweeper.config import SweepConfigError

        raise SweepConfigError(sweep.file, "storage", problem)


def check_writable(sweep: Sweep) -> None:
    """Refuse a `storage` the experiment cannot be written to (a regular file in the way, a
    read-only mount, a bucket without write access), before the launch creates its MLflow parent
    run: Ray would fail only when it first writes, leaving a launch without trials recorded."""
    from sweeper.config import SweepConfigError

    exp_dir = sweep.experiment_dir
    local = _local_dir(exp_dir)
    probe = f".sweeper-write-probe-{os.getpid()}"
    try:
        if local is not None:
            existing = next(p for p in (local, *local.parents) if p.exists())  # not created here: --fresh moves it
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a directory")
            (existing / probe).write_bytes(b"")
            (existing / probe).unlink()
        else:
            fs, path = _filesystem(exp_dir)
            fs.create_dir(path, recursive=True)
            with fs.open_output_stream(f"{path}/{probe}") as fh:
                fh.write(b"")
            fs.delete_file(f"{path}/{probe}")
    except Exception as exc:  # noqa: BLE001 - whatever the filesystem raises, the answer is the same
        raise SweepConfigError(sweep.file, "storage", f"the experiment directory {redact_uri(exp_dir)} cannot be written "
                               f"({exc}); choose a writable `storage` (--set storage=DIR) or fix its "
                               "permissions. Nothing was started; earlier launches are unchanged") from None


def _init_ray(address: str | None, sweep: Sweep | None) -> bool:
    """Connect to Ray (or start a local one); True if this call did, so launch disconnects after."""
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trial table says it all
    if ray.is_initialized():
        return False
    # Tune reuses a trial's worker only if the trial function returned within
    # TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) of its end; a command trial may take its stop grace
    # period to end the script's processes (and let it finish a final save), so allow for that.
    env_vars = {}
    if sweep is not None and sweep.spec.command is not None:
        env_vars["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(int(math.ceil(2 * sweep.spec.command.stop_grace_s)) + 5)
        os.environ.update(env_vars)  # a local Ray's workers inherit the driver's environment
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env_vars} if env_vars else None)
        return True
    # A local Ray sized to this machine; the dashboard is not needed to run a sweep.
    # address="local": always a fresh local instance, never a stale cluster left in ray_current_cluster.
    # Workers inherit this environment as it is (HF_HUB_OFFLINE included: whether trials may
    # download pretrained weights is the user's choice, checked by tasks.check_sweep).
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
    return True


def max_concurrent(sweep: Sweep) -> int:
    """Trials at once: `budget.max_concurrent`, else what the cluster's nodes fit (`trials_that_fit`)."""
    import ray

    if sweep.spec.budget.max_concurrent:
        return sweep.spec.budget.max_concurrent
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = trials_that_fit(sweep.spec.resources.cpu, sweep.spec.resources.gpu, nodes)
    return max(1, min(fits, sweep.num_trials))


#: Ray counts resources in units of 1/10000 (so 0.1 GPU x 10 is exactly one GPU)
_RAY_UNITS = 10_000


def trials_that_fit(need_cpu: float, need_gpu: float, nodes: list[dict[str, float]]) -> int:
    """How many trials of `need_cpu` CPUs and `need_gpu` GPUs Ray can run at once on `nodes` (each
    alive node's `Resources`), counted node by node as Ray places them: a trial's resources come
    from one node, a fraction of a GPU from one GPU (0.4 GPU: 2 per GPU, not 2.5), and in Ray's
    units, so 0.1 GPU packs 10 to a GPU (float division would say 9)."""
    def units(x: float) -> int:
        return int(round(float(x) * _RAY_UNITS))

    total = 0
    for res in nodes:
        n = units(res.get("CPU", 0)) // max(1, units(need_cpu))
        if need_gpu:
            whole = units(res.get("GPU", 0)) // _RAY_UNITS  # GPUs on the node
            n = min(n, whole * (_RAY_UNITS // units(need_gpu)) if need_gpu < 1 else whole // int(need_gpu))
        total += n
    return total


def check_resources(sweep: Sweep, local: bool = False) -> None:
    """Refuse a trial that no node can hold: Ray would keep it pending forever (a sweep asking for
    GPUs on a cluster without any waits, silent, until someone looks). `local`: the Ray is the one
    this launch started on this machine (no --address), which the message says."""
    import ray

    need_cpu, need_gpu = sweep.spec.resources.cpu, sweep.spec.resources.gpu
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = resources_problem(need_cpu, need_gpu, nodes, local=local)
    if problem:
        from sweeper.config import SweepConfigError

        field, text = problem
        raise SweepConfigError(sweep.file, field, text)


def resources_problem(need_cpu: float, need_gpu: float, nodes: list[dict[str, float]],
                      local: bool = False) -> tuple[str, str] | None:
    """(field, why) when no node of `nodes` (Ray's `Resources` of each alive node) holds one trial's
    `resources`; None when one does."""
    if any(r.get("CPU", 0) >= need_cpu and r.get("GPU", 0) >= need_gpu for r in nodes):
        return None
    have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes)
    where = "this machine's Ray (started by this launch: no --address)" if local else "the Ray cluster"
    if any(r.get("CPU", 0) >= need_cpu for r in nodes):  # the CPUs are there: the GPUs are missing
        most = max(r.get("GPU", 0) for r in nodes)
        fix = ("launch on a machine whose NVIDIA GPUs Ray detects, or join a cluster that has them "
               "(--address)" if local else "start the GPU nodes with their GPUs (`ray start --num-gpus N`; "
               "Ray detects them where the NVIDIA driver works)")
        return "resources.gpu", (f"a trial asks for {need_gpu:g} GPU but no node of {where} has that many "
                                 f"({'no GPUs at all' if not most else f'at most {most:g} GPU on one node'}; "
                                 f"nodes: {have}), so no trial would ever start: {fix}, or set resources.gpu "
                                 "lower (0: train on CPUs)")
    return "resources", (f"a trial asks for {need_cpu:g} CPU and {need_gpu:g} GPU but no node of {where} has "
                         f"that (nodes: {have})")


def find_experiment(run_dir_or_name: str, storage: str = "runs") -> tuple[str, dict[str, Any]]:
    """`runs/NAME`, just NAME under ./runs, or a storage URI (`s3://bucket/prefix/NAME?...`) ->
    (experiment path or URI, what launch recorded there). A sweep stored at a URI leaves a copy
    of its state in ./runs/NAME, so `sweeper resume NAME` works for it too."""
    if "://" in run_dir_or_name and not run_dir_or_name.startswith("file://"):
        state = _read_state(run_dir_or_name)
        if state:
            return run_dir_or_name, state
    else:
        for candidate in (Path(run_dir_or_name), Path(storage) / run_dir_or_name):
            state = _read_state(candidate) if candidate.is_dir() else None
            if state:
                remote = state.get("experiment", "")
                return (remote if "://" in remote else str(candidate.resolve())), state
    raise LookupError(f"no sweep experiment at {redact_uri(run_dir_or_name)!r} (looked for {STATE_FILE} in "
                      f"{redact_uri(run_dir_or_name)} and {Path(storage) / run_dir_or_name}); pass the directory "
                      "`sweeper launch` printed, e.g. runs/NAME")


def launch(sweep: Sweep, *, address: str | None = None, fresh: bool = False, verbose: int = 0,
           preflight: Callable[[], None] | None = None) -> Outcome:
    """Run (or continue) the sweep to completion; returns counts and the best trial (`_launch`).

    A launch that raises leaves the record of earlier launches as it was: the parent run it
    created is marked FAILED (KILLED on Ctrl-C; `sweeper leaderboard` skips such a run when it
    has no trials), and a resumed launch's parent run gets back the status it had.
    """
    from sweeper import store

    opened: dict[str, Any] = {}  # the parent run this launch created or reopened, until it is closed
    try:
        return _launch(sweep, address=address, fresh=fresh, verbose=verbose, preflight=preflight, opened=opened)
    except BaseException as exc:
        if opened:
            try:
                if opened.get("previous") is not None:
                    store.restore_sweep_run(sweep.spec.tracking.uri, opened["run_id"], opened["previous"])
                else:
                    store.fail_sweep_run(sweep.spec.tracking.uri, opened["run_id"], exc)
            except Exception as second:  # noqa: BLE001 - the launch's own error is the one to show
                print(f"warning: could not mark the launch's MLflow run {opened['run_id']} as ended: {second}")
        raise


def _launch(sweep: Sweep, *, address: str | None, fresh: bool, verbose: int,
            preflight: Callable[[], None] | None, opened: dict[str, Any]) -> Outcome:
    """Run (or continue) the sweep to completion; `opened` gets the parent run once it exists.

    The console is `sweeper.console`'s (a live view on a terminal, plain lines elsewhere);
    `verbose` 1 or 2 also shows Ray's own trial tables (2: every result), 0 keeps them off.

    `preflight` holds checks that need heavy imports (the task's libraries, ~6 s of torch,
    torchvision and timm imports): they run while Ray starts, and no trial is dispatched
    unless they pass.
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler

    from sweeper import console, notify, store, tracking
    from sweeper import time_budget, tune_state
    from sweeper.results import asha_time_attr, time_attr
    from sweeper.scheduler import PersistentASHA
    from sweeper.search import build_searcher
    from sweeper.trainable import run_trial

    from sweeper.config.secret_keys import public_sweep, recorded_overrides

    t0 = time.time()
    spec = sweep.spec
    exp_dir = sweep.experiment_dir
    local = _local_dir(exp_dir)
    chash = config_hash(sweep)
    if not fresh and tune.Tuner.can_restore(exp_dir):  # a damaged Tune state: repaired or refused before Ray starts
        recovered = tune_state.check_before_restore(exp_dir, sweep.file)  # never a silent start-over
        if recovered:
            print(recovered)
    check_writable(sweep)  # before Ray starts and the parent run exists: a failed relaunch leaves no trace
    # Creating a new sqlite store runs MLflow's migrations (~4 s): overlap them with Ray's start.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        checked = pool.submit(preflight or (lambda: None))
        store_ready = pool.submit(store.get_or_create_experiment, spec.tracking.uri, sweep.name)
        started_ray = _init_ray(address, sweep)
        checked.result()  # a bad sweep raises here, before any trial exists
        experiment_id = store_ready.result()
    time_budget.check_against_history(sweep, experiment_id)  # a time_limit shorter than one measured epoch
    board_url = notify.leaderboard_link(spec.tracking.uri, experiment_id)  # what the console and webhook link
    console_log = str(driver_dir(sweep) / CONSOLE_LOG)
    check_resources(sweep, local=started_ray and not address)
    check_storage(sweep)
    # --fresh: the old experiment is moved aside once this launch's parent run exists, so that a
    # relaunch failing before then leaves it in place (and resumable)
    moving = local is not None and fresh and local.exists()
    trainable = tune.with_resources(
        # budget.time_limit: the trials share one clock, started by the first of them to train
        tune.with_parameters(run_trial, sweep=sweep, launch_clock=time_budget.arm(spec.budget.time_limit)),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )

    resumed = not moving and tune.Tuner.can_restore(exp_dir)
    if resumed and fresh and local is None:
        from sweeper.config import SweepConfigError

        raise SweepConfigError(sweep.file, "storage", f"--fresh cannot move {redact_uri(exp_dir)} aside in object "
                               "storage; delete it there or choose another `name`")
    state = (_read_state(exp_dir) or _read_state(driver_dir(sweep))) if resumed else None
    if resumed:
        if state and state.get("config_hash") != chash:
            from sweeper.config import SweepConfigError

            raise SweepConfigError(sweep.file, None, f"{redact_uri(exp_dir)} holds a sweep named {sweep.name!r} "
                                   "made from a different configuration; relaunch with --fresh "
                                   "(the old one is kept beside it) or choose another `name`")
        if state:
            parent_run_id = state["parent_run_id"]  # reopened just before `fit`, once nothing else can fail
        else:
            parent_run_id = store.start_sweep_run(sweep, chash, experiment_id)
            opened["run_id"] = parent_run_id
        print(f"continuing sweep {sweep.name!r} from {redact_uri(exp_dir)}")
        if spec.search_alg.storage not in (None, "memory"):  # the pickled searcher's storage URL is masked
            from sweeper import study

            study.remember(spec.search_alg.storage)
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=False)
        console.adopt(tuner, sweep, board_url, verbose, console_log)
        tracking.adopt(tuner, sweep)  # the restored logger pickled a public sweep: give it the real one
        tune_state.adopt(tuner, exp_dir)
        time_budget.adopt(tuner, spec.budget.time_limit)  # a limit set only now needs its callback
    else:
        parent_run_id = store.start_sweep_run(sweep, chash, experiment_id)
        opened["run_id"] = parent_run_id
        if moving:
            moved_to = f"{local}.{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(local, moved_to)
            print(f"moved the previous experiment aside to {moved_to}")
        budget = spec.budget.max_failed_trials
        failure_budget = _failure_budget_class()(budget) if budget is not None else None
        # ASHA counts what the trials report as their time: epochs, a command trial's steps, or seconds
        scheduler = (PersistentASHA(time_attr=asha_time_attr(spec.scheduler, spec.command), max_t=sweep.asha_max_t,
                                    grace_period=spec.scheduler.grace_period,
                                    reduction_factor=spec.scheduler.reduction_factor,
                                    brackets=spec.scheduler.brackets,
                                    state_path=str(driver_dir(sweep) / ASHA_STATE))
                     if spec.scheduler.name == "asha" else FIFOScheduler())
        if spec.scheduler.promote:  # pause at rungs, promote the top 1/reduction_factor later (sweeper.promotion)
            from sweeper.promotion import PromotionASHA

            scheduler = PromotionASHA(time_attr=time_attr(spec.command), max_t=sweep.max_t,
                                      grace_period=spec.scheduler.grace_period,
                                      reduction_factor=spec.scheduler.reduction_factor,
                                      num_samples=sweep.num_trials, state_path=str(driver_dir(sweep) / PROMOTION_STATE))
        # an ablation is a fixed list of (variant, seed) points: Tune's grid runs each exactly once
        ablation = spec.ablation is not None
        # the searcher is pickled into tuner.pkl and prints its trials: it searches a public sweep (secrets
        # replaced, a searched secret as its aliases); the real sweep reaches trials only through Ray's object store
        searcher = None if ablation else build_searcher(public_sweep(sweep, study_storage=True), max_concurrent(sweep))
        imported = getattr(getattr(searcher, "searcher", None), "warm_start", None)
        if imported is not None:  # the parent run says what seeded the sampler (once: resume restores it)
            store.tag_run(spec.tracking.uri, parent_run_id, imported.tags())
            print(f"warm start: {imported.summary()}")
        aside = getattr(getattr(searcher, "searcher", None), "study_set_aside", None)
        if aside:  # a study of this name outlived its experiment (deleted, or moved aside by --fresh)
            print(f"the earlier Optuna study {sweep.name!r} is kept as {aside!r} in "
                  f"{redact_uri(spec.search_alg.storage or '')}; this launch starts a new one")
        tuner = tune.Tuner(
            trainable,
            param_space={"ablation": tune.grid_search(sweep.ablation_points)} if ablation else None,
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric, mode=spec.objective.mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=1 if ablation else sweep.num_trials,
                max_concurrent_trials=max_concurrent(sweep) if ablation or not sweep.dimensions else None,
                # a new trial reuses a finished trial's worker: no process start, torch already imported
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=spec.storage, verbose=verbose,
                callbacks=[tracking.MLflowTrialLogger(sweep, parent_run_id, experiment_id), CSVLoggerCallback(), JsonLoggerCallback(),
                           console.SweepConsole(sweep, board_url, verbose=bool(verbose), log_path=console_log),
                           tune_state.StateCopy(exp_dir),  # the last good experiment state, for a resume
                           *([failure_budget] if failure_budget else []),
                           *([time_budget.TimeLimit()] if spec.budget.time_limit is not None else [])],
                stop=failure_budget,
                # keep >= 3: a hard kill can otherwise leave state pointing at a pruned checkpoint
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=spec.checkpoint.keep, checkpoint_score_attribute=spec.objective.metric,
                    checkpoint_score_order=spec.objective.mode),
                failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                # a command trial's log lives in its working dir: persist it beside the trial
                sync_config=tune.SyncConfig(sync_artifacts=True),  # command.log, confusion matrices
            ),
        )
    state = {"parent_run_id": parent_run_id, "config_hash": chash, "sweep_file": str(sweep.file),
             "overrides": recorded_overrides(sweep.overrides), "cwd": str(sweep.cwd), "experiment": exp_dir}
    _write_state(exp_dir, state)
    if local is None:  # the driver's copy: `sweeper resume NAME` from the launch directory
        _write_state(str(driver_dir(sweep)), state)

    if resumed and state:
        opened.update(run_id=parent_run_id, previous=store.reopen_sweep_run(spec.tracking.uri, parent_run_id))
    if resumed:
        tune_state.refuse_silent_restart(exp_dir, sweep.file)  # state damage the check above cannot see: an error, not a rerun
    try:
        with _env_while_fitting(_fit_switches(verbose)):
            tuner.fit()  # Ctrl-C makes it return early; _summarize tells
    finally:
        try:  # Tune has written its final state: keep a copy for a later resume
            tune_state.keep_copy(exp_dir)
        except Exception as exc:  # noqa: BLE001 - the sweep's results matter more than the copy
            print(f"warning: could not keep a copy of the experiment state: {exc}")
        console.close_all()  # the live view goes before anything else is printed
        failed_writes = tracking.flush_all()  # MLflow is written on a background thread: let it finish
        if failed_writes:
            print(f"warning: {len(failed_writes)} MLflow writes failed (the first ones are printed above); "
                  f"the trials' results are also in {redact_uri(exp_dir)} (result.json per trial)")
        if started_ray:  # a local Ray stops here, not at interpreter exit (~1 s faster)
            import ray

            ray.shutdown()
    outcome = _summarize(sweep, exp_dir, parent_run_id, resumed, time.time() - t0)
    opened.clear()  # closed by _summarize
    outcome.time_limit_reached = time_budget.reached() and outcome.interrupted  # not when all ended anyway
    notify.announce_end(sweep, outcome, board_url)  # the `end` message; waits (bounded) for queued ones
    return outcome


@contextmanager
def _env_while_fitting(settings: dict[str, str]) -> Iterator[None]:
    """Set environment switches Tune reads when `fit` starts, and put them back after it."""
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fit_switches(verbose: int) -> dict[str, str]:
    """Tune writes each trial's results three ways: result.json and progress.csv (kept: scripts
    and `sweeper` read them) and TensorBoard event files. MLflow is the record here, and the
    TensorBoard writer costs the driver ~2 s of imports before the first trial plus a writer
    thread, so it is off unless SWEEPER_TENSORBOARD=1. Tune 2.60's output engine prints its
    "Configuration for experiment" box, "View detailed results here" and a final trial table
    whatever `RunConfig(verbose)` says; its older engine (RAY_AIR_NEW_OUTPUT=0) prints nothing at
    verbose 0, so that is what the console (`sweeper.console`) gets unless --verbose."""
    switches = {}
    if os.environ.get(TENSORBOARD_ENV) != "1":
        switches["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if not verbose:
        switches["RAY_AIR_NEW_OUTPUT"] = "0"
    return switches


def _summarize(sweep: Sweep, exp_dir: str, parent_run_id: str, resumed: bool, wall_s: float) -> Outcome:
    """Counts from the trials' MLflow status, which the tracking callback sets only when a trial
    really ends. Ray's results cannot tell: on Ctrl-C Tune marks running trials TERMINATED, and
    a finished trial restored by a resume comes back without its `done` flag."""
    from sweeper import store

    try:
        board = store.leaderboard(sweep.spec.tracking.uri, sweep.name)
    except LookupError:
        board = None
    rows = board["rows"] if board else []
    status = [row["status"] for row in rows]
    finished, stopped = status.count("finished"), status.count("stopped")
    failed = status.count("failed") + status.count("diverged")
    interrupted = finished + stopped + failed < sweep.num_trials
    limit = sweep.spec.budget.max_failed_trials
    budget_hit = limit is not None and failed > limit
    best = None
    top = rows[0] if rows else None  # sorted by the objective, best first
    if top and top[board["objective"]] is not None:
        best = {"trial_id": top["trial"], "run_id": top["run_id"], "value": top[board["objective"]]}
    store.finish_sweep_run(sweep.spec.tracking.uri, parent_run_id, best,
                              "KILLED" if interrupted else "FINISHED")
    return Outcome(sweep.name, exp_dir, parent_run_id, sweep.num_trials, finished, stopped, failed,
                   interrupted, resumed, budget_hit, best, wall_s, board)
