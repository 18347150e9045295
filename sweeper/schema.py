"""The sweep-file schema: every top-level key, its type, default and unit, validated by pydantic.

`sweeper.config` loads files into these models (includes, `--set`, paths, cross-field checks);
this module only says what a valid file looks like. The schema of `base` is the task's own
(`sweeper/tasks/<task>/spec.py`, found through `sweeper.registry`), so a sweep file is checked
before anything heavy starts. No torch, Ray or MLflow here.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sweeper.durations import parse_duration
from sweeper.registry import Strict


# --------------------------------------------------------------------------- sweep schema
class SynthData(Strict):
    images: int = Field(96, ge=4, description="images to generate (train + val)")
    size: int = Field(128, ge=32, description="image side, px")
    seed: int = Field(0, description="generator seed")


class Folds(Strict):
    """How `data.train` is split for cross-validation: k seeded folds, or the user's own files."""

    k: int | None = Field(None, ge=2, le=1000, description="folds (count): data.train split by image into k "
                          "folds, a pure function of the image file names and `seed`")
    seed: int = Field(0, description="seed of the k-fold split: the same split for every trial and resume")
    files: list[str] | None = Field(None, description="your own split instead of k: one file per fold naming its "
                                    "images (COCO/UFO JSON, ICDAR-2015 gt folder, or one file name per line)")

    @model_validator(mode="after")
    def _k_or_files(self) -> Folds:
        if (self.k is None) == (self.files is None):
            raise ValueError("give either k (split data.train into k folds) or files (one file per fold)")
        if self.files is not None and (len(self.files) < 2 or len(set(self.files)) != len(self.files)):
            raise ValueError("files: at least 2 distinct files, one per fold")
        return self

    @property
    def count(self) -> int:
        """The number of folds."""
        return self.k if self.k is not None else len(self.files or ())


class DataConfig(Strict):
    format: str | None = Field(None, description="the annotation format, one of the task's (`sweeper tasks` "
                               "lists them); default: the task's first")
    train: str = Field(description="training annotations: a COCO/UFO JSON file or an ICDAR-2015 gt folder")
    val: str | None = Field(None, description="validation annotations, like `train`; required unless every trial "
                            "holds out a fold (`fold`), which then replaces it")
    images: str = Field(description="directory the annotation file names are relative to")
    synth: SynthData | None = Field(None, description="generate synthetic data here if missing")
    folds: Folds | None = Field(None, description="split `train` into folds for cross-validation")
    fold: int | None = Field(None, ge=0, description="the held-out fold (index, 0..k-1): train on the other folds "
                             "of `train`, validate on this one instead of `val`; needs `folds`")


#: the most trials one sweep may ask for (`budget.num_samples`, a grid's passes): more is a typo
MAX_TRIALS = 100_000
METRIC_SOURCE = re.compile(r"stdout|(csv|jsonl):.+")


