"""Images/s per loader worker, old data path against new, in one run (docs/data.md).

    .venv/bin/python benchmarks/data_speed.py [--root DIR] [--size 640] [--batch-size 8]
        [--batches 6] [--repeats 3] [--loader] [--decoders]

OLD: the worker decodes, crops (the recipe's sample-redistribution crops 0.3-2.0), resizes
(PIL), applies the photometric distortion and flip, normalises to float32 and collates
(SeededBatches(device_side=False), the path before the uint8 hand-over). NEW: the same draws,
the crop resampled by torch's uint8 antialiased kernel, and the worker stops at uint8 with the
photometric numbers; the trainer's device applies them and normalises
(detectors.data.device_transforms), timed here on the CPU too and reported apart, and with
the worker's time (what a CPU-only trainer pays in all). Both share the mean fill and mean
colour helpers (sped up with the torch crop-resize), so OLD is a little faster than the code
before that change; run this file from an older checkout for those figures.

What one worker does is timed in this process (a 0-worker loader: dataset items + collate,
one torch thread), old and new alternating batch by batch over the same (seed, iteration)
batches, so load changes on a busy machine hit both alike; medians of `--repeats` runs of
`--batches` batches; times are CPU seconds of this process (process_time), so the figures
hold on a machine busy with other work. `--loader` adds the CPU time of a real one-worker
DataLoader's worker process per path (start-up excluded), which also pays the batch's copy
into shared memory. Root: ../shared/data/widerface-mini
when present, else the embedded synthetic default. --decoders times JPEG decoding alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from detectors.batches import SeededBatches
from detectors.config import recipe_from_dict
from detectors.data import synthetic
from detectors.data.device_transforms import device_images
from detectors.data.loader import decode_image
from detectors.data.widerface import load_split

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "widerface-mini"


def _recipe(size: int, batch: int, workers: int, seed: int):
    # the paper's augmentation: the recipe's defaults (SR crops 0.3-2.0, photometric, flip)
    return recipe_from_dict({"batch_size": batch, "train_size": size, "workers": workers, "seed": seed})


def _in_process(root: Path, size: int, batch: int, batches: int, seed: int) -> dict[str, float]:
    """Seconds per image: old worker, new worker, new device step on the CPU."""
    recipe = _recipe(size, batch, 0, seed)
    old = SeededBatches(root, recipe, device_side=False).iterate(0)
    new = SeededBatches(root, recipe).iterate(0)
    spent = {"old": 0.0, "new": 0.0, "device": 0.0}
    for _ in range(batches):
        t0 = time.process_time()
        next(old)
        t1 = time.process_time()
        b = next(new)
        t2 = time.process_time()
        device_images(b, "cpu")
        t3 = time.process_time()
        spent["old"] += t1 - t0
        spent["new"] += t2 - t1
        spent["device"] += t3 - t2
    return {k: v / (batches * batch) for k, v in spent.items()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu(pid: int) -> float:
    """The worker's CPU seconds once it has stopped (its prefetch queue is full)."""
    last = _cpu_seconds(pid)
    while True:
        time.sleep(0.5)
        now = _cpu_seconds(pid)
        if now == last:
            return now
        last = now


def _worker_cpu(root: Path, size: int, batch: int, batches: int, seed: int, device_side: bool) -> float:
    """CPU seconds per image of a real one-worker DataLoader's worker process: decode,
    augment, collate and the hand-over through shared memory. Measured between two moments
    at which the worker sits idle with its two prefetched batches ready, so exactly
    `batches` batches were made in between (start-up excluded)."""
    loader = SeededBatches(root, _recipe(size, batch, 1, seed), device_side=device_side)
    it = loader.iterate(0)
    next(it)
    pid = it._workers[0].pid
    start = _idle_cpu(pid)
    for _ in range(batches):
        next(it)
    spent = _idle_cpu(pid) - start
    loader.close()
    return spent / (batches * batch)


def _decoders(root: Path, n: int) -> None:
    records = load_split(root, "train").records[:n]
    for name in ("pil", "torchvision"):
        times = []
        for r in records:
            t = time.process_time()
            decode_image(r.path, name)
            times.append(time.process_time() - t)
        print(f"decode {name:12s} median {1000 * statistics.median(times):6.1f} ms/image ({len(records)} images)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loader", action="store_true", help="also time a real one-worker DataLoader's worker per path")
    p.add_argument("--decoders", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a loader worker runs one torch thread
    root = args.root or (MINI if MINI.is_dir() else synthetic.default_root())
    print(f"root {root}; {args.size} px, batch {args.batch_size}; {args.batches} batches x "
          f"{args.repeats} repeats (seeds 0..{args.repeats - 1}); torch threads 1", flush=True)
    if args.decoders:
        _decoders(root, 40)
    runs = [_in_process(root, args.size, args.batch_size, args.batches, seed) for seed in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    old, new, dev = 1 / med["old"], 1 / med["new"], med["device"]
    print(f"per worker  OLD (float32 in worker)      {old:7.1f} images/s  ({1000 * med['old']:.1f} ms/image)")
    print(f"per worker  NEW (uint8 + photometric numbers) {new:7.1f} images/s  ({1000 * med['new']:.1f} ms/image)"
          f"  ratio NEW/OLD {new / old:.2f}x")
    print(f"device step on the CPU (photometric + normalise): {1000 * dev:.2f} ms/image; "
          f"NEW worker + CPU device step {1 / (med['new'] + dev):.1f} images/s ({(1 / (med['new'] + dev)) / old:.2f}x OLD)")
    s = args.size
    print(f"batch through shared memory at batch 32: float32 {32 * 3 * s * s * 4 / 1e6:.0f} MB, "
          f"uint8 {32 * 3 * s * s / 1e6:.0f} MB")
    if args.loader:
        lo, ln = [], []
        for seed in range(args.repeats):  # old and new take turns
            lo.append(_worker_cpu(root, args.size, args.batch_size, args.batches, seed, False))
            ln.append(_worker_cpu(root, args.size, args.batch_size, args.batches, seed, True))
        o, n = 1 / statistics.median(lo), 1 / statistics.median(ln)
        print(f"one DataLoader worker process (CPU time, incl. shared memory)  OLD {o:7.1f}  NEW {n:7.1f} "
              f"images/s  ratio NEW/OLD {n / o:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
