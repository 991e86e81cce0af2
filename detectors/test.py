"""The test path: predict a split at the recipe's test protocol and evaluate it with the WIDER
protocol.

Preprocessing follows SCRFD's published test pipeline (mmdet `Resize(keep_ratio=True)` to
640x640, `Pad(size=(640, 640))`): every image is resized with bilinear interpolation so its
long side equals `test_size` (up or down), normalised ((pixel - 127.5) / 128, RGB) and padded
with 0 at the bottom/right to test_size x test_size. Detections are mapped back to original
pixels by dividing by the x / y scale actually applied, and written as x, y, w = x2 - x1,
h = y2 - y1, score (the official WIDER prediction layout, as SCRFD's test_widerface.py).

Other papers' protocols (recipe.test, docs/evaluation.md "Test protocols"): `resize: short`
makes the short side the size (FANet) and pads to a multiple of the model's largest stride;
several `sizes` and `flip` run one pass per (size, mirrored or not), each pass decoded with
its own NMS (after `pre_nms_top_k`, keeping `max_det`), mapped back to original pixels (a
mirrored pass's boxes mirrored back), and the passes merged by NMS or box voting. One size
without flip is exactly the single pass above.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from detectors.config import TrainConfig
from detectors.data.widerface import load_split, read_image
from detectors.errors import UserError
from detectors.postprocess import merge_detections, mirror_boxes

__all__ = ["preprocess", "predict_split", "predict_options", "split_ground_truth", "evaluate_predictions", "test"]


def preprocess(image: np.ndarray, test_size: int, resize: str = "long",
               pad_multiple: int = 32) -> tuple[torch.Tensor, tuple[float, float]]:
    """uint8 (H, W, 3) RGB -> ((3, H', W') normalised float32, (sx, sy)).

    resize 'long': the long side becomes test_size and the image is padded to test_size x
    test_size (SCRFD); 'short': the short side becomes test_size and the image is padded to a
    multiple of pad_multiple. (sx, sy) are the applied scales: a box in network pixels divided
    by them is in original image pixels.
    """
    h, w = image.shape[:2]
    scale = test_size / (max(h, w) if resize == "long" else min(h, w))
    new_w, new_h = max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    x = (x[0] - 127.5) / 128.0
    if resize == "long":
        out_h = out_w = test_size
    else:
        out_h, out_w = (-(-v // pad_multiple) * pad_multiple for v in (new_h, new_w))
    out = torch.zeros((3, out_h, out_w), dtype=torch.float32)
    out[:, :new_h, :new_w] = x
    return out, (new_w / w, new_h / h)


def predict_options(test_config) -> dict:
    """predict_split's keyword arguments for a recipe's TestConfig (its whole protocol)."""
    t = test_config
    return {"score_thresh": t.score_thresh, "iou_thresh": t.iou_thresh, "max_det": t.max_det,
            "resize": t.resize, "flip": t.flip, "pre_nms_top_k": t.pre_nms_top_k, "merge": t.merge}


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    data_root: str | os.PathLike,
    split: str = "val",
    test_size: int | Sequence[int] = 640,
    *,
    score_thresh: float = 0.02,
    iou_thresh: float = 0.45,
    max_det: int | None = None,
    resize: str = "long",
    flip: bool = False,
    pre_nms_top_k: int | None = None,
    merge: str = "nms",
    image_ids: list[str] | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Detections for every image of a split: image_id -> (N, 5) float array of
    x, y, w, h, score in original image pixels (score-descending after NMS).

    test_size: one size or several (a multi-scale test); with flip each size is also tested on
    the mirrored image; the passes are merged by `merge` ('nms' | 'vote') at iou_thresh
    (module docstring). image_ids restricts the images (default: all of the split). The model
    runs in eval mode on its own device; its training mode is restored afterwards.
    """
    sizes = (test_size,) if isinstance(test_size, int) else tuple(test_size)
    passes = [(size, mirrored) for size in sizes for mirrored in ((False, True) if flip else (False,))]
    records = load_split(data_root, split).records
    if image_ids is not None:
        wanted = set(image_ids)
        records = [r for r in records if r.image_id in wanted]
    device = next(model.parameters()).device
    strides = getattr(getattr(getattr(model, "spec", None), "anchors", None), "strides", None)
    pad = max(strides) if strides else 32
    # only models that take it (duck-typed test doubles, supernets) get the keyword
    extra = {} if pre_nms_top_k is None else {"pre_nms_top_k": pre_nms_top_k}
    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {}
    try:
        for start in tqdm(range(0, len(records), batch_size), desc=f"predict {split}",
                          disable=not progress, unit="batch"):
            chunk = records[start : start + batch_size]
            images = [read_image(r.path, f"{r.source}:{r.line}") for r in chunk]
            found: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in chunk]
            for size, mirrored in passes:
                prepared = [preprocess(im[:, ::-1] if mirrored else im, size, resize, pad) for im in images]
                for idx in _same_shape_groups([p[0].shape for p in prepared]):
                    batch = torch.stack([prepared[i][0] for i in idx]).to(device)
                    dets = model.predict(batch, score_thresh=score_thresh, iou_thresh=iou_thresh,
                                         max_det=max_det, **extra)
                    for i, det in zip(idx, dets):
                        sx, sy = prepared[i][1]
                        boxes = det.boxes.float().cpu().double() / _scale_divisor(sx, sy)
                        if mirrored:
                            boxes = mirror_boxes(boxes, images[i].shape[1])
                        found[i].append((boxes, det.scores.float().cpu().double()))
            for record, parts in zip(chunk, found):
                boxes, scores = parts[0] if len(parts) == 1 else merge_detections(
                    torch.cat([b for b, _ in parts]), torch.cat([s for _, s in parts]), merge,
                    iou_thresh, max_det)
                out[record.image_id] = _to_xywh(boxes, scores, 1.0, 1.0)
    finally:
        model.train(was_training)
    return out


