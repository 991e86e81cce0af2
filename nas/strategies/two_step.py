"""SCRFD's two-step computation-redistribution search as driver phases (SCRFD sec. 4.2).

Step 1 samples backbones under the FLOPs band with the neck and head fixed; after its trials,
the empirical bootstrap of the best models' backbone ratios (analysis.bootstrap) constrains
step 2, which samples whole detectors inside those ranges. Each planned spec is trained and
tested by nas.trial.run_trial.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from detectors.errors import UserError
from detectors.spec import DetectorSpec
from nas import presets
from nas.results import COLUMNS, RunStore
from nas.spaces import Phase
from search_spaces.scrfd.space import RATIO_QUANTITIES

__all__ = ["resolve", "check", "phases", "finish", "default_data", "step2_ranges", "steps"]


def default_data(opts: Any) -> Path:
    return presets.default_data(opts.space, opts.gflops, opts.budget)


def resolve(opts: Any, data: Path) -> dict[str, Any]:
    from nas.fidelity import fidelity_from, warmup_note

    search = presets.resolve(opts.space, opts.gflops, opts.budget, num_samples=opts.num_samples,
                             seed=opts.seed, steps=opts.steps, data=str(data.resolve()),
                             max_failures=opts.max_failures)
    total = presets.trial_iterations(search)
    fidelity = fidelity_from(opts.scheduler, opts.grace, opts.reduction_factor, total,
                             getattr(opts, "rung_metric", None))
    note = warmup_note(fidelity, total, presets.trial_schedule(search).warmup_iters)
    if note:
        print(note, file=sys.stderr)
    search["fidelity"] = fidelity.to_dict()
    return search


def steps(search: dict[str, Any]) -> tuple[int, ...]:
    return {"1": (1,), "2": (2,), "both": (1, 2)}[search["steps"]]


def check(search: dict[str, Any]) -> None:
    """An infeasible budget is an error before anything is written."""
    space = presets.build_space(search)
    for step in steps(search):
        space.check_feasible(step)


def phases(search: dict[str, Any]) -> list[Phase]:
    return [Phase(step=s, label=f"step {s}", plan=_plan_step1 if s == 1 else _plan_step2)
            for s in steps(search)]


def step2_ranges(store: RunStore, search: dict[str, Any]) -> dict[str, tuple[float, float]] | None:
    """Step 1's bootstrap ranges of the backbone ratios (None if step 1 was not run).

    Ranges narrower than the preset's `step2.min_range_width` are widened around their centre:
    a small population (smoke/quick) can put every bootstrap winner on one model, which would
    leave step 2 a single point to sample from.
    """
    from analysis.bootstrap import bootstrap_ranges, read_ranges_csv, write_ranges_csv
    import pandas as pd

    rows = [r for r in store.rows() if r["step"] == 1]
    if not rows:
        return None
    # Kept with the plan, not in analysis/: `facenas analyze` (maybe with another seed) rewrites
    # analysis/ranges_step1.csv, and a resumed step 2 must keep the constraint it started with.
    path = store.run_dir / "plan" / "step2_ranges.csv"
    if not path.is_file():
        table = pd.DataFrame(rows, columns=COLUMNS)
        if not (table["status"] == "ok").any():
            raise UserError("step 1 has no successful trial, so it gives step 2 no ranges; "
                            f"see the errors in {store.run_dir / 'trials.csv'}")
        write_ranges_csv(bootstrap_ranges(table, metric="ap_hard", seed=search["seed"]), path)
    ranges = read_ranges_csv(path)
    if "quantity" in ranges.columns:
        ranges = ranges.set_index("quantity")
    min_width = float(search["step2"].get("min_range_width", 0.0))
    out = {}
    for q in RATIO_QUANTITIES:
        if q in ranges.index:
            low, high = float(ranges.loc[q, "low"]), float(ranges.loc[q, "high"])
            pad = max(0.0, (min_width - (high - low)) / 2)
            out[q] = (max(0.0, low - pad), min(1.0, high + pad))
    return out


def _sample(store: RunStore, search: dict[str, Any], step: int,
            ranges: dict[str, tuple[float, float]] | None) -> list[DetectorSpec]:
    space = presets.build_space(search)
    t0 = time.perf_counter()
    specs = space.sample(search["num_samples"], seed=presets.sample_seed(search["seed"], step),
                         step=step, ranges=ranges, exclude=store.read_plan(1) or [])
    print(f"step {step}: planned {len(specs)} specs in {time.perf_counter() - t0:.2f}s"
          + (f" within step-1 ranges {_fmt_ranges(ranges)}" if ranges else ""), file=sys.stderr)
    return specs


def _plan_step1(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    return _sample(store, search, 1, None)


def _plan_step2(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    return _sample(store, search, 2, step2_ranges(store, search))


def _fmt_ranges(ranges: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{q[6:]} {lo:.2f}-{hi:.2f}" for q, (lo, hi) in ranges.items())


def finish(store: RunStore, search: dict[str, Any]) -> None:
    """Analysis (plots, ranges, report), export of the top-k specs, the summary table."""
    from analysis.report import analyze_run

    from nas.export import export_top
    from nas.progress import summary_table

    table = store.read_table()
    if table is not None and (table["status"] == "ok").any():
        analyze_run(store.run_dir, metric="ap_hard", seed=search["seed"])
        paths = export_top(store.run_dir, top=search["top_k"], metric="ap_hard")
        print(f"exported {len(paths)} retraining configs to {store.run_dir / 'export'}",
              file=sys.stderr)
    print(summary_table(table, top=search["top_k"]) if table is not None else "no trials")
