"""Sweep-file schema, includes, overrides, path resolution and error messages."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from sweeper.config import SweepConfigError, build_trial, flatten, load_sweep, parse_override, trial_config

GOOD = """
name: t
task: detection
data: {train: d/train.json, val: d/val.json, images: d/images}
base:
  model: {backbone: resnet18, fpn_channels: 32}
  train: {epochs: 4, resolution: 64}
search:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  train.batch_size: {choice: [2, 4]}
objective: {metric: map50, mode: max}
scheduler: {name: asha, grace_period: 1}
budget: {num_samples: 4}
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from sweeper.tasks.detection.synth import make_synthetic_coco

    d = tmp_path / "d"  # a real (tiny) dataset: the driver reads it before dispatch
    make_synthetic_coco(d, images=2, size=32, seed=0)
    monkeypatch.chdir(tmp_path)
    return d


def test_good_sweep_resolves_paths_and_defaults(tmp_path: Path, data_dir: Path) -> None:
    sweep = load_sweep(write(tmp_path, GOOD))
    assert sweep.spec.data.train == str(data_dir / "train.json")
    assert Path(sweep.spec.data.images).is_absolute()
    assert sweep.spec.tracking.uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert sweep.spec.storage == str(tmp_path / "runs")
    assert sweep.base["train"]["epochs"] == 4 and sweep.base["train"]["optimizer"] == "sgd"
    assert [d.key for d in sweep.dimensions] == ["train.lr", "train.batch_size"]
    assert sweep.max_t == 4 and sweep.num_trials == 4
    cfg = trial_config(sweep, {"train.lr": 0.003, "train.batch_size": 2})
    assert cfg["train"]["lr"] == 0.003 and cfg["train"]["batch_size"] == 2
    assert cfg["model"]["fpn_channels"] == 32 and cfg["data"]["train"] == str(data_dir / "train.json")


def test_config_module_imports_no_heavy_libraries() -> None:
    import subprocess

    code = ("import sys, sweeper.config, sweeper.spaces, sweeper.cli; "
            "print(','.join(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("overrides, check", [
    (["train.epochs=2"], lambda s: s.base["train"]["epochs"] == 2),
    (["budget.num_samples=6"], lambda s: s.spec.budget.num_samples == 6),
    (["base.train.resolution=96"], lambda s: s.base["train"]["resolution"] == 96),
    (["train.lr=0.005"], lambda s: s.base["train"]["lr"] == 0.005 and "train.lr" not in [d.key for d in s.dimensions]),
    (["search.train.momentum={uniform: [0.8, 0.95]}"], lambda s: "train.momentum" in [d.key for d in s.dimensions]),
    (["scheduler.name=fifo"], lambda s: s.spec.scheduler.name == "fifo"),
    (["model.arch=retinanet"], lambda s: s.base["model"]["arch"] == "retinanet"),
    (["resources.gpu=0.5"], lambda s: s.spec.resources.gpu == 0.5),
])
def test_overrides(tmp_path: Path, data_dir: Path, overrides: list[str], check) -> None:  # noqa: ANN001
    assert check(load_sweep(write(tmp_path, GOOD), overrides))


