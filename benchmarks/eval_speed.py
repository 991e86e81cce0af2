"""Wall time of the WIDER FACE evaluator (median of 5 runs).

    python benchmarks/eval_speed.py [--mini ../shared/data/widerface-mini] [--images 3226]

Measures (a) widerface-mini val (250 images) with predictions = jittered ground truth plus
false positives; (b) a synthetic full-val-sized set: 3,226 images with
WIDER-like face counts (mean about 12, a few hundred in crowds) and about 450 predictions per
image. Both from an in-memory dict and from prediction files (the CLI path); wall and CPU
seconds (CPU time is the cost on a shared, loaded machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from detectors.data.widerface import SETTINGS, EvalGroundTruth, load_eval_ground_truth
from detectors.evaluate import evaluate, write_predictions


def _noisy_predictions(gt: EvalGroundTruth, rng: np.random.Generator, extra: int) -> dict[str, np.ndarray]:
    preds = {}
    for image_id, boxes in gt.boxes.items():
        jitter = boxes + rng.normal(0, 0.1, boxes.shape) * np.maximum(boxes[:, 2:3], 1)
        false = np.c_[rng.uniform(0, 1000, (extra, 2)), rng.uniform(5, 80, (extra, 2))]
        # true detections mostly score higher than false ones, as a trained detector's do
        scores = np.r_[rng.uniform(0.2, 1.0, len(boxes)), rng.uniform(0.02, 0.6, extra)]
        preds[image_id] = np.c_[np.r_[jitter, false], scores]
    return preds


def _synthetic_gt(n_images: int, rng: np.random.Generator) -> EvalGroundTruth:
    ids, boxes, keep = [], {}, {s: {} for s in SETTINGS}
    for n in range(n_images):
        k = int(min(rng.pareto(1.5) * 6 + 1, 1500))
        image_id = f"{n % 61}--Event/img_{n}"
        xy = rng.uniform(0, 1000, (k, 2))
        wh = np.exp(rng.normal(2.8, 0.9, (k, 2)))
        ids.append(image_id)
        boxes[image_id] = np.floor(np.c_[xy, wh])
        size = wh.min(axis=1)
        for s, limit in zip(SETTINGS, (50, 30, 10)):
            keep[s][image_id] = np.flatnonzero(size >= limit) + 1
    return EvalGroundTruth(None, ids, boxes, keep, integer_boxes=True)  # int32, as the official .mat


def _median_time(fn, repeats: int = 5) -> tuple[float, float]:
    """Median wall and CPU seconds (CPU time shows the cost on a shared, loaded machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _report(name: str, gt: EvalGroundTruth, preds: dict[str, np.ndarray]) -> None:
    n = sum(len(p) for p in preds.values())
    t_dict = _median_time(lambda: evaluate(preds, gt, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        for image_id, p in preds.items():
            write_predictions(tmp, image_id, p[:, :4], p[:, 4])
        t_files = _median_time(lambda: evaluate(tmp, gt, progress=False))
    ap = evaluate(preds, gt, progress=False).as_dict()
    print(f"{name}: {len(gt.image_ids)} images, {sum(len(b) for b in gt.boxes.values())} faces, {n} "
          f"predictions: wall (CPU) {t_dict[0]:.2f} s ({t_dict[1]:.2f} s) from a dict, "
          f"{t_files[0]:.2f} s ({t_files[1]:.2f} s) from files (median of 5); "
          f"AP {', '.join(f'{k} {v:.4f}' for k, v in ap.items())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini", default=str(Path(__file__).resolve().parents[2] / "shared/data/widerface-mini"))
    parser.add_argument("--images", type=int, default=3226)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if Path(args.mini).is_dir():
        gt = load_eval_ground_truth(args.mini)
        _report("widerface-mini val", gt, _noisy_predictions(gt, rng, extra=100))
    gt = _synthetic_gt(args.images, rng)
    # ~450 predictions per image: what SCRFD-2.5GF gives at score > 0.02 on mini val (448)
    _report("synthetic full-val size", gt, _noisy_predictions(gt, rng, extra=440))


if __name__ == "__main__":
    main()
