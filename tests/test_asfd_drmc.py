"""DRMC (ASFD Eq. 6-8) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.catalog import loss_fn
from detectors.config import LossWeights
from detectors.asfd.drmc import margin_classification_loss
from detectors.losses import hard_negatives
from detectors.losses import LossInputs, Targets


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _inputs(logits, positive, ignored, pred_box=(6, 6, 10, 10), gt_box=(8, 8, 12, 12)):
    """One image; anchor 0 is the positive, its point (8, 8) at stride 4."""
    logits = torch.tensor([logits])
    positive, ignored = torch.tensor([positive]), torch.tensor([ignored])
    a = logits.shape[1]
    x1, y1, x2, y2 = pred_box
    dists = torch.zeros(1, a, 4)
    dists[0, 0] = torch.tensor([8 - x1, 8 - y1, x2 - 8, y2 - 8]) / 4.0
    targets = Targets(boxes=torch.tensor([gt_box], dtype=torch.float32),
                      keypoints=torch.zeros(1, 5, 2), keypoints_valid=torch.tensor([False]),
                      points=torch.tensor([[8.0, 8.0]]), strides=torch.tensor([4.0]))
    return LossInputs(cls_logits=logits, box_dists=dists, kps_offsets=None, positive=positive,
                      ignored=ignored, matched=torch.zeros(1, a, dtype=torch.long),
                      targets=targets, anchors=torch.zeros(a, 4), points=torch.zeros(a, 2),
                      strides=torch.full((a,), 4.0))


def test_drmc_hand_computed():
    inputs = _inputs([2.0, -1.0, 0.5, 3.0], [True, False, False, False],
                     [False, False, False, True])
    w = LossWeights(type="drmc", margin=0.3, neg_pos_ratio=1.0, box_weight=2.0, cls_weight=1.0)
    parts = loss_fn("drmc")(inputs, w)
    # positive: -log softmax with the margin on the face logit = softplus(-(2 - 0.3));
    # negatives (anchor 3 is ignored): losses softplus(-1 + 0.3), softplus(0.5 + 0.3); one
    # positive -> one hard negative, the larger; divided by N = 1.
    assert parts["cls"].item() == pytest.approx(_softplus(-1.7) + _softplus(0.8), rel=1e-6)
    # pred [6,6,10,10] vs gt [8,8,12,12]: IoU 4/28, centre distance^2 8, enclosing
    # diagonal^2 72; lambda_1 = 2
    assert parts["box"].item() == pytest.approx(2.0 * (1 - 1 / 7 + 8 / 72), rel=1e-5)
    assert parts["total"].item() == pytest.approx(parts["cls"].item() + parts["box"].item())


def test_eq7_two_class_softmax_equals_the_one_logit_form():
    """Eq. 7 over logits (background 0, face z) equals BCE on z shifted by the margin."""
    z, m = torch.tensor([1.3, -0.4]), 0.5
    for positive in (True, False):
        two = torch.stack([torch.zeros(2), z], 1)  # (bg, face)
        y = int(positive)
        shifted = two.clone()
        shifted[:, y] -= m
        want = -torch.log_softmax(shifted, 1)[:, y]
        got = margin_classification_loss(z, torch.full((2,), positive), m)
        assert torch.allclose(got, want, atol=1e-6)


def test_hard_negatives_per_image_and_all():
    loss = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2], [0.3, 0.8, 0.1, 0.6, 0.4]])
    positive = torch.tensor([[True, False, False, False, False], [False] * 5])
    negative = ~positive
    negative[0, 1] = False  # an ignored anchor
    got = hard_negatives(loss, negative, positive, ratio=2.0, min_positives=1)
    # image 0: 1 positive -> the 2 hardest of anchors 2..4 (0.7, 0.5); image 1: no positive
    # counts as 1 -> 2 hardest (0.8, 0.6)
    assert got.tolist() == [[False, False, True, True, False], [False, True, False, True, False]]
    assert torch.equal(hard_negatives(loss, negative, positive, ratio=0.0), negative)


def test_no_positives_is_finite_and_differentiable():
    inputs = _inputs([0.2, -0.3], [False, False], [False, False])
    inputs.cls_logits.requires_grad_(True)
    w = LossWeights(type="drmc", margin=0.2, neg_pos_ratio=3.0)
    parts = loss_fn("drmc")(inputs, w)
    assert parts["box"].item() == 0.0
    assert parts["cls"].item() == pytest.approx(_softplus(0.4) + _softplus(-0.1), rel=1e-6)
    parts["total"].backward()
    assert inputs.cls_logits.grad is not None
