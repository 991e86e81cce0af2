"""The one loader of search presets (experiments/search/*.yaml, or a user's --preset file).

One set of rules for every space (its PresetRules, nas/phases.py, names its keys):
- a preset is a YAML mapping of the space's keys only (unknown key: one line naming it);
- relative `template` / `recipe` / `retrain_recipe` paths resolve against the preset's folder;
- `budgets:` maps smoke / quick / paper (or more) to sections of the space's budget keys;
  spaces with shared budgets get experiments/search/budgets.yaml's, the preset's merged on top;
- a user's preset holds values of the kinds the built-in preset holds (check_like);
- without --data, a search runs on the embedded synthetic set its budget names (`synthetic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detectors.config import check_budget_section, merge
from detectors.errors import UserError
from detectors.overrides import check_like
from experiments import SEARCH_DIR
from nas.phases import PresetRules

__all__ = ["BUDGETS_FILE", "load_preset", "budget_section", "check_preset_kinds", "default_data",
           "recipe_mapping", "load_yaml"]

# smoke / quick / paper shared by the spaces that ask for them (SCRFD's regimes)
BUDGETS_FILE = SEARCH_DIR / "budgets.yaml"
_PATH_KEYS = ("template", "recipe", "retrain_recipe")  # may name files beside the preset


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def load_yaml(path: Path) -> Any:
    """A YAML file's data; a missing file or invalid YAML is one line naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{line}: {problem}") from None


def load_preset(path: Path, rules: PresetRules) -> dict[str, Any]:
    """A preset, checked, with resolved paths and its merged, checked `budgets`."""
    path = Path(path)
    preset = _mapping(load_yaml(path), str(path))
    unknown = sorted(set(preset) - rules.keys)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(rules.keys))}")
    for key in _PATH_KEYS:
        value = preset.get(key)
        if isinstance(value, str):  # a path to a spec / a retraining config's recipe
            preset[key] = str((path.parent / value).resolve())
    shared = {}
    if rules.shared_budgets:
        shared = _mapping(_mapping(load_yaml(BUDGETS_FILE), str(BUDGETS_FILE)).get("budgets", {}),
                          f"{BUDGETS_FILE}: budgets")
    preset["budgets"] = merge(shared, _mapping(preset.get("budgets") or {}, f"{path}: budgets"))
    for name, budget in preset["budgets"].items():
        preset["budgets"][name] = check_budget_section(budget or {}, f"{path}: budgets.{name}",
                                                       rules.budget_keys)
    return preset


def check_preset_kinds(preset: dict[str, Any], builtin: dict[str, Any], path: Path) -> None:
    """A user's preset: every value of the kind the built-in preset's is (one line naming the
    key otherwise). Budget sections are checked by load_preset, recipes by their parser."""
    for key, value in preset.items():
        if key in builtin and key != "budgets":
            check_like(value, builtin[key], f"{path}: {key}")


def budget_section(preset: dict[str, Any], name: str) -> dict[str, Any]:
    """The preset's section of budget `name` (a copy)."""
    budgets = preset["budgets"]
    if name not in budgets:
        raise UserError(f"unknown budget {name!r}; valid: {', '.join(budgets)}")
    return dict(budgets[name])


def recipe_mapping(value: Any, where: str = "recipe") -> dict[str, Any]:
    """A recipe mapping, or the `recipe:` of a retraining config file a preset names."""
    if isinstance(value, str):
        data = _mapping(load_yaml(Path(value)), value)
        return dict(_mapping(data.get("recipe", {}), f"{value}: recipe"))
    return dict(_mapping(value or {}, where))


def default_data(search: dict[str, Any], progress: bool = True) -> Path:
    """The embedded synthetic dataset a search runs on without --data: the variant its budget
    names (`synthetic`: arguments of detectors.data.synthetic.default_root; quick: 320-px
    images with faces of the default set's pixel sizes). Built once, then cached."""
    from detectors.data.synthetic import default_root

    return Path(default_root(progress=progress, **dict(search.get("synthetic") or {})))
