"""The training crop-resize on torch's uint8 antialiased kernel (RandomSquareCropResize,
resampler 'torch'): pixels land where the box mapping says, also for squares starting left of
/ above the image (its fill-padded input); it agrees with PIL's resize (the former path)
away from the square's edges; the mean fill colour is the subsample mean it always was."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.data.transforms import SR_CROPS, RandomSquareCrop, RandomSquareCropResize, _mean_colour
from detectors.data.widerface import load_split, read_image

crop_resize = RandomSquareCropResize.crop_resize


def _sample(img: np.ndarray) -> dict:
    return {"image": img, "boxes": np.zeros((0, 4), np.float32), "ignore": np.zeros(0, bool),
            "keypoints": np.zeros((0, 5, 2), np.float32), "keypoints_valid": np.zeros(0, bool)}


def _bar_centre(resampler: str, axis: int, left: int, top: int, side: int, size: int = 64) -> tuple[float, float]:
    """A 90 x 120 black image with a bright 8-pixel bar across `axis` (1: columns 56-63, 0:
    rows 40-47): (the bar's intensity centroid in the output along that axis, in continuous
    pixel coordinates, where the mapping x -> (x - start) * size / side puts its centre)."""
    img = np.zeros((90, 120, 3), np.uint8)
    start, c = (left, 56) if axis == 1 else (top, 40)
    if axis == 1:
        img[:, c:c + 8] = 200
    else:
        img[c:c + 8] = 200
    out = crop_resize(_sample(img), left, top, side, np.zeros(0, bool), size, resampler)["image"][..., 0]
    f = size / side
    want = (c + 4 - start) * f
    other = int((45 - (top if axis == 1 else left)) * f)  # a line through the image's middle
    line = (out[other] if axis == 1 else out[:, other]).astype(float)
    lo, hi = int(want - 7 * f) - 2, int(want + 7 * f) + 3  # the bar and its blur, no fill
    p = np.arange(lo, hi)
    return float((line[lo:hi] * (p + 0.5)).sum() / line[lo:hi].sum()), want


# (left, top, side): squares starting before the image on both axes, on one, on neither;
# on each axis at least three of them put the first image pixel's source start (paste_span's
# src0, which the kernel cannot take) far enough from a whole pixel that ignoring it would
# move the output by over 0.15 pixels
CROPS = [(-36, -63, 219), (-12, -46, 137), (-30, -51, 202), (-81, -117, 218), (-98, -60, 220),
         (13, -4, 104), (0, 0, 90), (20, 10, 70)]


@pytest.mark.parametrize("axis", [1, 0], ids=["x", "y"])
def test_torch_crop_resize_puts_a_bar_where_the_mapping_says(axis):
    """The bar's centroid is within 0.03 output pixels of the hand-computed (c + 4 - start) *
    size / side. Dropping the fractional start (resampling from floor(src0)) would move it by
    frac(src0) * size / side, over 0.15 pixels for three or more of the crops."""
    worst, sensitive = 0.0, 0
    for left, top, side in CROPS:
        got, want = _bar_centre("torch", axis, left, top, side)
        worst = max(worst, abs(got - want))
        start = left if axis == 1 else top
        src0 = RandomSquareCropResize.paste_span(start, side, 120 if axis == 1 else 90, 64)[2]
        sensitive += (src0 % 1) * 64 / side > 0.15
    assert sensitive >= 3  # cases that a shifted input would get wrong
    assert worst < 0.03, worst


def test_torch_and_pil_crop_resize_agree_away_from_the_square_edges(widerface_mini):
    """Real photos, SR crops at 640 px: both resamplers give the same geometry and the same
    fill; the pixels more than 2 from the pasted region's edges are within one level (torch's
    kernel is a port of Pillow-SIMD's; their fixed-point rounding differs)."""
    records = load_split(widerface_mini, "train").records[:6]
    rng = np.random.default_rng(3)
    cropper = RandomSquareCrop(SR_CROPS)
    compared = 0
    for r in records:
        img = read_image(r.path)
        h, w = img.shape[:2]
        for _ in range(2):
            left, top, side = cropper._patch(h, w, rng)
            a = crop_resize(_sample(img), left, top, side, np.zeros(0, bool), 640, "torch")["image"]
            b = crop_resize(_sample(img), left, top, side, np.zeros(0, bool), 640, "pil")["image"]
            x0, x1 = (int(v) for v in RandomSquareCropResize.paste_span(left, side, w, 640)[:2])
            y0, y1 = (int(v) for v in RandomSquareCropResize.paste_span(top, side, h, 640)[:2])
            inside = np.zeros((640, 640), bool)
            inside[y0:y1, x0:x1] = True
            np.testing.assert_array_equal(a[~inside], b[~inside])  # the mean fill
            d = np.abs(a.astype(int) - b)[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
            assert d.max() <= 1, (left, top, side, d.max())
            compared += d.size
    assert compared > 1e6


@pytest.mark.parametrize("shape", [(768, 1024), (7, 5), (3, 3), (2, 9), (1, 1), (641, 1023)])
def test_mean_colour_is_the_plain_subsample_mean(shape):
    """Oracle: every 4th pixel from the third per axis, averaged in float64 and rounded (the
    whole image when that subsample is empty)."""
    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    sub = img[2::4, 2::4].reshape(-1, 3)
    sub = sub if len(sub) else img.reshape(-1, 3)
    np.testing.assert_array_equal(_mean_colour(img), np.round(sub.astype(np.float64).mean(0)).astype(np.uint8))
