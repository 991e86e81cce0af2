"""Candidate evaluation over a trained supernet (BFBox §5, "Final Model Selection").

A candidate path inherits its weights from the supernet (`BFBoxSupernet.path_state_dict`,
loaded into the path's standalone `build(spec)`), has its BatchNorm statistics recomputed on a
fixed subset of training images (paper: 500), and is tested on a fixed validation subset
(paper: 200) with the WIDER protocol (detectors.test). Both subsets are a seeded draw of image
ids, sorted, so every candidate of a search sees the same images.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from detectors.errors import UserError
from detectors.model import build
from search_spaces.bfbox.space import BFBoxPath, BFBoxSpace

__all__ = ["EvalSubsets", "fixed_subsets", "recalibrate_bn", "image_batches", "evaluate_path",
           "evaluate_candidate"]


@dataclass(frozen=True)
class EvalSubsets:
    """The images every candidate is recalibrated on (train) and tested on (val)."""

    recalibration: tuple[str, ...]
    validation: tuple[str, ...]


def _draw(ids: list[str], n: int, seed: int) -> tuple[str, ...]:
    if n >= len(ids):
        return tuple(sorted(ids))
    pick = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return tuple(sorted(ids[i] for i in pick))


def fixed_subsets(data_root: str | os.PathLike, num_recalibration: int = 500,
                  num_validation: int = 200, seed: int = 0) -> EvalSubsets:
    """Seeded subsets of the train and val splits' image ids (all images when fewer)."""
    from detectors.data.widerface import load_split

    train_ids = [r.image_id for r in load_split(data_root, "train").records]
    val_ids = [r.image_id for r in load_split(data_root, "val").records]
    if not train_ids or not val_ids:
        raise UserError(f"{data_root}: candidate evaluation needs train and val images")
    return EvalSubsets(_draw(train_ids, num_recalibration, seed), _draw(val_ids, num_validation, seed + 1))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean / variance as the plain average over the
    batches ((B, 3, H, W) normalised images, forwarded in training mode without gradients);
    returns the number of BatchNorm layers reset. The model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    device = next(model.parameters()).device
    try:
        for images in batches:
            model(images.to(device))
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
        model.eval()
    return len(norms)


def image_batches(data_root: str | os.PathLike, split: str, image_ids, size: int,
                  batch_size: int = 8) -> Iterator[torch.Tensor]:
    """(B, 3, size, size) test-path batches (long side resized to `size`, padded) of some
    images of a split, in sorted id order; decoded lazily (500 VGA images do not fit twice)."""
    from detectors.data.widerface import load_split, read_image
    from detectors.test import preprocess

    wanted = set(image_ids)
    records = sorted((r for r in load_split(data_root, split).records if r.image_id in wanted),
                     key=lambda r: r.image_id)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        yield torch.stack([preprocess(read_image(r.path, f"{r.source}:{r.line}"), size)[0]
                           for r in chunk])


def evaluate_path(supernet, space: BFBoxSpace, path: BFBoxPath, data_root: str | os.PathLike,
                  subsets: EvalSubsets, test_size: int, recal_batches: Callable[[], Iterable],
                  ground_truth=None, score_thresh: float = 0.02, iou_thresh: float = 0.45) -> dict:
    """Inherit -> recalibrate BN -> test one path; returns ap_easy/medium/hard, the AP at
    precision >= 98% columns (nas.trial.p98_columns), wall_time_s.

    `recal_batches()`: the recalibration batches (e.g. image_batches over
    subsets.recalibration, or a cached list of them); `ground_truth`: the val
    EvalGroundTruth restricted to subsets.validation (loaded here when None)."""
    from detectors.data.widerface import load_eval_ground_truth
    from detectors.test import evaluate_predictions, predict_split

    from nas.trial import p98_columns

    start = time.perf_counter()
    model = build(space.template(path))
    model.load_state_dict(supernet.path_state_dict(path))
    recalibrate_bn(model, recal_batches())
    gt = ground_truth or load_eval_ground_truth(data_root).subset(subsets.validation)
    preds = predict_split(model, data_root, "val", test_size, score_thresh=score_thresh,
                          iou_thresh=iou_thresh, image_ids=list(subsets.validation), progress=False)
    ap = evaluate_predictions(preds, gt, progress=False)
    return {"ap_easy": float(ap["easy"]), "ap_medium": float(ap["medium"]),
            "ap_hard": float(ap["hard"]), **p98_columns(ap), "wall_time_s": time.perf_counter() - start}


@functools.lru_cache(maxsize=2)
def _context(frame_yaml: str, supernet_path: str, data_root: str, settings_yaml: str, seed: int):
    """Per process: the supernet, fixed subsets, val ground truth, recalibration batches."""
    import yaml

    from detectors.data.widerface import load_eval_ground_truth
    from nas.strategies.spos import load_supernet

    space, cand = BFBoxSpace.from_dict(yaml.safe_load(frame_yaml)), yaml.safe_load(settings_yaml)
    net = load_supernet(supernet_path, space)
    subsets = fixed_subsets(data_root, cand["recalibration_images"], cand["validation_images"], seed)
    gt = load_eval_ground_truth(data_root).subset(subsets.validation)
    small = len(subsets.recalibration) * cand["test_size"] ** 2 <= 64 * 320**2  # cache <= ~80 MB
    batches = list(image_batches(data_root, "train", subsets.recalibration, cand["test_size"])) \
        if small else None
    recal = (lambda: batches) if small else (
        lambda: image_batches(data_root, "train", subsets.recalibration, cand["test_size"]))
    return space, net, subsets, gt, recal


def evaluate_candidate(frame: dict, spec_yaml: str, supernet_path: str | os.PathLike,
                       data_root: str | os.PathLike, settings: dict, seed: int,
                       score_thresh: float, iou_thresh: float) -> dict[str, float]:
    """One candidate trial over the supernet of space `frame` (BFBoxSpace.to_dict()): inherit,
    recalibrate, test (`settings`: recalibration_images, validation_images, test_size). The
    supernet and subsets are loaded once per process and reused by its next candidates."""
    import yaml

    from detectors.spec import DetectorSpec

    space, net, subsets, gt, recal = _context(
        yaml.safe_dump(frame, sort_keys=True), str(supernet_path), str(data_root),
        yaml.safe_dump(settings, sort_keys=True), int(seed))
    path = space.from_spec(DetectorSpec.from_yaml(spec_yaml))
    return evaluate_path(net, space, path, data_root, subsets, settings["test_size"], recal, gt,
                         score_thresh, iou_thresh)
