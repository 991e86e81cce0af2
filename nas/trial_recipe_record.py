"""The recipe a search's trials train with, recorded when it begins and checked on --resume.

A search records its options (the preset's partial recipe mappings, budget, --set), not the
recipe defaults they resolve against, so a facenas whose defaults changed would resume a
search with other trials than it began with, and rank them together. RUN_DIR/config.yaml
therefore also holds `trial_recipe`: the resolved recipe of its trials (`Recipe.to_dict()`,
the space entry's `trial_recipe`). `--resume` resolves it again and refuses a difference,
naming each key. Runs begun before this record existed are checked for the one default known
to have changed since (recipe.box_init: SCRFD's point init, then anchor), and get the record.
"""

from __future__ import annotations

from typing import Any

from detectors.errors import UserError
from nas.results import RunStore
from nas.search_config import leaves
from nas.space_table import space_entry

__all__ = ["TRIAL_RECIPE_KEY", "trial_recipe_record", "check_trial_recipe"]

TRIAL_RECIPE_KEY = "trial_recipe"


def trial_recipe_record(search: dict[str, Any]) -> dict[str, Any]:
    """The recipe `search`'s trials train with, as plain data."""
    return space_entry(search["space"]).trial_recipe(search).to_dict()


def _differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    old, new = dict(leaves(recorded, "recipe")), dict(leaves(now, "recipe"))
    missing = object()
    return [f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]


def _has_finished_trials(store: RunStore) -> bool:
    return bool(store.finished()) or any(store.run_dir.glob("trials/*/result.json"))


def check_trial_recipe(store: RunStore, config: dict[str, Any]) -> None:
    """Before a resume trains anything: a UserError (one line) if its trials would now train
    another recipe than its recorded one; a run without a record gets one (see module)."""
    search = config["search"]
    now = trial_recipe_record(search)
    recorded = config.get(TRIAL_RECIPE_KEY)
    if recorded is not None:
        diffs = _differences(recorded, now)
        if diffs:
            revision = config.get("git_revision", "unknown")
            raise UserError(
                f"{store.config_path}: this facenas resolves another trial recipe than the "
                f"search began with ({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}):"
                f" resume it with the facenas it began with (git revision {revision}), or "
                f"start a new search")
        return
    set_anywhere = any(k.split(".")[-1] == "box_init" for k, _ in leaves(search, "search"))
    if now.get("box_init") == "anchor" and not set_anywhere and _has_finished_trials(store):
        raise UserError(
            f"{store.config_path}: this search began before recipe.box_init existed, so its "
            f"finished trials trained with SCRFD's point box init, and today's default is "
            f"anchor: to resume it as it began, add `box_init: point` to the `recipe:` "
            f"mapping under `search:` in that file; for anchor, start a new search")
    store.write_config({**config, TRIAL_RECIPE_KEY: now})
