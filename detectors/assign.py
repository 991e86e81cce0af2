"""Label assignment, vectorised over a batch: ATSS (Zhang et al. 2020, as SCRFD) and the
max-IoU matcher of S3FD / BFBox / FANet (`iou_assign`). The recipe picks one by name
(recipe.assigner.type, detectors.catalog.ASSIGNERS).

ATSS:

For every ground-truth box: take the `topk` anchors per pyramid level whose centres are
closest to the box centre; their IoUs with the box give a threshold mean + std (unbiased, as
mmdet); a candidate is positive when its IoU reaches the threshold and its centre lies inside
the box. An anchor that is positive for several boxes goes to the one with the highest IoU.

Ignore regions (invalid or tiny faces) take part in the assignment like faces, so the anchors
that would match them are known; the trainer gives those anchors no loss at all (neither
positive nor negative).

Boxes are (x1, y1, x2, y2) in input pixels. Anchors are SCRFD's square boxes
centre +- base_size * scale / 2, one (A_l, 4) tensor per level, rows in the model's output
order (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["Assignment", "atss_assign", "iou_assign", "atss_from_config", "iou_from_config"]

# A centre must be this far (px) inside the box (mmdet ATSS's eps).
_INSIDE_EPS = 0.01
# Cap on B * anchors * boxes per chunk so crowded images (WIDER has ~1,000-face images) don't
# allocate gigabytes; chunks are whole images.
_MAX_CELLS = 8_000_000


@dataclass
class Assignment:
    """Per-anchor assignment for a batch of B images over A anchors (all levels concatenated).

    matched: (B, A) long, index of the assigned box in that image's box list, -1 for none;
    positive: (B, A) bool, assigned to a face (counts in every loss);
    ignored: (B, A) bool, assigned to an ignore region (no loss of any kind).
    Negatives are ~positive & ~ignored.
    """

    matched: Tensor
    positive: Tensor
    ignored: Tensor


def atss_assign(
    anchors_per_level: list[Tensor],
    gt_boxes: list[Tensor],
    gt_ignore: list[Tensor],
    topk: int = 9,
) -> Assignment:
    """Assign anchors to ground-truth boxes with ATSS.

    anchors_per_level: per level (A_l, 4) xyxy anchor boxes (same for every image);
    gt_boxes: per image (K_i, 4) xyxy boxes (faces and ignore regions);
    gt_ignore: per image (K_i,) bool, True for ignore regions.
    """
    anchors = torch.cat(anchors_per_level)
    level_sizes = [int(a.shape[0]) for a in anchors_per_level]
    batch = len(gt_boxes)
    matched = torch.full((batch, anchors.shape[0]), -1, dtype=torch.long, device=anchors.device)
    max_k = max([int(b.shape[0]) for b in gt_boxes], default=0)
    if max_k > 0:
        per_chunk = max(1, _MAX_CELLS // (anchors.shape[0] * max_k))
        for start in range(0, batch, per_chunk):
            stop = min(batch, start + per_chunk)
            matched[start:stop] = _assign_chunk(anchors, level_sizes, gt_boxes[start:stop], topk)
    return _with_ignore(matched, gt_ignore)


def _with_ignore(matched: Tensor, gt_ignore: list[Tensor]) -> Assignment:
    """The Assignment of `matched` (B, A): anchors matched to ignore regions are ignored.
    One gather for the batch (no per-image boolean indexing: no host sync on CUDA)."""
    k = max((int(f.shape[0]) for f in gt_ignore), default=0)
    if k == 0:
        ignored = torch.zeros_like(matched, dtype=torch.bool)
    else:
        flags = torch.nn.utils.rnn.pad_sequence([f.to(matched.device, torch.bool) for f in gt_ignore],
                                                batch_first=True, padding_value=False)  # (B, K)
        ignored = (matched >= 0) & flags.gather(1, matched.clamp(min=0))
    positive = (matched >= 0) & ~ignored
    return Assignment(matched=matched, positive=positive, ignored=ignored)


def _pad_boxes(gt_boxes: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """(B, K, 4) boxes padded with zeros and a (B, K) validity mask."""
    k = max(int(b.shape[0]) for b in gt_boxes)
    boxes = torch.zeros((len(gt_boxes), k, 4), device=device)
    valid = torch.zeros((len(gt_boxes), k), dtype=torch.bool, device=device)
    for i, b in enumerate(gt_boxes):
        boxes[i, : b.shape[0]] = b.to(device=device, dtype=boxes.dtype)
        valid[i, : b.shape[0]] = True
    return boxes, valid


def _assign_chunk(anchors: Tensor, level_sizes: list[int], gt_boxes: list[Tensor], topk: int) -> Tensor:
    """(B, A) matched box index (-1: none) for a chunk of images; see atss_assign."""
    boxes, valid = _pad_boxes(gt_boxes, anchors.device)  # (B, K, 4), (B, K)
    batch, k = valid.shape
    # IoU of every anchor with every box: (B, A, K).
    ious = box_iou(anchors, boxes.reshape(-1, 4)).reshape(-1, batch, k).permute(1, 0, 2)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    box_centres = (boxes[..., :2] + boxes[..., 2:]) / 2  # (B, K, 2)
    dist = torch.cdist(box_centres, anchor_centres.expand(batch, -1, -1))  # (B, K, A)
    candidates = []
    start = 0
    for size in level_sizes:
        # The topk closest anchors of this level for every box: (B, K, k_l) global indices.
        k_l = min(topk, size)
        idx = dist[:, :, start : start + size].topk(k_l, dim=2, largest=False).indices
        candidates.append(idx + start)
        start += size
    cand = torch.cat(candidates, dim=2)  # (B, K, C)
    cand_ious = ious.permute(0, 2, 1).gather(2, cand)  # (B, K, C)
    threshold = cand_ious.mean(2) + cand_ious.std(2)  # (B, K); std of one value is nan -> no pos
    is_pos = cand_ious >= threshold.unsqueeze(2)
    # Candidate centre strictly inside its box.
    cx, cy = anchor_centres[cand, 0], anchor_centres[cand, 1]  # (B, K, C)
    x1, y1, x2, y2 = (boxes[..., j].unsqueeze(2) for j in range(4))
    inside = torch.stack([cx - x1, cy - y1, x2 - cx, y2 - cy]).amin(0) > _INSIDE_EPS
    is_pos &= inside & valid.unsqueeze(2)
    # Scatter the positives' IoUs into (B, K, A); an anchor keeps the box with the highest IoU.
    scores = torch.full((batch, k, anchors.shape[0]), -1.0, device=anchors.device)
    scores.scatter_(2, cand, torch.where(is_pos, cand_ious, torch.full_like(cand_ious, -1.0)))
    best, arg = scores.max(dim=1)  # (B, A)
    return torch.where(best >= 0, arg, torch.full_like(arg, -1))


def iou_assign(
    anchors_per_level: list[Tensor],
    gt_boxes: list[Tensor],
    gt_ignore: list[Tensor],
    pos_iou: float = 0.35,
) -> Assignment:
    """S3FD's matcher: an anchor is positive for the box it overlaps most when that IoU is >=
    `pos_iou` (0.35 in S3FD, BFBox and FANet); besides, every box takes its best-overlapping
    anchor (so tiny faces get one). Anchors matched to ignore regions are ignored. Same
    arguments and result as atss_assign."""
    anchors = torch.cat(anchors_per_level)
    batch, num = len(gt_boxes), anchors.shape[0]
    matched = torch.full((batch, num), -1, dtype=torch.long, device=anchors.device)
    for i, boxes in enumerate(gt_boxes):
        if boxes.shape[0] == 0:
            continue
        ious = box_iou(anchors, boxes.to(device=anchors.device, dtype=anchors.dtype))  # (A, K)
        best, arg = ious.max(dim=1)
        m = torch.where(best >= pos_iou, arg, torch.full_like(arg, -1))
        # each box's best anchor, in box order (a later box wins a shared anchor, as SSD)
        best_anchor = ious.argmax(dim=0)  # (K,)
        has_overlap = ious.max(dim=0).values > 0
        k_idx = torch.arange(boxes.shape[0], device=anchors.device)
        m[best_anchor[has_overlap]] = k_idx[has_overlap]
        matched[i] = m
    return _with_ignore(matched, gt_ignore)


def atss_from_config(anchors_per_level, gt_boxes, gt_ignore, config) -> Assignment:
    """ATSS with the recipe's AssignerConfig (topk)."""
    return atss_assign(anchors_per_level, gt_boxes, gt_ignore, config.topk)


def iou_from_config(anchors_per_level, gt_boxes, gt_ignore, config) -> Assignment:
    """The max-IoU matcher with the recipe's AssignerConfig (pos_iou)."""
    return iou_assign(anchors_per_level, gt_boxes, gt_ignore, config.pos_iou)
