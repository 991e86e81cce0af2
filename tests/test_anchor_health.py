"""detectors.anchor_health: each anchor's best well-placed score on faces, by hand and on a
built detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.anchor_health import (AnchorScores, anchor_index_scores, anchor_scores, dead_anchors,
                                     face_best_scores)
from detectors.detector import HeadOutputs
from detectors.spec import AnchorSpec


def _outputs(logits, dists):
    """One image, one stride-8 level of 2 x 2 locations, two anchors (rows location-major,
    anchor fastest: row 2 * location + anchor)."""
    return HeadOutputs(cls_logits=[torch.tensor(logits, dtype=torch.float32)[None, :, None]],
                       box_dists=[torch.tensor(dists, dtype=torch.float32)[None]],
                       kps_offsets=None, strides=(8,), feature_sizes=[(2, 2)])


def test_face_best_scores_by_hand():
    anchors = AnchorSpec(strides=(8,), base_sizes=(16,), scales=(1.0, 2.0), ratios=(1.0,))
    face = torch.tensor([[4.0, 4.0, 12.0, 12.0]])  # centred on location (8, 8): rows 6 and 7
    dists = [[0.5] * 4] * 8  # every row: a 8 x 8 box around its location
    dists[7] = [0.1] * 4  # anchor 1 at (8, 8): a 1.6 px box, IoU 2.56 / 64 with the face
    logits = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 0.0, 2.0]  # rows 0-5: placed elsewhere, IoU < 0.5
    best = face_best_scores(_outputs(logits, dists), anchors, face)
    assert best.shape == (1, 1, 2)
    assert best[0, 0, 0] == pytest.approx(0.5)  # sigmoid(0), box equal to the face
    assert best[0, 0, 1] == 0.0  # the only confident anchor-1 box is misplaced
    dists[7] = [0.5] * 4
    best = face_best_scores(_outputs(logits, dists), anchors, face)
    assert best[0, 0, 1] == pytest.approx(1 / (1 + np.exp(-2.0)))
    off = torch.tensor([[2.0, 2.0, 6.0, 6.0]])  # 4 x 4 at (4, 4): IoU 4 / 76 with the nearest boxes
    assert face_best_scores(_outputs(logits, dists), anchors, off).max() == 0.0


def test_index_scores_and_dead_anchors_by_hand():
    best = np.array([[[0.2, 0.0], [0.4, 0.1]],    # face 1: level 1 best for both anchors
                     [[0.6, 0.3], [0.0, 0.0]]])   # face 2: level 0
    per_index = anchor_index_scores(AnchorScores(best=best, face_px=np.array([10.0, 40.0])))
    assert per_index.tolist() == pytest.approx([(0.4 + 0.6) / 2, (0.1 + 0.3) / 2])
    assert dead_anchors(np.array([0.177, 0.0])) == [1]
    assert dead_anchors(np.array([0.17, 0.15])) == []
    assert dead_anchors(np.array([0.2, 0.04]), ratio=0.25) == [1]  # 0.04 < 0.05
    assert dead_anchors(np.array([0.0, 0.0])) == []  # nothing learned: nothing to compare with


def test_anchor_scores_on_a_detector_with_a_dead_anchor(tiny_data):
    from detectors.config import load_config
    from detectors.data.widerface import load_eval_ground_truth
    from detectors.model import build
    from pathlib import Path

    torch.manual_seed(0)
    model = build(load_config(Path(__file__).resolve().parents[1] / "experiments" / "scrfd_0.5g.yaml").spec)
    truth = load_eval_ground_truth(tiny_data)
    faces = truth.faces("hard")
    assert faces > 0
    # IoU 0: every prediction counts, so each anchor's best is its highest score on the image
    alive = anchor_index_scores(anchor_scores(model, tiny_data, images=None, test_size=128, iou=0.0))
    assert (alive > 0).all()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cls_pred" in name and name.endswith("bias"):
                p[1] = -40.0  # anchor 1 never fires
    scores = anchor_scores(model, tiny_data, images=None, test_size=128, iou=0.0)
    assert scores.best.shape == (faces, 3, 2) and len(scores.face_px) == faces
    per_index = anchor_index_scores(scores)
    assert per_index[1] < 1e-12 and per_index[0] == pytest.approx(alive[0])
    assert dead_anchors(per_index) == [1]
    assert model.training  # the mode is restored
