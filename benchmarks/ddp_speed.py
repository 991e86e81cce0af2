"""Distributed training speed on this machine: images/s of `train()` with 1 process and
with N processes (detectors.distributed.launch, gloo on CPU / nccl on CUDA), in one run.

    python benchmarks/ddp_speed.py [--config experiments/scrfd_0.5g.yaml] [--size 160]
        [--batch 8] [--iters 12] [--warmup 3] [--nproc 2] [--device cpu]

Same config, data (embedded synthetic, 40 images generated once into a temporary folder),
global batch and seed for both; each run's images/s is the median over its iterations after
`--warmup` (metrics.jsonl, global images per iteration over the host-side step time, data
loading included, workers 0). On CPU the processes share the cores (threads = CPUs / N), so
expect little gain: the point of N processes is N GPUs. Rows: 1 process with all CPUs' threads
(the baseline, ratio 1), 1 process with 1 thread (CPU only: on a loaded machine OpenMP threads
spin-wait for each other), N processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _train(config, root: str, out: str, options: dict) -> int:
    from detectors.distributed import env_world
    from detectors.train import train

    train(config, Path(root), Path(out), **options)
    return env_world().rank


def _rate(run: Path, warmup: int) -> float:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(m["images_per_s"] for m in lines[warmup:])


def main(argv: list[str] | None = None) -> int:
    import dataclasses

    from detectors import distributed
    from detectors.config import load_config
    from detectors.data.synthetic import generate
    from detectors.device import select_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "scrfd_0.5g.yaml"))
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    kind = select_device(args.device).type
    config = load_config(args.config)
    recipe = dataclasses.replace(
        config.recipe, train_size=args.size, batch_size=args.batch, workers=0,
        schedule=dataclasses.replace(config.recipe.schedule, unit="iterations", total=args.iters,
                                     milestones=(), warmup_iters=0))
    config = dataclasses.replace(config, recipe=recipe)
    slots = distributed.available_slots(kind)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "root", num_train=40, num_val=1, image_size=2 * args.size, progress=False)
        common = dict(progress=False, device=args.device, checkpoint_every=10**6, log_every=args.iters)
        threads = max(1, slots // args.nproc) if kind == "cpu" else None
        rows = []  # (processes, threads per process, images/s)
        for name, n, t in (("one", 1, slots if kind == "cpu" else None), ("one1", 1, 1), ("many", args.nproc, threads)):
            if kind == "cuda" and name == "one1":
                continue
            out = Path(tmp) / name
            if n == 1:
                _train(config, str(root), str(out), {**common, "num_threads": t})
            else:
                distributed.launch(n, distributed.free_port(), _train, config, str(root), str(out),
                                   {**common, "num_threads": t})
            rows.append((n, t, _rate(out, args.warmup)))
    print(f"device {kind}, {slots} {'GPUs' if kind == 'cuda' else 'CPUs'}; {Path(args.config).name} at "
          f"{args.size} px, global batch {args.batch}, {args.iters} iterations (median after {args.warmup})")
    print(f"{'processes':>10} {'threads':>8} {'images/s':>10} {'ratio':>7}")
    for n, t, rate in rows:
        print(f"{n:>10} {t or '-':>8} {rate:>10.2f} {rate / rows[0][2]:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
