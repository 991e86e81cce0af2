"""Embedded synthetic face dataset in the official WIDER FACE layout.

The default data when a user gives no `--data`: a deterministic generator writes a complete
dataset root (images, `wider_face_split/*_bbx_gt.txt`, the evaluation `.mat` files and a
RetinaFace-style `label.txt` with 5 landmarks for train) that every reader of real WIDER FACE
reads unchanged.

What an image holds (drawn with PIL, supersampled for small objects):
- a textured background (gradients, low- and high-frequency noise, random shapes);
- distractors at face scales: featureless skin-toned blobs (hands, arms), coloured ellipses
  with dots, rectangles and polygons, so that a detector must learn faces, not skin or blobs;
- faces: a skin-toned ellipse with hair, two eyes, nose and mouth; the 5 landmarks (left eye,
  right eye, nose tip, left and right mouth corner; "left" = left in the upright face as seen
  in the image) are the drawn features, so keypoints are exact. Pose: roll (rotation) and yaw
  (features shifted sideways, label pose=1 when strong); aspect 1.1-1.45 like WIDER boxes.
  Partial occlusion by a foreground object, per-face blur, per-image lighting.
- scene types set the scale mix: crowd (many faces of 6-28 px), group (14-80 px), portrait
  (60-260 px), at a 640-px-wide image; sizes scale with `image_size` x `face_scale`. Most
  faces are under 32 px, as in WIDER FACE at VGA size (78.9 %, SCRFD Sec. 1).
- `face_scale` (default 1) multiplies face and distractor sizes and the evaluation/landmark
  size thresholds: 320-px images with face_scale 2 hold faces of the 640-px set's pixel sizes
  on a quarter of the canvas (the laptop search proxy: a quarter of the compute per image).

Boxes are the axis-aligned bounds of the (rotated) face ellipse, written as integer
`x y w h` like the official files. Attribute labels follow wider_face_split/readme.txt:
blur 0/1/2 (none, normal, heavy), expression 0, illumination 1 when the face's light factor is
below 0.5 or above 1.6, occlusion 0/1/2 (covered fraction of the box < 0.1, < 0.35, more),
pose 1 for |yaw| > 0.22 or |roll| > 30 deg. **invalid** = 1 when the face is under 4 px on its
short side or more than 55 % covered (as WIDER flags unrecognisable faces).

Evaluation sets (`gt_list`, 1-based indices into the image's boxes; nested by construction,
hard ⊇ medium ⊇ easy, as the official ones):
- hard:   valid faces with box height >= 8 px (x image_size / 640 x face_scale);
- medium: hard faces with height >= 24 px, occlusion < 2 and blur < 2;
- easy:   medium faces with height >= 40 px, occlusion 0 and pose 0.
Faces outside a setting's list are ignored by the official protocol (hits on them are
neither true nor false positives).

Landmarks (`retinaface_gt/train/label.txt`): valid faces with short side >= 8 px get their 5
points, flag 0.0 (visible) or 1.0 (under an occluder); others get -1.0 in all 15 fields.

Determinism: image i of a split draws from its own generator seeded by (seed, split, i), so
the same arguments give byte-identical files (the `.mat` header's timestamp is fixed).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw, ImageFilter

from detectors.errors import UserError

__all__ = ["generate", "default_root", "cache_dir", "GENERATOR_VERSION", "DEFAULTS", "MARKER"]

GENERATOR_VERSION = 2
# 400 train / 100 val at 640 px: ~10 k train faces (WIDER-like density), generated in well
# under 30 s on one core; big enough that a `quick` search separates architectures.
DEFAULTS = {"num_train": 400, "num_val": 100, "image_size": 640, "seed": 0}
MARKER = "SYNTHETIC.json"

EVENTS = ["0--Crowd", "1--Parade", "2--Meeting", "3--Group", "4--Family", "5--Street",
          "6--Interview", "7--Portrait"]
# per event: probabilities of scene types (crowd, group, portrait)
_EVENT_SCENES = [(0.9, 0.1, 0.0), (0.7, 0.3, 0.0), (0.3, 0.6, 0.1), (0.1, 0.8, 0.1),
                 (0.0, 0.7, 0.3), (0.5, 0.3, 0.2), (0.0, 0.3, 0.7), (0.0, 0.1, 0.9)]
# scene type -> (face count range, face height range in px at 640 width)
_SCENES = {"crowd": ((15, 60), (6.0, 28.0)), "group": ((4, 14), (14.0, 80.0)),
           "portrait": ((1, 3), (60.0, 260.0))}

_SKIN = np.array([[255, 224, 196], [241, 194, 158], [224, 172, 105], [198, 134, 66],
                  [161, 102, 62], [141, 85, 36], [92, 58, 36], [233, 190, 170]], dtype=float)
_HAIR = np.array([[20, 15, 10], [60, 40, 25], [110, 70, 40], [200, 170, 110], [140, 140, 140],
                  [90, 30, 20]], dtype=float)


@dataclass
class _Face:
    """One drawn face: box xyxy (float, image px), keypoints (5, 2), labels."""

    box: np.ndarray
    kps: np.ndarray
    kps_occluded: np.ndarray = field(default_factory=lambda: np.zeros(5, bool))
    blur: int = 0
    illumination: int = 0
    occlusion: int = 0
    pose: int = 0
    invalid: int = 0
    covered: float = 0.0


@dataclass
class _Image:
    event: str
    name: str
    pixels: np.ndarray  # (H, W, 3) uint8
    faces: list[_Face]


# --------------------------------------------------------------------------- drawing helpers


_UNIT: dict[int, np.ndarray] = {}


def _ellipse(cx: float, cy: float, a: float, b: float, rot: np.ndarray, n: int = 24) -> list:
    """Polygon of an ellipse (semi-axes a, b) rotated by the 2x2 matrix `rot` about (cx, cy)."""
    if n not in _UNIT:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        _UNIT[n] = np.stack([np.cos(t), np.sin(t)], 1)
    pts = (_UNIT[n] * (a, b)) @ rot.T + (cx, cy)
    return list(map(tuple, pts.tolist()))


def _colour(c) -> tuple:
    return tuple(min(255, max(0, int(v))) for v in c)


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Textured background: gradient + low-frequency colour noise (smooth, drawn at 1/4 size and
    upsampled) + 4-px grain."""
    sh, sw = h // 4 + 1, w // 4 + 1
    xx = (np.arange(sw, dtype=np.float32) / sw)[None, :, None]
    yy = (np.arange(sh, dtype=np.float32) / sh)[:, None, None]
    smooth = (rng.uniform(30, 220, 3).astype(np.float32) + xx * np.float32(rng.uniform(-60, 60))
              + yy * np.float32(rng.uniform(-60, 60)))
    low = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
    smooth = smooth + np.asarray(Image.fromarray(low).resize((sw, sh), Image.BILINEAR), np.float32) * np.float32(100 / 255) - 50
    grain = rng.normal(0, rng.uniform(2, 18), (sh, sw, 1)).astype(np.float32)
    big = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    grain_big = np.asarray(Image.fromarray(np.clip(grain + 128, 0, 255).astype(np.uint8)[..., 0]).resize(
        (w, h), Image.NEAREST), np.int16)[..., None] - 128
    return Image.fromarray(np.clip(np.asarray(big, np.int16) + grain_big, 0, 255).astype(np.uint8))


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int, n: int) -> None:
    """Large background structures: rectangles, lines, polygons (buildings, signs, poles)."""
    for _ in range(n):
        col = _colour(rng.uniform(0, 255, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x, y, x + rng.uniform(20, w / 2), y + rng.uniform(20, h / 2)], fill=col)
        elif kind == 1:
            draw.line([x, y, rng.uniform(0, w), rng.uniform(0, h)], fill=col, width=int(rng.integers(1, 8)))
        else:
            pts = rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2)) * rng.uniform(20, 150) + (x, y)
            draw.polygon([tuple(p) for p in pts], fill=col)


