"""Training and test transforms on face samples, boxes and keypoints carried through each.

A sample is a dict: `image` uint8 (H, W, 3) RGB (numpy, or a torch tensor on input), `boxes`
float32 (K, 4) x1, y1, x2, y2 in pixels (continuous coordinates: pixel i covers [i, i + 1)),
`ignore` bool (K,), `keypoints` float32 (K, 5, 2) (x, y) in pixels (order: left eye, right eye,
nose, left mouth corner, right mouth corner), `keypoints_valid` bool (K,), plus pass-through
keys (`image_id`). Every transform is a callable `t(sample, rng=None) -> sample`; random ones
draw from `rng` (a numpy Generator) or, when it is None, from a Generator seeded from NumPy's
global state, so seeding the global RNGs per sample (detectors.batches) makes them exact.
The last step is `Normalize` (float32, the contract of docs/architecture.md, "Data samples")
or, for training batches, `ToUint8Tensor` (uint8; the trainer's device finishes it: docs/data.md).

The square crop follows SCRFD (Guo et al. 2021, sec. 3.1; its RandomSquareCrop): a side of
`scale * short edge`, scale drawn from the crop choices; baseline [0.3, 0.45, 0.6, 0.8, 1.0],
sample redistribution adds [1.2, 1.4, 1.6, 1.8, 2.0]; a crop beyond the image is filled with
the image's mean colour; faces whose centre leaves the crop are dropped, the others clipped.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["BASELINE_CROPS", "SR_CROPS", "FLIP_ORDER", "Compose", "RandomSquareCrop", "RandomSquareCropResize",
           "DataAnchorSampling", "PYRAMIDBOX_ANCHORS", "Resize",
           "ResizeLongSide", "RandomFlip", "PhotoMetricDistortion", "colour_matrix", "MarkSmallIgnore", "Normalize",
           "ToUint8Tensor", "build_train_transform", "build_test_transform", "PHOTOMETRIC_PARAMS", "PAD_VALUE",
           "MEAN", "STD", "RESAMPLERS"]

BASELINE_CROPS: tuple[float, ...] = (0.3, 0.45, 0.6, 0.8, 1.0)
SR_CROPS: tuple[float, ...] = BASELINE_CROPS + (1.2, 1.4, 1.6, 1.8, 2.0)
FLIP_ORDER = (1, 0, 2, 4, 3)  # keypoints after a horizontal flip: eyes and mouth corners swap
PHOTOMETRIC_PARAMS = 13  # numbers per image of PhotoMetricDistortion.draw
# The uint8 image pads with 128 (nearest to the normalised zero, 127.5); the device step then
# zeroes the padding from `image_hw`, so the normalised padding is exactly 0 as before.
PAD_VALUE = 128
MEAN, STD = 127.5, 128.0  # normalisation: (RGB - MEAN) / STD

Sample = dict[str, Any]


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    # from NumPy's global state, so per-sample global seeding (detectors.batches) is exact
    return rng if rng is not None else np.random.default_rng(np.random.randint(0, 2**31 - 1))


def _image(sample: Sample) -> np.ndarray:
    img = sample["image"]
    return img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img)


def _with(sample: Sample, **changes: Any) -> Sample:
    out = dict(sample)
    out.update(changes)
    return out


def _mean_colour(img: np.ndarray) -> np.ndarray:
    """uint8 (3,) mean RGB, estimated from every 4th pixel per axis (16x cheaper); the whole
    image's when that subsample is empty (under 3 pixels a side)."""
    rows = img[2::4]
    n = rows.shape[0] * len(range(2, img.shape[1], 4))
    if n == 0:
        return np.round(img.reshape(-1, 3).mean(0)).astype(np.uint8)
    # summed over whole rows first (a contiguous inner axis: 4x faster than reducing the
    # strided (N, 3) subsample); integer sums, so the mean is the one float64 gave before
    cols = rows.reshape(rows.shape[0], -1).sum(0, dtype=np.int64).reshape(-1, 3)
    return np.round(cols[2::4].sum(0) / n).astype(np.uint8)


