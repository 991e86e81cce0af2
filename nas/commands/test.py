"""`facenas test CONFIG --weights CKPT [--data ROOT] [--split val] [--out PRED_DIR] [--json]
[--sizes N [N ...]] [--resize long|short] [--flip] [--merge nms|vote] [--pre-nms-top-k K]
[--max-det K] [--set KEY=VALUE ...]` (e.g. --set recipe.test.size=320).

Predicts a split at the config's test protocol (recipe.test; by default one pass, long side
resized to the test size, padded; the flags override it: `--sizes 480 640 960 --flip --resize
short` is a multi-scale, flipped test merged by NMS), optionally writes the official per-image
prediction files to PRED_DIR, and prints WIDER FACE AP and AP at precision >= 98% per subset
(JSON `{"easy":..,"medium":..,"hard":..,"ap_at_p98_easy":..,...}` with --json). Without
--data, a run's config.yaml tests on the data that run trained on (`run.data_root`), any
other config on the embedded synthetic set.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run", "apply_test_flags"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detectors.config import TEST_MERGE, TEST_RESIZE

    parser.add_argument("config", help="retraining config YAML (or a run's config.yaml)")
    parser.add_argument("--weights", required=True, help="checkpoint (.pt) from facenas train or import-weights")
    parser.add_argument("--data", help="dataset root in the WIDER FACE layout (default: the data a run's "
                        "config.yaml records, else the embedded synthetic data)")
    parser.add_argument("--split", default="val", choices=("val", "train"),
                        help="val: official evaluation files; train: all valid annotated faces")
    parser.add_argument("--out", help="write predictions in the official layout to this directory")
    parser.add_argument("--json", action="store_true", help="print AP as one JSON object")
    protocol = parser.add_argument_group("test protocol (override recipe.test; docs/evaluation.md)")
    protocol.add_argument("--sizes", type=int, nargs="+", metavar="N",
                          help="test sizes (several: a multi-scale test); recipe.test.sizes")
    protocol.add_argument("--resize", choices=TEST_RESIZE,
                          help="the side resized to each size (long: SCRFD, padded square; short: FANet)")
    protocol.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                          help="also test the mirrored image at every size")
    protocol.add_argument("--merge", choices=TEST_MERGE,
                          help="how several passes are merged: NMS or box voting (S3FD / DSFD)")
    protocol.add_argument("--pre-nms-top-k", type=int, metavar="K",
                          help="boxes kept per pass before NMS (ASFD: 5000)")
    protocol.add_argument("--max-det", type=int, metavar="K", help="detections kept per image (ASFD: 750)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: $FACENAS_THREADS or the CPUs this process may use)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the config (repeatable; dotted keys, YAML values), "
                             "e.g. --set recipe.test.size=320")


_FLAGS = {"sizes": "--sizes", "resize": "--resize", "flip": "--flip", "merge": "--merge",
          "pre_nms_top_k": "--pre-nms-top-k", "max_det": "--max-det"}


def apply_test_flags(config, args: argparse.Namespace):
    """The config with the protocol flags given on the command line set in recipe.test
    (checked by TestConfig; a bad value is a UserError naming the flag)."""
    from dataclasses import replace

    from detectors.errors import UserError

    changes = {key: getattr(args, key) for key in _FLAGS if getattr(args, key, None) is not None}
    if not changes:
        return config
    if "sizes" in changes:
        changes["sizes"] = tuple(changes["sizes"])
    try:
        test = replace(config.recipe.test, **changes)
    except UserError as err:
        given = " ".join(_FLAGS[k] for k in changes)
        raise UserError(f"{given}: {err}") from None
    return replace(config, recipe=replace(config.recipe, test=test))


def run(args: argparse.Namespace) -> int:
    from detectors.config import load_config
    from detectors.device import set_threads
    from detectors.overrides import override_config
    from detectors.test import test
    from nas.commands.train import recorded_data_root, resolve_data_root

    config = apply_test_flags(override_config(load_config(args.config), args.overrides), args)
    set_threads(args.threads)
    recorded = None if args.data else recorded_data_root(args.config)
    root = recorded or resolve_data_root(args.data)
    metrics = test(config, args.weights, root, split=args.split, pred_dir=args.out,
                   device=args.device, progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics))
    else:
        t = config.recipe.test
        protocol = (f"sizes {' '.join(map(str, t.scales))} ({t.resize} side)"
                    + (", flip" if t.flip else "") + (f", merged by {t.merge}" if not t.single_pass else ""))
        ap = "  ".join(f"{s} {metrics[s] * 100:.2f}" for s in ("easy", "medium", "hard"))
        p98 = "  ".join(f"{s} {metrics[f'ap_at_p98_{s}'] * 100:.2f}" for s in ("easy", "medium", "hard"))
        print(f"AP {ap}   AP at precision >= 98% {p98}   (%, {args.split}, {root}; {protocol})")
    return 0
