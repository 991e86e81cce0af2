"""WIDER FACE evaluation (Easy / Medium / Hard AP), the official protocol, vectorised.

Reproduces eval_tools/wider_eval.m of the official release:

1. Scores are min-max normalised once over all predictions of the dataset (norm_score.m).
2. Per image, predictions in descending score order (stable: ties keep file order). Each takes
   its highest-IoU ground-truth box among *all* boxes of the image (IoU with the +1 pixel
   convention, boxes x1, y1, x2 = x + w, y2 = y + h; but see the int32 note below: the
   official code takes the first box with IoU >= 0.5). If that IoU >= 0.5: a box outside the
   setting's keep list (gt_list) makes the prediction an ignored proposal; a kept box hit for
   the first time is matched (true positive); a repeated hit is a false positive.
3. Thresholds t_k = 1 - (k + 1) / 1000, k = 0..999. Per image, the last prediction with
   score >= t gives (non-ignored proposals up to it, matched boxes at it), summed over images.
   Images without predictions or without boxes contribute nothing but their kept faces.
4. precision = TP / proposals, recall = TP / faces (kept boxes of all images); AP is the VOC
   all-point area (precision envelope from the right).

Because scores are sorted per image, "proposals up to the last prediction with score >= t"
equals "proposals among the predictions with score >= t", so step 3 is one global sort,
cumulative sums and a searchsorted over the 1000 thresholds; only the IoU matching loops over
images (each image once, not once per threshold).

Two protocols (on mini val they differ by 1e-3 to 8e-3 AP, far more than the 1e-4 that
matters here; 1.4e-3 for the published SCRFD-2.5GF model):

protocol='matlab' (default): the official MATLAB code, arithmetic included, checked against it
run in GNU Octave (tests/test_evaluate.py). Two MATLAB class rules change the numbers:
- the score normalisation runs in single precision (max/min start from realmin/realmax
  ('single'), and single-double arithmetic yields single);
- the official .mat stores boxes as int32, so boxoverlap() computes in int32: the
  prediction's corners are rounded to integers for the intersection, the union is rounded,
  and the IoU itself is rounded to 0 or 1. Step 2 then takes the *first* box (file order) with
  IoU >= 0.5, not the best one (see overlaps_matlab_int). With a float ground truth (a .mat
  storing doubles) MATLAB computes in double, and so does this code.

protocol='python': the common Python port (WiderFace-Evaluation, used by the RetinaFace and
SCRFD repositories): double-precision IoU and scores, the box of highest IoU, the normalisation
range widened to include [0, 1] and taken over every predicted file (also those not in the
ground truth). Unlike the port, which assumes files are already sorted by score and crashes on
a missing file, both protocols sort (as MATLAB does) and score a missing file as no detections
(as MATLAB does).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from detectors.data.widerface import SETTINGS, EvalGroundTruth, load_eval_ground_truth
from detectors.errors import UserError
from detectors.predictions import read_predictions, write_predictions

__all__ = [
    "EvalResult",
    "PROTOCOLS",
    "THRESHOLDS",
    "evaluate",
    "image_bootstrap_ap",
    "overlaps_plus_one",
    "overlaps_matlab_int",
    "normalise_scores",
    "voc_ap",
    "MIN_PRECISION",
    "ap_at_precision",
    "precision_cut",
    "plot_pr",
    "read_predictions",
    "write_predictions",
]

IOU_THRESH = 0.5
THRESH_NUM = 1000
# Computed as the official code does (1 - t/thresh_num in double), so comparisons are identical.
THRESHOLDS = 1.0 - (np.arange(THRESH_NUM, dtype=np.float64) + 1.0) / THRESH_NUM
PROTOCOLS = ("matlab", "python")
# SCRFD Table 1 / Fig. 10(d): AP once the score threshold is raised to keep precision >= 98%
# (docs/evaluation.md, "AP at precision >= 98%").
MIN_PRECISION = 0.98


@dataclass(frozen=True, eq=False)
class EvalResult:
    """AP and PR curves per setting.

    ap: {'easy', 'medium', 'hard'} -> float. ap_at_p98: the same subsets -> AP at precision
    >= 98% (ap_at_precision; SCRFD Table 1). precision / recall: setting -> float64 (1000,), one
    point per threshold in THRESHOLDS order (descending threshold, so recall ascending;
    precision is NaN where no proposal passes). faces: kept boxes per setting. images: ground
    truth images; boxes: predicted boxes on them. missing: ground-truth images with no
    predictions given (scored as no detections); extra: predicted images not in the ground
    truth (not scored). protocol: 'matlab' or 'python'.
    """

    ap: dict[str, float]
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    faces: dict[str, int]
    images: int
    boxes: int
    missing: list[str]
    extra: list[str]
    protocol: str
    ap_at_p98: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        return {s: float(self.ap[s]) for s in SETTINGS}

    def metrics(self) -> dict[str, float]:
        """AP and AP at precision >= 98% per subset, flat: easy, medium, hard,
        ap_at_p98_easy, ap_at_p98_medium, ap_at_p98_hard (the keys `facenas test --json`,
        `facenas evaluate --json` and detectors.test.test return)."""
        return {**self.as_dict(), **{f"ap_at_p98_{s}": float(self.ap_at_p98[s]) for s in SETTINGS}}


def overlaps_plus_one(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """IoU (N, K) of predictions (N, 4) and ground truth (K, 4), both x1 y1 x2 y2.

    Official convention: widths are x2 - x1 + 1; pairs with no positive intersection width or
    height are 0 (0/0 from degenerate boxes is 0 as well).
    """
    p, g = pred_xyxy[:, None, :], gt_xyxy[None, :, :]
    w = np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + 1
    h = np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + 1
    inter = w * h
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = inter / (area_g + area_p - inter)
    o[(w <= 0) | (h <= 0) | np.isnan(o)] = 0.0
    return o


def normalise_scores(
    all_scores: np.ndarray, protocol: str = "matlab"
) -> tuple[float, float, Callable[[np.ndarray], np.ndarray]]:
    """The global min-max normalisation: (min, max, f) with f(scores) -> normalised float64."""
    lo, hi = float(np.min(all_scores)), float(np.max(all_scores))
    if protocol == "matlab":
        f32 = np.finfo(np.float32)
        lo32 = np.float32(min(float(f32.max), lo))
        hi32 = np.float32(max(float(f32.tiny), hi))

        def f(s: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return ((s.astype(np.float32) - lo32) / (hi32 - lo32)).astype(np.float64)

        return float(lo32), float(hi32), f
    if protocol == "python":
        lo, hi = min(1.0, lo), max(0.0, hi)

        def g(s: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return (s - lo) / (hi - lo)

        return lo, hi, g
    raise UserError(f"unknown evaluation protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: sentinels (0, 0) and (1, 0), precision envelope from the right.

    NaN precisions (no proposals) are skipped by the envelope, as MATLAB's max does.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def precision_cut(precision: np.ndarray, min_precision: float = MIN_PRECISION) -> int | None:
    """Index of the lowest threshold (highest recall) whose precision is still >= min_precision,
    or None when no threshold reaches it (NaN precision never does)."""
    with np.errstate(invalid="ignore"):
        idx = np.flatnonzero(np.asarray(precision) >= min_precision)
    return int(idx[-1]) if len(idx) else None


def ap_at_precision(recall: np.ndarray, precision: np.ndarray, min_precision: float = MIN_PRECISION) -> float:
    """AP with the score threshold raised until precision >= min_precision (SCRFD Table 1,
    "AP@Precision > 98%"): the curve (points in THRESHOLDS order) is cut at precision_cut,
    the last point at or above min_precision (recall R*), and the cut curve gets the VOC
    all-point area. That is the area under the precision envelope over recall [0, R*]; the
    recall beyond R* (reachable only below 98% precision) adds nothing. 0 if no point reaches
    min_precision.
    """
    k = precision_cut(precision, min_precision)
    if k is None:
        return 0.0
    return voc_ap(np.asarray(recall)[: k + 1], np.asarray(precision)[: k + 1])


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion to an integer class: round half away from zero, saturate at int32."""
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -(2.0**31), 2.0**31 - 1)