def _filled(shape: tuple[int, ...], colour: np.ndarray) -> np.ndarray:
    """uint8 array of `shape` (..., W, 3) with every pixel `colour` (3,)."""
    out = np.empty(shape, np.uint8)
    if out.size:  # one row, then whole rows copied (broadcasting the 3 bytes was 80x slower)
        flat = out.reshape(-1, shape[-2] * 3)
        flat[0] = np.tile(colour, shape[-2])
        flat[1:] = flat[0]
    return out


def _keep(sample: Sample, mask: np.ndarray) -> dict:
    return {k: np.asarray(sample[k])[mask] for k in ("boxes", "ignore", "keypoints", "keypoints_valid")}


class Compose:
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


class RandomSquareCrop:
    """SCRFD square crop: side = choice(crop_choices) * short edge, mean-colour fill outside.

    Up to `max_tries` positions (each with a new scale) are drawn until one keeps the centre of
    at least one non-ignored face; if none does, the last one is used (it may hold no face).
    """

    def __init__(self, crop_choices: Sequence[float] = SR_CROPS, max_tries: int = 50) -> None:
        self.crop_choices = tuple(float(c) for c in crop_choices)
        self.max_tries = max_tries

    def _patch(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int]:
        side = max(1, int(rng.choice(self.crop_choices) * min(h, w)))
        left = int(rng.integers(min(0, w - side), max(0, w - side) + 1))
        top = int(rng.integers(min(0, h - side), max(0, h - side) + 1))
        return left, top, side

    def choose(self, sample: Sample, rng: np.random.Generator) -> tuple[int, int, int, np.ndarray]:
        """(left, top, side, keep): the square and the faces whose centre lies inside it."""
        h, w = _image(sample).shape[:2]
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        wanted = ~np.asarray(sample["ignore"], bool)
        if not wanted.any():
            wanted = np.ones(len(boxes), bool)
        for _ in range(self.max_tries):
            left, top, side = self._patch(h, w, rng)
            inside = ((centres[:, 0] > left) & (centres[:, 0] < left + side)
                      & (centres[:, 1] > top) & (centres[:, 1] < top + side))
            if not len(boxes) or (inside & wanted).any():
                break
        return left, top, side, inside

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return self.crop(sample, *self.choose(sample, _rng(rng)))

    @staticmethod
    def crop(sample: Sample, left: int, top: int, side: int, keep: np.ndarray) -> Sample:
        """Cut the square [left, left + side) x [top, top + side); keep the faces in `keep`."""
        img = _image(sample)
        h, w = img.shape[:2]
        if left >= 0 and top >= 0 and left + side <= w and top + side <= h:
            out = img[top:top + side, left:left + side].copy()
        else:
            out = _filled((side, side, 3), _mean_colour(img))
            x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
            out[y0 - top:y1 - top, x0 - left:x1 - left] = img[y0:y1, x0:x1]
        kept = _keep(sample, keep)
        shift = np.array([left, top], np.float32)
        boxes = np.clip(kept["boxes"] - np.tile(shift, 2), 0, side).astype(np.float32)
        kps = (kept["keypoints"] - shift).astype(np.float32)
        return _with(sample, image=out, boxes=boxes, ignore=kept["ignore"], keypoints=kps,
                     keypoints_valid=kept["keypoints_valid"])