def _scale_divisor(sx: float, sy: float) -> torch.Tensor:
    """The divisor of xyxy boxes in network pixels that gives original pixels."""
    return torch.tensor([sx, sy, sx, sy], dtype=torch.float64)


def _same_shape_groups(shapes: list) -> list[list[int]]:
    """Indices grouped by equal input shape, first-seen order (one batch per shape)."""
    groups: dict = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


def _to_xywh(boxes: torch.Tensor, scores: torch.Tensor, sx: float, sy: float) -> np.ndarray:
    b = boxes.detach().cpu().double().numpy().copy()  # float32 -> float64 is exact
    b[:, 0::2] /= sx
    b[:, 1::2] /= sy
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    return np.concatenate([xywh, scores.detach().cpu().double().numpy()[:, None]], 1)


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
    """AP easy/medium/hard and AP at precision >= 98% per subset (EvalResult.metrics: keys
    easy, medium, hard, ap_at_p98_easy, ap_at_p98_medium, ap_at_p98_hard); a model that
    predicts nothing at all scores 0 (the evaluator refuses an empty prediction set). A subset
    with no face has no AP (NaN), whatever was predicted, as the evaluator says."""
    from detectors.data.widerface import SETTINGS, EvalGroundTruth, load_eval_ground_truth
    from detectors.evaluate import evaluate

    if not any(len(p) for p in predictions.values()):
        gt = ground_truth if isinstance(ground_truth, EvalGroundTruth) else load_eval_ground_truth(ground_truth)
        return {**{s: 0.0 if gt.faces(s) else float("nan") for s in SETTINGS},
                **{f"ap_at_p98_{s}": 0.0 for s in SETTINGS}}
    return evaluate(predictions, ground_truth, progress=progress).metrics()


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
    the recipe's test protocol (recipe.test: sizes, resize, flip, merge, ...), optionally write
    the official prediction layout to pred_dir, and return AP and AP at precision >= 98% per
    subset (evaluate_predictions' keys; official protocol; for 'train', see
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
    preds = predict_split(model, data_root, split, t.scales, progress=progress, **predict_options(t))
    if pred_dir is not None:
        _write_all(Path(pred_dir), preds)
    return evaluate_predictions(preds, ground_truth, progress=progress)


def _write_all(pred_dir: Path, preds: dict[str, np.ndarray]) -> None:
    from detectors.evaluate import write_predictions

    for image_id, arr in preds.items():
        write_predictions(pred_dir, image_id, arr[:, :4], arr[:, 4])
