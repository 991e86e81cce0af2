"""Host synchronisations of a training step, counted on the CPU (issue 23, item 5).

torch.cuda.set_sync_debug_mode needs a GPU, so a TorchDispatchMode watches every aten call of
the step instead: `aten._local_scalar_dense` is every device -> host scalar read (item,
float, int, bool of a tensor), and nonzero / boolean-mask indexing are the ops whose output
shape depends on the data (on CUDA each waits for the device). Tensor.tolist, which reads a
whole tensor without dispatching, is counted by patching it.
"""

from __future__ import annotations

import collections
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_distributed import _config  # noqa: E402  (the tiny spec and recipe)

DATA_DEPENDENT = ("aten.nonzero", "aten.masked_select")
BOOL_INDEXED = ("aten.index.", "aten.index_put", "aten._index_put")


class SyncCounter(TorchDispatchMode):
    """Counts host reads and data-dependent shapes by (kind, our file:line)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter = collections.Counter()
        self.shapes: collections.Counter = collections.Counter()

    @staticmethod
    def _site() -> str:
        ours = [f for f in traceback.extract_stack()
                if "/detectors/" in f.filename or "/nas/" in f.filename or "/search_spaces/" in f.filename]
        return f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith("aten._local_scalar_dense") or name.startswith("aten.item"):
            self.reads[self._site()] += 1
        elif name.startswith(DATA_DEPENDENT) or (name.startswith(BOOL_INDEXED) and any(
                torch.is_tensor(i) and i.dtype == torch.bool
                for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))):
            self.shapes[self._site()] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("sync") / "root", num_train=16, num_val=1,
                    image_size=128, progress=False)


def _loop(batch_size: int):
    from detectors.device import training_mode
    from detectors.model import build
    from detectors.train import _Loop, _optimiser

    recipe = _config(batch_size=batch_size, sync_bn=False).recipe
    torch.manual_seed(0)
    model = build(_config().spec)
    opt, sched = _optimiser(model.parameters(), recipe, ())
    return _Loop(model, recipe, training_mode(torch.device("cpu"), fp32=True), opt, sched,
                 torch.amp.GradScaler("cpu", enabled=False)), recipe


def _count_step(data: Path, batch_size: int) -> SyncCounter:
    from detectors.batches import SeededBatches

    loop, recipe = _loop(batch_size)
    batch = next(SeededBatches(data, recipe).iterate(0))
    loop.iteration(batch, 0)  # first step: lazily built caches
    with SyncCounter() as counter:
        loop.iteration(batch, 1)
    return counter


def test_training_step_reads_nothing_back_to_the_host(data):
    """No scalar read in a step (loss values, positives, the non-finite flag stay on the
    device); the data-dependent shapes left are the gather of the positives (_targets and the
    SCRFD loss's boolean masks, and their backward), a fixed number per prediction set: the
    same for 4 and 8 images (no per-image loop, e.g. the assigner's)."""
    four, eight = _count_step(data, 4), _count_step(data, 8)
    assert sum(four.reads.values()) == 0 and sum(eight.reads.values()) == 0, (four.reads, eight.reads)
    assert four.shapes == eight.shapes
    assert {site.split(":")[0] for site in eight.shapes} <= {"losses.py", "train.py"}
    # a negative control: the counter does see a read in our code
    with SyncCounter() as control:
        from detectors.losses import quality_focal_loss

        float(quality_focal_loss(torch.zeros(3), torch.ones(3)).sum())
    assert sum(control.reads.values()) == 1


def test_losses_are_read_once_per_logging_interval(data, tmp_path, monkeypatch):
    """train() over 7 iterations, log_every 3: the loss values reach the host at iterations 3,
    6 and 7 only, each time in one Tensor.tolist; every iteration has its metrics line."""
    import json

    from detectors.train import _Loop, train

    reads: list[int] = []
    steps: list[int] = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (reads.append(len(steps)), tolist(self))[1])
    step = _Loop.iteration

    def counted(self, batch, it=0):
        with SyncCounter() as counter:
            out = step(self, batch, it)
        steps.append(sum(counter.reads.values()))
        return out

    monkeypatch.setattr(_Loop, "iteration", counted)
    config = _config(batch_size=4, sync_bn=False,
                     schedule={"lr": 0.02, "unit": "iterations", "total": 7, "milestones": [], "warmup_iters": 0})
    train(config, data, tmp_path / "run", fp32=True, progress=False, num_threads=1, checkpoint_every=100,
          log_every=3)
    assert steps == [0] * 7
    assert reads == [3, 6, 7]  # after how many steps each read happened
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == list(range(1, 8))
