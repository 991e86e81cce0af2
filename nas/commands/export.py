"""`facenas export RUN_DIR --top K [--metric ap_hard]`: a run's best specs as retraining configs."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a search run directory (holds config.yaml, trials.parquet)")
    parser.add_argument("--top", type=int, default=5, help="how many specs to export (default 5)")
    parser.add_argument("--metric", default="ap_hard", choices=("ap_easy", "ap_medium", "ap_hard"),
                        help="rank by this AP (default ap_hard)")


def run(args: argparse.Namespace) -> int:
    from nas.export import export_top

    for path in export_top(args.run_dir, top=args.top, metric=args.metric):
        print(path)
    return 0
