"""DBNet text data: UFO / ICDAR-2015 loading, polygon checks, input errors, geometry, batching."""
from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper.tasks.dbnet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POLYGON_ISSUES,
    TextDataError,
    TextDetDataset,
    TextImage,
    collate,
    load_icdar2015,
    load_ufo,
    validate_polygons,
)

HAS_LABELS = importlib.util.find_spec("sweeper.tasks.dbnet.labels") is not None
QUAD = [[1, 1], [9, 1], [9, 5], [1, 5]]


def write_images(images_dir: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """Black images of the given (width, height)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(images_dir / name)


def write_ufo(tmp: Path, images: dict, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    write_images(tmp / "images", sizes if sizes is not None else {name: (20, 20) for name in images})
    path = tmp / "ann.json"
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def _words(*polys, **extra) -> dict:
    return {"words": {f"{i + 1:04d}": {"points": p, **extra} for i, p in enumerate(polys)}}


# ----------------------------------------------------------------------------- UFO


def test_ufo_loads_polygons_texts_and_dont_care(tmp_path: Path) -> None:
    ann = write_ufo(tmp_path, {
        "a.png": {"words": {
            "1": {"points": QUAD, "transcription": "TOTAL"},
            "2": {"points": [[2, 2], [6, 2], [6, 8], [4, 9], [2, 8]], "transcription": "###"},
            "3": {"points": [[10.5, 10], [15, 10], [15, 14], [10.5, 14]], "illegibility": True},
            "4": {"points": [[0, 0], [20, 0], [20, 20], [0, 20]]},  # no transcription
        }, "img_w": 20, "orientation": "Horizontal"},  # extra keys (as in real UFO files) are fine
        "sub/b.png": {"words": {}},
        "c.png": {},  # test splits carry no words at all
    }, sizes={"a.png": (20, 20), "sub/b.png": (30, 10), "c.png": (8, 8)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair -> no warning
        images = load_ufo(ann, tmp_path / "images")
    a, b, c = images
    assert a.name == "a.png" and a.file == tmp_path / "images" / "a.png" and a.size == (20, 20)
    assert [p.shape for p in a.polys] == [(4, 2), (5, 2), (4, 2), (4, 2)]
    assert all(p.dtype == np.float64 for p in a.polys)
    assert a.polys[2].tolist() == [[10.5, 10], [15, 10], [15, 14], [10.5, 14]]
    assert a.texts == ["TOTAL", "###", "", ""]
    assert a.ignore == [False, True, True, False]
    assert b.name == "sub/b.png" and b.size == (10, 30) and b.polys == []
    assert c.polys == [] and c.texts == [] and c.ignore == []
    assert len(load_ufo(ann, tmp_path / "images", max_images=2)) == 2


def test_ufo_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"a.png": (8, 8)})
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": {"a.png": {"words": {}},}}')
    with pytest.raises(TextDataError, match=r"broken\.json: not valid JSON \(line 1, column"):
        load_ufo(bad, tmp_path / "images")


@pytest.mark.parametrize("content, match", [
    ('{"img": {}}', "UFO format"),
    ('{"images": {}}', "'images' is empty"),
    ('{"images": {"a.png": []}}', r"images\['a.png'\] must be an object"),
    ('{"images": {"a.png": {"words": [1]}}}', r"images\['a.png'\]\.words must be an object"),
    ('{"images": {"a.png": {"words": {"7": {"text": "x"}}}}}', r"words\['7'\] has no 'points'"),
    ('{"images": {"a.png": {"words": {"7": {"points": [1, 2, 3, 4, 5, 6]}}}}}', r"words\['7'\]\.points must be"),
    ('{"images": {"a.png": {"words": {"7": {"points": [[1, "x"], [2, 2], [3, 3]]}}}}}', r"\.points must be"),
])
def test_ufo_malformed_fields_name_file_and_field(tmp_path: Path, content: str, match: str) -> None:
    write_images(tmp_path / "images", {"a.png": (8, 8)})
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    with pytest.raises(TextDataError, match=re.escape(str(ann)) + ".*" + match):
        load_ufo(ann, tmp_path / "images")


def test_missing_annotation_file_and_images_dir(tmp_path: Path) -> None:
    with pytest.raises(TextDataError, match="nope.json: annotation file not found"):
        load_ufo(tmp_path / "nope.json", tmp_path)
    ann = tmp_path / "ann.json"
    ann.write_text('{"images": {"a.png": {}}}')
    with pytest.raises(TextDataError, match="images directory not found"):
        load_ufo(ann, tmp_path / "no_images")


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    ann = write_ufo(tmp_path, {"a.png": _words(QUAD), "gone.jpg": _words(QUAD)}, sizes={"a.png": (20, 20)})
    with pytest.raises(TextDataError, match=r"gone\.jpg: image file not found \(referenced by .*ann\.json"):
        load_ufo(ann, tmp_path / "images")


def test_undecodable_image_fails_at_load_truncated_one_when_opened(tmp_path: Path) -> None:
    ann = write_ufo(tmp_path, {"a.png": _words(QUAD)})
    (tmp_path / "images" / "a.png").write_bytes(b"not an image at all")
    with pytest.raises(TextDataError, match=r"a\.png: cannot read image"):
        load_ufo(ann, tmp_path / "images")

    # a file cut short fails the load-time header check (no IEND chunk at its end) ...
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "images" / "a.png")
    data = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "a.png").write_bytes(data[:60])
    with pytest.raises(TextDataError, match=r"a\.png: cannot read image: file is truncated"):
        load_ufo(ann, tmp_path / "images")
    # ... and one with a valid header and end but broken pixel data fails when decoded
    (tmp_path / "images" / "a.png").write_bytes(data[:60] + data[-12:])
    images = load_ufo(ann, tmp_path / "images")
    ds = TextDetDataset(images, 32, with_labels=False)
    with pytest.raises(TextDataError, match=r"a\.png: cannot read image"):
        ds[0]


@pytest.mark.parametrize("name", ["../x.png", "sub/../../x.png", "/tmp/x.png", "..\\x.png", "C:\\x.png", ""])
def test_file_names_escaping_the_images_dir_are_rejected(tmp_path: Path, name: str) -> None:
    write_images(tmp_path, {"x.png": (8, 8)})  # exists beside images/, so only the name check can stop it
    write_images(tmp_path / "images", {"ok.png": (8, 8)})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": {"ok.png": {}, name: {}}}))
    with pytest.raises(TextDataError, match="must be a relative path inside the images directory"):
        load_ufo(ann, tmp_path / "images")


# ----------------------------------------------------------------------------- ICDAR 2015


def write_icdar(tmp: Path, files: dict[str, str], images: dict[str, tuple[int, int]]) -> tuple[Path, Path]:
    gt_dir = tmp / "gt"
    gt_dir.mkdir(parents=True)
    for name, text in files.items():
        (gt_dir / name).write_bytes(text.encode("utf-8"))
    write_images(tmp / "images", images)
    return gt_dir, tmp / "images"


def test_icdar2015_bom_commas_dont_care_and_image_lookup(tmp_path: Path) -> None:
    gt_dir, images_dir = write_icdar(tmp_path, {
        "gt_img_1.txt": "\ufeff1,1,9,1,9,5,1,5,Genaxis Theatre\r\n"
                        "2,2,6,2,6,8,2,8,1,234,56\r\n"           # transcription with commas
                        "\r\n"
                        "10,10,15.5,10,15.5,14,10,14,###\r\n",
        "gt_img_2.txt": "1,1,9,1,9,5,1,5\n",                     # no transcription at all
        "gt_img_3.txt": "",                                        # an image without text
        "notes.txt": "not a gt file",
    }, {"img_1.jpg": (20, 20), "img_2.png": (30, 20), "img_3.jpeg": (10, 10)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = load_icdar2015(gt_dir, images_dir)
    assert [im.name for im in images] == ["img_1.jpg", "img_2.png", "img_3.jpeg"]
    one, two, three = images
    assert one.texts == ["Genaxis Theatre", "1,234,56", "###"]
    assert one.ignore == [False, False, True]
    assert one.polys[0].tolist() == QUAD and one.polys[2].tolist() == [[10, 10], [15.5, 10], [15.5, 14], [10, 14]]
    assert two.texts == [""] and two.ignore == [False] and two.size == (20, 30)
    assert three.polys == []
    assert len(load_icdar2015(gt_dir, images_dir, max_images=1)) == 1


def test_icdar2015_quoted_transcriptions_read_as_evaluation_reads_them(tmp_path: Path) -> None:
    gt_dir, images_dir = write_icdar(tmp_path, {"gt_a.txt": '1,1,9,1,9,5,1,5,"a, \\"b\\""\n1,1,9,1,9,5,1,5,"###"\n'},
                                     {"a.png": (20, 20)})
    (a,) = load_icdar2015(gt_dir, images_dir)
    assert a.texts == ['a, "b"', "###"] and a.ignore == [False, True]


def test_icdar2015_errors_name_file_and_line(tmp_path: Path) -> None:
    gt_dir, images_dir = write_icdar(tmp_path, {"gt_a.txt": "1,1,9,1,9,5,1,5,ok\n1,2,x,4,5,6,7,8,bad\n"},
                                     {"a.png": (20, 20)})
    with pytest.raises(TextDataError, match=r"gt_a\.txt:2: the first 8 fields must be numbers"):
        load_icdar2015(gt_dir, images_dir)
    (gt_dir / "gt_a.txt").write_text("1,2,3,4,5\n")
    with pytest.raises(TextDataError, match=r"gt_a\.txt:1: expected x1,y1"):
        load_icdar2015(gt_dir, images_dir)
    (gt_dir / "gt_a.txt").write_text("1,1,9,1,9,5,1,5,ok\n")
    (gt_dir / "gt_b.txt").write_text("1,1,9,1,9,5,1,5,x\n")
    with pytest.raises(TextDataError, match=r"gt_b\.txt: image not found in .*\(tried b\.jpg"):
        load_icdar2015(gt_dir, images_dir)
    (gt_dir / "gt_b.txt").unlink()
    (gt_dir / "gt_a.txt").write_bytes(b"1,1,9,1,9,5,1,5,\xff\xfe\n")
    with pytest.raises(TextDataError, match=r"gt_a\.txt: cannot read as UTF-8"):
        load_icdar2015(gt_dir, images_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextDataError, match="no gt_<name>.txt files"):
        load_icdar2015(empty, images_dir)


# ----------------------------------------------------------------------------- polygon checks

BAD = {
    "too_few_points": [[1, 1], [5, 5]],
    "zero_area": [[1, 1], [5, 5], [9, 9], [3, 3]],               # collinear
    "self_intersecting": [[1, 1], [9, 5], [9, 1], [1, 5]],       # corners out of order (bow tie)
    "outside_clipped": [[-4, 2], [12, 2], [12, 30], [-4, 30]],   # sticks out of a 20 x 20 image
    "outside_dropped": [[30, 30], [40, 30], [40, 40], [30, 40]],
}


@pytest.mark.parametrize("kind", list(BAD))
def test_validate_polygons_counts_each_kind(kind: str) -> None:
    good = np.array(QUAD, dtype=float)
    checked, counts = validate_polygons([good, np.array(BAD[kind], dtype=float)], size=(20, 20))
    assert counts == {k: int(k == kind) for k in POLYGON_ISSUES}
    assert checked[0] is not None and checked[0].tolist() == QUAD  # valid polygons are untouched
    if kind.startswith("outside_clipped"):
        assert checked[1].min() >= 0 and checked[1][:, 0].max() <= 20 and checked[1][:, 1].max() <= 20
        assert sorted(map(tuple, checked[1].tolist())) == [(0, 2), (0, 20), (12, 2), (12, 20)]
    elif kind == "self_intersecting":  # repaired into the intended quad, clockwise from top-left
        assert checked[1].tolist() == [[1, 1], [9, 1], [9, 5], [1, 5]]
    else:
        assert checked[1] is None


def test_validate_polygons_general_cases() -> None:
    # no size: no bounds check; a self-intersecting pentagon keeps its largest valid part
    star = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 15]], dtype=float)
    checked, counts = validate_polygons([star, np.array([[-5, -5], [5, -5], [0, 5]])], size=None)
    assert counts["self_intersecting"] == 1 and counts["outside_clipped"] == 0
    assert checked[0] is not None and len(checked[0]) >= 3
    from shapely.geometry import Polygon
    assert Polygon(checked[0]).is_valid and Polygon(checked[0]).area > 0
    assert checked[1].tolist() == [[-5, -5], [5, -5], [0, 5]]
    # repaired AND outside: both kinds counted, result valid and inside
    checked, counts = validate_polygons([np.array([[1, 1], [30, 5], [30, 1], [1, 5]], dtype=float)], size=(20, 20))
    assert counts["self_intersecting"] == 1 and counts["outside_clipped"] == 1
    assert checked[0][:, 0].max() <= 20 and Polygon(checked[0]).is_valid


def test_invalid_polygons_dropped_or_fixed_and_reported_once_per_dataset(tmp_path: Path) -> None:
    images = {"a.png": _words(QUAD, *BAD.values(), transcription="w"),
              "b.png": _words(BAD["too_few_points"], BAD["self_intersecting"], QUAD)}
    ann = write_ufo(tmp_path, images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = load_ufo(ann, tmp_path / "images")
    assert len(caught) == 1, [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert msg.startswith(f"{ann}: invalid polygons in 9 checked")
    for kind, n in {"too_few_points": 2, "zero_area": 1, "self_intersecting": 2,
                    "outside_clipped": 1, "outside_dropped": 1}.items():
        assert f"{kind}={n} ({POLYGON_ISSUES[kind]}" in msg
    assert "e.g. a.png word 0002, b.png word 0001" in msg  # where to look
    # survivors keep their texts/ignore flags aligned
    assert len(a.polys) == len(a.texts) == len(a.ignore) == 3  # good, repaired, clipped
    assert len(b.polys) == 2 and b.polys[0].tolist() == QUAD  # the bow tie, corners put back in order
    # ICDAR: same checks, one warning naming the directory
    gt_dir, images_dir = write_icdar(tmp_path / "ic", {
        "gt_a.txt": "1,1,9,1,9,5,1,5,ok\n1,1,5,5,9,9,3,3,line\n", "gt_b.txt": "-4,2,12,2,12,30,-4,30,big\n"},
        {"a.png": (20, 20), "b.png": (20, 20)})
    with pytest.warns(UserWarning) as record:
        a, b = load_icdar2015(gt_dir, images_dir)
    assert len(record) == 1
    assert "zero_area=1" in str(record[0].message) and "outside_clipped=1" in str(record[0].message)
    assert "gt_a.txt:2" in str(record[0].message) and str(record[0].message).startswith(str(gt_dir))
    assert len(a.polys) == 1 and b.texts == ["big"]


# ----------------------------------------------------------------------------- dataset geometry


def _geometry_case(tmp_path: Path) -> list[TextImage]:
    # 40 wide x 20 high, a red block over x 4..12, y 2..8 and its polygon
    (tmp_path / "images").mkdir()
    im = Image.new("RGB", (40, 20))
    im.paste((255, 0, 0), (4, 2, 12, 8))
    im.save(tmp_path / "images" / "wide.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": {"wide.png": {"words": {
        "1": {"points": [[4, 2], [12, 2], [12, 8], [4, 8]], "transcription": "RED"},
        "2": {"points": [[20, 10], [33.3, 10], [33.3, 17.7], [20, 17.7]], "transcription": "###"}}}}}))
    return load_ufo(ann, tmp_path / "images")


def _red(image: torch.Tensor) -> torch.Tensor:
    """Mask of pixels that were (255, 0, 0) before normalisation."""
    rgb = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return (rgb[0] > 0.5) & (rgb[1] < 0.5)  # 0.5: half-covered edge pixels of the bilinear x2 count


def test_resize_pad_normalise_and_exact_mapping_back(tmp_path: Path) -> None:
    images = _geometry_case(tmp_path)
    ds = TextDetDataset(images, 80, with_labels=False)
    image, maps, meta = ds[0]
    assert image.shape == (3, 80, 80) and image.dtype == torch.float32 and maps == {}
    assert meta["scale"] == 2.0 and meta["orig_size"] == (20, 40) and meta["name"] == "wide.png"
    assert meta["texts"] == ["RED", "###"] and meta["ignore"] == [False, True] and not meta["flipped"]
    ys, xs = torch.nonzero(_red(image), as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (8, 24, 4, 16)  # block x2
    assert meta["input_polys"][0].tolist() == [[8, 4], [24, 4], [24, 16], [8, 16]]
    assert torch.all(image[:, 40:, :] == 0)  # wide image: padding at the bottom only
    assert image[:, 39, 0].abs().sum() > 0  # black pixel, normalised -> not zero
    # an awkward scale: mapping back input / scale returns the original polygons
    ds = TextDetDataset(images, 57, with_labels=False)
    _, _, meta = ds[0]
    assert meta["scale"] == 57 / 40
    for orig, inp, loaded in zip(meta["polys"], meta["input_polys"], images[0].polys):
        np.testing.assert_allclose(inp / meta["scale"], orig, rtol=0, atol=1e-12)
        assert orig is loaded  # meta carries the original polygons, not resized copies


def test_hflip_mirrors_image_and_polygons_but_not_meta_polys(tmp_path: Path) -> None:
    images = _geometry_case(tmp_path)
    assert not TextDetDataset(images, 80, hflip=1.0, train=False, with_labels=False)[0][2]["flipped"]
    image, _, meta = TextDetDataset(images, 80, hflip=1.0, train=True, with_labels=False)[0]
    assert meta["flipped"]
    ys, xs = torch.nonzero(_red(image), as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (80 - 24, 80 - 8, 4, 16)
    assert meta["input_polys"][0][:, 0].tolist() == [72, 56, 56, 72]  # x -> 80 - x (resized width)
    assert meta["polys"][0].tolist() == [[4, 2], [12, 2], [12, 8], [4, 8]]
    assert torch.all(image[:, 40:, :] == 0)  # padding still bottom


def test_tall_image_pads_right_and_max_images(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"t.png": (10, 40), "u.png": (10, 40)})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": {"t.png": _words(QUAD), "u.png": {}}}))
    ds = TextDetDataset(load_ufo(ann, tmp_path / "images"), 64, max_images=1, with_labels=False)
    assert len(ds) == 1
    image, _, meta = ds[0]
    assert meta["scale"] == 1.6 and torch.all(image[:, :, 16:] == 0) and not torch.all(image[:, :, :16] == 0)


@pytest.mark.parametrize("kwargs, match", [({"resolution": 0}, "resolution"), ({"hflip": 1.5}, "hflip"),
                                           ({"max_images": 0}, "max_images")])
def test_bad_dataset_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(TextDataError, match=match):
        TextDetDataset([], **{"resolution": 32, **kwargs})


@pytest.mark.skipif(not HAS_LABELS, reason="sweeper.tasks.dbnet.labels not written yet")
def test_labels_on_resized_polygons_and_collate(tmp_path: Path) -> None:
    images = _geometry_case(tmp_path)
    cfg = {"shrink_ratio": 0.4, "thresh_min": 0.3, "thresh_max": 0.7, "min_text_size": 4}
    ds = TextDetDataset(images, 80, label_cfg=cfg)
    image, maps, meta = ds[0]
    assert set(maps) == {"prob", "prob_mask", "thresh", "thresh_mask"}
    assert all(m.shape == (80, 80) and m.dtype == torch.float32 for m in maps.values())
    prob = maps["prob"]
    ys, xs = torch.nonzero(prob > 0.5, as_tuple=True)
    # the shrunk RED polygon lies inside its resized box x 8..24, y 4..16, nowhere else
    assert len(xs) > 0 and xs.min() >= 8 and xs.max() < 24 and ys.min() >= 4 and ys.max() < 16
    # the don't-care polygon (x 40..66.6, y 20..35.4 resized) is masked out of the loss
    assert maps["prob_mask"][28, 52] == 0 and maps["prob_mask"][60, 60] == 1

    batch_images, batch_maps, metas = collate([ds[0], ds[0]])
    assert batch_images.shape == (2, 3, 80, 80)
    assert {k: tuple(v.shape) for k, v in batch_maps.items()} == {k: (2, 80, 80) for k in maps}
    assert [m["name"] for m in metas] == ["wide.png", "wide.png"]


def test_collate_without_labels(tmp_path: Path) -> None:
    ds = TextDetDataset(_geometry_case(tmp_path), 48, with_labels=False)
    images, maps, metas = collate([ds[0], ds[0], ds[0]])
    assert images.shape == (3, 3, 48, 48) and maps == {} and len(metas) == 3
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert next(iter(loader))[0].shape == (1, 3, 48, 48)
