"""`sweeper confirm NAME --top K --seeds N`: re-run a search's K best configurations with N seeds.

A search sees each configuration once, with one seed and often with fewer epochs than a real
run: its winner may be a lucky seed. Confirmation re-runs the K best with N seeds each, for
their full length, and says whether the winner really is better::

    plan = confirm.plan("demo", top=3, seeds=3)      # reads MLflow and the search's sweep file
    plan.sweep                                        # the derived sweep, launched as any other

How the K configurations are chosen: the search's latest launch, its trials that *finished*
(ran to `max_t`, or ended by `early_stopping`, which is a converged run), best objective first
(the leaderboard's order, `best_objective`); trials ASHA stopped are not ranked, because their
score comes from fewer epochs than the others' and is not comparable (ASHA stops most trials
at its first rung, so "the best stopped trial" is mostly a statement about epoch 1). Failed,
diverged and running trials are not ranked either. Configurations are compared on the searched
keys only (minus the seed key, which confirmation sets): a configuration found twice counts
once, at its better rank.

The derived sweep is an ablation of the search's own sweep file (as launched: its overrides
included): same task, `base`, `data`, `tracking`, `storage`, resources and concurrency; named
`NAME-confirm` (its own MLflow experiment and Ray experiment directory, so the search's
leaderboard, report and resume are untouched); its `baseline` is rank 1 (rank 1's values put
into `base`), its named variants `rank2` ... `rankK` change only the keys in which they differ
from rank 1; `seeds: N` (0..N-1, the task's seed key); FIFO to `max_t`; no early stopping. It is
written to `<the search's driver dir>/confirm-topK-seedsN.yaml` and launched by the usual runner; running
the same `sweeper confirm` again continues it (finished trials are not rerun).

MLflow: the confirm launch's parent run is tagged `sweeper.confirm_of` (the search's name) and
`sweeper.confirm_source_run` (its parent run), its trial runs `sweeper.confirm_rank`,
`sweeper.confirm_trial` and `sweeper.confirm_trial_run`; the search's parent run gets
`sweeper.confirmed_by` (see `sweeper.confirmed`), which puts the confirmed configurations first
on its leaderboard; the statistics (`sweeper.confirmed.confirm_table`) are logged to the confirm
parent run as `confirm.json`. Runner-level: knows nothing of what the task trains.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeper.config import Sweep, SweepConfigError, load_sweep, set_dotted
from sweeper.config.checks import MAX_SEEDS
from sweeper.config.sweep import is_data_key
from sweeper.confirmed import (CONFIRM_OF, CONFIRM_RANK, CONFIRM_SOURCE_RUN, CONFIRM_TRIAL, CONFIRM_TRIAL_RUN,
                               CONFIRMED_BY, confirm_table, distinguishable, seed_groups)
from sweeper.schema import Ablation
from sweeper.spaces import BASELINE, Dimension

#: the confirm launch of sweep NAME is sweep NAME + this
SUFFIX = "-confirm"
#: the file the derived sweep is written to, in the search's driver directory (one per K and N, so a
#: dry run of another K never rewrites the file a running or finished confirmation resumes from)
FILE = "confirm-top{top}-seeds{seeds}.yaml"
#: a mean ± CI and a paired test need two seeds at least
MIN_SEEDS = 2


@dataclass(frozen=True)
class Candidate:
    """One configuration to confirm: its rank in the search, the trial that found it, its values."""

    rank: int
    trial: str
    run_id: str
    value: float  # the search's best objective for it
    params: dict[str, Any]  # searched key -> typed value
    variant: str  # its name in the confirm launch: baseline (rank 1), rank2, ...


@dataclass(frozen=True)
class Plan:
    """What `sweeper confirm` will launch: the search, the chosen configurations, the derived sweep."""

    name: str
    source: Sweep
    board: dict[str, Any]  # the search's leaderboard (latest launch)
    candidates: list[Candidate]
    sweep: Sweep  # the derived ablation, named NAME-confirm
    file: Path  # where it was written
    seeds: int

    @property
    def configs(self) -> list[dict[str, Any]]:
        """The mapping the tags carry: rank, variant, trial, run id, the search's value."""
        return [{"rank": c.rank, "variant": c.variant, "trial": c.trial, "run_id": c.run_id, "value": c.value}
                for c in self.candidates]


