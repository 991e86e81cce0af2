"""SCRFD's two-step computation redistribution (SCRFD sec. 4.2), the algorithm's own part.

Step 1 samples backbones under the FLOPs band with the neck and head fixed; after its trials,
the empirical bootstrap of the best models' backbone ratios (analysis.bootstrap) gives the
ranges step 2 samples whole detectors inside (`step2_ranges`). Each step draws with its own
seed (`sample_seed`). Ranges that admit too few specs under the budget band are widened toward
the whole extent of a ratio (`widen`), step by step, by the glue's step-2 planning. The space's glue (preset, phases) is nas/spaces/scrfd.py.
"""

from __future__ import annotations

from typing import Sequence

from detectors.errors import UserError
from nas.results import COLUMNS, RunStore

__all__ = ["step2_ranges", "sample_seed", "widen", "support", "MIN_SUPPORT", "NARROW_FILE"]

# A step-1 range is supported when at least this many successful step-1 specs (all inside the
# budget band) have the quantity inside it; an unsupported range narrower than the preset's
# `step2.min_range_width` is widened to it (`step2.min_support` overrides the count).
MIN_SUPPORT = 5
NARROW_FILE = "step2_narrow.csv"  # in RUN_DIR/plan/: the ranges widened for lack of support


def sample_seed(search_seed: int, step: int) -> int:
    """The sampler seed of a search step: steps draw independently, reproducibly per seed."""
    return search_seed + 1000 * step


def support(values: Sequence[float], low: float, high: float) -> int:
    """How many of step 1's values lie inside [low, high]."""
    return sum(1 for v in values if low <= v <= high)


def step2_ranges(store: RunStore, seed: int, min_width: float, quantities: Sequence[str],
                 min_support: int = MIN_SUPPORT) -> dict[str, tuple[float, float]] | None:
    """Step 1's bootstrap ranges of `quantities` (None if step 1 was not run).

    A range is widened to `min_width` around its centre only when step 1's population is too
    small to support it: fewer than `min_support` successful step-1 specs have the quantity
    inside it (a small population, smoke/quick, can put every bootstrap winner on one model,
    which would leave step 2 a single point to sample from). A well-supported range is kept
    as the bootstrap gave it, however narrow. The widened ones are recorded in
    plan/step2_narrow.csv (quantity, low, high, support, min_support, low_used, high_used),
    which the analysis report quotes; no file means none was widened.
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
        write_ranges_csv(bootstrap_ranges(table, metric="ap_hard", seed=seed), path)
    ranges = read_ranges_csv(path)
    if "quantity" in ranges.columns:
        ranges = ranges.set_index("quantity")
    ok = [r for r in rows if r.get("status") == "ok"]
    out, narrow = {}, []
    for q in quantities:
        if q in ranges.index:
            low, high = float(ranges.loc[q, "low"]), float(ranges.loc[q, "high"])
            n = support([float(r[q]) for r in ok], low, high)
            pad = max(0.0, (min_width - (high - low)) / 2) if n < min_support else 0.0
            out[q] = (max(0.0, low - pad), min(1.0, high + pad))
            if pad:
                narrow.append({"quantity": q, "low": low, "high": high, "support": n,
                               "min_support": int(min_support), "low_used": out[q][0],
                               "high_used": out[q][1]})
    _record_narrow(store.run_dir / "plan" / NARROW_FILE, narrow)
    return out


def _record_narrow(path, narrow: list[dict]) -> None:
    import pandas as pd

    from nas.results import atomic_write_text

    if not narrow:
        path.unlink(missing_ok=True)
        return
    text = pd.DataFrame(narrow).to_csv(index=False)
    if not path.is_file() or path.read_text() != text:  # the same ranges every call
        atomic_write_text(path, text)


def widen(ranges: dict[str, tuple[float, float]], fraction: float
          ) -> dict[str, tuple[float, float]]:
    """Each range's ends moved `fraction` of the way to [0, 1], a backbone ratio's whole
    extent: 0 keeps step 1's ranges, 1 constrains nothing."""
    f = float(fraction)
    return {q: (low * (1 - f), high + f * (1 - high)) for q, (low, high) in ranges.items()}
