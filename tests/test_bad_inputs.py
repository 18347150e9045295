"""Bad inputs: every one gets one clear error naming the file and the field, or a documented
repair with a count, and nothing is dispatched (issue "Reliability and safety", part 4).

The corpus lives in ``tests/bad_inputs/`` (see its README): sweep files, each a valid baseline
(``good/``) with one mistake, and small broken annotation files. Broken images, weights and most
broken datasets are made here from a valid synthetic dataset, so no binaries are committed.
No Ray is started: sweep files go through ``load_sweep`` and the CLI's ``validate`` and
``launch --dry-run``; a real ``launch`` is only tried with the runner replaced by a tripwire.
"""
from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.config import SweepConfigError, load_sweep

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
SWEEPS = CORPUS / "sweeps"
DATASETS = CORPUS / "datasets"
runner = CliRunner()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid datasets the sweep files point at (relative paths: tests chdir here)."""
    from sweeper.tasks.dbnet.synth import make_synthetic_receipts
    from sweeper.tasks.detection.synth import make_synthetic_coco

    root = tmp_path_factory.mktemp("valid_data")
    make_synthetic_coco(root / "coco", images=4, size=32, seed=0)
    make_synthetic_receipts(root / "receipts", images=4, size=64, seed=0)
    other = json.loads((root / "coco" / "train.json").read_text())  # a data variant with another class
    other["categories"][-1]["name"] = "other"
    (root / "coco" / "other_categories.json").write_text(json.dumps(other))
    return root


@pytest.fixture()
def in_data_dir(pristine: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Also an offline, empty Hugging Face cache: whether timm's weights are there is a case."""
    monkeypatch.chdir(pristine)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(pristine / "empty-hf-hub"))
    return pristine


# =========================================================================== sweep files
@dataclass(frozen=True)
class SweepCase:
    name: str  # tests/bad_inputs/sweeps/<name>.yaml
    field: str | None  # SweepConfigError.field (None: the whole document is wrong)
    words: str  # part of the message that says what is wrong
    fix: tuple[str, str] | None  # (old, new): the one edit that makes the file valid
    overrides: tuple[str, ...] = ()  # --set arguments the case is run with
    stage: str = "load"  # load: load_sweep catches it; data: not in --dry-run (it checks no data
    # paths, by design); validate: only `sweeper validate` (the timm check), not load_sweep
    error_file: str | None = None  # the file the error is about, when not the sweep file itself


