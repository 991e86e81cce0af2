"""RandomSquareCropResize's paste geometry is exact (issue 23, item 0).

The crop is resampled straight into the output: output pixel P shows source start + P*side/size,
and the output pixels [p0, p1) whose source lies inside the image are pasted from PIL's resize
of the source span [src0, src1). Computed in floats, src0 = left + ceil(-left*f)/f came out as
-1e-14 for some crops starting left of / above the image, and PIL raised "box offset can't be
negative" (paper-budget training crashed on widerface-mini). Here: every combination of crop
side 100-3000, negative offset and output size 320/640 against the definitions in integers
(independent of the code's formula), the old float formula where it was valid, and real images
through the full paper augmentation.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from detectors.batches import _transform  # the training transform a recipe builds
from detectors.config import SR_CROPS, recipe_from_dict
from detectors.data.loader import WiderFaceDataset
from detectors.data.transforms import RandomSquareCropResize

span = RandomSquareCropResize.paste_span
SIZES = (320, 640)


def _combinations() -> tuple[np.ndarray, np.ndarray]:
    """(side, start): every side 100-3000 with every offset -1 .. -(side - 1) (an offset of
    -side or less leaves the image; the geometry repeats with period `side` in the offset)."""
    sides = np.arange(100, 3001, dtype=np.int64)
    side = np.repeat(sides, sides - 1)
    first = np.repeat(np.cumsum(sides - 1) - (sides - 1), sides - 1)
    start = -(np.arange(len(side), dtype=np.int64) - first + 1)
    return side, start


def _old(start, side, extent, size):
    """The float formula before the fix (detectors/data/transforms.py at cdfcbbf)."""
    f = size / side
    p0 = np.ceil((np.maximum(start, 0) - start) * f).astype(np.int64)
    p1 = np.floor((np.minimum(start + side, extent) - start) * f).astype(np.int64)
    return p0, p1, start + p0 / f, start + p1 / f


@pytest.fixture(scope="module")
def combos():
    return _combinations()


def test_combinations_cover_what_the_issue_counted(combos):
    side, start = combos
    assert len(side) * len(SIZES) == 8_987_298  # the issue's "9.0M combinations"
    assert start.max() == -1 and np.all(start > -side)


@pytest.mark.parametrize("size", SIZES)
def test_start_before_the_image_is_exact_for_every_combination(combos, size):
    """Crops starting left of (or above) the image, ending inside it (extent = side)."""
    side, start = combos
    extent = side
    p0, p1, src0, src1 = span(start, side, extent, size)
    a = -start * size  # p0 is the first P with P*side >= -start*size, by definition
    assert np.all(p0 * side >= a) and np.all((p0 - 1) * side < a)
    assert np.all(p1 == size)  # the crop ends inside the image: the last pixel shows it
    assert np.all(src0 >= 0) and np.all(src1 <= extent)  # what PIL checks
    zero = a % side == 0  # the source of pixel p0 is exactly the image's first column
    assert np.all((src0 == 0) == zero) and zero.sum() > 1000
    # the spans are the rationals themselves, correctly rounded (a sample: Fraction is slow)
    for i in np.random.default_rng(size).choice(len(side), 3000, replace=False):
        s, n = int(start[i]), int(side[i])
        assert src0[i] == float(Fraction(s * size + int(p0[i]) * n, size))
        assert src1[i] == float(Fraction(s * size + int(p1[i]) * n, size))


@pytest.mark.parametrize("size", SIZES)
def test_previously_valid_geometry_unchanged_except_where_the_float_was_a_pixel_off(combos, size):
    side, start = combos
    old = _old(start, side, side, size)
    new = span(start, side, side, size)
    crashed = old[2] < 0
    assert crashed.sum() > 200  # the old formula does crash: this test can tell the two apart
    valid = ~crashed
    # where float ceil landed on the next pixel (a*size/side whole, product rounded up) the old
    # paste left one column of fill colour over image content; everywhere else: identical
    off = old[0] != new[0]
    assert np.all(old[0][off] == new[0][off] + 1) and np.all((-start * size % side)[off] == 0)
    same = valid & ~off
    assert same.sum() > 0.999 * len(side)
    assert np.array_equal(old[0][same], new[0][same])
    np.testing.assert_allclose(new[2][same], old[2][same], rtol=0, atol=1e-9)
    # the far end (inside the image): the last output pixel shows it; the old float floor of
    # side * (size / side) fell short for some sides, leaving the last column in fill colour
    assert np.all(new[1] == size)
    short = old[1] != size
    assert np.all(old[1][short] == size - 1) and 0 < short.mean() < 0.05


@pytest.mark.parametrize("size", SIZES)
def test_crop_past_the_image_end_is_exact(combos, size):
    """Crops overhanging the far end: starting at 0 (extent = side + start), and symmetric
    overhang on both ends (extent = side + 2 * start, where that leaves an image)."""
    side, start = combos
    for s, extent in ((np.zeros_like(start), side + start), (start, side + 2 * start)):
        ok = extent > 0
        s, n, e = s[ok], side[ok], extent[ok]
        p0, p1, src0, src1 = span(s, n, e, size)
        b = (e - s) * size  # p1 is the last P with P*side <= (extent - start)*size
        assert np.all(p1 * n <= b) and np.all((p1 + 1) * n > b)
        assert np.all(src0 >= 0) and np.all(src1 <= e)
        assert np.all((src1 == e) == (b % n == 0))
        old = _old(s, n, e, size)
        off = old[1] != p1  # the old floor fell one pixel short where b/side was whole
        assert np.all(old[1][off] == p1[off] - 1) and np.all((b % n)[off] == 0)


def test_crop_resize_at_a_formerly_crashing_offset():
    """A crop the old formula sent to PIL with a box offset of about -1e-14."""
    side, start = _combinations()
    p0, _, src0, _ = _old(start, side, side, 320)
    i = int(np.flatnonzero(src0 < 0)[0])
    left, n = int(start[i]), int(side[i])
    img = np.full((n, n, 3), 200, np.uint8)
    img[:, 0] = 10  # the image's first column is what pixel p0 shows
    sample = {"image": img, "boxes": np.array([[0, 0, n, n]], np.float32), "ignore": np.zeros(1, bool),
              "keypoints": np.zeros((1, 5, 2), np.float32), "keypoints_valid": np.zeros(1, bool)}
    out = RandomSquareCropResize.crop_resize(sample, left, 0, n, np.ones(1, bool), 320)
    x0 = int(p0[i])
    # the fill (the mean colour, 200) stops at p0, where the image's dark first column shows
    assert np.all(out["image"][:, x0 - 1] == 200) and np.all(out["image"][:, x0] < 200)
    assert out["boxes"][0, 0] == pytest.approx(x0, abs=1e-3)


# ---- real faces through the full paper augmentation -----------------------------------------
FUZZ_SAMPLES = 50  # per (size, seed); benchmarks/crop_fuzz.py runs 10^5


@pytest.mark.parametrize("size", SIZES)
def test_paper_augmentation_fuzz_on_real_faces(widerface_mini, size):
    """SR crops 0.3-2.0, photometric, flip (the recipe's defaults) at `size`, three seeds:
    no exception, and every kept box inside the output with positive area."""
    recipe = recipe_from_dict({"train_size": size})
    assert recipe.augmentation.crop_choices == SR_CROPS
    data = WiderFaceDataset(widerface_mini, "train", _transform(recipe), landmarks="auto")
    faces = 0
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        for index in rng.integers(0, len(data), FUZZ_SAMPLES):
            out = data[int(index), int(rng.integers(2**31))]
            boxes = out["boxes"].numpy()
            assert out["image"].shape == (3, size, size)
            assert np.all(boxes >= 0) and np.all(boxes <= size), boxes
            assert np.all(boxes[:, 2:] >= boxes[:, :2])
            faces += len(boxes)
    assert faces > FUZZ_SAMPLES  # faces were kept, not only empty crops
