"""The WIDER FACE evaluator: APs computed on paper, a slow loop reference, and real ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.data.widerface import SETTINGS, EvalGroundTruth, load_eval_ground_truth
from detectors.errors import UserError
from detectors.evaluate import (
    THRESHOLDS,
    evaluate,
    overlaps_matlab_int,
    overlaps_plus_one,
    read_predictions,
    voc_ap,
    write_predictions,
)


def _gt(boxes: dict[str, list], keep: dict[str, list] | None = None) -> EvalGroundTruth:
    """Ground truth with the same keep list (1-based) in all three settings."""
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in boxes.items()}
    keep = keep or {k: list(range(1, len(v) + 1)) for k, v in arrays.items()}
    per = {k: np.asarray(keep.get(k, []), dtype=np.int64) for k in arrays}
    return EvalGroundTruth(None, list(arrays), arrays, {s: dict(per) for s in SETTINGS})


def _pred(*rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


A, B, C, D = [0, 0, 20, 20], [100, 0, 20, 20], [0, 100, 20, 20], [100, 100, 20, 20]


def _ap(preds, gt, protocol="matlab") -> float:
    result = evaluate(preds, gt, protocol=protocol, progress=False)
    assert result.ap["easy"] == result.ap["medium"] == result.ap["hard"]  # same keep lists
    return result.ap["easy"]


# ---- hand-computed cases -------------------------------------------------------------------


def test_iou_uses_plus_one_pixel_convention():
    gt = np.array([[0, 0, 10, 10]], dtype=float)  # x1 y1 x2 y2
    # overlap 6 x 11 pixels of two 11 x 11 boxes: 66 / (121 + 121 - 66)
    assert overlaps_plus_one(np.array([[5, 0, 15, 10.0]]), gt)[0, 0] == pytest.approx(66 / 176, abs=1e-15)
    # boxes that touch at x = 10 share one pixel column under the +1 convention
    assert overlaps_plus_one(np.array([[10, 0, 20, 10.0]]), gt)[0, 0] == pytest.approx(11 / 231, abs=1e-15)
    assert overlaps_plus_one(np.array([[11, 0, 20, 10.0]]), gt)[0, 0] == 0.0


def test_perfect_predictions_give_ap_one():
    gt = _gt({"e/1": [A, B], "e/2": [C]})
    preds = {"e/1": _pred(A + [0.9], B + [0.6]), "e/2": _pred(C + [0.3])}
    assert _ap(preds, gt) == 1.0


def test_half_the_kept_boxes_gives_half():
    gt = _gt({"e/1": [A, B], "e/2": [C, D]})
    preds = {"e/1": _pred(A + [0.9]), "e/2": _pred(D + [0.4])}
    assert _ap(preds, gt) == 0.5


def test_image_ids_may_carry_the_jpg_extension():
    gt = _gt({"e/1": [A], "e/2": [B]})
    assert _ap({"e/1.jpg": _pred(A + [0.9]), "e/2": _pred(B + [0.5])}, gt) == 1.0


def test_image_without_predictions_still_counts_its_faces():
    gt = _gt({"e/1": [A], "e/2": [B]})
    absent = evaluate({"e/1": _pred(A + [0.9], B + [0.1])}, gt, progress=False)
    assert absent.missing == ["e/2"] and absent.ap["hard"] == 0.5
    empty = {"e/1": _pred(A + [0.9], B + [0.1]), "e/2": np.zeros((0, 5))}
    assert _ap(empty, gt) == 0.5


def test_hit_on_ignored_box_is_neither_tp_nor_fp():
    gt = _gt({"e/1": [A, B]}, keep={"e/1": [1]})  # B is not kept
    # normalised scores: false positive 1.0, hit on B 0.5, hit on A 0.0. Above t = 0 only the
    # false positive counts (P 0); at t = 0: proposals {FP, A} -> P 1/2, R 1. AP = 1/2.
    preds = {"e/1": _pred([300, 300, 20, 20, 0.9], B + [0.7], A + [0.5])}
    assert _ap(preds, gt) == pytest.approx(0.5, abs=1e-15)
    # if B were kept the same predictions give P 2/3 at R 1 (and 0 before): AP 2/3 ...
    assert _ap(preds, _gt({"e/1": [A, B]})) == pytest.approx(2 / 3, abs=1e-15)
    # ... and a prediction on the ignored box alone changes nothing for perfect predictions
    assert _ap({"e/1": _pred(B + [0.9], A + [0.5])}, gt) == 1.0


def test_duplicate_detection_is_a_false_positive():
    gt = _gt({"e/1": [A, B]})
    # A 0.9 -> 1.0, duplicate of A 0.8 -> 0.5, B 0.7 -> 0.0 (normalised).
    # t > 0.5: P 1, R 1/2; 0 < t <= 0.5: P 1/2, R 1/2; t = 0: P 2/3, R 1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    preds = {"e/1": _pred(A + [0.9], [1, 1, 20, 20, 0.8], B + [0.7])}
    assert _ap(preds, gt) == pytest.approx(5 / 6, abs=1e-15)


def test_each_prediction_takes_its_best_box_even_if_already_matched():
    # The official protocol does not fall back to the second-best box: both predictions
    # overlap A best, so the second is a duplicate although it also overlaps B by IoU >= 0.5.
    a, b = [0, 0, 20, 20], [4, 0, 20, 20]
    gt = _gt({"e/1": [a, b]})
    # IoU of [1, 0, 20, 20] with a: 420 / 462, with b: 378 / 504 = 0.75
    assert _ap({"e/1": _pred([1, 0, 20, 20, 0.9], [1, 0, 20, 20, 0.5])}, gt) == pytest.approx(0.5)


def test_official_int32_arithmetic_takes_first_box_over_half():
    # The official .mat boxes are int32, so MATLAB's boxoverlap rounds the IoU to 0 or 1 and
    # `max` returns the first box with IoU >= 0.5. The prediction [3, 0, 20, 20] has IoU 0.75
    # with box 1 (not kept) and 420/462 = 0.91 with box 2 (kept): MATLAB ignores it (AP 0),
    # the Python port matches box 2 (AP 1).
    gt = _gt({"e/1": [[0, 0, 20, 20], [4, 0, 20, 20]]}, keep={"e/1": [2]})
    integer = EvalGroundTruth(None, gt.image_ids, gt.boxes, gt.keep, integer_boxes=True)
    preds = {"e/1": _pred([3, 0, 20, 20, 0.9], [500, 0, 9, 9, 0.1])}
    assert _ap(preds, integer, "matlab") == 0.0
    assert _ap(preds, integer, "python") == 1.0
    assert _ap(preds, gt, "matlab") == 1.0  # float boxes: MATLAB's arithmetic is double


def test_official_int32_arithmetic_rounds_union():
    # gt 10 x 10 px (area 100); prediction x2 = 4.02: its area is 5.02 * 10 = 50.2 (double),
    # the intersection uses x2 rounded to 4: 5 * 10 = 50. Union = round(150.2) - 50 = 100, so
    # the overlap is exactly 0.5 and counts (the double union 100.2 would give 0.499).
    integer = EvalGroundTruth(None, ["e/1"], {"e/1": np.array([[0.0, 0, 9, 9]])},
                              {s: {"e/1": np.array([1])} for s in SETTINGS}, integer_boxes=True)
    o = overlaps_matlab_int(np.array([[0, 0, 4.02, 9]]), np.array([[0.0, 0, 9, 9]]))
    assert o.tolist() == [[1.0]]
    assert _ap({"e/1": _pred([0, 0, 4.02, 9, 0.9], [300, 0, 9, 9, 0.1])}, integer) == 1.0


def test_predictions_on_images_without_boxes_are_not_counted():
    gt = _gt({"e/1": [A], "e/0": []})
    preds = {"e/1": _pred(A + [0.5]), "e/0": _pred(B + [0.9])}
    assert _ap(preds, gt) == 1.0


def test_tied_duplicates_count_once():
    gt = _gt({"e/1": [A]})
    # equal scores pass every threshold together: one match, one FP -> P 1/2 at R 1.
    preds = {"e/1": _pred(A + [0.5], A + [0.5], [300, 300, 5, 5, 0.1])}
    assert _ap(preds, gt) == pytest.approx(0.5)


def test_voc_ap_envelope_by_hand():
    # recall 0.2 at P 0.5, 0.4 at P 1.0, 1.0 at P 0.25 -> envelope 1, 1, 0.25
    assert voc_ap(np.array([0.2, 0.4, 1.0]), np.array([0.5, 1.0, 0.25])) == pytest.approx(0.4 + 0.6 * 0.25)
    assert voc_ap(np.array([0.0, 0.5]), np.array([np.nan, 1.0])) == 0.5


def test_user_errors():
    gt = _gt({"e/1": [A]})
    with pytest.raises(UserError, match="none of the 1 predicted images"):
        evaluate({"x/9": _pred(A + [0.5])}, gt, progress=False)
    with pytest.raises(UserError, match="every prediction file is empty"):
        evaluate({"e/1": np.zeros((0, 5))}, gt, progress=False)
    with pytest.raises(UserError, match="protocol"):
        evaluate({"e/1": _pred(A + [0.5])}, gt, protocol="octave", progress=False)
    with pytest.raises(UserError, match="e/1: non-finite"):
        evaluate({"e/1": _pred(A + [np.nan])}, gt, progress=False)


# ---- slow loop reference, a direct transcription of the official MATLAB ---------------------


def _ref_normalise(scores_per_image, protocol):
    flat = [s for v in scores_per_image for s in v]
    if protocol == "matlab":
        hi, lo = np.float32(np.finfo(np.float32).tiny), np.float32(np.finfo(np.float32).max)
        for s in flat:
            hi, lo = np.float32(max(hi, s)), np.float32(min(lo, s))
        return lambda s: float((np.float32(s) - lo) / (hi - lo))
    hi, lo = 0.0, 1.0
    for s in flat:
        hi, lo = max(hi, s), min(lo, s)
    return lambda s: (s - lo) / (hi - lo)


def _ref_iou(p, g):
    iw = min(p[2], g[2]) - max(p[0], g[0]) + 1
    ih = min(p[3], g[3]) - max(p[1], g[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (g[2] - g[0] + 1) * (g[3] - g[1] + 1) + (p[2] - p[0] + 1) * (p[3] - p[1] + 1) - iw * ih
    return iw * ih / ua


def _int32(x: float) -> int:
    """MATLAB's double -> int32: nearest, ties away from zero (saturation never reached here)."""
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return 2**31 - 1 if x > 0 else -(2**31)
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _ref_iou_int32(p, g):
    """boxoverlap(a, b) with a the int32 ground truth row g, b the double prediction row p."""
    x1, y1 = max(g[0], _int32(p[0])), max(g[1], _int32(p[1]))  # max(int32, double) is int32
    x2, y2 = min(g[2], _int32(p[2])), min(g[3], _int32(p[3]))
    w, h = x2 - x1 + 1, y2 - y1 + 1
    inter = w * h
    aarea = (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
    barea = (p[2] - p[0] + 1) * (p[3] - p[1] + 1)  # double
    union = _int32(aarea + barea) - inter  # int32 + double is int32
    o = _int32(inter / union) if union != 0 else (0 if inter == 0 else _int32(math.copysign(math.inf, inter)))
    return 0 if w <= 0 or h <= 0 else o


def _ref_image(pred, gt_boxes, keep, integer):
    """pred_recall and proposal_list of image_evaluation in wider_eval.m."""
    recall_list = [0] * len(gt_boxes)
    pred_recall, proposal_list = [], []
    iou = _ref_iou_int32 if integer else _ref_iou
    for p in pred:
        pb = [p[0], p[1], p[0] + p[2], p[1] + p[3]]
        ious = [iou(pb, [int(g[0]), int(g[1]), int(g[0] + g[2]), int(g[1] + g[3])] if integer
                    else [g[0], g[1], g[0] + g[2], g[1] + g[3]]) for g in gt_boxes]
        best = ious.index(max(ious))  # first maximum, as MATLAB's max
        proposal = 1
        if ious[best] >= 0.5:
            if best + 1 not in keep:
                recall_list[best], proposal = -1, -1
            elif recall_list[best] == 0:
                recall_list[best] = 1
        proposal_list.append(proposal)
        pred_recall.append(sum(1 for r in recall_list if r == 1))
    return pred_recall, proposal_list


def _reference(preds, gt, setting, protocol):
    ranked = {}
    for i in gt.image_ids:
        p = [list(r) for r in preds.get(i, [])]
        if p:
            ranked[i] = sorted(p, key=lambda r: -r[4])  # Python's sort is stable
    pool = ranked.values() if protocol == "matlab" else preds.values()  # port: every file
    norm = _ref_normalise([[r[4] for r in v] for v in pool], protocol)
    curve, faces = np.zeros((1000, 2)), 0
    for i in gt.image_ids:
        keep = set(gt.keep[setting][i].tolist())
        faces += len(keep)
        if len(gt.boxes[i]) == 0 or i not in ranked:
            continue
        pred = [r[:4] + [norm(r[4])] for r in ranked[i]]
        integer = protocol == "matlab" and gt.integer_boxes
        pred_recall, proposal_list = _ref_image(pred, gt.boxes[i], keep, integer)
        for t in range(1000):
            thresh = 1 - (t + 1) / 1000
            passing = [k for k, r in enumerate(pred) if r[4] >= thresh]
            if passing:
                last = passing[-1]
                curve[t, 0] += sum(1 for q in proposal_list[: last + 1] if q == 1)
                curve[t, 1] += pred_recall[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = curve[:, 1] / curve[:, 0], curve[:, 1] / faces
    mrec, mpre = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
    for k in range(len(mpre) - 1, 0, -1):  # MATLAB's max ignores NaN
        a, b = mpre[k - 1], mpre[k]
        mpre[k - 1] = b if np.isnan(a) else (a if np.isnan(b) else max(a, b))
    return sum((mrec[k] - mrec[k - 1]) * mpre[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1])


def _random_case(rng, integer):
    """Crowded images with near-duplicate boxes, quantised scores (ties, threshold hits)."""
    boxes, keep, preds = {}, {s: {} for s in SETTINGS}, {}
    for n in range(int(rng.integers(8, 16))):
        k = int(rng.integers(0, 9))
        xy = rng.integers(0, 60, (k, 2)).astype(float)
        g = np.c_[xy, rng.integers(-1, 30, (k, 2))]  # includes w or h <= 0, as the official files
        image_id = f"ev{n % 3}/img{n}"
        boxes[image_id] = g
        for s, frac in zip(SETTINGS, (0.3, 0.6, 0.9)):
            keep[s][image_id] = np.flatnonzero(rng.random(k) < frac) + 1
        if rng.random() < 0.15:
            continue  # no prediction file for this image
        src = g[rng.integers(0, k, int(rng.integers(0, 14)))] if k else np.zeros((0, 4))
        src = np.r_[src, rng.integers(0, 80, (int(rng.integers(0, 4)), 4))]
        jitter = src + rng.normal(0, 2.5, src.shape).round(1)
        score = rng.choice([rng.random(len(src)).round(2), rng.random(len(src))]) * 2
        preds[image_id] = np.c_[jitter, score]
    # an image not in the ground truth: unscored, but the Python port normalises with it
    preds["ev9/stray"] = np.c_[rng.integers(0, 80, (3, 4)), [rng.random(), 2.5, 3.0]]
    gt = EvalGroundTruth(None, list(boxes), boxes, keep, integer_boxes=integer)
    return preds, gt


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_loop_reference(seed):
    rng = np.random.default_rng(seed)
    preds, gt = _random_case(rng, integer=seed % 3 != 0)  # int32 boxes, as the official .mat
    for protocol in ("matlab", "python"):
        result = evaluate(preds, gt, protocol=protocol, progress=False)
        for s in SETTINGS:
            assert abs(result.ap[s] - _reference(preds, gt, s, protocol)) <= 1e-12, (seed, protocol, s)
    # the cases exercise what they should: ignored hits, duplicates, misses
    assert 0.0 < result.ap["hard"] < 1.0


def test_protocols_differ_only_by_float32_rounding_at_thresholds():
    # scores 0, 0.7, 1: in double 0.7 passes t = 0.7, in MATLAB's single precision it is 0.69999999
    gt = _gt({"e/1": [A, B, C]})
    preds = {"e/1": _pred(A + [1.0], [300, 300, 9, 9, 0.7], B + [0.7], C + [0.0])}
    m = evaluate(preds, gt, protocol="matlab", progress=False)
    p = evaluate(preds, gt, protocol="python", progress=False)
    k = int(np.flatnonzero(np.isclose(THRESHOLDS, 0.7))[0])
    assert (m.recall["easy"][k], p.recall["easy"][k]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert m.ap == p.ap  # the curves differ at one threshold only, the AP not here


# ---- files and real ground truth ------------------------------------------------------------


def test_written_predictions_read_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    boxes, scores = rng.random((7, 4)) * 300, rng.random(7)
    path = write_predictions(tmp_path, "3--Riot/3_Riot_Riot_3_1", boxes, scores)
    assert path == tmp_path / "3--Riot" / "3_Riot_Riot_3_1.txt"
    lines = path.read_text().splitlines()
    assert lines[:2] == ["3_Riot_Riot_3_1.jpg", "7"] and len(lines) == 9
    write_predictions(tmp_path, "3--Riot/empty", np.zeros((0, 4)), np.zeros(0))
    back = read_predictions(tmp_path, progress=False)
    assert set(back) == {"3--Riot/3_Riot_Riot_3_1", "3--Riot/empty"} and back["3--Riot/empty"].shape == (0, 5)
    np.testing.assert_array_equal(back["3--Riot/3_Riot_Riot_3_1"], np.c_[boxes, scores])
    assert [p.name for p in (tmp_path / "3--Riot").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("a.jpg\n2\n1 2 3 4 0.5\n1 2 3 4 high\n", 4, "non-numeric score"),
        ("a.jpg\n3\n1 2 3 4 0.5\n", 2, "count says 3 boxes but 1"),
        ("a.jpg\nmany\n", 2, "number of boxes"),
        ("a.jpg\n1\n1 2 3 0.5\n", 3, "expected 'x y w h score'"),
        ("a.jpg\n1\n1 2 3 4 nan\n", 3, "finite"),
    ],
)
def test_bad_prediction_file_names_file_and_line(tmp_path, body, line, words):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "a.txt").write_text(body)
    with pytest.raises(UserError) as err:
        read_predictions(tmp_path, progress=False)
    assert f"a.txt:{line}:" in str(err.value) and words in str(err.value)


def test_prediction_dir_layout_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_predictions(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("a.jpg\n0\n")
    with pytest.raises(UserError, match=r"no prediction files <event>/<image>\.txt .*found a\.txt"):
        read_predictions(tmp_path)


@pytest.fixture(scope="module")
def mini_gt(widerface_mini):
    return load_eval_ground_truth(widerface_mini)


def test_mini_exact_ground_truth_scores_one(mini_gt, tmp_path):
    rng = np.random.default_rng(0)
    for image_id, boxes in mini_gt.boxes.items():
        write_predictions(tmp_path, image_id, boxes, rng.uniform(0.02, 1.0, len(boxes)))
    result = evaluate(tmp_path, mini_gt.gt_dir, progress=False)
    assert result.as_dict() == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    assert result.faces == {"easy": 520, "medium": 968, "hard": 2006}
    assert result.missing == [] and result.extra == [] and result.boxes == 2228


def test_mini_dropped_predictions_ap_equals_kept_fraction(mini_gt):
    # Exact boxes for a random half of the faces, none elsewhere: precision 1 throughout, so AP
    # equals the recall reached = the fraction of each setting's kept faces that was predicted.
    rng = np.random.default_rng(1)
    chosen = {i: rng.random(len(b)) < 0.5 for i, b in mini_gt.boxes.items()}
    preds = {i: np.c_[b[chosen[i]], rng.uniform(0.1, 1, chosen[i].sum())] for i, b in mini_gt.boxes.items()}
    result = evaluate(preds, mini_gt, progress=False)
    for s in SETTINGS:
        hit = sum(chosen[i][mini_gt.keep[s][i] - 1].sum() for i in mini_gt.image_ids)
        assert result.ap[s] == pytest.approx(hit / mini_gt.faces(s), abs=1e-12)


def test_mini_noise_lowers_ap_monotonically(mini_gt):
    # Boxes jittered by a growing fraction of their size (random scores): more boxes fall
    # below IoU 0.5 and become false positives, so AP must fall as the noise grows.
    rng = np.random.default_rng(2)
    aps = []
    for sigma in (0.0, 0.1, 0.25):
        preds = {}
        for i, b in mini_gt.boxes.items():
            noise = rng.normal(0, sigma, b.shape) * np.maximum(b[:, 2:3], 1)
            preds[i] = np.c_[b + noise, rng.uniform(0.1, 1, len(b))]
        aps.append(evaluate(preds, mini_gt, progress=False).ap)
    for s in SETTINGS:
        assert aps[0][s] == 1.0 and aps[0][s] > aps[1][s] > aps[2][s], (s, aps)
    assert aps[2]["easy"] < 0.8


def _write_octave_case(gt: EvalGroundTruth, out) -> None:
    """Predictions from the mini val ground truth: jittered boxes (some dropped), false
    positives, 3-decimal scores (many on thresholds), 13 images without a file, 7 empty."""
    rng = np.random.default_rng(2024)
    for n, (image_id, boxes) in enumerate(gt.boxes.items()):
        if n % 20 == 7:
            continue
        kept = boxes[rng.random(len(boxes)) < 0.8] if n % 40 != 3 else boxes[:0]
        jitter = kept + rng.normal(0, 0.12, kept.shape) * np.maximum(kept[:, 2:3], 1)
        k = 0 if n % 40 == 3 else 6
        false = np.c_[rng.uniform(0, 1000, (k, 2)), rng.uniform(4, 60, (k, 2))]
        scores = np.r_[rng.uniform(0.25, 1.0, len(kept)), rng.uniform(0.0, 0.6, k)].round(3)
        write_predictions(out, image_id, np.r_[jitter, false], scores)


# APs of _write_octave_case's files by the official MATLAB code (eval_tools: read_pred.m,
# norm_score.m, evaluation() of wider_eval.m without its save, boxoverlap.m, VOCap.m) run
# unmodified in GNU Octave 7.3 against widerface-mini's eval_tools/ground_truth, 2026-11-23.
OFFICIAL_OCTAVE = {"easy": 0.37695758687549519, "medium": 0.47354096571744314, "hard": 0.56558882909304109}


def test_mini_matches_official_code_run_in_octave(mini_gt, tmp_path):
    _write_octave_case(mini_gt, tmp_path)
    official = evaluate(tmp_path, mini_gt.gt_dir, progress=False)
    assert len(official.missing) == 13
    for s in SETTINGS:
        assert official.ap[s] == pytest.approx(OFFICIAL_OCTAVE[s], abs=1e-12)
    # the Python port's arithmetic (float IoU, best box) is off by more than the 1e-4 asked
    port = evaluate(tmp_path, mini_gt.gt_dir, protocol="python", progress=False)
    assert max(abs(port.ap[s] - OFFICIAL_OCTAVE[s]) for s in SETTINGS) > 1e-3


def test_predicting_nothing_scores_as_a_prediction_that_misses_every_face():
    """0 where a subset has faces, NaN where it has none (the evaluator's answer for a miss;
    it refuses an empty prediction set, so evaluate_predictions answers that case itself)."""
    from detectors.test import evaluate_predictions

    arrays = {"e/1": np.asarray([A, B], dtype=np.float64)}
    keep = {"easy": {"e/1": np.zeros(0, np.int64)}, "medium": {"e/1": np.array([1])},
            "hard": {"e/1": np.array([1, 2])}}
    gt = EvalGroundTruth(None, ["e/1"], arrays, keep)
    nothing = evaluate_predictions({"e/1": _pred()}, gt, progress=False)
    miss = evaluate_predictions({"e/1": _pred(D + [0.9], C + [0.8])}, gt, progress=False)
    assert nothing.keys() == miss.keys()
    for key in nothing:
        assert nothing[key] == miss[key] or (math.isnan(nothing[key]) and math.isnan(miss[key])), key
    assert math.isnan(nothing["easy"]) and nothing["medium"] == nothing["hard"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_image_bootstrap_scores_each_resample_as_its_own_dataset(seed):
    """Every resample's AP equals evaluate() on a ground truth that holds the drawn images
    (repeats as copies under new names) and their predictions; the identity draw gives the
    plain AP; the draws are shared by both prediction sets (paired)."""
    from detectors.evaluate import image_bootstrap_ap

    rng = np.random.default_rng(seed)
    preds, gt = _random_case(rng, integer=seed % 2 == 0)
    other = {k: v.copy() for k, v in preds.items()}
    for v in other.values():  # a second detector: same boxes, other scores
        v[:, 4] = rng.random(len(v))
    n = len(gt.image_ids)
    draws = np.stack([np.arange(n), *(rng.integers(0, n, n) for _ in range(3))])
    got = image_bootstrap_ap([preds, other], gt, "hard", draws=draws)
    assert got.shape == (4, 2)
    for b, draw in enumerate(draws):
        names = [f"{gt.image_ids[i]}#{j}" for j, i in enumerate(draw)]
        copy = EvalGroundTruth(None, names, {m: gt.boxes[gt.image_ids[i]] for m, i in zip(names, draw)},
                               {s: {m: gt.keep[s][gt.image_ids[i]] for m, i in zip(names, draw)}
                                for s in SETTINGS}, integer_boxes=gt.integer_boxes)
        for k, p in enumerate((preds, other)):
            moved = {m: p[gt.image_ids[i]] for m, i in zip(names, draw) if gt.image_ids[i] in p}
            want = evaluate(moved, copy, progress=False).ap["hard"] if any(len(v) for v in moved.values()) else 0.0
            assert got[b, k] == pytest.approx(want, abs=1e-12), (b, k)
    assert got[0, 0] == pytest.approx(evaluate(preds, gt, progress=False).ap["hard"], abs=1e-12)
    # random draws: reproducible by seed, and they move the AP
    again = image_bootstrap_ap([preds, other], gt, "hard", samples=20, seed=1)
    assert np.array_equal(again, image_bootstrap_ap([preds, other], gt, "hard", samples=20, seed=1))
    assert again[:, 0].std() > 0
