"""Anchor points and anchor boxes in the row order of the model outputs.

Row order per level: y-major, then x, then anchor a (a = ratio index * len(scales) + scale
index). The point of cell (y, x) at stride s is (x * s, y * s): SCRFD uses no half-cell offset.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # used by catalogue leaves (RSA training): no run-time spec import
    from detectors.spec import AnchorSpec

__all__ = ["anchor_points", "anchor_boxes", "anchor_strides", "anchor_sizes"]


def anchor_points(anchor_spec: AnchorSpec, sizes: list[tuple[int, int]],
                  device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per level a float32 tensor (H_l * W_l * A, 2) of anchor centres (x, y) in pixels."""
    a = anchor_spec.num_anchors
    out = []
    for (h, w), s in zip(sizes, anchor_spec.strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        pts = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2) * s  # (H*W, 1, 2), y-major
        out.append(pts.expand(-1, a, -1).reshape(-1, 2))
    return out


def anchor_sizes(anchor_spec: AnchorSpec, level: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(A, 2) anchor (width, height) at one level, in anchor order, on `device`."""
    base = anchor_spec.base_sizes[level]
    whs = []
    for r in anchor_spec.ratios:
        hr = math.sqrt(r)
        for sc in anchor_spec.scales:
            whs.append((base * sc / hr, base * sc * hr))
    return torch.tensor(whs, dtype=torch.float32, device=device)


def anchor_boxes(anchor_spec: AnchorSpec, sizes: list[tuple[int, int]],
                 device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per level (H_l * W_l * A, 4) xyxy anchor boxes: centre +/- (w/2, h/2), w = h = base*scale
    for ratio 1. Rows match `anchor_points` (the ATSS assigner's anchors)."""
    out = []
    for lvl, pts in enumerate(anchor_points(anchor_spec, sizes, device)):
        wh = anchor_sizes(anchor_spec, lvl, pts.device).repeat(pts.shape[0] // anchor_spec.num_anchors, 1)
        out.append(torch.cat([pts - wh / 2, pts + wh / 2], dim=1))
    return out


def anchor_strides(anchor_spec: AnchorSpec, sizes: list[tuple[int, int]],
                   device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per level a float32 tensor (H_l * W_l * A,) filled with that level's stride."""
    return [torch.full((h * w * anchor_spec.num_anchors,), float(s), device=device)
            for (h, w), s in zip(sizes, anchor_spec.strides)]
