"""Sweep files: loading, `include:`, `--set` overrides, path resolution, validation, trial configs.

A sweep file is validated once, here, before anything heavy starts; every mistake becomes a
`SweepConfigError` naming the file and the dotted field::

    sweep = load_sweep("sweeps/demo.yaml", overrides=["train.epochs=4", "budget.num_samples=6"])
    sweep.name, sweep.dimensions, trial_config(sweep, {"train.lr": 0.01})

One module per concept: `sweep` (the loaded value and dotted-key helpers), `loading` (YAML,
includes, overrides, paths), `checks` (the sweep against its task's spec), `trial` (what one
trial receives, and what is redacted from logs). This package imports no torch, Ray or MLflow,
so `--help`, `validate` and `--dry-run` are fast.
"""
from sweeper.config.checks import MAX_ABLATION_TRIALS, MAX_SEEDS, metric_known
from sweeper.config.loading import check_paths, load_sweep, parse_override, resolve_tracking_uri
from sweeper.config.sweep import Sweep, SweepConfigError, flatten, get_or_none, set_dotted
from sweeper.config.trial import (
    REDACTED,
    SECRET_NAME,
    as_trial_config,
    build_trial,
    redact,
    redact_uri,
    redact_webhook,
    script_params,
    trial_config,
    trial_model,
    trial_params,
)

__all__ = [
    "MAX_ABLATION_TRIALS", "MAX_SEEDS", "REDACTED", "SECRET_NAME", "Sweep", "SweepConfigError", "as_trial_config",
    "build_trial", "check_paths", "flatten", "get_or_none", "load_sweep", "metric_known", "parse_override", "redact", "redact_uri", "redact_webhook",
    "resolve_tracking_uri", "script_params", "set_dotted", "trial_config", "trial_model", "trial_params",
]
