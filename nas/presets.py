"""Search presets (experiments/search/<space>_<regime>.yaml) -> a resolved search config.

A preset holds one regime's target, bounds, block type, the neck/head fixed in step 1, the
search recipe (H4's recipe format) with per-budget scaling, and the retraining recipe used by
export. `resolve` merges it with the command-line options into the plain mapping that
RUN_DIR/config.yaml stores under `search:`; `build_space` turns that mapping into the sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detectors.config import CONFIG_BUDGET_KEYS, Schedule, check_budget_section, merge
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from search_spaces.scrfd.space import ScrfdSpace, SpaceBounds, Step1Fixed

__all__ = ["PRESET_DIR", "REGIMES", "SPACES", "build_space", "default_data", "load_preset",
           "preset_path", "resolve", "sample_seed"]

PRESET_DIR = Path(__file__).resolve().parents[1] / "experiments" / "search"
# smoke / quick / paper for every regime; a preset's own `budgets:` is merged on top of it
BUDGETS_FILE = PRESET_DIR / "budgets.yaml"
SPACES = ("scrfd",)
REGIMES = {"scrfd": (0.5, 2.5, 10.0, 34.0)}  # GFLOPs of the presets that exist
_PRESET_KEYS = {"space", "gflops", "tolerance", "block", "template", "gn_groups", "bounds",
                "step1", "step2", "top_k", "recipe", "retrain_recipe", "budgets"}
# a retraining config's budget keys (recipe, synthetic) plus the search's own
_BUDGET_KEYS = {"num_samples", "max_iterations", *CONFIG_BUDGET_KEYS}


def preset_path(space: str, gflops: float) -> Path:
    """The preset of the regime nearest to `gflops` (its target is then replaced)."""
    if space not in SPACES:
        raise UserError(f"unknown search space {space!r}; valid: {', '.join(SPACES)}")
    nearest = min(REGIMES[space], key=lambda g: abs(g - gflops))
    return PRESET_DIR / f"{space}_{nearest:g}g.yaml"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from None


def load_preset(path: Path) -> dict[str, Any]:
    """Read a preset; relative `template`/`recipe` paths resolve against the preset's folder.

    Its `budgets` are the shared ones (BUDGETS_FILE) with the preset's own merged on top.
    """
    preset = _mapping(_load_yaml(path), str(path))
    unknown = sorted(set(preset) - _PRESET_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(_PRESET_KEYS))}")
    for key in ("template", "recipe", "retrain_recipe"):
        value = preset.get(key)
        if isinstance(value, str):  # a path to a spec / a retraining config's recipe
            preset[key] = str((path.parent / value).resolve())
    shared = _mapping(_load_yaml(BUDGETS_FILE), str(BUDGETS_FILE))
    preset["budgets"] = merge(_mapping(shared.get("budgets", {}), f"{BUDGETS_FILE}: budgets"),
                              _mapping(preset.get("budgets") or {}, f"{path}: budgets"))
    for name, budget in preset["budgets"].items():
        check_budget_section(budget, f"{path}: budgets.{name}", _BUDGET_KEYS)
    return preset


def default_data(space: str, gflops: float, budget: str, progress: bool = True) -> Path:
    """The embedded synthetic dataset a budget searches on when no --data is given.

    A budget may ask for its own variant (`synthetic:` in the preset, the arguments of
    detectors.data.synthetic.default_root): `quick` uses 320-px images with faces of the
    default set's pixel sizes, a quarter of the compute per image. Built once, then cached.
    """
    from detectors.data.synthetic import default_root

    chosen = _budget(load_preset(preset_path(space, gflops)), budget)
    return Path(default_root(progress=progress, **dict(chosen.get("synthetic") or {})))


def sample_seed(search_seed: int, step: int) -> int:
    """The sampler seed of a search step: steps draw independently, reproducibly per seed."""
    return search_seed + 1000 * step


def _budget(preset: dict[str, Any], name: str) -> dict[str, Any]:
    budgets = preset["budgets"]
    if name not in budgets:
        raise UserError(f"unknown budget {name!r}; valid: {', '.join(budgets)}")
    return budgets[name]


def _template_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return DetectorSpec.from_yaml(Path(value)).to_dict()
    return DetectorSpec.from_dict(value).to_dict()


def _recipe_dict(value: Any) -> dict[str, Any]:
    """A recipe mapping, or the `recipe:` of a retraining config file."""
    if isinstance(value, str):
        data = _mapping(_load_yaml(Path(value)), value)
        return _mapping(data.get("recipe", {}), f"{value}: recipe")
    return dict(value or {})


def resolve(space: str, gflops: float, budget: str, *, num_samples: int | None, seed: int,
            steps: str, data: str, max_failures: int) -> dict[str, Any]:
    """The resolved search config (plain data) from the regime's preset and the options."""
    path = preset_path(space, gflops)
    preset = load_preset(path)
    chosen = _budget(preset, budget)
    samples = int(num_samples if num_samples is not None else chosen.get("num_samples", 8))
    if samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {samples}")
    if steps not in ("1", "2", "both"):
        raise UserError(f"--steps must be 1, 2 or both, got {steps!r}")
    return {
        "space": space, "preset": str(path), "gflops": float(gflops),
        "tolerance": float(preset.get("tolerance", 0.02)), "block": preset["block"],
        "gn_groups": int(preset.get("gn_groups", 16)), "bounds": dict(preset.get("bounds", {})),
        "step1": dict(preset["step1"]), "step2": dict(preset.get("step2", {})),
        "template": _template_dict(preset["template"]),
        "budget": budget, "num_samples": samples, "seed": int(seed), "steps": steps,
        "data": data, "max_failures": int(max_failures), "top_k": int(preset.get("top_k", 5)),
        "max_iterations": chosen.get("max_iterations"),
        "recipe": _recipe_dict(preset.get("recipe")),
        "recipe_overrides": dict(chosen.get("recipe", {}) or {}),
        "retrain_recipe": _recipe_dict(preset.get("retrain_recipe", preset.get("recipe"))),
    }


def build_space(search: dict[str, Any]) -> ScrfdSpace:
    """The sampler described by a resolved search config."""
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
                      flops_band=search.get("gflops_band", True))


def trial_schedule(search: dict[str, Any]) -> Schedule:
    """The LR schedule one trial of this search trains with (budget and overrides applied)."""
    from detectors.config import TrainConfig, apply_budget, recipe_from_dict

    base = TrainConfig(DetectorSpec.from_dict(search["template"]), recipe_from_dict(search["recipe"]))
    scaled = apply_budget(base, search["budget"]).recipe.to_dict()
    return recipe_from_dict(merge(scaled, search["recipe_overrides"])).schedule


def trial_iterations(search: dict[str, Any]) -> int | None:
    """Training iterations of one trial of this search (None when its schedule counts epochs:
    the number then depends on the dataset, read only by the trial)."""
    schedule = trial_schedule(search)
    if schedule.unit != "iterations":
        return None
    cap = search.get("max_iterations")
    return min(schedule.total, int(cap)) if cap else schedule.total
