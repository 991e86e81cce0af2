"""DetectorSpec: one frozen, validated value describing a whole face detector.

A spec is a tree of small frozen dataclasses (backbone, neck, head, anchors) with an exact
YAML round trip (`DetectorSpec.from_yaml(spec.to_yaml()) == spec`) and a stable short id
(`spec.id`, a hash of the canonical YAML). Validation happens on construction and raises
`UserError` with a message naming the offending field (`stage 3 width 20 is not divisible by
8`). Construction is plain Python (no torch), so a sampler can build thousands per second.

Conventions (as SCRFD / mmdet):
- backbone `stem: deep` is ResNet-V1e's stem: 3x3/s2 conv to stem_width/2, 3x3 conv to
  stem_width/2, 3x3 conv to stem_width, then 2x2/s2 max-pool (stride 4); stage 1 keeps stride 4,
  stages 2-4 halve it. `stem: mobilenet` is MobileNetV1's: 3x3/s2 conv to stem_width then one
  depthwise-separable unit (stride 2); every stage then starts with a stride-2 block.
- block `basic` (two 3x3 convs), `bottleneck` (1x1, 3x3, 1x1; output width*4), `depthwise`
  (MobileNetV1 unit: 3x3 depthwise + 1x1 pointwise, no residual). Residual shortcuts that change
  shape use a 2x2 average pool (when striding) then a 1x1 conv + BN (ResNet-V1d/e "avg_down").
- a stage's `width` is its planes (mmdet `stage_planes`); its output channels are width times
  the block's expansion (4 for bottleneck, 1 otherwise). A stage's `block` is one name (every
  layer) or a list of `depth` names, one per layer (a supernet path, e.g. BFBox).
- a backbone has 1-6 stages; stage k (1-based) outputs level C_{k+1} at stride 2**(k+1); the
  neck reads `in_levels` and its outputs have strides 2**level, which must equal
  `anchors.strides`.

Names of stems, blocks, necks and heads are the keys of detectors.catalog (each with its
builder and analytic cost); an unknown name is a UserError listing the valid ones. A neck may
carry `options`, a frozen dataclass of its own settings (the catalogue entry names its class).
Fields added after the first release are written to YAML only when they differ from their
default (`metadata={"omit_default": True}`), so the ids of earlier specs never change.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from detectors.errors import UserError

__all__ = [
    "NORMS",
    "MAX_STAGES",
    "StageSpec",
    "BackboneSpec",
    "NeckSpec",
    "HeadSpec",
    "AnchorSpec",
    "DetectorSpec",
]

NORMS = ("gn", "bn")
WIDTH_DIVISOR = 8
MAX_STAGES = 6  # C2..C7 (strides 4..128: BFBox, ASFD, FANet)
_OMIT_DEFAULT = {"omit_default": True}


def _catalog():
    # Imported on first validation, not at import time: the catalogue imports torch modules.
    from detectors import catalog

    return catalog


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(what: str, v: Any, minimum: int) -> None:
    if not _is_int(v):
        raise UserError(f"{what} must be an integer, got {v!r}")
    if v < minimum:
        raise UserError(f"{what} must be >= {minimum}, got {v}")


def _check_width(what: str, v: Any) -> None:
    _check_int(what, v, 1)
    if v % WIDTH_DIVISOR:
        raise UserError(f"{what} {v} is not divisible by {WIDTH_DIVISOR}")


def _check_entry(what: str, v: Any, table: dict) -> None:
    if not isinstance(v, str) or v not in table:
        raise UserError(f"{what} {v!r} is not one of {', '.join(table)}")


def _check_choice(what: str, v: Any, valid: tuple[str, ...]) -> None:
    if v not in valid:
        raise UserError(f"{what} {v!r} is not one of {', '.join(valid)}")


def _check_bool(what: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise UserError(f"{what} must be true or false, got {v!r}")


@dataclass(frozen=True)
class StageSpec:
    """One backbone stage: `depth` blocks with `width` planes; `block` is one catalogue block
    name for every layer, or a tuple of `depth` names (one per layer)."""

    block: str | tuple[str, ...]
    depth: int
    width: int

    @property
    def layer_blocks(self) -> tuple[str, ...]:
        """The block name of each layer."""
        return self.block if isinstance(self.block, tuple) else (self.block,) * self.depth

    @property
    def out_channels(self) -> int:
        return self.width * _catalog().block_entry(self.layer_blocks[-1]).expansion


@dataclass(frozen=True)
class BackboneSpec:
    """Stem plus 1-6 stages (C2, C3, ...; SCRFD's ResNets have four, C2..C5)."""

    stem_width: int
    stages: tuple[StageSpec, ...]
    stem: str = "deep"

    def __post_init__(self) -> None:
        _check_entry("backbone stem", self.stem, _catalog().STEMS)
        _check_width("backbone stem_width", self.stem_width)
        if not isinstance(self.stages, tuple) or not 1 <= len(self.stages) <= MAX_STAGES:
            raise UserError(f"backbone needs 1 to {MAX_STAGES} stages, got {_len(self.stages)}")
        for i, st in enumerate(self.stages, start=1):
            _validate_stage(i, st)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of C2..C5."""
        return tuple(st.out_channels for st in self.stages)

    @property
    def levels(self) -> tuple[int, ...]:
        """Levels of the stage outputs (2 = C2, stride 4)."""
        return tuple(range(2, 2 + len(self.stages)))


def _validate_stage(i: int, st: Any) -> None:
    """Messages number stages from 1 (stage 1 = C2)."""
    if not isinstance(st, StageSpec):
        raise UserError(f"stage {i} must be a StageSpec, got {type(st).__name__}")
    _check_int(f"stage {i} depth", st.depth, 1)
    blocks = _catalog().BLOCKS
    if isinstance(st.block, tuple):
        if len(st.block) != st.depth:
            raise UserError(f"stage {i} lists {len(st.block)} blocks but has depth {st.depth}")
        for j, name in enumerate(st.block):
            _check_entry(f"stage {i} block[{j}]", name, blocks)
    else:
        _check_entry(f"stage {i} block", st.block, blocks)
    _check_width(f"stage {i} width", st.width)


def _len(x: Any) -> Any:
    try:
        return len(x)
    except TypeError:
        return repr(x)


@dataclass(frozen=True)
class NeckSpec:
    """Feature pyramid over backbone levels `in_levels` (2 = C2 ...), `channels` wide.

    `options`: the neck type's own settings (an instance of its catalogue entry's `options`
    dataclass, e.g. a searched FPN's merge choices), None for types without any.
    """

    type: str
    channels: int
    in_levels: tuple[int, ...] = (3, 4, 5)
    options: Any = field(default=None, metadata=_OMIT_DEFAULT)

    def __post_init__(self) -> None:
        entry = _catalog().neck_entry(self.type) if isinstance(self.type, str) else None
        _check_entry("neck type", self.type, _catalog().NECKS)
        _check_width("neck channels", self.channels)
        lv = self.in_levels
        if not isinstance(lv, tuple) or not lv or not all(_is_int(x) for x in lv):
            raise UserError(f"neck in_levels must be a non-empty list of integers, got {lv!r}")
        top = 1 + MAX_STAGES
        if lv[0] < 2 or lv[-1] > top or list(lv) != list(range(lv[0], lv[0] + len(lv))):
            raise UserError(f"neck in_levels {list(lv)} must be consecutive levels within 2..{top}")
        want = entry.options
        if want is None and self.options is not None:
            raise UserError(f"neck type {self.type!r} takes no options")
        if want is not None and not isinstance(self.options, want):
            raise UserError(f"neck type {self.type!r} needs options ({want.__name__})")


@dataclass(frozen=True)
class HeadSpec:
    """Detection head: a tower of `num_convs` 3x3 conv+norm+ReLU, then 3x3 prediction convs.

    shared_across_strides: one tower and one set of prediction convs for all levels (SCRFD
    `strides_share`); shared_towers: classification and regression read the same tower (SCRFD
    `cls_reg_share`); depthwise: tower convs are depthwise-separable (3x3 dw + 1x1 pw, each
    with norm and ReLU); scale: a learnable scalar per stride multiplies the box distances.
    """

    channels: int
    num_convs: int
    norm: str = "gn"
    gn_groups: int = 16
    depthwise: bool = False
    shared_across_strides: bool = True
    shared_towers: bool = True
    scale: bool = True
    keypoints: bool = False
    type: str = field(default="scrfd", metadata=_OMIT_DEFAULT)

    def __post_init__(self) -> None:
        _check_entry("head type", self.type, _catalog().HEADS)
        _check_width("head channels", self.channels)
        _check_int("head num_convs", self.num_convs, 0)
        _check_choice("head norm", self.norm, NORMS)
        _check_int("head gn_groups", self.gn_groups, 1)
        for name in ("depthwise", "shared_across_strides", "shared_towers", "scale", "keypoints"):
            _check_bool(f"head {name}", getattr(self, name))
        if self.norm == "gn" and self.num_convs and self.channels % self.gn_groups:
            raise UserError(
                f"head channels {self.channels} is not divisible by gn_groups {self.gn_groups}"
            )


@dataclass(frozen=True)
class AnchorSpec:
    """Anchors per level: A = len(ratios) * len(scales) square-ish boxes per location.

    Anchor a = ratio index * len(scales) + scale index has width base * scale / sqrt(ratio)
    and height base * scale * sqrt(ratio), centred on the anchor point (mmdet convention).
    """

    strides: tuple[int, ...] = (8, 16, 32)
    base_sizes: tuple[int, ...] = (16, 64, 256)
    scales: tuple[float, ...] = (1.0, 2.0)
    ratios: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("strides", "base_sizes"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or not all(_is_int(x) and x > 0 for x in v):
                raise UserError(f"anchors {name} must be a non-empty list of positive integers, got {v!r}")
        for name in ("scales", "ratios"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or not all(isinstance(x, float) and x > 0 for x in v):
                raise UserError(f"anchors {name} must be a non-empty list of positive numbers, got {v!r}")
        if len(self.base_sizes) != len(self.strides):
            raise UserError(
                f"anchors has {len(self.strides)} strides but {len(self.base_sizes)} base_sizes"
            )

    @property
    def num_anchors(self) -> int:
        """Anchors per location (A)."""
        return len(self.scales) * len(self.ratios)


@dataclass(frozen=True)
class DetectorSpec:
    """A whole detector. `input_size` is (height, width), the size its cost is quoted at."""

    name: str
    backbone: BackboneSpec
    neck: NeckSpec
    head: HeadSpec
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    input_size: tuple[int, int] = (640, 640)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UserError(f"name must be a non-empty string, got {self.name!r}")
        for fname, cls in (("backbone", BackboneSpec), ("neck", NeckSpec), ("head", HeadSpec),
                           ("anchors", AnchorSpec)):
            if not isinstance(getattr(self, fname), cls):
                raise UserError(f"{fname} must be a {cls.__name__}")
        s = self.input_size
        if not isinstance(s, tuple) or len(s) != 2 or not all(_is_int(x) and x >= 32 for x in s):
            raise UserError(f"input_size must be [height, width] integers >= 32, got {s!r}")
        if self.neck.in_levels[-1] > self.backbone.levels[-1]:
            raise UserError(
                f"neck in_levels {list(self.neck.in_levels)} reach beyond the backbone's levels "
                f"{list(self.backbone.levels)} ({len(self.backbone.stages)} stages)")
        out_levels = _catalog().neck_out_levels(self.neck)
        expected = tuple(2**lv for lv in out_levels)
        if self.anchors.strides != expected:
            raise UserError(
                f"anchors strides {list(self.anchors.strides)} must match the neck levels "
                f"{list(out_levels)} (strides {list(expected)})"
            )
        check = _catalog().neck_entry(self.neck.type).check
        if check is not None:  # the neck's own rules across the spec (e.g. fanet's levels)
            check(self)
        h = self.head
        if h.norm == "gn" and h.depthwise and h.num_convs and self.neck.channels % h.gn_groups:
            # the first depthwise conv is normalised over the neck's channels
            raise UserError(
                f"neck channels {self.neck.channels} is not divisible by head gn_groups "
                f"{h.gn_groups} (needed by the depthwise head)"
            )

    # ---- plain-data forms -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict/list form (the YAML form), fields in declaration order."""
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> "DetectorSpec":
        """Inverse of `to_dict`; unknown keys, missing keys and wrong types raise UserError.

        Missing optional keys take their defaults. Error messages name the key path, e.g.
        `backbone.stages[2].width`.
        """
        return _parse(cls, data, "")

    def to_yaml(self) -> str:
        """Canonical YAML text: `from_yaml(to_yaml())` gives back an equal spec."""
        return _dump_yaml(_to_plain(self, flow=True))

    @classmethod
    def from_yaml(cls, text_or_path: "str | Path") -> "DetectorSpec":
        """Parse a spec from YAML text or from a path to a YAML file.

        A `Path`, or a one-line string ending in .yaml/.yml, is read as a file. Errors name the
        file and, where known, the line of the offending key.
        """
        return _load_yaml(cls, text_or_path)

    @functools.cached_property
    def id(self) -> str:
        """Stable 12-hex-digit id: sha256 of the canonical YAML (computed once per spec)."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:12]

    @property
    def strides(self) -> tuple[int, ...]:
        return self.anchors.strides


class _FlowDict(dict):
    """A mapping written on one line in YAML (used for stages)."""


class _FlowList(list):
    """A list of scalars written on one line in YAML."""


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: ~10x faster


class _SpecDumper(_Dumper):  # type: ignore[misc,valid-type]
    pass


_SpecDumper.add_representer(
    _FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True)
)
_SpecDumper.add_representer(
    _FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def _dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, default_flow_style=False,
                     width=100)


def _to_plain(obj: Any, flow: bool = False) -> Any:
    """Dataclasses -> dicts, tuples -> lists; `flow` marks values for one-line YAML."""
    if dataclasses.is_dataclass(obj):
        d = {f.name: _to_plain(getattr(obj, f.name), flow) for f in dataclasses.fields(obj)
             if not (f.metadata.get("omit_default") and getattr(obj, f.name) == _default(f))}
        return _FlowDict(d) if flow and isinstance(obj, StageSpec) else d
    if isinstance(obj, tuple):
        items = [_to_plain(x, flow) for x in obj]
        scalars = all(not isinstance(x, (dict, list)) for x in items)
        return _FlowList(items) if flow and scalars else items
    return obj


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# ---- parsing plain data into specs ------------------------------------------------------
def _as_float(what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{what} must be a number, got {v!r}")
    return float(v)


def _list_of(conv: Callable[[str, Any], Any]) -> Callable[[str, Any], tuple]:
    def parse(what: str, v: Any) -> tuple:
        if not isinstance(v, list):
            raise UserError(f"{what} must be a list, got {v!r}")
        return tuple(conv(f"{what}[{i}]", x) for i, x in enumerate(v))

    return parse


def _plain(what: str, v: Any) -> Any:
    return v


def _stages(what: str, v: Any) -> tuple:
    if not isinstance(v, list):
        raise UserError(f"{what} must be a list of 4 stages, got {v!r}")
    stages = []
    for i, x in enumerate(v):
        stage = _parse(StageSpec, x, f"{what}[{i}]")
        try:
            _validate_stage(i + 1, stage)
        except UserError as err:
            raise _located(f"backbone: {err}", f"{what}[{i}]") from None
        stages.append(stage)
    return tuple(stages)


def _block_names(what: str, v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _nested_tuple(what: str, v: Any) -> Any:
    """YAML lists (of lists ...) -> tuples (of tuples ...)."""
    if isinstance(v, list):
        return tuple(_nested_tuple(what, x) for x in v)
    return v


def _neck(what: str, v: Any) -> NeckSpec:
    """A NeckSpec; `options` is parsed with the class its type's catalogue entry names."""
    if isinstance(v, dict) and "options" in v:
        rest = {k: x for k, x in v.items() if k != "options"}
        neck_type = rest.get("type")
        cat = _catalog()
        try:
            entry = cat.neck_entry(neck_type)
        except UserError as err:
            raise _located(f"{what}: {err}", _join(what, "type")) from None
        if entry.options is None:
            raise _located(f"{what}: neck type {neck_type!r} takes no options",
                           _join(what, "options"))
        rest["options"] = _parse(entry.options, v["options"], _join(what, "options"))
        return _parse(NeckSpec, rest, what, converted={"options"})
    return _parse(NeckSpec, v, what)


def _generic_converters(cls: type) -> dict[str, Callable[[str, Any], Any]]:
    """Converters of a catalogue options dataclass from its type hints: tuples from lists,
    floats from numbers, nested dataclasses parsed (so neck options need no table here)."""
    import typing

    hints = typing.get_type_hints(cls)
    out: dict[str, Callable[[str, Any], Any]] = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(hint):
            out[f.name] = lambda w, v, h=hint: _parse(h, v, w)
        elif hint is float:
            out[f.name] = _as_float
        elif typing.get_origin(hint) is tuple or hint is tuple:
            out[f.name] = _nested_tuple
    return out


# field name -> converter from YAML value (anything not listed is taken as is)
_CONVERTERS: dict[type, dict[str, Callable[[str, Any], Any]]] = {
    StageSpec: {"block": _block_names},
    BackboneSpec: {"stages": _stages},
    NeckSpec: {"in_levels": _list_of(_plain)},
    HeadSpec: {},
    AnchorSpec: {
        "strides": _list_of(_plain),
        "base_sizes": _list_of(_plain),
        "scales": _list_of(_as_float),
        "ratios": _list_of(_as_float),
    },
    DetectorSpec: {
        "backbone": lambda w, v: _parse(BackboneSpec, v, w),
        "neck": _neck,
        "head": lambda w, v: _parse(HeadSpec, v, w),
        "anchors": lambda w, v: _parse(AnchorSpec, v, w),
        "input_size": _list_of(_plain),
    },
}


def _located(message: str, path: str) -> UserError:
    """A UserError that remembers the key path it is about (used to find its YAML line)."""
    err = UserError(message)
    err.key_path = path  # type: ignore[attr-defined]
    return err


def _parse(cls: type, data: Any, where: str, converted: frozenset | set = frozenset()) -> Any:
    label = where or "the spec"
    if not isinstance(data, dict):
        raise _located(f"{label} must be a mapping of keys to values, got {data!r}", where)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            under = f" under {where}" if where else ""
            raise _located(
                f"unknown key {_join(where, str(key))!r}; valid keys{under}: {', '.join(names)}",
                _join(where, str(key)),
            )
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in required:
        if name not in data:
            raise _located(f"missing key {_join(where, name)!r}", where)
    convs = _CONVERTERS.get(cls) or _generic_converters(cls)
    kwargs = {}
    for k, v in data.items():
        if k in converted:
            kwargs[k] = v
            continue
        try:
            kwargs[k] = convs.get(k, _plain)(_join(where, k), v)
        except UserError as err:
            if not hasattr(err, "key_path"):
                err.key_path = _join(where, k)  # type: ignore[attr-defined]
            raise
    try:
        return cls(**kwargs)
    except UserError as err:
        if hasattr(err, "key_path"):
            raise
        raise _located(f"{label}: {err}" if where else str(err), where) from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# ---- YAML files ---------------------------------------------------------------------------
def _load_yaml(cls: type, text_or_path: "str | Path") -> Any:
    text, source = _read_source(text_or_path)
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        raise UserError(f"{source}: empty spec (expected keys: "
                        f"{', '.join(f.name for f in dataclasses.fields(cls))})")
    try:
        return cls.from_dict(data)
    except UserError as err:
        line = _line_of(root, getattr(err, "key_path", ""))
        where = f"{source}:{line}" if line else source
        raise UserError(f"{where}: {err}") from None


def _read_source(text_or_path: "str | Path") -> tuple[str, str]:
    """(text, name for messages). Paths and one-line '*.yaml'/'*.yml' strings are files."""
    one_line = isinstance(text_or_path, str) and "\n" not in text_or_path.strip()
    is_path = isinstance(text_or_path, Path) or (one_line and (
        text_or_path.strip().endswith((".yaml", ".yml")) or Path(text_or_path.strip()).is_file()
        or ":" not in text_or_path))
    if not is_path:
        return str(text_or_path), "<spec text>"
    path = Path(str(text_or_path).strip())
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise UserError(f"spec file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read spec file {path}: {err.__class__.__name__}") from None


def _line_of(node: Any, path: str) -> int | None:
    """1-based line of the YAML node at a key path like `backbone.stages[2].width`."""
    if node is None or not path:
        return None
    line = node.start_mark.line + 1
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            idx = int(part[1:-1])
            if not isinstance(node, yaml.SequenceNode) or idx >= len(node.value):
                break
            node = node.value[idx]
        else:
            if not isinstance(node, yaml.MappingNode):
                break
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            line = match[0][0].start_mark.line + 1
            node = match[0][1]
            continue
        line = node.start_mark.line + 1
    return line
