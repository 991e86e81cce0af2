"""BFBox's entry in the driver's space seam (nas/spaces.py): options, phases, trials, finish.

    facenas search --space bfbox --gflops G [--strategy random|evolution] [--num-candidates N]
                   [--supernet PATH] [--population P] [--generations G] [--parents K]
                   [--fpn-attention on|off] [--budget smoke|quick|paper] ...

Phases: step 0 trains the supernet (one whole-node trial, no results row; absent with
--supernet), steps 1..G evaluate the candidate generations (random search: one). A candidate
trial reads the supernet checkpoint of step 0 (or --supernet), inherits its path's weights,
recalibrates BN and tests on the fixed subsets; its row carries the path's analytic cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from detectors.spec import DetectorSpec
from nas.strategies import bfbox_search as bs

__all__ = ["entry", "add_arguments", "supernet_trial", "candidate_trial"]

SUPERNET_STEP = 0


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


def resolve(opts: Any, data: Path) -> dict[str, Any]:
    o = dict(opts.space_options or {})
    evolution = {k: v for k, v in (("population", o.get("population")),
                                   ("generations", o.get("generations")),
                                   ("top_k", o.get("parents"))) if v is not None}
    frame = {} if o.get("fpn_attention") is None else {"attention": o["fpn_attention"] == "on"}
    search = bs.resolve(opts.gflops, opts.budget, strategy=o.get("strategy"),
                        num_candidates=o.get("num_candidates") or opts.num_samples,
                        seed=opts.seed, supernet=o.get("supernet"), data=str(data.resolve()),
                        top_k=opts.top_k, evolution=evolution, frame=frame)
    search.update({"max_failures": int(opts.max_failures), "recipe_overrides": {},
                   "max_iterations": None})
    return search


def check(search: dict[str, Any]) -> None:
    bs.planner(search)  # resolve checked everything already; cheap to repeat


def default_data(opts: Any) -> Path:
    from detectors.data.synthetic import default_root

    preset = bs.load_preset(opts.budget)
    return Path(default_root(**dict(preset.get("synthetic") or {})))


def _supernet_spec(search: dict[str, Any]) -> DetectorSpec:
    space = bs.space_of(search)
    return space.template(space.default_path())


def supernet_checkpoint(search: dict[str, Any], run_dir: Path) -> Path:
    from detectors.train import CHECKPOINT

    if search["supernet"]:
        return Path(search["supernet"])
    spec_id = _supernet_spec(search).id
    return run_dir / "trials" / f"step{SUPERNET_STEP}-{spec_id}" / "supernet" / CHECKPOINT


def supernet_trial(request) -> dict[str, Any]:
    """Phase 0's one trial: train (or resume) the supernet into <trial dir>/supernet."""
    from detectors.device import set_threads

    start = time.perf_counter()
    set_threads(request.num_threads)
    ckpt = bs.run_supernet(request.search, Path(request.out_dir) / "supernet", request.data_root,
                           num_threads=request.num_threads)
    return {"status": "ok", "error": "", "wall_time_s": time.perf_counter() - start,
            "checkpoint": str(ckpt)}


def candidate_trial(request) -> dict[str, Any]:
    """One candidate: inherit the supernet's weights, recalibrate BN, test; row metrics."""
    from detectors.device import set_threads

    set_threads(request.num_threads)
    run_dir = Path(request.out_dir).parents[1]
    ckpt = supernet_checkpoint(request.search, run_dir)
    return bs.evaluate_candidate(request.search, request.spec_yaml, ckpt, request.data_root)


def _plan_supernet(store, search: dict[str, Any]) -> list[DetectorSpec]:
    return [_supernet_spec(search)]


def _plan_generation(generation: int):
    def plan(store, search: dict[str, Any]) -> list[DetectorSpec]:
        rows = [r for r in store.rows() if r["step"] >= 1]
        t0 = time.perf_counter()
        planned = bs.plan_candidates(search, generation, bs.scored_rows(rows))
        print(f"generation {generation}: planned {len(planned)} candidates in "
              f"{time.perf_counter() - t0:.2f}s", file=sys.stderr)
        return [DetectorSpec.from_yaml(p["spec"]) for p in planned]

    return plan


def phases(search: dict[str, Any]) -> list:
    from nas.spaces import Phase

    out = []
    if not search["supernet"]:
        out.append(Phase(step=SUPERNET_STEP, label="supernet", plan=_plan_supernet,
                         trial_fn=supernet_trial, rows=False, whole_node=True))
    for g in range(bs.planner(search).generations):
        out.append(Phase(step=g + 1, label=f"candidates {g + 1}", plan=_plan_generation(g),
                         trial_fn=candidate_trial))
    return out


def finish(store, search: dict[str, Any]) -> None:
    """Analysis (ranges, plots, report over the candidates), export of the top-k paths as
    retraining configs, the summary table: the same finish as SCRFD's."""
    from nas.strategies.two_step import finish as analyze_and_export

    analyze_and_export(store, search)


def entry():
    from nas.spaces import SpaceEntry

    return SpaceEntry(resolve=resolve, check=check, phases=phases, finish=finish,
                      default_data=default_data, add_arguments=add_arguments)