class CommandConfig(Strict):
    run: str = Field(description="shell command; {overrides} is replaced by the trial's values, "
                     "{python} by this interpreter, {trial_dir} by the trial's directory")
    workdir: str = Field(".", description="directory the command runs in; absolute after load, must exist")
    overrides: Literal["hydra", "argparse", "env"] = Field(
        "hydra", description="hydra: key=value; argparse: --key value; env: SWEEPER_PARAM_<KEY>=value")
    metrics: str = Field("stdout", description="stdout (lines `SWEEPER_METRICS {json}`), csv:PATH or "
                         "jsonl:PATH (a file tailed while it grows; PATH may use {trial_dir} and globs)")
    checkpoint_dir_env: str | None = Field(
        "SWEEPER_CHECKPOINT_DIR", description="env var naming the directory the script saves to and "
        "resumes from; persisted as the trial checkpoint")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables (names: letters, "
                                "digits and '_', not starting with a digit)")
    epochs: int | None = Field(None, ge=1, description="epochs the script trains (time_key: epoch); default "
                               "scheduler.max_t")
    time_key: str | list[str] = Field(
        "epoch", description="the record key holding the trial's time, which is also its unit: `epoch` or "
        "`step` (ASHA's grace_period and max_t count in it); a list is tried in order per record, its first "
        "entry the unit (MMEngine by epoch: [epoch, step])")
    first_epoch: Literal[0, 1] | None = Field(
        None, description="the number the script gives its first epoch; default: 0 if it reports an epoch 0")
    stop_grace_s: float = Field(10, ge=0, le=3600, allow_inf_nan=False,
                                description="seconds between SIGTERM and SIGKILL when a trial is stopped (at most 3600)")

    @field_validator("metrics")
    @classmethod
    def _metrics_source(cls, v: str) -> str:
        if not METRIC_SOURCE.fullmatch(v):
            raise ValueError("use stdout, csv:PATH or jsonl:PATH")
        return v

    @model_validator(mode="before")
    @classmethod
    def _renamed_epoch_key(cls, data: Any) -> Any:
        """`epoch_key` (before time_key existed) keeps loading: it was the same list of record keys."""
        if isinstance(data, dict) and "epoch_key" in data and "time_key" not in data:  # both: checks refuses
            data = {("time_key" if k == "epoch_key" else k): v for k, v in data.items()}
        return data

    @field_validator("time_key")
    @classmethod
    def _time_key(cls, v: str | list[str]) -> str | list[str]:
        keys = [v] if isinstance(v, str) else v
        if not keys or keys[0] not in ("epoch", "step"):
            raise ValueError("use epoch or step, or a list of record keys starting with one of them "
                             "(MMEngine by epoch: [epoch, step])")
        if len(set(keys)) != len(keys) or not all(keys):
            raise ValueError("list each record key once")
        return v

    @property
    def time_unit(self) -> str:
        """`epoch` or `step`: what ASHA, `scheduler.max_t` and the MLflow step count."""
        return self.time_key if isinstance(self.time_key, str) else self.time_key[0]

    @field_validator("checkpoint_dir_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be an environment variable name")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [name for name in v if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name (letters, digits, '_')")
        return v


class Ablation(Strict):
    factors: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values, each run "
                                          "against the baseline (`base`)")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> {dotted key: value}: "
                                                "keys changed together (recipe A vs B), run against the baseline "
                                                "like a factor's value")
    seeds: int | list[int] = Field(3, description="every variant runs with these seeds (N = 0..N-1)")
    seed_key: str | None = Field(None, description="the key a seed sets; default train.seed (command: seed)")
    full_factorial: bool = Field(False, description="all combinations instead of one factor at a time")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("needs at least 1 seed")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a non-empty list of distinct seeds")
        return v

    @property
    def seed_values(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class Objective(Strict):
    metric: str = Field(description="metric to optimise, as the task reports it")
    mode: Literal["max", "min"] = "max"


#: Optuna samplers `search_alg.sampler` names (sweeper.search.build_sampler builds them)
SAMPLERS = ("tpe", "gp", "cmaes", "qmc", "random", "nsga2")


class SearchAlg(Strict):
    name: Literal["optuna", "random", "grid"] = Field("optuna", description="optuna = model-based sampler")
    sampler: Literal["tpe", "gp", "cmaes", "qmc", "random", "nsga2"] = Field(
        "tpe", description="Optuna sampler for name: optuna: tpe, gp (Gaussian process), cmaes (CMA-ES, one "
        "objective), qmc (scrambled Sobol), random, nsga2 (NSGA-II, for several objectives)")
    seed: int | None = Field(0, description="sampler seed; null = random")
    storage: str | None = Field(
        None, description="where the Optuna study is kept, so optuna-dashboard (sweeper ui NAME --optuna) shows it "
        "live: a SQLAlchemy URL (sqlite:///optuna.db, postgresql://USER@HOST/DB), `memory` (only in Ray's "
        "searcher state: no dashboard), or null = optuna.db beside the tracking store's mlruns.db")


class Constraint(Strict):
    """A bound on a metric the task reports; a trial outside it is infeasible (for Optuna's
    `constraints_func` and on the leaderboard), judged on the trial's last reported value."""

    metric: str = Field(description="a metric the task reports, e.g. model/params_m")
    max: float | None = Field(None, allow_inf_nan=False, description="feasible when metric <= max")
    min: float | None = Field(None, allow_inf_nan=False, description="feasible when metric >= min")

    @model_validator(mode="after")
    def _a_bound(self) -> Constraint:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g}): no trial could be feasible")
        return self


class Scheduler(Strict):
    name: Literal["asha", "fifo"] = "asha"
    # declared before grace_period and max_t: their validators read it
    time_attr: Literal["epoch", "time_total_s"] = Field(
        "epoch", description="what ASHA's rungs count: epoch (command.time_key: step: steps), or time_total_s, "
        "the trial's training time in seconds (then grace_period and max_t are durations such as 10m, and "
        "max_t is required)")
    grace_period: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="epochs (command.time_key: step: steps; time_attr: time_total_s: seconds, or a "
        "duration such as 10m) every trial runs before it may be stopped; auto: a full epoch after the LR "
        "warmup (train.warmup_epochs), else a quarter of max_t, at most 3 (sweeper.rungs.auto_grace_period)")
    reduction_factor: float = Field(3, gt=1, allow_inf_nan=False, description="keep 1/reduction_factor at each rung")
    max_t: int | None = Field(None, ge=1, description="epochs (command.time_key: step: steps), the last rung; "
                              "default train.epochs (command: command.epochs); time_attr: time_total_s: seconds "
                              "or a duration such as 2h, required")
    brackets: int = Field(1, ge=1, description="ASHA brackets")
    promote: bool = Field(False, description="promotion-based ASHA (name: asha): a trial reaching a rung pauses "
                          "(checkpointed, its worker freed) and resumes later if it is in the top 1/reduction_factor "
                          "of that rung; new trials start only when none is promotable")

    @field_validator("grace_period", "max_t", mode="before")
    @classmethod
    def _seconds_if_timed(cls, v: Any, info: ValidationInfo) -> Any:
        """On `time_total_s` the rungs are seconds: a duration (`10m`, `1h30m`) is read as such."""
        if info.data.get("time_attr") == "time_total_s" and isinstance(v, str) and v != "auto":
            return math.ceil(parse_duration(v))
        if info.field_name == "grace_period" and isinstance(v, str) and v != "auto" and not v.strip().isdigit():
            raise ValueError(f"use a whole number (>= 1) or auto, got {v!r}")
        return v


