"""SCRFD's glue: its presets (experiments/search/scrfd_<regime>g.yaml), the two steps as
driver phases, each planned spec trained and tested by nas.trial.run_trial.

    step 1  backbones sampled under the FLOPs band, the neck and head fixed (`step1:`)
    step 2  whole detectors, sampled inside step 1's bootstrap ranges; when those ranges and
            the budget band admit too few specs, the ranges are widened step by step toward
            the whole space (`plan_step2`, recorded in plan/step2_widening.csv)

`check` refuses, before anything is written, a band under which step 2 could not be filled
even over the whole space, so the last widening step always fills.

A preset holds one regime's target, bounds, block type, the neck/head fixed in step 1, the
search recipe (with per-budget scaling; budgets.yaml's smoke / quick / paper shared by every
regime) and the retraining recipe used by export.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detectors.config import CONFIG_BUDGET_KEYS, Schedule
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from experiments import SEARCH_DIR
from nas.options import SearchOptions
from nas.phases import Phase, PresetRules, SpaceEntry
from nas.presets import recipe_mapping
from nas.results import RunStore
from nas.trial import budget_scaled_recipe
from nas.strategies.two_step import sample_seed, step2_ranges as bootstrap_step2_ranges, widen

if TYPE_CHECKING:
    from search_spaces.scrfd.space import ScrfdSpace

__all__ = ["PRESET", "REGIMES", "ENTRY", "preset_path", "resolve", "derive", "check", "phases", "trial_recipe",
           "build_space", "step2_ranges", "steps", "trial_schedule", "trial_iterations",
           "check_step2_fills", "plan_step2", "widen", "step2_sampled_ranges", "WIDENING_FILE",
           "CHECK_BATCHES", "WIDEN_STEPS", "STEP_BATCHES"]

# Draw budgets, in batches of the sampler's batch_size (131,072 candidates by default; a batch
# costs ~25 ms under a FLOPs band, which prunes the draw tables and leaves few candidates to
# price, but seconds under a latency band alone, which prices every candidate).
# CHECK_BATCHES (4.2M draws): the check refuses a band that admits no spec in them; the FLOPs
# band alone accepts ~5e-4 (2.5 GF) to ~9e-3 (34 GF) of whole-space step-2 draws (some 2,000+
# specs in these draws where the paper budget needs 640). A band that admits some, but fewer
# than step 2 needs, is drawn on up to the sampler's own budget (max_batches, 400 batches):
# what step 2 would draw anyway. The last widening step redraws exactly the check's candidates
# (same seed, same space), so what the check found, step 2 finds.
CHECK_BATCHES = 32
# WIDEN_STEPS: each widening step moves every range's ends 1/8 of the way to the whole extent
# of a backbone ratio, [0, 1]; step 8 is the whole space (no range constraint).
WIDEN_STEPS = 8
# STEP_BATCHES (4.2M draws, ~1 s under a FLOPs band): per widening step before the last; the
# draws are the same candidates at every step (same seed), only the ranges accepting them grow,
# so steps 1..7 choose from step 0's band-accepted candidates, drawn and priced once more.
STEP_BATCHES = 32
WIDENING_FILE = "step2_widening.csv"  # in RUN_DIR/plan/, beside step2_ranges.csv

REGIMES = (0.5, 2.5, 10.0, 34.0)  # GFLOPs of the presets that exist


def preset_path(gflops: float) -> Path:
    """The preset of the regime nearest to `gflops` (its target is then replaced)."""
    nearest = min(REGIMES, key=lambda g: abs(g - gflops))
    return SEARCH_DIR / f"scrfd_{nearest:g}g.yaml"


PRESET = PresetRules(
    path=preset_path,
    keys=frozenset({"space", "gflops", "flops", "tolerance", "block", "template", "gn_groups", "bounds",
                    "step1", "step2", "top_k", "recipe", "retrain_recipe", "budgets"}),
    # a retraining config's budget keys (recipe, synthetic) plus the search's own
    budget_keys=frozenset({"num_samples", "max_iterations", *CONFIG_BUDGET_KEYS}),
    shared_budgets=True)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """SCRFD's options are the common ones (--num-samples, --steps)."""


