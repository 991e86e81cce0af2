"""The family seam (detectors/catalog.py): unknown names list the valid ones; the spec
extensions (1-6 stages, per-layer blocks, neck options) round-trip; trainer hooks and auxiliary
prediction sets behave as documented. That every entry builds, trains and costs exactly:
tests/test_catalog_entries.py."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from _cost_check import assert_cost_matches
from detectors import catalog
from detectors.assign import iou_assign
from detectors.checkpoint import load_checkpoint
from detectors.config import TrainConfig, recipe_from_dict
from detectors.cost import components_of
from detectors.errors import UserError
from detectors.model import build
from detectors.necks import FPN, NeckOutput, fpn_cost
from detectors.spec import DetectorSpec
from detectors.train import TrainHooks, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The ids of the published models before the seam existed (commit be6addf): adding fields to
# the spec must never change the canonical YAML of an existing spec.
PUBLISHED_IDS = {"0.5g": "94098209503e", "2.5g": "1599d531a048", "10g": "b7a36fa3dcab",
                 "34g": "b29f8191adca", "2.5g_bnkps": "7b2aea417dd6"}


def _spec(backbone: dict, levels=(2, 3), neck_type: str = "fpn", **neck) -> DetectorSpec:
    return DetectorSpec.from_dict({
        "name": "t", "backbone": backbone,
        "neck": {"type": neck_type, "channels": 16, "in_levels": list(levels), **neck},
        "head": {"channels": 16, "num_convs": 1, "norm": "gn", "gn_groups": 4},
        "anchors": {"strides": [2**lv for lv in levels],
                    "base_sizes": [4 * 2**lv for lv in levels]},
        "input_size": [64, 64]})


def _check_trains_and_costs(spec: DetectorSpec, hw=(48, 40)) -> None:
    """Build, forward, backward: finite outputs, every parameter gets a gradient, and the
    analytic cost equals the hook count per component."""
    torch.manual_seed(0)
    model = build(spec)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    loss = sum(x.float().square().mean() for x in out.cls_logits + out.box_dists)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert_cost_matches(model, hw)


@pytest.mark.parametrize("model", sorted(PUBLISHED_IDS))
def test_published_spec_ids_are_stable(repo_root, model):
    spec = DetectorSpec.from_yaml(repo_root / "experiments" / "models" / f"scrfd_{model}.yaml")
    assert spec.id == PUBLISHED_IDS[model]


# Every stem, block, neck, head, assigner and loss: tests/test_catalog_entries.py.


def test_six_stages_with_per_layer_blocks_round_trip_and_cost_exactly():
    # stride 4 ... 128 (C2..C7, as BFBox / ASFD / FANet); a stage mixing three block types
    stages = [{"block": ["basic", "bottleneck", "depthwise"], "depth": 3, "width": 16}] + [
        {"block": "basic", "depth": 1, "width": 16} for _ in range(5)]
    spec = _spec({"stem_width": 16, "stages": stages}, (2, 3, 4, 5, 6, 7))
    assert components_of(spec) == ("stem", "c2", "c3", "c4", "c5", "c6", "c7", "neck", "head")
    assert spec.backbone.stages[0].layer_blocks == ("basic", "bottleneck", "depthwise")
    assert spec.backbone.out_channels == (16,) * 6  # the last layer's expansion counts
    assert DetectorSpec.from_yaml(spec.to_yaml()) == spec
    assert "block: [basic, bottleneck, depthwise]" in spec.to_yaml()
    _check_trains_and_costs(spec, hw=(130, 129))  # odd sizes down to a 2x2 map at stride 128


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["backbone"]["stages"][0].update(block="nope"),
     "stage 1 block 'nope' is not one of basic, bottleneck, depthwise"),
    (lambda d: d["backbone"]["stages"][0].update(block=["basic", "nope"], depth=2),
     "stage 1 block[1] 'nope' is not one of"),
    (lambda d: d["backbone"]["stages"][0].update(block=["basic"], depth=2),
     "stage 1 lists 1 blocks but has depth 2"),
    (lambda d: d["backbone"].update(stem="nope"), "backbone stem 'nope' is not one of deep, mobilenet"),
    (lambda d: d["neck"].update(type="nope"), "neck type 'nope' is not one of pafpn, fpn"),
    (lambda d: d["head"].update(type="nope"), "head type 'nope' is not one of scrfd"),
    (lambda d: d["neck"].update(options={"x": 1}), "neck type 'fpn' takes no options"),
    (lambda d: d["backbone"].update(stages=[]), "backbone needs 1 to 6 stages, got 0"),
    (lambda d: d["neck"].update(in_levels=[2, 3, 4]), "reach beyond the backbone's levels [2, 3]"),
])
def test_unknown_names_and_bad_structure_name_the_valid_choices(edit, message):
    spec = _spec({"stem_width": 16, "stages": [{"block": "basic", "depth": 1, "width": 16}] * 2})
    data = json.loads(json.dumps(spec.to_dict()))
    edit(data)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DetectorSpec.from_dict(data)


@pytest.mark.parametrize("section, key, message", [
    ("assigner", "type", "assigner type 'nope' is not one of atss, iou"),
    ("loss", "type", "loss type 'nope' is not one of scrfd"),
])
def test_unknown_recipe_entries_name_the_valid_choices(section, key, message):
    with pytest.raises(UserError, match=message):
        recipe_from_dict({section: {key: "nope"}})


@dataclass(frozen=True)
class _Options:
    """A neck's own settings: nested lists in YAML become nested tuples."""

    merges: tuple[tuple[int, ...], ...]
    gain: float = 1.0

    def __post_init__(self) -> None:
        if any(not m for m in self.merges):
            raise UserError("every merge needs at least one input")


