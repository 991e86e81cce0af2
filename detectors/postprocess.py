"""Decoding SCRFD outputs into pixel boxes / keypoints, and non-maximum suppression.

Box distances and keypoint offsets are in units of the level's stride; boxes are xyxy pixels.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

__all__ = ["distance_to_boxes", "boxes_to_distance", "offsets_to_keypoints",
           "keypoints_to_offsets", "nms"]


def distance_to_boxes(points: torch.Tensor, dists: torch.Tensor, strides: torch.Tensor | float = 1.0,
                      max_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """points (..., 2) (x, y) pixels, dists (..., 4) (l, t, r, b) in stride units -> (..., 4) xyxy.

    strides: scalar or (...,) per row. max_hw=(H, W) clamps boxes to the image.
    """
    s = strides.unsqueeze(-1) if torch.is_tensor(strides) else strides
    d = dists * s
    x, y = points[..., 0], points[..., 1]
    boxes = torch.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], dim=-1)
    if max_hw is not None:
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, max_hw[1])
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, max_hw[0])
    return boxes


def boxes_to_distance(points: torch.Tensor, boxes: torch.Tensor,
                      strides: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Inverse of distance_to_boxes: (..., 2) points, (..., 4) xyxy -> (..., 4) l, t, r, b / stride."""
    s = strides.unsqueeze(-1) if torch.is_tensor(strides) else strides
    x, y = points[..., 0], points[..., 1]
    d = torch.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], -1)
    return d / s


def offsets_to_keypoints(points: torch.Tensor, offsets: torch.Tensor,
                         strides: torch.Tensor | float = 1.0) -> torch.Tensor:
    """points (..., 2), offsets (..., 2K) as (dx0, dy0, dx1, ...) in stride units -> (..., K, 2)."""
    s = strides.unsqueeze(-1).unsqueeze(-1) if torch.is_tensor(strides) else strides
    off = offsets.reshape(*offsets.shape[:-1], offsets.shape[-1] // 2, 2)
    return points.unsqueeze(-2) + off * s


def keypoints_to_offsets(points: torch.Tensor, keypoints: torch.Tensor,
                         strides: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Inverse of offsets_to_keypoints: (..., K, 2) pixels -> (..., 2K) stride units."""
    s = strides.unsqueeze(-1).unsqueeze(-1) if torch.is_tensor(strides) else strides
    off = (keypoints - points.unsqueeze(-2)) / s
    return off.reshape(*off.shape[:-2], -1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float = 0.45,
        classes: torch.Tensor | None = None, max_det: int | None = None) -> torch.Tensor:
    """Indices of kept boxes (K,) in decreasing score order (torchvision batched_nms).

    boxes (M, 4) xyxy, scores (M,), classes (M,) int (None: one class).
    """
    if classes is None:
        classes = torch.zeros_like(scores, dtype=torch.int64)
    keep = batched_nms(boxes.float(), scores.float(), classes, iou_thresh)
    return keep if max_det is None else keep[:max_det]
