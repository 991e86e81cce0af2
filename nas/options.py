"""What `facenas search` was asked: the options every part of a search reads (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SearchOptions", "DEFAULT_GFLOPS"]

DEFAULT_GFLOPS = 2.5  # the target without --gflops (and without a --preset naming one)


@dataclass
class SearchOptions:
    """What `facenas search` was asked (CLI options; None = preset/default)."""

    space: str = "scrfd"
    gflops: float | None = None  # None: the preset's `gflops`, else DEFAULT_GFLOPS
    budget: str = "quick"
    num_samples: int | None = None
    data: str | None = None
    out: str | None = None
    cpus_per_trial: float = 1.0
    workers: int | None = None  # loader processes per trial (None: recipe.workers, else CPUs)
    gpus_per_trial: float | None = None
    nproc_per_trial: int | None = None  # single-model phases' processes (None: node's GPUs, or 1)
    max_concurrent: int | None = None
    address: str | None = None
    seed: int = 0
    steps: str = "both"
    max_failures: int = 1
    keep_checkpoints: int | None = 1  # Tune checkpoints kept per trial (None: all)
    resume: str | None = None
    top_k: int | None = None
    verbose: bool = False
    space_options: dict[str, Any] = field(default_factory=dict)  # a space's own CLI options
    scheduler: str = "fifo"  # nas.fidelity: fifo | asha
    grace: float | None = None  # first rung, as a fraction of the schedule
    reduction_factor: float | None = None
    rung_metric: str | None = None  # nas.fidelity.RUNG_METRICS: ap (default) or loss
    # nas.latency_budget: a predicted-latency band on a measured table; `gflops_band` False
    # when --gflops was not given with it (gflops then only picks the SCRFD regime), or with
    # --no-flops-band (bfbox: unconstrained candidates)
    latency_ms: float | None = None
    latency_table: str | None = None
    latency_tolerance: float | None = None
    latency_runtime: str | None = None
    latency_device: str | None = None
    gflops_band: bool = True
    preset: str | None = None  # a user's preset file instead of the built-in one
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, on the resolved config
    prescreen: str | None = None  # nas.strategies.prescreen: a zero-cost proxy (nas.proxies)
    prescreen_keep: float | None = None  # the fraction of the sampled specs trained
