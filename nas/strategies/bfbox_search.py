"""A BFBox search, as plain pieces a driver runs: resolve the preset, train the supernet,
plan candidates (random / evolution), evaluate one candidate, export the best.

    config = resolve(gflops=2.5, budget="smoke", strategy="random")   # plain data
    ckpt = run_supernet(config, run_dir)                               # phase 1: one trial
    plan = plan_candidates(config, generation, scored)                 # phase 2+: trials
    row = evaluate_candidate(config, spec_yaml, ckpt, data_root)       # one candidate trial

`nas.strategies.bfbox_driver.entry()` is the driver's SpaceEntry (nas/spaces.py): phase step 0 trains the supernet (one
trial taking the whole node, no results row; skipped with --supernet), steps 1..G are the
candidate generations (random search: one), each candidate one Ray Tune trial and one row;
`finish` exports the top-k paths as retraining configs (nas.export.export_top, so
`facenas export` works on bfbox runs too).

The preset is experiments/search/bfbox.yaml; a budget (smoke / quick / paper) overrides its
`frame` (the BFBoxSpace), candidate counts, subsets and recipes. Every bad option is a
UserError raised by `resolve` before anything is written: unknown strategy, a --gflops no
path meets (with the space's min and max), an evolution population below top-k, a --supernet
checkpoint of another space.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detectors.config import merge
from detectors.errors import UserError
from search_spaces.bfbox.space import BFBoxSpace

__all__ = ["PRESET", "resolve", "space_of", "run_supernet", "plan_candidates",
           "evaluate_candidate", "planner", "load_preset", "scored_rows"]

PRESET = Path(__file__).resolve().parents[2] / "experiments" / "search" / "bfbox.yaml"
_BUDGET_KEYS = {"frame", "num_candidates", "candidates", "evolution", "recipe", "retrain_recipe",
                "synthetic"}


def load_preset(budget: str, path: Path = PRESET) -> dict[str, Any]:
    """The preset with the budget's overrides merged in."""
    preset = yaml.safe_load(path.read_text())
    budgets = preset.pop("budgets", {})
    if budget not in budgets:
        raise UserError(f"unknown budget {budget!r}; valid: {', '.join(budgets)}")
    extra = sorted(set(budgets[budget] or {}) - _BUDGET_KEYS)
    if extra:
        raise UserError(f"{path}: budgets.{budget}: unknown key {extra[0]!r}")
    return merge(preset, budgets[budget] or {})


def resolve(gflops: float, budget: str = "quick", *, strategy: str | None = None,
            num_candidates: int | None = None, seed: int = 0, supernet: str | None = None,
            data: str | None = None, top_k: int | None = None, evolution: dict | None = None,
            frame: dict | None = None) -> dict[str, Any]:
    """The resolved search config (plain data for RUN_DIR/config.yaml); checks every option.
    `evolution` / `frame` override the preset's (CLI options)."""
    from detectors.config import recipe_from_dict

    preset = load_preset(budget)
    preset["evolution"] = {**preset["evolution"], **(evolution or {})}
    space = BFBoxSpace.from_dict({**preset["frame"], **(frame or {})}, "frame")
    config = {
        "space": "bfbox", "preset": str(PRESET), "budget": budget, "gflops": float(gflops),
        "tolerance": float(preset["tolerance"]), "frame": space.to_dict(),
        "strategy": strategy or preset["strategy"], "evolution": dict(preset["evolution"]),
        "num_candidates": int(num_candidates or preset["num_candidates"]),
        "candidates": dict(preset["candidates"]), "seed": int(seed),
        "supernet": str(Path(supernet).resolve()) if supernet else None, "data": data,
        "synthetic": dict(preset.get("synthetic") or {}),
        "top_k": int(top_k or preset["top_k"]),
        "recipe": recipe_from_dict(preset["recipe"]).to_dict(),
        "retrain_recipe": recipe_from_dict(preset["retrain_recipe"]).to_dict(),
    }
    if config["num_candidates"] < 1:
        raise UserError(f"--num-candidates must be at least 1, got {config['num_candidates']}")
    if config["strategy"] == "evolution":
        _fit_evolution(config, asked_candidates=num_candidates is not None,
                       asked_schedule=bool({"population", "generations"} & set(evolution or {})))
    planner(config)  # unknown strategy, infeasible --gflops, population < top-k
    if supernet:
        from nas.strategies.spos import load_supernet

        load_supernet(supernet, space)  # refuses another space before anything is written
    return config


def _fit_evolution(config: dict[str, Any], asked_candidates: bool, asked_schedule: bool) -> None:
    """Evolution evaluates population x generations candidates, capped by --num-candidates.
    A schedule asked for without --num-candidates sets it; otherwise a mismatch is said once
    (it used to cut generations silently)."""
    import sys

    evo = config["evolution"]
    pop, gens = int(evo["population"]), int(evo["generations"])
    if asked_schedule and not asked_candidates:
        config["num_candidates"] = pop * gens
        return
    n = config["num_candidates"]
    if pop * gens > n:
        print(f"evolution: --num-candidates {n} allows {max(1, n // pop)} of the {gens} generations "
              f"of {pop}; pass --num-candidates {pop * gens} for all", file=sys.stderr)
    elif pop * gens < n:
        print(f"evolution: {gens} generations of {pop} evaluate {pop * gens} candidates, fewer than "
              f"--num-candidates {n}; raise --generations to use them", file=sys.stderr)


