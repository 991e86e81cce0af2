"""The driver's seam for search spaces: what a space tells nas/driver.py, as plain data.

A search is a sequence of *phases*. Each phase plans a list of specs once (cached in
RUN_DIR/plan/step<k>.yaml, so `--resume` runs exactly the same plan) and runs one Ray Tune
trial per planned spec with the phase's trial function; a phase's plan may read the results of
the phases before it (SCRFD's step 2 samples inside step 1's ranges; an evolution's
generation breeds from the last one). Every space gets the same results table, status line,
retries, resume, analysis and export.

    SCRFD   step 1 (backbones) -> step 2 (whole detectors), each spec trained and tested
    BFBox   a one-trial supernet phase (rows=False, whole_node=True) -> candidate phases
    ASFD    one search trial per seed

SPACES maps `--space` names to `SpaceEntry`s (explicit, no registration on import). A space
adds its own CLI options in `add_arguments` (under its own argument group, names prefixed
or specific to it) and reads them in `resolve`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from detectors.errors import UserError

if TYPE_CHECKING:
    from detectors.spec import DetectorSpec
    from nas.results import RunStore
    from nas.trial import TrialFn

__all__ = ["Phase", "SpaceEntry", "SPACES", "space_entry", "add_space_arguments", "check_scheduler"]


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
    whole_node: one trial takes the CPUs (and a GPU) of all concurrent trial slots, for work
      that is one big job (supernet training) rather than many small ones;
    reads_data: its trials train or test on search["data"], so the driver checks the dataset
      layout before the run starts (unless a test's trial function replaces them).
    """

    step: int
    label: str
    plan: Callable[["RunStore", dict[str, Any]], list["DetectorSpec"]]
    trial_fn: "TrialFn | None" = None
    rows: bool = True
    whole_node: bool = False
    reads_data: bool = True


@dataclass(frozen=True)
class SpaceEntry:
    """What a search space provides to the driver.

    resolve(options, data_root) -> the resolved search config (plain data, written to
      RUN_DIR/config.yaml under `search:`; must hold `seed`, `budget`, `data`, `top_k`,
      `max_failures`, `recipe`, `recipe_overrides`, `max_iterations`);
    check(search): raise UserError for an infeasible request before anything is written;
    phases(search) -> the phases, in order;
    finish(store, search): analysis and export after the last phase;
    default_data(options) -> the dataset root used without --data;
    add_arguments(group): the space's own CLI options (SearchOptions.space_options);
    schedulers: the --scheduler values it honours (asha only where trials train sampled
      models to a schedule that rungs can cut: SCRFD).
    """

    resolve: Callable[[Any, Path], dict[str, Any]]
    check: Callable[[dict[str, Any]], None]
    phases: Callable[[dict[str, Any]], list[Phase]]
    finish: Callable[["RunStore", dict[str, Any]], None]
    default_data: Callable[[Any], Path]
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None
    schedulers: tuple[str, ...] = ("fifo",)


def _scrfd() -> SpaceEntry:
    from nas.strategies import two_step

    return SpaceEntry(resolve=two_step.resolve, check=two_step.check, phases=two_step.phases,
                      finish=two_step.finish, default_data=two_step.default_data,
                      schedulers=("fifo", "asha"))


def _bfbox() -> SpaceEntry:
    from nas.strategies import bfbox_driver

    return bfbox_driver.entry()


def _asfd() -> SpaceEntry:
    from nas.strategies import asfd_phases as a

    return SpaceEntry(resolve=a.resolve, check=a.check, phases=a.phases, finish=a.finish,
                      default_data=a.default_data, add_arguments=a.add_arguments)


# name -> a function returning the entry (imported when chosen: spaces pull in their models)
SPACES: dict[str, Callable[[], SpaceEntry]] = {
    "scrfd": _scrfd,
    "bfbox": _bfbox,
    "asfd": _asfd,
}


# why a space refuses --scheduler asha (one line each)
_NO_ASHA = {
    "bfbox": "its candidates are not trained (they inherit supernet weights and are cheap)",
    "asfd": "its trials are one differentiable search per seed, and its rows the few "
            "derived detectors, trained to the end to compare the seeds",
}


def check_scheduler(name: str, entry: SpaceEntry, scheduler: str) -> None:
    """UserError when the space does not honour `scheduler` (e.g. asha for bfbox)."""
    if scheduler not in entry.schedulers:
        why = _NO_ASHA.get(name, "its trials do not train sampled models")
        raise UserError(f"--scheduler {scheduler} does not apply to --space {name}: {why}; "
                        f"valid here: {', '.join(entry.schedulers)}")


def space_entry(name: str) -> SpaceEntry:
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name]()


def add_space_arguments(parser: argparse.ArgumentParser) -> None:
    """Every space's own options, one argument group per space."""
    for name in SPACES:
        entry = SPACES[name]()
        if entry.add_arguments is not None:
            entry.add_arguments(parser.add_argument_group(f"--space {name}"))