class Budget(Strict):
    num_samples: int = Field(8, ge=1, le=MAX_TRIALS, description="trials to run (grid: passes over the grid); at "
                             "most 100000")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once; default what fits")
    max_failures: int = Field(0, ge=0, description="retries of a failed trial, from its checkpoint")
    oom_retries: int = Field(3, ge=0, description="after a CUDA out-of-memory error, retry the trial from its "
                             "last checkpoint with twice the micro-batches (half the per-step batch), this often")
    max_failed_trials: int | None = Field(None, ge=0, description="stop the sweep once more trials than this "
                                          "have failed (after their retries); null = never")
    time_limit: float | None = Field(None, description="wall time of one launch or resume from its first trial's "
                                     "start (a duration: 90s, 30m, "
                                     "12h, 1d, 1h30m, or seconds): then running trials finish their epoch, "
                                     "checkpoint and stop, and `sweeper resume` continues them; null = no limit")
    trial_time_limit: float | None = Field(None, description="training time of one trial (a duration, as "
                                           "time_limit): a trial reaching it stops after its current epoch, "
                                           "stop_reason time_limit; null = no limit")

    @field_validator("time_limit", "trial_time_limit", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)


class Resources(Strict):
    cpu: float = Field(1, ge=0.0001, le=1_000_000, allow_inf_nan=False,
                       description="CPUs per trial (also its torch threads); Ray schedules multiples of 0.0001")
    gpu: float = Field(0, ge=0, le=1_000_000, allow_inf_nan=False,
                       description="GPUs per trial; fractions share a GPU")

    @field_validator("gpu")
    @classmethod
    def _whole_if_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a trial may use a fraction of one GPU or whole GPUs, not e.g. 1.5")
        return v


class CheckpointPolicy(Strict):
    min_interval_s: float = Field(60, ge=0, description="seconds between a trial's checkpoints; "
                                  "the last epoch is always saved; 0 = every epoch")
    keep: int = Field(3, ge=3, description="checkpoints kept per trial (the best by the objective)")


class EarlyStopping(Strict):
    patience: int = Field(ge=1, description="evaluations in a row (one per epoch; a command trial's: one per "
                          "report of the objective) without an improvement after which a trial ends")
    min_delta: float = Field(0.0, ge=0, allow_inf_nan=False, description="the least gain over the trial's "
                             "best, in the objective's own units and direction, that counts as an improvement")


class Tracking(Strict):
    uri: str = Field("sqlite:///mlruns.db", description="MLflow tracking URI")


#: what `notify.on` may name: the sweep ended (or was interrupted), a trial failed after its
#: retries, a trial ended with a new best objective
NOTIFY_EVENTS = ("end", "failure", "best")


class Notify(Strict):
    webhook: str = Field(description="http(s) URL each event is POSTed to as JSON (with a Slack-compatible "
                         "`text`); treated as a secret: shown only as scheme://host/...")
    on: list[Literal["end", "failure", "best"]] = Field(["end", "failure"], description="events to send: end, "
                                                        "failure, best")


class SweepFile(Strict):
    name: str = Field(max_length=200, description="sweep name: MLflow experiment and Ray experiment directory "
                      "(at most 200 characters: it names directories)")
    task: str = Field(description="registered task")
    data: DataConfig | None = Field(None, description="dataset (built-in tasks)")
    command: CommandConfig | None = Field(None, description="the training command (task: command)")
    base: dict[str, Any] = Field(default_factory=dict, description="fixed trial settings")
    include: list[str] = Field(default_factory=list, description="search-space fragments")
    search: dict[str, Any] = Field(default_factory=dict, description="dotted key -> space")
    ablation: Ablation | None = Field(None, description="controlled variants of `base` with seeds, instead of `search`")
    eval_grid: dict[str, list[Any]] = Field(default_factory=dict, description="inference-time knobs")
    objective: Objective | list[Objective] = Field(description="metric + mode, or a list for a "
                                                   "multi-objective search (the first drives ASHA)")
    search_alg: SearchAlg = SearchAlg()
    scheduler: Scheduler = Scheduler()
    budget: Budget = Budget()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    early_stopping: EarlyStopping | None = Field(None, description="end a trial once its objective stops improving "
                                                 "(patience, min_delta); none by default")
    constraints: list[Constraint] = Field(default_factory=list, description="bounds on reported metrics "
                                          "({metric, max} or {metric, min}); trials outside are infeasible")
    notify: Notify | None = Field(None, description="a webhook told when the sweep ends, a trial fails or a "
                                  "new best appears; none by default")
    storage: str = Field("runs", description="Ray results root (local path or URI)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names directories)")
        return v
