"""Zero-cost proxies: architecture scores computed at initialisation, in seconds, from a spec
and one batch (no training). One module per proxy, each a function of a plain nn.Module:

    naswot.py     log-determinant of the ReLU activation-pattern kernel (Mellor et al. 2021)
    synflow.py    synaptic flow of the |weights| on an all-ones input (Tanaka et al. 2020)
    grad_norm.py  norm of the training loss's gradient on one batch (Abdelfattah et al. 2021)
    zico.py       inverse coefficient of variation of the gradients over two half-batches
                  (Li et al. 2023)

This module is the table (name -> how to score a built detector) and the glue every caller
shares (`facenas search --prescreen`, benchmarks/ranking_truth.py):

    batch = proxy_batch(data_root, recipe)          # batch 0 of the recipe's training stream
    rows = score_specs(["naswot", "synflow"], specs, batch, recipe, seed=0)

Higher is better for every proxy. Each score builds the detector afresh with torch's RNG
seeded by `seed` (detectors.build's initialisation), so a score is a function of (spec,
batch, recipe, seed); `cost_s` is the wall time of that build plus the score.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from detectors.errors import UserError
from nas.proxies.grad_norm import grad_norm
from nas.proxies.naswot import naswot
from nas.proxies.synflow import synflow
from nas.proxies.zico import zico

if TYPE_CHECKING:
    from detectors.config import Recipe
    from detectors.spec import DetectorSpec

__all__ = ["PROXIES", "MIN_BATCH", "check_batch", "check_proxy", "model_images", "proxy_batch", "score_model", "score_spec",
           "score_specs"]


def model_images(batch: dict) -> torch.Tensor:
    """The batch's images as the model takes them: normalised RGB float ((pixel - 127.5) / 128;
    a uint8 batch is normalised here)."""
    images = batch["image"]
    if images.dtype == torch.uint8:
        images = (images.float() - 127.5) / 128.0
    return images


def _naswot(model: nn.Module, batch: dict, recipe: "Recipe") -> float:
    return naswot(model.train(), model_images(batch))


def _synflow(model: nn.Module, batch: dict, recipe: "Recipe") -> float:
    return synflow(model, tuple(model_images(batch).shape[1:]))


def _grad_norm(model: nn.Module, batch: dict, recipe: "Recipe") -> float:
    from detectors.train import batch_loss

    loss_batch = {**batch, "image": model_images(batch)}
    return grad_norm(model.train(), lambda m: batch_loss(m, loss_batch, recipe)[0]["total"])


def _halves(batch: dict) -> list[dict]:
    """The batch split into two (the first holds the odd image): ZiCo's two batches."""
    n = len(batch["image"])
    check_batch("zico", n)
    cut = (n + 1) // 2
    return [{k: v[part] for k, v in batch.items()} for part in (slice(0, cut), slice(cut, n))]


def _zico(model: nn.Module, batch: dict, recipe: "Recipe") -> float:
    from detectors.train import batch_loss

    halves = _halves({**batch, "image": model_images(batch)})
    return zico(model.train(), [lambda m, b=b: batch_loss(m, b, recipe)[0]["total"] for b in halves])


# name -> score(model, batch, recipe); higher = predicted better
PROXIES: dict[str, Callable[[nn.Module, dict, "Recipe"], float]] = {
    "naswot": _naswot,
    "synflow": _synflow,
    "grad_norm": _grad_norm,
    "zico": _zico,
}


# the smallest batch a proxy is defined on: ZiCo's halves must hold 2 images each, as BN in
# training mode needs more than one value per channel (a 1x1 map of one image has one)
MIN_BATCH = {"zico": 4}


def check_batch(name: str, batch_size: int) -> None:
    """UserError (one line) when the batch is too small for the proxy (MIN_BATCH)."""
    need = MIN_BATCH.get(name, 1)
    if batch_size < need:
        raise UserError(f"proxy {name} needs a batch of at least {need} images, got {batch_size} "
                        "(raise recipe.batch_size, or choose another proxy)")


def check_proxy(name: str, where: str = "--prescreen") -> None:
    """UserError (one line) for an unknown proxy name, listing the valid ones."""
    if name not in PROXIES:
        raise UserError(f"{where} {name}: unknown zero-cost proxy; valid: {', '.join(PROXIES)}")


def proxy_batch(data_root: str | Path, recipe: "Recipe") -> dict:
    """Batch 0 of the recipe's seeded training stream on `data_root` (detectors.batches): the
    same images and targets for every spec scored, and for the trial that trains it first."""
    from detectors.batches import SeededBatches

    batches = SeededBatches(data_root, recipe)
    try:
        return next(batches.iterate(0))
    finally:
        batches.close()


def score_model(name: str, model: nn.Module, batch: dict, recipe: "Recipe") -> float:
    check_proxy(name)
    return float(PROXIES[name](model, batch, recipe))


def score_spec(name: str, spec: "DetectorSpec", batch: dict, recipe: "Recipe",
               seed: int = 0) -> tuple[float, float]:
    """(score, cost_s) of proxy `name` for `spec`, built afresh from `seed` and initialised as
    `recipe` trains it (recipe.box_init)."""
    from detectors.model import build, init_box_bias

    check_proxy(name)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec)
    init_box_bias(model, recipe.box_init)  # the model as training would start it
    value = score_model(name, model, batch, recipe)
    return value, time.perf_counter() - t0


def score_specs(names: list[str], specs: list["DetectorSpec"], batch: dict, recipe: "Recipe",
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per (spec, proxy): spec_id, proxy, value, cost_s."""
    for name in names:
        check_proxy(name)
        check_batch(name, len(batch["image"]))
    rows = []
    for spec in specs:
        for name in names:
            value, cost = score_spec(name, spec, batch, recipe, seed)
            rows.append({"spec_id": spec.id, "proxy": name, "value": value, "cost_s": cost})
    return rows
