"""BFBox's glue: its preset (experiments/search/bfbox.yaml), options, phases, trials.

    facenas search --space bfbox --gflops G [--strategy random|evolution] [--num-candidates N]
                   [--supernet PATH] [--population P] [--generations G] [--parents K]
                   [--fpn-attention on|off] [--budget smoke|quick|paper] ...

Phases: step 0 trains the supernet (one whole-node trial, no results row; absent with
--supernet; `--nproc-per-trial N`: N training processes, DDP), steps 1..G evaluate the candidate generations (random search: one). A candidate
trial reads the supernet checkpoint of step 0 (or --supernet), inherits its path's weights,
recalibrates BN and tests on the fixed subsets (nas.strategies.candidates); its row carries the
path's analytic cost. The finish exports the top-k paths as retraining configs.

A budget (smoke / quick / paper) is merged over the preset: its `frame` (the BFBoxSpace),
candidate counts, subsets and recipes. Every bad option is a UserError before anything is
written: unknown strategy, a --gflops no path meets (with the space's min and max), an
evolution population below top-k, a --supernet checkpoint of another space.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from detectors.config import merge
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from experiments import SEARCH_DIR
from nas.options import SearchOptions
from nas.phases import Phase, PresetRules, SpaceEntry
from nas.results import RunStore

if TYPE_CHECKING:
    from detectors.config import Recipe
    from nas.strategies.evolution import Evolution, RandomSearch
    from nas.trial import TrialRequest
    from search_spaces.bfbox.space import BFBoxSpace

__all__ = ["PRESET", "ENTRY", "SUPERNET_STEP", "resolve", "derive", "check", "phases", "trial_recipe",
           "add_arguments", "space_of", "planner", "run_supernet", "plan_candidates",
           "evaluate_candidate", "scored_rows", "supernet_checkpoint", "supernet_trial",
           "candidate_trial"]

SUPERNET_STEP = 0
PRESET = PresetRules(
    path=lambda gflops: SEARCH_DIR / "bfbox.yaml",  # one preset; --gflops picks the band
    keys=frozenset({"space", "frame", "tolerance", "strategy", "evolution", "num_candidates",
                    "candidates", "top_k", "recipe", "retrain_recipe", "synthetic", "budgets"}),
    budget_keys=frozenset({"frame", "num_candidates", "candidates", "evolution", "recipe",
                           "retrain_recipe", "synthetic"}))


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--strategy", default=None, help="random (the paper's) | evolution")
    group.add_argument("--num-candidates", type=int, default=None,
                       help="candidates evaluated (default: the budget's; paper 10000)")
    group.add_argument("--supernet", default=None, metavar="PATH",
                       help="reuse a trained bfbox supernet (checkpoint or its training dir)")
    group.add_argument("--population", type=int, default=None, help="evolution population (50)")
    group.add_argument("--generations", type=int, default=None, help="evolution generations (20)")
    group.add_argument("--parents", type=int, default=None, help="evolution top-k parents (10)")
    group.add_argument("--fpn-attention", choices=("on", "off"), default=None,
                       help="the supernet's FPN-attention module (default on)")


def resolve(preset: dict[str, Any], budget: dict[str, Any], opts: SearchOptions) -> dict[str, Any]:
    """The resolved search config: the preset with the budget merged in, then the options."""
    from detectors.config import recipe_from_dict
    from search_spaces.bfbox.space import BFBoxSpace

    o = dict(opts.space_options or {})
    cfg = merge({k: v for k, v in preset.items() if k != "budgets"}, budget)
    cli_evolution = {k: v for k, v in (("population", o.get("population")),
                                       ("generations", o.get("generations")),
                                       ("top_k", o.get("parents"))) if v is not None}
    frame = {} if o.get("fpn_attention") is None else {"attention": o["fpn_attention"] == "on"}
    space = BFBoxSpace.from_dict({**cfg["frame"], **frame}, "frame")
    supernet = o.get("supernet")
    num_candidates = o.get("num_candidates") or opts.num_samples
    return {
        "space": "bfbox", "preset": None, "budget": opts.budget, "gflops": float(opts.gflops),
        "tolerance": float(cfg["tolerance"]), "frame": space.to_dict(),
        "strategy": o.get("strategy") or cfg["strategy"],
        "evolution": {**cfg["evolution"], **cli_evolution},
        "num_candidates": int(num_candidates or cfg["num_candidates"]),
        "candidates": dict(cfg["candidates"]), "seed": int(opts.seed),
        "supernet": str(Path(supernet).resolve()) if supernet else None, "data": None,
        "synthetic": dict(cfg.get("synthetic") or {}),
        "top_k": int(opts.top_k or cfg["top_k"]),
        "recipe": recipe_from_dict(cfg["recipe"]).to_dict(),
        "retrain_recipe": recipe_from_dict(cfg["retrain_recipe"]).to_dict(),
        "max_failures": int(opts.max_failures), "recipe_overrides": {}, "max_iterations": None,
    }


def trial_recipe(search: dict[str, Any]) -> "Recipe":
    """The supernet trains with `recipe` as resolved (the budget is merged in by resolve)."""
    from detectors.config import recipe_from_dict

    return recipe_from_dict(search["recipe"])


def derive(search: dict[str, Any], opts: SearchOptions) -> None:
    """Evolution evaluates population x generations candidates, capped by --num-candidates.
    A schedule asked for without --num-candidates sets it; otherwise a mismatch is said once
    (it used to cut generations silently)."""
    if search["num_candidates"] < 1:
        raise UserError(f"--num-candidates must be at least 1, got {search['num_candidates']}")
    if search["strategy"] != "evolution":
        return
    o, sets = opts.space_options or {}, [s.partition("=")[0] for s in opts.overrides]
    asked_candidates = bool(o.get("num_candidates") or opts.num_samples
                            or "num_candidates" in sets)
    asked_schedule = bool(o.get("population") or o.get("generations") or {
        "evolution.population", "evolution.generations", "evolution"} & set(sets))
    evo = search["evolution"]
    pop, gens = int(evo["population"]), int(evo["generations"])
    if asked_schedule and not asked_candidates:
        search["num_candidates"] = pop * gens
        return
    n = search["num_candidates"]
    if pop * gens > n:
        print(f"evolution: --num-candidates {n} allows {max(1, n // pop)} of the {gens} generations "
              f"of {pop}; pass --num-candidates {pop * gens} for all", file=sys.stderr)
    elif pop * gens < n:
        print(f"evolution: {gens} generations of {pop} evaluate {pop * gens} candidates, fewer than "
              f"--num-candidates {n}; raise --generations to use them", file=sys.stderr)


def check(search: dict[str, Any]) -> None:
    """Unknown strategy, infeasible --gflops, population < top-k; a --supernet of another space."""
    from search_spaces.bfbox.space import BFBoxSpace

    planner(search)
    if search["supernet"]:
        from nas.strategies.spos import load_supernet

        load_supernet(search["supernet"], BFBoxSpace.from_dict(search["frame"]))


def space_of(search: dict[str, Any]) -> "BFBoxSpace":
    """The config's frame (search_spaces.bfbox.space.BFBoxSpace), with the search's latency
    band when it has one."""
    from search_spaces.bfbox.space import BFBoxSpace

    space = BFBoxSpace.from_dict(search["frame"])
    if search.get("latency"):
        import dataclasses

        from nas.latency_budget import band, table_of

        space = dataclasses.replace(space, latency=(table_of(search["latency"]["table"]),
                                                    *band(search["latency"])))
    return space


def planner(search: dict[str, Any]) -> "RandomSearch | Evolution":
    """The candidate planner (nas.strategies.evolution: random or evolution)."""
    from nas.strategies.evolution import make_strategy

    gflops = search["gflops"] if search.get("gflops_band", True) else None  # latency alone
    return make_strategy(search["strategy"], space_of(search), gflops,
                         search["num_candidates"], search["tolerance"], search["seed"],
                         **search["evolution"])


def run_supernet(search: dict[str, Any], out_dir: str | os.PathLike, data_root: str | os.PathLike,
                 *, num_threads: int | None = None, max_iterations: int | None = None,
                 workers: int | None = None, processes: int = 1) -> Path:
    """Phase 0: the supernet checkpoint (the given --supernet, or trained / resumed here, in
    `processes` local processes: --nproc-per-trial)."""
    from detectors.config import recipe_from_dict
    from detectors.train import CHECKPOINT
    from nas.strategies.spos import train_supernet

    if search["supernet"]:
        return Path(search["supernet"])
    out_dir = Path(out_dir)
    result = train_supernet(space_of(search), recipe_from_dict(search["recipe"]), data_root,
                            out_dir, seed=search["seed"], resume=(out_dir / CHECKPOINT).is_file(),
                            num_threads=num_threads, max_iterations=max_iterations, workers=workers,
                            processes=processes)
    if result.checkpoint is None:
        raise RuntimeError(f"supernet training wrote no checkpoint ({result.message})")
    return result.checkpoint


def plan_candidates(search: dict[str, Any], generation: int,
                    scored: list[tuple[str, float]]) -> list[dict[str, str]]:
    """Generation `generation`'s candidates as [{spec_id, spec}] (spec: canonical YAML), from
    the (spec_yaml, ap_hard) of those scored so far. Empty when the strategy is done."""
    space = space_of(search)
    history = [(space.encode(space.from_spec(DetectorSpec.from_yaml(s))), float(ap))
               for s, ap in scored]
    out = []
    for genes in planner(search).propose(generation, history):
        spec = space.template(space.decode(genes))
        out.append({"spec_id": spec.id, "spec": spec.to_yaml()})
    return out


def evaluate_candidate(search: dict[str, Any], spec_yaml: str, supernet_path: str | os.PathLike,
                       data_root: str | os.PathLike) -> dict[str, Any]:
    """One candidate: inherit, recalibrate, test; the results-row metrics."""
    from nas.strategies.candidates import evaluate_candidate as evaluate

    test = search["recipe"]["test"]
    metrics = evaluate(search["frame"], spec_yaml, supernet_path, data_root, search["candidates"],
                       search["seed"], test["score_thresh"], test["iou_thresh"])
    # the column the band applies to, beside the contract's VGA `gflops`
    space = space_of(search)
    metrics["band_gflops"] = float(space.band_gflops(
        space.encode(space.from_spec(DetectorSpec.from_yaml(spec_yaml))))[0])
    return metrics


def scored_rows(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(spec_yaml, ap_hard) of the ok rows of a results table (for plan_candidates)."""
    return [(r["spec_yaml"], float(r["ap_hard"])) for r in rows
            if r.get("status") == "ok" and np.isfinite(float(r.get("ap_hard", np.nan)))]


