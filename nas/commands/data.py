"""`facenas data`: dataset tools.

    facenas data synth OUT_DIR [--images N] [--val-images M] [--image-size PX] [--face-scale F]
        [--seed S]

writes the embedded synthetic dataset (official WIDER FACE layout) to OUT_DIR.
"""

from __future__ import annotations

import argparse
import json

from detectors.data import synthetic

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                                parser_class=type(parser))
    synth = sub.add_parser("synth", help="write the synthetic WIDER-layout dataset to OUT_DIR")
    synth.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) directory to create")
    synth.add_argument("--images", type=int, default=synthetic.DEFAULTS["num_train"],
                       help="number of train images (default: %(default)s)")
    synth.add_argument("--val-images", type=int, default=None,
                       help="number of val images (default: a quarter of --images)")
    synth.add_argument("--image-size", type=int, default=synthetic.DEFAULTS["image_size"],
                       help="image width in px (default: %(default)s)")
    synth.add_argument("--face-scale", type=float, default=1.0,
                       help="face sizes relative to a 640-px scene (default: %(default)s); "
                            "--image-size 320 --face-scale 2 is the quick search's proxy set")
    synth.add_argument("--seed", type=int, default=synthetic.DEFAULTS["seed"],
                       help="random seed; same arguments give byte-identical files (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        root = synthetic.generate(args.out_dir, num_train=args.images, num_val=args.val_images,
                                  image_size=args.image_size, seed=args.seed,
                                  face_scale=args.face_scale)
        info = json.loads((root / synthetic.MARKER).read_text())
        print(f"wrote {root}: train {info['train']['images']} images / {info['train']['faces']} faces, "
              f"val {info['val']['images']} images / {info['val']['faces']} faces "
              f"(easy {info['val']['easy']}, medium {info['val']['medium']}, hard {info['val']['hard']})")
    return 0
