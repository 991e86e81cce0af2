"""SCRFD / GFL training losses: quality focal loss, DIoU box loss, smooth-L1 keypoints.

`detection_loss` turns head outputs and an ATSS assignment into the loss parts, normalised as
mmdet's GFL head does (SCRFD's scrfd_head.py):

- classification: QFL (beta 2) on every anchor that is not ignored; the target of a positive
  is the IoU between its decoded (detached) prediction and its face box, 0 for negatives;
  summed and divided by the number of positives in the batch (at least 1);
- box: DIoU loss (torchvision) of positives, each weighted by its detached predicted score,
  divided by the sum of those weights; times the box weight (2);
- keypoints: smooth-L1 (beta 1/9) on the offsets (stride units) of positives whose face has
  valid landmarks, weighted by the predicted score like the box loss, divided by the sum of
  those weights; times the keypoint weight (0.1).

Every loss a recipe can name (recipe.loss.type, detectors.catalog.LOSSES) takes one
`LossInputs` and the recipe's LossWeights and returns parts with a 'total'; `scrfd_loss` is
this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import distance_box_iou_loss

__all__ = ["quality_focal_loss", "aligned_iou", "hard_negatives", "Targets", "detection_loss",
           "LossInputs", "scrfd_loss"]


def quality_focal_loss(logits: Tensor, quality: Tensor, beta: float = 2.0) -> Tensor:
    """Element-wise QFL (Li et al., GFL): BCE(sigmoid(x), q) * |sigmoid(x) - q|^beta.

    logits, quality: same shape; quality in [0, 1] (0 for negatives). Returns that shape.
    """
    scale = (logits.sigmoid() - quality).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * scale


def aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of `a` with row i of `b`; (M, 4) xyxy each -> (M,). Degenerate boxes
    (x2 < x1) count as empty."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


@dataclass
class Targets:
    """Per-anchor targets for the positives of a batch (P positives in all).

    boxes: (P, 4) xyxy pixels; keypoints: (P, 5, 2) pixels; keypoints_valid: (P,) bool;
    points: (P, 2) anchor points (x, y) pixels; strides: (P,) stride of each positive's level.
    """

    boxes: Tensor
    keypoints: Tensor
    keypoints_valid: Tensor
    points: Tensor
    strides: Tensor


def detection_loss(
    cls_logits: Tensor,
    box_dists: Tensor,
    kps_offsets: Tensor | None,
    positive: Tensor,
    ignored: Tensor,
    targets: Targets,
    *,
    qfl_beta: float = 2.0,
    cls_weight: float = 1.0,
    box_weight: float = 2.0,
    kps_weight: float = 0.1,
    kps_beta: float = 1.0 / 9.0,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Loss parts {'cls', 'box', 'kps', 'total'} (scalars) for one batch.

    cls_logits (B, A), box_dists (B, A, 4) in stride units, kps_offsets (B, A, 10) or None,
    all levels concatenated; positive / ignored (B, A) bool from the assigner; `targets` holds
    the positives in `positive.nonzero()` order. `reduce_mean` (the trainer's mean over
    processes, detectors.distributed.reduce_mean) averages the normalisers; None: one process.
    """
    cls_logits, box_dists = cls_logits.float(), box_dists.float()
    pos_logits = cls_logits[positive]
    strides = targets.strides.unsqueeze(1)
    # Decode the positives' boxes: anchor point -/+ distance * stride.
    dists = box_dists[positive] * strides
    pred_boxes = torch.cat([targets.points - dists[:, :2], targets.points + dists[:, 2:]], 1)
    quality = torch.zeros_like(cls_logits)
    quality[positive] = aligned_iou(pred_boxes.detach(), targets.boxes).clamp(0, 1)
    weight = pos_logits.detach().sigmoid()
    valid = targets.keypoints_valid.to(weight.dtype) if kps_offsets is not None else weight.new_zeros(0)
    # The three normalisers (positives, score weights of boxes and of keypoints), averaged
    # over the processes of a distributed step in one all-reduce (mmdet's reduce_mean), so N
    # processes with B/N images each normalise as one process with B. Kept on the device.
    local = torch.stack([positive.sum().to(weight.dtype), weight.sum(), (weight * valid).sum()
                         if kps_offsets is not None else weight.new_zeros(())])
    norm = local if reduce_mean is None else reduce_mean(local)
    keep = ~ignored
    loss_cls = quality_focal_loss(cls_logits[keep], quality[keep], qfl_beta).sum() / norm[0].clamp(min=1)
    # No `if any positives` branch: with none, the sums below are 0 and the box / keypoint
    # outputs still join the graph (zero gradients), as DistributedDataParallel requires of
    # every process, whatever its shard holds.
    # DIoU is scale-free; compute it in stride units so magnitudes match SCRFD.
    diou = distance_box_iou_loss(pred_boxes / strides, targets.boxes / strides, reduction="none")
    loss_box = (diou * weight).sum() / norm[1].clamp(min=1e-6)
    loss_kps = cls_logits.new_zeros(())
    if kps_offsets is not None:
        pred = kps_offsets.float()[positive]  # (P, 10)
        # faces without landmarks weigh 0 (where(): their stored points may be anything)
        goal = (targets.keypoints - targets.points[:, None]) / strides[:, None]
        goal = torch.where(valid[:, None, None] > 0, goal, torch.zeros_like(goal))
        per_anchor = F.smooth_l1_loss(pred, goal.reshape(-1, 10), beta=kps_beta, reduction="none").sum(1)
        loss_kps = (per_anchor * weight * valid).sum() / norm[2].clamp(min=1e-6)
    parts = {"cls": cls_weight * loss_cls, "box": box_weight * loss_box, "kps": kps_weight * loss_kps}
    parts["total"] = parts["cls"] + parts["box"] + parts["kps"]
    return parts