def _rotation(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _face_points(a: float, b: float, yaw: float) -> dict[str, np.ndarray]:
    """Feature positions in face-local pixels (x right, y down) before rotation."""
    def at(u: float, v: float) -> np.ndarray:
        # yaw: features slide towards one side and the far side compresses
        return np.array([(u * (1 - abs(yaw) * 0.6) + yaw) * a, v * b])

    return {"eye_l": at(-0.38, -0.12), "eye_r": at(0.38, -0.12), "nose": at(0.0, 0.22),
            "mouth_l": at(-0.3, 0.52), "mouth_r": at(0.3, 0.52), "mouth_c": at(0.0, 0.52),
            "brow_l": at(-0.38, -0.33), "brow_r": at(0.38, -0.33), "nose_top": at(0.0, -0.02)}


def _render_face(rng: np.random.Generator, cx: float, cy: float, height: float, aspect: float,
                 roll: float, yaw: float) -> tuple[Image.Image, tuple[int, int], np.ndarray]:
    """Draw one face on a transparent patch; returns (RGBA patch, its origin, keypoints (5, 2))."""
    a, b = height / (2 * aspect), height / 2
    rot = _rotation(roll)
    side = 2 * int(math.ceil(1.2 * b)) + 4
    ox, oy = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    ss = int(np.clip(math.ceil(40 / height), 1, 4))  # supersample small faces
    patch = Image.new("RGBA", (side * ss, side * ss), (0, 0, 0, 0))
    draw = ImageDraw.Draw(patch)
    c = ((cx - ox) * ss, (cy - oy) * ss)
    pts = {k: (rot @ v) * ss + c for k, v in _face_points(a, b, yaw).items()}
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)
    dark = skin * 0.72
    hair_c = (rot @ np.array([0.0, -0.14 * b])) * ss + c
    draw.polygon(_ellipse(*hair_c, 1.08 * a * ss, 0.98 * b * ss, rot), fill=_colour(_HAIR[rng.integers(len(_HAIR))]) + (255,))
    draw.polygon(_ellipse(*c, a * ss, b * ss, rot), fill=_colour(skin) + (255,))
    ea, eb = 0.17 * a * ss, 0.085 * b * ss
    iris = _colour(rng.uniform(5, 60, 3)) + (255,)  # pupil and iris darker than any skin tone
    lw = max(1, int(0.05 * a * ss))
    for side_key in ("l", "r"):
        e = pts["eye_" + side_key]
        draw.polygon(_ellipse(*e, ea, eb, rot, 16), fill=(245, 245, 240, 255))
        draw.polygon(_ellipse(*e, 0.075 * a * ss, 0.075 * a * ss, rot, 12), fill=iris)
        br = pts["brow_" + side_key]
        d = rot @ np.array([0.18 * a * ss, 0.0])
        draw.line([tuple(br - d), tuple(br + d)], fill=_colour(dark * 0.5) + (255,), width=lw)
    n0, n1 = pts["nose_top"], pts["nose"]
    d = rot @ np.array([0.1 * a * ss, 0.0])
    draw.polygon([tuple(n0), tuple(n1 - d), tuple(n1 + d)], fill=_colour(dark) + (255,))
    mouth_h = rng.uniform(0.04, 0.13) * b * ss
    draw.polygon(_ellipse(*pts["mouth_c"], 0.3 * (1 - abs(yaw) * 0.6) * a * ss, mouth_h, rot, 16),
                 fill=_colour(rng.uniform([110, 20, 30], [190, 70, 80])) + (255,))
    if ss > 1:
        patch = patch.reduce(ss)
    kps = np.stack([pts[k] for k in ("eye_l", "eye_r", "nose", "mouth_l", "mouth_r")]) / ss + (ox, oy)
    return patch, (ox, oy), kps


