"""Every catalogue entry (detectors/catalog.py), timm-style: each stem, block, neck (with each of
its option sets), head, assigner and loss has an example spec below; each example builds, runs
one training step through the trainer's loss path (the recipe's assigner + loss, or the model's
own objective), has finite outputs, loss and gradients, gives every parameter a gradient, and
its analytic cost equals the hook count per component.

A catalogue key without an example fails test_every_catalogue_key_has_an_example: a new entry
comes with its example here. Entries are reached through detectors.catalog and the public
builders only (DetectorSpec.from_dict, build, cost, measured_cost), never a family's module."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from _cost_check import assert_cost_matches, cost_diff
from detectors import catalog
from detectors.config import recipe_from_dict
from detectors.cost import cost
from detectors.device import TrainingMode
from detectors.errors import UserError
from detectors.measure import measured_cost
from detectors.model import build
from detectors.spec import DetectorSpec
from detectors.train import _step  # the trainer's forward + loss of one batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = TrainingMode(torch.device("cpu"), False, None, False)
HW = (64, 64)


@dataclass(frozen=True)
class Example:
    """A spec (DetectorSpec.from_dict input) and the recipe its family trains with."""

    spec: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)


def _detector(stages: list[dict], levels: list[int], neck: dict | None = None,
              head: dict | None = None, stem: str = "deep", stem_width: int = 16,
              anchors: dict | None = None) -> dict[str, Any]:
    """A small spec dict: 16-channel neck and head, one 1:1 anchor per cell unless given."""
    return {
        "name": "example",
        "backbone": {"stem": stem, "stem_width": stem_width, "stages": stages},
        "neck": {"type": "fpn", "channels": 16, "in_levels": levels, **(neck or {})},
        "head": {"channels": 16, "num_convs": 1, "norm": "gn", "gn_groups": 4, **(head or {})},
        "anchors": anchors or {"strides": [2**lv for lv in levels],
                               "base_sizes": [4 * 2**lv for lv in levels],
                               "scales": [1.0], "ratios": [1.0]},
        "input_size": list(HW)}


def _basic(widths) -> list[dict]:
    return [{"block": "basic", "depth": 1, "width": w} for w in widths]


# ---- stems and blocks: one generic backbone each --------------------------------------------
def _stem(name: str) -> Example:
    return Example(_detector(_basic((16, 24)), [2, 3], stem=name))


def _block(name: str) -> Example:
    # two layers in stage 1 (an identity shortcut), a wider stage 2 (a projecting one)
    return Example(_detector([{"block": name, "depth": 2, "width": 16},
                              {"block": name, "depth": 1, "width": 32}], [2, 3]))


STEMS = {name: [_stem(name)] for name in
         ("deep", "mobilenet", "vgg", "tv_resnet", "mobilenet_v1")}
BLOCKS = {name: [_block(name)] for name in (
    "basic", "bottleneck", "depthwise", "vgg", "vgg_fc", "ssd_extra", "tv_basic",
    "tv_bottleneck", "ssd_extra_bn",
    *(f"bf_conv{k}" for k in (3, 5, 7, 9)), *(f"bf_dw{k}" for k in (3, 5, 7, 9)),
    "bf_dw3_5", "bf_dw5_7", "bf_dense2x32", "bf_dense3x16")}


# ---- necks, with each option set ------------------------------------------------------------
def _plain(neck: str) -> Example:
    return Example(_detector(_basic((16, 24, 32)), [2, 3, 4], {"type": neck}))


def _bfbox(inputs: list[int], rf: list[str], weighted: bool) -> Example:
    # C2..C5, merges over C3..C5 (tests/test_bfbox_blocks.py: merges read laterals 0..2 or
    # earlier merges 3..); BFBox's recipe is SCRFD's
    return Example(_detector(_basic((16, 24, 32, 32)), [3, 4, 5], {
        "type": "bfbox_fpn", "options": {"inputs": inputs, "rf": rf, "weighted": weighted}}))


def _autofem(levels: list[int], fpn: list, cpm: list, repeats: int = 1) -> Example:
    # tests/test_asfd_ops.py: a depthwise backbone, ASFD's recipe (DRMC + IoU matching)
    stages = [{"block": "depthwise", "depth": 1, "width": 8 * (i + 1)}
              for i in range(levels[-1] - 1)]
    return Example(_detector(stages, levels, {
        "type": "autofem", "options": {"fpn": fpn, "cpm": cpm, "repeats": repeats}},
        {"shared_towers": False}, stem="mobilenet", stem_width=8),
        {"loss": {"type": "drmc", "margin": 0.2}, "assigner": {"type": "iou"}})


def _fpn_ops(n: int, same="conv1x1", td="sep3x3", bu="dil3x3_r2") -> list:
    return [[same, td if lv < n - 1 else None, bu if lv > 0 else None] for lv in range(n)]


FANET_RECIPE = {"assigner": {"type": "iou", "pos_iou": 0.35},
                "loss": {"type": "multibox", "cls_weight": 3.0, "box_weight": 1.0,
                         "kps_weight": 0.0}}


def _fanet(depth: int, context: bool, deep_ratio: int, levels: list[int],
           head_convs: int = 0) -> Example:
    # tests/test_fanet.py's reduced FANet: VGG stem and blocks, S3FD extras; in_levels end at
    # the last backbone level (fanet's rule)
    blocks = [("vgg", 1), ("vgg", 1), ("vgg", 1), ("vgg_fc", 1), ("ssd_extra", 1), ("ssd_extra", 1)]
    stages = [{"block": b, "depth": d, "width": w}
              for (b, d), w in zip(blocks, (16, 32, 32, 64, 32, 16))]
    return Example(_detector(stages, levels, {
        "type": "fanet", "options": {"depth": depth, "context_channels": 16,
                                     "deep_ratio": deep_ratio, "context": context}},
        {"num_convs": head_convs, "norm": "gn", "gn_groups": 8, "shared_across_strides": False,
         "scale": False}, stem="vgg"), FANET_RECIPE)


# RSA's head and neck only come together (the rsa_lrn head reads the roll-out, with keypoints
# and one anchor per scale); its trainer objective is its own (stage 'all': forecast + RSA +
# LRN, every parameter). Sizes from experiments/models/rsa.yaml, narrower.
RSA_LAYOUT = [-0.173, -0.129, 0.217, -0.134, 0.023, 0.07, -0.127, 0.251, 0.181, 0.247]


def _rsa(rollouts: int) -> Example:
    m = rollouts + 1
    return Example({
        "name": "rsa-example",
        "backbone": {"stem": "tv_resnet", "stem_width": 16,
                     "stages": [{"block": "basic", "depth": 2, "width": 16}]},
        "neck": {"type": "rsa", "channels": 32, "in_levels": [2],
                 "options": {"rollouts": rollouts, "landmark_layout": RSA_LAYOUT}},
        "head": {"type": "rsa_lrn", "channels": 32, "num_convs": 2, "norm": "gn",
                 "gn_groups": 8, "keypoints": True},
        "anchors": {"strides": [8 * 2**i for i in range(m)],
                    "base_sizes": [64 * 2**i for i in range(m)],
                    "scales": [2**0.5], "ratios": [1.0]},
        "input_size": list(HW)}, {"rsa": {"stage": "all"}, "assigner": {"type": "iou", "pos_iou": 0.5}})


NECKS = {
    "fpn": [_plain("fpn")],
    "pafpn": [_plain("pafpn")],
    "bfbox_fpn": [
        # each RF module; both input kinds (laterals only / earlier merges); weighted or not
        _bfbox([1, 0, 1], ["conv3", "dil3", "sep5"], False),
        _bfbox([2, 3, 4], ["rfb", "conv3", "dil3"], True),
        _bfbox([2, 0, 3], ["sep5", "rfb", "rfb"], False),
    ],
    "autofem": [
        # every S_FPN op on some path and every S_CPM op in some cell (tests/test_asfd_ops.py)
        _autofem([3, 4, 5], [["conv1x1", "sep5x5", None], ["sep3x3", "dil3x3_r3", "dil5x5_r2"],
                             ["dil3x3_r2", None, "sep3x3"]],
                 [[[0, "conv1x3"], [1, "conv3x1"], [1, "conv1x3_3x1"], [0, "conv1x5"]],
                  [[0, "conv5x1"], [0, "conv1x5_5x1"], [2, "dil3x3_r2"], [3, "dil3x3_r3"]],
                  [[0, "dil5x5_r2"], [1, "sep3x3"], [1, "sep5x5"], [3, "conv1x1"]]]),
        _autofem([2, 3, 4, 5], _fpn_ops(4), []),  # FPN only (no CPM)
        _autofem([4, 5], _fpn_ops(2), [[[0, "sep3x3"]], [[0, "conv1x1"], [1, "sep5x5"]]],
                 repeats=2),
    ],
    "fanet": [
        _fanet(3, True, 8, [2, 3, 4, 5, 6, 7]),
        _fanet(2, False, 1, [4, 5, 6, 7], head_convs=1),
        _fanet(1, True, 4, [6, 7]),
    ],
    # not rollouts 0: that spec builds (and costs) an RSA unit that never runs, so its 7k
    # parameters get no gradient; left to the RSA family's owners
    "rsa": [_rsa(1), _rsa(5)],
}


# ---- heads ----------------------------------------------------------------------------------
def _scrfd_head(head: dict, anchors: dict | None = None) -> Example:
    return Example(_detector(_basic((16, 24, 32)), [2, 3, 4], {"type": "pafpn"},
                             {"type": "scrfd", **head}, anchors=anchors))


HEADS = {
    "scrfd": [
        _scrfd_head({"keypoints": True, "norm": "bn", "depthwise": True}),
        _scrfd_head({"shared_across_strides": False, "shared_towers": False, "scale": False,
                     "num_convs": 2}),
        _scrfd_head({"num_convs": 0, "keypoints": True},
                    {"strides": [4, 8, 16], "base_sizes": [8, 16, 32], "scales": [1.0, 2.0],
                     "ratios": [1.0]}),  # two anchors per cell
    ],
    "rsa_lrn": [_rsa(2)],
    # RetinaNet's head (BFBox's detector): towers of conv + bias + ReLU, no norm
    "retinanet": [
        _scrfd_head({"type": "retinanet", "shared_towers": False, "num_convs": 4,
                     "keypoints": True}),
        _scrfd_head({"type": "retinanet", "shared_across_strides": False, "depthwise": True,
                     "num_convs": 2, "scale": False}),
    ],
}


# ---- assigners and losses: a recipe each, on a spec its family trains --------------------------
_SCRFD = _detector(_basic((16, 24, 32)), [2, 3, 4], {"type": "pafpn"},
                   {"keypoints": True}, anchors={"strides": [4, 8, 16], "base_sizes": [8, 16, 32],
                                                 "scales": [1.0, 2.0], "ratios": [1.0]})

ASSIGNERS = {
    "atss": [Example(_SCRFD, {"assigner": {"type": "atss", "topk": 3}})],
    "iou": [Example(_SCRFD, {"assigner": {"type": "iou", "pos_iou": 0.35}}),
            Example(NECKS["fanet"][0].spec, FANET_RECIPE)],
}
LOSSES = {
    "scrfd": [Example(_SCRFD, {"loss": {"type": "scrfd", "kps_weight": 0.1}})],
    "multibox": [Example(NECKS["fanet"][0].spec, FANET_RECIPE),
                 Example(_SCRFD, {"assigner": {"type": "iou"},
                                  "loss": {"type": "multibox", "kps_weight": 0.0}})],
    "drmc": [NECKS["autofem"][0]],
}

EXAMPLES: dict[str, dict[str, list[Example]]] = {
    "STEMS": STEMS, "BLOCKS": BLOCKS, "NECKS": NECKS, "HEADS": HEADS,
    "ASSIGNERS": ASSIGNERS, "LOSSES": LOSSES}


def _cases(*tables: str) -> list:
    return [pytest.param(table, key, i, id=f"{table.lower()}-{key}-{i}")
            for table in tables for key in sorted(EXAMPLES[table])
            for i in range(len(EXAMPLES[table][key]))]


# ---- the tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("table", sorted(EXAMPLES))
def test_every_catalogue_key_has_an_example(table):
    keys, examples = set(getattr(catalog, table)), set(EXAMPLES[table])
    assert not keys - examples, (f"catalog.{table} entries without an example spec in "
                                 f"{__name__}: {sorted(keys - examples)}")
    assert not examples - keys, f"examples of keys not in catalog.{table}: {sorted(examples - keys)}"
    assert all(EXAMPLES[table][k] for k in keys)


def _batch(spec: DetectorSpec) -> dict[str, Any]:
    """Two 64x64 images; two faces and one ignored region, then one face; landmarks inside."""
    gen = torch.Generator().manual_seed(0)
    boxes = [torch.tensor([[8.0, 8.0, 30.0, 32.0], [36.0, 30.0, 60.0, 58.0], [0.0, 40.0, 8.0, 48.0]]),
             torch.tensor([[12.0, 4.0, 52.0, 48.0]])]
    keypoints = []
    for b in boxes:  # 5 points spread inside each box
        frac = torch.tensor([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
        keypoints.append(b[:, None, :2] + frac[None] * (b[:, None, 2:] - b[:, None, :2]))
    return {"image": torch.randn(2, 3, *HW, generator=gen), "boxes": boxes,
            "ignore": [torch.tensor([False, False, True]), torch.tensor([False])],
            "keypoints": keypoints,
            "keypoints_valid": [torch.tensor([True, True, False]), torch.tensor([True])]}


def _trains(example: Example) -> tuple[torch.nn.Module, dict, int]:
    """One training step: (model, loss parts, positives); checks finiteness and gradients."""
    spec = DetectorSpec.from_dict(example.spec)
    recipe = recipe_from_dict(example.recipe)
    torch.manual_seed(0)
    model = build(spec).train()
    parts, num_pos = _step(model, _batch(spec), recipe, CPU, {})
    bad = [k for k, v in parts.items() if not torch.isfinite(v).all()]
    assert not bad, f"non-finite loss parts {bad}: {parts}"
    parts["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    return model, parts, num_pos


@pytest.mark.parametrize("table, key, i", _cases("STEMS", "BLOCKS", "NECKS", "HEADS"))
def test_entry_builds_trains_and_costs_exactly(table, key, i):
    example = EXAMPLES[table][key][i]
    model, _, _ = _trains(example)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *HW))
    maps = out.cls_logits + out.box_dists + (out.kps_offsets or [])
    assert maps and all(torch.isfinite(x).all() for x in maps)
    assert_cost_matches(model, HW)
    assert_cost_matches(model, (72, 40))  # odd, non-square maps down the pyramid


@pytest.mark.parametrize("table, key, i", _cases("ASSIGNERS", "LOSSES"))
def test_recipe_entry_trains_every_parameter(table, key, i):
    example = EXAMPLES[table][key][i]
    recipe = recipe_from_dict(example.recipe)
    assert (recipe.assigner.type if table == "ASSIGNERS" else recipe.loss.type) == key
    _, parts, num_pos = _trains(example)
    assert num_pos > 0  # the faces of _batch are matched, so the box terms train
    assert parts["total"] > 0


def test_neck_examples_cover_every_option_value():
    """The option sets above use every RF module of bfbox_fpn and every op of autofem; the
    valid names are read from the validation messages (the public face of the options)."""
    def valid(options: dict, neck: str, pattern: str) -> set[str]:
        bad = _detector(_basic((16, 24, 32, 32)), [3, 4, 5], {"type": neck, "options": options})
        with pytest.raises(UserError) as info:
            DetectorSpec.from_dict(bad)
        return set(re.search(pattern, str(info.value)).group(1).split(", "))

    rf = valid({"inputs": [1], "rf": ["nope"]}, "bfbox_fpn", r"is not one of (.*)$")
    used = {r for e in NECKS["bfbox_fpn"] for r in e.spec["neck"]["options"]["rf"]}
    assert used == rf and {True, False} == {e.spec["neck"]["options"]["weighted"]
                                            for e in NECKS["bfbox_fpn"]}
    cpm_ops = valid({"fpn": _fpn_ops(3), "cpm": [[[0, "nope"]]] * 3}, "autofem",
                    r"is not one of (.*)$")
    fpn_ops = valid({"fpn": [["nope", "sep3x3", None], *_fpn_ops(3)[1:]]}, "autofem",
                    r"is not one of (.*)$")
    opts = [e.spec["neck"]["options"] for e in NECKS["autofem"]]
    assert {op for o in opts for lv in o["fpn"] for op in lv if op} == fpn_ops
    assert {op for o in opts for cell in o["cpm"] for _, op in cell} == cpm_ops
    assert {o["repeats"] for o in opts} >= {1, 2} and any(not o["cpm"] for o in opts)
    fanet = [e.spec["neck"]["options"] for e in NECKS["fanet"]]
    assert {o["depth"] for o in fanet} == {1, 2, 3} and {o["context"] for o in fanet} == {True, False}


def test_a_cost_mismatch_names_the_component_and_the_difference(monkeypatch):
    """The shared check (tests/_cost_check.py) fails on a wrong cost function, readably."""
    spec = DetectorSpec.from_dict(_plain("fpn").spec)
    entry = catalog.NECKS["fpn"]

    def off_by_one(counter, *args):
        entry.cost(counter, *args)
        counter.p += 1

    monkeypatch.setitem(catalog.NECKS, "fpn", catalog.NeckEntry(entry.build, off_by_one))
    with pytest.raises(AssertionError, match=r"neck: params \d+ vs \d+ \(\+1\)"):
        assert_cost_matches(spec, HW)
    assert cost_diff(cost(spec, HW), measured_cost(build(spec), HW)) == [
        f"neck: params {cost(spec, HW).components['neck'].params} vs "
        f"{cost(spec, HW).components['neck'].params - 1} (+1)"]
