"""`facenas import-weights ONNX SPEC -o CKPT`: published (BN-folded) ONNX weights -> checkpoint.

The checkpoint (`{"spec", "model"}`, see detectors.checkpoint) loads with
`facenas test SPEC --weights CKPT`. Layers are matched by graph structure; an ONNX file of
another model, or a spec it does not fit, is a one-line error naming the first mismatch.
After loading, the model is run once beside onnxruntime on the same input as a check.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", help="ONNX file with BatchNorm folded (e.g. ../shared/models/scrfd_2.5g_bnkps.onnx)")
    parser.add_argument("spec", help="spec YAML (or retraining config) the weights belong to")
    parser.add_argument("-o", "--out", required=True, help="checkpoint to write (atomically)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the output comparison with onnxruntime")


def run(args: argparse.Namespace) -> int:
    from detectors.checkpoint import save_checkpoint
    from detectors.model import build
    from detectors.onnx_io import import_onnx_weights, verify_import
    from nas.commands._detector import load_spec

    spec, _ = load_spec(args.spec)
    model = build(spec)
    counts = import_onnx_weights(model, args.onnx)
    print(f"mapped {counts['convs']} convs ({counts['batchnorms']} with folded BatchNorm) and "
          f"{counts['scales']} scales onto {spec.name}", file=sys.stderr)
    if not args.no_verify:
        diffs = verify_import(model, args.onnx)
        print(f"max |ours - onnxruntime| over {len(diffs)} outputs: {max(diffs.values()):.2e}"
              if diffs else "outputs are not in the raw score_s/bbox_s/kps_s layout: not compared",
              file=sys.stderr)
    path = save_checkpoint(args.out, {"spec": spec.to_dict(), "model": model.state_dict()})
    print(path)
    return 0
