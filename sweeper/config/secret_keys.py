"""Secret values kept out of everything Ray Tune writes or prints, while trials still get them.

A value is secret when its key looks like one (`trial.SECRET_NAME`: tokens, passwords, API keys,
webhooks), wherever it is given: `base`, `command.env`, a searched key, `--set KEY=VALUE`. The trial's
process needs the value; nothing written to disk or printed may hold it. Ray Tune writes a great
deal: `tuner.pkl` (the searcher, the callbacks and what they hold), `experiment_state-*.json` and
`searcher-state-*.pkl`, each trial's `params.json`, `params.pkl` and `result.json`, its live trial
tables; sweeper adds `sweeper.json`, `console.log` and the MLflow store. So:

- What Tune sees is `public_sweep(sweep)`: the same sweep with every secret value replaced. A
  searched secret (`search: {auth_token: {choice: [A, B]}}`) is searched as its aliases
  (`secret-1`, `secret-2`): the searcher, the trial configs, the console and MLflow hold the alias,
  never the value. A secret searched as a range cannot be aliased and is refused at load
  (`check_secret_keys`), as is one varied by an ablation (its values would name the variants).
- The real sweep reaches the trials only through `tune.with_parameters` (Ray's object store, in
  memory; Tune keeps the trainable out of `tuner.pkl`), and the trial maps its aliases back
  (`reveal`). Callbacks that need the real sweep in the driver pickle the public one.
- `--set` values of secret keys are recorded as `KEY=***` (`recorded_overrides`); a resume asks
  for them again (`restore_overrides`): `sweeper resume NAME --set KEY=VALUE`.

    public = public_sweep(sweep)            # what the searcher, callbacks and plan printing get
    params = reveal(sweep, trial.config)    # in the trial: aliases -> values

No torch, Ray or MLflow here.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from sweeper.config.sweep import Sweep, SweepConfigError, flatten
from sweeper.config.trial import REDACTED, SECRET_NAME, redact_uri, redact_webhook
from sweeper.spaces import RESERVED, Dimension

#: what a searched secret's i-th value (from 1) is called wherever Tune or a person sees it
ALIAS_PREFIX = "secret-"
_ALIAS = re.compile(rf"{ALIAS_PREFIX}[1-9][0-9]*")


def is_secret(key: str) -> bool:
    """Whether the dotted `key` names a secret: the whole key or one of its parts looks like one
    (as `redact` judges a nested tree, level by level)."""
    return bool(SECRET_NAME.search(key)) or any(SECRET_NAME.search(part) for part in key.split("."))


def alias(index: int) -> str:
    """The alias of a searched secret's value number `index` (from 0): `secret-1`, `secret-2`, ..."""
    return f"{ALIAS_PREFIX}{index + 1}"


def is_alias(value: Any) -> bool:
    return isinstance(value, str) and bool(_ALIAS.fullmatch(value))


def secret_dimensions(sweep: Sweep) -> dict[str, Dimension]:
    """The searched keys whose values are secrets, by key."""
    return {d.key: d for d in sweep.dimensions if is_secret(d.key)}


def check_secret_keys(file: Path, spec: Any, dims: list[Dimension], origins: dict[str, Path] | None = None) -> None:
    """Refuse a secret that cannot be kept out of Tune: searched as a range (Tune would sample and
    record the values themselves), or varied by an ablation (its values name the variants)."""
    origins = origins or {}
    for d in dims:
        if is_secret(d.key) and not d.is_categorical:
            raise SweepConfigError(origins.get(d.key, file), f"search.{d.key}", f"{d.key!r} looks like a secret "
                                   f"(its name matches {SECRET_NAME.pattern!r}) but is searched as a {d.kind} range: "
                                   "Tune would record every value it samples. Search a secret as "
                                   "`{choice: [VALUE, ...]}` (Tune sees secret-1, secret-2, ...), or rename the key "
                                   "if it is not a secret")
    abl = getattr(spec, "ablation", None)
    if abl is not None:
        named = [(f"ablation.variants.{name}.{k}", k) for name, changes in abl.variants.items() for k in changes]
        for field, key in [*((f"ablation.factors.{k}", k) for k in abl.factors), *named]:
            if is_secret(key):
                raise SweepConfigError(file, field, f"{key!r} looks like a secret: an ablation's variants are named "
                                       "after their values, which Ray and MLflow record; set it in `base` instead")


def _mask_tree(tree: Any) -> Any:
    """`redact` for a tree whose keys may be dotted (a command's `base: {db.password: ...}`)."""
    if isinstance(tree, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret(k) else _mask_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_mask_tree(v) for v in tree]
    return tree


def _public_search(search: dict[str, Any]) -> dict[str, Any]:
    """The `search:` block with each secret's values replaced by their aliases (start points too)."""
    out: dict[str, Any] = {}
    for key, entry in search.items():
        if key in RESERVED or not is_secret(key) or not isinstance(entry, dict) or len(entry) != 1:
            out[key] = entry
            continue
        (kind, values), = entry.items()
        out[key] = {kind: [alias(i) for i in range(len(values))]} if isinstance(values, list) else REDACTED
    starts = search.get("start_from")
    if isinstance(starts, list):
        choices = {k: e[next(iter(e))] for k, e in search.items()
                   if k not in RESERVED and is_secret(k) and isinstance(e, dict) and len(e) == 1}
        out["start_from"] = [{k: _to_alias(choices.get(k), v) if is_secret(k) else v for k, v in point.items()}
                             if isinstance(point, dict) else point for point in starts]
    return out