def _template_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return DetectorSpec.from_yaml(Path(value)).to_dict()
    return DetectorSpec.from_dict(value).to_dict()


def resolve(preset: dict[str, Any], budget: dict[str, Any], opts: SearchOptions) -> dict[str, Any]:
    """The resolved search config from the regime's preset and the options."""
    samples = int(opts.num_samples if opts.num_samples is not None else budget.get("num_samples", 8))
    if samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {samples}")
    if opts.steps not in ("1", "2", "both"):
        raise UserError(f"--steps must be 1, 2 or both, got {opts.steps!r}")
    return {
        "space": "scrfd", "preset": None, "gflops": float(opts.gflops),
        # what --gflops counts: mmcv's flops, as the SCRFD tables (default), or conv MACs
        "flops": str(preset.get("flops", "mmcv")),
        "tolerance": float(preset.get("tolerance", 0.02)), "block": preset["block"],
        "gn_groups": int(preset.get("gn_groups", 16)), "bounds": dict(preset.get("bounds", {})),
        "step1": dict(preset["step1"]), "step2": dict(preset.get("step2", {})),
        "template": _template_dict(preset["template"]),
        "budget": opts.budget, "num_samples": samples, "seed": int(opts.seed), "steps": opts.steps,
        "data": None, "max_failures": int(opts.max_failures), "top_k": int(preset.get("top_k", 5)),
        "max_iterations": budget.get("max_iterations"),
        "recipe": recipe_mapping(preset.get("recipe")),
        "recipe_overrides": dict(budget.get("recipe", {}) or {}),
        "retrain_recipe": recipe_mapping(preset.get("retrain_recipe", preset.get("recipe"))),
        "synthetic": dict(budget.get("synthetic") or {}),
    }


def derive(search: dict[str, Any], opts: SearchOptions) -> None:
    """The rungs (nas.fidelity) of the final schedule, and a note when its warm-up spans them."""
    from nas.fidelity import fidelity_from, warmup_note

    total = trial_iterations(search)
    fidelity = fidelity_from(opts.scheduler, opts.grace, opts.reduction_factor, total,
                             opts.rung_metric)
    note = warmup_note(fidelity, total, trial_schedule(search).warmup_iters)
    if note:
        print(note, file=sys.stderr)
    search["fidelity"] = fidelity.to_dict()


def steps(search: dict[str, Any]) -> tuple[int, ...]:
    return {"1": (1,), "2": (2,), "both": (1, 2)}[search["steps"]]


def check(search: dict[str, Any]) -> None:
    """An infeasible budget is an error before anything is written: a band no spec of a step
    can meet, or one under which step 2 could not be filled even over the whole space."""
    space = build_space(search)
    for step in steps(search):
        space.check_feasible(step)
    if 2 in steps(search):
        check_step2_fills(space, search)


def _step2_need(search: dict[str, Any]) -> int:
    """Distinct whole-space specs that guarantee step 2's plan: its num_samples, plus as many
    again when step 1 runs (step 2 skips specs step 1 planned, at most num_samples of them)."""
    from nas.strategies.prescreen import sampled_count

    n = sampled_count(search, int(search["num_samples"]))  # --prescreen samples more
    return 2 * n if 1 in steps(search) else n


def check_step2_fills(space: "ScrfdSpace", search: dict[str, Any]) -> None:
    """UserError (one line) when the budget band alone (no step-1 ranges, the whole step-2
    space) admits no spec in CHECK_BATCHES batches of draws, or fewer than step 2 needs in the
    sampler's whole budget."""
    need = _step2_need(search)
    specs, drawn = space.fill(need, sample_seed(search["seed"], 2), step=2,
                              give_up_empty=CHECK_BATCHES)
    if len(specs) < need:
        raise UserError(
            f"step 2 could not be filled: the budget band {space.band_text()} admits only "
            f"{len(specs)} of the {need} distinct {space.block} specs it needs in {drawn:,} draws "
            "of the whole step-2 space; move or widen the band (--gflops, --latency-ms, "
            "--latency-tolerance, --set tolerance=...) or lower --num-samples")