class RandomSquareCropResize(RandomSquareCrop):
    """RandomSquareCrop then Resize(size) in one resampling, without building the (up to 2x
    short edge) crop: the part of the square inside the image is resampled straight into a
    mean-filled size x size output. Output pixel X shows source x = left + X * side / size,
    the mapping applied to boxes and keypoints, as the two separate steps do. Which output
    pixels show the image, and the source span they resample, are exact (paste_span).

    `resampler`: 'torch' (the training path: torch's uint8 antialiased bilinear kernel,
    ~4x faster than PIL's on one thread) or 'pil' (the former path, PIL's resize with a float
    box). Both are the same antialiased bilinear filter (torch's kernel is a port of
    Pillow-SIMD's) at the same scale and source positions; they differ only in the output
    pixels next to the square's edges, where PIL's filter reads image pixels just outside the
    square (or, left of / above the image, skips the outside) and torch's reads the mean fill
    (SCRFD's own crop-then-resize), and by one level of rounding elsewhere (docs/data.md)."""

    def __init__(self, size: int, crop_choices: Sequence[float] = SR_CROPS, max_tries: int = 50,
                 resampler: str = "torch") -> None:
        super().__init__(crop_choices, max_tries)
        if resampler not in RESAMPLERS:
            raise ValueError(f"unknown resampler {resampler!r}; valid: {', '.join(RESAMPLERS)}")
        self.size = int(size)
        self.resampler = resampler

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        left, top, side, keep = self.choose(sample, _rng(rng))
        return self.crop_resize(sample, left, top, side, keep, self.size, self.resampler)

    @staticmethod
    def paste_span(start: Any, side: Any, extent: Any, size: Any) -> tuple[Any, Any, Any, Any]:
        """One axis of crop_resize, exact: (p0, p1, src0, src1) for a crop [start, start + side)
        of an axis [0, extent) resampled to `size` output pixels.

        Output pixel P covers source [start + P*side/size, start + (P+1)*side/size); the output
        pixels [p0, p1) are the whole ones whose source lies inside [0, extent) (the others keep
        the fill colour), and [src0, src1) is their source span, what PIL resamples. Integer
        arithmetic: p0 = ceil(a*size/side), p1 = floor(b*size/side), and src = (start*size +
        p*side) / size, one correctly rounded division of an integer, so src0 >= 0 and src1 <=
        extent hold exactly (float `start + p0/f` came out as -1e-14, which PIL refuses, and
        float ceil/floor were one pixel off where a*size/side is a whole number). Integers or
        int64 arrays (vectorised in tests)."""
        a = np.maximum(start, 0) - start  # source from the crop's start to the image's
        b = np.minimum(start + side, extent) - start
        p0 = -((-a * size) // side)  # ceil division
        p1 = (b * size) // side
        return p0, p1, (start * size + p0 * side) / size, (start * size + p1 * side) / size

    @staticmethod
    def crop_resize(sample: Sample, left: int, top: int, side: int, keep: np.ndarray, size: int,
                    resampler: str = "torch") -> Sample:
        img = _image(sample)
        h, w = img.shape[:2]
        f = size / side
        sx = RandomSquareCropResize.paste_span(int(left), int(side), int(w), int(size))
        sy = RandomSquareCropResize.paste_span(int(top), int(side), int(h), int(size))
        x0, x1, y0, y1 = int(sx[0]), int(sx[1]), int(sy[0]), int(sy[1])
        whole = (x0, y0, x1, y1) == (0, 0, size, size)
        fill = None if whole else _mean_colour(img)  # some output shows no image: mean fill
        if x1 <= x0 or y1 <= y0:
            out = _filled((size, size, 3), fill)
        elif resampler == "torch":
            out = _resample_torch(img, int(left), int(top), int(side), size, (x0, y0, x1, y1), fill)
        else:
            out = np.empty((size, size, 3), np.uint8) if fill is None else _filled((size, size, 3), fill)
            box = (float(sx[2]), float(sy[2]), float(sx[3]), float(sy[3]))
            part = Image.fromarray(img).resize((x1 - x0, y1 - y0), Image.BILINEAR, box=box, reducing_gap=3.0)
            out[y0:y1, x0:x1] = np.asarray(part)
        kept = _keep(sample, keep)
        shift = np.array([left, top], np.float32)
        boxes = np.clip((kept["boxes"] - np.tile(shift, 2)) * f, 0, size).astype(np.float32)
        kps = ((kept["keypoints"] - shift) * f).astype(np.float32)
        return _with(sample, image=out, boxes=boxes, ignore=kept["ignore"], keypoints=kps,
                     keypoints_valid=kept["keypoints_valid"])


RESAMPLERS = ("torch", "pil")


def _resample_torch(img: np.ndarray, left: int, top: int, side: int, size: int,
                    span: tuple[int, int, int, int], fill: np.ndarray | None) -> np.ndarray:
    """uint8 (size, size, 3): output pixels [x0, x1) x [y0, y1) (`span`, from paste_span) of the
    square [left, left + side) resampled to size, by torch's uint8 antialiased bilinear kernel
    (channels-last, AVX2); the rest `fill`.

    torch's kernel maps output pixel i to source start + (i + 0.5) * side / size (the scale is
    passed, not derived from the sizes) but takes no fractional start, so its input starts at
    the square's own corner: where the square begins left of / above the image, that input
    is padded with `fill` there (SCRFD's mean-filled crop; the output pixels before p0 that
    it yields are set to `fill` again, as paste_span says). Its far side stops at the image's
    edge, and no output pixel past p1 is computed."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = span
    xe, ye = min(left + side, w), min(top + side, h)
    if left >= 0 and top >= 0:
        region = img[top:ye, left:xe]
    else:
        region = _filled((ye - top, xe - left, 3), fill)
        a, b = max(top, 0) - top, max(left, 0) - left
        region[a:, b:] = img[top + a:ye, left + b:xe]
    if not region.flags.writeable:  # e.g. a PIL image's pixels; torch only reads them
        region = region.copy()
    x = torch.from_numpy(np.ascontiguousarray(region)).unsqueeze(0).permute(0, 3, 1, 2)  # channels-last
    scale = size / side
    part = torch.ops.aten._upsample_bilinear2d_aa(x, [y1, x1], False, scale, scale)[0].permute(1, 2, 0)
    if (x0, y0, x1, y1) == (0, 0, size, size):
        return np.ascontiguousarray(part.numpy())
    out = _filled((size, size, 3), fill)
    out[y0:y1, x0:x1] = part[y0:y1, x0:x1].numpy()
    return out


PYRAMIDBOX_ANCHORS: tuple[float, ...] = (16, 32, 64, 128, 256, 512)


class DataAnchorSampling:
    """PyramidBox's data-anchor-sampling (Tang et al. 2018, sec. 3.4), used by BFBox and DSFD /
    ASFD: with probability `p`, one face is resized to a drawn anchor scale, else `otherwise`
    (the recipe's crop) runs.

    A non-ignored face of size s = sqrt(w * h) is drawn uniformly; i_anchor = argmin_i
    |anchor_i - s| (ties: the smaller anchor); i_target is uniform over {0, ..., min(i_anchor +
    1, 5)}; the face's new size is anchor_{i_target} * 2**u, u ~ U(-1, 1) (PyramidBox's
    s_target = random(s_i / 2, 2 s_i), drawn log-uniformly as its reference code does). The
    image is scaled by f = target / s and a size x size square is cut around the face (the
    face fully inside when it fits, else the square inside the face), mean-filled beyond
    the image; faces whose centre leaves the square are dropped (the drawn face is kept),
    the rest clipped. Only the square is resampled, never the whole scaled image. All
    draws come from `rng` (detectors.batches' per-sample generator).
    """

    def __init__(self, size: int, p: float, otherwise: Callable,
                 anchors: Sequence[float] = PYRAMIDBOX_ANCHORS) -> None:
        self.size, self.p, self.otherwise = int(size), float(p), otherwise
        self.anchors = tuple(float(a) for a in anchors)

    def target_size(self, face: float, rng: np.random.Generator) -> tuple[int, float]:
        """(i_target, new face size) for a face of size `face` (the class docstring)."""
        i_anchor = int(np.argmin([abs(a - face) for a in self.anchors]))
        i_target = int(rng.integers(0, min(i_anchor + 1, len(self.anchors) - 1) + 1))
        return i_target, self.anchors[i_target] * 2.0 ** rng.uniform(-1.0, 1.0)

    def choose(self, sample: Sample, rng: np.random.Generator) -> tuple[int, float, float, float] | None:
        """(face index, new face size, left, top) of the square in source pixels, or None
        when the sample has no face to draw."""
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4).astype(np.float64)
        wh = boxes[:, 2:] - boxes[:, :2]
        candidates = np.flatnonzero(~np.asarray(sample["ignore"], bool) & (wh > 0).all(1))
        if not len(candidates):
            return None
        i = int(candidates[rng.integers(len(candidates))])
        face = float(np.sqrt(wh[i, 0] * wh[i, 1]))
        _, target = self.target_size(face, rng)
        side = self.size * face / target  # the square's side in source pixels
        lo, hi = [], []
        for a in (0, 1):  # face inside the square when it fits, else the square inside the face
            x1, x2 = boxes[i, a], boxes[i, a + 2]
            lo.append(min(x2 - side, x1))
            hi.append(max(x2 - side, x1))
        left, top = (float(rng.uniform(lo[a], hi[a])) for a in (0, 1))
        return i, target, left, top

    def apply(self, sample: Sample, face: int, target: float, left: float, top: float) -> Sample:
        img = _image(sample)
        h, w = img.shape[:2]
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4).astype(np.float64)
        f = target / float(np.sqrt(np.prod(boxes[face, 2:] - boxes[face, :2])))
        out = _filled((self.size, self.size, 3), _mean_colour(img))
        # output pixels [p0, p1) per axis whose source lies inside the image
        p0 = [max(0, int(np.ceil(-o * f))) for o in (left, top)]
        p1 = [min(self.size, int(np.floor((e - o) * f))) for o, e in ((left, w), (top, h))]
        if p1[0] > p0[0] and p1[1] > p0[1]:
            box = tuple(float(np.clip(o + p / f, 0, e)) for o, p, e in
                        ((left, p0[0], w), (top, p0[1], h), (left, p1[0], w), (top, p1[1], h)))
            part = Image.fromarray(img).resize((p1[0] - p0[0], p1[1] - p0[1]), Image.BILINEAR,
                                               box=box, reducing_gap=3.0)
            out[p0[1]:p1[1], p0[0]:p1[0]] = np.asarray(part)
        shift = np.array([left, top])
        mapped = (boxes - np.tile(shift, 2)) * f
        centres = (mapped[:, :2] + mapped[:, 2:]) / 2
        keep = ((centres > 0) & (centres < self.size)).all(1)
        keep[face] = True
        kept = _keep(sample, keep)
        kps = (np.asarray(kept["keypoints"], np.float64) - shift) * f
        return _with(sample, image=out, boxes=np.clip(mapped[keep], 0, self.size).astype(np.float32),
                     ignore=kept["ignore"], keypoints=kps.astype(np.float32),
                     keypoints_valid=kept["keypoints_valid"])

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        choice = self.choose(sample, rng) if rng.random() < self.p else None
        return self.otherwise(sample, rng) if choice is None else self.apply(sample, *choice)


class Resize:
    """Resize to (size, size) (bilinear); boxes and keypoints scale with the axes."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = _image(sample)
        h, w = img.shape[:2]
        fx, fy = self.size / w, self.size / h
        out = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BILINEAR))
        scale = np.array([fx, fy], np.float32)
        # clip only removes float rounding: boxes inside the image stay inside
        boxes = np.clip(np.asarray(sample["boxes"], np.float32) * np.tile(scale, 2), 0, self.size)
        return _with(sample, image=out, boxes=boxes, keypoints=np.asarray(sample["keypoints"], np.float32) * scale)


