"""`--set KEY=VALUE` overrides (mmdetection's --cfg-options), shared by `facenas train`, `test`
and `search`: one parser of KEY=VALUE lists and one dotted-key setter over plain mappings
(`override_config` applies them to a retraining config).

    set_dotted(config, "recipe.schedule.total", 600)

A key must already exist (a mistyped key is an error, not a silent new entry) unless it falls
under one of `open_keys` (partial mappings the caller validates afterwards, e.g. a search's
`recipe`). A value replaces one of the same kind only: a number for a number, a mapping for a
mapping, and so on (None accepts anything).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import yaml

from detectors.errors import UserError

if TYPE_CHECKING:
    from detectors.config import TrainConfig

__all__ = ["parse_overrides", "set_dotted", "check_like", "override_config"]


def parse_overrides(items: Sequence[str] | None) -> list[tuple[str, Any]]:
    """[(dotted key, value)] from KEY=VALUE strings; values are YAML (`3` is an int, `[1, 2]` a
    list, `off` a bool, anything unparsable stays the string)."""
    out = []
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE (e.g. recipe.schedule.total=600)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out.append((key, value))
    return out


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _fits(value: Any, like: Any) -> bool:
    want = _kind(like)
    if want is None:
        return True
    if want == "a number":  # an integer where a number is expected is fine
        return _kind(value) in ("a number", "an integer")
    return _kind(value) == want


def check_like(value: Any, reference: Any, where: str) -> None:
    """UserError naming the key when `value` (deeply, for the keys both hold) is not of the
    kind of `reference`'s."""
    if not _fits(value, reference):
        raise UserError(f"{where} must be {_kind(reference)}, not {value!r}")
    if isinstance(value, Mapping) and isinstance(reference, Mapping):
        for key, sub in value.items():
            if key in reference:
                check_like(sub, reference[key], f"{where}.{key}")


def set_dotted(config: dict[str, Any], key: str, value: Any,
               open_keys: Iterable[str] = ()) -> None:
    """config[a][b][c] = value for key "a.b.c" (in place), checked as the module says."""
    parts = key.split(".")
    open_here = parts[0] in set(open_keys)
    node: Any = config
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {'.'.join(parts[:depth])} is not a mapping")
        last = depth == len(parts) - 1
        if part not in node:
            if not open_here:
                valid = ", ".join(sorted(map(str, node))) or "none"
                raise UserError(f"--set {key}: unknown key {where!r} (valid there: {valid})")
            if not last:
                node[part] = {}
        if last:
            if part in node:
                check_like(value, node[part], f"--set {key}")
            node[part] = value
        else:
            node = node[part]


def override_config(config: "TrainConfig", items: Sequence[str] | None) -> "TrainConfig":
    """A retraining config with `--set KEY=VALUE` items applied to its full form (spec.*,
    recipe.*; every key exists there, so a mistyped one is an error) and parsed again."""
    from detectors.config import TrainConfig, recipe_from_dict
    from detectors.spec import DetectorSpec

    pairs = parse_overrides(items)
    if not pairs:
        return config
    data = {**config.to_dict(), "recipe": config.recipe.to_dict(full=True)}  # every key settable
    for key, value in pairs:
        set_dotted(data, key, value)
    try:
        return TrainConfig(spec=DetectorSpec.from_dict(data["spec"]),
                           recipe=recipe_from_dict(data["recipe"]), budgets=config.budgets)
    except UserError as err:
        raise UserError(f"--set {', '.join(k for k, _ in pairs)}: {err}") from None
