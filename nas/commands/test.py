"""`facenas test CONFIG --weights CKPT [--data ROOT] [--split val] [--out PRED_DIR] [--json]
[--set KEY=VALUE ...]` (e.g. --set recipe.test.size=320).

Predicts a split at the config's test settings (long side resized to the test size, padded),
optionally writes the official per-image prediction files to PRED_DIR, and prints WIDER FACE
AP (easy / medium / hard; JSON `{"easy":..,"medium":..,"hard":..}` with --json). Without
--data, a run's config.yaml tests on the data that run trained on (`run.data_root`), any
other config on the embedded synthetic set.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="retraining config YAML (or a run's config.yaml)")
    parser.add_argument("--weights", required=True, help="checkpoint (.pt) from facenas train or import-weights")
    parser.add_argument("--data", help="dataset root in the WIDER FACE layout (default: the data a run's "
                        "config.yaml records, else the embedded synthetic data)")
    parser.add_argument("--split", default="val", choices=("val", "train"),
                        help="val: official evaluation files; train: all valid annotated faces")
    parser.add_argument("--out", help="write predictions in the official layout to this directory")
    parser.add_argument("--json", action="store_true", help="print AP as one JSON object")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: $FACENAS_THREADS or the CPUs this process may use)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the config (repeatable; dotted keys, YAML values), "
                             "e.g. --set recipe.test.size=320")


def run(args: argparse.Namespace) -> int:
    from detectors.config import load_config
    from detectors.device import set_threads
    from detectors.overrides import override_config
    from detectors.test import test
    from nas.commands.train import recorded_data_root, resolve_data_root

    config = override_config(load_config(args.config), args.overrides)
    set_threads(args.threads)
    recorded = None if args.data else recorded_data_root(args.config)
    root = recorded or resolve_data_root(args.data)
    ap = test(config, args.weights, root, split=args.split, pred_dir=args.out,
              device=args.device, progress=not args.quiet)
    if args.json:
        print(json.dumps(ap))
    else:
        print("  ".join(f"{k} {v * 100:.2f}" for k, v in ap.items()) + f"   (AP %, {args.split}, {root})")
    return 0