SWEEP_CASES = [
    SweepCase("typo_top_level", "budgte", "unknown key (did you mean 'budget'?)", ("budgte:", "budget:")),
    SweepCase("typo_nested_key", "budget.num_sampels", "did you mean 'num_samples'?", ("num_sampels", "num_samples")),
    SweepCase("typo_capitalised_top_level", "Budget", "unknown key (did you mean 'budget'?)", ("Budget:", "budget:")),
    SweepCase("typo_capitalised_nested_key", "budget.Num_samples", "did you mean 'num_samples'?",
              ("Num_samples", "num_samples")),
    SweepCase("typo_base_key", "base.model.fpn_chanels", "did you mean 'fpn_channels'?",
              ("fpn_chanels", "fpn_channels")),
    SweepCase("wrong_type_string_for_int", "base.train.epochs", "unable to parse string as an integer (got 'two')",
              ("epochs: two", "epochs: 2")),
    SweepCase("wrong_type_budget", "budget.num_samples", "unable to parse string as an integer (got 'many')",
              ("many", "2")),
    SweepCase("empty_choice", "search.train.batch_size", "non-empty list", ("{choice: []}", "{choice: [2, 4]}")),
    SweepCase("low_greater_than_high", "search.train.lr", "low < high", ("[1.0e-2, 1.0e-4]", "[1.0e-4, 1.0e-2]")),
    SweepCase("log_range_with_zero", "search.train.lr", "low > 0", ("[0, 1.0e-2]", "[1.0e-4, 1.0e-2]")),
    SweepCase("unknown_space_kind", "search.train.batch_size", "did you mean 'choice'?", ("choise", "choice")),
    SweepCase("choice_value_wrong_type", "search.train.batch_size", "value 'big' does not fit", ("[2, big]", "[2, 4]")),
    SweepCase("search_unknown_key", "search.train.batchsize", "did you mean 'train.batch_size'?",
              ("train.batchsize:", "train.batch_size:")),
    SweepCase("unknown_task", "task", "unknown task 'detektion' (did you mean 'detection'?)",
              ("task: detektion", "task: detection")),
    SweepCase("unknown_arch", "base.model.arch", "Input should be 'faster_rcnn', 'retinanet', 'fcos'",
              ("arch: yolov8", "arch: retinanet")),
    SweepCase("unknown_backbone", "base.model.backbone", "unknown timm model 'resnet_18'; did you mean: resnet18",
              ("resnet_18", "resnet18"), stage="validate"),
    SweepCase("dbnet_unknown_backbone", "base.model.backbone", "unknown timm model 'resnett18'; did you mean: resnet18",
              ("resnett18", "resnet18"), stage="validate"),
    SweepCase("ablation_unknown_backbone", "ablation.factors.model.backbone",
              "unknown timm model 'cspdarknet_53'; did you mean: cspdarknet53", ("cspdarknet_53", "cspdarknet53"),
              stage="validate"),
    SweepCase("pretrained_not_in_offline_cache", "search.model.backbone",
              "timm's pretrained weights for 'resnet18' (timm/resnet18.a1_in1k) in the Hugging Face cache",
              ("pretrained: true", "pretrained: false"), stage="validate"),
    SweepCase("weights_dir_without_backbone", "base.model.backbone",
              "holds no weights for backbone 'resnet18' (looked for resnet18)", (", weights: coco", ""),
              stage="validate"),
    SweepCase("unknown_objective_metric", "objective.metric", "does not report 'mAP50' (did you mean 'map50'?)",
              ("mAP50", "map50")),
    SweepCase("bad_objective_mode", "objective.mode", "'max' or 'min' (got 'maximise')", ("maximise", "max")),
    SweepCase("grid_with_optuna", "search.train.batch_size", "`grid` needs `search_alg: {name: grid}`",
              ("{grid: [2, 4]}", "{choice: [2, 4]}")),
    SweepCase("unknown_include", "include", "fragment 'fragments/nope.yaml' not found",
              ("include: [fragments/nope.yaml]\n", "")),
    SweepCase("circular_include", "include", "circular include", ("include: [fragments/loop_a.yaml]\n", ""),
              error_file="fragments/loop_b.yaml"),
    SweepCase("fragment_typo", "serach", "serach", ("include: [fragments/typo.yaml]\n", ""),
              error_file="fragments/typo.yaml"),
    SweepCase("set_missing_key", "--set train.epoch", "no such key (did you mean 'train.epochs'?)", None,
              overrides=("train.epoch=3",)),
    SweepCase("yaml_syntax_error", None, "not valid YAML at line 9", ("1.0e-2}", "1.0e-2]}")),
    SweepCase("yaml_list_not_mapping", None, "must be a YAML mapping", None),
    SweepCase("empty_file", None, "must be a YAML mapping", None),
    SweepCase("ablation_with_search", "ablation", "not both", ("ablation: {factors: {train.resolution: [96]}}\n", "")),
    SweepCase("fixed_and_searched", "search.train.lr", "both fixed in `base` and searched", (" lr: 0.01,", "")),
    SweepCase("grace_period_beyond_epochs", "scheduler.grace_period", "exceeds max_t (2)",
              ("grace_period: 5", "grace_period: 1")),
    SweepCase("promote_with_fifo", "scheduler.promote", "scheduler 'fifo' has no rungs",
              ("name: fifo, promote: true", "name: asha, promote: true")),
    SweepCase("timed_asha_without_max_t", "scheduler.max_t", "needs its last rung in seconds",
              ("grace_period: 1m}", "grace_period: 1m, max_t: 10m}")),
    SweepCase("time_limit_not_a_duration", "budget.time_limit", "'30m2h' is not a duration",
              ("time_limit: 30m2h", "time_limit: 2h30m")),
    SweepCase("missing_objective", "objective", "is required", ("budget:", "objective: {metric: map50}\nbudget:")),
    SweepCase("missing_data_file", "data.train", "coco/trian.json does not exist", ("trian", "train"), stage="data"),
    SweepCase("missing_weights_file", "base.model.weights", "nowhere/resnet18.pth not found",
              (", weights: nowhere/resnet18.pth", ""), stage="data"),
    SweepCase("eval_grid_unknown_key", "eval_grid.post.box_thresh", "sweeps only post.score_thresh",
              ("eval_grid: {post.box_thresh: [0.3]}\n", "")),
    SweepCase("bad_name", "name", "letters, digits", ("bad/name", "bad-name")),
    SweepCase("markup_in_value", "name", "(got 'bad[/]name')", ("bad[/]name", "bad-name")),
    SweepCase("fractional_gpus", "resources.gpu", "not e.g. 1.5", ("gpu: 1.5", "gpu: 1")),
    SweepCase("webhook_not_http", "notify.webhook", "must be an http:// or https:// URL (got scheme 'ftp')",
              ('"ftp://', '"https://')),
    SweepCase("dbnet_wrong_data_format", "data.format", "reads ufo or icdar2015, not 'coco'",
              ("format: coco", "format: ufo")),
    SweepCase("command_without_overrides_placeholder", "command.run", "no {overrides} placeholder",
              ("run: python train.py", "run: python train.py {overrides}")),
    SweepCase("command_with_data", "data", "reads no `data`", ("data: {train: a, val: b, images: c}\n", "")),
    SweepCase("fold_outside_range", "data.fold", "fold 2 is outside 0..1 (data.folds has 2 folds)",
              ("fold: 2}", "fold: 1}")),
    SweepCase("fold_without_folds", "data.fold", "a held-out fold needs data.folds", (", fold: 1}", "}")),
    SweepCase("data_variant_missing_file", "search.data.train", "coco/train_pseudo.json does not exist",
              ("coco/train_pseudo.json", "coco/val.json"), stage="data"),
    SweepCase("data_variant_other_categories", "search.data.train",
              "coco/other_categories.json: its categories [1: square, 2: circle, 3: other] differ from those of",
              ("coco/other_categories.json", "coco/val.json"), stage="data"),
]
#: (case, "load" | "cli") -> why it fails today; these run as strict xfails until fixed
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _sweep_params(test: str) -> list[Any]:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.name, test])]
                         if (c.name, test) in KNOWN_BUGS else []) for c in SWEEP_CASES]


