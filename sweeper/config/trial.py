"""What one trial receives: the task's config with the trial's values applied, validated into
the task's trial model, plus the secret-redaction rules for everything that is logged.

    cfg = trial_config(sweep, {"train.lr": 0.01})            # nested dict (what MLflow logs)
    config = build_trial(sweep, {"train.lr": 0.01}, train={"workers": 0})   # the validated object a task reads
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, create_model

from sweeper.config.sweep import Sweep, absolute_path, flatten, is_data_key, set_dotted
from sweeper.registry import TaskSpec, get_spec
from sweeper.schema import DataConfig, Objective


def trial_config(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """The nested config of one trial: `base` with the trial's values applied, and for a built-in
    task the sweep's data, eval grid and objective (what `trial_model` validates)."""
    cfg = copy.deepcopy(sweep.base)
    for key, value in params.items():
        if not is_data_key(key, sweep.spec):
            set_dotted(cfg, key, value)
    cfg["task"] = sweep.spec.task
    if sweep.task.open_keys:
        return cfg
    cfg["data"] = trial_data(sweep, params)
    cfg["eval_grid"] = dict(sweep.spec.eval_grid)
    objective = sweep.spec.objective
    cfg["objective"] = {"metric": objective.metric.removeprefix("default/"), "mode": objective.mode}
    return cfg


#: `data` keys holding paths: a trial's value is made absolute against the launch directory
DATA_PATH_KEYS = ("train", "val", "images")


def trial_data(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any] | None:
    """The trial's `data`: the sweep's data section with the trial's `data.*` values (searched, or
    an ablation variant's) applied, their paths made absolute against the launch directory as the
    section's own are (they are kept as written in the sweep, so variant names stay readable)."""
    if sweep.spec.data is None:
        return None
    data = sweep.spec.data.model_dump()
    for key, value in params.items():
        if is_data_key(key, sweep.spec):
            sub = key.removeprefix("data.")
            path = sub in DATA_PATH_KEYS and isinstance(value, str) and value
            set_dotted(data, sub, absolute_path(value, sweep.cwd) if path else value)
    return data


_TRIAL_MODELS: dict[str, type[BaseModel]] = {}


def trial_model(task: TaskSpec) -> type[BaseModel]:
    """The validated, frozen config a task reads by attribute (`cfg.train.lr`, `cfg.data.val`):
    the task's `base` schema plus what the sweep decides around it. Defaults live in the schema
    alone, so a task restates none of them."""
    if task.name not in _TRIAL_MODELS:
        default_objective = Objective(metric=next((m for m in task.metrics if not m.startswith("train/")),
                                                  task.metrics[0] if task.metrics else "objective"))
        _TRIAL_MODELS[task.name] = create_model(
            f"{task.base.__name__}Trial", __base__=task.base,
            task=(str, task.name),
            data=(DataConfig | None, None),
            eval_grid=(dict[str, list[Any]], {}),
            objective=(Objective, default_objective),
            artifacts_dir=(str | None, None),  # where evaluate() writes its files (attached to MLflow)
        )
    return _TRIAL_MODELS[task.name]


def as_trial_config(config: Mapping[str, Any] | BaseModel, task: str) -> Any:
    """`config` as the task's validated trial config: a built one is returned as it is, a nested
    dict (tests, notebooks, benchmarks) is validated, its missing keys taking the schema's defaults."""
    model = trial_model(get_spec(task))
    if isinstance(config, model):
        return config
    if isinstance(config, BaseModel):
        config = config.model_dump()
    return model.model_validate(dict(config))


def build_trial(sweep: Sweep, params: dict[str, Any], *, artifacts_dir: str | None = None,
                train: Mapping[str, Any] | None = None) -> Any:
    """The one place a trial's config is finished: `trial_config` plus what only the trial knows
    (`artifacts_dir`; `train` values it resolved, such as the worker count for `auto` or the
    micro-batches after an out-of-memory retry), validated into the task's trial model."""
    cfg = trial_config(sweep, params)
    cfg["artifacts_dir"] = artifacts_dir
    cfg["train"] = {**cfg.get("train", {}), **(train or {})}
    return trial_model(sweep.task).model_validate(cfg)


#: names whose values are never logged or printed: tokens, secrets, passwords, credentials, API keys,
#: webhooks (a Slack or Teams webhook's path is its credential)
SECRET_NAME = re.compile(r"token|secret|passw(or)?d|credential|webhook|(^|[./])key$|(api|access|private|auth)[_-]?key$",
                         re.IGNORECASE)
REDACTED = "***"


def redact(tree: Any) -> Any:
    """A copy of `tree` with the values of secret-looking keys (SECRET_NAME) replaced by ***."""
    if isinstance(tree, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_NAME.search(k) else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def redact_uri(uri: str) -> str:
    """`uri` with the password of its `user:password@` part replaced by ***, for messages and logs."""
    return re.sub(r"(?<=://)([^/@:]*):[^/@]*@", rf"\1:{REDACTED}@", uri)


def redact_webhook(url: str) -> str:
    """`url` as `scheme://host[:port]/...`, for messages and logs: a webhook's path and query are
    its credential (Slack's `hooks.slack.com/services/T../B../XXXX`), and so is a `user:pass@`."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number: show nothing of it
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    host = f"[{host}]" if ":" in host else host
    rest = "/..." if (parts.path.strip("/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def webhook_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook (None if it can): only http(s) URLs with a host are POSTed to.
    The message never repeats the URL, which may hold a secret."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"not a valid URL ({exc}); use http://HOST/PATH or https://HOST/PATH"
    if parts.scheme.lower() not in ("http", "https"):
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"must be an http:// or https:// URL (got {got}); e.g. https://hooks.slack.com/services/..."
    if not parts.hostname:
        return "names no host; use http://HOST/PATH or https://HOST/PATH"
    return None


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's own values as dotted keys, from the config Ray hands the trial: the searched
    values, or an ablation point's changed keys plus its seed."""
    if "ablation" in config and isinstance(config["ablation"], dict):
        return dict(config["ablation"]["params"])
    return dict(config)


def script_params(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """What a command trial passes to its script: `base` with the trial's values, as dotted keys."""
    cfg = copy.deepcopy(sweep.base)
    for key, value in params.items():
        set_dotted(cfg, key, value)
    return flatten(cfg)
