"""`facenas evaluate PRED_DIR --gt GT_DIR`: WIDER FACE Easy/Medium/Hard AP of a prediction dir.

    facenas evaluate preds/ --gt data/widerface [--json] [--plot pr.png] [--protocol matlab]

PRED_DIR is in the official layout (<event>/<image>.txt: image name, count, `x y w h score`
lines). GT_DIR is a dataset root or its eval_tools/ground_truth directory. Prints the three APs
and each subset's AP at precision >= 98% (SCRFD Table 1; docs/evaluation.md) (`--json`:
{"easy": .., "medium": .., "hard": .., "ap_at_p98_easy": .., "ap_at_p98_medium": ..,
"ap_at_p98_hard": ..}); `--plot` marks where each curve's precision is still >= 98%; warnings
go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="predictions: PRED_DIR/<event>/<image>.txt")
    parser.add_argument(
        "--gt", required=True, metavar="GT_DIR",
        help="dataset root, or the eval_tools/ground_truth dir with wider_face_val.mat and wider_*_val.mat",
    )
    parser.add_argument("--json", action="store_true",
                        help='print {"easy": .., "medium": .., "hard": .., "ap_at_p98_easy": .., ...}')
    parser.add_argument("--plot", metavar="OUT_PNG", help="also write the precision-recall curves to OUT_PNG "
                        "(precision 98%% marked)")
    parser.add_argument(
        "--protocol", choices=("matlab", "python"), default="matlab",
        help="arithmetic of the official MATLAB eval_tools (default) or of the common Python port",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detectors.errors import UserError
    from detectors.evaluate import evaluate, plot_pr

    if args.plot and not Path(args.plot).parent.resolve().is_dir():
        # checked before the work so a bad path costs nothing
        raise UserError(f"--plot {args.plot}: directory {Path(args.plot).parent} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(args.pred_dir, args.gt, protocol=args.protocol)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if result.missing:
        print(
            f"warning: {len(result.missing)} of {result.images} images have no prediction file "
            f"(scored as no detections), e.g. {result.missing[0]}",
            file=sys.stderr,
        )
    if result.extra:
        print(f"warning: {len(result.extra)} predicted images are not in the ground truth and were "
              f"not scored, e.g. {result.extra[0]}", file=sys.stderr)
    if args.plot:
        plot_pr(result, args.plot)
    if args.json:
        print(json.dumps(result.metrics()))
    else:
        for setting, ap in result.as_dict().items():
            print(f"{setting:<7} AP {ap:.6f}   AP at precision >= 98% {result.ap_at_p98[setting]:.6f}")
    return 0