def phases(search: dict[str, Any]) -> list[Phase]:
    return [Phase(step=s, label=f"step {s}", plan=_plan_step1 if s == 1 else plan_step2,
                  prescreen="num_samples")  # both steps sample the specs they train
            for s in steps(search)]


def build_space(search: dict[str, Any]) -> "ScrfdSpace":
    """The sampler (search_spaces.scrfd.space.ScrfdSpace) described by a resolved config."""
    from search_spaces.scrfd.space import ScrfdSpace, SpaceBounds, Step1Fixed

    try:
        bounds = SpaceBounds(**search["bounds"])
        step1 = Step1Fixed(**search["step1"])
    except TypeError as err:
        raise UserError(f"{search['preset']}: bad bounds/step1 ({err})") from None
    latency = None
    if search.get("latency"):
        from nas.latency_budget import band, table_of

        latency = (table_of(search["latency"]["table"]), *band(search["latency"]))
    return ScrfdSpace(DetectorSpec.from_dict(search["template"]), gflops=search["gflops"],
                      block=search["block"], step1=step1, tolerance=search["tolerance"],
                      gn_groups=search["gn_groups"], bounds=bounds, latency=latency,
                      flops_band=search.get("gflops_band", True),
                      # a run configured before the key existed banded conv MACs
                      flops=search.get("flops", "macs"))


def trial_schedule(search: dict[str, Any]) -> Schedule:
    """The LR schedule one trial of this search trains with (budget and overrides applied)."""
    return budget_scaled_recipe(search).schedule


def trial_iterations(search: dict[str, Any]) -> int | None:
    """Training iterations of one trial of this search (None when its schedule counts epochs:
    the number then depends on the dataset, read only by the trial)."""
    schedule = trial_schedule(search)
    if schedule.unit != "iterations":
        return None
    cap = search.get("max_iterations")
    return min(schedule.total, int(cap)) if cap else schedule.total


def step2_ranges(store: RunStore, search: dict[str, Any]) -> dict[str, tuple[float, float]] | None:
    """Step 1's bootstrap ranges of the backbone ratios; those that fewer than
    `step2.min_support` step-1 specs support widened to `step2.min_range_width` (None if step 1
    was not run)."""
    from nas.strategies.two_step import MIN_SUPPORT
    from search_spaces.scrfd.space import RATIO_QUANTITIES

    step2 = search["step2"]
    return bootstrap_step2_ranges(store, search["seed"], float(step2.get("min_range_width", 0.0)),
                                  RATIO_QUANTITIES, int(step2.get("min_support", MIN_SUPPORT)))


def _sample(store: RunStore, search: dict[str, Any], step: int,
            ranges: dict[str, tuple[float, float]] | None) -> list[DetectorSpec]:
    space = build_space(search)
    t0 = time.perf_counter()
    specs = space.sample(search["num_samples"], seed=sample_seed(search["seed"], step),
                         step=step, ranges=ranges, exclude=store.read_plan(1) or [])
    print(f"step {step}: planned {len(specs)} specs in {time.perf_counter() - t0:.2f}s"
          + (f" within step-1 ranges {_fmt_ranges(ranges)}" if ranges else ""), file=sys.stderr)
    return specs