def check_counts(top: int, seeds: int) -> None:
    """K >= 1 configurations, 2 <= N <= MAX_SEEDS seeds: anything else is refused before any work."""
    if top < 1:
        raise SweepConfigError(None, "--top", f"must be at least 1 (the configurations to re-run), got {top}")
    if seeds < MIN_SEEDS:
        raise SweepConfigError(None, "--seeds", f"must be at least {MIN_SEEDS}: one seed gives no confidence "
                               f"interval and no paired test, got {seeds}")
    if seeds > MAX_SEEDS:
        raise SweepConfigError(None, "--seeds", f"{seeds} seeds is more than {MAX_SEEDS}")


def typed_value(dim: Dimension | None, text: Any) -> Any:
    """A searched value back from its MLflow param text: a choice as the space lists it (so `8` stays
    the int 8 and `'8'` the string), an integer range as int, a float range as float."""
    if not isinstance(text, str):
        return text
    if dim is not None and dim.is_categorical:
        for value in dim.values:
            if _param_text(value) == text:
                return value
    elif dim is not None:
        try:
            return int(text) if dim.kind == "randint" else float(text)
        except ValueError:
            pass
    try:  # a value outside the space (a path made absolute, ...): as YAML reads it
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _param_text(value: Any) -> str:
    return str(value)  # as the tracking callback writes params


def top_configurations(rows: list[dict[str, Any]], dimensions: list[Dimension], objective: str, mode: str,
                       top: int, *, name: str, file: Path | None = None,
                       seed_key: str | None = None) -> list[Candidate]:
    """The `top` best distinct configurations among finished trials (leaderboard rows), best first.

    Raises SweepConfigError (field `--top`) when the search has fewer, saying how many it has and
    what its other trials are (stopped by ASHA, failed, running)."""
    keys = [d.key for d in dimensions if d.key != seed_key]
    dims = {d.key: d for d in dimensions}
    finished = [r for r in rows if r.get("status") == "finished" and _number(r.get(objective)) is not None]
    sign = -1.0 if mode == "max" else 1.0
    finished.sort(key=lambda r: sign * float(r[objective]))  # stable: the leaderboard's order on ties
    chosen: list[Candidate] = []
    seen: set[str] = set()
    for r in finished:
        params = {k: typed_value(dims.get(k), r.get(k)) for k in keys}
        signature = json.dumps([[k, repr(params[k])] for k in keys])
        if signature in seen:
            continue
        seen.add(signature)
        rank = len(chosen) + 1
        chosen.append(Candidate(rank=rank, trial=str(r.get("trial")), run_id=str(r.get("run_id")),
                                value=float(r[objective]), params=params,
                                variant=BASELINE if rank == 1 else f"rank{rank}"))
        if len(chosen) == top:
            return chosen
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "finished")
    distinct = f" ({len(chosen)} distinct configurations)" if len(chosen) != len(finished) else ""
    raise SweepConfigError(file, "--top", f"sweep {name!r} has {len(finished)} finished trials{distinct} of "
                           f"{len(rows)}{': ' + others if others else ''}; --top {top} needs {top}. Only trials "
                           "that ran to their end (or ended by early stopping) are ranked: a trial ASHA stopped "
                           "scored fewer epochs. Use a smaller --top, or let the search finish (sweeper resume).")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _same(a: Any, b: Any) -> bool:
    """Equal values (8 and 8.0 too); a bool equals only the same bool, not 1 or 0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def derive_document(source: Sweep, candidates: list[Candidate], seeds: int) -> dict[str, Any]:
    """The confirm launch's sweep document, from the search's (`raw`: the file as launched, overrides
    applied): rank 1 becomes `base` (or `data` for a data key), ranks 2..K named variants of it."""
    doc = copy.deepcopy(source.raw)
    for key in ("search", "include", "early_stopping"):  # confirmation runs every seed to the end
        doc.pop(key, None)
    doc["name"] = source.name + SUFFIX
    scheduler: dict[str, Any] = {"name": "fifo"}
    if source.spec.scheduler.max_t is not None:
        scheduler["max_t"] = source.spec.scheduler.max_t
    doc["scheduler"] = scheduler
    budget = {k: v for k, v in (doc.get("budget") or {}).items() if k != "num_samples"}
    if budget:
        doc["budget"] = budget
    else:
        doc.pop("budget", None)
    from sweeper.config.secret_keys import reveal

    # a searched secret is recorded as its alias (secret-1, ...): the value is the source sweep's
    best = reveal(source, candidates[0].params)
    for key, value in best.items():
        if is_data_key(key, source.spec):
            doc["data"][key.removeprefix("data.")] = value
        else:
            if not isinstance(doc.get("base"), dict):
                doc["base"] = {}
            set_dotted(doc["base"], key, value)
    variants = {c.variant: {k: v for k, v in reveal(source, c.params).items() if not _same(v, best.get(k))}
                for c in candidates[1:]}
    doc["ablation"] = {"variants": variants, "seeds": seeds}
    return doc


def confirm_path(source: Sweep, top: int, seeds: int) -> Path:
    """Where the derived sweep file lives: beside the search's own state (its driver directory)."""
    from sweeper.runner import driver_dir

    return driver_dir(source) / FILE.format(top=top, seeds=seeds)