def test_parse_override_types() -> None:
    assert parse_override("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("name=abc") == ("name", "abc")
    with pytest.raises(SweepConfigError, match="KEY=VALUE"):
        parse_override("train.lr")


def test_include_merges_fragments_and_sweep_wins(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "spaces").mkdir()
    write(tmp_path / "spaces", "search:\n  train.lr: {uniform: [0.1, 0.2]}\n  train.momentum: {uniform: [0.8, 0.9]}\n",
          "optim.yaml")
    sweep = load_sweep(write(tmp_path, GOOD + "include: [spaces/optim.yaml]\n"))
    dims = {d.key: d for d in sweep.dimensions}
    assert dims["train.lr"].kind == "loguniform"  # the sweep's own entry wins
    assert dims["train.momentum"].kind == "uniform"


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": []}) == {"a.b": 1, "a.c.d": 2, "e": []}


# Each bad sweep: (replacement of GOOD's text or appended YAML, expected field, expected words)
BAD = [
    ("typo_top", GOOD.replace("budget:", "budgte:"), "budgte", "did you mean 'budget'"),
    ("typo_nested", GOOD.replace("num_samples: 4", "num_sample: 4"), "budget.num_sample", "did you mean 'num_samples'"),
    ("typo_base", GOOD.replace("fpn_channels", "fpn_chanels"), "base.model.fpn_chanels", "did you mean 'fpn_channels'"),
    ("wrong_type", GOOD.replace("epochs: 4", "epochs: four"), "base.train.epochs", "integer"),
    ("low_gt_high", GOOD.replace("[1.0e-4, 1.0e-2]", "[1.0e-2, 1.0e-4]"), "search.train.lr", "low < high"),
    ("log_nonpositive", GOOD.replace("[1.0e-4, 1.0e-2]", "[0, 1.0e-2]"), "search.train.lr", "low > 0"),
    ("unknown_task", GOOD.replace("task: detection", "task: detektion"), "task", "did you mean 'detection'"),
    ("unknown_metric", GOOD.replace("metric: map50", "metric: mAP50"), "objective.metric", "does not report"),
    ("search_unknown_key", GOOD.replace("train.batch_size:", "train.batchsize:"), "search.train.batchsize",
     "did you mean 'train.batch_size'"),
    ("empty_choice", GOOD.replace("{choice: [2, 4]}", "{choice: []}"), "search.train.batch_size", "non-empty"),
    ("bad_kind", GOOD.replace("{choice: [2, 4]}", "{choises: [2, 4]}"), "search.train.batch_size", "did you mean 'choice'"),
    ("choice_wrong_type", GOOD.replace("{choice: [2, 4]}", "{choice: [2, big]}"), "search.train.batch_size", "does not fit"),
    ("grid_with_optuna", GOOD.replace("{choice: [2, 4]}", "{grid: [2, 4]}"), "search.train.batch_size", "search_alg"),
    ("fixed_and_searched", GOOD.replace("epochs: 4,", "epochs: 4, lr: 0.01,"), "search.train.lr", "both fixed"),
    ("empty_search", GOOD.split("search:")[0] + "objective: {metric: map50}\nbudget: {num_samples: 3}\n",
     "budget.num_samples", "empty"),
    ("grace_gt_max_t", GOOD.replace("grace_period: 1", "grace_period: 9"), "scheduler.grace_period", "max_t"),
    ("max_t_gt_epochs", GOOD.replace("grace_period: 1}", "grace_period: 1, max_t: 40}"), "scheduler.max_t", "exceeds"),
    ("bad_mode", GOOD.replace("mode: max", "mode: maximise"), "objective.mode", "max"),
    ("missing_data", GOOD.replace("train: d/train.json", "train: nowhere/train.json"), "data.train", "does not exist"),
    ("missing_include", GOOD + "include: [nope.yaml]\n", "include", "not found"),
    ("fractional_gpus", GOOD + "resources: {gpu: 1.5}\n", "resources.gpu", "fraction"),
    ("eval_grid_unknown", GOOD + "eval_grid: {post.box_thresh: [0.3]}\n", "eval_grid.post.box_thresh", "sweeps only"),
    ("bad_name", GOOD.replace("name: t", "name: a/b"), "name", "letters"),
    ("not_mapping", "- a\n- b\n", None, "mapping"),
    ("yaml_syntax", GOOD + "budget: {num_samples: [\n", None, "line"),
    ("missing_objective", GOOD.replace("objective: {metric: map50, mode: max}", ""), "objective", "required"),
]


@pytest.mark.parametrize("case, text, field, words", BAD, ids=[b[0] for b in BAD])
def test_bad_sweeps_name_the_file_and_field(tmp_path: Path, data_dir: Path, case: str, text: str,
                                            field: str | None, words: str) -> None:
    path = write(tmp_path, text, f"{case}.yaml")
    with pytest.raises(SweepConfigError) as info:
        load_sweep(path)
    msg = str(info.value)
    assert str(path) in msg
    if field:
        assert info.value.field == field, msg
    assert words in msg, msg


def test_set_on_missing_key_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(SweepConfigError, match="did you mean 'train.epochs'") as info:
        load_sweep(write(tmp_path, GOOD), ["train.epoch=3"])
    assert info.value.field == "--set train.epoch"


def test_circular_include(tmp_path: Path, data_dir: Path) -> None:
    write(tmp_path, "include: [b.yaml]\nsearch: {}\n", "a.yaml")
    write(tmp_path, "include: [a.yaml]\nsearch: {}\n", "b.yaml")
    with pytest.raises(SweepConfigError, match="circular include"):
        load_sweep(write(tmp_path, GOOD + "include: [a.yaml]\n"))


def test_synth_data_may_be_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = GOOD.replace("data: {train: d/train.json, val: d/val.json, images: d/images}",
                        "data: {train: s/train.json, val: s/val.json, images: s/images, synth: {images: 8}}")
    sweep = load_sweep(write(tmp_path, text))
    assert sweep.spec.data.synth.images == 8


def test_grid_search_counts_points(tmp_path: Path, data_dir: Path) -> None:
    text = GOOD.replace("{loguniform: [1.0e-4, 1.0e-2]}", "{grid: [0.001, 0.01, 0.1]}") \
        .replace("{choice: [2, 4]}", "{grid: [2, 4]}") + "search_alg: {name: grid}\n"
    sweep = load_sweep(write(tmp_path, text), ["budget.num_samples=2"])
    assert sweep.num_trials == 3 * 2 * 2


# --------------------------------------------------------------------------- task: command
COMMAND = """
name: cmd
task: command
command:
  run: python train.py {overrides}
  workdir: code
  metrics: csv:logs/metrics.csv
base:
  trainer.max_epochs: 20
  models: {name: unet}
search:
  models.optimizer.lr: {loguniform: [1.0e-4, 3.0e-3]}
objective: {metric: val/hmean, mode: max}
scheduler: {name: asha, grace_period: 2, max_t: 20}
"""


def test_command_sweep_loads_free_keys_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeper.config import script_params

    (tmp_path / "code").mkdir()
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, COMMAND), ["trainer.batch_size=8"])
    cmd = sweep.spec.command
    assert cmd.workdir == str(tmp_path / "code") and cmd.metrics == f"csv:{tmp_path / 'code' / 'logs/metrics.csv'}"
    assert sweep.spec.data is None and sweep.max_t == 20
    assert script_params(sweep, {"models.optimizer.lr": 0.001}) == {
        "trainer.max_epochs": 20, "models.name": "unet", "trainer.batch_size": 8, "models.optimizer.lr": 0.001}
    fixed = load_sweep(write(tmp_path, COMMAND), ["models.optimizer.lr=0.002", "budget.num_samples=1"])
    assert fixed.dimensions == [] and fixed.base["models"]["optimizer"]["lr"] == 0.002