def test_every_corpus_file_has_a_case() -> None:
    files = {p.stem for p in SWEEPS.glob("*.yaml")}
    assert files == {c.name for c in SWEEP_CASES}
    assert len(SWEEP_CASES) + len(DATA_CASES) + len(WEIGHT_CASES) >= 30


@pytest.mark.parametrize("case", _sweep_params("load"))
def test_bad_sweep_file_names_the_file_and_field(case: SweepCase, in_data_dir: Path) -> None:
    path = SWEEPS / f"{case.name}.yaml"
    with pytest.raises(SweepConfigError) as info:
        sweep = load_sweep(path, list(case.overrides))
        assert case.stage == "validate", "load_sweep accepted it"
        from sweeper.tasks import check_sweep

        check_sweep(sweep)
    exc, msg = info.value, str(info.value)
    expected_file = SWEEPS / (case.error_file or f"{case.name}.yaml")
    assert Path(exc.file) == expected_file and str(expected_file) in msg, msg
    assert exc.field == case.field, msg
    if case.field:
        assert f": {case.field}: " in msg, msg
    assert case.words in msg, msg


@pytest.mark.parametrize("case", _sweep_params("cli"))
def test_bad_sweep_file_cli_exits_2_and_dispatches_nothing(case: SweepCase, in_data_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeper import runner as sweep_runner

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bad sweep reached the runner")

    monkeypatch.setattr(sweep_runner, "launch", tripwire)
    path = SWEEPS / f"{case.name}.yaml"
    sets = [a for o in case.overrides for a in ("--set", o)]
    commands = [["validate", str(path), *sets]]
    if case.stage != "validate":  # the timm check runs in the preflight of a real launch
        commands += [["launch", str(path), *sets]]
    if case.stage == "load":
        commands += [["launch", str(path), "--dry-run", *sets]]
    expected_file = SWEEPS / (case.error_file or f"{case.name}.yaml")
    for args in commands:
        res = runner.invoke(app, args)
        out = res.output
        assert res.exit_code == 2, (args, out, res.exception)
        assert out.count("error:") == 1 and "Traceback" not in out, out
        assert str(expected_file) in out, out
        if case.field:
            assert case.field in out, out
        assert case.words in out, out


@pytest.mark.parametrize("case", [c for c in SWEEP_CASES if c.fix or c.overrides], ids=lambda c: c.name)
def test_one_edit_makes_the_sweep_valid(case: SweepCase, in_data_dir: Path, tmp_path: Path) -> None:
    """Each bad file fails for exactly its one reason: undoing it gives a valid sweep."""
    text = (SWEEPS / f"{case.name}.yaml").read_text()
    if case.fix:
        old, new = case.fix
        assert text.count(old) == 1, case.fix
        text = text.replace(old, new)
    fixed = tmp_path / f"{case.name}.yaml"  # no include is left, so the directory does not matter
    fixed.write_text(text)
    sweep = load_sweep(fixed)
    from sweeper.tasks import check_sweep

    check_sweep(sweep)


def test_baselines_are_valid(in_data_dir: Path) -> None:
    for path in sorted((CORPUS / "good").glob("*.yaml")):
        res = runner.invoke(app, ["validate", str(path)])
        assert res.exit_code == 0, res.output


# =========================================================================== datasets
@dataclass(frozen=True)
class DataCase:
    name: str
    loader: str  # coco | ufo | icdar
    mutate: Callable[[Path], dict[str, str]]  # breaks the copy of the valid data; returns names for `words`
    words: list[str]  # all in the message ({ann}, {images} and what mutate returned are filled in)
    repair: Callable[[Any], None] | None = None  # a repair: checks the loaded data; words are in a warning


def _coco(d: Path) -> dict[str, Any]:
    return json.loads((d / "coco" / "train.json").read_text())


def _save(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data))


