"""Split a dataset root's train split into two disjoint WIDER-layout roots (weights / held-out).

Bilevel searches (DARTS) fit the weights on one part of the training images and the
architecture on another. `split_train(root, out, seed)` writes `out/weights` and `out/heldout`,
each a root whose train annotations list its share of the images (official text format,
rewritten from the parsed records) and whose image files are symlinks to the originals, so the
one trainer's batch stream reads either part unchanged. The split is a seeded permutation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from detectors.data.widerface import load_split
from detectors.errors import UserError

__all__ = ["split_train"]


def _write_root(dst: Path, records) -> Path:
    lines = []
    for r in records:
        target = dst / "WIDER_train" / "images" / f"{r.image_id}{r.path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(r.path)
        lines += [f"{r.image_id}{r.path.suffix}", str(len(r.boxes))]
        if not len(r.boxes):
            lines.append("0 0 0 0 0 0 0 0 0 0")  # the official files' row for no faces
        for box, attrs in zip(r.boxes, r.attributes):
            lines.append(" ".join(repr(float(v)) for v in box) + " "
                         + " ".join(str(int(a)) for a in attrs))
    split_dir = dst / "wider_face_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    path = split_dir / "wider_face_train_bbx_gt.txt"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return dst


def split_train(root: str | os.PathLike, out: str | os.PathLike, seed: int,
                heldout_fraction: float = 0.5) -> tuple[Path, Path]:
    """(weights root, held-out root) under `out`; deterministic in (root's images, seed)."""
    records = load_split(Path(root), "train").records
    if len(records) < 2:
        raise UserError(f"{root}: a bilevel search needs at least 2 training images, "
                        f"found {len(records)}")
    order = np.random.default_rng(seed).permutation(len(records))
    k = min(max(1, round(len(records) * heldout_fraction)), len(records) - 1)
    held = sorted(order[:k].tolist())
    rest = sorted(order[k:].tolist())
    out = Path(out)
    return (_write_root(out / "weights", [records[i] for i in rest]),
            _write_root(out / "heldout", [records[i] for i in held]))
