"""Offline replay of ASHA and synchronous successive halving on recorded learning curves.

One search run gives one arrival order, so its ASHA savings and recall are one draw. Here the
same recorded curves (every trial trained to the end, its metric recorded at every rung) are
replayed under many random arrival orders, and each order's decisions are computed exactly:

- **ASHA**, as Ray Tune's `ASHAScheduler` (ray/tune/schedulers/async_hyperband.py, one bracket,
  `stop_last_trials=True`), whose rule facenas uses (nas/fidelity.py):
  - milestones `grace * rf**k` for `k < int(log(max_t / grace) / log(rf) + 1)` (Ray's formula,
    floats included);
  - a trial reaching a milestone `< max_t` is compared with the values *recorded so far* at that
    milestone: the cutoff is `np.nanpercentile(recorded, (1 - 1/rf) * 100)` (linear
    interpolation between recorded values, so with one recorded value the cutoff is that value,
    with two it lies between them), and the trial stops when its value is strictly below it;
    with nothing recorded it continues. Its value is then recorded, stopped or not;
  - a trial reaching `max_t` stops without a comparison (Ray checks `max_t` first), so a
    milestone equal to `max_t` decides nothing;
  - the value compared is the metric for mode 'max' and its negative for 'min' (Ray's
    `metric_op`); a NaN value never stops its trial (NaN < x is false) and nanpercentile
    ignores it.
  Concurrency: `workers` slots; trials start in the order given, a freed slot takes the next
  trial at once, and every trial trains one iteration per time unit. A trial reports at
  iteration `ceil(milestone)` (facenas's rung_iterations). Reports at the same time are taken
  in arrival order.
- **Synchronous successive halving**: all trials train to the first milestone, the best
  `max(1, floor(n / rf))` (ties: earlier arrival) go on to the next, and so on over the
  milestones `< max_t`; the last ones train to `max_t`.

Cost: the iterations each trial trained (a stopped trial counts up to its last rung), against
training every trial to `max_t`. Recall@k: how many of the k best specs by the final metric
(at `max_t`, mean over seeds) reach `max_t`, over k.

Input: a long table `spec_id, seed, iteration, metric` (more columns are ignored). A trial is one
spec; with `seeds='random'` each order trains every spec once with one of its recorded seeds,
drawn at random (as a search trains each spec once), with `seeds='mean'` on the curve averaged
over seeds. Every rung iteration and `max_t` must be recorded for every (spec, seed).

Pure pandas/numpy; imports nothing of ours but analysis.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

__all__ = ["Schedule", "milestones", "asha", "successive_halving", "replay", "summarize",
           "CURVE_COLUMNS"]

CURVE_COLUMNS = ("spec_id", "seed", "iteration", "metric")


@dataclass(frozen=True)
class Schedule:
    """Rungs in training iterations: grace (first rung), reduction factor rf, max_t (the end)."""

    grace: float
    reduction_factor: float
    max_t: float

    def __post_init__(self) -> None:
        if not self.grace > 0:
            raise AnalysisError(f"grace must be > 0 iterations, got {self.grace:g}")
        if not self.max_t >= self.grace:
            raise AnalysisError(f"max_t ({self.max_t:g}) must be >= grace ({self.grace:g})")
        if not self.reduction_factor > 1:
            raise AnalysisError(f"reduction factor must be > 1, got {self.reduction_factor:g}")

    @property
    def decision_rungs(self) -> list[float]:
        """The milestones at which a trial can be stopped (those below max_t), ascending."""
        return [m for m in milestones(self.grace, self.reduction_factor, self.max_t)
                if m < self.max_t]

    @property
    def end(self) -> int:
        return _at(self.max_t)


def milestones(grace: float, reduction_factor: float, max_t: float) -> list[float]:
    """Ray's _Bracket rungs (s = 0), ascending: grace * rf**k, k < int(log(max_t/grace)/log(rf) + 1)."""
    n = int(np.log(max_t / grace) / np.log(reduction_factor) + 1)
    return [grace * reduction_factor ** k for k in range(n)]


def _at(milestone: float) -> int:
    """The iteration at which a trial reports a milestone (nas.fidelity.rung_iterations)."""
    return max(1, math.ceil(milestone - 1e-9))


