"""MLflow param names for keys MLflow refuses (a command task's Hydra `+key`, `~key`, `a;b`...)."""
from __future__ import annotations

import pytest

pytest.importorskip("ray")

from mlflow.utils.validation import _validate_param_name  # noqa: E402

from sweeper.tracking import param_names  # noqa: E402


@pytest.mark.parametrize(("key", "name"), [
    ("train.lr", "train.lr"),
    ("val/map", "val/map"),
    ("+trainer.precision", "_trainer.precision"),
    ("~model.ema", "_model.ema"),
    ("opt;touch x", "opt_touch x"),
    ("run name", "run name"),
    ("a//b", "a__b"),
    ("/abs", "_abs"),
    ("a/../b", "a____b"),
    ("..", "__"),
    (".", "_"),
    ("", "_"),
    ("ünï", "ünï"),
    ("$(id)", "__id_"),
])
def test_each_key_gets_a_name_mlflow_accepts(key: str, name: str) -> None:
    got = param_names({key: 1})
    assert got == {name: 1}
    _validate_param_name(name)  # raises on a name MLflow would refuse


def test_keys_that_clean_to_one_name_are_all_kept_and_taken_ones_left_out() -> None:
    assert param_names({"+a": 1, "~a": 2, "_a": 3}) == {"_a": 1, "_a_2": 2, "_a_3": 3}
    assert param_names({"+a": 1, "b": 2}, taken={"_a"}) == {"b": 2}
