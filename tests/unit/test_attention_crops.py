"""Attention cropping (A.1.1) with hand-worked expectations."""

import numpy as np
import pytest

from dnd.cropping.attention import (
    attention_boxes,
    crop_id,
    iou,
    otsu_threshold,
    salient_boxes,
    select_crops,
    to_uint8,
)


def reference_otsu(gray: np.ndarray) -> int:
    """Textbook Otsu: the first t maximising w_b * w_f * (mu_b - mu_f)^2 with background = values <= t."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(float)
    total = hist.sum()
    best_t, best = 0, -1.0
    for t in range(256):
        wb = hist[: t + 1].sum() / total
        wf = 1 - wb
        if wb == 0 or wf == 0:
            continue
        mub = (hist[: t + 1] * np.arange(t + 1)).sum() / (wb * total)
        muf = (hist[t + 1 :] * np.arange(t + 1, 256)).sum() / (wf * total)
        var = wb * wf * (mub - muf) ** 2
        if var > best + 1e-9:
            best_t, best = t, var
    return best_t


def test_otsu_on_a_hand_worked_histogram():
    # 8 pixels of 0, 4 of 100, 4 of 200 (16 in all).
    # Split below 100: wb=.5 mu_b=0, wf=.5 mu_f=150 -> .25 * 150^2 = 5625.
    # Split below 200: wb=.75 mu_b=33.3, wf=.25 mu_f=200 -> .1875 * 166.7^2 = 5208.3.
    # So the threshold separates 0 from {100, 200}: any t in [0, 99]; OpenCV reports the first, 0.
    gray = np.array([0] * 8 + [100] * 4 + [200] * 4, dtype=np.uint8).reshape(4, 4)
    assert otsu_threshold(gray) == 0
    mask = gray > otsu_threshold(gray)
    assert mask.sum() == 8


def test_otsu_matches_the_textbook_definition_on_random_histograms():
    rng = np.random.default_rng(0)
    for _ in range(20):
        gray = np.concatenate([rng.normal(60, 15, 300), rng.normal(180, 20, 200)]).clip(0, 255).astype(np.uint8)
        assert otsu_threshold(gray.reshape(20, 25)) == reference_otsu(gray)


def test_to_uint8_scales_min_max_and_refuses_constant_maps():
    assert to_uint8(np.array([[1.0, 3.0], [2.0, 5.0]])).tolist() == [[0, 128], [64, 255]]
    assert to_uint8(np.full((3, 3), 0.7)) is None
    assert to_uint8(np.full((3, 3), np.nan)) is None


def test_salient_boxes_are_exact_and_largest_first():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:5, 3:7] = 1  # 4 wide x 3 high = 12
    mask[10:18, 20:28] = 1  # 8 x 8 = 64
    assert salient_boxes(mask) == [(20, 10, 28, 18), (3, 2, 7, 5)]


def test_iou_by_hand():
    assert iou((0, 0, 10, 10), (0, 0, 10, 8)) == pytest.approx(80 / 100)
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou((0, 0, 2, 2), (3, 3, 4, 4)) == 0.0


def test_select_crops_filters_overlaps_whole_image_and_count():
    boxes = [
        (0, 0, 30, 30),  # IoU with the 32x32 image = 900/1024 = 0.879 >= 0.8 cap -> dropped
        (0, 0, 10, 10),  # kept
        (0, 0, 10, 8),  # IoU 0.8 with the kept box >= 0.5 -> dropped
        (20, 20, 25, 25),  # kept
        (12, 0, 16, 4),  # kept, but only if alpha allows a third
    ]
    assert select_crops(boxes, (32, 32), 4, 0.5, 0.8) == [(0, 0, 10, 10), (20, 20, 25, 25), (12, 0, 16, 4)]
    assert select_crops(boxes, (32, 32), 2, 0.5, 0.8) == [(0, 0, 10, 10), (20, 20, 25, 25)]
    # IoU exactly at the threshold is not "below" it.
    assert select_crops([(0, 0, 10, 10), (0, 0, 10, 5)], (100, 100), 4, 0.5, 0.8) == [(0, 0, 10, 10)]


def test_whole_map_cap_is_measured_against_the_region_the_network_saw():
    # Square 500x500 image, resize 256 / centre crop 224: the network saw x, y in [31.25, 468.75),
    # whose pixel box is (31, 31, 469, 469): 438 x 438.
    region = (31, 31, 469, 469)
    assert iou(region, (0, 0, 500, 500)) == pytest.approx(438 * 438 / 250000)  # 0.767: under the cap
    assert select_crops([region], (500, 500), 4, 0.5, 0.8) == [region]  # against the image: kept
    assert select_crops([region], (500, 500), 4, 0.5, 0.8, region=region) == []  # against the map: the map
    # Wide 640x480: the view is the centre 420 x 420 at (109, 30).
    wide = (109, 30, 529, 450)
    nearly = (130, 50, 510, 430)  # 380 x 380 inside it: IoU 144400 / 176400 = 0.819
    smaller = (150, 70, 490, 410)  # 340 x 340: IoU 115600 / 176400 = 0.655
    assert iou(nearly, wide) == pytest.approx(144400 / 176400)
    assert iou(wide, (0, 0, 640, 480)) == pytest.approx(176400 / 307200)  # 0.574
    assert select_crops([wide, nearly, smaller], (640, 480), 4, 0.5, 0.8, region=wide) == [smaller]
    # Tall 480x640: the view is the centre 420 x 420 at (30, 109).
    tall = (30, 109, 450, 529)
    inside = (40, 119, 440, 519)  # 400 x 400: IoU 160000 / 176400 = 0.907 with the view, 0.521 with the image
    assert iou(inside, tall) == pytest.approx(160000 / 176400)
    assert select_crops([inside], (480, 640), 4, 0.5, 0.8) == [inside]
    assert select_crops([inside], (480, 640), 4, 0.5, 0.8, region=tall) == []


def test_map_high_everywhere_but_a_corner_gives_no_crop():
    # The reproduction: a 7x7 map high everywhere but one corner, on a 500x500 image seen through
    # resize-256/crop-224. Its salient box is the whole view, (31, 31, 469, 469): IoU 0.767 with the
    # image, 1 with the view. It adds nothing to D_probe and is not a crop.
    grid = np.ones((7, 7), dtype=np.float32)
    grid[0, 0] = 0.0
    seen = (31.25, 31.25, 468.75, 468.75)
    assert attention_boxes(grid, (500, 500), region=seen, max_crops=4) == []
    assert attention_boxes(grid, (500, 500), max_crops=4) == []  # the map over the whole image: the same
    # The same map with its high part in one half is a crop of that half.
    half = np.zeros((7, 7), dtype=np.float32)
    half[:, 4:] = 1.0
    boxes = attention_boxes(half, (500, 500), region=seen, max_crops=4)
    assert len(boxes) == 1 and boxes[0][0] > 250 and boxes[0][2] == 469


def test_constant_map_gives_no_crop():
    assert attention_boxes(np.ones((7, 7)), (224, 224)) == []
    assert attention_boxes(np.full((7, 7), np.nan), (224, 224)) == []


def test_map_is_upsampled_onto_the_region_the_network_saw():
    # A 4x4 map with one hot cell at row 1, col 2; the network saw the region x in [40, 120), y in [0, 80)
    # of a 160x80 image, so each cell is 20x20 original pixels and the hot cell covers x 80..100, y 20..40.
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[1, 2] = 1.0
    boxes = attention_boxes(grid, (160, 80), region=(40.0, 0.0, 120.0, 80.0), max_crops=4)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    # Bilinear upsampling spreads the cell by up to half a cell; the box must be centred on it.
    assert abs((x0 + x1) / 2 - 90) <= 2 and abs((y0 + y1) / 2 - 30) <= 2
    assert 10 <= x1 - x0 <= 40 and 10 <= y1 - y0 <= 40


def test_two_hot_regions_give_two_crops_largest_first():
    grid = np.zeros((8, 8), dtype=np.float32)
    grid[0:2, 0:2] = 1.0
    grid[4:8, 4:8] = 1.0
    boxes = attention_boxes(grid, (64, 64), max_crops=4)
    assert len(boxes) == 2
    area = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    assert area[0] > area[1]
    assert boxes[0][0] >= 28 and boxes[1][2] <= 24


def test_crop_ids_are_stable_and_distinct():
    # Pinned value: caches and resumed runs written by earlier releases and other processes find
    # a crop by this id, so it must not depend on the process (hash seeds) or change silently.
    assert crop_id("abc", (1, 2, 3, 4)) == "301c731d4e370681"
    assert crop_id("abc", (1, 2, 3, 4)) == crop_id("abc", tuple(np.array([1, 2, 3, 4], dtype=np.int64)))
    ids = {crop_id(parent, box) for parent in ("abc", "abd") for box in ((1, 2, 3, 4), (1, 2, 3, 5), (2, 1, 3, 4))}
    assert len(ids) == 6
