"""Decoding SCRFD outputs into pixel boxes / keypoints, non-maximum suppression, and the
merges of a multi-pass test (several sizes, flip): mirror boxes back, NMS or box voting.

Box distances and keypoint offsets are in units of the level's stride; boxes are xyxy pixels.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou

__all__ = ["distance_to_boxes", "boxes_to_distance", "offsets_to_keypoints",
           "keypoints_to_offsets", "nms", "top_k", "mirror_boxes", "merge_detections", "box_vote"]


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


def top_k(scores: torch.Tensor, k: int | None) -> torch.Tensor:
    """Indices of the k highest scores (all, in input order, when k is None or >= len)."""
    if k is None or scores.numel() <= k:
        return torch.arange(scores.numel(), device=scores.device)
    return torch.topk(scores, k, sorted=False).indices


def mirror_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """xyxy boxes found on a horizontally flipped image of `width` pixels -> the same boxes on
    the unflipped image (x1 = width - x2, x2 = width - x1; pixel edges, so a box [0, w] of a
    w-wide image maps to itself)."""
    out = boxes.clone()
    out[..., 0] = width - boxes[..., 2]
    out[..., 2] = width - boxes[..., 0]
    return out


def box_vote(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float = 0.3,
             max_det: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Box voting (S3FD / DSFD multi-scale test): repeatedly take the highest-scoring box left,
    gather every box left with IoU >= iou_thresh to it (itself included), and replace the group
    by its score-weighted mean box with the group's highest score. Returns (boxes (K, 4),
    scores (K,)) in decreasing score order, at most max_det.

    Unlike DSFD's script, a group of one box is kept (dropped there), and IoU is
    torchvision's (no +1 pixel)."""
    order = torch.argsort(scores, descending=True, stable=True)
    b, s = boxes[order].double(), scores[order].double()
    left = torch.ones(len(s), dtype=torch.bool, device=s.device)
    out_b, out_s = [], []
    for i in range(len(s)):
        if not left[i]:
            continue
        group = left & (box_iou(b[i:i + 1], b)[0] >= iou_thresh)  # one row: no (M, M) matrix
        left &= ~group
        w = s[group]
        out_b.append((b[group] * w[:, None]).sum(0) / w.sum())
        out_s.append(s[i])
        if max_det is not None and len(out_s) >= max_det:
            break
    if not out_s:
        return boxes.new_zeros((0, 4)), scores.new_zeros(0)
    return torch.stack(out_b).to(boxes.dtype), torch.stack(out_s).to(scores.dtype)


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, method: str = "nms",
                     iou_thresh: float = 0.45, max_det: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The detections of several test passes of one image (concatenated, same pixel frame) ->
    one set, by NMS (torchvision) or box voting (box_vote); decreasing score order."""
    if method == "vote":
        return box_vote(boxes, scores, iou_thresh, max_det)
    if method != "nms":
        raise ValueError(f"unknown merge {method!r}")  # TestConfig validates user input
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores.reshape(0)
    keep = nms(boxes, scores, iou_thresh, max_det=max_det)
    return boxes[keep], scores[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float = 0.45,
        classes: torch.Tensor | None = None, max_det: int | None = None) -> torch.Tensor:
    """Indices of kept boxes (K,) in decreasing score order (torchvision batched_nms).

    boxes (M, 4) xyxy, scores (M,), classes (M,) int (None: one class).
    """
    if classes is None:
        classes = torch.zeros_like(scores, dtype=torch.int64)
    keep = batched_nms(boxes.float(), scores.float(), classes, iou_thresh)
    return keep if max_det is None else keep[:max_det]
