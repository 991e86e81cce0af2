"""Analytic cost() equals the hook-measured cost of the built model, exactly, per component."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from _cost_check import assert_cost_matches
from detectors.cost import cost, level_sizes, vga_gflops
from detectors.model import build
from detectors.spec import BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, StageSpec
from detectors.spec_sampling import random_spec

N_SPECS = 200


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _specs_and_sizes():
    rng = random.Random(20261123)
    out = []
    for i in range(N_SPECS):
        spec = random_spec(rng, max_width=32, max_depth=2, name=f"r{i}")
        # odd and non-square sizes exercise every rounding rule (ceil convs, floor max-pool)
        hw = (rng.randint(32, 80), rng.randint(32, 80))
        out.append((spec, hw))
    return out


SPECS = _specs_and_sizes()


def test_random_specs_cover_every_option():
    seen = Counter()
    for spec, hw in SPECS:
        h = spec.head
        seen.update({f"block:{s.block}" for s in spec.backbone.stages})
        seen.update([f"stem:{spec.backbone.stem}", f"neck:{spec.neck.type}", f"norm:{h.norm}",
                     f"dw:{h.depthwise}", f"shared:{h.shared_across_strides}",
                     f"towers:{h.shared_towers}", f"kps:{h.keypoints}", f"scale:{h.scale}",
                     f"levels:{spec.neck.in_levels}", f"A:{spec.anchors.num_anchors}",
                     f"m0:{h.num_convs == 0}", f"square:{hw[0] == hw[1]}"])
    for key in ["block:basic", "block:bottleneck", "block:depthwise", "stem:deep",
                "stem:mobilenet", "neck:pafpn", "neck:fpn", "norm:gn", "norm:bn", "dw:True",
                "dw:False", "shared:True", "shared:False", "towers:True", "towers:False",
                "kps:True", "kps:False", "scale:False", "m0:True", "square:False",
                "levels:(2, 3, 4, 5)", "levels:(3, 4)", "A:1", "A:6"]:
        assert seen[key] >= 3, key


@pytest.mark.parametrize("chunk", range(4))
def test_analytic_equals_measured(chunk):
    torch.manual_seed(0)
    for spec, hw in SPECS[chunk::4]:
        model = build(spec)
        # per component (so totals, GFLOPs and mmcv FLOPs follow); every parameter counted
        want = assert_cost_matches(model, hw)
        assert want.params == sum(p.numel() for p in model.parameters()), spec.name


def test_level_sizes_match_model_on_odd_inputs():
    for spec, hw in SPECS[:20]:
        with torch.no_grad():
            out = build(spec).eval()(torch.zeros(1, 3, *hw))
        assert out.feature_sizes == level_sizes(spec, hw)


def test_hand_computed_tiny_model():
    """A model small enough to count by hand (see the comments), at 64x64."""
    spec = DetectorSpec(
        name="hand",
        backbone=BackboneSpec(stem_width=8, stem="mobilenet",
                              stages=tuple(StageSpec("depthwise", 1, 8) for _ in range(4))),
        neck=NeckSpec("fpn", 8, (4, 5)),
        head=HeadSpec(channels=8, num_convs=0, norm="bn", scale=False, shared_across_strides=False),
        anchors=__import__("detectors.spec", fromlist=["AnchorSpec"]).AnchorSpec(
            strides=(16, 32), base_sizes=(16, 64), scales=(1.0,), ratios=(1.0,)))
    r = cost(spec, (64, 64))
    # stem: conv 3->8 3x3 s2 at 32x32: 8*32*32*27 = 221184; dw 8 3x3: 8*1024*9 = 73728;
    # pw 8->8: 8*1024*8 = 65536
    assert r.components["stem"].macs == 221184 + 73728 + 65536
    # params: 3*3*3*8 + 2*8 (BN) + 9*8 + 16 + 64 + 16
    assert r.components["stem"].params == 216 + 16 + 72 + 16 + 64 + 16
    # c2 at 16x16: dw 8*256*9 + pw 8*256*8
    assert r.components["c2"].macs == 8 * 256 * 9 + 8 * 256 * 8
    # neck: C4 (4x4) and C5 (2x2); lateral 1x1 8->8 + fpn 3x3 8->8 per level
    assert r.components["neck"].macs == (16 + 4) * 8 * 8 + (16 + 4) * 8 * 8 * 9
    assert r.components["neck"].params == 2 * (64 + 8) + 2 * (576 + 8)
    # head: one 3x3 conv 8 -> A*(1+4) = 5 channels per level, unshared, no scale
    assert r.components["head"].macs == (16 + 4) * 5 * 8 * 9
    assert r.components["head"].params == 2 * (5 * 8 * 9 + 5)


def test_vga_is_640_square_times_three_quarters():
    spec = SPECS[0][0]
    assert vga_gflops(spec) == pytest.approx(cost(spec, (640, 640)).macs * 0.75 / 1e9)
    assert cost(spec).input_hw == spec.input_size


def test_package_level_cost_is_callable_after_submodule_import():
    """`detectors.cost(spec)` (the issue's API) works even once `detectors.cost` the module is
    imported, which rebinds the package attribute to the module."""
    import detectors
    import detectors.cost as cost_module

    spec = SPECS[1][0]
    assert detectors.cost is cost_module
    assert detectors.cost(spec, (64, 64)) == cost(spec, (64, 64))
