"""The `--space` table: name -> SpaceEntry, written out here (no registration on import).

Each space's glue is one module of nas/spaces/ (same shape: its PresetRules, resolve, derive,
check, phases, add_arguments and ENTRY); no module of a space imports this table back.
"""

from __future__ import annotations

import argparse

from detectors.errors import UserError
from nas.phases import SpaceEntry
from nas.spaces import asfd, bfbox, scrfd

__all__ = ["SPACES", "space_entry", "add_space_arguments", "check_scheduler", "check_prescreen"]

SPACES: dict[str, SpaceEntry] = {
    "scrfd": scrfd.ENTRY,
    "bfbox": bfbox.ENTRY,
    "asfd": asfd.ENTRY,
}

# why a space refuses --scheduler asha (one line each)
_NO_ASHA = {
    "bfbox": "its candidates are not trained (they inherit supernet weights and are cheap)",
    "asfd": "its trials are one differentiable search per seed, and its rows the few "
            "derived detectors, trained to the end to compare the seeds",
}


# why a space refuses --prescreen: none of its phases samples specs that it trains
_NO_PRESCREEN = {
    "bfbox": "its candidates are not trained (they inherit supernet weights and are cheap)",
    "asfd": "its trained rows are the detectors its differentiable searches derive, one per "
            "seed, not sampled specs",
}


def check_prescreen(name: str, search: dict) -> None:
    """UserError when `--prescreen` is asked of a space none of whose phases is prescreened."""
    if search.get("prescreen") and not any(p.prescreen for p in space_entry(name).phases(search)):
        why = _NO_PRESCREEN.get(name, "none of its phases samples the specs it trains")
        raise UserError(f"--prescreen does not apply to --space {name}: {why}")


def space_entry(name: str) -> SpaceEntry:
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name]


def check_scheduler(name: str, entry: SpaceEntry, scheduler: str) -> None:
    """UserError when the space does not honour `scheduler` (e.g. asha for bfbox)."""
    if scheduler not in entry.schedulers:
        why = _NO_ASHA.get(name, "its trials do not train sampled models")
        raise UserError(f"--scheduler {scheduler} does not apply to --space {name}: {why}; "
                        f"valid here: {', '.join(entry.schedulers)}")


def add_space_arguments(parser: argparse.ArgumentParser) -> None:
    """Every space's own options, one argument group per space."""
    for name, entry in SPACES.items():
        if entry.add_arguments is not None:
            entry.add_arguments(parser.add_argument_group(f"--space {name}"))