def _ellipse_bounds(cx: float, cy: float, a: float, b: float, roll: float) -> np.ndarray:
    """Axis-aligned box (x1, y1, x2, y2) of an ellipse with semi-axes a, b rotated by roll."""
    t = math.radians(roll)
    ex = math.hypot(a * math.cos(t), b * math.sin(t))
    ey = math.hypot(a * math.sin(t), b * math.cos(t))
    return np.array([cx - ex, cy - ey, cx + ex, cy + ey])


def _draw_distractor(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                     size: float) -> None:
    """A non-face object at face scale: skin blob, dotted ball, polygon or half-face."""
    kind = int(rng.integers(4))
    a = size / 2 * rng.uniform(0.5, 1.4)
    b = size / 2 * rng.uniform(0.5, 1.4)
    rot = _rotation(rng.uniform(-90, 90))
    if kind == 0:  # featureless skin-toned blob (hands, arms, bald heads from behind)
        skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.8, 1.1)
        draw.polygon(_ellipse(cx, cy, a, b, rot), fill=_colour(skin))
    elif kind == 1:  # coloured ball with random dots (not in a face layout)
        draw.polygon(_ellipse(cx, cy, a, a, rot), fill=_colour(rng.uniform(0, 255, 3)))
        for _ in range(int(rng.integers(1, 5))):
            p = (cx, cy) + rng.uniform(-0.6, 0.6, 2) * a
            r = max(0.5, 0.12 * a)
            draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=_colour(rng.uniform(0, 80, 3)))
    elif kind == 2:  # polygon
        pts = rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2)) * (a, b) + (cx, cy)
        draw.polygon([tuple(p) for p in pts], fill=_colour(rng.uniform(0, 255, 3)))
    else:  # skin ellipse with a single dark stripe: face-coloured, wrong features
        skin = _SKIN[rng.integers(len(_SKIN))]
        draw.polygon(_ellipse(cx, cy, a * 0.8, b, rot), fill=_colour(skin))
        d = rot @ np.array([0.5 * a, 0.0])
        draw.line([tuple((cx, cy) - d), tuple((cx, cy) + d)], fill=_colour(skin * 0.4),
                  width=max(1, int(0.15 * b)))


