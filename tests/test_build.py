"""build(spec): output shapes and row order per the contract, decoding, predict, dtypes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from detectors.anchors import anchor_boxes, anchor_points
from detectors.cost import level_sizes
from detectors.model import Detections, HeadOutputs, build, decode_outputs
from detectors.postprocess import (boxes_to_distance, distance_to_boxes, keypoints_to_offsets,
                                   offsets_to_keypoints)
from detectors.spec import (AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec,
                            StageSpec)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(block="basic", stem="deep", keypoints=True, norm="bn", shared=False, towers=True,
         neck="pafpn", depthwise=False) -> DetectorSpec:
    stages = tuple(StageSpec(block, 1, w) for w in (8, 16, 16, 24))
    return DetectorSpec(
        name="tiny", backbone=BackboneSpec(stem_width=16, stages=stages, stem=stem),
        neck=NeckSpec(neck, 16),
        head=HeadSpec(channels=16, num_convs=1, norm=norm, gn_groups=8, depthwise=depthwise,
                      shared_across_strides=shared, shared_towers=towers, keypoints=keypoints))


@pytest.mark.parametrize("kw", [
    {}, {"block": "bottleneck", "keypoints": False, "norm": "gn", "shared": True},
    {"block": "depthwise", "stem": "mobilenet", "depthwise": True, "towers": False, "neck": "fpn"},
])
def test_output_shapes_follow_contract(kw):
    spec = tiny(**kw)
    model = build(spec).eval()
    h, w = 96, 160
    out = model(torch.randn(2, 3, h, w))
    assert isinstance(out, HeadOutputs)
    assert out.strides == (8, 16, 32)
    assert out.feature_sizes == [(h // s, w // s) for s in (8, 16, 32)]
    assert out.feature_sizes == level_sizes(spec, (h, w))
    for lvl, s in enumerate((8, 16, 32)):
        rows = (h // s) * (w // s) * 2
        assert out.cls_logits[lvl].shape == (2, rows, 1)
        assert out.box_dists[lvl].shape == (2, rows, 4)
        if spec.head.keypoints:
            assert out.kps_offsets[lvl].shape == (2, rows, 10)
    assert (out.kps_offsets is None) == (not spec.head.keypoints)


def test_row_order_is_y_then_x_then_anchor():
    """Row r of level l must come from channel (r % A)*4.. of map cell (r // A // W, r // A % W)."""
    spec = tiny()
    model = build(spec).eval()
    x = torch.randn(1, 3, 64, 96)
    captured = {}
    model.head.reg_preds[0].register_forward_hook(lambda m, i, o: captured.setdefault("map", o))
    out = model(x)
    raw = captured["map"] * model.head.scales[0].scale  # (1, 8, 8, 12)
    H, W = raw.shape[-2:]
    for r in (0, 1, 5, 2 * W + 3, 2 * (H * W) - 1):
        cell, a = divmod(r, 2)
        y, xx = divmod(cell, W)
        expected = raw[0, 4 * a:4 * a + 4, y, xx]
        assert torch.allclose(out.box_dists[0][0, r], expected)
    pts = anchor_points(spec.anchors, [(H, W)], "cpu")[0]
    # anchor point of row r: (x * s, y * s), no half-cell offset
    assert pts[2 * W + 3 * 2 + 1].tolist() == [3 * 8.0, 1 * 8.0]


def test_anchor_boxes_are_base_times_scale_squares():
    a = AnchorSpec()
    boxes = anchor_boxes(a, [(2, 3), (1, 2), (1, 1)], "cpu")
    # level 0, cell (y=1, x=2), anchor 1 (scale 2): centre (16, 8), side 16 * 2 = 32
    assert boxes[0][(1 * 3 + 2) * 2 + 1].tolist() == [0.0, -8.0, 32.0, 24.0]
    # level 2, the only cell, anchor 0: side 256 centred at (0, 0)
    assert boxes[2][0].tolist() == [-128.0, -128.0, 128.0, 128.0]


def test_decode_hand_computed():
    pts = torch.tensor([[16.0, 8.0]])
    d = torch.tensor([[1.0, 0.5, 2.0, 3.0]])
    # stride 8: x1 = 16 - 8, y1 = 8 - 4, x2 = 16 + 16, y2 = 8 + 24
    assert distance_to_boxes(pts, d, 8.0).tolist() == [[8.0, 4.0, 32.0, 32.0]]
    assert distance_to_boxes(pts, d, torch.tensor([8.0]), max_hw=(20, 30)).tolist() == [[8.0, 4.0, 30.0, 20.0]]
    assert boxes_to_distance(pts, torch.tensor([[8.0, 4.0, 32.0, 32.0]]), 8.0).tolist() == d.tolist()
    off = torch.tensor([[0.5, -1.0] * 5])
    kps = offsets_to_keypoints(pts, off, torch.tensor([16.0]))
    assert kps.shape == (1, 5, 2) and kps[0, 0].tolist() == [24.0, -8.0]
    assert torch.allclose(keypoints_to_offsets(pts, kps, torch.tensor([16.0])), off)


def test_decode_outputs_and_nms_hand_made():
    """A fake output with two overlapping boxes and one far away, on a 32x32 input."""
    spec = tiny(keypoints=False)
    sizes = [(4, 4), (2, 2), (1, 1)]
    logits = [torch.full((1, h * w * 2, 1), -10.0) for h, w in sizes]
    dists = [torch.ones(1, h * w * 2, 4) for h, w in sizes]
    logits[0][0, (1 * 4 + 1) * 2 + 0] = 3.0  # cell (1,1) stride 8: box around (8, 8)
    logits[0][0, (1 * 4 + 1) * 2 + 1] = 2.0  # same place: suppressed
    logits[1][0, (1 * 2 + 1) * 2 + 0] = 1.0  # stride 16 at (16, 16) dist 1: box 0..32
    out = HeadOutputs(logits, dists, None, (8, 16, 32), sizes)
    det = decode_outputs(out, spec, (32, 32), score_thresh=0.5, iou_thresh=0.45)[0]
    assert isinstance(det, Detections) and det.keypoints is None
    assert det.boxes.tolist() == [[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]]
    assert torch.allclose(det.scores, torch.sigmoid(torch.tensor([3.0, 1.0])))
    det1 = decode_outputs(out, spec, (32, 32), score_thresh=0.5, max_det=1)[0]
    assert det1.boxes.shape == (1, 4)


def test_predict_returns_pixels_within_image():
    spec = tiny()
    model = build(spec).eval()
    with torch.no_grad():
        for m in model.head.cls_preds:
            m.bias.fill_(5.0)  # everything scores high so NMS has work to do
    dets = model.predict(torch.randn(2, 3, 64, 96), score_thresh=0.02, iou_thresh=0.45)
    assert len(dets) == 2
    for d in dets:
        assert d.boxes.shape[0] > 0 and d.boxes.shape[1] == 4
        assert (d.boxes[:, 0::2] <= 96).all() and (d.boxes[:, 1::2] <= 64).all()
        assert (d.boxes >= 0).all()
        assert d.keypoints.shape == (d.boxes.shape[0], 5, 2)
        assert (d.scores[:-1] >= d.scores[1:]).all()


def test_channels_last_bf16_and_backward():
    spec = tiny(norm="gn", shared=True)
    model = build(spec)
    x = torch.randn(2, 3, 64, 64)
    ref = model.eval()(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out.box_dists[0], ref.box_dists[0], atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model_cl(x.to(memory_format=torch.channels_last))
        dets = model_cl.predict(x)
    assert out16.cls_logits[0].dtype == torch.bfloat16 and len(dets) == 2
    model.train()
    out = model(x)
    loss = sum(t.float().mean() for t in out.cls_logits + out.box_dists + out.kps_offsets)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_odd_input_sizes_work():
    for kw in ({}, {"block": "depthwise", "stem": "mobilenet"}):
        spec = tiny(**kw)
        out = build(spec).eval()(torch.randn(1, 3, 75, 101))
        assert out.feature_sizes == level_sizes(spec, (75, 101))


def test_unshared_head_has_modules_per_stride():
    model = build(tiny(shared=False, towers=False))
    assert len(model.head.cls_towers) == len(model.head.reg_towers) == 3
    assert len(model.head.scales) == 3
    shared = build(dataclasses.replace(tiny(), head=dataclasses.replace(tiny().head,
                                                                       shared_across_strides=True)))
    assert len(shared.head.cls_preds) == 1 and len(shared.head.scales) == 3


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_residual_blocks_start_as_identity(block):
    """SCRFD's ResNet zero-inits each residual branch's last norm (mmdet zero_init_residual):
    a non-strided block with an identity shortcut maps its (post-ReLU, >= 0) input to itself,
    while the first block of a stage (projection shortcut) does not."""
    stages = tuple(StageSpec(block, 3, 8 * 2 ** i) for i in range(4))
    spec = DetectorSpec(name="deep", backbone=BackboneSpec(stem_width=16, stages=stages),
                        neck=NeckSpec("pafpn", 16), head=HeadSpec(channels=16, num_convs=1, gn_groups=8))
    model = build(spec).eval()
    x = torch.relu(torch.randn(2, stages[1].out_channels, 12, 12))
    for later in model.backbone.stages[1][1:]:
        torch.testing.assert_close(later(x), x, rtol=0, atol=0)
    first = model.backbone.stages[1][0]
    y = torch.relu(torch.randn(2, stages[0].out_channels, 24, 24))
    assert first(y).abs().sum() > 0 and first(y).shape == (2, stages[1].out_channels, 12, 12)
