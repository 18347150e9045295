"""Search-space DSL: parsing, errors and conversion into Optuna distributions."""
from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper.spaces import SpaceError, grid_points, grid_size, parse_space, to_optuna

GOOD = [
    ({"choice": [4, 8]}, CategoricalDistribution([4, 8])),
    ({"choice": ["resnet18", None, True]}, CategoricalDistribution(["resnet18", None, True])),
    ({"grid": [0.1, 0.2]}, CategoricalDistribution([0.1, 0.2])),
    ({"uniform": [0.5, 0.9]}, FloatDistribution(0.5, 0.9)),
    ({"loguniform": [1e-4, 1e-2]}, FloatDistribution(1e-4, 1e-2, log=True)),
    ({"loguniform": ["1e-4", "1e-2"]}, FloatDistribution(1e-4, 1e-2, log=True)),  # YAML 1.1 strings
    ({"randint": [2, 10]}, IntDistribution(2, 10)),
    ({"randint": [2, 10, 2]}, IntDistribution(2, 10, step=2)),
    ({"quniform": [0.0, 1.0, 0.25]}, FloatDistribution(0.0, 1.0, step=0.25)),
]


@pytest.mark.parametrize("spec, expected", GOOD, ids=[str(g[0]) for g in GOOD])
def test_to_optuna(spec: dict, expected: object) -> None:
    assert to_optuna([parse_space("k", spec)])["k"] == expected


BAD = [
    ({"choice": []}, "non-empty"),
    ({"choice": [[1, 2]]}, "scalars"),
    ({"choice": [1, 1]}, "twice"),
    ({"uniform": [1, 0]}, "low < high"),
    ({"uniform": [0, 0]}, "low < high"),
    ({"uniform": [0]}, "[low, high]"),
    ({"loguniform": [0, 1]}, "low > 0"),
    ({"loguniform": [-1, 1]}, "low > 0"),
    ({"loguniform": [1e-3, 1, 2]}, "[low, high]"),
    ({"randint": [1.5, 3]}, "integers"),
    ({"quniform": [0, 1]}, "[low, high, step]"),
    ({"quniform": [0, 1, 0.3]}, "whole number of steps"),
    ({"quniform": [0, 1, -0.5]}, "> 0"),
    ({"uniform": ["a", 1]}, "finite number"),
    ({"uniform": [0, float("inf")]}, "finite number"),
    ({"normal": [0, 1]}, "unknown search kind"),
    ({"choice": [1], "uniform": [0, 1]}, "exactly one"),
    ([1, 2], "exactly one"),
]


@pytest.mark.parametrize("spec, words", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_spaces(spec: object, words: str) -> None:
    with pytest.raises(SpaceError, match=None) as info:
        parse_space("k", spec)
    assert words in str(info.value)


def test_grid() -> None:
    dims = [parse_space("a", {"grid": [1, 2, 3]}), parse_space("b", {"choice": ["x", "y"]})]
    assert grid_size(dims) == 6
    points = grid_points(dims)
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 3, "b": "y"}
    with pytest.raises(SpaceError, match="ranges given for: c"):
        grid_points([parse_space("c", {"uniform": [0, 1]})])


def test_describe() -> None:
    assert parse_space("k", {"loguniform": [1e-4, 1e-2]}).describe() == "loguniform [0.0001, 0.01]"
    assert parse_space("k", {"choice": [4, 8]}).describe() == "choice [4, 8]"


# --------------------------------------------------------------------------- ablation variants
def test_named_variants_follow_the_factors_one_at_a_time() -> None:
    from sweeper.spaces import ablation_points, ablation_variants

    named = {"recipe_b": {"model.backbone": "hrnet_w44", "train.lr": 5e-4}}
    variants = ablation_variants({"train.resolution": [96]}, {"train.resolution": 64}, named=named)
    assert variants == [("baseline", {}), ("train.resolution=96", {"train.resolution": 96}),
                        ("recipe_b", {"model.backbone": "hrnet_w44", "train.lr": 5e-4})]
    points = ablation_points(variants, [0, 1], "train.seed")
    assert points[2] == {"variant": "recipe_b", "seed": 0,
                         "params": {"model.backbone": "hrnet_w44", "train.lr": 5e-4, "train.seed": 0}}
    assert len(points) == 6  # each variant runs with every seed
    assert ablation_variants({}, {}, named=named) == [("baseline", {}), ("recipe_b", named["recipe_b"])]


def test_named_variants_are_one_more_factor_in_a_full_factorial() -> None:
    from sweeper.spaces import ablation_variants

    named = {"a": {"x": 1}, "b": {"x": 2, "y": 3}}
    variants = ablation_variants({"data.fold": [1]}, {"data.fold": 0}, full_factorial=True, named=named)
    assert variants == [("baseline", {}), ("data.fold=1", {"data.fold": 1}), ("a", {"x": 1}),
                        ("a,data.fold=1", {"x": 1, "data.fold": 1}), ("b", {"x": 2, "y": 3}),
                        ("b,data.fold=1", {"x": 2, "y": 3, "data.fold": 1})]


@pytest.mark.parametrize("variant, expected", [
    ("baseline", ("baseline", None)),
    ("data.fold=2", ("baseline", 2)),
    ("recipe_b,data.fold=1", ("recipe_b", 1)),
    ("train.lr_steps=[0.5, 0.8],data.fold=1,model.neck=pafpn", ("train.lr_steps=[0.5, 0.8],model.neck=pafpn", 1)),
    ("recipe_b", ("recipe_b", None)),
    ("data.fold=12", ("data.fold=12", None)),  # not a listed value
])
def test_without_factor_reads_the_fold_out_of_a_variant_name(variant: str, expected: tuple) -> None:
    from sweeper.spaces import without_factor

    assert without_factor(variant, "data.fold", [1, 2]) == expected
