"""Learning curve: train a retraining config with a budget preset and print val AP over time.

    python benchmarks/learning_curve.py [--config experiments/scrfd_0.5g.yaml] [--budget quick]
        [--data ../shared/data/widerface-mini] [--points 4] [--out RUN_DIR]

Trains in `points` equal chunks (each chunk resumes the previous one's checkpoint, which the
trainer continues exactly, so the curve's last point is the plain `facenas train` result) and
after each chunk evaluates the checkpoint on the val split with `detectors.test.test` (the
official WIDER protocol at the recipe's test size). Prints one line per point and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from detectors.config import apply_budget, load_config
    from detectors.test import test
    from detectors.train import CHECKPOINT, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "scrfd_0.5g.yaml"))
    p.add_argument("--budget", default="quick")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "widerface-mini"))
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--out", help="run directory (default: a temporary one)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    config = apply_budget(load_config(args.config), args.budget)
    out = Path(args.out or tempfile.mkdtemp(prefix="learning_curve-"))
    s = config.recipe.schedule
    total = s.total if s.unit == "iterations" else None
    if total is None:
        raise SystemExit("learning_curve.py expects an iteration-based budget (smoke or quick)")
    stops = [round(total * (i + 1) / args.points) for i in range(args.points)]
    curve, train_time = [], 0.0
    print(f"{config.spec.name}, budget {args.budget}: {total} iterations x {config.recipe.batch_size} "
          f"images at {config.recipe.train_size} px; val AP at test size {config.recipe.test.size}",
          flush=True)
    for i, stop in enumerate(stops):
        start = time.perf_counter()
        result = train(config, args.data, out, resume=i > 0, max_iterations=stop,
                       num_threads=args.threads, progress=False)
        train_time += time.perf_counter() - start  # evaluation time is not counted
        ap = test(config, out / CHECKPOINT, args.data, split="val", progress=False)
        curve.append({"iteration": result.iterations, "train_minutes": round(train_time / 60, 2),
                      "loss": round(result.losses["total"], 4), **{k: round(v, 4) for k, v in ap.items()}})
        print(f"iter {result.iterations:5d}  {train_time / 60:6.1f} min  loss {result.losses['total']:.3f}  "
              f"AP easy {ap['easy']:.3f} medium {ap['medium']:.3f} hard {ap['hard']:.3f}", flush=True)
    print(json.dumps({"config": args.config, "budget": args.budget, "run": str(out), "curve": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
