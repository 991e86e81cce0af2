"""Everything a model, loss, assigner or sampler creates goes on the device of its input
(issue 23, item 1), checked on a CPU-only machine.

How: a CPU machine has no second real device to put inputs on. The meta device is no stand-in
here: assigners and losses index with boolean masks and read values (.item(), int()), which
meta tensors cannot do, so a meta run stops at the first such op, not at a misplaced tensor.
So the check is on the calls instead: `FactoryRecorder`, a TorchFunctionMode, sees every tensor
factory (torch.zeros, tensor, arange, rand, ... : torch's own list of device constructors)
called while a training step runs (forward, assigner, loss, backward). One called *from our
code* (a frame in detectors/, search_spaces/ or nas/) without a `device` makes a CPU tensor
whatever the input's device, which on CUDA is a device-mismatch error or a silent host copy;
one given a `generator` must draw on the generator's device (CUDA refuses a CPU generator
for a CUDA tensor). *_like / new_* factories follow their input and are fine. The first test
shows the recorder catches both faults, so an empty record means something.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from test_catalog_entries import EXAMPLES, _batch, _cases
from detectors.config import recipe_from_dict
from detectors.device import TrainingMode
from detectors.model import build
from detectors.spec import DetectorSpec
from detectors.train import _step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
OURS = tuple(str(REPO / p) + "/" for p in ("detectors", "search_spaces", "nas"))
FACTORIES = frozenset(_device_constructors())
CPU = TrainingMode(torch.device("cpu"), False, None, False)


class FactoryRecorder(TorchFunctionMode):
    """Records 'file:line func(...)' for each misplaced factory call from our packages."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            caller = sys._getframe(1)  # the Python frame that called the factory
            if caller.f_code.co_filename.startswith(OURS):
                where = f"{Path(caller.f_code.co_filename).relative_to(REPO)}:{caller.f_lineno}"
                generator = kwargs.get("generator")
                device = kwargs.get("device")
                if device is None:
                    self.faults.append(f"{where} torch.{func.__name__} without device=")
                elif generator is not None and torch.device(device) != generator.device:
                    self.faults.append(f"{where} torch.{func.__name__} draws from a {generator.device} "
                                       f"generator into {device}")
        return func(*args, **kwargs)


def _compiled_in_detectors(source: str) -> dict:
    """Run `source` as if it were a module of detectors/ (so the recorder counts it as ours)."""
    scope: dict = {"torch": torch}
    exec(compile(source, str(REPO / "detectors" / "_placement_probe.py"), "exec"), scope)
    return scope


def test_recorder_catches_a_factory_without_device_and_a_foreign_generator():
    probe = _compiled_in_detectors(
        "def bad(x):\n    return x + torch.zeros(3)\n"
        "def good(x):\n    return x + torch.zeros(3, device=x.device) + x.new_ones(3) + torch.ones_like(x)\n"
        "def draw(x, g):\n    return torch.rand(3, generator=g, device=x.device)\n")
    x, g = torch.ones(3), torch.Generator().manual_seed(0)
    with FactoryRecorder() as rec:
        probe["good"](x)
        probe["draw"](x, g)
    assert rec.faults == []
    with FactoryRecorder() as rec:
        probe["bad"](x)
        probe["draw"](torch.ones(3, device="meta"), g)  # a CPU generator into another device
    assert len(rec.faults) == 2
    assert "_placement_probe.py:2 torch.zeros without device=" in rec.faults[0]
    assert "draws from a cpu generator into meta" in rec.faults[1]
    with FactoryRecorder() as rec:  # calls from outside our packages (tests, torch) don't count
        torch.zeros(3)
    assert rec.faults == []


