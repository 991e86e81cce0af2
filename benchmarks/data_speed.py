"""Training images/s of the data pipeline alone (decode, SR crop, resize, photometric, flip,
normalise, collate), at 640 and 320, with 0 and 2 loader workers; medians over repeats.

    .venv/bin/python benchmarks/data_speed.py [--root DIR] [--batches 8] [--repeats 3] [--decoders]

Root: ../shared/data/widerface-mini when present, else the embedded synthetic default.
--decoders also times JPEG decoding alone with PIL and torchvision.io.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from detectors.data import synthetic
from detectors.batches import SeededBatches
from detectors.config import recipe_from_dict
from detectors.data.loader import decode_image
from detectors.data.widerface import load_split

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "widerface-mini"


def _images_per_s(root: Path, size: int, workers: int, batch: int, batches: int, seed: int) -> float:
    # The trainer's own pipeline (SCRFD sample-redistribution crops, photometric, flip).
    recipe = recipe_from_dict({"batch_size": batch, "train_size": size, "workers": workers, "seed": seed})
    loader = SeededBatches(root, recipe)
    it = loader.iterate(0)
    next(it)  # worker start-up and first decode are not steady-state throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    loader.close()
    return batches * batch / elapsed


def _decoders(root: Path, n: int) -> None:
    records = load_split(root, "train").records[:n]
    for name in ("pil", "torchvision"):
        times = []
        for r in records:
            t = time.perf_counter()
            decode_image(r.path, name)
            times.append(time.perf_counter() - t)
        print(f"decode {name:12s} median {1000 * statistics.median(times):6.1f} ms/image ({len(records)} images)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decoders", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = args.root or (MINI if MINI.is_dir() else synthetic.default_root())
    print(f"root {root}; batch {args.batch_size}; {args.batches} batches x {args.repeats} repeats; "
          f"torch threads 1", file=sys.stderr)
    if args.decoders:
        _decoders(root, 40)
    for size in (640, 320):
        for workers in (0, 2):
            runs = [_images_per_s(root, size, workers, args.batch_size, args.batches, seed)
                    for seed in range(args.repeats)]
            print(f"train_size {size} workers {workers}: median {statistics.median(runs):6.1f} images/s "
                  f"(runs {', '.join(f'{r:.1f}' for r in runs)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
