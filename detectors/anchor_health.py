"""Is every anchor of a trained detector alive? Each anchor's best well-placed score on real faces.

SCRFD's head predicts, at every location of a level, one score and one box per anchor (two
anchors per location: scales 1 and 2). Its box loss weighs each positive by its own detached
score, normalised by the sum over the batch (GFL), so the anchors race: one whose boxes fall
behind early gets a low score, hence almost no box gradient, hence boxes that never improve,
and its classifier can stay at its initialisation for the whole run. On widerface-mini at
320 px (docs/proxies.md, "Dead anchors"), one of the first 14 truth runs did this, and so did
the published SCRFD-2.5GF in both seeds: the second anchor scored 0 on every face, and the
faces it owns (32-64 and 128-256 px) were found half as often as by a healthy run.

`anchor_scores` measures it directly: for every face counted in WIDER's hard setting on some
val images, and for every (level, anchor), the highest score among that anchor's predictions
whose box overlaps the face at IoU >= `iou`; averaged over faces. `anchor_index_scores` reduces
it to one number per anchor index (the best level per face), and `dead_anchors` names the
anchor indices whose score is under `ratio` times the best index's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from detectors.anchors import anchor_points, anchor_strides
from detectors.detector import HeadOutputs
from detectors.postprocess import distance_to_boxes

__all__ = ["AnchorScores", "face_best_scores", "anchor_scores", "anchor_index_scores", "dead_anchors"]


@dataclass
class AnchorScores:
    """best: (F, L, A) per face, level and anchor index, the best score of a prediction of that
    anchor with IoU >= iou with the face (0 when none); face_px: (F,) face heights in network
    pixels at the test size."""

    best: np.ndarray
    face_px: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """(L, A) mean over faces."""
        return self.best.mean(0) if len(self.best) else np.zeros(self.best.shape[1:])


def face_best_scores(out: HeadOutputs, anchors, faces: torch.Tensor, iou: float = 0.5,
                     image: int = 0) -> np.ndarray:
    """(F, L, A): for faces (F, 4) xyxy in network pixels of image `image` of `out`, the best
    sigmoid score per level and anchor index among predictions with IoU >= `iou`."""
    a = anchors.num_anchors
    levels = len(out.cls_logits)
    best = np.zeros((len(faces), levels, a))
    if not len(faces):
        return best
    points = anchor_points(anchors, out.feature_sizes, faces.device)
    strides = anchor_strides(anchors, out.feature_sizes, faces.device)
    for lv in range(levels):
        scores = out.cls_logits[lv][image, :, 0].float().sigmoid()  # (H*W*A,)
        boxes = distance_to_boxes(points[lv], out.box_dists[lv][image].float(), strides[lv])
        overlap = box_iou(faces.float(), boxes)  # (F, H*W*A); rows anchor-fastest
        for k in range(a):
            placed = overlap[:, k::a] >= iou
            s = torch.where(placed, scores[k::a].expand_as(placed), torch.zeros((), dtype=scores.dtype))
            best[:, lv, k] = s.max(1).values.cpu().numpy()
    return best


@torch.no_grad()
def anchor_scores(model: torch.nn.Module, data_root: str | os.PathLike, images: int | None = 50,
                  test_size: int = 640, iou: float = 0.5) -> AnchorScores:
    """face_best_scores over the hard-setting faces of the first `images` val images (None:
    all), each resized as the SCRFD test does (long side `test_size`, detectors.test.preprocess).
    The model runs in eval mode on its own device; its mode is restored afterwards."""
    from detectors.data.widerface import load_eval_ground_truth, load_split, read_image
    from detectors.test import preprocess

    truth = load_eval_ground_truth(data_root)
    records = load_split(data_root, "val").records
    records = records if images is None else records[:images]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows, heights = [], []
    try:
        for r in records:
            keep = truth.keep["hard"].get(r.image_id)
            if keep is None or not len(keep):
                continue
            x, (sx, sy) = preprocess(read_image(r.path, f"{r.source}:{r.line}"), test_size)
            out = model(x[None].to(device))
            b = truth.boxes[r.image_id][np.asarray(keep) - 1].astype(np.float64)
            faces = np.c_[b[:, 0] * sx, b[:, 1] * sy, (b[:, 0] + b[:, 2]) * sx, (b[:, 1] + b[:, 3]) * sy]
            rows.append(face_best_scores(out, model.spec.anchors, torch.from_numpy(faces).to(device), iou))
            heights.append(b[:, 3] * sy)
    finally:
        model.train(was_training)
    levels, a = len(model.spec.anchors.strides), model.spec.anchors.num_anchors
    best = np.concatenate(rows) if rows else np.zeros((0, levels, a))
    return AnchorScores(best=best, face_px=np.concatenate(heights) if heights else np.zeros(0))


def anchor_index_scores(scores: AnchorScores) -> np.ndarray:
    """(A,): per anchor index, the mean over faces of its best score on any level."""
    return scores.best.max(1).mean(0) if len(scores.best) else np.zeros(scores.best.shape[2])


def dead_anchors(per_index: np.ndarray, ratio: float = 0.25) -> list[int]:
    """Anchor indices whose score is below `ratio` times the best index's."""
    top = float(np.max(per_index)) if len(per_index) else 0.0
    return [i for i, v in enumerate(per_index) if top > 0 and v < ratio * top]