def _draw_body(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: np.ndarray) -> None:
    """Shoulders below a face, so faces sit in context like people."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, top = (box[0] + box[2]) / 2, box[3] - 0.1 * h
    draw.ellipse([cx - 1.3 * w, top + 0.15 * h, cx + 1.3 * w, top + 2.4 * h],
                 fill=_colour(rng.uniform(0, 255, 3)))
    draw.rectangle([cx - 0.25 * w, top - 0.05 * h, cx + 0.25 * w, top + 0.4 * h],
                   fill=_colour(_SKIN[rng.integers(len(_SKIN))] * 0.8))


def _occlude(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: _Face) -> None:
    """Cover a fraction of the face box from one side with a foreground object."""
    x1, y1, x2, y2 = face.box
    frac = rng.uniform(0.12, 0.7)
    side = int(rng.integers(4))
    r = [x1, y1, x2, y2]
    if side == 0:
        r[2] = x1 + frac * (x2 - x1)
    elif side == 1:
        r[0] = x2 - frac * (x2 - x1)
    elif side == 2:
        r[1] = y2 - frac * (y2 - y1)
    else:
        r[3] = y1 + frac * (y2 - y1)
    draw.rectangle(r, fill=_colour(rng.uniform([0, 0, 60], [120, 200, 255])))
    inside = (face.kps[:, 0] >= r[0]) & (face.kps[:, 0] <= r[2]) & (face.kps[:, 1] >= r[1]) & (face.kps[:, 1] <= r[3])
    face.kps_occluded = inside
    face.covered = frac
    face.occlusion = 0 if frac < 0.1 else 1 if frac < 0.35 else 2
    face.invalid = int(face.invalid or frac > 0.55)


def _light_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Per-image multiplicative lighting (H, W, 1) float32: level times a linear gradient."""
    mode = rng.choice(3, p=[0.8, 0.1, 0.1])
    level = rng.uniform(0.75, 1.2) if mode == 0 else rng.uniform(0.3, 0.5) if mode == 1 else rng.uniform(1.4, 1.8)
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :, None]
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None, None]
    grad = 1 + np.float32(rng.uniform(-0.3, 0.3)) * xx + np.float32(rng.uniform(-0.3, 0.3)) * yy
    return np.float32(level) * grad