# -- one arrival order ---------------------------------------------------------------------------
def asha(values: dict[str, dict[int, float]], order: Sequence[str], schedule: Schedule,
         workers: int = 1, mode: str = "max") -> dict[str, int]:
    """Iterations each trial trains under Ray's ASHA rule, trials arriving in `order`.

    values[trial][iteration] -> metric, at least at every decision rung's iteration. Returns
    trial -> iterations trained (schedule.end for a survivor)."""
    import heapq

    sign = _sign(mode)
    rungs = schedule.decision_rungs
    its = [_at(m) for m in rungs]
    rf = schedule.reduction_factor
    recorded: list[list[float]] = [[] for _ in rungs]
    trained: dict[str, int] = {}
    events: list[tuple[int, int, int]] = []  # (time, arrival index, rung index)
    start: dict[int, int] = {}
    queue = list(order)
    nxt = 0

    def launch(t: int) -> None:
        nonlocal nxt
        i = nxt
        nxt += 1
        start[i] = t
        if rungs:
            heapq.heappush(events, (t + its[0], i, 0))
        else:
            heapq.heappush(events, (t + schedule.end, i, -1))

    for _ in range(min(workers, len(queue))):
        launch(0)
    while events:
        t, i, r = heapq.heappop(events)
        trial = queue[i]
        if r < 0:  # reached max_t
            trained[trial] = schedule.end
        else:
            value = sign * _value(values, trial, its[r])
            stop = False
            if recorded[r]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rung
                    cutoff = np.nanpercentile(recorded[r], (1 - 1 / rf) * 100)
                stop = bool(value < cutoff)
            recorded[r].append(value)
            if stop:
                trained[trial] = its[r]
            else:
                nxt_t = start[i] + (its[r + 1] if r + 1 < len(its) else schedule.end)
                heapq.heappush(events, (nxt_t, i, r + 1 if r + 1 < len(its) else -1))
                continue
        if nxt < len(queue):
            launch(t)
    return trained


def successive_halving(values: dict[str, dict[int, float]], order: Sequence[str],
                       schedule: Schedule, mode: str = "max") -> dict[str, int]:
    """Iterations each trial trains under synchronous successive halving (see the module)."""
    sign = _sign(mode)
    alive = list(order)
    trained: dict[str, int] = {}
    rf = schedule.reduction_factor
    for m in schedule.decision_rungs:
        it = _at(m)
        keep = max(1, math.floor(len(alive) / rf))
        # stable sort: ties keep arrival order; NaN ranks last
        ranked = sorted(alive, key=lambda s: -_key(sign * _value(values, s, it)))
        for s in ranked[keep:]:
            trained[s] = it
        kept = set(ranked[:keep])
        alive = [s for s in alive if s in kept]
    for s in alive:
        trained[s] = schedule.end
    return trained