BAD_COMMAND = [
    ("no command section", "command:", "", "command", "needs a `command` section"),
    ("data with command", "objective:", "data: {train: a, val: b, images: c}\nobjective:", "data", "reads no `data`"),
    ("no overrides placeholder", "{overrides}", "", "command.run", "no {overrides} placeholder"),
    ("asha without max_t", "max_t: 20", "brackets: 1", "scheduler.max_t", "set scheduler.max_t or command.epochs"),
    ("bad metrics source", "csv:logs/metrics.csv", "tensorboard:logs", "command.metrics", "stdout, csv:PATH or jsonl:PATH"),
    ("bad env name", "workdir: code", "workdir: code\n  checkpoint_dir_env: 'MY DIR'", "command.checkpoint_dir_env",
     "environment variable name"),
    ("missing workdir", "workdir: code", "workdir: nowhere", "command.workdir", "is not a directory"),
    ("typo in command", "workdir: code", "workdir: code\n  metrix: stdout", "command.metrix", "did you mean 'metrics'"),
]


@pytest.mark.parametrize("case, old, new, field, words", BAD_COMMAND, ids=[b[0] for b in BAD_COMMAND])
def test_bad_command_sweeps_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, old: str,
                                           new: str, field: str, words: str) -> None:
    (tmp_path / "code").mkdir()
    monkeypatch.chdir(tmp_path)
    text = COMMAND
    if case == "no command section":
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("command:", "  run", "  workdir", "  metrics")))
    else:
        text = text.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(SweepConfigError) as exc:
        load_sweep(path)
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value) and str(path) in str(exc.value)


def test_builtin_task_refuses_a_command_section(tmp_path: Path, data_dir: Path) -> None:
    path = write(tmp_path, GOOD + "command: {run: 'python x.py {overrides}'}\n")
    with pytest.raises(SweepConfigError, match="only task 'command' runs a command"):
        load_sweep(path)