def hard_negatives(neg_loss: Tensor, candidates: Tensor, positive: Tensor, ratio: float,
                   min_positives: int = 0) -> Tensor:
    """(B, A) bool: SSD's online hard negative mining (recipe.loss.neg_pos_ratio). Per image,
    the floor(ratio x max(positives, min_positives)) candidates of highest `neg_loss` (all of
    them if fewer); ratio <= 0 keeps every candidate (no mining). neg_loss (B, A) float;
    candidates, positive (B, A) bool. SSD / S3FD / FANet count an image's own positives
    (an image without faces trains no negative); DSFD / ASFD count at least one."""
    if ratio <= 0:
        return candidates
    num_neg = torch.floor(positive.sum(1).clamp(min=min_positives).float() * ratio).long()  # (B,)
    ranked = torch.where(candidates, neg_loss.detach(), torch.full_like(neg_loss, -float("inf")))
    rank = ranked.argsort(1, descending=True).argsort(1)  # rank of every anchor in its image
    return candidates & (rank < num_neg.unsqueeze(1))


@dataclass
class LossInputs:
    """What a recipe's loss (detectors.catalog.LOSSES) receives for one prediction set.

    cls_logits (B, A), box_dists (B, A, 4) l/t/r/b in stride units, kps_offsets (B, A, 10) or
    None: the model's outputs with all levels concatenated; positive / ignored (B, A) bool and
    matched (B, A) long (box index per image, -1 none) from the assigner; targets: the
    positives in `positive.nonzero()` order; anchors (A, 4) xyxy anchor boxes, points (A, 2),
    strides (A,) of every anchor (anchor-based losses encode against them); reduce_mean:
    the mean over the processes of a distributed step (None alone), for the normalisers.
    """

    cls_logits: Tensor
    box_dists: Tensor
    kps_offsets: Tensor | None
    positive: Tensor
    ignored: Tensor
    matched: Tensor
    targets: Targets
    anchors: Tensor
    points: Tensor
    strides: Tensor
    reduce_mean: Callable[[Tensor], Tensor] | None = None  # normalisers' mean over processes


def scrfd_loss(inputs: LossInputs, weights) -> dict[str, Tensor]:
    """SCRFD's loss (QFL + DIoU + smooth-L1 keypoints) with the recipe's LossWeights."""
    return detection_loss(
        inputs.cls_logits, inputs.box_dists, inputs.kps_offsets, inputs.positive, inputs.ignored,
        inputs.targets, qfl_beta=weights.qfl_beta, cls_weight=weights.cls_weight,
        box_weight=weights.box_weight, kps_weight=weights.kps_weight, kps_beta=weights.kps_beta,
        reduce_mean=inputs.reduce_mean)
