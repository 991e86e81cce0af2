"""SSD's multibox loss with online hard negative mining (Liu et al. 2016; S3FD, FANet Eq. 5).

`multibox_loss` (recipe.loss.type 'multibox', detectors.catalog.LOSSES) on one prediction set:

    L = (cls_weight * L_cls + box_weight * L_loc [+ kps_weight * L_kps]),  over N positives

- classification: cross-entropy face / background of the positives and of the hardest
  negatives, at most `neg_pos_ratio` (3) per positive of the same image, ranked by their own
  loss (anchors matched to ignore regions are never negatives; `neg_pos_ratio` <= 0 trains
  every negative); summed and divided by N (the positives of the batch, at least 1). The
  model has one logit per anchor, so the CE is BCE(sigmoid(z)): exactly SSD's 2-way softmax
  CE with z = z_face - z_background.
- localisation: smooth-L1 (beta 1) of the positives' box sides, summed, divided by N. The
  model regresses l, t, r, b distances (docs/architecture.md "Model outputs"), not SSD's
  (centre, log size) offsets; the error of each side is expressed, as SSD's centre target, in
  units of SSD_VARIANCE (0.1) x the anchor's size: e = (d_pred - d_target) / (0.1 * anchor
  w or h). For a small error in one side this is SSD's loss to first order (the centre moves by
  e/2 in units of 0.1 a, the size by e in units of 0.2 a).
- keypoints (only when the head predicts them): smooth-L1 (beta kps_beta) of the offsets in
  stride units, mean over positives with landmarks.

FANet: cls_weight = lambda = 3, box_weight = 1 (Eq. 5 weights the classification term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors.losses import LossInputs, hard_negatives

__all__ = ["SSD_VARIANCE", "multibox_loss"]

SSD_VARIANCE = 0.1  # SSD / S3FD prior variance of the centre coordinates


def _side_errors(inputs: LossInputs) -> Tensor:
    """(P, 4) errors of the positives' l, t, r, b in units of SSD_VARIANCE x anchor size."""
    t = inputs.targets
    _, anchor_idx = inputs.positive.nonzero(as_tuple=True)
    pred = inputs.box_dists.float()[inputs.positive] * t.strides.unsqueeze(1)  # pixels
    goal = torch.cat([t.points - t.boxes[:, :2], t.boxes[:, 2:] - t.points], 1)
    a = inputs.anchors[anchor_idx]
    wh = (a[:, 2:] - a[:, :2]).repeat(1, 2)  # (w, h, w, h) for (l, t, r, b)
    return (pred - goal) / (SSD_VARIANCE * wh)


def multibox_loss(inputs: LossInputs, weights) -> dict[str, Tensor]:
    """Loss parts {'cls', 'box', 'kps', 'total'} (scalars) for one prediction set; `weights`
    is the recipe's LossWeights (cls_weight, box_weight, kps_weight, kps_beta, neg_pos_ratio)."""
    logits = inputs.cls_logits.float()
    pos = inputs.positive
    t = inputs.targets
    valid = t.keypoints_valid.float()
    # normalisers on the device (no host read), averaged over the processes of a distributed
    # step; no `if any` branch, so every output joins the graph on every process (DDP)
    local = torch.stack([pos.sum().float(), valid.sum()])
    norm = local if inputs.reduce_mean is None else inputs.reduce_mean(local)
    num_pos = norm[0].clamp(min=1)
    neg = hard_negatives(F.softplus(logits), ~pos & ~inputs.ignored, pos, weights.neg_pos_ratio)
    loss_cls = (F.softplus(-logits[pos]).sum() + F.softplus(logits[neg]).sum()) / num_pos
    err = _side_errors(inputs)
    loss_box = F.smooth_l1_loss(err, torch.zeros_like(err), beta=1.0, reduction="sum") / num_pos
    loss_kps = logits.new_zeros(())
    if inputs.kps_offsets is not None:
        pred = inputs.kps_offsets.float()[pos]
        goal = (t.keypoints - t.points[:, None]) / t.strides[:, None, None]
        goal = torch.where(valid[:, None, None] > 0, goal, torch.zeros_like(goal))
        per_anchor = F.smooth_l1_loss(pred, goal.reshape(-1, 10), beta=weights.kps_beta, reduction="none").sum(1)
        loss_kps = (per_anchor * valid).sum() / norm[1].clamp(min=1)  # mean over valid faces
    parts = {"cls": weights.cls_weight * loss_cls, "box": weights.box_weight * loss_box,
             "kps": weights.kps_weight * loss_kps}
    parts["total"] = parts["cls"] + parts["box"] + parts["kps"]
    return parts
