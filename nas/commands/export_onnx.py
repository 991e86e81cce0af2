"""`facenas export-onnx CONFIG --weights CKPT -o model.onnx [--raw | --decoded] [--size 640]`.

Input `input`: (N, 3, H, W) float32 RGB, (pixel - 127.5) / 128, H and W multiples of the
largest stride (32); dynamic N, H, W unless --static (then 1 x 3 x size x size).

--raw (default), the published SCRFD layout, per stride s in the spec's strides, rows ordered
y, x, anchor (A anchors per cell, R_s = H/s * W/s * A):
  score_s (N, R_s, 1) sigmoid scores; bbox_s (N, R_s, 4) distances left, top, right, bottom
  in units of s; kps_s (N, R_s, 10) keypoint (x, y) offsets in units of s (keypoint specs).
  Cell (y, x) has anchor point (x*s, y*s): box = (x*s - l*s, y*s - t*s, x*s + r*s, y*s + b*s).
--decoded, all strides concatenated (K = sum of R_s), before score threshold and NMS:
  boxes (N, K, 4) x1, y1, x2, y2 in input pixels (not clamped); scores (N, K);
  keypoints (N, K, 5, 2) (x, y) input pixels (keypoint specs).

The file is written atomically, then run once in onnxruntime beside PyTorch as a check.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="spec YAML or retraining config")
    parser.add_argument("--weights", required=True, help="checkpoint (facenas train / import-weights)")
    parser.add_argument("-o", "--out", required=True, help="ONNX file to write")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--raw", dest="decoded", action="store_false",
                        help="per-stride score/bbox/kps outputs like the published models (default)")
    layout.add_argument("--decoded", dest="decoded", action="store_true",
                        help="boxes/scores/keypoints in input pixels, before NMS")
    parser.set_defaults(decoded=False)
    parser.add_argument("--size", type=int, default=640, help="example (and --static) input size")
    parser.add_argument("--static", action="store_true", help="fix the input to 1x3xSIZExSIZE")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")


def run(args: argparse.Namespace) -> int:
    from detectors.onnx_io import check_export, export_onnx
    from nas.commands._detector import load_detector

    model, _ = load_detector(args.config, args.weights)
    path = export_onnx(model, args.out, decoded=args.decoded, dynamic=not args.static,
                       size=args.size, opset=args.opset)
    diffs = check_export(model, path, decoded=args.decoded, size=args.size)
    print(f"max |onnxruntime - torch| over {len(diffs)} outputs at {args.size}x{args.size}: "
          f"{max(diffs.values()):.2e}", file=sys.stderr)
    print(path)
    return 0
