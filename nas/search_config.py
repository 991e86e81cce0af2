"""The resolved search config: preset + options + `--set`, checked whole before anything is
written (RUN_DIR/config.yaml stores it under `search:`).

    search = resolve_search(SearchOptions(space="scrfd", budget="smoke", overrides=[...]))

Order: the preset (built-in, or --preset FILE, read by nas.presets) and its budget -> the
space's `resolve` with the options -> the latency band, --top -> each `--set KEY=VALUE` on that
mapping (dotted keys; a value of the kind it replaces; recipes re-parsed) -> the space's
`derive` (keys that follow from others) -> the dataset (--data, else the budget's synthetic
set) -> the space's `check`. The overrides are recorded as given, in `search.overrides`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator

from detectors.config import recipe_from_dict
from detectors.errors import UserError
from detectors.overrides import parse_overrides, set_dotted
from nas.options import DEFAULT_GFLOPS, SearchOptions
from nas.presets import budget_section, check_preset_kinds, default_data, load_preset
from nas.phases import SpaceEntry
from nas.space_table import check_prescreen, check_scheduler, space_entry

__all__ = ["resolve_config", "resolve_search", "target_gflops", "RECIPE_KEYS", "absolute_pretrained", "leaves"]

# partial recipe mappings of a resolved config: --set may add any recipe key under them (the
# recipe parser then names a wrong one)
RECIPE_KEYS = ("recipe", "retrain_recipe", "recipe_overrides")


def target_gflops(opts: SearchOptions, preset: dict[str, Any] | None = None) -> float:
    """--gflops, else the preset's own target (a SCRFD regime's), else DEFAULT_GFLOPS."""
    if opts.gflops is not None:
        return float(opts.gflops)
    return float((preset or {}).get("gflops", DEFAULT_GFLOPS))


def _preset(opts: SearchOptions) -> tuple[Path, dict[str, Any]]:
    rules = space_entry(opts.space).preset
    builtin_path = rules.path(target_gflops(opts))
    if not opts.preset:
        return builtin_path, load_preset(builtin_path, rules)
    path = Path(opts.preset).expanduser().resolve()
    preset = load_preset(path, rules)
    if preset.get("space", opts.space) != opts.space:
        raise UserError(f"{path}: space is {preset['space']!r}, not --space {opts.space} "
                        f"(pass --space {preset['space']})")
    check_preset_kinds(preset, load_preset(builtin_path, rules), path)
    return path, preset


def leaves(value: Any, prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a mapping value, or [(prefix, value)]."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in leaves(v, f"{prefix}.{k}")]
    return [(prefix, value)]


def _dotted(mapping: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return None
        mapping = mapping[part]
    return mapping


def _apply_overrides(search: dict[str, Any], items: list[str], entry: SpaceEntry) -> None:
    """Each `--set` on the resolved config. A `recipe.KEY` that a budget layer replaces
    (quick's schedule length, the budget's own recipe section) is carried into
    `recipe_overrides` too, so trials train what was set; then every recipe touched, and the
    recipe trials train, parse whole."""
    pairs = parse_overrides(items)
    for key, value in pairs:
        set_dotted(search, key, value, open_keys=RECIPE_KEYS)
    touched = sorted({key for key, _ in pairs if key.split(".")[0] in RECIPE_KEYS})
    for key in touched:
        root = key.split(".")[0]
        if root == "recipe_overrides":
            continue  # a partial layer over the scaled recipe: checked in the trial recipe below
        try:
            recipe_from_dict(search[root], root)
        except UserError as err:
            raise UserError(f"--set {key}: {err}") from None
    if not touched:
        return
    try:
        trained = entry.trial_recipe(search).to_dict()
        for key, value in pairs:
            if key.split(".")[0] != "recipe":
                continue
            for leaf, want in leaves(value, key):
                sub = leaf.partition(".")[2]
                if _dotted(trained, sub) != want:  # a budget layer replaces it
                    set_dotted(search, "recipe_overrides." + sub, want, open_keys=RECIPE_KEYS)
        entry.trial_recipe(search)
    except UserError as err:
        raise UserError(f"--set {', '.join(touched)}: {err}") from None


def resolve_config(opts: SearchOptions) -> dict[str, Any]:
    """The resolved search config before the dataset and the space's check (plain data):
    what the samplers and tools that train nothing need."""
    entry = space_entry(opts.space)
    check_scheduler(opts.space, entry, opts.scheduler)
    path, preset = _preset(opts)
    opts = dataclasses.replace(opts, gflops=target_gflops(opts, preset))  # spaces read a float
    search = entry.resolve(preset, budget_section(preset, opts.budget), opts)
    search.update(preset=str(path), gflops=opts.gflops)
    from nas.latency_budget import resolve_latency

    latency = resolve_latency(opts.latency_ms, opts.latency_table, opts.latency_tolerance,
                              opts.latency_runtime, opts.latency_device)
    if latency is not None:
        search["latency"] = latency
        search["gflops_band"] = bool(opts.gflops_band)
    elif not opts.gflops_band:  # --no-flops-band: the space samples unconstrained
        search["gflops_band"] = False
    if opts.top_k is not None:
        search["top_k"] = int(opts.top_k)
    _apply_overrides(search, list(opts.overrides), entry)
    with _naming_overrides(opts):
        _check_driver_keys(search)
        entry.derive(search, opts)
    from nas.strategies.prescreen import resolve_prescreen

    prescreen = resolve_prescreen(opts.prescreen, opts.prescreen_keep)
    if prescreen is not None:  # absent without --prescreen: earlier configs unchanged
        search["prescreen"] = prescreen
        check_prescreen(opts.space, search)
        from nas.proxies import check_batch

        check_batch(prescreen["proxy"], entry.trial_recipe(search).batch_size)
    if opts.overrides:
        search["overrides"] = list(opts.overrides)
    absolute_pretrained(search)
    return search


def absolute_pretrained(search: dict[str, Any]) -> None:
    """Every `pretrained.backbone` of the search's recipes made absolute, in place. A relative
    path means the directory `facenas search` runs in, as it does for `facenas train`; trials
    run in Ray workers whose working directory is elsewhere (Tune's trial directory, another
    node), so the driver resolves it here, and a missing file is one line now instead of a
    failed trial later. On a cluster the file must be at that path on every node."""
    for key in RECIPE_KEYS:
        recipe = search.get(key)
        pretrained = recipe.get("pretrained") if isinstance(recipe, dict) else None
        backbone = pretrained.get("backbone") if isinstance(pretrained, dict) else None
        if not backbone or not isinstance(backbone, str):
            continue
        path = Path(backbone).expanduser()
        path = path if path.is_absolute() else (Path.cwd() / path).resolve()
        if not path.is_file():
            raise UserError(f"{key}.pretrained.backbone: {backbone} does not exist (a relative path "
                            f"is read from the directory facenas search runs in, {Path.cwd()})")
        pretrained["backbone"] = str(path)


@contextlib.contextmanager
def _naming_overrides(opts: SearchOptions) -> Iterator[None]:
    """A check failing after `--set` names the keys set (the value may be what it rejects)."""
    try:
        yield
    except UserError as err:
        if not opts.overrides:
            raise
        keys = ", ".join(item.partition("=")[0] for item in opts.overrides)
        raise UserError(f"{err} (with --set {keys})") from None


def _check_driver_keys(search: dict[str, Any]) -> None:
    """The keys the driver itself reads, in range (a space checks its own; Tune's
    max_failures -1 retries without end)."""
    for key, low in (("top_k", 0), ("max_failures", -1)):
        if not isinstance(search.get(key), int) or search[key] < low:
            raise UserError(f"{key} must be an integer >= {low}, got {search.get(key)!r}")


def resolve_search(opts: SearchOptions) -> dict[str, Any]:
    """The resolved, checked search config of a new run (plain data; nothing written)."""
    search = resolve_config(opts)
    data = default_data(search) if opts.data is None and not search.get("data") else \
        Path(opts.data or search["data"])
    if not data.is_dir():
        raise UserError(f"--data {opts.data or data}: no such directory")
    search["data"] = str(data.resolve())
    with _naming_overrides(opts):
        space_entry(opts.space).check(search)  # an infeasible budget: nothing written yet
    return search
