"""The test path: predict a split at the test size and evaluate it with the WIDER protocol.

Preprocessing follows SCRFD's published test pipeline (mmdet `Resize(keep_ratio=True)` to
640x640, `Pad(size=(640, 640))`): every image is resized with bilinear interpolation so its
long side equals `test_size` (up or down), normalised ((pixel - 127.5) / 128, RGB) and padded
with 0 at the bottom/right to test_size x test_size. Detections are mapped back to original
pixels by dividing by the x / y scale actually applied, and written as x, y, w = x2 - x1,
h = y2 - y1, score (the official WIDER prediction layout, as SCRFD's test_widerface.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from detectors.config import TrainConfig
from detectors.data.widerface import load_split, read_image
from detectors.errors import UserError

__all__ = ["preprocess", "predict_split", "split_ground_truth", "evaluate_predictions", "test"]


def preprocess(image: np.ndarray, test_size: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """uint8 (H, W, 3) RGB -> ((3, test_size, test_size) normalised float32, (sx, sy)).

    (sx, sy) are the applied scales: a box in network pixels divided by them is in original
    image pixels.
    """
    h, w = image.shape[:2]
    scale = test_size / max(h, w)
    new_w, new_h = max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    x = (x[0] - 127.5) / 128.0
    out = torch.zeros((3, test_size, test_size), dtype=torch.float32)
    out[:, :new_h, :new_w] = x
    return out, (new_w / w, new_h / h)


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    data_root: str | os.PathLike,
    split: str = "val",
    test_size: int = 640,
    *,
    score_thresh: float = 0.02,
    iou_thresh: float = 0.45,
    max_det: int | None = None,
    image_ids: list[str] | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Detections for every image of a split: image_id -> (N, 5) float array of
    x, y, w, h, score in original image pixels (score-descending after NMS).

    image_ids restricts the images (default: all of the split). The model runs in eval mode
    on its own device; its training mode is restored afterwards.
    """
    records = load_split(data_root, split).records
    if image_ids is not None:
        wanted = set(image_ids)
        records = [r for r in records if r.image_id in wanted]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {}
    try:
        for start in tqdm(range(0, len(records), batch_size), desc=f"predict {split}",
                          disable=not progress, unit="batch"):
            chunk = records[start : start + batch_size]
            prepared = [preprocess(read_image(r.path, f"{r.source}:{r.line}"), test_size) for r in chunk]
            images = torch.stack([p[0] for p in prepared]).to(device)
            dets = model.predict(images, score_thresh=score_thresh, iou_thresh=iou_thresh, max_det=max_det)
            for record, (_, (sx, sy)), det in zip(chunk, prepared, dets):
                out[record.image_id] = _to_xywh(det.boxes, det.scores, sx, sy)
    finally:
        model.train(was_training)
    return out


def _to_xywh(boxes: torch.Tensor, scores: torch.Tensor, sx: float, sy: float) -> np.ndarray:
    b = boxes.float().cpu().numpy().astype(np.float64)
    b[:, 0::2] /= sx
    b[:, 1::2] /= sy
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    return np.concatenate([xywh, scores.float().cpu().numpy()[:, None].astype(np.float64)], 1)


def split_ground_truth(data_root: str | os.PathLike, split: str, image_ids: list[str] | None = None):
    """An EvalGroundTruth built from a split's annotations (for splits without official
    evaluation files, e.g. train): every face not flagged invalid and of positive size is kept
    in all three settings; invalid faces stay as boxes whose hits are ignored."""
    from detectors.data.widerface import SETTINGS, EvalGroundTruth

    records = load_split(data_root, split).records
    if image_ids is not None:
        wanted = set(image_ids)
        records = [r for r in records if r.image_id in wanted]
    boxes = {r.image_id: r.boxes.astype(np.float64) for r in records}
    keep_ids = {r.image_id: np.flatnonzero(~r.invalid & ~r.zero_size).astype(np.int64) + 1 for r in records}
    keep = {s: keep_ids for s in SETTINGS}
    return EvalGroundTruth(Path(data_root) / f"{split} annotations", [r.image_id for r in records], boxes, keep)


def evaluate_predictions(predictions: dict[str, np.ndarray], ground_truth, progress: bool = True) -> dict[str, float]:
    """AP easy/medium/hard; a model that predicts nothing at all scores 0 (the evaluator
    refuses an empty prediction set)."""
    from detectors.evaluate import evaluate

    if not any(len(p) for p in predictions.values()):
        return {"easy": 0.0, "medium": 0.0, "hard": 0.0}
    return evaluate(predictions, ground_truth, progress=progress).as_dict()


def test(
    config: TrainConfig,
    weights: str | os.PathLike | dict,
    data_root: str | os.PathLike,
    split: str = "val",
    pred_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Build the config's spec, load `weights` (checkpoint path or dict), predict `split` at
    the recipe's test settings, optionally write the official prediction layout to pred_dir,
    and return {'easy', 'medium', 'hard'} AP (official protocol; for 'train', see
    split_ground_truth)."""
    from detectors.checkpoint import load_model_weights
    from detectors.data.widerface import load_eval_ground_truth
    from detectors.device import select_device
    from detectors.model import build

    if not Path(data_root).is_dir():
        raise UserError(f"dataset root not found: {data_root}")
    ground_truth = load_eval_ground_truth(data_root) if split == "val" else split_ground_truth(data_root, split)
    model = build(config.spec)
    load_model_weights(model, weights)
    model.to(select_device(device))
    t = config.recipe.test
    preds = predict_split(model, data_root, split, t.size, score_thresh=t.score_thresh,
                          iou_thresh=t.iou_thresh, max_det=t.max_det, progress=progress)
    if pred_dir is not None:
        _write_all(Path(pred_dir), preds)
    return evaluate_predictions(preds, ground_truth, progress=progress)


def _write_all(pred_dir: Path, preds: dict[str, np.ndarray]) -> None:
    from detectors.evaluate import write_predictions

    for image_id, arr in preds.items():
        write_predictions(pred_dir, image_id, arr[:, :4], arr[:, 4])
