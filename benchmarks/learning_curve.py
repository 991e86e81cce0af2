"""Learning curve: train a retraining config and print val AP against training time.

    python benchmarks/learning_curve.py [--config experiments/scrfd_0.5g.yaml] [--budget quick]
        [--set KEY=VALUE ...] [--data ../shared/data/widerface-mini] [--points 4]
        [--minutes M] [--threads T] [--out RUN_DIR] [--csv FILE] [--label NAME]
    python benchmarks/learning_curve.py --plot FILE.csv OUT.png [--log-ap] [--labels NAME ...]

Trains in `points` equal chunks (each chunk resumes the previous one's checkpoint, which the
trainer continues exactly, so the curve's last point is the plain `facenas train` result) and
after each chunk evaluates the checkpoint on the val split with `detectors.test.test` (the
official WIDER protocol at the recipe's test size). `--set` overrides the budget-scaled config
as `facenas train --set` does (e.g. a proxy-resolution recipe of the paper's: `--budget quick
--set recipe.schedule.total=6000`). `--minutes M` stops after the first point whose summed
training time (tests not counted) reaches M minutes: "up to an hour" is `--minutes 60`.

Prints one line per point and a JSON line. `--csv FILE` also adds each point to FILE (columns
CSV_COLUMNS; the file is rewritten through a temporary name after each point, so a killed run
keeps the points it made); rows of other labels are kept, a label's earlier rows replaced.
`--plot` draws every label of such a CSV: val AP (easy, medium, hard) against training minutes
(`--log-ap`: on a log axis).
**Across sessions.** With `--out DIR`, the run records its points in DIR/curve.json after each
one; the same command again continues it: recorded points are kept, training resumes from the
checkpoint (the trainer continues exactly), and the minutes of the iterations trained before
the interruption are the logged iteration times since the last point. Another `--label`,
`--points` or schedule into the same DIR is refused (one line), as the trainer refuses another
spec or recipe.
Bad input (a missing config, a mistyped --set key, a budget counted in epochs) is one line,
exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CSV_COLUMNS = ["label", "iteration", "train_minutes", "loss", "easy", "medium", "hard"]
CURVE = "curve.json"  # in the run directory: {label, stops, points}, rewritten after each point


def _write_rows(path: Path, label: str, rows: list[dict]) -> None:
    """FILE's rows of other labels, then this label's `rows`, written atomically."""
    import pandas as pd

    from nas.results import atomic_write_text

    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=CSV_COLUMNS)
    old = old[old["label"] != label]
    new = pd.concat([old, pd.DataFrame(rows, columns=CSV_COLUMNS)], ignore_index=True)
    atomic_write_text(path, new.to_csv(index=False))


def _recorded_points(out: Path, label: str, stops: list[int]) -> list[dict]:
    """The points an interrupted run into `out` recorded ([] for a new run); refuses a run
    directory that draws another curve."""
    from detectors.errors import UserError

    path = out / CURVE
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if saved["label"] != label or saved["stops"] != stops:
        raise UserError(f"--out {out} holds the curve {saved['label']!r} tested at iterations "
                        f"{saved['stops']}, not {label!r} at {stops}: rerun with its --label, "
                        "--points and --set, or choose another --out")
    return saved["points"]


def _logged_seconds(metrics_jsonl: Path, after: int, upto: int) -> float:
    """Training seconds the trainer logged (step_s) for iterations after..upto."""
    with metrics_jsonl.open() as f:
        return sum(r.get("step_s", 0.0) for r in map(json.loads, f) if after < r["iteration"] <= upto)


def _logged_loss(metrics_jsonl: Path, iteration: int) -> float:
    """The total loss the trainer logged at `iteration` (a resumed run that had already
    trained up to its stop trains nothing more, so reports no loss of its own)."""
    with metrics_jsonl.open() as f:
        return next(r["total"] for r in map(json.loads, f) if r["iteration"] == iteration)


def plot(csv_path: Path, png_path: Path, log_ap: bool = False, labels: list[str] | None = None) -> None:
    """Val AP (easy, medium, hard: one panel each) against training minutes, one line per label
    (`labels`: only these, in this order); `log_ap`: AP on a log axis, so curves that barely
    start (AP 1e-4) show beside working ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from detectors.errors import UserError

    if not csv_path.is_file():
        raise UserError(f"--plot {csv_path}: no such file")
    frame = pd.read_csv(csv_path)
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"--plot {csv_path}: missing columns {', '.join(missing)}")
    if labels:
        unknown = [l for l in labels if l not in set(frame["label"])]
        if unknown:
            raise UserError(f"--labels {' '.join(unknown)}: not in {csv_path} (it has "
                            f"{', '.join(dict.fromkeys(frame['label']))})")
        frame = pd.concat([frame[frame["label"] == l] for l in labels])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, subset in zip(axes, ("easy", "medium", "hard")):
        for label, rows in frame.groupby("label", sort=False):
            rows = rows.sort_values("train_minutes")
            ax.plot(rows["train_minutes"], rows[subset], marker="o", label=label)
        if log_ap:
            ax.set_yscale("log")
        ax.set_title(f"val AP, {subset}")
        ax.set_xlabel("training minutes (tests not counted)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(png_path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)


def run(args: argparse.Namespace) -> int:
    from detectors.config import apply_budget, load_config
    from detectors.errors import UserError
    from detectors.overrides import override_config
    from detectors.test import test
    from detectors.train import CHECKPOINT, METRICS, train

    from nas.results import atomic_write_text

    if args.points < 1:
        raise UserError(f"--points {args.points}: must be at least 1")
    config = override_config(apply_budget(load_config(args.config), args.budget), args.overrides)
    s = config.recipe.schedule
    if s.unit != "iterations":
        raise UserError(f"--budget {args.budget}: the schedule counts {s.unit}; learning_curve.py "
                        "needs iterations (smoke, quick, or --set recipe.schedule.unit=iterations)")
    out = Path(args.out or tempfile.mkdtemp(prefix="learning_curve-"))
    label = args.label or config.spec.name
    stops = [round(s.total * (i + 1) / args.points) for i in range(args.points)]
    curve = _recorded_points(out, label, stops)
    train_time = curve[-1]["train_minutes"] * 60 if curve else 0.0
    print(f"{label}, budget {args.budget}: {s.total} iterations x {config.recipe.batch_size} "
          f"images at {config.recipe.train_size} px, lr {s.lr}; val AP at test size "
          f"{config.recipe.test.size}" + (f"; resuming after iteration {curve[-1]['iteration']}"
                                          if curve else ""), flush=True)
    interrupted = (out / CHECKPOINT).is_file()  # an earlier session trained part of the curve
    for stop in stops:
        if any(p["iteration"] == stop for p in curve):
            continue
        if args.minutes is not None and train_time >= args.minutes * 60:
            break  # (also when an earlier session trained the minutes asked for)
        start = time.perf_counter()
        result = train(config, args.data, out, resume=(out / CHECKPOINT).is_file(),
                       max_iterations=stop, num_threads=args.threads, progress=False)
        if interrupted:  # some of this chunk was trained before: count its logged times
            last = curve[-1]["iteration"] if curve else 0
            train_time += _logged_seconds(out / METRICS, last, result.iterations)
            interrupted = False
        else:
            train_time += time.perf_counter() - start  # evaluation time is not counted
        ap = test(config, out / CHECKPOINT, args.data, split="val", progress=False)
        loss = result.losses["total"] if result.losses else _logged_loss(out / METRICS, result.iterations)
        curve.append({"label": label, "iteration": result.iterations,
                      "train_minutes": round(train_time / 60, 2), "loss": round(loss, 4),
                      **{k: round(ap[k], 4) for k in ("easy", "medium", "hard")}})
        print(f"iter {result.iterations:5d}  {train_time / 60:6.1f} min  loss {loss:.3f}  "
              f"AP easy {ap['easy']:.3f} medium {ap['medium']:.3f} hard {ap['hard']:.3f}", flush=True)
        atomic_write_text(out / CURVE, json.dumps({"label": label, "stops": stops,
                                                   "points": curve}))
        if args.csv:
            _write_rows(Path(args.csv), label, curve)
    print(json.dumps({"config": args.config, "budget": args.budget, "run": str(out), "curve": curve}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from detectors.errors import UserError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "scrfd_0.5g.yaml"))
    p.add_argument("--budget", default="quick")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the budget-scaled config (repeatable), as facenas train --set")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "widerface-mini"))
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--minutes", type=float, help="stop after the point where training time reaches this")
    p.add_argument("--out", help="run directory (default: a temporary one)")
    p.add_argument("--threads", type=int)
    p.add_argument("--csv", help="add the points to this CSV (columns CSV_COLUMNS)")
    p.add_argument("--label", help="the curve's name in --csv and --plot (default: the spec's name)")
    p.add_argument("--plot", nargs=2, metavar=("CSV", "PNG"), help="draw a --csv file's curves; trains nothing")
    p.add_argument("--log-ap", action="store_true", help="with --plot: AP on a log axis")
    p.add_argument("--labels", nargs="+", help="with --plot: only these curves, in this order")
    args = p.parse_args(argv)
    try:
        if args.plot:
            plot(Path(args.plot[0]), Path(args.plot[1]), log_ap=args.log_ap, labels=args.labels)
            print(f"wrote {args.plot[1]}")
            return 0
        return run(args)
    except UserError as err:
        print(f"learning_curve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