def _overlaps(box: np.ndarray, others: list[np.ndarray], limit: float) -> bool:
    """True if `box` shares more than `limit` of its own or another box's area."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > limit * area or inter > limit * (o[2] - o[0]) * (o[3] - o[1]):
                return True
    return False


def _place_faces(rng: np.random.Generator, scene: str, h: int, w: int, scale: float) -> list[dict]:
    """Sample face geometry (centre, height, aspect, roll, yaw, box) without heavy overlap."""
    (n_lo, n_hi), (s_lo, s_hi) = _SCENES[scene]
    placed: list[dict] = []
    for _ in range(int(rng.integers(n_lo, n_hi + 1))):
        height = math.exp(rng.uniform(math.log(s_lo), math.log(s_hi))) * scale
        height = min(height, 0.8 * h)
        aspect = rng.uniform(1.1, 1.45)
        roll = rng.normal(0, 12) if rng.random() > 0.1 else rng.uniform(-60, 60)
        yaw = float(np.clip(rng.normal(0, 0.14), -0.4, 0.4))
        for _try in range(30):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            box = _ellipse_bounds(cx, cy, height / (2 * aspect), height / 2, roll)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= w - 1 and box[3] <= h - 1
            if inside and not _overlaps(box, [p["box"] for p in placed], 0.1):
                placed.append(dict(cx=cx, cy=cy, height=height, aspect=aspect, roll=roll, yaw=yaw, box=box))
                break
    return sorted(placed, key=lambda p: p["box"][3])  # far (higher) first: nearer bodies in front


def _blur_level(rng: np.random.Generator, height: float) -> int:
    p = [0.6, 0.25, 0.15] if height >= 16 else [0.3, 0.4, 0.3]
    return int(rng.choice(3, p=p))


def _draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, scene: str, h: int, w: int,
                      boxes: list[np.ndarray], scale: float) -> None:
    (_n, (s_lo, s_hi)) = _SCENES[scene]
    for _ in range(int(rng.integers(3, 6 + len(boxes) // 2))):
        size = math.exp(rng.uniform(math.log(s_lo), math.log(s_hi))) * scale
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        d = np.array([cx - size, cy - size, cx + size, cy + size])
        if not _overlaps(d, boxes, 0.05):
            if rng.random() < 0.3:  # bodies under non-faces too: context alone must not suffice
                _draw_body(draw, rng, np.array([cx - size / 3, cy - size / 2, cx + size / 3, cy + size / 2]))
            _draw_distractor(draw, rng, cx, cy, size)


def _draw_face(canvas: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator, g: dict) -> _Face:
    """Body, face (blurred), optional occluder; returns the labelled face."""
    if g["height"] >= 12:
        _draw_body(draw, rng, g["box"])
    patch, origin, kps = _render_face(rng, g["cx"], g["cy"], g["height"], g["aspect"], g["roll"], g["yaw"])
    blur = _blur_level(rng, g["height"])
    if blur:
        radius = max(0.5, 0.04 * g["height"]) if blur == 1 else max(1.0, 0.1 * g["height"])
        patch = patch.filter(ImageFilter.GaussianBlur(radius))
    canvas.paste(patch, origin, patch)
    face = _Face(box=g["box"], kps=kps, blur=blur, pose=int(abs(g["yaw"]) > 0.22 or abs(g["roll"]) > 30))
    if rng.random() < 0.2:
        _occlude(draw, rng, face)
    face.invalid = int(face.invalid or min(face.box[2] - face.box[0], face.box[3] - face.box[1]) < 4)
    return face


def _make_image(rng: np.random.Generator, event_idx: int, name: str, image_size: int,
                face_scale: float = 1.0) -> _Image:
    """Draw one scene; returns its pixels and labelled faces."""
    w = image_size
    scale = w / 640 * face_scale  # face sizes are given at a 640-px-wide image
    h = int(round(w * rng.choice([0.75, 1.0, 1.33])))
    scene = ["crowd", "group", "portrait"][rng.choice(3, p=_EVENT_SCENES[event_idx])]
    canvas = _background(rng, h, w)
    draw = ImageDraw.Draw(canvas)
    _draw_shapes(draw, rng, h, w, int(rng.integers(2, 9)))
    geoms = _place_faces(rng, scene, h, w, scale)
    _draw_distractors(draw, rng, scene, h, w, [g["box"] for g in geoms], scale)
    faces = [_draw_face(canvas, draw, rng, g) for g in geoms]
    light = _light_map(rng, h, w)
    for f in faces:
        lv = light[int((f.box[1] + f.box[3]) / 2), int((f.box[0] + f.box[2]) / 2), 0]
        f.illumination = int(lv < 0.5 or lv > 1.6)
    pixels = np.asarray(canvas, np.float32) * light + rng.integers(-4, 5, (h, w, 1), dtype=np.int16)
    return _Image(EVENTS[event_idx], name, np.clip(pixels, 0, 255).astype(np.uint8), faces)


# --------------------------------------------------------------------------- writers


def _int_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """Official-style integer x, y, w, h (w, h >= 1)."""
    x, y = int(round(box[0])), int(round(box[1]))
    return x, y, max(1, int(round(box[2])) - x), max(1, int(round(box[3])) - y)


def _settings(faces: list[_Face], scale: float) -> dict[str, list[int]]:
    """1-based keep lists of the easy/medium/hard settings (hard ⊇ medium ⊇ easy)."""
    hard, medium, easy = [], [], []
    for i, f in enumerate(faces, 1):
        hgt = _int_box(f.box)[3]
        if f.invalid or hgt < 8 * scale:
            continue
        hard.append(i)
        if hgt >= 24 * scale and f.occlusion < 2 and f.blur < 2:
            medium.append(i)
            if hgt >= 40 * scale and f.occlusion == 0 and f.blur < 2 and f.pose == 0:
                easy.append(i)
    return {"easy": easy, "medium": medium, "hard": hard}


def _bbx_text(images: list[_Image]) -> str:
    lines = []
    for im in images:
        lines += [f"{im.event}/{im.name}.jpg", str(len(im.faces))]
        for f in im.faces:
            x, y, w, h = _int_box(f.box)
            lines.append(f"{x} {y} {w} {h} {f.blur} 0 {f.illumination} {f.invalid} {f.occlusion} {f.pose} ")
        if not im.faces:
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
    return "\n".join(lines) + "\n"


def _label_text(images: list[_Image], scale: float) -> str:
    lines = []
    for im in images:
        lines.append(f"# {im.event}/{im.name}.jpg")
        for f in im.faces:
            x, y, w, h = _int_box(f.box)
            if f.invalid or min(w, h) < 8 * scale:
                marks, score = " ".join(["-1.0"] * 15), "-1.0"
            else:
                marks = " ".join(f"{p[0]:.3f} {p[1]:.3f} {float(o):.1f}" for p, o in zip(f.kps, f.kps_occluded))
                score = "1.0"
            lines.append(f"{x} {y} {w} {h} {marks} {score}")
    return "\n".join(lines) + "\n"


def _cells(per_event: list[list]) -> np.ndarray:
    """(E, 1) cell array of (n, 1) cell arrays, the official nesting."""
    out = np.empty((len(per_event), 1), dtype=object)
    for e, items in enumerate(per_event):
        inner = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            inner[i, 0] = item
        out[e, 0] = inner
    return out


def _mat_bytes(images: list[_Image], scale: float, setting: str | None) -> bytes:
    """A .mat file with the official variables; `setting` adds that setting's gt_list."""
    by_event = [[im for im in images if im.event == ev] for ev in EVENTS]
    events = np.empty((len(EVENTS), 1), dtype=object)
    for e, ev in enumerate(EVENTS):
        events[e, 0] = ev
    boxes = [[np.array([_int_box(f.box) for f in im.faces], np.int32).reshape(-1, 4) for im in ims] for ims in by_event]
    data = {"event_list": events, "file_list": _cells([[im.name for im in ims] for ims in by_event]),
            "face_bbx_list": _cells(boxes)}
    for key in ("blur", "expression", "illumination", "invalid", "occlusion", "pose"):
        data[f"{key}_label_list"] = _cells([[np.array([[getattr(f, key, 0)] for f in im.faces], np.uint8).reshape(-1, 1)
                                             for im in ims] for ims in by_event])
    if setting is not None:
        data["gt_list"] = _cells([[np.array(_settings(im.faces, scale)[setting], np.float64).reshape(-1, 1)
                                   for im in ims] for ims in by_event])
    buf = io.BytesIO()
    scipy.io.savemat(buf, data, format="5")
    raw = bytearray(buf.getvalue())
    # the 116-byte text header carries a timestamp; fix it so files are byte-identical
    raw[:116] = b"MATLAB 5.0 MAT-file, written by facenas synthetic generator".ljust(116)
    return bytes(raw)


