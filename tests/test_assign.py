"""ATSS assignment: hand-built cases and agreement with a plain loop-per-box reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detectors.assign import atss_assign


def _grid_anchors(size: int, stride: int, anchor: float) -> torch.Tensor:
    """Square anchors of side `anchor` centred on the stride grid (x*s, y*s), y-major rows."""
    n = size // stride
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    c = torch.stack([xs.flatten(), ys.flatten()], 1).float() * stride
    return torch.cat([c - anchor / 2, c + anchor / 2], 1)


def test_box_exactly_on_one_anchor_gives_that_anchor_only():
    anchors = _grid_anchors(64, 8, 16)
    box = anchors[2 * 8 + 3].clone()  # cell (y=2, x=3): centre (24, 16), side 16
    result = atss_assign([anchors], [box[None]], [torch.tensor([False])], topk=9)
    # Candidates: IoU 1 (itself), 1/3 (4 side neighbours), 1/7 (4 diagonals) -> threshold
    # mean + std ~ 0.59, and the neighbours' centres sit on the box edge anyway.
    ious = np.array([1.0] + [1 / 3] * 4 + [1 / 7] * 4)
    assert ious.mean() + ious.std(ddof=1) == pytest.approx(0.594, abs=1e-3)
    assert result.positive.nonzero().tolist() == [[0, 2 * 8 + 3]]
    assert result.matched[0, 2 * 8 + 3] == 0 and not result.ignored.any()


def test_centre_must_lie_inside_the_box():
    anchors = _grid_anchors(96, 8, 16)
    # 6 px wide, between anchor centres x=8 and x=16: no anchor centre inside, although its
    # nearest anchors overlap it (IoU ~0.2) -- the rule alone rejects them.
    thin = torch.tensor([[9.0, 4.0, 15.0, 20.0]])
    assert not atss_assign([anchors], [thin], [torch.tensor([False])]).positive.any()
    # Widened to contain the centres x=8 and x=16, it gets positives, all with centres inside.
    wide = torch.tensor([[4.0, 4.0, 20.0, 20.0]])
    pos = atss_assign([anchors], [wide], [torch.tensor([False])]).positive[0]
    assert pos.any()
    centres = (anchors[pos, :2] + anchors[pos, 2:]) / 2
    assert ((centres > wide[0, :2]) & (centres < wide[0, 2:])).all()


def test_topk_per_level_lets_the_coarse_level_win_a_large_face():
    fine, coarse = _grid_anchors(128, 8, 16), _grid_anchors(128, 32, 64)
    box = torch.tensor([[32.0, 32.0, 96.0, 96.0]])  # exactly the coarse anchor at (64, 64)
    result = atss_assign([fine, coarse], [box], [torch.tensor([False])], topk=9)
    pos = result.positive[0].nonzero().flatten().tolist()
    assert pos == [fine.shape[0] + 2 * 4 + 2]  # the coarse anchor at cell (2, 2) only


def test_ignore_regions_mark_their_anchors_ignored_not_positive():
    anchors = _grid_anchors(64, 8, 16)
    boxes = torch.stack([anchors[10], anchors[45]])  # a face and an ignore region
    result = atss_assign([anchors], [boxes], [torch.tensor([False, True])])
    assert result.positive[0].nonzero().flatten().tolist() == [10]
    assert result.ignored[0].nonzero().flatten().tolist() == [45]
    assert result.matched[0, 45] == 1


def test_no_boxes_means_all_negative():
    anchors = _grid_anchors(64, 8, 16)
    result = atss_assign([anchors], [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.bool)])
    assert (result.matched == -1).all() and not result.positive.any()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference(levels: list[np.ndarray], boxes: np.ndarray, topk: int) -> np.ndarray:
    """Loop-per-box ATSS written from the paper's description, for comparison."""
    anchors = np.concatenate(levels)
    best_iou = np.full(len(anchors), -1.0)
    matched = np.full(len(anchors), -1)
    for j, box in enumerate(boxes):
        centre = (box[:2] + box[2:]) / 2
        cands, start = [], 0
        for level in levels:
            d = [math.dist(centre, (a[:2] + a[2:]) / 2) for a in level]
            cands += [start + i for i in np.argsort(d, kind="stable")[:topk]]
            start += len(level)
        ious = np.array([_iou(anchors[i], box) for i in cands])
        thr = ious.mean() + ious.std(ddof=1)
        for i, iou in zip(cands, ious):
            c = (anchors[i, :2] + anchors[i, 2:]) / 2
            inside = min(c[0] - box[0], c[1] - box[1], box[2] - c[0], box[3] - c[1]) > 0.01
            if iou >= thr and inside and iou > best_iou[i]:
                best_iou[i], matched[i] = iou, j
    return matched


def test_matches_loop_reference_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    levels = [_grid_anchors(128, s, 2 * s) for s in (8, 16, 32)]
    gts = []
    for n in (5, 1, 12):
        xy = torch.rand((n, 2), generator=gen) * 110
        wh = 4 + torch.rand((n, 2), generator=gen) * 60
        gts.append(torch.cat([xy, xy + wh], 1))
    result = atss_assign(levels, gts, [torch.zeros(len(g), dtype=torch.bool) for g in gts])
    for i, g in enumerate(gts):
        expected = _reference([lv.double().numpy() for lv in levels], g.double().numpy(), 9)
        assert (result.matched[i].numpy() == expected).all()
        assert result.positive[i].sum() > 0