class ResizeLongSide:
    """Test-time resize keeping the aspect ratio: the long side becomes `size`.

    Adds `scale` (float): divide predicted coordinates by it to return to the original image.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = _image(sample)
        h, w = img.shape[:2]
        f = self.size / max(h, w)
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        out = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
        scale = np.array([nw / w, nh / h], np.float32)
        return _with(sample, image=out, scale=f, boxes=np.asarray(sample["boxes"], np.float32) * np.tile(scale, 2),
                     keypoints=np.asarray(sample["keypoints"], np.float32) * scale)


class RandomFlip:
    """Horizontal flip with probability p: x -> W - x, keypoint left/right order swapped.

    `deferred=True` flips the boxes and keypoints but not the image, and records `flip` (bool)
    in the sample: the training device mirrors the batch's images (device_transforms). Only
    for unpadded images (the mirror is of the whole width)."""

    def __init__(self, p: float = 0.5, deferred: bool = False) -> None:
        self.p = p
        self.deferred = deferred

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        flip = _rng(rng).random() < self.p
        if self.deferred:
            return _with(self.flip(sample, image=False) if flip else sample, flip=flip)
        return self.flip(sample) if flip else sample

    @staticmethod
    def flip(sample: Sample, image: bool = True) -> Sample:
        img = _image(sample)
        w = img.shape[1]
        boxes = np.asarray(sample["boxes"], np.float32).copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        kps = np.asarray(sample["keypoints"], np.float32)[:, list(FLIP_ORDER)].copy()
        kps[..., 0] = w - kps[..., 0]
        return _with(sample, image=np.ascontiguousarray(img[:, ::-1]) if image else img, boxes=boxes,
                     keypoints=kps)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)


def colour_matrix(saturation: float, hue_degrees: float) -> np.ndarray:
    """3x3 RGB matrix: scale chroma by `saturation` (blend with luma) and rotate hue by
    `hue_degrees` (rotation of the YIQ chroma plane); luma is kept."""
    sat = saturation * np.eye(3, dtype=np.float32) + (1 - saturation) * np.outer(np.ones(3, np.float32), _LUMA)
    t = -np.deg2rad(hue_degrees)  # sign chosen so that +60 turns red toward yellow, as in HSV
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]], np.float32)
    return (np.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ @ sat).astype(np.float32)


class PhotoMetricDistortion:
    """mmdet's PhotoMetricDistortion: each step with probability 1/2, in this order:
    brightness (+-delta), contrast (x U(range)) either first or last, saturation (x U(range)),
    hue (+-delta degrees).

    Saturation and hue act as one linear colour matrix (chroma scaling around luma, YIQ hue
    rotation) instead of mmdet's HSV round trip: the same kind and range of colour change, about
    10x cheaper on a 640x640 image (the HSV conversion dominated the whole pipeline).

    `draw(rng)` takes the random draws (always in the same order, so the rest of the sample's
    augmentation sees the same stream) as PHOTOMETRIC_PARAMS plain numbers; `apply` is the
    distortion they describe. `deferred=True` only records the numbers under the sample's
    `photometric` key and leaves the image alone: the training device applies them to the
    whole batch (detectors.data.device_transforms.photometric, equal to `apply`).
    """

    def __init__(self, brightness_delta: float = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18,
                 deferred: bool = False) -> None:
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range
        self.deferred = deferred

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """float32 (13,): brightness offset, contrast factor before the colour step, colour
        flag (1: clip to [0, 255] then apply the matrix), the 3x3 colour matrix (row-major),
        contrast factor after it. Steps not drawn are neutral (0, 1, 0, identity, 1)."""
        p = np.zeros(PHOTOMETRIC_PARAMS, np.float32)
        p[1], p[3:12], p[12] = 1.0, np.eye(3, dtype=np.float32).ravel(), 1.0
        if rng.random() < 0.5:
            p[0] = rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < 0.5:
            p[1] = rng.uniform(*self.contrast_range)
        sat = rng.uniform(*self.saturation_range) if rng.random() < 0.5 else 1.0
        hue = rng.uniform(-self.hue_delta, self.hue_delta) if rng.random() < 0.5 else 0.0
        if sat != 1.0 or hue != 0.0:
            p[2], p[3:12] = 1.0, colour_matrix(sat, hue).ravel()
        if not contrast_first and rng.random() < 0.5:
            p[12] = rng.uniform(*self.contrast_range)
        return p

    @staticmethod
    def apply(image: np.ndarray, p: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) distorted by the numbers of `draw` (float32 arithmetic, rounded)."""
        img = np.asarray(image).astype(np.float32)
        img += p[0]
        img *= p[1]
        if p[2]:
            img = np.clip(img, 0, 255) @ p[3:12].reshape(3, 3).T
        img *= p[12]
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        params = self.draw(_rng(rng))
        if self.deferred:
            return _with(sample, photometric=params)
        return _with(sample, image=self.apply(_image(sample), params))


