"""Training/test transforms: boxes and keypoints stay on their pixels; SR makes faces smaller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.data.transforms import (BASELINE_CROPS, SR_CROPS, Compose, MarkSmallIgnore, Normalize,
                                       PhotoMetricDistortion, RandomFlip, RandomSquareCrop,
                                       RandomSquareCropResize, Resize, colour_matrix,
                                       build_test_transform, build_train_transform)
from detectors.data.widerface import load_split, read_image


@pytest.fixture(scope="module")
def mini_train(widerface_mini):
    return load_split(widerface_mini, "train", landmarks="auto")


def _sample(record, image=None) -> dict:
    k = len(record.boxes)
    return {"image": read_image(record.path) if image is None else image, "boxes": record.boxes_xyxy(),
            "ignore": record.invalid | record.zero_size,
            "keypoints": record.keypoints.astype(np.float32).reshape(k, 5, 2),
            "keypoints_valid": record.keypoints_valid.copy(), "image_id": record.image_id}


def _big_records(split, n: int, min_side: float = 60):
    """Records with at least one valid face of short side >= min_side having landmarks."""
    out = []
    for r in split.records:
        b = r.boxes
        if np.any((np.minimum(b[:, 2], b[:, 3]) >= min_side) & r.keypoints_valid & ~r.invalid):
            out.append(r)
        if len(out) == n:
            break
    return out


def _inside(kps: np.ndarray, boxes: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    lo, hi = boxes[:, None, :2] - tol, boxes[:, None, 2:] + tol
    return np.all((kps >= lo) & (kps <= hi), axis=(1, 2))


def test_flip_hand_case_swaps_left_right():
    img = np.zeros((10, 100, 3), np.uint8)
    img[:, 0] = 255  # first column white
    kps = np.array([[[12, 25], [28, 25], [20, 30], [14, 35], [26, 35]]], np.float32)
    s = {"image": img, "boxes": np.array([[10, 20, 30, 40]], np.float32), "ignore": np.zeros(1, bool),
         "keypoints": kps, "keypoints_valid": np.ones(1, bool)}
    f = RandomFlip.flip(s)
    np.testing.assert_array_equal(f["boxes"], [[70, 20, 90, 40]])
    # the image-left eye after the flip is the old right eye mirrored: x = 100 - 28
    np.testing.assert_array_equal(f["keypoints"][0], [[72, 25], [88, 25], [80, 30], [74, 35], [86, 35]])
    assert f["image"][0, 99, 0] == 255 and f["image"][0, 0, 0] == 0


def test_flip_twice_is_identity_and_keeps_left_eye_left_on_real_faces(mini_train):
    for r in _big_records(mini_train, 5):
        s = _sample(r)
        f = RandomFlip.flip(s)
        ok = s["keypoints_valid"] & (s["keypoints"][:, 0, 0] < s["keypoints"][:, 1, 0])
        assert np.all(f["keypoints"][ok, 0, 0] < f["keypoints"][ok, 1, 0])
        ff = RandomFlip.flip(f)
        np.testing.assert_array_equal(ff["image"], s["image"])
        np.testing.assert_allclose(ff["boxes"], s["boxes"], atol=1e-3)
        np.testing.assert_allclose(ff["keypoints"], s["keypoints"], atol=1e-3)


def _patch(img: np.ndarray, box: np.ndarray, n: int = 12) -> np.ndarray:
    """The box's pixels resampled to n x n (float)."""
    return np.asarray(Image.fromarray(img).resize((n, n), Image.BILINEAR, box=tuple(float(v) for v in box)), float)


def test_crop_resize_flip_maps_boxes_onto_the_same_pixels(mini_train):
    rng = np.random.default_rng(0)
    cropper = RandomSquareCrop(SR_CROPS)
    same, shifted = [], []
    for r in _big_records(mini_train, 12):
        s = _sample(r)
        h, w = s["image"].shape[:2]
        for _ in range(3):
            left, top, side = cropper._patch(h, w, rng)
            c = (s["boxes"][:, :2] + s["boxes"][:, 2:]) / 2
            keep = (c[:, 0] > left) & (c[:, 0] < left + side) & (c[:, 1] > top) & (c[:, 1] < top + side)
            o = Resize(640)(RandomSquareCrop.crop(s, left, top, side, keep))
            fused = RandomSquareCropResize.crop_resize(s, left, top, side, keep, 640)
            # the fused step (used in training) maps geometry identically and pixels nearly so
            np.testing.assert_allclose(fused["boxes"], o["boxes"], atol=1e-3)
            np.testing.assert_allclose(fused["keypoints"], o["keypoints"], rtol=1e-5, atol=1e-2)
            assert np.abs(fused["image"][8:-8, 8:-8].astype(float) - o["image"][8:-8, 8:-8]).mean() < 3
            if rng.random() < 0.5:
                o = fused
            flip = rng.random() < 0.5
            if flip:
                o = RandomFlip.flip(o)
            for j, src in zip(range(len(o["boxes"])), np.flatnonzero(keep)):
                b, sb = o["boxes"][j], s["boxes"][src]
                inside = sb[0] >= max(left, 0) and sb[1] >= max(top, 0) and sb[2] <= min(left + side, w) \
                    and sb[3] <= min(top + side, h)
                if min(b[2] - b[0], b[3] - b[1]) < 24 or not inside or r.invalid[src]:
                    continue
                want = _patch(s["image"], sb)
                want = want[:, ::-1] if flip else want
                same.append(np.abs(_patch(o["image"], b) - want).mean())
                dx = (b[2] - b[0]) / 2  # half a face sideways, as a wrong mapping would be
                off = b + np.array([dx, 0, dx, 0]) if b[2] + dx <= 640 else b - np.array([dx, 0, dx, 0])
                shifted.append(np.abs(_patch(o["image"], off) - want).mean())
    assert len(same) >= 10
    # a box lands on its own face: patch error is small and far below a half-face shift's
    assert np.median(same) < 10 and np.median(same) < 0.4 * np.median(shifted), (np.median(same), np.median(shifted))