def _to_alias(values: Any, value: Any) -> Any:
    """The alias of `value` among a searched secret's `values` (REDACTED when it is not one)."""
    if isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            if v == value and isinstance(v, bool) == isinstance(value, bool):
                return alias(i)
    return REDACTED


def public_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """The merged sweep document as it may be recorded: secret values masked, a searched secret's
    values as aliases (their number kept), credentials in URIs masked."""
    doc = {k: v for k, v in raw.items() if k != "search"}
    doc = _mask_tree(doc)
    if isinstance(raw.get("search"), dict):
        doc["search"] = _public_search(raw["search"])
    for section, key in (("tracking", "uri"), ("search_alg", "storage")):
        if isinstance(doc.get(section), dict) and isinstance(doc[section].get(key), str):
            doc[section] = {**doc[section], key: redact_uri(doc[section][key])}
    if isinstance(doc.get("storage"), str):
        doc["storage"] = redact_uri(doc["storage"])
    return doc


def public_sweep(sweep: Sweep, *, study_storage: bool = False) -> Sweep:
    """`sweep` as Ray Tune may pickle, record and print it: every secret value replaced (`***`; a
    searched secret's values by their aliases), `--set` secrets recorded as `KEY=***`, credentials
    in the tracking and study-storage URIs masked. Trials never run from it: they get the real
    sweep through Tune's object store and `reveal` their aliases. `study_storage`: keep
    `search_alg.storage` as it is, for the searcher, which connects to it."""
    spec = sweep.spec
    update: dict[str, Any] = {"base": _mask_tree(copy.deepcopy(spec.base)), "search": _public_search(spec.search)}
    if spec.command is not None:
        update["command"] = spec.command.model_copy(update={"env": _mask_tree(dict(spec.command.env))})
    if spec.notify is not None:
        update["notify"] = spec.notify.model_copy(update={"webhook": redact_webhook(spec.notify.webhook)})
    update["tracking"] = spec.tracking.model_copy(update={"uri": redact_uri(spec.tracking.uri)})
    storage = getattr(spec.search_alg, "storage", None)
    if isinstance(storage, str) and not study_storage:
        update["search_alg"] = spec.search_alg.model_copy(update={"storage": redact_uri(storage)})
    dims = [Dimension(d.key, d.kind, values=tuple(alias(i) for i in range(len(d.values))))
            if is_secret(d.key) and d.is_categorical else d for d in sweep.dimensions]
    return sweep.model_copy(update={
        "spec": spec.model_copy(update=update), "base": _mask_tree(copy.deepcopy(sweep.base)),
        "dimensions": dims, "raw": public_raw(sweep.raw), "overrides": tuple(recorded_overrides(sweep.overrides)),
    })


def reveal(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values with each searched secret's alias replaced by its value (from the real
    `sweep`, which the trial got through Tune's object store)."""
    secret = secret_dimensions(sweep)
    out = dict(params)
    for key, value in params.items():
        if key in secret and is_alias(value):
            index = int(value[len(ALIAS_PREFIX):]) - 1
            if index < len(secret[key].values):
                out[key] = secret[key].values[index]
    return out


def recorded_overrides(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """`--set` arguments as `sweeper.json` may keep them: a secret key's value as `***`."""
    out = []
    for text in overrides:
        key, sep, _ = text.partition("=")
        out.append(f"{key}={REDACTED}" if sep and is_secret(key.strip()) else text)
    return out


def restore_overrides(recorded: list[str], given: list[str], where: str | Path, command: str) -> list[str]:
    """The launch's `--set` arguments again: each `KEY=***` it recorded takes its value from `given`
    (this command's `--set KEY=VALUE`); one not given again is a SweepConfigError naming `where`.
    A `given` key the launch did not set is refused: a resume continues the same sweep."""
    values = {}
    for text in given:
        key, sep, value = text.partition("=")
        if not sep:
            raise SweepConfigError(where, f"--set {text}", "use --set KEY=VALUE")
        values[key.strip()] = text
    hidden = [text.partition("=")[0] for text in recorded if text.partition("=")[2] == REDACTED
              and is_secret(text.partition("=")[0].strip())]
    missing = [k for k in hidden if k.strip() not in values]
    if missing:
        again = " ".join(f"--set {k}=VALUE" for k in missing)
        raise SweepConfigError(where, f"--set {missing[0]}", f"the launch set {', '.join(missing)} with --set; a "
                               f"secret's value is not stored with the experiment, so give it again: {command} {again}")
    extra = [k for k in values if k not in {h.strip() for h in hidden}]
    if extra:
        raise SweepConfigError(where, f"--set {extra[0]}", "only the secret values the launch set with --set can be "
                               f"given again here ({', '.join(hidden) or 'none'}); to change the sweep, launch it "
                               "again (with --fresh)")
    return [values[k.strip()] if k in hidden else text for text, k in ((t, t.partition("=")[0]) for t in recorded)]


def secret_values(sweep: Sweep) -> list[str]:
    """Every secret value of `sweep` as text (for tests and checks that nothing leaked)."""
    found = [v for k, v in flatten(sweep.base).items() if is_secret(k)]
    if sweep.spec.command is not None:
        found += [v for k, v in sweep.spec.command.env.items() if is_secret(k)]
    for d in secret_dimensions(sweep).values():
        found += list(d.values)
    return [str(v) for v in found if v not in (None, "", REDACTED)]


__all__ = ["ALIAS_PREFIX", "alias", "check_secret_keys", "is_alias", "is_secret", "public_raw", "public_sweep",
           "recorded_overrides", "restore_overrides", "reveal", "secret_dimensions", "secret_values"]