def test_neck_options_parse_validate_and_round_trip(monkeypatch):
    entry = catalog.NeckEntry(lambda spec, cins: FPN(cins, spec.channels), fpn_cost, _Options)
    monkeypatch.setitem(catalog.NECKS, "with_options", entry)
    backbone = {"stem_width": 16, "stages": [{"block": "basic", "depth": 1, "width": 16}] * 2}
    spec = _spec(backbone, neck_type="with_options", options={"merges": [[0, 1], [1]], "gain": 2})
    assert spec.neck.options == _Options(((0, 1), (1,)), 2.0)
    assert DetectorSpec.from_yaml(spec.to_yaml()) == spec
    with pytest.raises(UserError, match=r"neck.options.*every merge needs at least one input"):
        _spec(backbone, neck_type="with_options", options={"merges": [[]]})
    with pytest.raises(UserError, match=r"unknown key 'neck.options.bogus'"):
        _spec(backbone, neck_type="with_options", options={"merges": [[0]], "bogus": 1})
    with pytest.raises(UserError, match=r"needs options \(_Options\)"):
        _spec(backbone, neck_type="with_options")


def test_iou_assigner_hand_built():
    # anchors 0..3; face A overlaps anchor 0 with IoU 0.5 and anchor 1 with IoU 1/3 (< 0.35);
    # face B (tiny) overlaps nothing by 0.35 but takes its best anchor 2; anchor 3 sees an
    # ignore region with IoU 1.
    anchors = [torch.tensor([[0., 0, 10, 10], [5, 0, 15, 10]]),
               torch.tensor([[40., 40, 60, 60], [100, 100, 110, 110]])]
    faces = torch.tensor([[0., 0, 10, 5], [48, 48, 52, 52], [100, 100, 110, 110]])
    ignore = torch.tensor([False, False, True])
    # IoU(A, anchor 0) = 50 / 100; IoU(A, anchor 1) = 25 / 125 = 0.2
    a = iou_assign(anchors, [faces], [ignore], pos_iou=0.35)
    assert a.matched.tolist() == [[0, -1, 1, 2]]
    assert a.positive.tolist() == [[True, False, True, False]]
    assert a.ignored.tolist() == [[False, False, False, True]]
    b = iou_assign(anchors, [faces], [ignore], pos_iou=0.6)  # anchor 0 is still A's best
    assert b.matched.tolist() == [[0, -1, 1, 2]]
    empty = iou_assign(anchors, [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.bool)])
    assert empty.matched.tolist() == [[-1] * 4] and not empty.positive.any()


TINY = {"name": "tiny", "backbone": {"stem_width": 16, "stages": [
    {"block": "basic", "depth": 1, "width": w} for w in (16, 32, 48, 64)]},
    "neck": {"type": "pafpn", "channels": 16}, "head": {"channels": 16, "num_convs": 1, "gn_groups": 8}}
