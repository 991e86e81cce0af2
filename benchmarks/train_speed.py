"""Training speed: images/s of full training steps (forward, ATSS, losses, backward, SGD).

    python benchmarks/train_speed.py [--config experiments/scrfd_2.5g.yaml] [--sizes 320 640]
        [--batch 4] [--iters 5] [--warmup 2] [--threads N] [--all-modes]

For each input size, times `--iters` steps after `--warmup` untimed ones on a fixed synthetic
batch (random images, 6 random faces per image; no data loading, so the model step alone is
measured, with the photometric distortion and normalisation the step does on its device when
the checkout has detectors/data/device_transforms.py: run it with PYTHONPATH at an older
checkout for the before figure) in fp32 NCHW and in the mode the trainer picks for this device
(detectors.device.training_mode); prints the median images/s of each and the ratio.
`--all-modes` also times channels_last fp32 and channels_last + bf16 autocast on CPU, whatever
the trainer would pick.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _images(n: int, size: int, gen: torch.Generator) -> dict:
    """What the loader hands the trainer: uint8 images and each one's photometric numbers
    (applied and normalised in the step, on its device) where the checkout has
    detectors.data.device_transforms; normalised float32 images before it."""
    try:
        import numpy as np

        from detectors.data.device_transforms import device_images  # noqa: F401
        from detectors.data.transforms import PhotoMetricDistortion
    except ImportError:
        return {"image": torch.randn((n, 3, size, size), generator=gen)}
    rng = np.random.default_rng(0)
    params = torch.from_numpy(np.stack([PhotoMetricDistortion().draw(rng) for _ in range(n)]))
    return {"image": torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8),
            "photometric": params}


def _batch(n: int, size: int, gen: torch.Generator) -> dict:
    """n random images (_images) with 6 random square-ish faces each (8..size/3 px)."""
    boxes = []
    for _ in range(n):
        wh = 8 + torch.rand((6, 1), generator=gen) * (size / 3 - 8)
        xy = torch.rand((6, 2), generator=gen) * (size - wh)
        boxes.append(torch.cat([xy, xy + wh.expand(-1, 2)], 1))
    return {**_images(n, size, gen), "boxes": boxes,
            "ignore": [torch.zeros(6, dtype=torch.bool)] * n,
            "keypoints": [torch.zeros((6, 5, 2))] * n, "keypoints_valid": [torch.zeros(6, dtype=torch.bool)] * n}


def _loop(config, mode):
    from detectors.model import build
    from detectors.train import _Loop, _optimiser

    torch.manual_seed(0)
    model = build(config.spec).to(mode.device)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = _optimiser(model.parameters(), config.recipe, ())
    scaler = torch.amp.GradScaler(mode.device.type, enabled=mode.grad_scaler)
    return _Loop(model, config.recipe, mode, opt, sched, scaler)


def time_modes(config, modes: dict, size: int, batch_size: int, iters: int, warmup: int) -> dict[str, float]:
    """Median images/s of training steps per mode. Modes take turns step by step, so a change
    of machine load during the run hits all of them alike."""
    loops = {name: _loop(config, mode) for name, mode in modes.items()}
    batch = _batch(batch_size, size, torch.Generator().manual_seed(0))
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(warmup + iters):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop.iteration(batch)
            if loop.mode.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                rates[name].append(batch_size / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    from detectors.config import load_config
    from detectors.device import TrainingMode, select_device, set_threads, training_mode

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "scrfd_2.5g.yaml"))
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--all-modes", action="store_true")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    config = load_config(args.config)
    device = select_device()
    modes = {"fp32 NCHW": training_mode(device, fp32=True)}
    chosen = training_mode(device)
    if chosen != modes["fp32 NCHW"]:
        modes["trainer's mode"] = chosen
    if args.all_modes and device.type == "cpu":
        for name, mode in (("fp32 channels_last", TrainingMode(device, True, None, False)),
                           ("bf16 channels_last", TrainingMode(device, True, torch.bfloat16, False))):
            if mode != chosen:
                modes[name] = mode
    print(f"{config.spec.name}: batch {args.batch}, {threads} threads; trainer's mode here: "
          f"{chosen.describe()}")
    for size in args.sizes:
        rates = time_modes(config, modes, size, args.batch, args.iters, args.warmup)
        base = rates["fp32 NCHW"]
        cells = "  ".join(f"{name} {r:6.2f} img/s ({r / base:.2f}x)" for name, r in rates.items())
        print(f"{size:4d} px  {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
