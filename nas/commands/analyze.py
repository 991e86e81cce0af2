"""`facenas analyze RUN_DIR`: bootstrap ranges, plots and report of a search run.

    facenas analyze runs/scrfd-2.5g-... [--metric ap_hard] [--compare OTHER_RUN]
                    [--n-boot 2500] [--seed 0] [--include-stopped]

Prints the ranges table and writes RUN_DIR/analysis/ (ranges.csv, PNGs, report.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detectors.errors import UserError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="search run directory (holds trials.parquet or trials.csv)")
    parser.add_argument("--metric", default="ap_hard",
                        help="results column ranking the models, higher is better "
                             "(default: ap_hard)")
    parser.add_argument("--compare", metavar="OTHER_RUN", default=None,
                        help="a second run directory whose error EDF is drawn against this one")
    parser.add_argument("--n-boot", type=int, default=2500,
                        help="bootstrap resamples (default: 2500)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--include-stopped", action="store_true",
                        help="also rank trials ASHA stopped early, by their AP at the last rung "
                             "they reached (default: full-fidelity trials only)")


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():  # before the slow imports: a typo fails at once
        raise UserError(f"run directory {args.run_dir} does not exist")
    # Imported here: pandas and matplotlib load only when this command runs.
    import pandas as pd

    from analysis.report import analyze_run

    ranges = analyze_run(args.run_dir, metric=args.metric, compare_dir=args.compare,
                         seed=args.seed, n_boot=args.n_boot,
                         include_stopped=args.include_stopped)
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(f"likely ranges of the best models by {args.metric} "
              f"({int(ranges['n_models'].iloc[0]) if len(ranges) else 0} models, "
              f"{args.n_boot} resamples):")
        print(ranges.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {Path(args.run_dir) / 'analysis'} (report.md, ranges.csv, plots)")
    return 0