def load_source(name: str, tracking_uri: str) -> tuple[Sweep, dict[str, Any]]:
    """The search `name` as launched (its sweep file, overrides and launch directory, from
    `runs/NAME/sweeper.json` or, failing that, the file its MLflow parent run names) and its
    leaderboard. An unknown name is refused with the sweeps the store holds."""
    from sweeper import runner, store

    state = _state(name)
    if state is None:
        board = _board(tracking_uri, name)
        path = store.client(tracking_uri).get_run(board["parent_run_id"]).data.tags.get("sweeper.sweep_file")
        if not path or not Path(path).is_file():
            raise SweepConfigError(None, "NAME", f"sweep {name!r} has no runs/{name}/{runner.STATE_FILE} here and "
                                   f"the sweep file its launch recorded ({path}) is gone; run from the "
                                   "directory you launched it in")
        first = load_sweep(path, check_data=False)
        state = _state(first.experiment_dir) or {"sweep_file": path, "overrides": [], "cwd": str(Path.cwd())}
    sweep_file = Path(state["sweep_file"])
    if not sweep_file.is_file():
        raise SweepConfigError(sweep_file, None, f"the sweep file sweep {name!r} was launched from is gone")
    from sweeper.config.secret_keys import is_secret

    hidden = [k for k, _, v in (o.partition("=") for o in state.get("overrides", [])) if v == "***" and is_secret(k)]
    if hidden:  # a secret given with --set is not stored with the experiment (sweeper.config.secret_keys)
        raise SweepConfigError(sweep_file, f"--set {hidden[0]}", f"search {name!r} was launched with the secret "
                               f"{', '.join(hidden)} given on the command line, whose value is not stored; confirm "
                               "cannot re-run it: put the secret in the sweep file's `base` (or `command.env`)")
    source = load_sweep(sweep_file, state.get("overrides", []), cwd=state.get("cwd"), check_data=False)
    if source.name != name:
        raise SweepConfigError(sweep_file, "name", f"names sweep {source.name!r}, not {name!r}")
    return source, _board(source.spec.tracking.uri, name)


def _state(run: str) -> dict[str, Any] | None:
    from sweeper import runner

    try:
        return runner.find_experiment(run)[1]
    except LookupError:
        return None


def _board(uri: str, name: str) -> dict[str, Any]:
    from sweeper import store

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SweepConfigError(None, "NAME", f"no sweep named {name!r}: no runs/{name} here and no MLflow store "
                               f"at {uri[len('sqlite:///'):]}; run from the directory you launched in, or pass "
                               "--tracking-uri")
    try:
        return store.leaderboard(uri, name)
    except LookupError as exc:
        raise SweepConfigError(None, "NAME", str(exc)) from None


