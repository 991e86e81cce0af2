"""Fuzz the paper augmentation on real faces (issue 23, item 0): widerface-mini train images
through the recipe's training transform (SR crops 0.3-2.0, photometric, flip) at each size and
seed; fails on any exception or any kept box outside the output. The suite runs a small draw of
the same (tests/test_crop_exact.py); this runs the issue's 10^5.

    .venv/bin/python benchmarks/crop_fuzz.py [--root DIR] [--samples 100000] [--sizes 320 640]
                                             [--seeds 0 1 2]

--samples is the total, split evenly over sizes x seeds. Prints samples, faces kept, seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from detectors.batches import _transform
from detectors.config import SR_CROPS, recipe_from_dict
from detectors.data.loader import WiderFaceDataset

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "widerface-mini"


def fuzz(root: Path, size: int, seed: int, samples: int) -> int:
    """Draw `samples` augmented images; returns the number of faces kept. Raises on a bad box."""
    recipe = recipe_from_dict({"train_size": size})
    assert recipe.augmentation.crop_choices == SR_CROPS
    data = WiderFaceDataset(root, "train", _transform(recipe), landmarks="auto")
    rng = np.random.default_rng(seed)
    faces = 0
    for index in rng.integers(0, len(data), samples):
        key = (int(index), int(rng.integers(2**31)))
        out = data[key]
        boxes = out["boxes"].numpy()
        if out["image"].shape != (3, size, size) or np.any(boxes < 0) or np.any(boxes > size) \
                or np.any(boxes[:, 2:] < boxes[:, :2]):
            raise AssertionError(f"sample {key} at {size}: image {tuple(out['image'].shape)}, boxes {boxes}")
        faces += len(boxes)
    return faces


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=MINI)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"no data root at {args.root}", file=sys.stderr)
        return 2
    if args.samples < 1:
        print("--samples must be at least 1", file=sys.stderr)
        return 2
    bad = [s for s in args.sizes if s < 32 or s % 32]
    if bad:
        print(f"--sizes must be multiples of 32 (>= 32), not {bad}", file=sys.stderr)
        return 2
    each = max(1, args.samples // (len(args.sizes) * len(args.seeds)))
    total = 0
    for size in args.sizes:
        for seed in args.seeds:
            start = time.perf_counter()
            faces = fuzz(args.root, size, seed, each)
            total += each
            print(f"size {size} seed {seed}: {each} samples, {faces} faces kept, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"{total} samples, no exception, every box inside the output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
