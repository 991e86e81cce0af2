"""Losses: QFL against hand-computed values, DIoU via torchvision against the formula,
normalisation and ignore handling of detection_loss."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.losses import Targets, aligned_iou, detection_loss, quality_focal_loss


def test_qfl_hand_computed():
    logits = torch.tensor([0.0, math.log(3), -math.log(3)])  # sigmoid 0.5, 0.75, 0.25
    quality = torch.tensor([1.0, 0.5, 0.0])
    expected = [
        math.log(2) * 0.5**2,  # BCE(0.5, 1) * |0.5 - 1|^2
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) * 0.25**2,
        -math.log(0.75) * 0.25**2,  # a negative: BCE(0.25, 0) * 0.25^2
    ]
    assert quality_focal_loss(logits, quality, beta=2.0).tolist() == pytest.approx(expected, rel=1e-6)


def test_aligned_iou():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 4, 4]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 4, 4]])
    assert aligned_iou(a, b).tolist() == pytest.approx([1 / 7, 1.0])


def _one_positive(pred_box: list[float], gt_box: list[float], logit: float = 0.0):
    """A batch of 1 image with 3 anchors at stride 4; anchor 1 (point (8, 8)) is positive."""
    point = torch.tensor([[8.0, 8.0]])
    l, t, r, b = 8 - pred_box[0], 8 - pred_box[1], pred_box[2] - 8, pred_box[3] - 8
    box_dists = torch.zeros((1, 3, 4))
    box_dists[0, 1] = torch.tensor([l, t, r, b]) / 4  # stride units
    cls = torch.tensor([[-2.0, logit, 1.0]])
    positive = torch.tensor([[False, True, False]])
    targets = Targets(boxes=torch.tensor([gt_box]), keypoints=torch.zeros((1, 5, 2)),
                      keypoints_valid=torch.tensor([False]), points=point, strides=torch.tensor([4.0]))
    return cls, box_dists, positive, targets


def test_detection_loss_box_part_is_weighted_diou():
    # pred [6,6,10,10] vs gt [8,8,12,12]: IoU 4/28 = 1/7, centre distance^2 8, enclosing
    # diagonal^2 72 -> DIoU loss 1 - 1/7 + 8/72.
    cls, dists, pos, targets = _one_positive([6, 6, 10, 10], [8, 8, 12, 12])
    parts = detection_loss(cls, dists, None, pos, torch.zeros_like(pos), targets, box_weight=2.0)
    assert parts["box"].item() == pytest.approx(2.0 * (1 - 1 / 7 + 8 / 72), rel=1e-5)
    # Classification: QFL over the 3 anchors, target IoU 1/7 for the positive, 0 otherwise,
    # divided by one positive.
    q = torch.tensor([0.0, 1 / 7, 0.0])
    expected = quality_focal_loss(cls[0], q).sum().item()
    assert parts["cls"].item() == pytest.approx(expected, rel=1e-5)
    assert parts["kps"].item() == 0.0
    assert parts["total"].item() == pytest.approx(parts["cls"].item() + parts["box"].item())


def test_ignored_anchors_get_no_loss():
    cls, dists, pos, targets = _one_positive([8, 8, 12, 12], [8, 8, 12, 12])
    ignored = torch.tensor([[False, False, True]])
    base = detection_loss(cls, dists, None, pos, ignored, targets)["total"]
    cls2 = cls.clone()
    cls2[0, 2] = 9.0  # a confident "face" on an ignore region: still no loss
    assert detection_loss(cls2, dists, None, pos, ignored, targets)["total"] == pytest.approx(base.item())
    # The same change on a negative anchor costs a lot.
    assert detection_loss(cls2, dists, None, pos, torch.zeros_like(pos), targets)["total"] > base + 1


def test_keypoint_loss_only_for_valid_landmarks_in_stride_units():
    cls, dists, pos, targets = _one_positive([8, 8, 12, 12], [8, 8, 12, 12])
    kps = torch.zeros((1, 3, 10))
    targets.keypoints = torch.full((1, 5, 2), 10.0)  # 2 px right/down of the point = 0.5 stride
    parts = detection_loss(cls, dists, kps, pos, torch.zeros_like(pos), targets)
    assert parts["kps"].item() == 0.0  # landmarks not valid
    targets.keypoints_valid = torch.tensor([True])
    parts = detection_loss(cls, dists, kps, pos, torch.zeros_like(pos), targets, kps_weight=0.1)
    # Smooth-L1 (beta 1/9) of 0.5 on 10 coordinates: (0.5 - 1/18) * 10, times 0.1.
    assert parts["kps"].item() == pytest.approx(0.1 * 10 * (0.5 - 0.5 / 9), rel=1e-5)


def test_no_positives_is_finite_and_differentiable():
    cls = torch.zeros((2, 5), requires_grad=True)
    dists = torch.zeros((2, 5, 4), requires_grad=True)
    none = torch.zeros((2, 5), dtype=torch.bool)
    empty = Targets(torch.zeros((0, 4)), torch.zeros((0, 5, 2)), torch.zeros(0, dtype=torch.bool),
                    torch.zeros((0, 2)), torch.zeros(0))
    parts = detection_loss(cls, dists, None, none, none, empty)
    parts["total"].backward()
    assert torch.isfinite(parts["total"]) and parts["box"].item() == 0.0
    # All 10 anchors are negatives at p = 0.5: QFL = ln2 * 0.25 each, over max(0, 1) positives.
    assert parts["cls"].item() == pytest.approx(10 * math.log(2) * 0.25, rel=1e-6)