# --------------------------------------------------------------------------- public API


def _split_images(split: str, count: int, image_size: int, seed: int, progress: bool,
                  face_scale: float = 1.0) -> list[_Image]:
    """Draw `count` images, one independent generator each, in official (event) order."""
    from tqdm import tqdm

    code = {"train": 0, "val": 1}[split]
    order = sorted(range(count), key=lambda i: (i % len(EVENTS), i))
    images = []
    for i in tqdm(order, desc=f"synthetic {split}", disable=not progress, file=None, leave=False):
        rng = np.random.default_rng([seed, code, i, GENERATOR_VERSION])
        e = i % len(EVENTS)
        images.append(_make_image(rng, e, f"{e}_{EVENTS[e].split('--')[1]}_{split}_{i}", image_size,
                                  face_scale))
    return images


def _write_split(root: Path, split: str, images: list[_Image], scale: float) -> dict:
    for im in images:
        path = root / f"WIDER_{split}" / "images" / im.event / f"{im.name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.pixels).save(path, format="JPEG", quality=90)
    (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text(_bbx_text(images))
    (root / "wider_face_split" / f"wider_face_{split}.mat").write_bytes(_mat_bytes(images, scale, None))
    faces = [f for im in images for f in im.faces]
    counts = {"images": len(images), "faces": len(faces), "invalid": sum(f.invalid for f in faces),
              "under_32px": sum(_int_box(f.box)[3] < 32 for f in faces)}
    if split == "train":
        label = root / "retinaface_gt" / "train" / "label.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(_label_text(images, scale))
    else:
        gt = root / "eval_tools" / "ground_truth"
        gt.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "wider_face_split" / "wider_face_val.mat", gt / "wider_face_val.mat")
        for setting in ("easy", "medium", "hard"):
            (gt / f"wider_{setting}_val.mat").write_bytes(_mat_bytes(images, scale, setting))
            counts[setting] = sum(len(_settings(im.faces, scale)[setting]) for im in images)
    return counts


