"""Datasets refused or repaired before dispatch (issue 18): the readers' own checks on fabricated
files, the image header check and RGB conversion on real files written by PIL, and the real CLI
(`sweeper validate`, `sweeper launch` with the runner replaced by a tripwire, `data stats`,
`eval`) exiting 2 with the sweep file, the field and the data file named."""
from __future__ import annotations

import json
import math
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.tasks.dbnet.text_io import TextDataError, check_text_split, read_ufo
from sweeper.tasks.detection.coco_io import CocoFormatError, check_coco_split, read_json, validate_coco_gt
from sweeper.tasks.images import MAX_SIDE, ImageError, check_image, to_rgb

runner = CliRunner()
GOOD = Path(__file__).resolve().parent / "bad_inputs" / "good"


def _gt(**ann: Any) -> dict[str, Any]:
    return {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, **ann}]}


# =========================================================================== COCO records
@pytest.mark.parametrize("edit, words", [
    (lambda d: d["annotations"][0].update(area="16"), "annotations[0].area must be a number"),
    (lambda d: d["annotations"][0].update(area=math.nan), "annotations[0].area must be a number, not NaN"),
    (lambda d: d["annotations"][0].update(area=math.inf), "annotations[0].area must be a number, not NaN or infinite"),
    (lambda d: d["annotations"][0].update(iscrowd="0"), "annotations[0].iscrowd must be 0 or 1, got '0'"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "annotations[0].iscrowd must be 0 or 1, got 2"),
    (lambda d: d["images"][0].update(id=[1]), "images[0].id must be an integer id, got [1]"),
    (lambda d: d["categories"][0].update(id={"x": 1}), "categories[0].id must be an integer id, got {'x': 1}"),
    (lambda d: d["annotations"][0].update(image_id=[1]), "annotations[0].image_id must be an integer id"),
    (lambda d: d["annotations"][0].update(category_id={"id": 1}), "annotations[0].category_id must be an integer id"),
    (lambda d: d["annotations"][0].update(id=[7]), "annotations[0].id must be an integer id"),
    (lambda d: d["images"][0].update(id=True), "images[0].id must be an integer id, got True"),
    (lambda d: d["images"].append({"id": "2", "file_name": "b.png"}), "ids must be all numbers or all strings"),
], ids=["string_area", "nan_area", "inf_area", "string_iscrowd", "iscrowd_2", "list_image_id", "dict_category_id",
        "list_ann_image_id", "dict_ann_category_id", "list_ann_id", "bool_image_id", "mixed_id_kinds"])
def test_bad_coco_record_is_named(edit: Any, words: str) -> None:
    data = _gt()
    edit(data)
    with pytest.raises(CocoFormatError) as info:
        validate_coco_gt(data, "gt.json")
    assert str(info.value).startswith("gt.json: ") and words in str(info.value), str(info.value)


def test_valid_crowd_flags_and_string_ids_pass() -> None:
    validate_coco_gt(_gt(iscrowd=1))
    validate_coco_gt(_gt(iscrowd=False))
    data = _gt()
    data["images"][0]["id"] = data["annotations"][0]["image_id"] = "img-1"
    validate_coco_gt(data)


def test_deeply_nested_json_is_a_clear_error(tmp_path: Path) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    coco, ufo = tmp_path / "coco.json", tmp_path / "ufo.json"
    coco.write_text(deep)
    ufo.write_text('{"images": ' + deep + "}")
    with pytest.raises(CocoFormatError, match=r"coco\.json: annotation file nests JSON arrays/objects too deeply"):
        read_json(coco, "annotation")
    with pytest.raises(TextDataError, match=r"ufo\.json: JSON arrays/objects nested too deeply"):
        read_ufo(ufo)


def test_non_utf8_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.json"
    bad.write_bytes(json.dumps(_gt()).replace('"a"', '"caf\u00e9"').encode("latin-1"))
    with pytest.raises(CocoFormatError, match=r"latin1\.json: cannot read annotation file: 'utf-8' codec"):
        read_json(bad, "annotation")
    with pytest.raises(TextDataError, match=r"latin1\.json: cannot read annotation file: 'utf-8' codec"):
        read_ufo(bad)


