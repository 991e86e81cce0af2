"""ASFD's DRMC loss (§3.3): distance-based regression + margin-based classification.

    L = 1/N * sum_i ( lambda_1 * L_DR(t_i, t_i*) + L_MC(p_i, p_i*) )          (one shot of Eq. 8)

- L_DR (Eq. 6): DIoU loss 1 - IoU + rho^2(centres) / c^2 (torchvision.ops), positives only;
  a positive's box is decoded from its anchor point and l/t/r/b distances (x1, y1, x2, y2
  pixels). lambda_1 = recipe.loss.box_weight.
- L_MC (Eq. 7): softmax cross-entropy over {background, face} with the margin m
  (recipe.loss.margin) subtracted from the true class's logit. Our head predicts one logit z
  per anchor, the face-minus-background logit difference, for which Eq. 7 is exactly
  BCE-with-logits(z - m, 1) for a positive and BCE-with-logits(z + m, 0) for a negative.
  Negatives are the hardest `neg_pos_ratio` x (positives of the image, at least 1) by this loss
  (DSFD's hard negative mining; ratio <= 0 keeps all); ignored anchors never count. Scaled by
  recipe.loss.cls_weight.
- N: positives in the batch (at least 1). The second term of Eq. 8, the first shot weighted by
  lambda_2, is the trainer's auxiliary set (recipe.loss.aux_weight; detectors.asfd.autofem).

Keypoint offsets, if the head predicts them, are not trained by this loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import distance_box_iou_loss

from detectors.losses import LossInputs, hard_negatives

__all__ = ["margin_classification_loss", "drmc_loss"]


def margin_classification_loss(logits: Tensor, positive: Tensor, margin: float) -> Tensor:
    """Element-wise Eq. 7 for one face-vs-background logit: logits, positive same shape."""
    target = positive.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits - margin * (2 * target - 1), target,
                                              reduction="none")


def drmc_loss(inputs: LossInputs, weights) -> dict[str, Tensor]:
    """{'cls', 'box', 'total'} scalars for one prediction set (see the module docstring)."""
    logits = inputs.cls_logits.float()
    pos, keep = inputs.positive, ~inputs.ignored
    per_anchor = margin_classification_loss(logits, pos, weights.margin)
    negs = hard_negatives(per_anchor, keep & ~pos, pos, weights.neg_pos_ratio, min_positives=1)
    # the normaliser stays on the device, averaged over the processes of a distributed step;
    # no `if any positives` branch: the box outputs join the graph on every process (DDP)
    local = pos.sum().float()
    num_pos = (local if inputs.reduce_mean is None else inputs.reduce_mean(local)).clamp(min=1)
    loss_cls = (per_anchor[pos].sum() + per_anchor[negs].sum()) / num_pos
    t = inputs.targets
    dists = inputs.box_dists.float()[pos] * t.strides[:, None]
    pred = torch.cat([t.points - dists[:, :2], t.points + dists[:, 2:]], 1)
    loss_box = distance_box_iou_loss(pred, t.boxes, reduction="sum") / num_pos
    parts = {"cls": weights.cls_weight * loss_cls, "box": weights.box_weight * loss_box}
    parts["total"] = parts["cls"] + parts["box"]
    return parts
