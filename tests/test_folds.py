"""Cross-validation folds (`data.folds`, `data.fold`): the split is a pure function of the image
names and the seed, balanced, the same in every process; both tasks train on the other folds and
validate on the held-out one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.schema import Folds
from sweeper.tasks.folds import (
    FoldError,
    categories,
    fold_files_keys,
    fold_of_keys,
    held_out,
    held_out_for,
    image_key,
    image_names,
)

NAMES = [f"img_{i:03d}.png" for i in range(23)]


def test_k_folds_partition_the_images_in_balanced_folds() -> None:
    folds = [held_out(NAMES, fold=f, k=5, seed=0) for f in range(5)]
    assert all(sum(f[i] for f in folds) == 1 for i in range(len(NAMES)))  # every image in exactly one fold
    assert sorted(sum(f) for f in folds) == [4, 4, 5, 5, 5]  # sizes differ by at most one


def test_the_split_depends_on_the_names_and_seed_only() -> None:
    a = fold_of_keys(NAMES, 4, seed=0)
    assert fold_of_keys(list(reversed(NAMES)), 4, seed=0) == a  # not on the order of the file
    assert fold_of_keys(NAMES, 4, seed=1) != a  # the seed moves images
    # not on Python's per-process string hash: the same split in other interpreters
    code = ("import json, sys; from sweeper.tasks.folds import fold_of_keys; "
            f"print(json.dumps(fold_of_keys({NAMES!r}, 4, seed=0)))")
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": hash_seed, "PATH": ""})
        assert json.loads(out.stdout) == a


def test_images_that_differ_only_by_extension_share_a_fold() -> None:
    assert image_key("a/b.PNG") == "a/b" and image_key("receipt.v2") == "receipt.v2"
    held = held_out(["x.jpg", "x.png", *NAMES], fold=0, k=3, seed=0)
    assert held[0] == held[1]


def test_a_fold_outside_the_split_is_refused() -> None:
    with pytest.raises(FoldError, match=r"fold 5 is outside 0\.\.4"):
        held_out(NAMES, fold=5, k=5)


def _coco(path: Path, names: list[str], cats: list[dict] | None = None) -> Path:
    images = [{"id": i + 1, "file_name": n, "width": 8, "height": 8} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": [],
                                "categories": cats or [{"id": 1, "name": "a"}]}))
    return path


def test_image_names_of_every_annotation_form(tmp_path: Path) -> None:
    assert image_names(_coco(tmp_path / "c.json", ["b.png", "a.png"])) == ["b.png", "a.png"]
    (tmp_path / "u.json").write_text(json.dumps({"images": {"r1.jpg": {"words": {}}, "r0.jpg": {"words": {}}}}))
    assert image_names(tmp_path / "u.json") == ["r1.jpg", "r0.jpg"]
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("gt_img_2.txt", "gt_img_1.txt", "notes.md"):
        (gt / name).write_text("")
    assert image_names(gt) == ["img_1", "img_2"]
    (tmp_path / "fold.txt").write_text("a.png\n\n b.png \n")
    assert image_names(tmp_path / "fold.txt") == ["a.png", "b.png"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FoldError, match="bad.json: cannot read it as JSON"):
        image_names(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text("[]")
    with pytest.raises(FoldError, match="has no `images`"):
        image_names(tmp_path / "odd.json")


def test_categories_are_compared_by_id_and_name(tmp_path: Path) -> None:
    a = _coco(tmp_path / "a.json", ["x.png"], [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}])
    b = _coco(tmp_path / "b.json", ["y.png"], [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    assert categories(a) == categories(b) == [(1, "a"), (2, "b")]
    assert categories(tmp_path) is None  # an ICDAR folder has none


def test_fold_files_are_the_users_split(tmp_path: Path) -> None:
    f0 = _coco(tmp_path / "f0.json", ["img_000.png", "img_001.png"])
    (tmp_path / "f1.txt").write_text("img_002.png\nimg_003\n")
    folds = Folds(files=[str(f0), str(tmp_path / "f1.txt")])
    assert held_out_for(NAMES[:5], folds, 1) == [False, False, True, True, False]
    assert held_out_for(NAMES[:5], folds, 0) == [True, True, False, False, False]  # img_004: trained on in both
    (tmp_path / "f2.txt").write_text("img_001.png\n")
    with pytest.raises(FoldError, match="image 'img_001' is also in fold 0"):
        fold_files_keys([f0, tmp_path / "f2.txt"])


def test_folds_schema_takes_k_or_files() -> None:
    assert Folds(k=5).count == 5 and Folds(files=["a", "b", "c"]).count == 3
    for bad in ({}, {"k": 3, "files": ["a", "b"]}, {"files": ["a"]}, {"files": ["a", "a"]}, {"k": 1}):
        with pytest.raises(ValueError):
            Folds(**bad)


# --------------------------------------------------------------------------- the tasks


def test_detection_trains_on_the_other_folds_and_validates_on_the_held_out_one(tmp_path: Path) -> None:
    from sweeper.tasks.detection.synth import make_synthetic_coco
    from sweeper.tasks.detection.task import DetectionTask

    make_synthetic_coco(tmp_path, images=16, size=32, seed=0)
    train = json.loads((tmp_path / "train.json").read_text())
    data = {"format": "coco", "train": str(tmp_path / "train.json"), "val": None, "images": str(tmp_path / "images"),
            "folds": {"k": 3, "seed": 0}}
    cfg = {"task": "detection", "model": {"arch": "retinanet", "backbone": "resnet18", "fpn_channels": 8},
           "train": {"epochs": 1, "batch_size": 2, "resolution": 32, "workers": 0}}
    seen: list[set[int]] = []
    for fold in range(3):
        task = DetectionTask({**cfg, "data": {**data, "fold": fold}})
        train_ids = {im["id"] for im in task.train_ds.images}
        val_ids = {im["id"] for im in task.val_ds.images}
        assert not train_ids & val_ids and train_ids | val_ids == {im["id"] for im in train["images"]}
        assert {im["id"] for im in task.val_gt["images"]} == val_ids  # the evaluator scores the held-out fold
        assert all(a["image_id"] in val_ids for a in task.val_gt["annotations"])
        assert task.val_gt["categories"] == train["categories"]
        seen.append(val_ids)
    assert max(map(len, seen)) - min(map(len, seen)) <= 1
    assert set().union(*seen) == {im["id"] for im in train["images"]}


def test_dbnet_trains_on_the_other_folds_and_validates_on_the_held_out_one(tmp_path: Path) -> None:
    from sweeper.tasks.dbnet.spec import DBNetBase
    from sweeper.tasks.dbnet.synth import make_synthetic_receipts
    from sweeper.tasks.dbnet.task import DBNetTask

    paths = make_synthetic_receipts(tmp_path, images=8, size=64, seed=0)
    names = list(json.loads(Path(paths["train"]).read_text())["images"])
    cfg = DBNetBase().model_dump()
    cfg["model"].update(channels=8)
    cfg["train"].update(epochs=1, batch_size=2, resolution=64, workers=0)
    cfg.update(task="dbnet", data={"format": "ufo", "train": paths["train"], "images": paths["images"],
                                   "folds": {"k": 2, "seed": 3}, "fold": 1})
    task = DBNetTask(cfg)
    held = held_out(names, fold=1, k=2, seed=3)
    assert [m.name for m in task.val_ds.images] == [n for n, h in zip(names, held) if h]
    assert [m.name for m in task.train_ds.images] == [n for n, h in zip(names, held) if not h]