class MarkSmallIgnore:
    """Faces whose shorter box side is below `min_face` px become ignore regions."""

    def __init__(self, min_face: float) -> None:
        self.min_face = float(min_face)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < self.min_face
        return _with(sample, ignore=np.asarray(sample["ignore"], bool) | small)


def _targets(sample: Sample) -> dict[str, torch.Tensor]:
    return {"boxes": torch.as_tensor(np.asarray(sample["boxes"], np.float32).reshape(-1, 4)),
            "ignore": torch.as_tensor(np.asarray(sample["ignore"], bool)),
            "keypoints": torch.as_tensor(np.asarray(sample["keypoints"], np.float32).reshape(-1, 5, 2)),
            "keypoints_valid": torch.as_tensor(np.asarray(sample["keypoints_valid"], bool))}


class Normalize:
    """To the sample contract: image float32 (3, H, W) = (RGB - 127.5) / 128, targets as tensors.

    `pad_to` pads the image bottom/right with zeros (the normalised mean) to a square. The
    test path's last step; training batches normalise on the device (ToUint8Tensor).
    """

    def __init__(self, pad_to: int | None = None) -> None:
        self.pad_to = pad_to

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = torch.from_numpy(np.array(_image(sample), np.uint8)).permute(2, 0, 1).float()
        img = (img - MEAN) / STD
        if self.pad_to is not None:
            img = torch.nn.functional.pad(img, (0, self.pad_to - img.shape[2], 0, self.pad_to - img.shape[1]))
        return _with(sample, image=img, **_targets(sample))


