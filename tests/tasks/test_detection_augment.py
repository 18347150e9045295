"""Detection augmentation: mosaic geometry and visibility rule, epoch switches, `sizes` in original
pixels, flips, colour and scale jitter, determinism in (seed, epoch, idx)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from sweeper.tasks.detection.augment import (
    AugmentError,
    clip_boxes,
    item_rng,
    mosaic,
    mosaic_active,
    parse_augment,
    resolution_at,
)
from sweeper.tasks.detection.data import CocoDetection, make_loader, set_loader_epoch
from sweeper.tasks.detection.synth import make_synthetic_coco

ALL_ON = {"mosaic_ratio": 0.5, "scale_jitter": 0.3, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3,
          "hue": 0.05, "vflip": 0.5}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), images=8, size=64, seed=0)


def _synth_ds(synth: dict, resolution: int = 48, **kwargs) -> CocoDetection:
    return CocoDetection(synth["train"], synth["images"], resolution=resolution, train=True, **kwargs)


def _one_box_case(tmp_path: Path, size: tuple[int, int] = (40, 40),
                  box: tuple[int, int, int, int] = (10, 6, 20, 12)) -> Path:
    """One image, black with a red rectangle exactly at ``box`` (xywh), annotated as that box."""
    (tmp_path / "images").mkdir(exist_ok=True)
    im = Image.new("RGB", size)
    x, y, w, h = box
    im.paste((255, 0, 0), (x, y, x + w, y + h))
    im.save(tmp_path / "images" / "a.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": list(box), "area": w * h}],
        "categories": [{"id": 1, "name": "box"}],
    }))
    return ann


def _red_bbox(img: torch.Tensor) -> list[float] | None:
    """xyxy of the pixels that are clearly red (the drawn rectangle), or None."""
    red = (img[0] > 0.5) & (img[1] < 0.5) & (img[2] < 0.5)
    ys, xs = torch.nonzero(red, as_tuple=True)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


# ------------------------------------------------------------------ epoch switches (pure)
@pytest.mark.parametrize("epoch, epochs, until, active", [
    (1, 10, 0.8, True), (8, 10, 0.8, True), (9, 10, 0.8, False), (10, 10, 0.8, False),
    (1, 10, 0.0, False), (10, 10, 1.0, True), (1, 1, 0.5, True), (2, 4, 0.5, True), (3, 4, 0.5, False),
    (7, 10, 0.7, True), (8, 10, 0.7, False),
])
def test_mosaic_active_boundaries(epoch: int, epochs: int, until: float, active: bool) -> None:
    assert mosaic_active(epoch, epochs, until) is active


@pytest.mark.parametrize("epoch, epochs, resolution, schedule, expected", [
    (1, 10, 512, None, 512),
    (10, 10, 512, [], 512),
    (1, 10, 512, [[0.0, 1024], [0.8, 2048]], 1024),
    (8, 10, 512, [[0.0, 1024], [0.8, 2048]], 1024),
    (9, 10, 512, [[0.0, 1024], [0.8, 2048]], 2048),
    (5, 10, 32, [[0.5, 64]], 32),
    (6, 10, 32, [[0.5, 64]], 64),
    (3, 3, 32, [(0.5, 64), (0.25, 48)], 64),  # entries apply in fraction order
])
def test_resolution_at_boundaries(epoch, epochs, resolution, schedule, expected) -> None:
    assert resolution_at(epoch, epochs, resolution, schedule) == expected


def test_epoch_switches_reject_zero_based_epochs() -> None:
    with pytest.raises(ValueError, match="1-based"):
        mosaic_active(0, 10, 0.5)
    with pytest.raises(ValueError, match="1-based"):
        resolution_at(1, 0, 32, None)


def test_parse_augment_defaults_and_errors() -> None:
    params = parse_augment(None)
    assert params.mosaic_ratio == 0 and params.scale_jitter == 0 and params.vflip == 0
    with pytest.raises(AugmentError, match=r"augment\.mosaic_ratoi"):
        parse_augment({"mosaic_ratoi": 0.5})
    with pytest.raises(AugmentError, match=r"augment\.hue"):
        parse_augment({"hue": 0.7})


# ------------------------------------------------------------------ mosaic geometry (constructed)
def _expected_kept(tile_boxes, offset, window, min_size, min_vis) -> list[tuple[float, ...]]:
    """The visibility rule, computed independently in plain Python."""
    ox, oy = offset
    wx0, wy0, wx1, wy1 = window
    kept = []
    for x0, y0, x1, y1 in tile_boxes:
        x0, y0, x1, y1 = x0 + ox, y0 + oy, x1 + ox, y1 + oy
        cx0, cy0, cx1, cy1 = max(x0, wx0), max(y0, wy0), min(x1, wx1), min(y1, wy1)
        w, h = cx1 - cx0, cy1 - cy0
        if w <= 0 or h <= 0:
            continue
        if min(w, h) < min_size or (w * h) / ((x1 - x0) * (y1 - y0)) < min_vis:
            continue
        kept.append((cx0, cy0, cx1, cy1))
    return kept


@pytest.mark.parametrize("centre", [(24, 40), (16, 16), (48, 20), (32, 32)])
@pytest.mark.parametrize("min_size, min_vis", [(0.0, 0.0), (2.0, 0.25), (4.0, 0.6)])
def test_mosaic_geometry_matches_visibility_rule(centre, min_size: float, min_vis: float) -> None:
    R, T = 64, 40  # canvas, tile side
    # a grid of boxes over each tile: some fully inside a quadrant, many cut at its edges
    grid = [(x, y, x + 9, y + 7) for x in range(1, T - 8, 6) for y in range(2, T - 6, 5)]
    tiles = []
    for q in range(4):
        image = torch.full((3, T, T), (q + 1) / 5.0)
        boxes = torch.tensor(grid, dtype=torch.float32)
        tiles.append((image, boxes, torch.full((len(grid),), q + 1, dtype=torch.int64),
                      torch.full((len(grid),), math.sqrt(63.0))))
    canvas, boxes, labels, sizes = mosaic(tiles, centre, R, min_size, min_vis)

    cx, cy = centre
    offsets = [(cx - T, cy - T), (cx, cy - T), (cx - T, cy), (cx, cy)]
    windows = [(0, 0, cx, cy), (cx, 0, R, cy), (0, cy, cx, R), (cx, cy, R, R)]
    expected = [_expected_kept(grid, offsets[q], windows[q], min_size, min_vis) for q in range(4)]
    assert canvas.shape == (3, R, R)
    assert len(boxes) == len(labels) == len(sizes) == sum(len(e) for e in expected)
    for q in range(4):
        mine = boxes[labels == q + 1]
        # classes stay with their boxes, in the tile's order
        torch.testing.assert_close(mine, torch.tensor(expected[q], dtype=torch.float32).reshape(-1, 4))
        wx0, wy0, wx1, wy1 = windows[q]
        assert bool(((mine[:, 0] >= wx0) & (mine[:, 1] >= wy0) & (mine[:, 2] <= wx1) & (mine[:, 3] <= wy1)).all())
        # tile pixels land in their quadrant, where the tile covers it; the rest stays 0
        ox, oy = offsets[q]
        x0, y0, x1, y1 = max(wx0, ox), max(wy0, oy), min(wx1, ox + T), min(wy1, oy + T)
        region = canvas[:, y0:y1, x0:x1]
        assert region.numel() > 0 and bool((region == (q + 1) / 5.0).all())
    assert bool(((boxes[:, :2] >= 0) & (boxes[:, 2:] <= R)).all())
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    # sizes: sqrt of the visible area, here in tile pixels = original pixels (scale 1)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    torch.testing.assert_close(sizes, areas.sqrt())


def test_clip_boxes_drops_slivers_and_low_visibility() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [8, 0, 18, 10], [9, 0, 19, 10], [-20, -20, -10, -10]], dtype=torch.float32)
    out, keep, vis = clip_boxes(boxes, (0, 0, 10, 10), min_size=2.0, min_visibility=0.15)
    assert keep.tolist() == [True, True, False, False]  # 2 px wide kept, 1 px sliver dropped, outside dropped
    assert vis.tolist() == pytest.approx([1.0, 0.2, 0.1, 0.0])
    assert out[1].tolist() == [8, 0, 10, 10]
    _, keep, _ = clip_boxes(boxes, (0, 0, 10, 10), min_size=0.0, min_visibility=0.25)
    assert keep.tolist() == [True, False, False, False]


# ------------------------------------------------------------------ sizes in original pixels
@pytest.mark.parametrize("resolution", [40, 80, 57])
def test_sizes_of_plain_items_are_in_original_pixels(tmp_path: Path, resolution: int) -> None:
    ann = _one_box_case(tmp_path, size=(40, 20), box=(10, 6, 20, 12))
    for train in (False, True):
        ds = CocoDetection(ann, tmp_path / "images", resolution=resolution, train=train, augment={"scale_jitter": 0.2})
        t = ds[0][1]
        assert t["sizes"].dtype == torch.float32
        assert t["sizes"].tolist() == pytest.approx([math.sqrt(20 * 12)])  # unclipped: jitter changes nothing


def test_sizes_of_a_mosaic_fragment_do_not_depend_on_resolution() -> None:
    # Tile = a 40 x 40 original image with one 20 x 20 box at (10, 10), resized by s = R / 40.
    # Top-left tile, centre (R * 0.3, R * 0.3): the tile's bottom-right corner sits at the centre,
    # so only the original region x, y in [28, 40) is visible: box part [28, 30) x [28, 30) -> 2 x 2.
    out = []
    for R in (40, 80):
        s = R / 40
        tile = (torch.zeros(3, R, R), torch.tensor([[10 * s, 10 * s, 30 * s, 30 * s]]),
                torch.tensor([1]), torch.tensor([20.0]))
        empty = (torch.zeros(3, R, R), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
        _, boxes, labels, sizes = mosaic([tile, empty, empty, empty], (round(0.3 * R), round(0.3 * R)), R, 0.0, 0.0)
        assert boxes.tolist() == [[0.0, 0.0, 2 * s, 2 * s]] and labels.tolist() == [1]
        # "resized area / scale^2": (2s)^2 / s^2 = 4 original px^2
        assert sizes.tolist() == pytest.approx([math.sqrt(((2 * s) ** 2) / s**2)])
        out.append(sizes)
    torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize("resolution", [40, 80])
def test_mosaic_items_sizes_follow_visible_area(tmp_path: Path, resolution: int) -> None:
    # every tile is the same image at the same scale, so each fragment's size must be
    # sqrt(its resized area) / scale, whatever the centre and quadrant
    ann = _one_box_case(tmp_path, size=(40, 40), box=(12, 14, 16, 20))
    ds = CocoDetection(ann, tmp_path / "images", resolution=resolution, train=True,
                       augment={"mosaic_ratio": 1.0, "mosaic_min_visibility": 0.0, "mosaic_min_size": 0.0})
    scale, seen = resolution / 40, 0
    for epoch in range(1, 9):
        ds.set_epoch(epoch, 8)
        img, t = ds[0]
        assert t["orig_size"] == (resolution, resolution) and t["scale"] == 1.0 and t["image_id"] == 1
        b = t["boxes"]
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        torch.testing.assert_close(t["sizes"], areas.sqrt() / scale)
        assert bool((t["sizes"] <= math.sqrt(16 * 20) + 1e-4).all())
        seen += len(b)
    assert seen > 0


# ------------------------------------------------------------------ dataset-level behaviour
def test_mosaic_items_from_synthetic_data_stay_in_the_canvas(synth: dict) -> None:
    R = 48
    ds = _synth_ds(synth, R, augment={"mosaic_ratio": 1.0, "scale_jitter": 0.4, "mosaic_min_size": 2.0,
                                      "mosaic_min_visibility": 0.25})
    total = 0
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch, 3)
        for idx in range(len(ds)):
            img, t = ds[idx]
            b = t["boxes"]
            assert img.shape == (3, R, R) and t["orig_size"] == (R, R)
            assert len(b) == len(t["labels"]) == len(t["sizes"])
            assert bool(((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= R) & (b[:, 3] <= R)).all())
            assert bool((torch.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= 2.0).all())
            assert set(t["labels"].tolist()) <= {1, 2, 3} and bool((t["sizes"] > 0).all())
            total += len(b)
    assert total > 0


def test_mosaic_ratio_zero_never_one_always_and_until_switch(synth: dict) -> None:
    R = 48
    plain = CocoDetection(synth["train"], synth["images"], resolution=R)
    never = _synth_ds(synth, R, augment={"mosaic_ratio": 0.0})
    for idx in range(len(never)):
        a, ta = never[idx]
        b, tb = plain[idx]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and ta["scale"] == tb["scale"]

    always = _synth_ds(synth, R, augment={"mosaic_ratio": 1.0, "mosaic_until": 0.8})
    native = (64, 64)  # synthetic images are 64 x 64; mosaic items report the canvas instead
    for epoch, on in [(1, True), (8, True), (9, False), (10, False)]:
        always.set_epoch(epoch, 10)
        assert always.mosaic_on is on
        sizes = {always[idx][1]["orig_size"] for idx in range(len(always))}
        assert sizes == ({(R, R)} if on else {native})

    off = _synth_ds(synth, R, augment={"mosaic_ratio": 1.0, "mosaic_until": 0.0})
    off.set_epoch(1, 10)
    assert off.mosaic_on is False and off[0][1]["orig_size"] == native


def test_mosaic_ratio_half_mixes(synth: dict) -> None:
    ds = _synth_ds(synth, 48, augment={"mosaic_ratio": 0.5})
    kinds = []
    for epoch in range(1, 6):
        ds.set_epoch(epoch, 5)
        kinds += [ds[i][1]["orig_size"] == (48, 48) for i in range(len(ds))]
    assert 0.2 < sum(kinds) / len(kinds) < 0.8


def test_same_seed_epoch_idx_gives_the_same_item(synth: dict) -> None:
    a, b = _synth_ds(synth, augment=ALL_ON, seed=3, hflip=0.5), _synth_ds(synth, augment=ALL_ON, seed=3, hflip=0.5)
    a.set_epoch(2, 4)
    b.set_epoch(2, 4)
    for idx in range(len(a)):
        torch.manual_seed(idx)  # the global RNG plays no part
        ia, ta = a[idx]
        ib, tb = b[idx]
        assert torch.equal(ia, ib)
        for key in ("boxes", "labels", "sizes"):
            assert torch.equal(ta[key], tb[key])
    other_epoch = _synth_ds(synth, augment=ALL_ON, seed=3, hflip=0.5)
    other_epoch.set_epoch(3, 4)
    other_seed = _synth_ds(synth, augment=ALL_ON, seed=4, hflip=0.5)
    other_seed.set_epoch(2, 4)
    for other in (other_epoch, other_seed):
        assert any(not torch.equal(a[i][0], other[i][0]) for i in range(len(a)))
    assert item_rng(3, 2, 5).random() == item_rng(3, 2, 5).random()


def test_epoch_is_the_same_for_any_number_of_workers(synth: dict) -> None:
    ds = _synth_ds(synth, augment=ALL_ON, seed=1, hflip=0.5)

    def run(workers: int) -> list[tuple]:
        loader = make_loader(ds, batch_size=3, shuffle=True, seed=1, workers=workers)
        ds.set_epoch(2, 3)
        set_loader_epoch(loader, seed=1, epoch=2)
        return [(t["image_id"], img.sum().item(), t["boxes"].tolist()) for imgs, tg in loader
                for img, t in zip(imgs, tg)]

    assert run(0) == run(2)


def test_colour_jitter_changes_pixels_not_boxes(synth: dict) -> None:
    plain = _synth_ds(synth)
    jitter = _synth_ds(synth, augment={"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1})
    changed = 0
    for idx in range(len(plain)):
        a, ta = plain[idx]
        b, tb = jitter[idx]
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        assert b.min() >= 0 and b.max() <= 1
        changed += int((a - b).abs().mean() > 1e-3)
    assert changed == len(plain)


def test_colour_jitter_keeps_padding_black(tmp_path: Path) -> None:
    ann = _one_box_case(tmp_path, size=(40, 20))
    ds = CocoDetection(ann, tmp_path / "images", resolution=40, train=True,
                       augment={"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2})
    img, _ = ds[0]
    assert img[:, 20:, :].abs().sum() == 0


@pytest.mark.parametrize("hflip, vflip, expected", [
    (0.0, 0.0, [20.0, 12.0, 60.0, 36.0]),
    (1.0, 0.0, [80 - 60.0, 12.0, 80 - 20.0, 36.0]),
    (0.0, 1.0, [20.0, 40 - 36.0, 60.0, 40 - 12.0]),
    (1.0, 1.0, [20.0, 4.0, 60.0, 28.0]),
])
def test_flips_map_boxes_exactly(tmp_path: Path, hflip: float, vflip: float, expected: list[float]) -> None:
    # 40 x 20 image at resolution 80: scale 2, content 80 x 40, padding below
    ann = _one_box_case(tmp_path, size=(40, 20), box=(10, 6, 20, 12))
    ds = CocoDetection(ann, tmp_path / "images", resolution=80, hflip=hflip, train=True, augment={"vflip": vflip})
    img, t = ds[0]
    assert t["boxes"].tolist() == [expected]
    assert _red_bbox(img) == pytest.approx(expected, abs=1.0)
    assert img[:, 40:, :].abs().sum() == 0  # padding stays bottom/right


def test_scale_jitter_boxes_follow_the_pixels(tmp_path: Path) -> None:
    ann = _one_box_case(tmp_path, size=(40, 40), box=(4, 22, 14, 16))
    ds = CocoDetection(ann, tmp_path / "images", resolution=40, train=True,
                       augment={"scale_jitter": 0.5, "mosaic_min_visibility": 0.0, "mosaic_min_size": 0.0})
    widths = set()
    for epoch in range(1, 13):
        ds.set_epoch(epoch, 12)
        img, t = ds[0]
        assert img.shape == (3, 40, 40)
        red = _red_bbox(img)
        if len(t["boxes"]) == 0:  # cropped away entirely
            assert red is None
            continue
        box = t["boxes"][0].tolist()
        assert red == pytest.approx(box, abs=1.5)
        widths.add(round(box[2] - box[0], 1))
        area = (box[2] - box[0]) * (box[3] - box[1])
        full = (14 * t["scale"]) * (16 * t["scale"])
        assert t["sizes"].item() == pytest.approx(math.sqrt(14 * 16 * area / full), rel=1e-4)
    assert len(widths) > 3  # the scale really varies
