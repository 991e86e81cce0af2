"""ASFD's candidate operations and the derived `autofem` neck: analytic cost == hook count,
shapes, the Eq. 2 / tree structure, the dual shot, and bad options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _cost_check import assert_cost_matches, assert_counter_matches, measure_module
from detectors.asfd.autofem import AutoFEMOptions, CPMCell, cell_leaves
from detectors.asfd.ops import OPS, S_CPM, S_FPN, op_entry
from detectors.cost import cost
from detectors.errors import UserError
from detectors.macs import Counter
from detectors.model import build
from detectors.spec import AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, StageSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_candidate_sets_are_the_papers():
    assert len(S_FPN) == 6 and len(S_CPM) == 12 and set(S_FPN) <= set(S_CPM) == set(OPS)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_cost_equals_hook_count_and_keeps_shape(name):
    entry = OPS[name]
    module = entry.build(3, 16)
    hw = (13, 22)  # odd, non-square: 'same' padding per axis and dilation
    with torch.no_grad():
        assert module(torch.zeros(1, 3, *hw)).shape == (1, 16, *hw)
    c = Counter()
    assert entry.cost(c, 3, 16, *hw) == hw
    assert_counter_matches(c, measure_module(module, hw), name)


def test_separable_op_hand_counted():
    c = Counter()  # sep5x5 dilation 2, 8 -> 16 channels at 10x10
    OPS["dil5x5_r2"].cost(c, 8, 16, 10, 10)
    assert c.m == 8 * 25 * 100 + 8 * 16 * 100
    assert c.p == (8 * 25 + 2 * 8) + (8 * 16 + 2 * 16)


def test_unknown_op_is_a_user_error():
    with pytest.raises(UserError, match="op 'sep7x7' is not one of conv1x1"):
        op_entry("sep7x7")


# ---- the derived neck -------------------------------------------------------------------
def _fpn(levels: int, same="conv1x1", td="sep3x3", bu="dil3x3_r2"):
    return tuple((same, td if lv < levels - 1 else None, bu if lv > 0 else None)
                 for lv in range(levels))


def autofem_spec(options: AutoFEMOptions, levels=(2, 3, 4, 5, 6, 7), channels=16) -> DetectorSpec:
    stages = tuple(StageSpec("depthwise", 1, 8 * (i + 1)) for i in range(levels[-1] - 1))
    return DetectorSpec(
        name="autofem-test",
        backbone=BackboneSpec(stem_width=8, stages=stages, stem="mobilenet"),
        neck=NeckSpec("autofem", channels, levels, options),
        head=HeadSpec(channels=16, num_convs=1, gn_groups=8, shared_towers=False),
        anchors=AnchorSpec(strides=tuple(2**lv for lv in levels),
                           base_sizes=tuple(2**(lv + 2) for lv in levels), scales=(1.0,)))


# every S_FPN op on some path and every S_CPM op in some cell
EVERY_OP = AutoFEMOptions(
    fpn=(("conv1x1", "sep5x5", None), ("sep3x3", "dil3x3_r3", "dil5x5_r2"),
         ("dil3x3_r2", None, "sep3x3")),
    cpm=(((0, "conv1x3"), (1, "conv3x1"), (1, "conv1x3_3x1"), (0, "conv1x5")),
         ((0, "conv5x1"), (0, "conv1x5_5x1"), (2, "dil3x3_r2"), (3, "dil3x3_r3")),
         ((0, "dil5x5_r2"), (1, "sep3x3"), (1, "sep5x5"), (3, "conv1x1"))))


@pytest.mark.parametrize("options, levels, hw", [
    (EVERY_OP, (3, 4, 5), (61, 83)),
    (AutoFEMOptions(_fpn(6)), (2, 3, 4, 5, 6, 7), (64, 70)),  # FPN only (depth 0.5)
    (AutoFEMOptions(_fpn(2), cpm=(((0, "sep3x3"),), ((0, "conv1x1"), (1, "sep5x5"))),
                    repeats=2), (4, 5), (97, 64)),
])
def test_autofem_cost_equals_hook_count(options, levels, hw):
    spec = autofem_spec(options, levels)
    model = build(spec)
    want = assert_cost_matches(model, hw)
    assert want.params == sum(p.numel() for p in model.parameters())


def test_autofem_yaml_round_trip():
    spec = autofem_spec(EVERY_OP, (3, 4, 5))
    again = DetectorSpec.from_yaml(spec.to_yaml())
    assert again == spec and again.id == spec.id
    assert "[conv1x1, sep5x5, null]" in spec.to_yaml()


def test_dual_shot_in_training_only():
    spec = autofem_spec(AutoFEMOptions(_fpn(3)), (3, 4, 5))
    model = build(spec)
    out = model(torch.randn(2, 3, 64, 64))
    assert len(out.aux) == 1 and out.aux[0].feature_sizes == out.feature_sizes
    # the first shot predicts from the laterals: same head, other features, other outputs
    assert not torch.equal(out.aux[0].cls_logits[0], out.cls_logits[0])
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).aux == []


def test_eq2_products_and_path_weights():
    """With every op replaced by identity, level outputs follow Eq. 2 as read in autofem.py."""
    from detectors.asfd.autofem import FPNStage

    stage = FPNStage([4, 4, 4], 4, _fpn(3))
    for lv in stage.paths:
        for k in lv:
            lv[k] = nn.Identity()
    stage.lateral_convs = nn.ModuleList(nn.Identity() for _ in range(3))
    stage.fuse_convs = nn.ModuleList(nn.Identity() for _ in range(3))
    c = [torch.full((1, 4, s, s), v) for s, v in ((4, 2.0), (2, 3.0), (1, 5.0))]
    _, p = stage(c)
    # level 0: same + TD (up(TD_1) * C_0, TD_1 = up(C_2) * C_1 = 15) -> (2 + 30) / 2
    assert torch.allclose(p[0], torch.full_like(p[0], (2 + 15 * 2) / 2))
    # level 1: same 3, TD 15, BU pool(C_0) * C_1 = 6 -> mean of three
    assert torch.allclose(p[1], torch.full_like(p[1], (3 + 15 + 6) / 3))
    # level 2: same 5, BU pool(BU_1) * C_2 = 30
    assert torch.allclose(p[2], torch.full_like(p[2], (5 + 30) / 2))


def test_cell_concatenates_only_the_leaves():
    assert cell_leaves([0, 1, 1, 0]) == [2, 3, 4]
    cell = CPMCell(8, ((0, "conv1x1"), (1, "sep3x3"), (1, "sep5x5"), (0, "conv1x3")))
    assert cell.out_conv.conv.in_channels == 3 * 8
    assert cell(torch.randn(1, 8, 9, 9)).shape == (1, 8, 9, 9)


@pytest.mark.parametrize("kwargs, message", [
    ({"fpn": (("conv1x1", "nope", None), ("conv1x1", None, "sep3x3"))},
     r"fpn\[0\] top_down op 'nope' is not one of conv1x1"),
    ({"fpn": (("conv1x3", None, None),)}, "fpn.0. same op 'conv1x3' is not one of"),
    ({"fpn": (("conv1x1", "sep3x3", None),)}, r"fpn\[0\] has no top_down path"),
    ({"fpn": _fpn(2), "cpm": ((), ((0, "sep3x3"),))}, r"cpm\[0\] has 0 nodes"),
    ({"fpn": _fpn(1), "cpm": (((1, "sep3x3"),),)}, "node 1 input 1 must be in 0..0"),
    ({"fpn": _fpn(1), "cpm": (((0, "sep9x9"),),)}, "node 1 op 'sep9x9' is not one of"),
    ({"fpn": _fpn(2), "cpm": (((0, "sep3x3"),),)}, "one cell per level"),
    ({"fpn": _fpn(1), "repeats": 0}, "repeats must be an integer >= 1"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        AutoFEMOptions(**kwargs)


def test_levels_must_match_in_levels():
    with pytest.raises(UserError, match="lists 2 levels but in_levels has 3"):
        cost(autofem_spec(AutoFEMOptions(_fpn(2)), (3, 4, 5)))


def test_unknown_op_in_a_spec_file_names_the_key(tmp_path):
    text = autofem_spec(AutoFEMOptions(_fpn(2)), (4, 5)).to_yaml().replace("sep3x3", "sep9x9")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"bad.yaml:\d+: .*'sep9x9' is not one of"):
        DetectorSpec.from_yaml(path)