def overlaps_matlab_int(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """The overlaps (N, K) wider_eval.m's boxoverlap() returns when the ground truth is int32.

    MATLAB arithmetic mixing int32 and double yields int32 (rounded half away from zero), so
    with the official int32 boxes: the intersection uses the prediction's corners rounded to
    integers, the union is round(gt area + prediction area (double)) - intersection, and the
    "IoU" itself is rounded to 0 or 1. Hence `max` picks the *first* box (file order) whose IoU
    is >= 0.5, not the box of highest IoU.
    """
    p, g = pred_xyxy[:, None, :], gt_xyxy[None, :, :]
    r = _round_half_away(p)
    w = np.minimum(g[..., 2], r[..., 2]) - np.maximum(g[..., 0], r[..., 0]) + 1
    h = np.minimum(g[..., 3], r[..., 3]) - np.maximum(g[..., 1], r[..., 1]) + 1
    inter = _round_half_away(w * h)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    union = _round_half_away(area_g + area_p) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        o = _round_half_away(inter / union)  # 0/0 is NaN, which MATLAB converts to int 0
    o[(w <= 0) | (h <= 0) | np.isnan(o)] = 0.0
    return o


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.array(xywh[:, :4], dtype=np.float64)
    out[:, 2] = out[:, 0] + out[:, 2]
    out[:, 3] = out[:, 1] + out[:, 3]
    return out


def _match(pred: np.ndarray, gt: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Chosen ground-truth index (N,) per prediction and whether its overlap reaches 0.5."""
    overlaps = overlaps_matlab_int if integer else overlaps_plus_one
    o = overlaps(_xyxy(pred), _xyxy(gt))
    best = np.argmax(o, axis=1)
    return best, o[np.arange(len(o)), best] >= IOU_THRESH


def _flags(best: np.ndarray, hit: np.ndarray, keep: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """(counted proposal, true positive) per prediction for one setting's 1-based keep list."""
    kept = np.zeros(n_gt, dtype=bool)
    kept[keep - 1] = True
    on_kept = hit & kept[best]
    candidates = np.flatnonzero(on_kept)
    _, first = np.unique(best[candidates], return_index=True)  # first hit of each kept box
    tp = np.zeros(len(best), dtype=bool)
    tp[candidates[first]] = True
    return ~(hit & ~kept[best]), tp


def _pr(scores: np.ndarray, proposal: np.ndarray, tp: np.ndarray, faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every threshold from all scored predictions of the dataset."""
    ok = ~np.isnan(scores)  # NaN (constant-score normalisation) passes no threshold
    order = np.argsort(scores[ok], kind="stable")
    s = scores[ok][order]
    cum_p = np.concatenate(([0], np.cumsum(proposal[ok][order])))
    cum_t = np.concatenate(([0], np.cumsum(tp[ok][order])))
    below = np.searchsorted(s, THRESHOLDS, side="left")  # predictions with score < t
    props = (cum_p[-1] - cum_p[below]).astype(np.float64)
    tps = (cum_t[-1] - cum_t[below]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return tps / props, tps / faces


def _as_predictions(predictions, progress: bool) -> dict[str, np.ndarray]:
    if isinstance(predictions, (str, os.PathLike)):
        return read_predictions(predictions, progress=progress)
    out = {}
    for image_id, arr in predictions.items():
        if image_id.lower().endswith((".jpg", ".jpeg", ".png")):
            image_id = os.path.splitext(image_id)[0]  # "event/file.jpg" means "event/file"
        a = np.asarray(arr, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, 5)
        if a.ndim != 2 or a.shape[1] < 5:
            raise UserError(f"predictions for {image_id}: expected (N, 5) x y w h score, got shape {a.shape}")
        if not np.isfinite(a[:, :5]).all():
            raise UserError(f"predictions for {image_id}: non-finite box or score")
        out[image_id] = a[:, :5]
    return out


def _sorted_predictions(gt: EvalGroundTruth, preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ground-truth images with predictions -> (N, 5) sorted by descending score (stable)."""
    out = {}
    for image_id in gt.image_ids:
        p = preds.get(image_id)
        if p is not None and len(p):
            out[image_id] = p[np.argsort(-p[:, 4], kind="stable")]
    return out


def evaluate(
    predictions: dict[str, np.ndarray] | str | os.PathLike,
    gt_dir: str | os.PathLike | EvalGroundTruth,
    protocol: str = "matlab",
    progress: bool = True,
) -> EvalResult:
    """WIDER FACE AP (easy, medium, hard) of predictions.

    predictions: a prediction directory in the official layout, or {"event/file": (N, 5)
    x, y, w, h, score} (x, y top-left, pixels of the original image). gt_dir: the dataset root,
    its eval_tools/ground_truth directory, or a loaded EvalGroundTruth.
    """
    gt = gt_dir if isinstance(gt_dir, EvalGroundTruth) else load_eval_ground_truth(gt_dir)
    preds = _as_predictions(predictions, progress)
    extra = sorted(set(preds) - set(gt.boxes))
    if preds and len(extra) == len(preds):
        raise UserError(
            f"none of the {len(preds)} predicted images is in the ground truth at {gt.gt_dir} "
            f"(e.g. {extra[0]}); wrong split or layout?"
        )
    missing = [i for i in gt.image_ids if i not in preds]
    ranked = _sorted_predictions(gt, preds)
    if not ranked:
        raise UserError("no predicted boxes to evaluate: every prediction file is empty")
    pool = list(ranked.values())
    if protocol == "python":  # the Python port normalises over every file in the directory
        pool += [preds[i] for i in extra if len(preds[i])]
    _, _, norm = normalise_scores(np.concatenate([p[:, 4] for p in pool]), protocol)
    parts = _per_image_flags(gt, ranked, norm, protocol == "matlab" and gt.integer_boxes, progress)
    return _result(gt, parts, ranked, missing, extra, protocol)


def _per_image_flags(gt: EvalGroundTruth, ranked: dict, norm, integer: bool, progress: bool) -> dict:
    """setting -> (normalised scores, counted-proposal flags, TP flags), lists of per-image arrays."""
    from tqdm import tqdm

    parts = {s: ([], [], []) for s in SETTINGS}
    for image_id, p in tqdm(ranked.items(), desc="evaluating", disable=None if progress else True, leave=False):
        boxes = gt.boxes[image_id]
        if len(boxes) == 0:
            continue  # the official code skips images without boxes (their predictions too)
        best, hit = _match(p, boxes, integer)
        scores = norm(p[:, 4])
        for s in SETTINGS:
            prop, tp = _flags(best, hit, gt.keep[s][image_id], len(boxes))
            for acc, v in zip(parts[s], (scores, prop, tp)):
                acc.append(v)
    return parts


def _result(gt, parts, ranked, missing, extra, protocol) -> EvalResult:
    precision, recall, ap, ap98, faces = {}, {}, {}, {}, {}
    for s in SETTINGS:
        faces[s] = gt.faces(s)
        scores, prop, tp = (np.concatenate(v) if v else np.zeros(0) for v in parts[s])
        precision[s], recall[s] = _pr(scores, prop.astype(bool), tp.astype(bool), faces[s])
        ap[s] = voc_ap(recall[s], precision[s])
        ap98[s] = ap_at_precision(recall[s], precision[s])
    if all(np.isnan(p).all() for p in precision.values()):
        warnings.warn("all prediction scores are equal: min-max normalisation is undefined and "
                      "the official protocol then scores nothing", stacklevel=3)
    n_boxes = sum(len(p) for p in ranked.values())
    return EvalResult(ap, precision, recall, faces, len(gt.image_ids), n_boxes, missing, extra, protocol,
                      ap98)


def image_bootstrap_ap(
    predictions: list[dict[str, np.ndarray] | str | os.PathLike],
    gt_dir: str | os.PathLike | EvalGroundTruth,
    setting: str = "hard",
    samples: int = 1000,
    seed: int = 0,
    protocol: str = "matlab",
    draws: np.ndarray | None = None,
) -> np.ndarray:
    """Paired image bootstrap of WIDER AP: (samples, len(predictions)) float64, the AP of each
    prediction set on `samples` resamples of the ground truth's images, drawn with replacement
    and the same draws for every set (`draws`: (samples, images) indices into gt.image_ids to
    use instead of random ones). Each resample is scored as evaluate() scores a dataset
    (an image drawn twice counts its faces and its predictions twice; the score normalisation
    runs over the resample). The spread of AP_a - AP_b over the resamples is how much of a
    difference between two detectors comes from which images the val set happens to hold."""
    if setting not in SETTINGS:
        raise UserError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
    gt = gt_dir if isinstance(gt_dir, EvalGroundTruth) else load_eval_ground_truth(gt_dir)
    ids = gt.image_ids
    faces = np.array([len(gt.keep[setting][i]) for i in ids], dtype=np.int64)
    # Per set, its predictions sorted once by raw score with their image and flags. A resample
    # only reweights them (an image drawn k times counts k times), and the min-max
    # normalisation is monotone, so each resample's PR curve is weighted cumulative sums over
    # that one order: no re-sorting.
    layouts = []
    for preds in predictions:
        ranked = _sorted_predictions(gt, _as_predictions(preds, progress=False))
        parts: tuple[list, list, list, list] = ([], [], [], [])
        for k, image_id in enumerate(ids):
            p = ranked.get(image_id)
            if p is None:
                continue
            if len(gt.boxes[image_id]) == 0:  # as evaluate(): only its scores count (normalisation)
                prop = tp = np.zeros(len(p), dtype=bool)
            else:
                best, hit = _match(p, gt.boxes[image_id], protocol == "matlab" and gt.integer_boxes)
                prop, tp = _flags(best, hit, gt.keep[setting][image_id], len(gt.boxes[image_id]))
            for acc, v in zip(parts, (p[:, 4], np.full(len(p), k), prop, tp)):
                acc.append(v)
        scores, image, prop, tp = (np.concatenate(v) if v else np.zeros(0) for v in parts)
        order = np.argsort(scores, kind="stable")
        layouts.append((scores[order], image[order].astype(np.int64), prop[order].astype(np.float64),
                        tp[order].astype(np.float64)))
    if draws is None:
        draws = np.random.default_rng(seed).integers(0, len(ids), (samples, len(ids)))
    out = np.empty((len(draws), len(layouts)))
    for b, draw in enumerate(np.asarray(draws, dtype=np.int64)):
        times = np.bincount(draw, minlength=len(ids))
        n_faces = int(times @ faces)
        for m, (scores, image, prop, tp) in enumerate(layouts):
            weight = times[image]
            present = np.flatnonzero(weight)
            normed = None
            if len(present):
                normed = normalise_scores(scores[present[[0, -1]]], protocol)[2](scores)
            # no prediction drawn, or one score value (the normalisation is undefined): nothing
            # passes a threshold, AP 0 as evaluate() gives
            if normed is None or not np.all(np.isfinite(normed[present])):
                out[b, m] = 0.0
                continue
            cum_p = np.concatenate(([0.0], np.cumsum(weight * prop)))
            cum_t = np.concatenate(([0.0], np.cumsum(weight * tp)))
            below = np.searchsorted(normed, THRESHOLDS, side="left")  # weighted count below t
            with np.errstate(divide="ignore", invalid="ignore"):
                props, tps = cum_p[-1] - cum_p[below], cum_t[-1] - cum_t[below]
                out[b, m] = voc_ap(tps / n_faces, tps / props)
    return out


def plot_pr(result: EvalResult, out_png: str | os.PathLike) -> Path:
    """Precision-recall curves of the three settings in one PNG (written atomically); a dotted
    line marks precision 98% and a dot each curve's last point at or above it (the cut of
    ap_at_precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_png)
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: directory {out.parent} does not exist")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.axhline(MIN_PRECISION, color="grey", linestyle=":", linewidth=1)
    for s in SETTINGS:
        ok = ~np.isnan(result.precision[s])
        line, = ax.plot(result.recall[s][ok], result.precision[s][ok],
                        label=f"{s}  AP {result.ap[s]:.4f}  @P98 {result.ap_at_p98[s]:.4f}")
        k = precision_cut(result.precision[s])
        if k is not None:
            ax.plot([result.recall[s][k]], [result.precision[s][k]], "o", color=line.get_color(), markersize=5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="WIDER FACE val")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out
