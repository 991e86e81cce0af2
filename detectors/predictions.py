"""Prediction files in the official WIDER FACE layout.

`<pred_dir>/<event>/<file>.txt` holds one image's detections::

    <file>.jpg
    <number of boxes N>
    x y w h score          (N lines; x, y top-left corner, w, h in pixels)

This is what the official evaluation (eval_tools/read_pred.m) reads. The image-name line is
written for compatibility and not used when reading: the file's path names the image.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from detectors.errors import UserError

__all__ = ["write_predictions", "read_prediction_file", "read_predictions", "prediction_path"]


def prediction_path(pred_dir: str | os.PathLike, image_id: str) -> Path:
    """<pred_dir>/<event>/<file>.txt for image_id "event/file"."""
    event, sep, name = image_id.partition("/")
    if not sep or not event or not name or "/" in name:
        raise UserError(f"image id {image_id!r} is not 'event/file'")
    return Path(pred_dir) / event / f"{name}.txt"


def _atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_predictions(
    pred_dir: str | os.PathLike, image_id: str, boxes_xywh: np.ndarray, scores: np.ndarray
) -> Path:
    """Write one image's detections atomically; returns the file path.

    boxes_xywh: (N, 4) x, y (top-left), w, h in original-image pixels; scores: (N,). Values
    are written with Python's shortest round-trip repr, so reading them back is exact.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{image_id}: {len(boxes)} boxes but {len(scores)} scores")
    path = prediction_path(pred_dir, image_id)
    lines = [f"{image_id.split('/', 1)[1]}.jpg", str(len(boxes))]
    lines += [" ".join(repr(float(v)) for v in (*box, score)) for box, score in zip(boxes, scores)]
    _atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _parse_row(path: Path, number: int, text: str) -> list[float]:
    fields = text.split()
    if len(fields) < 5:
        raise UserError(f"{path}:{number}: expected 'x y w h score', got {len(fields)} fields: {text[:80]!r}")
    values = []
    for name, field in zip(("x", "y", "w", "h", "score"), fields[:5]):
        try:
            value = float(field)
        except ValueError:
            raise UserError(f"{path}:{number}: non-numeric {name} {field[:40]!r}") from None
        if not math.isfinite(value):
            raise UserError(f"{path}:{number}: {name} is {field}; it must be a finite number")
        values.append(value)
    return values


def read_prediction_file(path: str | os.PathLike) -> np.ndarray:
    """One prediction file -> float64 (N, 5) x, y, w, h, score in file order.

    The count line must match the number of box lines (the official reader uses the count,
    common Python ports use the lines; a mismatch is ambiguous, so it is an error).
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file ({err.reason})") from None
    fast = _fast_parse(raw)
    if fast is not None:
        return fast
    lines = [(n, t.strip()) for n, t in enumerate(raw, start=1) if t.strip()]
    if len(lines) < 2 or raw[0].strip() == "":
        raise UserError(f"{path}: expected an image-name line and a box-count line")
    number, text = lines[1]
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"{path}:{number}: expected the number of boxes, got {text[:80]!r}") from None
    if count < 0:
        raise UserError(f"{path}:{number}: negative box count {count}")
    rows = lines[2:]
    if count != len(rows):
        raise UserError(f"{path}:{number}: the count says {count} boxes but {len(rows)} box lines follow")
    # per line, to name the offending line (or accept extra trailing columns)
    return np.asarray([_parse_row(path, n, t) for n, t in rows], dtype=np.float64).reshape(-1, 5)


def _fast_parse(raw: list[str]) -> np.ndarray | None:
    """The common well-formed file (no blank lines, count right, 5 finite numbers a line) in
    one conversion; None sends anything else to the checking parser, which names the line."""
    if len(raw) < 2 or not raw[0].strip() or not raw[1].strip().isdigit():
        return None
    fields = [t.split() for t in raw[2:]]
    while fields and not fields[-1]:
        fields.pop()  # trailing blank lines
    if int(raw[1]) != len(fields) or any(len(f) != 5 for f in fields):
        return None
    try:
        values = np.array([v for f in fields for v in f], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


def read_predictions(pred_dir: str | os.PathLike, progress: bool = True) -> dict[str, np.ndarray]:
    """All `<pred_dir>/<event>/<file>.txt` -> {"event/file": float64 (N, 5) x, y, w, h, score}."""
    from tqdm import tqdm

    pred_dir = Path(pred_dir).expanduser()
    if not pred_dir.is_dir():
        raise UserError(f"prediction directory not found: {pred_dir}")
    files = sorted(pred_dir.glob("*/*.txt"))
    if not files:
        loose = sorted(pred_dir.glob("*.txt"))
        hint = f" (found {loose[0].name} directly in it)" if loose else ""
        raise UserError(f"no prediction files <event>/<image>.txt in {pred_dir}{hint}")
    out = {}
    for path in tqdm(files, desc="reading predictions", disable=None if progress else True, leave=False):
        out[f"{path.parent.name}/{path.stem}"] = read_prediction_file(path)
    return out