RECIPE = dict(train_size=96, batch_size=2, workers=0, seed=5,
              schedule={"unit": "iterations", "total": 4, "milestones": [3], "warmup_iters": 1})


class _CountingHooks(TrainHooks):
    """Draws from its own generator each step and perturbs nothing: its state must survive a
    resume exactly, and its metric must land in metrics.jsonl."""

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(11)
        self.calls: list[tuple[str, int]] = []

    def before_step(self, iteration, model):
        self.calls.append(("before", iteration))

    def after_step(self, iteration, loop):
        self.calls.append(("after", iteration))
        return {"draw": float(torch.rand((), generator=self.gen))}

    def identity(self):
        return {"kind": "counting"}

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])


def test_hooks_run_around_every_step_and_resume_exactly(widerface_mini, tmp_path):
    config = TrainConfig(DetectorSpec.from_dict(TINY), recipe_from_dict(RECIPE))
    whole = _CountingHooks()
    train(config, widerface_mini, tmp_path / "a", progress=False, num_threads=1, hooks=whole)
    assert whole.calls == [(k, i) for i in range(4) for k in ("before", "after")]
    train(config, widerface_mini, tmp_path / "b", progress=False, num_threads=1,
          hooks=_CountingHooks(), max_iterations=2)
    resumed = _CountingHooks()
    train(config, widerface_mini, tmp_path / "b", progress=False, num_threads=1, resume=True,
          hooks=resumed)
    assert resumed.calls == [(k, i) for i in (2, 3) for k in ("before", "after")]
    read = lambda run: [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert [m["draw"] for m in read("a")] == [m["draw"] for m in read("b")]
    assert [m["total"] for m in read("a")] == [m["total"] for m in read("b")]

    class _Other(_CountingHooks):
        def identity(self):
            return {"kind": "other"}

    with pytest.raises(UserError, match="another supernet or search setting"):
        train(config, widerface_mini, tmp_path / "b", progress=False, resume=True, hooks=_Other())
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["hooks_identity"] == {"kind": "counting"}


class _AuxHooks(TrainHooks):
    """The model's neck also returns its own maps as one auxiliary set (NeckOutput)."""

    def build_model(self, config):
        model = build(config.spec)
        plain = model.neck.forward
        model.neck.forward = lambda feats: NeckOutput(plain(feats), aux=[plain(feats)])
        return model


def test_auxiliary_prediction_sets_add_weighted_losses(widerface_mini, tmp_path):
    # An aux set identical to the main one: total = (1 + aux_weight) x the main loss.
    recipe = {**RECIPE, "loss": {"aux_weight": 0.25}, "schedule": {**RECIPE["schedule"], "total": 1, "milestones": [1]}}
    config = TrainConfig(DetectorSpec.from_dict(TINY), recipe_from_dict(recipe))
    train(config, widerface_mini, tmp_path / "aux", progress=False, num_threads=1, hooks=_AuxHooks())
    m = json.loads((tmp_path / "aux" / "metrics.jsonl").read_text().splitlines()[0])
    main = m["cls"] + m["box"] + m["kps"]
    assert m["aux0_total"] == pytest.approx(main, rel=1e-5)
    assert m["total"] == pytest.approx(1.25 * main, rel=1e-5)
    model = _AuxHooks().build_model(config).eval()
    assert model(torch.zeros(1, 3, 64, 64)).aux == []  # inference computes no aux sets


def test_model_training_loss_replaces_detection_loss(widerface_mini, tmp_path):
    class _OwnObjective(TrainHooks):
        def build_model(self, config):
            model = build(config.spec)
            model.training_loss = lambda images, batch, recipe: (
                {"total": model.backbone(images)[-1].float().square().mean()}, 0)
            return model

    config = TrainConfig(DetectorSpec.from_dict(TINY), recipe_from_dict(RECIPE))
    train(config, widerface_mini, tmp_path / "own", progress=False, num_threads=1,
          hooks=_OwnObjective())
    lines = [json.loads(l) for l in (tmp_path / "own" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and set(lines[0]) >= {"total", "lr"} and "cls" not in lines[0]