def _check(num_train: int, num_val: int, image_size: int, face_scale: float = 1.0) -> None:
    if not 0.25 <= face_scale <= 4:
        raise UserError(f"synthetic dataset: face scale must be in [0.25, 4] (got {face_scale:g})")
    if num_train < 1 or num_val < 1:
        raise UserError(f"synthetic dataset: need at least 1 train and 1 val image (got {num_train}, {num_val})")
    if not 128 <= image_size <= 4096:
        raise UserError(f"synthetic dataset: image size must be in [128, 4096] px (got {image_size})")


def _generate_into(tmp: Path, num_train: int, num_val: int, image_size: int, seed: int, progress: bool,
                   face_scale: float = 1.0) -> None:
    (tmp / "wider_face_split").mkdir(parents=True)
    scale = image_size / 640 * face_scale
    info = {"generator_version": GENERATOR_VERSION, "seed": seed, "image_size": image_size,
            "description": "facenas synthetic face dataset (see detectors/data/synthetic.py)"}
    if face_scale != 1.0:  # absent at the default, so default roots stay byte-identical
        info["face_scale"] = face_scale
    for split, n in (("train", num_train), ("val", num_val)):
        images = _split_images(split, n, image_size, seed, progress, face_scale)
        info[split] = _write_split(tmp, split, images, scale)
    (tmp / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def _temp_dir(final: Path, what: str) -> Path:
    """A fresh temporary sibling of `final` (same filesystem, so the rename is atomic)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as err:
        raise UserError(f"synthetic dataset: cannot write to the {what} {final.parent}: {err.strerror}") from None


def generate(out_dir: str | os.PathLike, num_train: int = DEFAULTS["num_train"], num_val: int | None = None,
             image_size: int = DEFAULTS["image_size"], seed: int = DEFAULTS["seed"], progress: bool = True,
             face_scale: float = 1.0) -> Path:
    """Write a synthetic dataset root in the official WIDER FACE layout at `out_dir`.

    `num_val` defaults to a quarter of `num_train` (at least 1); images are `image_size` px
    wide, faces sized as at 640 px times `image_size / 640 * face_scale`. Built in a temporary
    sibling directory and renamed into place, so `out_dir` is either absent or complete.
    Raises UserError if `out_dir` exists and is not empty.
    """
    out = Path(out_dir)
    num_val = max(1, num_train // 4) if num_val is None else num_val
    _check(num_train, num_val, image_size, face_scale)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"synthetic dataset: {out} already exists and is not an empty directory")
    tmp = _temp_dir(out, "output directory")
    try:
        _generate_into(tmp, num_train, num_val, image_size, seed, progress, face_scale)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        os.rename(tmp, out)  # atomic; also replaces an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cache_dir() -> Path:
    """`$FACENAS_CACHE`, else `~/.cache/facenas`."""
    env = os.environ.get("FACENAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "facenas"


def default_root(num_train: int = DEFAULTS["num_train"], num_val: int = DEFAULTS["num_val"],
                 image_size: int = DEFAULTS["image_size"], seed: int = DEFAULTS["seed"],
                 progress: bool = True, face_scale: float = 1.0) -> Path:
    """The embedded default dataset root, generated once into the cache directory.

    Named by generator version and parameters. Safe under concurrent callers (several Ray
    trials): each builds in its own temporary directory and renames it into place; a caller
    that finishes second finds the root complete and discards its copy.
    """
    _check(num_train, num_val, image_size, face_scale)
    faces = "" if face_scale == 1.0 else f"-f{face_scale:g}"
    root = cache_dir() / f"synthetic-v{GENERATOR_VERSION}-n{num_train}-v{num_val}-s{image_size}{faces}-seed{seed}"
    if (root / MARKER).is_file():
        return root
    tmp = _temp_dir(root, "cache directory (set FACENAS_CACHE to a writable place)")
    try:
        _generate_into(tmp, num_train, num_val, image_size, seed, progress, face_scale)
        os.chmod(tmp, 0o755)
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / MARKER).is_file():  # not a lost race: a real failure
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