def _edit_coco(edit: Callable[[dict[str, Any]], dict[str, str]]) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        data = _coco(d)
        names = edit(data)
        _save(d / "coco" / "train.json", data)
        return names
    return mutate


def _ann_name(data: dict[str, Any], i: int = 0) -> str:
    return f"annotations[{i}] (id {data['annotations'][i]['id']})"


def _set_ann(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, str]]:
    def edit(data: dict[str, Any]) -> dict[str, str]:
        data["annotations"][0][key] = value
        return {"where": _ann_name(data)}
    return edit


def _resize_box(w: float | None = None, h: float | None = None, overhang: float | None = None
                ) -> Callable[[dict[str, Any]], dict[str, str]]:
    def edit(data: dict[str, Any]) -> dict[str, str]:
        ann = data["annotations"][0]
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        x, y, bw, bh = ann["bbox"]
        if overhang is not None:  # reach `overhang` px past the right edge
            bw = img["width"] - x + overhang
        ann["bbox"] = [x, y, bw if w is None else w, bh if h is None else h]
        return {"where": _ann_name(data), "image_id": str(img["id"])}
    return edit


def _first_image(d: Path, which: str) -> tuple[Path, dict[str, str]]:
    if which == "coco":
        img = _coco(d)["images"][0]
        return d / "coco" / "images" / img["file_name"], {"id": str(img["id"])}
    name = next(iter(json.loads((d / "receipts" / "train.json").read_text())["images"]))
    return d / "receipts" / "images" / name, {"id": name}