# --------------------------------------------------------------------------- ablations
ABLATION = """
name: abl
task: detection
data: {train: d/train.json, val: d/val.json, images: d/images}
base:
  model: {backbone: resnet18, fpn_channels: 32}
  train: {epochs: 4, resolution: 64, lr: 0.01}
ablation:
  factors:
    model.backbone: [resnet34, mobilenetv3_small_100]
    train.resolution: [96]
  seeds: 3
objective: {metric: map50, mode: max}
"""


def test_ablation_plan_changes_exactly_one_factor_with_the_same_seeds(tmp_path: Path, data_dir: Path) -> None:
    from sweeper.config import trial_params

    sweep = load_sweep(write(tmp_path, ABLATION))
    assert sweep.spec.scheduler.name == "fifo"  # early stopping would bias the comparison
    assert [name for name, _ in sweep.variants] == [
        "baseline", "model.backbone=resnet34", "model.backbone=mobilenetv3_small_100", "train.resolution=96"]
    points = sweep.ablation_points
    assert sweep.num_trials == len(points) == 12
    baseline = {s: flatten(trial_config(sweep, trial_params({"ablation": p}))) for p in points
                if p["variant"] == "baseline" for s in [p["seed"]]}
    seeds_per_variant: dict[str, list[int]] = {}
    for p in points:
        cfg = flatten(trial_config(sweep, trial_params({"ablation": p})))
        diff = {k for k in cfg if cfg[k] != baseline[p["seed"]][k]}
        assert diff == set(dict(sweep.variants)[p["variant"]]), (p, diff)
        assert cfg["train.seed"] == p["seed"]
        seeds_per_variant.setdefault(p["variant"], []).append(p["seed"])
    assert all(seeds == [0, 1, 2] for seeds in seeds_per_variant.values())
    assert [p["variant"] for p in points[:4]] == [name for name, _ in sweep.variants]  # seed-major


def test_full_factorial_counts_every_combination(tmp_path: Path, data_dir: Path) -> None:
    text = ABLATION.replace("  seeds: 3", "  seeds: [7, 11]\n  full_factorial: true")
    sweep = load_sweep(write(tmp_path, text))
    assert len(sweep.variants) == 3 * 2  # backbone (base + 2) x resolution (base + 1)
    assert sweep.num_trials == 12
    assert ("model.backbone=resnet34,train.resolution=96", {"model.backbone": "resnet34", "train.resolution": 96}) in sweep.variants
    assert {p["seed"] for p in sweep.ablation_points} == {7, 11}


def test_an_asked_for_scheduler_is_kept(tmp_path: Path, data_dir: Path) -> None:
    sweep = load_sweep(write(tmp_path, ABLATION + "scheduler: {name: asha}\n"))
    assert sweep.spec.scheduler.name == "asha"


BAD_ABLATION = [
    ("search and ablation", "objective:", "search: {train.batch_size: {choice: [2, 4]}}\nobjective:", "ablation", "not both"),
    ("unknown factor", "train.resolution: [96]", "train.resolutoin: [96]", "ablation.factors.train.resolutoin",
     "did you mean 'train.resolution'"),
    ("baseline value", "train.resolution: [96]", "train.resolution: [64]", "ablation.factors.train.resolution",
     "baseline's own value"),
    ("empty values", "train.resolution: [96]", "train.resolution: []", "ablation.factors.train.resolution", "non-empty"),
    ("bad value type", "train.resolution: [96]", "train.resolution: [big]", "ablation.factors.train.resolution",
     "does not fit"),
    ("seed as factor", "train.resolution: [96]", "train.seed: [1]", "ablation.factors.train.seed", "seed key"),
    ("zero seeds", "seeds: 3", "seeds: 0", "ablation.seeds", "at least 1 seed"),
]


@pytest.mark.parametrize("case, old, new, field, words", BAD_ABLATION, ids=[b[0] for b in BAD_ABLATION])
def test_bad_ablations_name_the_field(tmp_path: Path, data_dir: Path, case: str, old: str, new: str, field: str,
                                      words: str) -> None:
    path = write(tmp_path, ABLATION.replace(old, new))
    with pytest.raises(SweepConfigError) as exc:
        load_sweep(path)
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value)


