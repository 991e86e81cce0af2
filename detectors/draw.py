"""Draw face detections (boxes, scores, 5-point keypoints) on an image with PIL."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_detections", "BOX_COLOUR", "KEYPOINT_COLOURS"]

BOX_COLOUR = (0, 255, 0)
# left eye, right eye, nose, left mouth corner, right mouth corner (as in the SCRFD demos)
KEYPOINT_COLOURS = ((255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))


def _numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor; draw.py itself does not need torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def draw_detections(image: Image.Image, boxes: Any, scores: Any, keypoints: Any = None,
                    colour: tuple[int, int, int] = BOX_COLOUR) -> Image.Image:
    """Return an RGB copy of `image` with detections drawn.

    boxes (K, 4) xyxy in the image's pixels, scores (K,), keypoints (K, 5, 2) (x, y) pixels or
    None; numpy arrays, torch tensors or nested lists. Line width and point radius grow with
    the image size so they stay visible on large photos.
    """
    out = image.convert("RGB")  # convert() always copies
    draw = ImageDraw.Draw(out)
    boxes, scores, keypoints = _numpy(boxes), _numpy(scores), _numpy(keypoints)
    width = max(1, round(max(out.size) / 400))
    radius = max(1, width + 1)
    for k, (box, score) in enumerate(zip(boxes.reshape(-1, 4), scores.reshape(-1))):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=width)
        draw.text((x1, max(0.0, y1 - 11 - width)), f"{score:.2f}", fill=colour)
        if keypoints is not None:
            for (px, py), fill in zip(keypoints[k].reshape(5, 2), KEYPOINT_COLOURS):
                draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=fill)
    return out
