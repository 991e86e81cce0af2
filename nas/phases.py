"""The driver's seam for search spaces: what a space tells nas/driver.py, as plain data.

A search is a sequence of *phases*. Each phase plans a list of specs once (cached in
RUN_DIR/plan/step<k>.yaml, so `--resume` runs exactly the same plan) and runs one Ray Tune
trial per planned spec with the phase's trial function; a phase's plan may read the results of
the phases before it (SCRFD's step 2 samples inside step 1's ranges; an evolution's
generation breeds from the last one). Every space gets the same results table, status line,
retries, resume, analysis and export.

    SCRFD   step 1 (backbones) -> step 2 (whole detectors), each spec trained and tested
    BFBox   a one-trial supernet phase (rows=False, whole_node=True) -> candidate phases
    ASFD    one whole-node search trial per seed (rows=False) -> the derived detectors

nas/space_table.py maps `--space` names to `SpaceEntry`s; each space's glue is one module of
nas/spaces/ with the same shape. A space adds its own CLI options in `add_arguments` (under its
own argument group, names prefixed or specific to it) and reads them in `resolve`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from detectors.config import Recipe
    from detectors.spec import DetectorSpec
    from nas.options import SearchOptions
    from nas.results import RunStore
    from nas.trial import TrialFn

__all__ = ["Phase", "PresetRules", "SpaceEntry"]


@dataclass(frozen=True)
class Phase:
    """One planned batch of trials.

    step: the results table's `step` value, the plan file plan/step<step>.yaml and the trial
      directories trials/step<step>-<spec id>;
    plan(store, search) -> specs: called once (then read back from the plan file);
    trial_fn: what one trial runs (default nas.trial.run_trial: train + test the spec); it
      must be importable in Ray workers (a module-level function);
    rows: whether each trial is one row of the results table; a phase without rows (e.g. a
      supernet's training) is finished when its trials wrote result.json;
    whole_node: each trial takes one node's CPUs (and GPUs: --nproc-per-trial training
      processes, DDP; nas.resources), for work that is one big model (supernet training, a
      DARTS search) rather than many small ones; its trial function trains in
      TrialRequest.processes processes;
    reads_data: its trials train or test on search["data"], so the driver checks the dataset
      layout before the run starts (unless a test's trial function replaces them);
    prescreen: for a phase that samples the specs it trains, the search key holding how many
      (SCRFD: "num_samples"): `--prescreen` draws more and keeps the best by a zero-cost proxy
      (nas.strategies.prescreen); None: not prescreened.
    """

    step: int
    label: str
    plan: Callable[["RunStore", dict[str, Any]], list["DetectorSpec"]]
    trial_fn: "TrialFn | None" = None
    rows: bool = True
    whole_node: bool = False
    reads_data: bool = True
    prescreen: str | None = None


@dataclass(frozen=True)
class PresetRules:
    """How a space's presets (experiments/search/*.yaml, or a user's --preset) are read by the
    one loader, nas/presets.py.

    path(gflops) -> the built-in preset for a target (SCRFD: the nearest regime's);
    keys: the preset's valid top-level keys;
    budget_keys: the valid keys of one `budgets.<name>` section;
    shared_budgets: whether experiments/search/budgets.yaml is merged under the preset's own.
    """

    path: Callable[[float], Path]
    keys: frozenset[str]
    budget_keys: frozenset[str]
    shared_budgets: bool = False


@dataclass(frozen=True)
class SpaceEntry:
    """What a search space provides to the driver (one per module of nas/spaces/).

    preset: how its presets are read (PresetRules);
    resolve(preset, budget, opts) -> the resolved search config (plain data, written to
      RUN_DIR/config.yaml under `search:`; must hold `seed`, `budget`, `data` (None: filled in
      by nas.search_config), `top_k`, `max_failures`, `recipe`, `recipe_overrides`,
      `max_iterations`, `synthetic`) from the loaded preset, its chosen budget section and the
      options;
    derive(search, opts): the keys computed from others, run after `--set` (SCRFD: the ASHA
      rungs of the final schedule);
    check(search): raise UserError for an infeasible request before anything is written;
    phases(search) -> the phases, in order;
    add_arguments(group): the space's own CLI options (SearchOptions.space_options);
    schedulers: the --scheduler values it honours (asha only where trials train sampled
      models to a schedule that rungs can cut: SCRFD);
    bootstrap: whether its finish runs the bootstrap analysis (a population of sampled specs:
      SCRFD, BFBox; not ASFD's handful of seeds);
    trial_recipe(search) -> the Recipe its trials train with (budget layers applied): a
      `--set recipe.KEY` that a budget layer would replace is carried over it, and the result
      is checked whole.
    """

    preset: PresetRules
    resolve: Callable[[dict[str, Any], dict[str, Any], "SearchOptions"], dict[str, Any]]
    derive: Callable[[dict[str, Any], "SearchOptions"], None]
    check: Callable[[dict[str, Any]], None]
    phases: Callable[[dict[str, Any]], list[Phase]]
    trial_recipe: Callable[[dict[str, Any]], "Recipe"]
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None
    schedulers: tuple[str, ...] = ("fifo",)
    bootstrap: bool = True
