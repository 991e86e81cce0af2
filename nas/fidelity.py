"""Multi-fidelity search: rungs at which a trial tests its model, and Tune's ASHA scheduler.

A trial trains its schedule in pieces and tests at each rung, a fraction of the schedule:
grace, grace x rf, grace x rf^2, ... (those below 1) and 1, e.g. 1/9, 1/3, 1 for grace 1/9 and
reduction factor 3. Each rung's AP is reported to Tune with the trial's checkpoint; ASHA
(`ASHAScheduler`, one bracket) compares a trial at a rung with the trials that reached it
before and stops it when it is outside the top 1/rf. Tune's time unit here is `rung_t` =
fraction / grace, so ASHA's milestones (1, rf, rf^2, ..., max_t = 1/grace) are exactly the rungs.

A stopped trial is a row with status 'stopped', its `fidelity` (the last rung it reached) and
its APs at that rung; analysis and step-2 ranges read only rows with status 'ok' (full
fidelity) unless told to rank stopped trials by their rung AP (documented in the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from detectors.errors import UserError

__all__ = ["SCHEDULERS", "RUNG_METRICS", "Fidelity", "rung_fractions", "rung_iterations",
           "fidelity_from", "rung_columns", "rung_loss", "warmup_note"]

SCHEDULERS = ("fifo", "asha")
# What ASHA compares at a rung: the rung's hard AP (higher is better) or its training loss,
# the mean total loss over the last tenth of the iterations trained so far (lower is better).
# Measured on the quick proxy (benchmarks/asha_savings.py, 36 trials): at 1/9 of the schedule
# (inside the warm-up) Kendall tau against the final hard AP is 0.01 for the AP and 0.19 for
# the loss; at 1/3 about 0.4 for either (an earlier 12-trial run: loss 0.58, AP ~0).
RUNG_METRICS = {"ap": ("ap_hard", "max"), "loss": ("rung_loss", "min")}


@dataclass(frozen=True)
class Fidelity:
    """scheduler: 'fifo' | 'asha'; grace: the first rung as a fraction of the schedule (None:
    fifo without rungs, the trial tests once at the end); reduction_factor: rf."""

    scheduler: str = "fifo"
    grace: float | None = None
    reduction_factor: float = 3.0
    metric: str = "ap"  # RUNG_METRICS key

    def to_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "grace": self.grace,
                "reduction_factor": self.reduction_factor, "metric": self.metric}

    @property
    def rungs(self) -> list[float]:
        return rung_fractions(self.grace, self.reduction_factor)

    @property
    def max_t(self) -> float:
        """The last rung in Tune's time unit rung_t = fraction / grace."""
        return 1.0 / self.grace if self.grace else 1.0


def rung_fractions(grace: float | None, reduction_factor: float) -> list[float]:
    """[grace, grace * rf, ... (< 1), 1.0]; [1.0] without a grace period."""
    if grace is None:
        return [1.0]
    out, f = [], float(grace)
    while f < 1 - 1e-9:
        out.append(f)
        f *= reduction_factor
    return out + [1.0]


def rung_iterations(fractions: list[float], total: int) -> list[int]:
    """Training iterations at which each rung tests (ceil; the last rung is `total`)."""
    return [min(total, max(1, math.ceil(f * total - 1e-9))) for f in fractions]


def fidelity_from(scheduler: str, grace: float | None, reduction_factor: float | None,
                  total_iterations: int | None, metric: str | None = None) -> Fidelity:
    """Validated options (CLI: --scheduler, --grace, --reduction-factor). total_iterations
    (None when the schedule counts epochs of a dataset not read yet) lets a budget whose rungs
    collapse onto one iteration count be refused up front."""
    if scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    rf = 3.0 if reduction_factor is None else float(reduction_factor)
    if rf < 2:
        raise UserError(f"--reduction-factor must be >= 2, got {rf:g}")
    if scheduler == "asha" and grace is None:
        grace = 1.0 / rf**2
    if grace is not None and not 0 < grace < 1:
        raise UserError(f"--grace {grace:g} is not shorter than the schedule: give the first "
                        "rung as a fraction of it, 0 < grace < 1 (e.g. 0.111 = 1/9)")
    metric = "ap" if metric is None else metric
    if metric not in RUNG_METRICS:
        raise UserError(f"--rung-metric {metric!r} is not one of {', '.join(RUNG_METRICS)}")
    fidelity = Fidelity(scheduler, grace, rf, metric)
    if scheduler == "asha" and total_iterations is not None:
        distinct = sorted(set(rung_iterations(fidelity.rungs, total_iterations)))
        if len(distinct) < 2:
            raise UserError(f"--scheduler asha needs at least two rungs, but this budget trains "
                            f"{total_iterations} iterations, so every rung falls on iteration "
                            f"{distinct[0]}; use a longer budget or a larger --grace")
    return fidelity


def warmup_note(fidelity: Fidelity, total_iterations: int | None,
                warmup_iterations: int) -> str | None:
    """A line to show when ASHA's first rung falls inside the recipe's LR warm-up, where no
    rung metric ranks models (measured on the quick proxy: Kendall tau against the final
    hard AP 0.01 for the AP and 0.19 for the loss at iteration 28 of 250, inside a 50-iteration
    warm-up; ~0.4 for either at iteration 84); None otherwise."""
    if fidelity.scheduler != "asha" or not total_iterations or not warmup_iterations:
        return None
    first = rung_iterations(fidelity.rungs, total_iterations)[0]
    if first > warmup_iterations:
        return None
    past = math.ceil((warmup_iterations + 1) / total_iterations * 1000) / 1000
    fix = (f"--grace {past:g} or more puts it past the warm-up" if past < 1 else
           "no --grace clears a warm-up this long: use a longer budget")
    return (f"note: ASHA's first rung (iteration {first} of {total_iterations}) falls inside the "
            f"recipe's {warmup_iterations}-iteration warm-up, where rung metrics barely rank "
            f"models; {fix}")


def rung_loss(metrics_jsonl: Any, iteration: int) -> float:
    """Mean training `total` loss over the last tenth (>= 1) of iterations 1..iteration, from
    the trainer's metrics.jsonl (NaN when it holds none of them)."""
    import json
    from pathlib import Path

    first = iteration - max(1, iteration // 10) + 1
    values = []
    path = Path(metrics_jsonl)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if first <= int(rec.get("iteration", 0)) <= iteration and "total" in rec:
                values.append(float(rec["total"]))
    return sum(values) / len(values) if values else math.nan


def rung_columns(fractions: list[float]) -> list[str]:
    """Results-table columns of the rung APs: ap_hard_r1 ... (r<k> = k-th rung)."""
    return [f"ap_hard_r{k}" for k in range(1, len(fractions) + 1)]