class ToUint8Tensor:
    """The training sample a loader worker hands over: image uint8 (3, H, W) (a quarter of
    float32's bytes through shared memory; a view of the (H, W, 3) pixels: the transposing
    copy is left to the device), `image_hw` int64 (2,) its content's height and width,
    targets as tensors. `pad_to` pads bottom/right with PAD_VALUE to a square; the
    device step (detectors.data.device_transforms.normalise) applies any deferred photometric
    distortion, normalises as Normalize and zeroes the padding, giving Normalize's output."""

    def __init__(self, pad_to: int | None = None) -> None:
        self.pad_to = pad_to

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = np.asarray(_image(sample), np.uint8)
        h, w = img.shape[:2]
        if self.pad_to is not None:
            out = np.full((self.pad_to, self.pad_to, 3), PAD_VALUE, np.uint8)
            out[:h, :w] = img
            img = out
        elif not (img.flags.writeable and img.flags.c_contiguous):
            img = np.ascontiguousarray(img).copy() if not img.flags.writeable else np.ascontiguousarray(img)
        image = torch.from_numpy(img).permute(2, 0, 1)
        return _with(sample, image=image, image_hw=torch.tensor([h, w]), **_targets(sample))


def build_train_transform(train_size: int = 640, crop_choices: Sequence[float] = SR_CROPS,
                          min_face: float = 0.0, flip: bool = True, photometric: bool = True,
                          max_tries: int = 50, data_anchor_sampling: float = 0.0,
                          device_side: bool = False, resampler: str = "torch") -> Compose:
    """SCRFD training pipeline: square crop -> resize to train_size -> photometric -> flip ->
    mark faces under `min_face` px as ignore -> normalise. Output image (3, S, S): float32
    normalised, or with `device_side` uint8 with the photometric numbers and the flip drawn but
    not applied to the image (ToUint8Tensor; the trainer finishes it on its device). Both draw
    the same numbers. `data_anchor_sampling` p > 0: PyramidBox's sampling replaces the crop
    with probability p. `resampler`: the crop's resize (RandomSquareCropResize; 'pil' is the
    former path)."""
    steps: list[Callable] = [RandomSquareCropResize(train_size, crop_choices, max_tries, resampler)]
    if data_anchor_sampling > 0:
        steps = [DataAnchorSampling(train_size, data_anchor_sampling, otherwise=steps[0])]
    if photometric:
        steps.append(PhotoMetricDistortion(deferred=device_side))
    if flip:
        steps.append(RandomFlip(0.5, deferred=device_side))
    steps += [MarkSmallIgnore(min_face), ToUint8Tensor() if device_side else Normalize()]
    return Compose(steps)


def build_test_transform(test_size: int = 640) -> Compose:
    """Long side -> test_size (aspect kept), zero-pad to (3, test_size, test_size); adds `scale`."""
    return Compose([ResizeLongSide(test_size), Normalize(pad_to=test_size)])
