"""Supernet training step vs the same path trained standalone (issue goal: <= 1.3x).

    python benchmarks/bfbox_supernet_step.py [--budget quick] [--paths 4] [--steps 6] [--threads 1]

For `--paths` uniformly drawn paths of the budget's frame, times `--steps` SGD steps of the
one trainer's iteration (forward, the recipe's IoU assignment and loss, backward, SGD) on the
same real batches, once through the supernet with SPOSHooks setting the path, once on the
path's standalone `build(spec)`. Prints per path the median step times and their ratio, and
the median ratio (interleaved runs, first step of each dropped as warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _loop(model, recipe, hooks=None):
    import torch

    from detectors.device import select_device, training_mode
    from detectors.train import TrainHooks, _Loop, _optimiser

    mode = training_mode(select_device("cpu"), fp32=False)
    model = model.to(memory_format=torch.channels_last) if mode.channels_last else model
    model.train()
    hooks = hooks or TrainHooks()
    opt, sched = _optimiser(hooks.parameters(model), recipe, (10**9,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return _Loop(model, recipe, mode, opt, sched, scaler, hooks)


def _fixed_path_hooks():
    from nas.strategies.spos import SPOSHooks

    class FixedPath(SPOSHooks):
        """SPOSHooks that always sets one path (the timing compares the same path)."""

        def __init__(self, space, path):
            super().__init__(space, 0)
            self.path = path

        def before_step(self, iteration, model):
            self.last_path = model.path = self.path

    return FixedPath


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="quick")
    p.add_argument("--gflops", type=float, default=2.5)
    p.add_argument("--paths", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    import torch

    from detectors.batches import SeededBatches
    from detectors.config import recipe_from_dict
    from detectors.data.synthetic import default_root
    from detectors.model import build
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces import bfbox as bs
    from nas.strategies.spos import path_of_iteration
    from search_spaces.bfbox.supernet import build_supernet

    _FixedPath = _fixed_path_hooks()
    torch.set_num_threads(a.threads)
    config = resolve_config(SearchOptions(space="bfbox", gflops=a.gflops, budget=a.budget))
    space, recipe = bs.space_of(config), recipe_from_dict(config["recipe"])
    data = Path(default_root(**config["synthetic"]))
    batches = SeededBatches(data, recipe)
    stream = batches.iterate(0)
    batch_list = [next(stream) for _ in range(a.steps)]
    batches.close()
    ratios = []
    for i in range(a.paths):
        path = path_of_iteration(space, 123, i)
        hooks = _FixedPath(space, path)
        sup = _loop(build_supernet(space), recipe, hooks)
        alone = _loop(build(space.template(path)), recipe)
        times = {"supernet": [], "standalone": []}
        for k, batch in enumerate(batch_list):
            for name, loop in (("supernet", sup), ("standalone", alone)):
                t0 = time.perf_counter()
                loop.iteration(batch, k)
                if k:
                    times[name].append(time.perf_counter() - t0)
        s, t = statistics.median(times["supernet"]), statistics.median(times["standalone"])
        ratios.append(s / t)
        g = float(space.vga_gflops(space.encode(path))[0])
        print(f"path {i} ({g:.2f} GF): supernet {s * 1000:.0f} ms, standalone {t * 1000:.0f} ms, "
              f"ratio {s / t:.2f}", flush=True)
    print(f"median ratio supernet / standalone step: {statistics.median(ratios):.2f} "
          f"({a.paths} paths, {a.steps - 1} timed steps each, {a.threads} thread(s), "
          f"train size {recipe.train_size}, batch {recipe.batch_size})")


if __name__ == "__main__":
    main()