def _key(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def _sign(mode: str) -> float:
    if mode not in ("max", "min"):
        raise AnalysisError(f"mode must be 'max' or 'min', got {mode!r}")
    return 1.0 if mode == "max" else -1.0


def _value(values: dict[str, dict[int, float]], trial: str, iteration: int) -> float:
    try:
        return float(values[trial][iteration])
    except KeyError:
        raise AnalysisError(f"curves: no metric recorded for {trial!r} at iteration "
                            f"{iteration} (a rung or max_t of this schedule)") from None


# -- many orders ---------------------------------------------------------------------------------
def _check(curves: pd.DataFrame, schedule: Schedule) -> pd.DataFrame:
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise AnalysisError(f"curves table lacks column(s) {', '.join(missing)} "
                            f"(needs {', '.join(CURVE_COLUMNS)})")
    if curves.empty:
        raise AnalysisError("curves table is empty")
    df = curves[list(CURVE_COLUMNS)].copy()
    df["spec_id"] = df["spec_id"].astype(str)
    df["iteration"] = df["iteration"].astype(int)
    needed = sorted({_at(m) for m in schedule.decision_rungs} | {schedule.end})
    have = df.groupby(["spec_id", "seed"])["iteration"].agg(set)
    for (spec, seed), its in have.items():
        lack = [i for i in needed if i not in its]
        if lack:
            raise AnalysisError(f"curves: {spec} seed {seed} has no metric at iteration(s) "
                                f"{', '.join(map(str, lack))}, which this schedule needs "
                                f"(rungs and max_t: {', '.join(map(str, needed))})")
    return df


def _curves(df: pd.DataFrame) -> dict[str, dict[object, dict[int, float]]]:
    out: dict[str, dict[object, dict[int, float]]] = {}
    for (spec, seed), g in df.groupby(["spec_id", "seed"], sort=True):
        out.setdefault(spec, {})[seed] = dict(zip(g["iteration"].tolist(),
                                                  g["metric"].astype(float).tolist()))
    return out


def replay(curves: pd.DataFrame, schedule: Schedule, orders: int = 1000, workers: int = 4,
           k: Sequence[int] = (1, 3, 5), mode: str = "max", seed: int = 0,
           seeds: str = "random", truth: str | None = None) -> pd.DataFrame:
    """One row per (order, method): cost, baseline, savings, makespan, survivors, recall@k.

    Columns: order, method ('asha' | 'sh'), arrival (';'-joined spec ids), cost (trial-iterations), baseline (every trial to
    max_t), savings = 1 - cost/baseline, makespan (time units with `workers` slots; sh: its
    rounds), survivors (';'-joined spec ids), n_survivors, best_rank (the true rank, 1 = best,
    of the survivor with the best final value in this order), recall_at_<k> per k.

    truth: a column of `curves` (higher is better, e.g. ap_hard) whose value at max_t, mean
    over seeds, defines the k best specs; default the replayed metric itself (e.g. to replay
    ASHA on the rung loss but score it against the final AP)."""
    sign = _sign(mode)
    if orders < 1 or workers < 1:
        raise AnalysisError(f"orders and workers must be >= 1, got {orders} and {workers}")
    if seeds not in ("random", "mean"):
        raise AnalysisError(f"seeds must be 'random' or 'mean', got {seeds!r}")
    df = _check(curves, schedule)
    per_seed = _curves(df)
    if truth is not None:
        if truth not in curves.columns:
            raise AnalysisError(f"truth column {truth!r} is not in the curves table")
        end_rows = curves[curves["iteration"].astype(int) == schedule.end]
        final = end_rows.groupby(end_rows["spec_id"].astype(str))[truth].mean()
    specs = sorted(per_seed)
    n = len(specs)
    ks = [int(x) for x in k]
    if any(x < 1 or x > n for x in ks):
        raise AnalysisError(f"k must be in 1..{n} (the number of specs), got {ks}")
    end = schedule.end
    if truth is None:
        score = {s: sign * float(np.nanmean([c[end] for c in per_seed[s].values()]))
                 for s in specs}
    else:
        score = {s: float(final[s]) for s in specs}
    ranked = sorted(specs, key=lambda s: -_key(score[s]))  # ties: spec_id order
    rank = {s: i + 1 for i, s in enumerate(ranked)}
    mean_curve = {s: pd.DataFrame(per_seed[s]).mean(axis=1).to_dict() for s in specs}
    rng = np.random.default_rng(seed)
    rows = []
    baseline = n * end
    for o in range(orders):
        order = [specs[i] for i in rng.permutation(n)]
        if seeds == "mean":
            values = mean_curve
        else:
            values = {}
            for s in order:
                keys = list(per_seed[s])
                values[s] = per_seed[s][keys[int(rng.integers(len(keys)))]]
        for method in ("asha", "sh"):
            if method == "asha":
                trained = asha(values, order, schedule, workers, mode)
                span = _makespan(order, trained, workers)
            else:
                trained = successive_halving(values, order, schedule, mode)
                span = _sh_makespan(trained, schedule, workers)
            surv = [s for s in order if trained[s] >= end]
            best = max(surv, key=lambda s: _key(sign * values[s][end]))
            cost = sum(trained.values())
            row = {"order": o, "method": method, "arrival": ";".join(order), "cost": cost, "baseline": baseline,
                   "savings": 1 - cost / baseline, "makespan": span,
                   "survivors": ";".join(sorted(surv)), "n_survivors": len(surv),
                   "best_rank": rank[best]}
            for x in ks:
                row[f"recall_at_{x}"] = len(set(ranked[:x]) & set(surv)) / x
            rows.append(row)
    return pd.DataFrame(rows)


def _makespan(order: Sequence[str], trained: dict[str, int], workers: int) -> int:
    """Finish time of the last trial when each slot takes the next trial as it frees."""
    import heapq

    slots = [0] * min(workers, len(order))
    for s in order:
        t = heapq.heappop(slots)
        heapq.heappush(slots, t + trained[s])
    return max(slots)


def _sh_makespan(trained: dict[str, int], schedule: Schedule, workers: int) -> int:
    """Synchronous rounds: each round trains every live trial from the last rung to the next
    on `workers` slots, and waits for the slowest."""
    span, prev = 0, 0
    for it in [_at(m) for m in schedule.decision_rungs] + [schedule.end]:
        live = sum(1 for v in trained.values() if v >= it)
        span += math.ceil(live / workers) * (it - prev)
        prev = it
    return span


def summarize(per_order: pd.DataFrame, k: Sequence[int] | None = None) -> pd.DataFrame:
    """Per method and k: median and 5-95 % range over orders of savings and recall@k, the
    mean recall, and pick_in_top_k: the share of orders whose pick (the survivor with the best
    final value) is one of the true top k (comparable between methods that keep different
    numbers of survivors, where recall@k is capped at survivors / k)."""
    ks = k or sorted(int(c.rsplit("_", 1)[1]) for c in per_order if c.startswith("recall_at_"))
    rows = []
    for method, g in per_order.groupby("method", sort=False):
        sv = g["savings"].to_numpy(float)
        for x in ks:
            r = g[f"recall_at_{x}"].to_numpy(float)
            rows.append({"method": method, "k": x, "orders": len(g),
                         "savings_median": float(np.median(sv)),
                         "savings_p5": float(np.percentile(sv, 5)),
                         "savings_p95": float(np.percentile(sv, 95)),
                         "recall_median": float(np.median(r)),
                         "recall_p5": float(np.percentile(r, 5)),
                         "recall_p95": float(np.percentile(r, 95)),
                         "recall_mean": float(r.mean()),
                         "pick_in_top_k": float((g["best_rank"] <= x).mean()),
                         "survivors_median": float(g["n_survivors"].median())})
    return pd.DataFrame(rows)