@pytest.mark.parametrize("value", [123, ["a", "b"], {"t": "x"}, True])
def test_ufo_transcription_must_be_a_string(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "ufo.json"
    word = {"points": [[0, 0], [4, 0], [4, 4], [0, 4]], "transcription": value}
    path.write_text(json.dumps({"images": {"a.png": {"words": {"w1": word}}}}))
    with pytest.raises(TextDataError) as info:
        read_ufo(path)
    assert f"{path}: images['a.png'].words['w1'].transcription must be a string (or null)" in str(info.value)


def test_ufo_null_or_missing_transcription_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "ufo.json"
    pts = [[0, 0], [4, 0], [4, 4], [0, 4]]
    path.write_text(json.dumps({"images": {"a.png": {"words": {"1": {"points": pts, "transcription": None},
                                                               "2": {"points": pts}}}}}))
    assert read_ufo(path)[0].texts == ["", ""]


# =========================================================================== image files
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (one tiny IDAT and IEND: only the claim is absurd)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _image(path: Path, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path, fmt)
    return path


def test_header_check_accepts_good_images(tmp_path: Path) -> None:
    assert check_image(_image(tmp_path / "a.png")) == (32, 24)
    assert check_image(_image(tmp_path / "a.jpg", "JPEG")) == (32, 24)
    assert check_image(_image(tmp_path / "a.bmp", "BMP")) == (32, 24)


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), "cannot read image: file is empty (0 bytes)"),
    (lambda p: p.write_bytes(_image(p).read_bytes()[:-20]), "file is truncated (PNG without its IEND chunk"),
    (lambda p: p.write_bytes(_image(p, "JPEG").read_bytes()[:-200]), "file is truncated (JPEG without its end-of-image"),
    (lambda p: p.write_bytes(b"not an image at all"), "cannot read image (header)"),
    (lambda p: p.write_bytes(_png_header(MAX_SIDE + 1, 2)), f"absurd size, {MAX_SIDE + 1}x2 px"),
    (lambda p: p.write_bytes(_png_header(16_400, 16_400)), "absurd size"),  # 269 M px: over 2**28
    (lambda p: p.write_bytes(_png_header(20_000, 20_000)), "absurd size"),  # past PIL's own bomb limit
], ids=["empty", "truncated_png", "truncated_jpeg", "not_an_image", "side_too_long", "too_many_pixels",
        "decompression_bomb"])
def test_header_check_refuses(tmp_path: Path, make: Any, words: str) -> None:
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError) as info:
        check_image(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value), str(info.value)


def test_16_bit_png_keeps_its_picture(tmp_path: Path) -> None:
    ramp = (np.arange(40 * 50).reshape(40, 50) * 2).astype(np.uint16)  # 0..3998: all above 255 but the first
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # PIL reads 16-bit PNGs as I;16 / I
        clipped = np.asarray(im.convert("RGB"))
        rgb = np.asarray(to_rgb(im))
    assert (clipped == 255).mean() > 0.9  # what PIL alone would train on: a white page
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb[..., 0])) > 200
    expected = np.rint(ramp / ramp.max() * 255).astype(np.uint8)  # the ramp, scaled by its range
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("mode", ["I", "F", "LA", "P", "CMYK", "1", "L", "RGBA", "I;16"])
def test_every_mode_becomes_rgb_with_its_content(tmp_path: Path, mode: str) -> None:
    grey = np.tile(np.linspace(0, 255, 16), (8, 1))
    if mode in ("I", "I;16"):
        im = Image.fromarray((grey * 200).astype(np.int32 if mode == "I" else np.uint16))
    elif mode == "F":
        im = Image.fromarray((grey / 255).astype(np.float32))  # 0..1 floats: PIL's convert gives 0/1 (black)
    else:
        im = Image.fromarray(grey.astype(np.uint8)).convert(mode)
    if mode in ("I;16", "P", "LA", "1"):  # through a real PNG file, as training reads it
        im.save(tmp_path / "x.png")
        im = Image.open(tmp_path / "x.png")
    rgb = np.asarray(to_rgb(im))
    assert rgb.shape == (8, 16, 3) and rgb.dtype == np.uint8
    assert int(rgb[:, -1].mean()) - int(rgb[:, 0].mean()) > 200, (mode, rgb[0, :, 0])


