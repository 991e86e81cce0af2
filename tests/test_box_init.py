"""recipe.box_init: how the box regression starts (detectors.model.init_box_bias), and why
SCRFD's point init can leave an anchor untrainable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from detectors.anchors import anchor_boxes, anchor_points
from detectors.config import Recipe, load_config, recipe_from_dict
from detectors.errors import UserError
from detectors.losses import Targets, detection_loss
from detectors.model import build, init_box_bias
from detectors.spec import DetectorSpec

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "scrfd_0.5g.yaml"


def _spec(shared: bool) -> DetectorSpec:
    d = load_config(CONFIG).spec.to_dict()
    d["head"]["shared_across_strides"] = shared
    d["anchors"]["scales"] = [1.0, 2.0]  # two anchors per location, as the 2.5 GF regime
    return DetectorSpec.from_dict(d)


def _decoded(model, size: int = 64) -> list[torch.Tensor]:
    """Per level the decoded boxes (H*W*A, 4) of one image, xyxy pixels."""
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    points = anchor_points(model.spec.anchors, out.feature_sizes)
    boxes = []
    for d, p, s in zip(out.box_dists, points, model.spec.anchors.strides):
        boxes.append(torch.cat([p - d[0, :, :2] * s, p + d[0, :, 2:] * s], 1))
    return boxes


@pytest.mark.parametrize("shared", [False, True], ids=["per_level", "shared"])
def test_anchor_init_starts_each_anchor_at_its_anchor_box(shared):
    torch.manual_seed(0)
    model = build(_spec(shared))
    with torch.no_grad():
        for conv in model.head.reg_preds:
            conv.weight.zero_()  # the bias alone: what the init sets, with no feature noise
    init_box_bias(model, "anchor")
    spec = model.spec.anchors
    decoded = _decoded(model)
    expected = anchor_boxes(spec, [(64 // s, 64 // s) for s in spec.strides])
    for level, (got, want) in enumerate(zip(decoded, expected)):
        if not shared or level == 0:
            torch.testing.assert_close(got, want)
        else:  # one conv for every level: the first level's anchors in stride units
            ratio = spec.strides[level] / spec.strides[0] * spec.base_sizes[0] / spec.base_sizes[level]
            centre = (want[:, :2] + want[:, 2:]) / 2
            half = (want[:, 2:] - want[:, :2]) / 2 * ratio
            torch.testing.assert_close(got, torch.cat([centre - half, centre + half], 1))
    # every anchor's boxes start with a positive size, whatever its weights' sign
    torch.manual_seed(1)
    fresh = build(_spec(shared))
    init_box_bias(fresh, "anchor")
    for boxes in _decoded(fresh):
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()


def test_point_init_is_scrfds_and_heads_without_box_regression_are_left_alone():
    torch.manual_seed(0)
    model = build(_spec(False))
    before = [c.bias.clone() for c in model.head.reg_preds]
    init_box_bias(model, "point")
    assert all(torch.equal(b, c.bias) and not b.any() for b, c in zip(before, model.head.reg_preds))
    headless = torch.nn.Linear(2, 2)
    init_box_bias(headless, "anchor")  # nothing to initialise: no error, nothing changed


def _one_positive(dists: list[float]):
    """The loss of one positive (anchor point (16, 16), stride 8, a 28 px face centred at
    (18, 18)) with the given l, t, r, b distances (stride units); returns (loss parts, the
    gradient of the distances, the gradient of the logit)."""
    box = torch.tensor([[dists]], requires_grad=True)
    logits = torch.full((1, 1), -4.595, requires_grad=True)
    targets = Targets(boxes=torch.tensor([[4.0, 4.0, 32.0, 32.0]]), keypoints=torch.zeros(1, 5, 2),
                      keypoints_valid=torch.zeros(1, dtype=torch.bool),
                      points=torch.tensor([[16.0, 16.0]]), strides=torch.tensor([8.0]))
    parts = detection_loss(logits, box, None, torch.ones(1, 1, dtype=torch.bool),
                           torch.zeros(1, 1, dtype=torch.bool), targets)
    parts["total"].backward()
    return parts, box.grad[0, 0], logits.grad[0, 0]


def test_an_inverted_start_box_gets_no_size_gradient():
    # SCRFD's loss: DIoU on the box, QFL with the box's IoU as the target.
    _, inverted, cls_inverted = _one_positive([-0.05] * 4)
    _, point, cls_point = _one_positive([0.05] * 4)
    _, anchor, cls_anchor = _one_positive([1.0] * 4)  # its 16 px anchor box
    # Inverted: IoU 0, so nothing grows it (the width is l + r, the height t + b); DIoU's
    # centre term moves l - r and t - b only. QFL's target is 0: no push up for its score.
    assert (inverted[0] + inverted[2]).item() == pytest.approx(0.0, abs=1e-7)
    assert (inverted[1] + inverted[3]).item() == pytest.approx(0.0, abs=1e-7)
    assert (inverted[0] - inverted[2]).item() > 0.01  # the centre term is there
    assert 0 < cls_inverted.item() < 1e-5
    # A point box grows (descent raises l + r), slowly: its IoU is its own area over the face's.
    # The anchor box grows 10x faster, and its score is pulled up towards its IoU.
    assert (point[0] + point[2]).item() < 0
    assert (anchor[0] + anchor[2]).item() < 10 * (point[0] + point[2]).item()
    assert cls_anchor.item() < -0.01 and abs(cls_point.item()) < 1e-5


def test_recipe_box_init_is_validated_recorded_and_left_out_of_resume_identity():
    assert Recipe().box_init == "anchor"
    assert recipe_from_dict({}).box_init == "anchor"
    point = recipe_from_dict({"box_init": "point"})
    assert point.to_dict()["box_init"] == "point" and Recipe().to_dict()["box_init"] == "anchor"
    assert "box_init" not in point.identity() and point.identity() == Recipe().identity()
    with pytest.raises(UserError, match="recipe.box_init must be one of anchor, point, not 'zero'"):
        dataclasses.replace(Recipe(), box_init="zero")