def test_crop_geometry_exact_and_mean_fill_outside():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:60, 0:80]
    img = np.stack([xx * 3, yy * 4, 200 - xx - yy], -1) + rng.integers(0, 8, (60, 80, 3))
    img = img.astype(np.uint8)  # smooth, like photos: a subsampled mean is close to the mean
    boxes = np.array([[10, 10, 20, 30], [70, 50, 79, 59], [-5, 40, 5, 50]], np.float32)
    kps = np.repeat(((boxes[:, None, :2] + boxes[:, None, 2:]) / 2), 5, 1)
    s = {"image": img, "boxes": boxes, "ignore": np.zeros(3, bool), "keypoints": kps,
         "keypoints_valid": np.ones(3, bool)}
    # square of side 120 (2.0 x short edge 60) at (-30, -20): the image sits inside it
    o = RandomSquareCrop.crop(s, -30, -20, 120, np.array([True, True, True]))
    assert o["image"].shape == (120, 120, 3)
    np.testing.assert_array_equal(o["image"][20:80, 30:110], img)
    mean = img.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(o["image"][0, 0], mean, atol=3)  # estimated from a pixel subsample
    np.testing.assert_array_equal(o["image"][119, 119], o["image"][0, 0])
    np.testing.assert_allclose(o["boxes"], boxes + [30, 20, 30, 20])
    np.testing.assert_allclose(o["keypoints"], kps + [30, 20])
    # an inner crop drops the face whose centre is outside and clips the kept ones
    keep = np.array([True, False, False])
    o = RandomSquareCrop.crop(s, 12, 0, 40, keep)
    np.testing.assert_allclose(o["boxes"], [[0, 10, 8, 30]])
    np.testing.assert_allclose(o["keypoints"][0, 0], [3, 20])


def test_random_crop_keeps_a_face_centre_and_keypoints_inside_boxes(mini_train):
    rng = np.random.default_rng(2)
    t = build_train_transform(640, SR_CROPS, photometric=False)
    for r in _big_records(mini_train, 8, min_side=20):
        s = _sample(r)
        before = _inside(s["keypoints"], s["boxes"]) & s["keypoints_valid"]
        for _ in range(4):
            o = t(s, rng)
            assert o["image"].shape == (3, 640, 640) and o["image"].dtype == torch.float32
            boxes, kps = o["boxes"].numpy(), o["keypoints"].numpy()
            assert len(boxes) >= 1 and np.all(boxes >= 0) and np.all(boxes <= 640)
            assert (~o["ignore"]).any()
            # faces whose 5 points were inside their box and whose box was not clipped keep them inside
            unclipped = np.all((boxes > 0) & (boxes < 640), axis=1)
            valid = o["keypoints_valid"].numpy() & unclipped
            if valid.any():
                still = _inside(kps[valid], boxes[valid], 0.5).mean()
                assert still >= before[s["keypoints_valid"]].mean() - 0.15, still