def plan(name: str, top: int, seeds: int, tracking_uri: str) -> Plan:
    """Everything `sweeper confirm` checks and builds before anything runs; refusals are
    SweepConfigError (the CLI's exit 2): an unknown sweep, an ablation, too few finished trials,
    K < 1, N < 2."""
    check_counts(top, seeds)
    source, board = load_source(name, tracking_uri)
    if source.spec.ablation is not None or board.get("ablation"):
        raise SweepConfigError(source.file, "ablation", f"sweep {name!r} is an ablation: its variants already "
                               "ran with seeds (sweeper leaderboard NAME --group variant compares them); "
                               "confirm re-runs a search's best configurations")
    candidates = top_configurations(board["rows"], source.dimensions, board["objective"], board["mode"], top,
                                    name=name, file=source.file, seed_key=source.seed_key)
    doc = derive_document(source, candidates, seeds)
    path = confirm_path(source, top, seeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# written by `sweeper confirm {name} --top {top} --seeds {seeds}` from {source.file}: the search's "
              f"{len(candidates)} best configurations x {seeds} seeds; run that command again to continue\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return Plan(name=name, source=source, board=board, candidates=candidates, sweep=_load_derived(path, doc, source),
                file=path, seeds=seeds)


def _load_derived(path: Path, doc: dict[str, Any], source: Sweep) -> Sweep:
    """The derived sweep, validated as any sweep file. One configuration (K = 1) is an ablation with
    no variant, which sweep files cannot say: loaded as a one-trial run, then given its seeds."""
    if doc["ablation"]["variants"]:
        return load_sweep(path, cwd=source.cwd, check_data=False)
    single = path.with_name(path.stem + ".single.yaml")
    plain = {k: v for k, v in doc.items() if k != "ablation"}
    plain["budget"] = {**(plain.get("budget") or {}), "num_samples": 1}
    single.write_text(yaml.safe_dump(plain, sort_keys=False), encoding="utf-8")
    loaded = load_sweep(single, cwd=source.cwd, check_data=False)
    single.unlink()
    spec = loaded.spec.model_copy(update={"ablation": Ablation(seeds=doc["ablation"]["seeds"])})
    return loaded.model_copy(update={"spec": spec, "raw": doc, "file": path})


# --------------------------------------------------------------------------- after the launch
def record(p: Plan) -> str | None:
    """Tag the confirm launch (parent and trial runs) and the search's parent run, log the table;
    returns the confirm launch's parent run id, None when nothing was launched. Runs after the
    launch, also an interrupted one, so the tags follow the trials that exist."""
    from sweeper import runner, store

    state = _state(str(runner.driver_dir(p.sweep)))
    if not state or state.get("config_hash") != runner.config_hash(p.sweep):
        return None
    uri, parent = p.sweep.spec.tracking.uri, state["parent_run_id"]
    c = store.client(uri)
    c.set_tag(p.board["parent_run_id"], CONFIRMED_BY, json.dumps({"sweep": p.sweep.name, "seeds": p.seeds,
                                                                  "configs": p.configs}))
    c.set_tag(parent, CONFIRM_OF, p.name)
    c.set_tag(parent, CONFIRM_SOURCE_RUN, p.board["parent_run_id"])
    c.set_tag(parent, "sweeper.confirm", json.dumps(p.configs))
    by_variant = {cand.variant: cand for cand in p.candidates}
    exp = c.get_experiment_by_name(p.sweep.name)
    for run in c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000):
        cand = by_variant.get(run.data.tags.get("sweeper.variant", ""))
        if cand is not None:
            c.set_tag(run.info.run_id, CONFIRM_RANK, str(cand.rank))
            c.set_tag(run.info.run_id, CONFIRM_TRIAL, cand.trial)
            c.set_tag(run.info.run_id, CONFIRM_TRIAL_RUN, cand.run_id)
    rows = results(p)
    verdict = distinguishable(rows)
    c.set_tag(parent, "sweeper.confirm_winner", str(rows[0]["rank"]) if rows and rows[0]["n"] else "")
    c.set_tag(parent, "sweeper.confirm_distinguishable", "unknown" if verdict is None else str(verdict).lower())
    c.log_dict(parent, {"objective": p.board["objective"], "mode": p.board["mode"], "seeds": p.seeds,
                        "distinguishable": verdict, "rows": rows}, "confirm.json")
    return parent


def results(p: Plan) -> list[dict[str, Any]]:
    """The confirm table of what the confirm launch has finished so far (see `confirm_table`)."""
    from sweeper import store

    board = store.leaderboard(p.sweep.spec.tracking.uri, p.sweep.name)
    return confirm_table(seed_groups(board["rows"]), p.configs, p.board["mode"])
