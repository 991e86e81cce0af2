"""FANet baseline: VGG16 + S3FD layers, A-blocks, hierarchy, multibox loss, matcher, cost.

Expected numbers are derived by hand in the comments (anchor geometry, IoUs, loss values).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _cost_check import assert_cost_matches
from detectors.anchors import anchor_boxes, anchor_points
from detectors.assign import iou_assign
from detectors.fanet.neck import ABlock, FANetNeck, FANetOptions
from detectors.config import TrainConfig, load_config, recipe_from_dict
from detectors.cost import cost
from detectors.device import TrainingMode
from detectors.model import HeadOutputs, build
from detectors.losses import hard_negatives
from detectors.spec import DetectorSpec
from detectors.train import _step
from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]
FANET_SPEC = ROOT / "experiments" / "models" / "fanet.yaml"
FANET_CONFIG = ROOT / "experiments" / "fanet.yaml"
CPU = TrainingMode(torch.device("cpu"), False, None, False)


def _small(depth: int = 3, widths=(16, 32, 32, 64, 32, 16), stem: int = 16, channels: int = 16,
           x: int = 16, ratio: int = 8, context: bool = True, levels=None,
           vgg_depth: int = 3, l2norm=(10.0, 8.0, 5.0), head_convs: int = 0) -> DetectorSpec:
    """A reduced-width FANet (same layout as experiments/models/fanet.yaml; `vgg_depth` convs
    per VGG stage instead of 3)."""
    v = vgg_depth
    blocks = [("vgg", v), ("vgg", v), ("vgg", v), ("vgg_fc", 1), ("ssd_extra", 1), ("ssd_extra", 1)]
    stages = [{"block": b, "depth": d, "width": w} for (b, d), w in zip(blocks, widths)]
    levels = levels or list(range(2, 2 + len(stages)))
    return DetectorSpec.from_dict({
        "name": "fanet-small",
        "backbone": {"stem": "vgg", "stem_width": stem, "stages": stages},
        "neck": {"type": "fanet", "channels": channels, "in_levels": levels,
                 "options": {"depth": depth, "context_channels": x, "deep_ratio": ratio,
                             "context": context, "l2norm": list(l2norm)}},
        "head": {"channels": channels, "num_convs": head_convs, "norm": "gn", "gn_groups": 8,
                 "shared_across_strides": False, "scale": False},
        "anchors": {"strides": [2**lv for lv in levels],
                    "base_sizes": [16 * 2**i for i in range(len(levels))],
                    "scales": [1.0], "ratios": [1.0]},
        "input_size": [64, 64]})


# ---- A-block and hierarchy ---------------------------------------------------------------
def test_ablock_shapes_and_channels():
    opts = FANetOptions(context_channels=16, deep_ratio=8)
    block = ABlock(c_shallow=24, c_deep=40, cout=32, opts=opts)
    convs = {n: m for n, m in block.named_modules() if isinstance(m, nn.Conv2d)}
    # context: 1x1 24 -> X=16, then branches 1x1, 1x3, 3x1, 3x3 of X/4 = 4 channels each
    assert (convs["context.reduce.0"].in_channels, convs["context.reduce.0"].out_channels) == (24, 16)
    kernels = [convs[f"context.branches.{i}.0"].kernel_size for i in range(4)]
    assert kernels == [(1, 1), (1, 3), (3, 1), (3, 3)]
    assert all(convs[f"context.branches.{i}.0"].out_channels == 4 for i in range(4))
    # deeper map: 1x1 to X / 8 = 2 (the paper: 256 / 8 = 32, whatever the deeper map's width);
    # smoothing 3x3 over 16 + 2 = 18 -> 32
    assert (convs["deep.0"].in_channels, convs["deep.0"].out_channels) == (40, 2)
    assert (convs["smooth.0"].in_channels, convs["smooth.0"].out_channels) == (18, 32)
    assert convs["smooth.0"].kernel_size == (3, 3)
    out = block(torch.randn(2, 24, 9, 11), torch.randn(2, 40, 5, 6))  # odd: not an exact 2x
    assert out.shape == (2, 32, 9, 11)
    no_context = ABlock(24, 40, 32, FANetOptions(context_channels=16, context=False))
    assert no_context.context.branches is None
    assert no_context(torch.randn(1, 24, 8, 8), torch.randn(1, 40, 4, 4)).shape == (1, 32, 8, 8)


def test_hierarchy_is_eq_1_2_with_shared_blobs():
    """n = 6, m = 3: hierarchy 2 has A-blocks on levels 1..5, hierarchy 3 on 1..4; the final
    set is conv3_3(3) .. conv_fc7(3), conv6_2(2), conv7_2(1) (§3.3)."""
    cins = [8, 16, 16, 24, 16, 8]
    neck = FANetNeck(cins, 8, FANetOptions(depth=3, context_channels=8, l2norm=()))
    assert [len(h) for h in neck.hierarchy] == [5, 4]
    # adapters only where a backbone map's channels differ from neck.channels
    assert [isinstance(a, nn.Identity) for a in neck.adapters] == [True, False, False, False, False, True]
    feats = [torch.randn(1, c, 2 ** (6 - i), 2 ** (6 - i)) for i, c in enumerate(cins)]
    neck.train()
    out = neck(feats)
    assert len(out.aux) == 2
    set1, set2, set3 = out.aux[0], out.aux[1], out.maps
    assert all(x.shape[1] == 8 for s in (set1, set2, set3) for x in s)
    assert set1[0] is feats[0] and set1[5] is feats[5]  # identity adapters
    assert set2[5] is feats[5] and set3[5] is feats[5]  # conv7_2(1) shared by all hierarchies
    assert set3[4] is set2[4]  # conv6_2(3) is conv6_2(2)
    with torch.no_grad():
        expect = neck.hierarchy[1][3](set2[3], set2[4])  # fc7(3) = A(fc7(2), conv6_2(2))
    torch.testing.assert_close(set3[3], expect)
    neck.eval()
    assert neck(feats).aux == []
    # S3FD's L2Norm: hierarchy 1's conv3_3 (8 channels = neck.channels: no adapter) has an L2
    # norm of exactly its scale (10) at every position
    normed = FANetNeck(cins, 8, FANetOptions(depth=2, context_channels=8, l2norm=(10.0, 8.0))).train()
    first = normed(feats).aux[0][0]
    torch.testing.assert_close(first.norm(dim=1), torch.full((1, 64, 64), 10.0))


# ---- matcher (detectors.assign.iou_assign) on hand-built boxes -----------------------------
def _fanet_anchors(size: int = 64):
    """Per level the anchor boxes of a 64x64 input: strides 4..128, sizes 16..512."""
    spec = _small()
    sizes = [(math.ceil(size / s), math.ceil(size / s)) for s in spec.anchors.strides]
    return spec, sizes, anchor_boxes(spec.anchors, sizes), anchor_points(spec.anchors, sizes)


def test_iou_matcher_threshold_and_best_anchor():
    spec, sizes, anchors, points = _fanet_anchors()
    pts = torch.cat(points)
    offsets = np.cumsum([0] + [len(a) for a in anchors])
    # Face (0, 0, 32, 32) = the stride-8 anchor at (16, 16). Stride-8 anchors (32 px) shifted by
    # 8 px: IoU 24*32 / (2048 - 768) = 0.6; diagonally 576 / 1472 = 0.391; by 16 px:
    # 512 / 1536 = 0.333 < 0.35. Stride-4 anchors (16 px) inside it: 256 / 1024 = 0.25;
    # stride 16 (64 px) at (16, 16): 0.25. So: the 9 stride-8 anchors at x, y in {8, 16, 24}.
    face = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    a = iou_assign(anchors, [face], [torch.tensor([False])], pos_iou=0.35)
    idx = a.positive[0].nonzero().squeeze(1)
    assert len(idx) == 9
    assert all(offsets[1] <= i < offsets[2] for i in idx.tolist())
    assert sorted(map(tuple, pts[idx].tolist())) == [(x, y) for x in (8.0, 16.0, 24.0)
                                                     for y in (8.0, 16.0, 24.0)]
    # An 8x8 face (40, 40, 48, 48): best IoU 64 / 256 = 0.25 (< 0.35) with the 16-px stride-4
    # anchors containing it (points x, y in {40, 44, 48}); only the best-anchor rule makes one
    # positive -- exactly one of those nine.
    small = torch.tensor([[40.0, 40.0, 48.0, 48.0]])
    a = iou_assign(anchors, [small], [torch.tensor([False])], pos_iou=0.35)
    idx = a.positive[0].nonzero().squeeze(1)
    assert len(idx) == 1 and idx.item() < offsets[1]
    assert tuple(pts[idx[0]].tolist()) in {(x, y) for x in (40.0, 44.0, 48.0) for y in (40.0, 44.0, 48.0)}
    # The same face as an ignore region: its anchor is ignored, not positive.
    a = iou_assign(anchors, [small], [torch.tensor([True])], pos_iou=0.35)
    assert not a.positive.any() and int(a.ignored.sum()) == 1


# ---- hard negative mining and the hierarchical loss ------------------------------------------
def test_hard_negative_mining_three_to_one():
    # image 0: 2 positives -> the 6 highest-loss candidates of 10 (losses 0..9 -> 4..9);
    # anchor 10 is not a candidate (ignored) though its loss is the highest;
    # image 1: no positive -> no negative; image 2: 1 positive, 2 candidates -> both.
    loss = torch.zeros(3, 13)
    loss[0, :10] = torch.arange(10.0)
    loss[0, 10] = 100.0
    cand = torch.zeros(3, 13, dtype=torch.bool)
    cand[0, :10] = True
    cand[1, :10] = True
    cand[2, :2] = True
    pos = torch.zeros(3, 13, dtype=torch.bool)
    pos[0, 11:] = True
    pos[2, 12] = True
    neg = hard_negatives(loss, cand, pos, 3.0)
    assert neg[0].nonzero().squeeze(1).tolist() == [4, 5, 6, 7, 8, 9]
    assert not neg[1].any()
    assert neg[2].nonzero().squeeze(1).tolist() == [0, 1]


class _FixedOutputs(nn.Module):
    """A stand-in model: constant logits z_k per prediction set, box distances 2 strides."""

    def __init__(self, spec: DetectorSpec, sizes, logits: list[float]) -> None:
        super().__init__()
        self.spec, self.sizes, self.logits = spec, sizes, logits
        self.w = nn.Parameter(torch.ones(()))

    def _set(self, z: float) -> HeadOutputs:
        n = [h * w for h, w in self.sizes]
        return HeadOutputs(cls_logits=[self.w * torch.full((1, k, 1), z) for k in n],
                           box_dists=[self.w * torch.full((1, k, 4), 2.0) for k in n],
                           kps_offsets=None, strides=self.spec.anchors.strides,
                           feature_sizes=list(self.sizes))

    def forward(self, images):
        out = self._set(self.logits[-1])
        out.aux = [self._set(z) for z in self.logits[:-1]]
        return out


@pytest.mark.parametrize("aux_weight, neg_pos_ratio, negatives", [(1.0, 3.0, 27), (0.5, 3.0, 27),
                                                                 (1.0, 0.0, 333)])
def test_hierarchical_loss_is_the_weighted_sum_over_hierarchies(aux_weight, neg_pos_ratio, negatives):
    """Face (0, 0, 32, 32) on a 64x64 image: 9 positives (see the matcher test) among 342
    anchors; 3:1 mining keeps 27 negatives, all of loss softplus(z); ratio 0 trains all 333. Positive (px, py) in
    {8, 16, 24}^2 predicts sides 2 x 8 = 16 px against l = px, r = 32 - px (same in y): side
    errors 8, 0, 8 px = 2.5, 0, 2.5 units of 0.1 x 32; smooth-L1(2.5) = 2. Sum over the 9:
    x 3 rows x (4 + 0 + 4) = 24, y 24 -> L_loc = 48 / 9. L_cls = (9 sp(-z) + 27 sp(z)) / 9
    (27: the negatives trained).
    Per hierarchy L = 3 L_cls + L_loc; HL = L_3 + aux_weight (L_1 + L_2)."""
    spec, sizes, _, _ = _fanet_anchors()
    zs = [0.0, 1.0, -1.0]
    model = _FixedOutputs(spec, sizes, zs)
    recipe = load_config(FANET_CONFIG).recipe
    recipe = dataclasses.replace(recipe, loss=dataclasses.replace(
        recipe.loss, aux_weight=aux_weight, neg_pos_ratio=neg_pos_ratio))
    batch = {"image": torch.zeros(1, 3, 64, 64), "boxes": [torch.tensor([[0.0, 0.0, 32.0, 32.0]])],
             "ignore": [torch.tensor([False])], "keypoints": [torch.zeros(1, 5, 2)],
             "keypoints_valid": [torch.tensor([False])]}
    parts, num_pos = _step(model, batch, recipe, CPU, {})
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    per_set = [3 * (9 * sp(-z) + negatives * sp(z)) / 9 + 48 / 9 for z in zs]
    assert num_pos == 9
    assert parts["aux0_total"].item() == pytest.approx(per_set[0], rel=1e-5)
    assert parts["aux1_total"].item() == pytest.approx(per_set[1], rel=1e-5)
    assert parts["box"].item() == pytest.approx(48 / 9, rel=1e-5)
    expect = per_set[2] + aux_weight * (per_set[0] + per_set[1])
    assert parts["total"].item() == pytest.approx(expect, rel=1e-5)


# ---- cost ------------------------------------------------------------------------------------
def test_fanet_spec_cost_equals_hook_count():
    spec = DetectorSpec.from_yaml(FANET_SPEC)
    assert_cost_matches(spec, (64, 64))
    assert_cost_matches(spec, (72, 40))  # odd maps: ceil-mode pools, non-2x upsampling


def test_random_fanet_options_cost_equals_hook_count():
    rng = random.Random(13)
    for _ in range(6):
        n = rng.randint(3, 6)
        widths = [8 * rng.randint(1, 4) for _ in range(6)][:n]
        first = rng.randint(2, n + 1 - 1)
        levels = list(range(first, n + 2))
        depth = rng.randint(1, min(3, len(levels)))
        spec = _small(depth=depth, widths=widths, stem=8 * rng.randint(1, 3),
                      channels=8 * rng.randint(1, 3), x=4 * rng.randint(1, 4),
                      ratio=rng.choice([1, 4, 8]), context=rng.random() < 0.7, levels=levels,
                      l2norm=tuple(float(rng.randint(1, 10)) for _ in range(rng.randint(0, 3))))
        assert_cost_matches(spec, (8 * rng.randint(4, 10), 8 * rng.randint(4, 10)))


def test_vga_cost_of_the_full_fanet():
    """Backbone = VGG16 convs (14.71 M) + fc6/fc7 (4.72 M + 1.05 M) + extras (1.80 M): S3FD's
    22.29 M; params are independent of the input size."""
    spec = DetectorSpec.from_yaml(FANET_SPEC)
    report = cost(spec, (480, 640))
    backbone = sum(c.params for k, c in report.components.items() if k not in ("neck", "head"))
    vgg_convs = 14_714_688  # torchvision vgg16 `features` parameters
    fc = (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024)
    extras = (1024 * 256 + 256) + (256 * 9 * 512 + 512) + (512 * 128 + 128) + (128 * 9 * 256 + 256)
    assert backbone == vgg_convs + fc + extras
    # head: per level 3x3 convs 256 -> 1 + 4, with bias
    assert report.components["head"].params == 6 * (256 * 9 * 5 + 5)


# ---- build, train step, bad input, weights ---------------------------------------------------
def test_build_forward_backward_every_parameter_gets_a_gradient():
    spec = _small()
    model = build(spec).train()
    config = TrainConfig(spec, recipe_from_dict({
        "assigner": {"type": "iou"}, "loss": {"type": "multibox", "cls_weight": 3.0,
                                              "box_weight": 1.0}}))
    batch = {"image": torch.randn(2, 3, 128, 128),
             "boxes": [torch.tensor([[10.0, 12.0, 40.0, 44.0]]), torch.tensor([[60.0, 50.0, 124.0, 120.0]])],
             "ignore": [torch.tensor([False])] * 2, "keypoints": [torch.zeros(1, 5, 2)] * 2,
             "keypoints_valid": [torch.tensor([False])] * 2}
    parts, num_pos = _step(model, batch, config.recipe, CPU, {})
    assert num_pos > 0 and {"aux0_total", "aux1_total"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())
    parts["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    dets = model.predict(torch.randn(1, 3, 96, 96))
    assert dets[0].boxes.shape[1] == 4


def _cli_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fanet.yaml"
    path.write_text(text)
    assert main(["cost", str(path)]) == 2
    return str(path)


@pytest.mark.parametrize("edit, expected", [
    (("{depth: 3, context", "{depth: 4, context"), "fanet neck options depth must be 1, 2 or 3"),
    (("{depth: 3, context", "{depth: 0, context"), "fanet neck options depth must be 1, 2 or 3"),
    (("in_levels: [2, 3, 4, 5, 6, 7]", "in_levels: [2, 3, 4, 5, 6]"),
     "must end at the backbone's last level 7"),
])
def test_bad_fanet_spec_is_one_line_exit_2(tmp_path, capsys, edit, expected):
    text = FANET_SPEC.read_text()
    assert edit[0] in text
    if "in_levels" in edit[0]:  # keep the anchors consistent so the neck rule is what fails
        text = text.replace("strides: [4, 8, 16, 32, 64, 128]", "strides: [4, 8, 16, 32, 64]")
        text = text.replace("base_sizes: [16, 32, 64, 128, 256, 512]", "base_sizes: [16, 32, 64, 128, 256]")
    path = _cli_error(tmp_path, text.replace(*edit))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"facenas cost: error: {path}") and expected in err


def test_torchvision_vgg16_weights_load_and_match_its_features():
    torchvision = pytest.importorskip("torchvision")
    from detectors.backbones import Backbone
    from detectors.blocks.vgg import load_torchvision_vgg16

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    backbone = Backbone(DetectorSpec.from_yaml(FANET_SPEC).backbone).eval()
    assert load_torchvision_vgg16(backbone, vgg.state_dict()) == 13
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = backbone(x)
        conv3_3 = vgg.features[:16](x)   # up to relu3_3 (stride 4)
        conv4_3 = vgg.features[:23](x)   # up to relu4_3 (stride 8)
        conv5_3 = vgg.features[:30](x)   # up to relu5_3 (stride 16)
    torch.testing.assert_close(ours[0], conv3_3)
    torch.testing.assert_close(ours[1], conv4_3)
    torch.testing.assert_close(ours[2], conv5_3)


# ---- proof of learning ---------------------------------------------------------------------
@pytest.mark.slow
def test_memorisation_reduced_fanet_learns(widerface_mini, tmp_path):
    """A reduced-width FANet (VGG layout, 3-level hierarchy, hierarchical multibox loss, IoU
    matcher) trains on 8 widerface-mini images (test_train's selection rule, every 4th; stored
    at a 160 px long side) with the test geometry and is evaluated on them. AP starts at 0 and
    must rise clearly. The head has one GN tower conv and no L2Norm: without normalisation the
    BN-free VGG trained from scratch sits at the constant 1:3 predictor (cls loss 3 x 2.25)
    for the first few hundred iterations (measured: AP 0.08-0.15 after 150-200 iterations with
    bare prediction convs), too long for a test."""
    from test_train import MEMO_SIZE, _memorisation_ids, _subset_root

    from detectors.checkpoint import load_model_weights
    from detectors.test import evaluate_predictions, predict_split, split_ground_truth
    from detectors.train import train

    ids = _memorisation_ids(widerface_mini)[::4][:8]
    root = _subset_root(widerface_mini, tmp_path / "root", ids, long_side=MEMO_SIZE)
    spec = _small(widths=(16, 32, 32, 64, 32, 32), stem=8, channels=32, x=32, l2norm=(),
                  head_convs=1)
    recipe = recipe_from_dict({
        "train_size": MEMO_SIZE, "batch_size": 8, "workers": 0, "seed": 0,
        "schedule": {"lr": 0.004, "unit": "iterations", "total": MEMO_FANET_ITERS,
                     "milestones": [int(MEMO_FANET_ITERS * 0.8)], "warmup_iters": 20},
        "augmentation": {"crop_choices": [], "flip": False, "photometric": False},
        "assigner": {"type": "iou"},
        "loss": {"type": "multibox", "cls_weight": 3.0, "box_weight": 1.0, "kps_weight": 0.0}})
    gt = split_ground_truth(root, "train")
    model = build(spec)
    predict = lambda: predict_split(model, root, "train", MEMO_SIZE, score_thresh=0.005,  # noqa: E731
                                    progress=False)
    before = evaluate_predictions(predict(), gt, progress=False)["hard"]
    result = train(TrainConfig(spec, recipe), root, tmp_path / "run", progress=False, num_threads=1)
    load_model_weights(model, result.checkpoint)
    after = evaluate_predictions(predict(), gt, progress=False)["hard"]
    losses = [json.loads(l)["total"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"AP before {before:.3f} after {after:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert before < 0.02
    assert after >= 0.25
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


MEMO_FANET_ITERS = 250


def test_reduced_fanet_onnx_export_matches_torch(tmp_path):
    """export-onnx of a FANet (L2Norm, context branches, bilinear upsampling, 6 strides) runs
    in onnxruntime at another input size than exported and matches the torch outputs."""
    ort = pytest.importorskip("onnxruntime")
    from detectors.checkpoint import save_checkpoint
    from detectors.onnx_io import RawExport

    spec = _small()
    spec_path = tmp_path / "fanet_small.yaml"
    spec_path.write_text(spec.to_yaml())
    model = build(spec).eval()
    ckpt = save_checkpoint(tmp_path / "w.pt", {"spec": spec.to_dict(), "model": model.state_dict()})
    out = tmp_path / "fanet.onnx"
    assert main(["export-onnx", str(spec_path), "--weights", str(ckpt), "-o", str(out),
                 "--size", "128"]) == 0
    x = torch.randn(1, 3, 160, 96, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = RawExport(model, spec.anchors.strides)(x)
    assert len(got) == len(want) == 2 * 6
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        assert np.abs(g - w.numpy()).max() <= 1e-4