# =========================================================================== before dispatch
@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Valid synthetic datasets as the good baselines expect them, the cwd."""
    from sweeper.tasks.dbnet.synth import make_synthetic_receipts
    from sweeper.tasks.detection.synth import make_synthetic_coco

    make_synthetic_coco(tmp_path / "coco", images=4, size=32, seed=0)
    make_synthetic_receipts(tmp_path / "receipts", images=4, size=64, seed=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _first_coco_image(d: Path) -> Path:
    return d / "coco" / "images" / json.loads((d / "coco" / "train.json").read_text())["images"][0]["file_name"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


COCO_BREAKS = {
    "string_area": ("data.train", lambda d: _edit_json(d / "coco/train.json",
                    lambda j: j["annotations"][0].update(area="big")), "area must be a number"),
    "string_iscrowd": ("data.train", lambda d: _edit_json(d / "coco/train.json",
                       lambda j: j["annotations"][0].update(iscrowd="1")), "iscrowd must be 0 or 1"),
    "list_image_id": ("data.val", lambda d: _edit_json(d / "coco/val.json",
                      lambda j: j["images"][0].update(id=[1, 2])), "images[0].id must be an integer id"),
    "val_without_annotations": ("data.val", lambda d: _edit_json(d / "coco/val.json",
                                lambda j: j.update(annotations=[])), "every metric would be -1"),
    "train_only_crowds": ("data.train", lambda d: _edit_json(d / "coco/train.json",
                          lambda j: [a.update(iscrowd=1) for a in j["annotations"]]), "a detector would learn no"),
    "empty_image": ("data.train", lambda d: _first_coco_image(d).write_bytes(b""), "cannot read image: file is empty (0 bytes)"),
    "truncated_image": ("data.train", lambda d: _truncate(_first_coco_image(d)), "cannot read image: file is truncated"),
    "absurd_image": ("data.train", lambda d: _first_coco_image(d).write_bytes(_png_header(70_000, 70_000)),
                     "absurd size"),
    "missing_image": ("data.train", lambda d: _first_coco_image(d).unlink(), "image file not found"),
    "nested_json": ("data.val", lambda d: (d / "coco/val.json").write_text("[" * 100_000 + "]" * 100_000),
                    "nests JSON arrays/objects too deeply"),
    "non_utf8": ("data.val", lambda d: (d / "coco/val.json").write_bytes(b'{"images": "\xff\xfe"}'),
                 "cannot read annotation file: 'utf-8' codec"),
}


@pytest.mark.parametrize("case", sorted(COCO_BREAKS))
def test_bad_coco_dataset_exits_2_before_dispatch(case: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeper import runner as sweep_runner

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bad dataset reached the runner")

    monkeypatch.setattr(sweep_runner, "launch", tripwire)
    sweep = data_dir / "detection.yaml"
    shutil.copyfile(GOOD / "detection.yaml", sweep)
    assert runner.invoke(app, ["validate", str(sweep)]).exit_code == 0
    field, breaks, words = COCO_BREAKS[case]
    breaks(data_dir)
    data_file = str(data_dir / "coco" / ("val.json" if field == "data.val" else "train.json"))
    for args in (["validate", str(sweep)], ["launch", str(sweep)]):
        res = runner.invoke(app, args)
        out = " ".join(res.output.split())  # rich wraps long lines
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert "Traceback" not in out and out.count("error:") == 1, out
        assert f"{sweep}: {field}: " in out and words in out, out
        assert data_file in out or str(data_dir / "coco" / "images") in out, out


UFO_BREAKS = {
    "number_transcription": (lambda d: _edit_json(d / "receipts/train.json", lambda j: next(iter(next(iter(
        j["images"].values()))["words"].values())).update(transcription=42)), "transcription must be a string"),
    "nested_json": (lambda d: (d / "receipts/train.json").write_text('{"images": ' + "[" * 100_000 + "]" * 100_000
                                                                     + "}"), "nested too deeply"),
    "truncated_image": (lambda d: _truncate(next(iter(sorted((d / "receipts" / "images").iterdir())))),
                        "cannot read image: file is truncated"),
}


@pytest.mark.parametrize("case", sorted(UFO_BREAKS))
def test_bad_ufo_dataset_exits_2_before_dispatch(case: str, data_dir: Path) -> None:
    sweep = data_dir / "dbnet.yaml"
    shutil.copyfile(GOOD / "dbnet.yaml", sweep)
    assert runner.invoke(app, ["validate", str(sweep)]).exit_code == 0
    breaks, words = UFO_BREAKS[case]
    breaks(data_dir)
    res = runner.invoke(app, ["validate", str(sweep)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in out, (res.output, res.exception)
    assert f"{sweep}: data.train: " in out and words in out, out


def test_split_checks_name_the_file_and_record(data_dir: Path) -> None:
    check_coco_split(data_dir / "coco" / "train.json", data_dir / "coco" / "images", split="train")
    check_text_split(data_dir / "receipts" / "train.json", data_dir / "receipts" / "images")
    image = _first_coco_image(data_dir)
    image.write_bytes(b"")
    with pytest.raises(CocoFormatError) as info:
        check_coco_split(data_dir / "coco" / "train.json", data_dir / "coco" / "images")
    assert str(info.value).startswith(f"{image}: cannot read image: file is empty") and "(image id " in str(info.value)


def test_training_refuses_a_split_without_boxes_and_reads_16_bit_images(data_dir: Path) -> None:
    from sweeper.tasks.detection.data import CocoDetection, DatasetError

    train = data_dir / "coco" / "train.json"
    image = _first_coco_image(data_dir)
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(image)
    ds = CocoDetection(train, data_dir / "coco" / "images", resolution=32)
    pixels = ds[0][0]
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == 1.0 and float(pixels.std()) > 0.2
    _edit_json(train, lambda j: j.update(annotations=[]))
    with pytest.raises(DatasetError, match="a detector would learn no object"):
        CocoDetection(train, data_dir / "coco" / "images", resolution=32, train=True)


def test_data_stats_and_eval_name_a_non_utf8_file(tmp_path: Path) -> None:
    bad = tmp_path / "gt.json"
    bad.write_bytes(b'{"images": [], "categories": ["\xe9"]}')
    (tmp_path / "pred.json").write_text("[]")
    for args in (["data", "stats", str(bad)],
                 ["eval", "--task", "detection", "--gt", str(bad), "--pred", str(tmp_path / "pred.json")],
                 ["eval", "--task", "dbnet", "--gt", str(bad), "--pred", str(bad)]):
        res = runner.invoke(app, args)
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "Traceback" not in out, (args, res.output, res.exception)
        assert str(bad) in out and "utf-8" in out, (args, out)