def _supernet_spec(search: dict[str, Any]) -> DetectorSpec:
    space = space_of(search)
    return space.template(space.default_path())


def supernet_checkpoint(search: dict[str, Any], run_dir: Path) -> Path:
    from detectors.train import CHECKPOINT

    if search["supernet"]:
        return Path(search["supernet"])
    spec_id = _supernet_spec(search).id
    return run_dir / "trials" / f"step{SUPERNET_STEP}-{spec_id}" / "supernet" / CHECKPOINT


def supernet_trial(request: "TrialRequest") -> dict[str, Any]:
    """Phase 0's one trial: train (or resume) the supernet into <trial dir>/supernet, in
    request.processes local processes (DDP)."""
    from nas.trial import run_job

    return run_job(request, lambda: {"checkpoint": str(run_supernet(
        request.search, Path(request.out_dir) / "supernet", request.data_root,
        num_threads=request.num_threads, workers=request.workers, processes=request.processes))})


def candidate_trial(request: "TrialRequest") -> dict[str, Any]:
    """One candidate: inherit the supernet's weights, recalibrate BN, test; row metrics."""
    from nas.trial import run_job

    ckpt = supernet_checkpoint(request.search, Path(request.out_dir).parents[1])  # RUN_DIR
    return run_job(request, lambda: evaluate_candidate(request.search, request.spec_yaml, ckpt,
                                                       request.data_root))


def _plan_supernet(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    return [_supernet_spec(search)]


def _plan_generation(generation: int) -> Callable[[RunStore, dict[str, Any]], list[DetectorSpec]]:
    def plan(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
        rows = [r for r in store.rows() if r["step"] >= 1]
        t0 = time.perf_counter()
        planned = plan_candidates(search, generation, scored_rows(rows))
        print(f"generation {generation}: planned {len(planned)} candidates in "
              f"{time.perf_counter() - t0:.2f}s", file=sys.stderr)
        return [DetectorSpec.from_yaml(p["spec"]) for p in planned]

    return plan


def phases(search: dict[str, Any]) -> list[Phase]:
    out = []
    if not search["supernet"]:
        out.append(Phase(step=SUPERNET_STEP, label="supernet", plan=_plan_supernet,
                         trial_fn=supernet_trial, rows=False, whole_node=True))
    for g in range(planner(search).generations):
        out.append(Phase(step=g + 1, label=f"candidates {g + 1}", plan=_plan_generation(g),
                         trial_fn=candidate_trial))
    return out


ENTRY = SpaceEntry(preset=PRESET, resolve=resolve, derive=derive, check=check, phases=phases,
                   trial_recipe=trial_recipe, add_arguments=add_arguments)