def _plan_step1(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    return _sample(store, search, 1, None)


def plan_step2(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    """Step 2's specs inside step 1's ranges, widened toward the whole space while they and the
    band admit fewer than num_samples specs (the whole space fills: `check`).

    Deterministic for a run (seeded by the search seed), so a resume that finds no
    plan/step2.yaml draws the same plan again. A widening is written to
    plan/step2_widening.csv before the plan, one row per step tried.
    """
    ranges = step2_ranges(store, search)
    if ranges is None:  # step 1 not run: the whole space
        return _sample(store, search, 2, None)
    _say_narrow(store)
    space = build_space(search)
    num, seed = int(search["num_samples"]), sample_seed(search["seed"], 2)
    exclude = store.read_plan(1) or []
    t0 = time.perf_counter()
    tried: list[dict[str, Any]] = []
    pool = None
    for k in range(WIDEN_STEPS + 1):
        fraction = k / WIDEN_STEPS
        wide = widen(ranges, fraction)
        last = k == WIDEN_STEPS  # [0, 1] everywhere: no constraint, the space's own budget
        if k == 0 or last:
            specs, drawn = space.fill(num, seed, step=2, ranges=None if last else wide,
                                      exclude=exclude, max_batches=None if last else STEP_BATCHES)
        else:  # the same draws as step 0's, priced once (a latency band prices every draw)
            pool = pool or space.band_pool(seed, 2, STEP_BATCHES)
            specs, drawn = space.pick(pool, num, wide, exclude)
        tried.append({"widening": k, "fraction": fraction, "draws": drawn, "found": len(specs),
                      "wanted": num, **{f"{q}_{end}": v for q, (lo, hi) in wide.items()
                                        for end, v in (("low", lo), ("high", hi))}})
        if len(specs) == num:
            break
        if last:  # only a run whose config `check` did not pass (e.g. written before it)
            raise UserError(
                f"step 2: the budget band {space.band_text()} admits only {len(specs)} of {num} "
                f"specs even over the whole space, after {drawn:,} draws")
        print(f"step 2: the ranges {_fmt_ranges(wide)} ({fraction:.1%} widened) and the budget "
              f"band admit only {len(specs)} of {num} specs in {drawn:,} draws; widening them "
              f"{1 / WIDEN_STEPS:.1%} more toward the whole space", file=sys.stderr)
    widening = store.run_dir / "plan" / WIDENING_FILE
    took = f"{time.perf_counter() - t0:.2f}s"
    if k:
        _write_widening(widening, tried)
        print(f"step 2: planned {len(specs)} specs in {took} after widening step 1's ranges "
              f"{fraction:.1%} of the way toward the whole space, to {_fmt_ranges(wide)} "
              f"(plan/{WIDENING_FILE})", file=sys.stderr)
    else:  # none needed: no record (nor one left by an earlier draw of this plan)
        widening.unlink(missing_ok=True)
        print(f"step 2: planned {len(specs)} specs in {took} within step-1 ranges "
              f"{_fmt_ranges(wide)}", file=sys.stderr)
    return specs


def _say_narrow(store: RunStore) -> None:
    """One line naming the step-1 ranges widened for lack of support (plan/step2_narrow.csv)."""
    from nas.strategies.two_step import NARROW_FILE

    path = store.run_dir / "plan" / NARROW_FILE
    if path.is_file():
        import pandas as pd

        rows = pd.read_csv(path)
        said = ", ".join(f"{r.quantity[6:]} {r.low:.3f}-{r.high:.3f} -> {r.low_used:.3f}-"
                         f"{r.high_used:.3f} ({int(r.support)} specs)" for r in rows.itertuples())
        print(f"step 2: step 1's population is too small to support {len(rows)} range(s), "
              f"fewer than {int(rows['min_support'].iloc[0])} step-1 specs inside each: widened "
              f"to step2.min_range_width: {said} (plan/{NARROW_FILE})", file=sys.stderr)


def _write_widening(path: Path, tried: list[dict[str, Any]]) -> None:
    import pandas as pd

    from nas.results import atomic_write_text

    # full precision: the ranges read back must hold every spec they accepted
    atomic_write_text(path, pd.DataFrame(tried).to_csv(index=False))


def step2_sampled_ranges(store: RunStore, search: dict[str, Any]
                         ) -> dict[str, tuple[float, float]] | None:
    """The ranges step 2 was drawn in: the last widening's, else step 1's (None without)."""
    path = store.run_dir / "plan" / WIDENING_FILE
    if not path.is_file():
        return step2_ranges(store, search)
    import pandas as pd

    last = pd.read_csv(path).iloc[-1]
    quantities = [c[:-4] for c in last.index if c.endswith("_low")]
    return {q: (float(last[f"{q}_low"]), float(last[f"{q}_high"])) for q in quantities}


def _fmt_ranges(ranges: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{q[6:]} {lo:.2f}-{hi:.2f}" for q, (lo, hi) in ranges.items())


# a trial trains the search recipe scaled to the budget, then the budget's own recipe section
trial_recipe = budget_scaled_recipe

ENTRY = SpaceEntry(preset=PRESET, resolve=resolve, derive=derive, check=check, phases=phases,
                   trial_recipe=trial_recipe, add_arguments=add_arguments,
                   schedulers=("fifo", "asha"))
