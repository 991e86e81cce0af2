"""Training batches as a pure function of (seed, iteration), so resumed runs are exact.

The stream of sample indices is the concatenation of per-epoch permutations (epoch e shuffled
by a generator seeded with (seed, e)); batch i is positions [i*B, (i+1)*B) of that stream, so
an epoch is ceil(N / B) iterations and any N, B work. Each sample is loaded with the key
(index, sample seed), and detectors.data.loader.WiderFaceDataset draws its augmentation from a
generator seeded by that seed only, so a sample does not depend on which worker process loads
it or on what was loaded before: restarting the stream at iteration i (after a crash)
reproduces exactly the batches of an uninterrupted run, with any number of workers.

Transforms (detectors.data.transforms): the recipe's SCRFD pipeline (square crop from
`crop_choices`, resize, photometric, flip, small faces ignored); an empty `crop_choices` means
no crop: the image is resized keeping its aspect ratio (long side = train size) and padded,
the geometry of the test path (used e.g. to memorise a few images).

Workers hand over uint8 images with each image's photometric numbers (drawn from the sample's
generator, not applied); the trainer applies them and normalises on its device
(detectors.data.device_transforms.device_images). `device_side=False` is the former path
(PIL's crop-resize, photometric and normalisation in the worker, float32 batches), kept for
the equivalence test and benchmarks/data_speed.py. Loader processes: `workers` (see
resolve_workers), one torch thread each, pinned memory when the trainer's device is CUDA, two
batches prefetched per worker.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from detectors.config import Recipe
from detectors.data.loader import WiderFaceDataset, collate
from detectors.data.transforms import (Compose, DataAnchorSampling, MarkSmallIgnore, Normalize,
                                       PhotoMetricDistortion, RandomFlip, ResizeLongSide,
                                       ToUint8Tensor, build_train_transform)
from detectors.errors import UserError

__all__ = ["SeededBatches", "batch_indices", "resolve_workers"]


def resolve_workers(flag: int | None, recipe_workers: int | None, threads: int) -> int:
    """Loader worker processes: an explicit --workers flag, else the recipe's `workers` key
    when it is set (a config or a budget preset), else one per CPU thread the training was
    given (`threads`: --threads / --cpus-per-trial)."""
    for value, where in ((flag, "--workers"), (recipe_workers, "recipe.workers")):
        if value is not None:
            if value < 0:
                raise UserError(f"{where} must be >= 0 (0: load in the training process), not {value}")
            return int(value)
    return max(1, int(threads))


def _seed_of(*parts: int) -> int:
    """A 63-bit seed mixed from integers (NumPy's SeedSequence)."""
    state = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_samples: int) -> torch.Tensor:
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(_seed_of(seed, epoch)))


def batch_indices(iteration: int, batch_size: int, num_samples: int, seed: int) -> list[tuple[int, int]]:
    """(sample index, sample seed) pairs of batch `iteration` (see module docstring)."""
    out = []
    for pos in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, offset = divmod(pos, num_samples)
        index = int(_permutation(seed, epoch, num_samples)[offset])
        out.append((index, _seed_of(seed, epoch, offset, 1)))
    return out


class _Batches(Sampler):
    """Yields batch_indices(i)[lo:hi] for i = start, start + 1, ... (endless): positions
    [lo, hi) of every global batch (one process's shard; the whole batch by default)."""

    def __init__(self, batch_size: int, num_samples: int, seed: int, start: int,
                 part: tuple[int, int] | None = None) -> None:
        self.batch_size, self.num_samples, self.seed, self.start = batch_size, num_samples, seed, start
        self.part = part or (0, batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start
        lo, hi = self.part
        while True:
            yield batch_indices(it, self.batch_size, self.num_samples, self.seed)[lo:hi]
            it += 1


class SeededBatches:
    """Endless training batches of a dataset root for a recipe, restartable at any iteration.

    `iterate(start)` yields collated batches for iterations start, start + 1, ...; `close()`
    stops worker processes. iters_per_epoch = ceil(train images / batch size). `part` = (lo,
    hi): load only positions [lo, hi) of each global batch (a distributed rank's shard,
    detectors.distributed.shard); the global batches stay those of recipe.batch_size.
    `workers`: loader processes (default: recipe.workers, or when unset this process's torch
    threads); `pin_memory` for a CUDA trainer (page-locked batches copy to the GPU
    asynchronously).
    """

    def __init__(self, root: str | Path, recipe: Recipe, part: tuple[int, int] | None = None, *,
                 workers: int | None = None, pin_memory: bool = False,
                 device_side: bool = True) -> None:
        self.part = part
        self.dataset = _train_dataset(Path(root), recipe, device_side)
        self.recipe = recipe
        self.workers = resolve_workers(workers, recipe.workers, torch.get_num_threads())
        self.pin_memory = pin_memory
        self.num_samples = len(self.dataset)
        self.iters_per_epoch = math.ceil(self.num_samples / recipe.batch_size)
        self._iterator: Iterator | None = None

    def iterate(self, start: int) -> Iterator[dict]:
        self.close()
        sampler = _Batches(self.recipe.batch_size, self.num_samples, self.recipe.seed, start, self.part)
        workers = self.workers
        # The sampler is endless, so one iterator (and its workers) serves the whole run:
        # persistent_workers only matters to a loader iterated epoch by epoch, set for clarity.
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                            collate_fn=collate, pin_memory=self.pin_memory, worker_init_fn=_worker_init,
                            persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
        self._iterator = iter(loader)
        return self._iterator

    def state_dict(self) -> dict:
        return {"seed": self.recipe.seed, "batch_size": self.recipe.batch_size,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise UserError(f"cannot resume exactly: the checkpoint was trained on "
                            f"{state['num_samples']} images, the data root now has {self.num_samples}")

    def close(self) -> None:
        """Shut down loader workers (if any)."""
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None


def _worker_init(worker_id: int) -> None:
    # The crop-resize is a torch op: N workers of T threads each would oversubscribe the CPUs
    # the workers were sized for. torch's worker loop sets 1 as well; this does not rely on it.
    torch.set_num_threads(1)


def _transform(recipe: Recipe, device_side: bool = True) -> Compose:
    aug = recipe.augmentation
    if aug.crop_choices:
        return build_train_transform(recipe.train_size, aug.crop_choices, aug.min_face,
                                     aug.flip, aug.photometric,
                                     data_anchor_sampling=aug.data_anchor_sampling,
                                     device_side=device_side,
                                     resampler="torch" if device_side else "pil")
    steps: list = [ResizeLongSide(recipe.train_size)]
    if aug.data_anchor_sampling > 0:  # no crop: the sampling, else the long-side resize
        steps = [DataAnchorSampling(recipe.train_size, aug.data_anchor_sampling, otherwise=steps[0])]
    steps += [PhotoMetricDistortion(deferred=device_side)] if aug.photometric else []
    steps += [RandomFlip(0.5)] if aug.flip else []
    last = ToUint8Tensor(pad_to=recipe.train_size) if device_side else Normalize(pad_to=recipe.train_size)
    return Compose(steps + [MarkSmallIgnore(aug.min_face), last])


def _train_dataset(root: Path, recipe: Recipe, device_side: bool = True) -> WiderFaceDataset:
    """The train split with landmarks when the root has them (retinaface_gt/train/label.txt)."""
    return WiderFaceDataset(root, "train", _transform(recipe, device_side), landmarks="auto")
