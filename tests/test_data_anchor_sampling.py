"""augmentation.data_anchor_sampling: PyramidBox's sampling on real WIDER FACE boxes, and its
scale distribution against hand-computed cases of the definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors.config import recipe_from_dict
from detectors.data.transforms import DataAnchorSampling
from detectors.errors import UserError


def _never(sample, rng):
    raise AssertionError("the fallback ran although p = 1 and the image has faces")


# face size -> the anchor indices {0, ..., min(i_anchor + 1, 5)} allowed, by hand:
# 10: nearest 16 (i 0) -> {16, 32}; 24: tie 16 / 32, the smaller -> {16, 32};
# 40: nearest 32 (8 < 24) -> {16, 32, 64}; 100: nearest 128 (28 < 36) -> 16..256;
# 300: nearest 256 -> all six; 1000: nearest 512 -> all six
CASES = {10.0: 2, 24.0: 2, 40.0: 3, 100.0: 5, 300.0: 6, 1000.0: 6}


@pytest.mark.parametrize("face, allowed", CASES.items())
def test_scale_distribution_matches_the_definition(face, allowed):
    das = DataAnchorSampling(640, 1.0, otherwise=_never)
    rng = np.random.default_rng(7)
    draws = [das.target_size(face, rng) for _ in range(6000)]
    idx = np.array([i for i, _ in draws])
    size = np.array([t for _, t in draws])
    assert set(idx.tolist()) == set(range(allowed))
    counts = np.bincount(idx, minlength=allowed)
    # uniform over the allowed anchors: a chi-square test at 0.1%
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    # size = anchor * 2**u, u ~ U(-1, 1): log2(size / anchor) uniform on (-1, 1)
    u = np.log2(size / (16.0 * 2.0 ** idx))
    assert u.min() >= -1 and u.max() <= 1
    assert stats.kstest(u, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def _raw_samples(root, count: int):
    from detectors.data.loader import WiderFaceDataset

    data = WiderFaceDataset(root, "train")
    out = []
    for i in range(len(data)):
        sample = data[i]
        if (~np.asarray(sample["ignore"], bool)).any():
            out.append(sample)
        if len(out) == count:
            break
    return out


def test_on_real_boxes_the_face_gets_the_drawn_size_and_boxes_stay_inside(widerface_mini):
    das = DataAnchorSampling(640, 1.0, otherwise=_never)
    rng = np.random.default_rng(0)
    checked_size = checked_pixels = 0
    for sample in _raw_samples(widerface_mini, 20):
        face, target, left, top = das.choose(sample, rng)
        assert not sample["ignore"][face]
        out = das.apply(sample, face, target, left, top)
        assert out["image"].shape == (640, 640, 3)
        boxes = out["boxes"]
        assert len(boxes) >= 1 and (boxes >= 0).all() and (boxes <= 640).all()
        assert len(out["ignore"]) == len(boxes) == len(out["keypoints"])
        # the drawn face, mapped by hand: (box - corner) * target / sqrt(w h)
        src = sample["boxes"][face].astype(np.float64)
        f = target / np.sqrt((src[2] - src[0]) * (src[3] - src[1]))
        want = (src - [left, top, left, top]) * f
        fits = (want >= 0).all() and (want <= 640).all()
        hit = np.abs(boxes - np.clip(want, 0, 640)).max(1).argmin()
        assert np.allclose(boxes[hit], np.clip(want, 0, 640), atol=1e-3)
        if fits:  # the face fits the square: its size is exactly the drawn scale
            w, h = boxes[hit, 2] - boxes[hit, 0], boxes[hit, 3] - boxes[hit, 1]
            assert np.sqrt(w * h) == pytest.approx(target, rel=1e-4)
            checked_size += 1
            # the pixels moved with the box: mean colour of the face, before and after
            a = np.round(want).astype(int)
            s = np.round(src).astype(int)
            if min(a[2] - a[0], a[3] - a[1], s[2] - s[0], s[3] - s[1]) >= 16:
                before = sample["image"][s[1]:s[3], s[0]:s[2]].reshape(-1, 3).mean(0)
                after = out["image"][a[1]:a[3], a[0]:a[2]].reshape(-1, 3).mean(0)
                assert np.abs(before - after).max() < 12, (before, after)
                checked_pixels += 1
    assert checked_size >= 10 and checked_pixels >= 3, (checked_size, checked_pixels)


def test_probability_and_reproducibility_from_the_sample_rng(widerface_mini):
    samples = _raw_samples(widerface_mini, 4)
    das = DataAnchorSampling(160, 0.3, otherwise=lambda sample, rng: {"fallback": True})
    fallbacks = sum("fallback" in das(samples[k % 4], np.random.default_rng(k)) for k in range(300))
    assert 300 * 0.7 - 36 <= fallbacks <= 300 * 0.7 + 36  # binomial sd 7.9: 4.5 sigma
    das = DataAnchorSampling(160, 1.0, otherwise=_never)
    for k in range(4):  # a generator seeded alike gives the same sample, bit for bit
        first, again = (das(samples[k], np.random.default_rng(k)) for _ in range(2))
        assert np.array_equal(first["image"], again["image"])
        assert np.array_equal(first["boxes"], again["boxes"])
    with pytest.raises(UserError, match="augmentation.data_anchor_sampling is a probability"):
        recipe_from_dict({"augmentation": {"data_anchor_sampling": 1.5}})


def test_recipe_option_reaches_the_training_pipeline(widerface_mini):
    from detectors.batches import _transform
    from detectors.data.loader import WiderFaceDataset

    recipe = recipe_from_dict({"train_size": 320, "augmentation": {"data_anchor_sampling": 1.0}})
    assert recipe.to_dict()["augmentation"]["data_anchor_sampling"] == 1.0
    assert "data_anchor_sampling" not in recipe_from_dict({}).to_dict()["augmentation"]
    steps = _transform(recipe).transforms
    assert isinstance(steps[0], DataAnchorSampling) and steps[0].p == 1.0
    data = WiderFaceDataset(widerface_mini, "train", _transform(recipe))
    a, b = data[(3, 12345)], data[(3, 12345)]
    assert a["image"].shape == (3, 320, 320) and np.array_equal(a["image"].numpy(), b["image"].numpy())