@pytest.mark.parametrize("objective, field, words", [
    ("[{metric: map50}, {metric: map50, mode: min}]", "objective", "lists a metric twice"),
    ("[{metric: map50}, {metric: latency}]", "objective[1].metric", "does not report 'latency'"),
    ("[]", "objective", "needs a metric"),
    ("[{metric: map50, mode: maximise}]", "objective.0.mode", "'max' or 'min'"),
])
def test_bad_objective_lists(tmp_path: Path, data_dir: Path, objective: str, field: str, words: str) -> None:
    path = write(tmp_path, GOOD.replace("objective: {metric: map50, mode: max}", f"objective: {objective}"))
    with pytest.raises(SweepConfigError) as exc:
        load_sweep(path)
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value)


def test_multi_objective_needs_optuna(tmp_path: Path, data_dir: Path) -> None:
    text = GOOD.replace("objective: {metric: map50, mode: max}",
                        "objective: [{metric: map50}, {metric: map_small}]\nsearch_alg: {name: random}")
    with pytest.raises(SweepConfigError, match="needs Optuna"):
        load_sweep(write(tmp_path, text))


def test_redact_masks_secret_looking_names_only() -> None:
    from sweeper.config import redact

    doc = {"env": {"WANDB_API_KEY": "k1", "HF_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "PYTHONUNBUFFERED": "1"},
           "base": {"db": {"password": "p"}, "wandb": {"key": "w"}, "monkey": 3, "keypoints": 17},
           "ablation": {"seed_key": "train.seed"}, "list": [{"auth_key": "a"}]}
    assert redact(doc) == {
        "env": {"WANDB_API_KEY": "***", "HF_TOKEN": "***", "AWS_SECRET_ACCESS_KEY": "***", "PYTHONUNBUFFERED": "1"},
        "base": {"db": {"password": "***"}, "wandb": {"key": "***"}, "monkey": 3, "keypoints": 17},
        "ablation": {"seed_key": "train.seed"}, "list": [{"auth_key": "***"}]}


# --------------------------------------------------------------------------- data keys, folds, named variants
DATA_ABLATION = """
name: cv
task: detection
data: {train: c/train.json, images: c/images, folds: {k: 3, seed: 0}, fold: 0}
base:
  model: {backbone: resnet18, fpn_channels: 32}
  train: {epochs: 2, resolution: 64, lr: 0.01}
ablation:
  factors:
    data.fold: [1, 2]
    data.train: [c/pseudo.json]
  variants:
    recipe_b: {model.fpn_channels: 16, train.lr: 0.0005, train.resolution: 96}
  seeds: 2
objective: {metric: map50, mode: max}
"""


def _coco(path: Path, n: int, cats: list[dict] | None = None) -> None:
    """n images of one box each, their (tiny, real) files in images/: the driver reads them all."""
    from PIL import Image

    cats = cats or [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    images = [{"id": i + 1, "file_name": f"{i}.png"} for i in range(n)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": cats[0]["id"], "bbox": [1, 1, 4, 4]} for i in range(n)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    for img in images:
        if not (path.parent / "images" / img["file_name"]).exists():
            Image.new("RGB", (8, 8)).save(path.parent / "images" / img["file_name"])


@pytest.fixture()
def coco_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """COCO files the driver reads before dispatch (names, categories; no images are opened)."""
    d = tmp_path / "c"
    (d / "images").mkdir(parents=True)
    _coco(d / "train.json", 9)
    _coco(d / "pseudo.json", 12)
    _coco(d / "val.json", 3)
    _coco(d / "tiny.json", 2)
    _coco(d / "other.json", 9, [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}])
    monkeypatch.chdir(tmp_path)
    return d


def test_data_keys_as_factors_and_named_variants_reach_the_trials_data(tmp_path: Path, coco_dir: Path) -> None:
    from sweeper.config import trial_params

    sweep = load_sweep(write(tmp_path, DATA_ABLATION))
    assert [name for name, _ in sweep.variants] == [
        "baseline", "data.fold=1", "data.fold=2", "data.train=c/pseudo.json", "recipe_b"]
    assert sweep.num_trials == 10
    by_variant = {p["variant"]: trial_config(sweep, trial_params({"ablation": p})) for p in sweep.ablation_points
                  if p["seed"] == 1}
    base = by_variant["baseline"]
    assert base["data"]["fold"] == 0 and base["data"]["train"] == str(coco_dir / "train.json")
    assert by_variant["data.fold=2"]["data"]["fold"] == 2
    assert by_variant["data.train=c/pseudo.json"]["data"]["train"] == str(coco_dir / "pseudo.json")  # absolute
    assert "fold" not in base and "data" not in base["model"]  # data keys go to `data`, never into `base`
    recipe = by_variant["recipe_b"]
    assert (recipe["model"]["fpn_channels"], recipe["train"]["lr"], recipe["train"]["resolution"]) == (16, 5e-4, 96)
    assert recipe["data"] == base["data"] and recipe["train"]["seed"] == 1
    for name, cfg in by_variant.items():  # every variant differs from the baseline in its own keys only
        diff = {k for k, v in flatten(cfg).items() if flatten(base).get(k) != v}
        assert {k.removeprefix("data.") for k in diff} <= {k.removeprefix("data.") for k in dict(sweep.variants)[name]}
    built = build_trial(sweep, trial_params({"ablation": sweep.ablation_points[1]}))
    assert built.data.fold == 1 and built.data.folds.k == 3 and built.data.val is None


def test_named_variants_cross_the_factors_in_a_full_factorial(tmp_path: Path, coco_dir: Path) -> None:
    text = DATA_ABLATION.replace("    data.train: [c/pseudo.json]\n", "").replace("  seeds: 2", "  seeds: 2\n  full_factorial: true")
    text = text.replace("variants:\n", "variants:\n    small: {model.fpn_channels: 8}\n")
    sweep = load_sweep(write(tmp_path, text))
    names = [name for name, _ in sweep.variants]
    assert names == ["baseline", "data.fold=1", "data.fold=2", "small", "small,data.fold=1", "small,data.fold=2",
                     "recipe_b", "recipe_b,data.fold=1", "recipe_b,data.fold=2"]
    assert dict(sweep.variants)["recipe_b,data.fold=2"] == {"model.fpn_channels": 16, "train.lr": 0.0005,
                                                            "train.resolution": 96, "data.fold": 2}
    assert sweep.num_trials == 18


def test_data_keys_are_searched_with_choices(tmp_path: Path, coco_dir: Path) -> None:
    text = GOOD.replace("d/", "c/").replace("val: c/val.json", "val: c/val.json, folds: {k: 3}")
    text = text.replace("  train.batch_size: {choice: [2, 4]}",
                        "  data.train: {choice: [c/train.json, c/pseudo.json]}\n  data.fold: {choice: [0, 1, 2]}")
    sweep = load_sweep(write(tmp_path, text))
    cfg = trial_config(sweep, {"train.lr": 0.001, "data.train": "c/pseudo.json", "data.fold": 2})
    assert cfg["data"]["train"] == str(coco_dir / "pseudo.json") and cfg["data"]["fold"] == 2
    assert "data" not in cfg["train"] and cfg["train"]["lr"] == 0.001
    fixed = load_sweep(write(tmp_path, text), ["data.fold=1"])  # --set on a searched data key fixes it
    assert [d.key for d in fixed.dimensions] == ["train.lr", "data.train"] and fixed.spec.data.fold == 1
    with pytest.raises(SweepConfigError, match=r"search\.data\.fold: a data key is searched with `choice`"):
        load_sweep(write(tmp_path, text.replace("{choice: [0, 1, 2]}", "{randint: [0, 2]}")))


BAD_DATA = [
    ("fold outside the split", "data.fold: [1, 2]", "data.fold: [1, 3]", "ablation.factors.data.fold",
     "fold 3 is outside 0..2"),
    ("fixed fold outside", "fold: 0}", "fold: 5}", "data.fold", "fold 5 is outside 0..2"),
    ("fold without folds", ", folds: {k: 3, seed: 0}", "", "data.fold", "needs data.folds"),
    ("variant file missing", "[c/pseudo.json]", "[c/nowhere.json]", "ablation.factors.data.train",
     "c/nowhere.json does not exist"),
    ("variant categories differ", "[c/pseudo.json]", "[c/other.json]", "ablation.factors.data.train",
     "its categories [1: a, 3: c] differ from those of"),
    ("named variant categories", "train.resolution: 96}", "data.val: c/other.json}", "ablation.variants.recipe_b.data.val",
     "c/other.json: its categories"),
    ("too few images", "[c/pseudo.json]", "[c/tiny.json]", "ablation.factors.data.train",
     "has 2 images, fewer than data.folds.k (3)"),
    ("baseline without a fold", "fold: 0}", "}", "ablation.factors.data.fold", "the baseline needs a held-out fold"),
    ("no val and no fold", ", fold: 0}", "}", "data.val", "is required"),
    ("varied split", "data.fold: [1, 2]", "data.folds: [{k: 4}]", "ablation.factors.data.folds",
     "cannot vary between trials"),
    ("unknown data key", "data.train: [c/pseudo.json]", "data.trian: [c/pseudo.json]", "ablation.factors.data.trian",
     "did you mean 'data.train'"),
    ("named variant at the baseline", "train.lr: 0.0005", "train.lr: 0.01", "ablation.variants.recipe_b.train.lr",
     "baseline's own value"),
    ("named variant unknown key", "train.lr: 0.0005", "train.lrr: 0.0005", "ablation.variants.recipe_b.train.lrr",
     "did you mean 'train.lr'"),
    ("named variant bad value", "train.lr: 0.0005", "train.lr: fast", "ablation.variants.recipe_b.train.lr",
     "does not fit"),
    ("named variant empty", "{model.fpn_channels: 16, train.lr: 0.0005, train.resolution: 96}", "{}",
     "ablation.variants.recipe_b", "needs the keys it changes together"),
    ("named variant = a factor value", "{model.fpn_channels: 16, train.lr: 0.0005, train.resolution: 96}",
     "{data.fold: 2}", "ablation.variants.recipe_b", "same keys to the same values as variant 'data.fold=2'"),
    ("duplicate named variants", "  seeds: 2", "    again: {train.resolution: 96, model.fpn_channels: 16, "
     "train.lr: 0.0005}\n  seeds: 2", "ablation.variants.again", "same keys to the same values as variant 'recipe_b'"),
    ("named variant sets the seed", "train.lr: 0.0005", "train.seed: 4", "ablation.variants.recipe_b.train.seed",
     "seed key"),
    ("variant name", "recipe_b:", "recipe b,2:", "ablation.variants.recipe b,2", "a variant name is letters"),
    ("factor key in a full factorial variant", "  seeds: 2", "  seeds: 2\n  full_factorial: true\n",
     "ablation.variants.recipe_b.data.fold", "is also a factor"),
]


@pytest.mark.parametrize("case, old, new, field, words", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_variants_and_folds_name_the_field(tmp_path: Path, coco_dir: Path, case: str, old: str, new: str,
                                                    field: str, words: str) -> None:
    text = DATA_ABLATION
    if case == "factor key in a full factorial variant":
        text = text.replace("train.resolution: 96}", "data.fold: 2}")
    if case == "no val and no fold":
        text = text.replace("    data.fold: [1, 2]\n", "")
    assert text.count(old) == 1, old
    with pytest.raises(SweepConfigError) as exc:
        load_sweep(write(tmp_path, text.replace(old, new)))
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value)


def test_fold_files_are_checked_against_the_training_file(tmp_path: Path, coco_dir: Path) -> None:
    (coco_dir / "f0.txt").write_text("0.png\n1.png\n")
    (coco_dir / "f1.txt").write_text("2.png\n")
    text = DATA_ABLATION.replace("folds: {k: 3, seed: 0}", "folds: {files: [c/f0.txt, c/f1.txt]}")
    text = text.replace("data.fold: [1, 2]", "data.fold: [1]")
    sweep = load_sweep(write(tmp_path, text))
    assert sweep.spec.data.folds.files == [str(coco_dir / "f0.txt"), str(coco_dir / "f1.txt")]
    (coco_dir / "f1.txt").write_text("2.png\n99.png\n")
    with pytest.raises(SweepConfigError, match=r"data\.folds\.files: .*f1\.txt names image '99'"):
        load_sweep(write(tmp_path, text))
    with pytest.raises(SweepConfigError, match=r"ablation\.factors\.data\.fold: fold 2 is outside 0\.\.1"):
        load_sweep(write(tmp_path, text.replace("data.fold: [1]", "data.fold: [2]")))


def test_set_addresses_one_dotted_factor_or_variant_key(tmp_path: Path, coco_dir: Path) -> None:
    sweep = load_sweep(write(tmp_path, DATA_ABLATION), ["ablation.factors.train.lr=[0.1]",
                                                        "ablation.variants.recipe_b.train.lr=0.002"])
    assert sweep.spec.ablation.factors["train.lr"] == [0.1]
    assert sweep.spec.ablation.variants["recipe_b"]["train.lr"] == 0.002