def _small_fraction(split, choices, draws: int, rng, shrink: int = 4) -> tuple[int, int]:
    """Faces < 32 px (sqrt area, not ignored) after crop + resize to 640, over random draws.

    Geometry only: a blank image of the record's size / shrink with boxes / shrink and a
    resize to 640 / shrink gives the same output sizes / shrink, 16x cheaper than real pixels."""
    t = Compose([RandomSquareCrop(choices), Resize(640 // shrink)])
    small = total = 0
    for _ in range(draws):
        r = split.records[rng.integers(len(split.records))]
        with Image.open(r.path) as im:
            w, h = im.size
        k = len(r.boxes)
        s = {"image": np.zeros((h // shrink, w // shrink, 3), np.uint8), "boxes": r.boxes_xyxy() / shrink,
             "ignore": r.invalid | r.zero_size, "keypoints": np.zeros((k, 5, 2), np.float32),
             "keypoints_valid": np.zeros(k, bool)}
        o = t(s, rng)
        b = o["boxes"][~o["ignore"]] * shrink
        size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
        small += int((size < 32).sum())
        total += len(size)
    return small, total


def test_sample_redistribution_shifts_face_sizes_toward_small(mini_train):
    """SCRFD Fig. 4: crops up to 2x the short edge give many more faces under 32 px."""
    base_small, base_total = _small_fraction(mini_train, BASELINE_CROPS, 400, np.random.default_rng(3))
    sr_small, sr_total = _small_fraction(mini_train, SR_CROPS, 400, np.random.default_rng(3))
    base, sr = base_small / base_total, sr_small / sr_total
    # measured: baseline ~0.63, SR ~0.79 of faces < 32 px; small-face count ~1.8x
    assert sr - base > 0.08, (base, sr)
    assert sr_small > 1.4 * base_small, (base_small, sr_small)


def test_small_faces_marked_ignore_after_resize():
    s = {"image": np.zeros((100, 100, 3), np.uint8),
         "boxes": np.array([[0, 0, 6, 20], [10, 10, 30, 30], [40, 40, 48, 48]], np.float32),
         "ignore": np.array([False, False, True]), "keypoints": np.zeros((3, 5, 2), np.float32),
         "keypoints_valid": np.zeros(3, bool)}
    o = MarkSmallIgnore(4)(Resize(50)(s))  # sides halve: 3, 10, 4 px
    np.testing.assert_array_equal(o["ignore"], [True, False, True])
    np.testing.assert_allclose(o["boxes"][1], [5, 5, 15, 15])


def test_normalize_contract_and_test_transform():
    img = np.zeros((768, 1024, 3), np.uint8)
    img[0, 0] = (255, 0, 128)
    s = {"image": img, "boxes": np.array([[100, 200, 164, 264]], np.float32), "ignore": np.zeros(1, bool),
         "keypoints": np.full((1, 5, 2), 132, np.float32), "keypoints_valid": np.ones(1, bool)}
    o = Normalize()(s)
    assert o["image"].shape == (3, 768, 1024) and o["image"].dtype == torch.float32
    np.testing.assert_allclose(o["image"][:, 0, 0].numpy(), [127.5 / 128, -127.5 / 128, 0.5 / 128])
    assert o["ignore"].dtype == torch.bool and o["keypoints"].shape == (1, 5, 2)
    t = build_test_transform(640)(s)
    assert t["image"].shape == (3, 640, 640) and t["scale"] == 0.625
    assert torch.all(t["image"][:, 480:] == 0)  # padding below the 640 x 480 resized image
    np.testing.assert_allclose(t["boxes"].numpy(), [[62.5, 125, 102.5, 165]])


def test_photometric_neutral_is_identity_and_brightness_shifts(mini_train):
    img = read_image(mini_train.records[0].path)[:200, :200]
    s = {"image": img, "boxes": np.zeros((0, 4), np.float32), "ignore": np.zeros(0, bool),
         "keypoints": np.zeros((0, 5, 2), np.float32), "keypoints_valid": np.zeros(0, bool)}
    neutral = PhotoMetricDistortion(0, (1, 1), (1, 1), 0)  # all steps drawn, none changes pixels
    rng = np.random.default_rng(0)
    for _ in range(8):
        np.testing.assert_array_equal(neutral(s, rng)["image"], img)
    bright = PhotoMetricDistortion(32, (1, 1), (1, 1), 0)
    deltas = set()
    for _ in range(20):
        d = bright(s, rng)["image"].astype(int) - img
        mid = (img > 40) & (img < 215)
        vals = np.unique(d[mid])
        assert len(vals) <= 2 and np.abs(vals).max() <= 32  # one global shift (+-1 rounding)
        deltas.add(int(vals[0]))
    assert len(deltas) > 3  # a random shift per call, sometimes none


def test_colour_matrix_keeps_grey_and_luma_and_desaturates():
    grey = np.full((1, 3), 100.0, np.float32)
    np.testing.assert_allclose(grey @ colour_matrix(1.3, 17).T, grey, atol=1e-3)  # greys have no hue
    rgb = np.array([[200.0, 50.0, 30.0]], np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose((rgb @ colour_matrix(0.7, 15).T) @ np.array([0.299, 0.587, 0.114]), luma, atol=1e-2)
    flat = rgb @ colour_matrix(0.0, 0).T  # saturation 0: grey of the same luma
    np.testing.assert_allclose(flat, np.repeat(luma[:, None], 3, 1), atol=1e-3)
    np.testing.assert_allclose(rgb @ colour_matrix(1.0, 0).T, rgb, atol=1e-3)
    red, turned = np.array([255.0, 0, 0]), np.array([255.0, 0, 0]) @ colour_matrix(1.0, 60).T
    assert turned[1] > red[1] + 40 and turned[2] < 0  # +60 turns red toward yellow (HSV direction)