def space_of(config: dict[str, Any]) -> BFBoxSpace:
    """The config's frame, with the search's latency band when it has one."""
    space = BFBoxSpace.from_dict(config["frame"])
    if config.get("latency"):
        import dataclasses

        from nas.latency_budget import band, table_of

        space = dataclasses.replace(space, latency=(table_of(config["latency"]["table"]),
                                                    *band(config["latency"])))
    return space


def planner(config: dict[str, Any]):
    from nas.strategies.evolution import make_strategy

    gflops = config["gflops"] if config.get("gflops_band", True) else None  # latency alone
    return make_strategy(config["strategy"], space_of(config), gflops,
                         config["num_candidates"], config["tolerance"], config["seed"],
                         **config["evolution"])


def run_supernet(config: dict[str, Any], out_dir: str | os.PathLike, data_root: str | os.PathLike,
                 *, num_threads: int | None = None, max_iterations: int | None = None) -> Path:
    """Phase 1: the supernet checkpoint (the given --supernet, or trained / resumed here)."""
    from detectors.config import recipe_from_dict
    from detectors.train import CHECKPOINT
    from nas.strategies.spos import train_supernet

    if config["supernet"]:
        return Path(config["supernet"])
    out_dir = Path(out_dir)
    result = train_supernet(space_of(config), recipe_from_dict(config["recipe"]), data_root,
                            out_dir, seed=config["seed"], resume=(out_dir / CHECKPOINT).is_file(),
                            num_threads=num_threads, max_iterations=max_iterations)
    if result.checkpoint is None:
        raise RuntimeError(f"supernet training wrote no checkpoint ({result.message})")
    return result.checkpoint


def plan_candidates(config: dict[str, Any], generation: int,
                    scored: list[tuple[str, float]]) -> list[dict[str, str]]:
    """Generation `generation`'s candidates as [{spec_id, spec}] (spec: canonical YAML), from
    the (spec_yaml, ap_hard) of those scored so far. Empty when the strategy is done."""
    from detectors.spec import DetectorSpec

    space = space_of(config)
    history = [(space.encode(space.from_spec(DetectorSpec.from_yaml(s))), float(ap))
               for s, ap in scored]
    rows = planner(config).propose(generation, history)
    out = []
    for genes in rows:
        spec = space.template(space.decode(genes))
        out.append({"spec_id": spec.id, "spec": spec.to_yaml()})
    return out


@functools.lru_cache(maxsize=2)
def _context(config_yaml: str, supernet_path: str, data_root: str):
    """Per process: the supernet, fixed subsets, val ground truth, recalibration batches."""
    from detectors.data.widerface import load_eval_ground_truth
    from nas.strategies.candidates import fixed_subsets, image_batches
    from nas.strategies.spos import load_supernet

    config = yaml.safe_load(config_yaml)
    space, cand = space_of(config), config["candidates"]
    net = load_supernet(supernet_path, space)
    subsets = fixed_subsets(data_root, cand["recalibration_images"], cand["validation_images"],
                            config["seed"])
    gt = load_eval_ground_truth(data_root).subset(subsets.validation)
    small = len(subsets.recalibration) * cand["test_size"] ** 2 <= 64 * 320**2  # cache <= ~80 MB
    batches = list(image_batches(data_root, "train", subsets.recalibration, cand["test_size"])) \
        if small else None
    recal = (lambda: batches) if small else (
        lambda: image_batches(data_root, "train", subsets.recalibration, cand["test_size"]))
    return space, net, subsets, gt, recal


def evaluate_candidate(config: dict[str, Any], spec_yaml: str, supernet_path: str | os.PathLike,
                       data_root: str | os.PathLike) -> dict[str, Any]:
    """One candidate trial: inherit, recalibrate, test; the results-row metrics."""
    from detectors.spec import DetectorSpec
    from nas.strategies.candidates import evaluate_path

    space, net, subsets, gt, recal = _context(yaml.safe_dump(config, sort_keys=True),
                                              str(supernet_path), str(data_root))
    path = space.from_spec(DetectorSpec.from_yaml(spec_yaml))
    test = config["recipe"]["test"]
    metrics = evaluate_path(net, space, path, data_root, subsets, config["candidates"]["test_size"],
                            recal, gt, test["score_thresh"], test["iou_thresh"])
    return {"status": "ok", "error": "", **metrics}


def scored_rows(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(spec_yaml, ap_hard) of the ok rows of a results table (for plan_candidates)."""
    return [(r["spec_yaml"], float(r["ap_hard"])) for r in rows
            if r.get("status") == "ok" and np.isfinite(float(r.get("ap_hard", np.nan)))]
