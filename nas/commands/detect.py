"""`facenas detect IMAGE... --config C --weights W -o OUT_DIR [--score 0.5]`.

Runs the detector at the config's test size (resize long side, pad; as `facenas test`), keeps
detections above --score after NMS, draws boxes, scores and the 5 keypoints, and writes one
image per input into OUT_DIR under the input's file name (JPEG/PNG keep their format, other
formats become PNG), atomically. Prints one line per image with its face count.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

__all__ = ["add_arguments", "run"]

_KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--config", required=True, help="spec YAML or retraining config")
    parser.add_argument("--weights", required=True, help="checkpoint (facenas train / import-weights)")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--score", type=float, default=0.5, help="score threshold (default 0.5)")
    parser.add_argument("--iou", type=float, default=None, help="NMS IoU (default: the config's, 0.45)")
    parser.add_argument("--size", type=int, default=None, help="test size (default: the config's, 640)")


def _output_path(out_dir: Path, image: Path, taken: set[Path]) -> tuple[Path, str]:
    fmt = _KEEP_FORMAT.get(image.suffix.lower(), "PNG")
    name = image.name if image.suffix.lower() in _KEEP_FORMAT else image.stem + ".png"
    path, k = out_dir / name, 1
    while path in taken:  # two inputs with the same file name from different folders
        path, k = out_dir / f"{Path(name).stem}_{k}{Path(name).suffix}", k + 1
    taken.add(path)
    return path, fmt


def _save_atomic(image, path: Path, fmt: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from detectors.data.widerface import read_image
    from detectors.draw import draw_detections
    from detectors.errors import UserError
    from detectors.test import preprocess
    from nas.commands._detector import load_detector

    if not 0.0 <= args.score <= 1.0:
        raise UserError(f"--score must be within 0..1, not {args.score}")
    missing = [name for name in args.images if not Path(name).is_file()]
    if missing:  # before loading anything: a typo should not cost a model build
        raise UserError(f"image {missing[0]} does not exist"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    model, test = load_detector(args.config, args.weights)
    size, iou = args.size or test.size, test.iou_thresh if args.iou is None else args.iou
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    for name in args.images:
        pixels = read_image(name)  # uint8 (H, W, 3) RGB; UserError if missing or corrupt
        blob, (sx, sy) = preprocess(pixels, size)
        with torch.no_grad():
            det = model.predict(blob[None], score_thresh=args.score, iou_thresh=iou)[0]
        back = torch.tensor([sx, sy])
        boxes = det.boxes / back.repeat(2)
        kps = None if det.keypoints is None else det.keypoints / back
        drawn = draw_detections(Image.fromarray(pixels), boxes, det.scores, kps)
        path, fmt = _output_path(out_dir, Path(name), taken)
        _save_atomic(drawn, path, fmt)
        print(f"{name}: {len(boxes)} faces -> {path}")
    return 0
