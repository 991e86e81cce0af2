"""`facenas search --prescreen PROXY [--prescreen-keep F]`: sample 1/F times as many specs as
a phase trains, score each with a zero-cost proxy (nas.proxies) and keep the best F of them.

It sits in one place, between a phase's sampling and its plan file: the driver plans every
phase through `plan()`. A phase that samples the specs it trains names the search key holding
its sample count (`Phase.prescreen`, SCRFD: `num_samples`, so both of its steps); `plan()`
calls the phase's own sampler with that count raised to ceil(n / F), scores every sampled
spec on one real batch (batch 0 of the trial recipe's training stream on the search's data,
the same batch for every spec; one torch thread) with the model initialised from the search
seed, and returns the n best (ties: the smaller spec id). Phases without the key (BFBox's
candidates, which inherit supernet weights; ASFD's searches and their derived detectors) are
planned as before, and `--prescreen` with a space none of whose phases has one is refused
(nas.space_table).

Recorded in RUN_DIR/plan/prescreen.csv, written before the plan file: one row per sampled spec
and step (step, spec_id, proxy, score, cost_s, rank, kept); the kept specs' rows in the
results table carry their score in the column `prescreen_<proxy>`. A re-plan (a resume killed
between the two files) draws the same specs and reuses the recorded scores.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from detectors.errors import UserError

if TYPE_CHECKING:
    from detectors.config import Recipe
    from detectors.spec import DetectorSpec
    from nas.phases import Phase
    from nas.results import RunStore

__all__ = ["DEFAULT_KEEP", "PRESCREEN_FILE", "resolve_prescreen", "sampled_count", "plan",
           "row_columns"]

DEFAULT_KEEP = 0.25  # --prescreen-keep: train the best quarter of 4x as many samples
PRESCREEN_FILE = "prescreen.csv"  # in RUN_DIR/plan/
_COLUMNS = ["step", "spec_id", "proxy", "score", "cost_s", "rank", "kept"]


def resolve_prescreen(proxy: str | None, keep: float | None) -> dict[str, Any] | None:
    """The search config's `prescreen` entry ({proxy, keep}) from the options, or None; one
    line for an unknown proxy or a fraction outside (0, 1]."""
    from nas.proxies import check_proxy

    if proxy is None:
        if keep is not None:
            raise UserError(f"--prescreen-keep {keep:g} applies only with --prescreen PROXY")
        return None
    check_proxy(proxy)
    keep = DEFAULT_KEEP if keep is None else float(keep)
    if not (0 < keep <= 1) or math.isnan(keep):
        raise UserError(f"--prescreen-keep {keep:g} must be in (0, 1]: the fraction of the "
                        "sampled specs that is trained")
    return {"proxy": proxy, "keep": keep}


def sampled_count(search: dict[str, Any], n: int) -> int:
    """How many specs a prescreened phase that trains `n` samples (n itself without one)."""
    pre = search.get("prescreen")
    return n if not pre else math.ceil(n / float(pre["keep"]) - 1e-9)


def _path(store: "RunStore") -> Path:
    return store.run_dir / "plan" / PRESCREEN_FILE


def _recorded(store: "RunStore"):
    import pandas as pd

    path = _path(store)
    return pd.read_csv(path, dtype={"spec_id": str}) if path.is_file() else None


def plan(store: "RunStore", search: dict[str, Any], phase: "Phase",
         trial_recipe: Callable[[dict[str, Any]], "Recipe"]) -> list["DetectorSpec"]:
    """The phase's specs: its own plan, prescreened when the search asks and the phase samples
    (module docstring). `trial_recipe(search)`: the recipe its trials train with."""
    pre = search.get("prescreen")
    if not pre or not phase.prescreen:
        return phase.plan(store, search)
    key = phase.prescreen
    n = int(search[key])
    sampled = phase.plan(store, {**search, key: sampled_count(search, n)})
    scores = _scores(store, search, phase.step, sampled, trial_recipe)
    order = sorted(range(len(sampled)), key=lambda i: (-_finite(scores[i][0]), sampled[i].id))
    kept = set(order[:n])
    rows = [{"step": phase.step, "spec_id": sampled[i].id, "proxy": pre["proxy"],
             "score": scores[i][0], "cost_s": scores[i][1], "rank": rank + 1,
             "kept": i in kept} for rank, i in enumerate(order)]
    _write(store, phase.step, rows)
    print(f"{phase.label}: prescreen kept {len(kept)} of {len(sampled)} sampled specs by "
          f"{pre['proxy']} (plan/{PRESCREEN_FILE})", file=sys.stderr)
    return [sampled[i] for i in sorted(kept)]  # in sampling order


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf  # NaN and -inf last


def _scores(store: "RunStore", search: dict[str, Any], step: int, specs: list["DetectorSpec"],
            trial_recipe: Callable[[dict[str, Any]], "Recipe"]) -> list[tuple[float, float]]:
    """(score, cost_s) per spec: the recorded ones when this step's record holds exactly these
    specs, else computed."""
    import dataclasses

    from nas.proxies import proxy_batch, score_spec

    pre, table = search["prescreen"], _recorded(store)
    if table is not None:
        mine = table[(table["step"] == step) & (table["proxy"] == pre["proxy"])]
        if set(mine["spec_id"]) == {s.id for s in specs}:
            by_id = mine.set_index("spec_id")
            return [(float(by_id.at[s.id, "score"]), float(by_id.at[s.id, "cost_s"])) for s in specs]
    import torch

    recipe = dataclasses.replace(trial_recipe(search), seed=int(search["seed"]))
    batch = proxy_batch(search["data"], recipe)
    t0, out = time.perf_counter(), []
    # one torch thread: small models, one after another; the driver's default (every CPU)
    # ran 10x slower on a busy 2-core box, where Ray's workers share the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec in specs:
            out.append(score_spec(pre["proxy"], spec, batch, recipe, seed=int(search["seed"])))
    finally:
        torch.set_num_threads(threads)
    print(f"step {step}: scored {len(specs)} specs with {pre['proxy']} in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out


def _write(store: "RunStore", step: int, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    from nas.results import atomic_write_text

    table = _recorded(store)
    new = pd.DataFrame(rows, columns=_COLUMNS)
    if table is not None:
        new = pd.concat([table[table["step"] != step], new], ignore_index=True)
    atomic_write_text(_path(store), new.to_csv(index=False))  # full precision: reused on re-plan
    _scores_of.cache_clear()


@functools.lru_cache(maxsize=8)
def _scores_of(path: str, mtime_ns: int) -> dict[tuple[int, str], tuple[str, float]]:
    import pandas as pd

    table = pd.read_csv(path, dtype={"spec_id": str})
    return {(int(r.step), r.spec_id): (r.proxy, float(r.score)) for r in table.itertuples()}


def row_columns(store: "RunStore", step: int, spec_id: str) -> dict[str, float]:
    """{'prescreen_<proxy>': score} for a prescreened spec's results row ({} otherwise)."""
    path = _path(store)
    if not path.is_file():
        return {}
    hit = _scores_of(str(path), path.stat().st_mtime_ns).get((step, spec_id))
    return {} if hit is None else {f"prescreen_{hit[0]}": hit[1]}
