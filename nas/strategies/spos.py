"""Single-path one-shot (SPOS) supernet training through the one trainer (BFBox §4.1, Eq. 1).

    result = train_supernet(space, config.recipe, data_root, out_dir, seed=0)

`SPOSHooks` is the detectors.train.TrainHooks subclass: `build_model` returns the space's
supernet, `before_step` draws iteration i's path uniformly (backbone and FPN at once) and sets
it on the model. The path of iteration i is drawn from a generator seeded by (seed, i): it
depends on nothing else, so a run resumed from any checkpoint draws exactly the paths of an
uninterrupted run (the hooks' state is therefore just that seed, checked on resume through
`identity`). Only the sampled path's parameters get gradients; SGD skips the others.

Distributed (DDP, `processes` > 1: N local processes through detectors.distributed.run_local),
every rank draws the same path, since the draw depends on (seed, i) only; DDP searches for the
parameters off the path (`dynamic_graph`), and those keep no gradient on any rank, so SGD
skips them as in one process. N processes x B/N images give the step of 1 x B.

`load_supernet(path, space)` reads a trained supernet back and refuses one trained for another
space (UserError, one line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectors.config import Recipe, TrainConfig
from detectors.distributed import env_world, run_local
from detectors.errors import UserError
from detectors.train import TrainHooks, TrainingDiverged, TrainResult, train
from search_spaces.bfbox.space import BFBoxPath, BFBoxSpace
from search_spaces.bfbox.supernet import BFBoxSupernet, build_supernet

__all__ = ["SPOSHooks", "train_supernet", "load_supernet", "path_of_iteration", "SPACE_NAME"]

SPACE_NAME = "bfbox"


def path_of_iteration(space: BFBoxSpace, seed: int, iteration: int) -> BFBoxPath:
    """The uniformly drawn path of training iteration `iteration` (0-based)."""
    return space.sample_uniform(np.random.default_rng([seed, iteration]))


class SPOSHooks(TrainHooks):
    """Trains a BFBoxSupernet with one uniformly sampled path per iteration (Eq. 1)."""

    distributed = True  # the path of iteration i is the same on every rank
    dynamic_graph = True  # one path of the supernet runs per step

    def __init__(self, space: BFBoxSpace, seed: int = 0) -> None:
        self.space, self.seed = space, int(seed)
        self.last_path: BFBoxPath | None = None

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return build_supernet(self.space)

    def before_step(self, iteration: int, model: torch.nn.Module) -> None:
        self.last_path = path_of_iteration(self.space, self.seed, iteration)
        model.path = self.last_path

    def after_step(self, iteration: int, loop) -> dict[str, float]:
        genes = self.space.encode(self.last_path)
        return {"path_gflops": float(self.space.vga_gflops(genes)[0])}

    def identity(self) -> dict[str, Any]:
        return {"space": SPACE_NAME, "space_config": self.space.to_dict(), "path_seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return {"path_seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and int(state["path_seed"]) != self.seed:  # identity() already refuses this
            raise UserError("resumed supernet run was sampled with another path seed")


def supernet_config(space: BFBoxSpace, recipe: Recipe) -> TrainConfig:
    """The trainer's config: the default path's spec (anchors, head; recorded in config.yaml)."""
    return TrainConfig(spec=space.template(space.default_path()), recipe=recipe)


def train_supernet(space: BFBoxSpace, recipe: Recipe, data_root: str | os.PathLike,
                   out_dir: str | os.PathLike, *, seed: int = 0, resume: bool = False,
                   max_iterations: int | None = None, num_threads: int | None = None,
                   progress: bool = False, fp32: bool = False, workers: int | None = None,
                   processes: int = 1) -> TrainResult:
    """Train the space's supernet with the recipe (checkpointed, exactly resumable), in one
    process or in `processes` local ones (DDP; num_threads is then each one's threads)."""
    options = dict(resume=resume, max_iterations=max_iterations, num_threads=num_threads,
                   progress=progress, fp32=fp32, workers=workers)
    result = run_local(processes, _train_rank, space, recipe, str(data_root), str(out_dir), seed,
                       options)
    if result.status == "diverged":
        raise TrainingDiverged(result)
    return result


def _train_rank(space: BFBoxSpace, recipe: Recipe, data_root: str, out_dir: str, seed: int,
                options: dict[str, Any]) -> TrainResult | None:
    """One process's training (alone or one rank); rank 0's result, None elsewhere."""
    try:
        result = train(supernet_config(space, recipe), data_root, out_dir,
                       hooks=SPOSHooks(space, seed), **options)
    except TrainingDiverged as err:  # every rank agrees on it; rank 0 reports it
        result = err.result
    return result if env_world().main else None


def load_supernet(path: str | os.PathLike, space: BFBoxSpace) -> BFBoxSupernet:
    """A trained supernet of `space` from a checkpoint (file or training directory)."""
    from detectors.checkpoint import load_checkpoint
    from detectors.train import CHECKPOINT

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"--supernet {path}: no such checkpoint")
    state = load_checkpoint(path)
    ident = state.get("hooks_identity") or {}
    if ident.get("space") != SPACE_NAME:
        raise UserError(f"--supernet {path} is not a bfbox supernet checkpoint")
    if ident.get("space_config") != space.to_dict():
        diff = [k for k, v in space.to_dict().items() if ident["space_config"].get(k) != v]
        raise UserError(f"--supernet {path} was trained for another bfbox space "
                        f"(differs in {', '.join(diff) or 'its keys'})")
    model = BFBoxSupernet(space)
    model.load_state_dict(state["model"])
    return model