@pytest.mark.parametrize("table, key, i", _cases(*sorted(EXAMPLES)))
def test_training_step_creates_nothing_off_the_input_device(table, key, i):
    """Every catalogue entry's example (tests/test_catalog_entries.py): stems, blocks, necks,
    heads, and the recipes' assigners and losses, through the trainer's step and backward, then
    inference with decoding and NMS."""
    example = EXAMPLES[table][key][i]
    spec = DetectorSpec.from_dict(example.spec)
    recipe = recipe_from_dict(example.recipe)
    torch.manual_seed(0)
    model = build(spec).train()  # building may make CPU tensors: model.to(device) moves them
    batch = _batch(spec)
    with FactoryRecorder() as rec:
        parts, _ = _step(model, batch, recipe, CPU, {})
        parts["total"].backward()
        model.eval()
        with torch.no_grad():
            model.predict(batch["image"][:1], score_thresh=0.0)  # decode + NMS too
    assert rec.faults == [], "\n".join(rec.faults)


# ---- the search spaces' samplers: supernets with sampled paths and Gumbel draws ---------------
def _records(model: torch.nn.Module, spec: DetectorSpec, recipe) -> list[str]:
    batch = _batch(spec)
    with FactoryRecorder() as rec:
        parts, _ = _step(model, batch, recipe, CPU, {})
        parts["total"].backward()
    return rec.faults


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfbox_supernet_paths_create_nothing_off_the_input_device(seed):
    import numpy as np

    from search_spaces.bfbox.space import BFBoxSpace
    from search_spaces.bfbox.supernet import build_supernet

    space = BFBoxSpace(widths=(16, 16, 32, 32, 32, 16), stem_width=16, neck_channels=16,
                       head_channels=16, depths=(1, 1, 1, 1, 1, 1))
    torch.manual_seed(seed)
    model = build_supernet(space).train()
    model.path = space.sample_uniform(np.random.default_rng(seed))
    recipe = recipe_from_dict({"assigner": {"type": "iou", "pos_iou": 0.35}})
    assert _records(model, model.spec, recipe) == []


@pytest.mark.parametrize("mode", ["hard", "pcdarts", "darts"])
def test_asfd_supernet_creates_nothing_off_the_input_device(mode):
    """The DARTS search's supernet as nas/strategies/darts.py sets it up (a CPU generator)."""
    from detectors.asfd.autofem import AutoFEMOptions
    from search_spaces.asfd.supernet import SupernetConfig, build_supernet
    from test_asfd_ops import autofem_spec

    base = autofem_spec(AutoFEMOptions(((("conv1x1", "conv1x1", None)), ("conv1x1", None, "conv1x1"))),
                        levels=(4, 5), channels=16)
    torch.manual_seed(0)
    model = build_supernet(base, SupernetConfig(nodes=3, partial=4, mode=mode)).train()
    model.neck.set_generator(torch.Generator().manual_seed(1))
    model.neck.set_temperature(2.0)
    recipe = recipe_from_dict({"loss": {"type": "drmc", "margin": 0.2}, "assigner": {"type": "iou"}})
    assert _records(model, base, recipe) == []


def test_gumbel_draws_on_the_generators_device_then_moves_to_the_logits():
    """Logits on another device (meta: the only one a CPU machine has) with the search's CPU
    generator: the draw must come from the generator's device (CUDA refuses otherwise). The
    sample's index read (.item) cannot run on meta, so the call ends there, past the draw."""
    from search_spaces.asfd.cells import gumbel_hard

    with FactoryRecorder() as rec:
        with pytest.raises(RuntimeError, match="meta"):
            gumbel_hard(torch.zeros(3, device="meta"), 0.7, 1.0, generator=torch.Generator().manual_seed(3))
    assert rec.faults == []
    # on one device the draw is the CPU stream it always was (exact resume of old checkpoints)
    w, i = gumbel_hard(torch.zeros(3), 0.7, 1.0, generator=torch.Generator().manual_seed(3))
    u = torch.rand(3, generator=torch.Generator().manual_seed(3)).clamp_(1e-10, 1.0)
    assert i == int(torch.argmax(-torch.log(-torch.log(u))))
