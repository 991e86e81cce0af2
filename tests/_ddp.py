"""Worker functions for tests/test_distributed.py, run in processes started by
detectors.distributed.launch (spawned: they must be importable, so not in the test module)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def train_worker(config, root: str, out: str, options: dict, fault: str | None = None) -> int:
    """train() in one rank (fault: the name of a test hook below); returns the rank."""
    from detectors.distributed import env_world
    from detectors.train import train

    hook = {None: None, "nan_rank1_at_4": nan_rank1_at_4,
            "nan_rank1_at_4_kill_rank1_at_13": nan_rank1_at_4_kill_rank1_at_13}[fault]
    train(config, Path(root), Path(out), fault=hook, **options)
    return env_world().rank


def nan_rank1_at_4(iteration: int, world) -> bool:
    """The loss of the last rank (rank 1 of 2; the only one alone) is NaN at iteration 4
    (0-based 3); rank 0's stays finite in a world of two."""
    return world.rank == world.size - 1 and iteration == 3


def nan_rank1_at_4_kill_rank1_at_13(iteration: int, world) -> bool:
    """As nan_rank1_at_4, and rank 1 dies by SIGKILL at iteration 13 (0-based 12), after the
    checkpoint of iteration 10 and before the next."""
    if world.rank == 1 and iteration == 12:
        os.kill(os.getpid(), signal.SIGKILL)
    return nan_rank1_at_4(iteration, world)