def _break_image(which: str, how: str) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        file, names = _first_image(d, which)
        if how == "truncated_jpeg":  # re-save as JPEG (and say so in the annotations), then cut it
            from PIL import Image

            jpg = file.with_suffix(".jpg")
            with Image.open(file) as im:
                im.convert("RGB").save(jpg, quality=90)
            file.unlink()
            data = _coco(d)
            data["images"][0]["file_name"] = jpg.name
            _save(d / "coco" / "train.json", data)
            file = jpg
        if how == "missing":
            file.unlink()
        elif how == "corrupt":
            file.write_bytes(b"\x89PNG but not really an image")
        else:  # truncated: half the bytes
            data_bytes = file.read_bytes()
            file.write_bytes(data_bytes[: len(data_bytes) // 2])
        return {**names, "img": str(file)}
    return mutate


def _use(committed: str, target: str) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        shutil.copyfile(DATASETS / committed, d / target)
        return {}
    return mutate


def _unlink(target: str) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        (d / target).unlink()
        return {}
    return mutate


Points = list[list[float]]


def _edit_ufo_word(edit: Callable[[Points, int, int], Points]) -> Callable[[Path], dict[str, str]]:
    """Replace the points of the first word of the first image (edit(points, width, height))."""
    def mutate(d: Path) -> dict[str, str]:
        path = d / "receipts" / "train.json"
        data = json.loads(path.read_text())
        name, entry = next(iter(data["images"].items()))
        wid, word = next(iter(entry["words"].items()))
        word["points"] = edit(word["points"], entry["img_w"], entry["img_h"])
        _save(path, data)
        return {"where": f"{name} word {wid}", "name": name, "wid": wid}
    return mutate


def _ufo_empty(d: Path) -> dict[str, str]:
    _save(d / "receipts" / "train.json", {"images": {}})
    return {}


def _icdar_missing_image(d: Path) -> dict[str, str]:
    gt = d / "gt"
    gt.mkdir()
    (gt / "gt_000001.txt").write_text("1,1,9,1,9,5,1,5,MART\n")
    (gt / "gt_nowhere.txt").write_text("1,1,9,1,9,5,1,5,MART\n")
    return {"gt": str(gt / "gt_nowhere.txt")}


def _boxes_inside(ds: Any) -> None:
    for i in range(len(ds)):
        image, target = ds[i]
        res = image.shape[-1]
        assert float(target["boxes"].min()) >= 0 and float(target["boxes"].max()) <= res


def _dropped_one(ds: Any) -> None:
    assert ds.num_dropped == 1


def _polygons_inside(images: list[Any]) -> None:
    for im in images:
        h, w = im.size
        for p in im.polys:
            assert p[:, 0].min() >= 0 and p[:, 0].max() <= w and p[:, 1].min() >= 0 and p[:, 1].max() <= h


def _word_dropped(images: list[Any]) -> None:
    assert len(images[0].polys) == len(images[0].texts) == len(images[0].ignore)


def _write(target: str, data: bytes) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        (d / target).write_bytes(data)
        return {}
    return mutate


_DEEP = b"[" * 100_000 + b"]" * 100_000  # a RecursionError for json, unless the reader catches it
_LATIN1 = '{"images": "caf\u00e9"}'.encode("latin-1")


def _empty_image(which: str) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        file, names = _first_image(d, which)
        file.write_bytes(b"")
        return {**names, "img": str(file)}
    return mutate


def _ufo_transcription(value: Any) -> Callable[[Path], dict[str, str]]:
    def mutate(d: Path) -> dict[str, str]:
        path = d / "receipts" / "train.json"
        data = json.loads(path.read_text())
        name, entry = next(iter(data["images"].items()))
        wid, word = next(iter(entry["words"].items()))
        word["transcription"] = value
        _save(path, data)
        return {"name": name, "wid": wid}
    return mutate


DATA_CASES = [
    # ---- COCO (detection)
    DataCase("coco_missing_annotation_file", "coco", _unlink("coco/train.json"), ["{ann}: annotation file not found"]),
    DataCase("coco_missing_image_file", "coco", _break_image("coco", "missing"),
             ["{img}: image file not found", "image id {id}", "{ann}"]),
    DataCase("coco_corrupt_image_bytes", "coco", _break_image("coco", "corrupt"),
             ["{img}: cannot read image", "image id {id} in {ann}"]),
    DataCase("coco_truncated_png", "coco", _break_image("coco", "truncated"),
             ["{img}: cannot read image", "image id {id} in {ann}", "truncated"]),
    DataCase("coco_truncated_jpeg", "coco", _break_image("coco", "truncated_jpeg"),
             ["{img}: cannot read image", "image id {id} in {ann}"]),
    DataCase("coco_json_syntax_error", "coco", _use("coco_json_syntax.json", "coco/train.json"),
             ["{ann}: not valid JSON (line 1, column"]),
    DataCase("coco_missing_categories", "coco", _edit_coco(lambda data: data.pop("categories") and {}),
             ["{ann}: missing top-level key 'categories'"]),
    DataCase("coco_unknown_category_id", "coco", _edit_coco(_set_ann("category_id", 99)),
             ["{ann}: {where}: category_id 99 is not in 'categories'"]),
    DataCase("coco_unknown_image_id", "coco", _edit_coco(_set_ann("image_id", 999)),
             ["{ann}: {where}: image_id 999 is not in 'images'"]),
    DataCase("coco_bbox_not_numbers", "coco", _edit_coco(_set_ann("bbox", [1, 2, "3", 4])),
             ["{ann}: {where}: 'bbox' must be 4 finite numbers"]),
    DataCase("coco_duplicate_image_ids", "coco",
             _edit_coco(lambda data: data["images"][1].update(id=data["images"][0]["id"]) or
                        {"id": str(data["images"][0]["id"])}),
             ["{ann}: images[1]: duplicate image id {id}"]),
    DataCase("coco_empty_split", "coco", _use("coco_empty_split.json", "coco/train.json"),
             ["{ann}: 'images' is empty"]),
    DataCase("coco_file_name_escapes", "coco", _use("coco_file_name_escapes.json", "coco/train.json"),
             ["{ann}: images[1] (id 7): file_name '../outside.png' must be a relative path inside"]),
    DataCase("coco_absolute_file_name", "coco",
             _edit_coco(lambda data: data["images"][0].update(file_name="/etc/hostname") or {}),
             ["{ann}: images[0]", "file_name '/etc/hostname' must be a relative path"]),
    DataCase("coco_box_out_of_bounds", "coco", _edit_coco(_resize_box(overhang=3)),
             ["{ann}: 1 box(es) reach outside their image", "clipped", "{where}"], repair=_boxes_inside),
    DataCase("coco_zero_area_box", "coco", _edit_coco(_resize_box(w=0)),
             ["{ann}: dropped 1 annotation(s) with zero or negative box size", "{where}"], repair=_dropped_one),
    DataCase("coco_negative_width", "coco", _edit_coco(_resize_box(w=-4)),
             ["{ann}: dropped 1 annotation(s) with zero or negative box size", "{where}"], repair=_dropped_one),
    DataCase("coco_string_iscrowd", "coco", _edit_coco(_set_ann("iscrowd", "0")),
             ["{ann}: {where}: iscrowd must be 0 or 1, got '0'"]),
    DataCase("coco_list_as_image_id", "coco", _edit_coco(lambda data: data["images"][0].update(id=[1]) or {}),
             ["{ann}: images[0].id must be an integer id, got [1]"]),
    DataCase("coco_dict_as_category_id", "coco", _edit_coco(_set_ann("category_id", {"id": 1})),
             ["{ann}: annotations[0].category_id must be an integer id"]),
    DataCase("coco_no_boxes", "coco", _edit_coco(lambda data: data.update(annotations=[]) or {}),
             ["{ann}: no annotation gives a box to train on", "a detector would learn no object"]),
    DataCase("coco_deeply_nested_json", "coco", _write("coco/train.json", _DEEP),
             ["{ann}: annotation file nests JSON arrays/objects too deeply"]),
    DataCase("coco_not_utf8", "coco", _write("coco/train.json", _LATIN1),
             ["{ann}: cannot read annotation file: 'utf-8' codec"]),
    DataCase("coco_empty_image_file", "coco", _empty_image("coco"), ["{img}: cannot read image", "image id {id}"]),
    # ---- UFO / ICDAR-2015 (dbnet)
    DataCase("ufo_missing_annotation_file", "ufo", _unlink("receipts/train.json"),
             ["{ann}: annotation file not found"]),
    DataCase("ufo_missing_image_file", "ufo", _break_image("ufo", "missing"),
             ["{img}: image file not found", "{ann} images['{id}']"]),
    DataCase("ufo_corrupt_image_bytes", "ufo", _break_image("ufo", "corrupt"),
             ["{img}: cannot read image", "{ann} images['{id}']"]),
    DataCase("ufo_truncated_png", "ufo", _break_image("ufo", "truncated"), ["{img}: cannot read image", "truncated"]),
    DataCase("ufo_json_syntax_error", "ufo", _use("ufo_json_syntax.json", "receipts/train.json"),
             ["{ann}: not valid JSON (line 2, column"]),
    DataCase("ufo_duplicate_image", "ufo", _use("ufo_duplicate_image.json", "receipts/train.json"),
             ["{ann}: key '000001.png' appears twice"]),
    DataCase("ufo_empty_split", "ufo", _ufo_empty, ["{ann}: 'images' is empty"]),
    DataCase("ufo_file_name_escapes", "ufo", _use("ufo_file_name_escapes.json", "receipts/train.json"),
             ["{ann}: image file name '../000001.png' must be a relative path inside"]),
    DataCase("ufo_points_not_numbers", "ufo", _edit_ufo_word(lambda p, w, h: [[str(x), y] for x, y in p]),
             ["{ann}: images['{name}'].words['{wid}'].points must be a list of [x, y] pairs"]),
    DataCase("ufo_polygon_outside_image", "ufo", _edit_ufo_word(lambda p, w, h: [[x + w / 2, y] for x, y in p]),
             ["{ann}: invalid polygons", "outside_clipped=1", "{where}"], repair=_polygons_inside),
    DataCase("ufo_zero_area_polygon", "ufo", _edit_ufo_word(lambda p, w, h: [[1, 1], [5, 1], [9, 1], [3, 1]]),
             ["{ann}: invalid polygons", "zero_area=1 (dropped", "{where}"], repair=_word_dropped),
    DataCase("ufo_polygon_with_two_points", "ufo", _edit_ufo_word(lambda p, w, h: p[:2]),
             ["{ann}: invalid polygons", "too_few_points=1 (dropped: fewer than 3 points", "{where}"],
             repair=_word_dropped),
    DataCase("icdar_line_not_numbers", "icdar", lambda d: {"gt": str(DATASETS / "icdar_bad_line" / "gt_000001.txt")},
             ["{gt}:3: the first 8 fields must be numbers"]),
    DataCase("icdar_missing_image", "icdar", _icdar_missing_image, ["{gt}: image not found in {images}"]),
    DataCase("ufo_number_transcription", "ufo", _ufo_transcription(42),
             ["{ann}: images['{name}'].words['{wid}'].transcription must be a string (or null), got int 42"]),
    DataCase("ufo_list_transcription", "ufo", _ufo_transcription(["a", "b"]),
             ["{ann}: images['{name}'].words['{wid}'].transcription must be a string"]),
    DataCase("ufo_deeply_nested_json", "ufo", _write("receipts/train.json", b'{"images": ' + _DEEP + b"}"),
             ["{ann}: JSON arrays/objects nested too deeply"]),
    DataCase("ufo_not_utf8", "ufo", _write("receipts/train.json", _LATIN1), ["{ann}: cannot read annotation file"]),
    DataCase("ufo_empty_image_file", "ufo", _empty_image("ufo"),
             ["{img}: cannot read image: file is empty (0 bytes)", "{ann} images['{id}']"]),
]


def _paths(d: Path, loader: str) -> dict[str, str]:
    sub = "coco" if loader == "coco" else "receipts"
    return {"ann": str(d / sub / "train.json"), "images": str(d / sub / "images")}


def _load_data(case: DataCase, d: Path) -> Any:
    """Load the (broken) split as the task would and read every item; returns what was loaded."""
    paths = _paths(d, case.loader)
    if case.loader == "coco":
        from sweeper.tasks.detection.data import CocoDetection

        ds = CocoDetection(paths["ann"], paths["images"], resolution=32, train=True, hflip=0.0)
        for i in range(len(ds)):
            ds[i]
        return ds
    from sweeper.tasks.dbnet.data import TextDetDataset, load_icdar2015, load_ufo

    if case.loader == "ufo":
        images = load_ufo(paths["ann"], paths["images"])
    else:
        gt_dir = DATASETS / "icdar_bad_line" if case.name == "icdar_line_not_numbers" else d / "gt"
        images = load_icdar2015(gt_dir, paths["images"])
    ds = TextDetDataset(images, 64, with_labels=False)
    for i in range(len(ds)):
        ds[i]
    return images


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.name)
def test_bad_dataset_names_the_file_and_the_record(case: DataCase, pristine: Path, tmp_path: Path) -> None:
    from sweeper.tasks.dbnet.data import TextDataError
    from sweeper.tasks.detection.data import DatasetError

    d = tmp_path / "data"
    shutil.copytree(pristine, d)
    names = {**_paths(d, case.loader), **case.mutate(d)}
    words = [w.format(**names) for w in case.words]
    error = DatasetError if case.loader == "coco" else TextDataError
    if case.repair is None:
        with pytest.raises(error) as info:
            _load_data(case, d)
        msg = str(info.value)
        assert all(w in msg for w in words), (words, msg)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = _load_data(case, d)
    msgs = [str(w.message) for w in caught if all(word in str(w.message) for word in words)]
    assert len(msgs) == 1, (words, [str(w.message) for w in caught])
    case.repair(loaded)


def test_a_valid_dataset_loads_without_warnings(pristine: Path, tmp_path: Path) -> None:
    d = tmp_path / "data"
    shutil.copytree(pristine, d)
    _edit_coco(_resize_box(overhang=0.5))(d)  # rounding noise is not reported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for loader in ("coco", "ufo"):
            _load_data(DataCase("valid", loader, lambda d: {}, []), d)


# =========================================================================== weights
RESNET18 = {"arch": "retinanet", "backbone": "resnet18", "fpn_channels": 32, "pretrained": True}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _resnet18_state(features_only: bool = True) -> dict[str, Any]:
    import timm

    return timm.create_model("resnet18", features_only=features_only).state_dict()


def _truncated(suffix: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        path = d / f"resnet18{suffix}"
        _save_state(path, _resnet18_state())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return make


def _linear(d: Path) -> Path:
    import torch

    path = d / "linear.pth"
    _save_state(path, torch.nn.Linear(8, 4).state_dict())
    return path


def _dbnet(d: Path) -> Path:
    from sweeper.tasks.dbnet.model import build_dbnet

    path = d / "dbnet.pth"
    _save_state(path, build_dbnet({"backbone": "resnet18", "channels": 16}).state_dict())
    return path


def _text(d: Path) -> Path:
    path = d / "weights.pth"
    path.write_text("these are not weights\n")
    return path


WEIGHT_CASES = [
    ("weights_truncated_pth", _truncated(".pth"), ["cannot read {file} (truncated or not a checkpoint?)"]),
    ("weights_truncated_safetensors", _truncated(".safetensors"),
     ["cannot read {file} (truncated or not a checkpoint?)"]),
    ("weights_not_a_checkpoint", _text, ["cannot read {file}"]),
    ("weights_of_a_linear_layer", _linear, ["{file} does not fit timm model 'resnet18'", "20 of its 20 weight tensors",
                                            "missing e.g. conv1.weight",
                                            "unexpected keys in the file e.g. weight, bias"]),
    ("weights_of_a_dbnet", _dbnet, ["{file} does not fit timm model 'resnet18'", "missing e.g. conv1.weight",
                                    "unexpected keys in the file e.g. backbone.conv1.weight"]),
]


@pytest.mark.parametrize("name, make, words", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_weights_name_the_file(name: str, make: Callable[[Path], Path], words: list[str], tmp_path: Path) -> None:
    from sweeper.tasks.detection.model import build_model

    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        build_model({**RESNET18, "weights": str(path)}, num_classes=3, resolution=64)
    msg = str(info.value)
    assert msg.startswith("model.weights: ")
    assert all(w.format(file=path) in msg for w in words), msg
    assert len(msg) < 1500, msg


@pytest.mark.parametrize("features_only", [True, False], ids=["features_state_dict", "full_model_state_dict"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_matching_weights_load(features_only: bool, suffix: str, tmp_path: Path) -> None:
    import torch

    from sweeper.tasks.detection.model import build_model

    state = _resnet18_state(features_only)
    path = tmp_path / f"resnet18{suffix}"
    _save_state(path, state)
    model = build_model({**RESNET18, "weights": str(path)}, num_classes=3, resolution=64)
    torch.testing.assert_close(model.backbone.body.state_dict()["conv1.weight"], state["conv1.weight"])
