"""BFBox's choice blocks and searched FPN: analytic cost equals a hook count per component,
and every entry builds, runs forward/backward without NaN and trains every parameter."""

from __future__ import annotations

import pytest
import torch

from _cost_check import assert_cost_matches
from detectors.bfbox.fpn import RF_MODULES, BFBoxFPN, BFBoxFPNOptions
from detectors.bfbox.blocks import BLOCKS
from detectors.catalog import BLOCKS as CATALOG_BLOCKS, NECKS
from detectors.errors import UserError
from detectors.spec import AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, StageSpec

LEVELS = (2, 3, 4, 5, 6, 7)
ANCHORS = AnchorSpec(strides=tuple(2**lv for lv in LEVELS), base_sizes=(16, 32, 64, 128, 256, 512),
                     scales=(1.0,), ratios=(1.0,))


def _spec(blocks: list[str], options: BFBoxFPNOptions, depth: int = 2) -> DetectorSpec:
    """Six stages (C2..C7) whose layers cycle through `blocks`; widths change between stages
    so the first block of each stage has a projecting shortcut (and stage 2.. strides)."""
    names = iter(blocks * 20)
    stages = tuple(StageSpec(block=tuple(next(names) for _ in range(depth)), depth=depth, width=w)
                   for w in (16, 24, 32, 32, 48, 16))
    return DetectorSpec(
        name="bfbox-test", backbone=BackboneSpec(stem_width=16, stages=stages),
        neck=NeckSpec("bfbox_fpn", 16, in_levels=LEVELS, options=options),
        head=HeadSpec(channels=16, num_convs=1, gn_groups=8), anchors=ANCHORS)


PLAIN = BFBoxFPNOptions(inputs=(1, 0, 1, 2, 3), rf=("conv3",) * 5)


def test_catalogue_holds_every_block_of_fig2():
    # 4 + 4 single-kernel (conv / depthwise), 2 two-kernel, 2 dense blocks
    assert sorted(BLOCKS) == sorted(
        [f"bf_conv{k}" for k in (3, 5, 7, 9)] + [f"bf_dw{k}" for k in (3, 5, 7, 9)]
        + ["bf_dw3_5", "bf_dw5_7", "bf_dense2x32", "bf_dense3x16"])
    assert all(name in CATALOG_BLOCKS for name in BLOCKS) and "bfbox_fpn" in NECKS


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("hw", [(96, 96), (70, 45)])
def test_block_cost_equals_hook_count(name, hw, one_torch_thread):
    assert_cost_matches(_spec([name], PLAIN), hw)


def test_hand_count_of_one_block():
    """bf_dw3_5 from 16 to 32 channels, stride 2, on 8x8: m = 16; 1x1 16->16 at 8x8, dw 3x3
    strided to 4x4, dw 5x5 at 4x4, 1x1 16->32 at 4x4, shortcut 1x1 16->32 at 4x4."""
    from detectors.macs import Counter

    c = Counter()
    assert BLOCKS["bf_dw3_5"][1](c, 16, 32, 2, 8, 8) == (4, 4)
    assert c.m == 16 * 16 * 64 + 16 * 9 * 16 + 16 * 25 * 16 + 16 * 32 * 16 + 16 * 32 * 16
    block = BLOCKS["bf_dw3_5"][0](16, 32, 2)
    assert c.p == sum(p.numel() for p in block.parameters())


@pytest.mark.parametrize("rf", RF_MODULES)
@pytest.mark.parametrize("weighted", [False, True])
def test_fpn_cost_equals_hook_count(rf, weighted, one_torch_thread):
    # merges read a coarser lateral, a finer lateral and earlier merge outputs (6 + k)
    options = BFBoxFPNOptions(inputs=(3, 0, 6, 7, 9), rf=(rf,) * 5, weighted=weighted)
    spec = _spec(["bf_conv3"], options, depth=1)
    for hw in ((128, 128), (90, 61)):
        assert_cost_matches(spec, hw)


def _trains_every_parameter(module: torch.nn.Module, inputs) -> None:
    out = module(inputs)
    outs = out if isinstance(out, list) else [out]
    assert all(torch.isfinite(o).all() for o in outs)
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("stride", [1, 2])
def test_block_forward_backward(name, stride, one_torch_thread):
    torch.manual_seed(0)
    block = BLOCKS[name][0](16, 32, stride)
    x = torch.randn(2, 16, 11, 12)
    out = block(x)
    assert out.shape == (2, 32, (11 + stride - 1) // stride, (12 + stride - 1) // stride)
    _trains_every_parameter(block, x)


@pytest.mark.parametrize("weighted", [False, True])
def test_fpn_forward_backward_and_shapes(weighted, one_torch_thread):
    torch.manual_seed(0)
    options = BFBoxFPNOptions(inputs=(5, 0, 6, 8, 9), rf=("rfb", "sep5", "dil3", "conv3", "rfb"),
                              weighted=weighted)
    fpn = BFBoxFPN([8, 16, 16, 24, 24, 8], 16, LEVELS, options)
    sizes = [(33, 20), (17, 10), (9, 5), (5, 3), (3, 2), (2, 1)]  # nested ceil-halvings
    feats = [torch.randn(2, c, *s) for c, s in zip([8, 16, 16, 24, 24, 8], sizes)]
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 16, *s) for s in sizes]
    _trains_every_parameter(fpn, feats)


def test_fpn_merge_is_the_documented_sum():
    """With identity-like pieces the merge is L_k + resize(pool[j]): check one merge by hand."""
    options = BFBoxFPNOptions(inputs=(1,), rf=("conv3",))
    fpn = BFBoxFPN([4, 4], 4, (2, 3), options).eval()
    feats = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)]
    lat = [conv(f) for conv, f in zip(fpn.lateral_convs, feats)]
    expected = fpn.rf_modules[0](lat[0] + torch.nn.functional.interpolate(lat[1], size=(4, 4)))
    out = fpn(feats)
    assert torch.allclose(out[0], expected) and torch.allclose(out[1], lat[1])


@pytest.mark.parametrize("inputs,match", [((0,), "other than 0"), ((7,), "pool index"),
                                          ((1, 1, 1, 1, 1, 1, 1), "merges")])
def test_fpn_rejects_bad_merges(inputs, match):
    """Refused when the spec is made (so on reading its YAML), not first when it is built."""
    options = BFBoxFPNOptions(inputs=inputs, rf=("conv3",) * len(inputs))
    with pytest.raises(UserError, match=match):
        _spec(["bf_conv3"], options, depth=1)
    good = _spec(["bf_conv3"], BFBoxFPNOptions(inputs=(1,), rf=("conv3",)), depth=1).to_dict()
    good["neck"]["options"]["inputs"] = list(inputs)
    good["neck"]["options"]["rf"] = ["conv3"] * len(inputs)
    with pytest.raises(UserError, match=match):
        DetectorSpec.from_dict(good)
    with pytest.raises(UserError, match="not one of"):
        BFBoxFPNOptions(inputs=(1,), rf=("conv11",))
