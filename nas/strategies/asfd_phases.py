"""ASFD's AutoFEM search as driver phases (nas/spaces.py).

    step 1  search   one trial per seed (rows=False): the bilevel search of that seed, which
                     derives a discrete AutoFEM (nas/asfd_search.search_trial, writing
                     trials/step1-<id>/derived_spec.yaml); the seeds run in parallel
    step 2  derived  one trial per seed's derived detector: trained and tested with the
                     preset's recipe (nas.trial.run_trial), one results row each (with the
                     search seed as the extra column `search_seed`)

finish exports the best derived detectors as retraining configs (nas.export) and prints the
summary table. The bootstrap analysis of SCRFD's finish is not run: a handful of seeds is no
population to bootstrap.

    facenas search --space asfd [--budget smoke|quick|paper] [--gflops G] [--seeds N]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from detectors.errors import UserError
from detectors.spec import DetectorSpec
from nas import asfd_search
from nas.results import RunStore
from nas.spaces import Phase

__all__ = ["resolve", "check", "phases", "finish", "default_data", "add_arguments",
           "derived_trial"]


def _resolve(opts: Any, data: str = "") -> dict[str, Any]:
    return asfd_search.resolve(opts.budget, seeds=opts.space_options.get("seeds"),
                               gflops=opts.gflops, seed=opts.seed, data=data,
                               max_failures=opts.max_failures)


def resolve(opts: Any, data: Path) -> dict[str, Any]:
    return _resolve(opts, str(Path(data).resolve()))


def default_data(opts: Any) -> Path:
    return asfd_search.default_data(_resolve(opts))


def check(search: dict[str, Any]) -> None:
    asfd_search.check(search)  # a latency budget picks the base member there


def add_arguments(group) -> None:
    group.add_argument("--seeds", type=int, default=None,
                       help="asfd: independent searches, one trial each (default: the budget's)")


def _plan_search(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    return asfd_search.seed_specs(search)


def _plan_derived(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    specs = []
    for base in store.read_plan(1) or []:
        path = store.trial_dir(1, base.id) / asfd_search.DERIVED
        if not path.is_file():
            raise UserError(f"search trial {base.name} finished without {path}")
        specs.append(DetectorSpec.from_yaml(path))
    return specs


def derived_trial(request, report=None) -> dict[str, Any]:
    """run_trial (train + test; rung reports under ASHA) of a derived detector, plus its
    search seed."""
    from nas.trial import run_trial

    metrics = run_trial(request, report=report)
    name = DetectorSpec.from_yaml(request.spec_yaml).name
    m = re.search(r"seed(\d+)", name)
    metrics["search_seed"] = int(m.group(1)) if m else -1
    return metrics


def phases(search: dict[str, Any]) -> list[Phase]:
    return [Phase(step=1, label="search", plan=_plan_search, trial_fn=asfd_search.search_trial,
                  rows=False),
            Phase(step=2, label="derived", plan=_plan_derived, trial_fn=derived_trial)]


def finish(store: RunStore, search: dict[str, Any]) -> None:
    from nas.export import export_top
    from nas.progress import summary_table

    table = store.read_table()
    if table is not None and (table["status"] == "ok").any():
        paths = export_top(store.run_dir, top=search["top_k"], metric="ap_hard")
        print(f"exported {len(paths)} retraining configs to {store.run_dir / 'export'}",
              file=sys.stderr)
    print(summary_table(table, top=search["top_k"]) if table is not None else "no trials")
