"""Retraining configs: a detector spec plus a training recipe, in one YAML file.

    spec: models/scrfd_0.5g.yaml     # a path relative to this file, or an inline mapping
    recipe:                          # any subset; omitted keys keep the SCRFD defaults below
      train_size: 640
      batch_size: 32
      schedule: {lr: 0.01, unit: epochs, total: 640, milestones: [440, 544]}
      augmentation: {crop_choices: [0.3, 0.45, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]}

The defaults are the published SCRFD recipe (insightface detection/scrfd/configs/scrfd/*.py):
SGD lr 0.01, momentum 0.9, weight decay 5e-4, linear warm-up over 1500 iterations from
lr x 0.001, step decay x0.1 at epochs 440 and 544 of 640, 8 images per GPU on 4 GPUs (32),
640x640 training crops with sample redistribution, flip, photometric distortion, QFL (beta 2),
DIoU (weight 2), smooth-L1 keypoints (beta 1/9, weight 0.1), ATSS top-9, test at 640 with
score 0.02 / NMS 0.45. One default departs from it: `box_init: anchor` starts each anchor's box
at its anchor box (detectors.model.init_box_bias); `box_init: point` is SCRFD's own init.
Budget presets (`apply_budget`) scale a recipe without editing it.

A config may carry its own per-budget section, merged over the global budget override (as a
search preset's `budgets:` is merged over experiments/search/budgets.yaml):

    budgets:
      quick:
        recipe: {train_size: 128, schedule: {total: 150}}   # merged over _BUDGET_OVERRIDES
        synthetic: {image_size: 320, face_scale: 2}          # default data of that budget
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from detectors.errors import UserError
from detectors.rsa.recipe import RSARecipe

if TYPE_CHECKING:  # imported lazily so recipes work without building anything
    from detectors.spec import DetectorSpec

__all__ = [
    "Schedule", "Augmentation", "LossWeights", "AssignerConfig", "TestConfig", "TEST_RESIZE",
    "TEST_MERGE", "Pretrained", "Recipe",
    "TrainConfig", "RSARecipe", "load_config", "BUDGETS", "apply_budget", "budget_recipe",
    "BASELINE_CROPS", "SR_CROPS",
    "schedule_in_iterations", "merge", "check_budget_section", "budget_synthetic", "CONFIG_BUDGET_KEYS",
    "SYNTHETIC_KEYS", "EXECUTION_KEYS", "NOT_IDENTITY_KEYS", "BOX_INITS",
]

# Recipe keys that say how the global batch is executed, not what is trained: resuming with
# other values is allowed (see Recipe.identity).
EXECUTION_KEYS = ("grad_accumulation", "sync_bn")

# Recipe keys a resumed run need not match (Recipe.identity): EXECUTION_KEYS, and box_init,
# which only shapes iteration 0 (a checkpoint resumes whatever it was, and checkpoints from
# before the key existed resume).
NOT_IDENTITY_KEYS = EXECUTION_KEYS + ("box_init",)

# How the box regression starts (detectors.model.init_box_bias): "anchor", each anchor's first
# box is its own anchor box; "point", SCRFD's published init (bias 0: boxes start as points,
# and many start inverted, 84-95 % in the published 2.5 GF spec, which can leave an anchor
# with no box gradient for good: docs/proxies.md "Dead anchors").
BOX_INITS = ("anchor", "point")

BASELINE_CROPS = (0.3, 0.45, 0.6, 0.8, 1.0)
# Sample redistribution (SCRFD sec. 3.1): crops up to 2x the short edge make faces smaller.
SR_CROPS = BASELINE_CROPS + (1.2, 1.4, 1.6, 1.8, 2.0)


@dataclass(frozen=True)
class Schedule:
    """SGD with linear warm-up and step decay. `total` and `milestones` count `unit`s
    ('epochs' or 'iterations'); the warm-up always counts iterations (as mmdet)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    unit: str = "epochs"
    total: int = 640
    milestones: tuple[int, ...] = (440, 544)
    gamma: float = 0.1
    warmup_iters: int = 1500
    warmup_ratio: float = 0.001

    def __post_init__(self) -> None:
        if self.unit not in ("epochs", "iterations"):
            raise UserError(f"schedule.unit must be 'epochs' or 'iterations', not {self.unit!r}")
        if self.total < 1 or self.lr <= 0 or self.warmup_iters < 0:
            raise UserError("schedule: total must be >= 1, lr > 0 and warmup_iters >= 0")
        if list(self.milestones) != sorted(self.milestones) or any(
            m < 0 or m > self.total for m in self.milestones
        ):
            raise UserError(f"schedule.milestones {list(self.milestones)} must be increasing "
                            f"and within 0..total ({self.total})")


@dataclass(frozen=True)
class Augmentation:
    """Training-time data augmentation (see detectors.data.transforms and detectors.batches).

    crop_choices: SCRFD square-crop scales of the short edge (BASELINE_CROPS, or SR_CROPS for
    sample redistribution); empty = no crop (long side resized to train_size, padded).
    data_anchor_sampling: probability per sample of PyramidBox's data-anchor sampling in place
    of the crop (one face rescaled to a drawn anchor scale 16-512 px; BFBox: 1, ASFD: 0.5).
    """

    crop_choices: tuple[float, ...] = SR_CROPS
    flip: bool = True
    photometric: bool = True
    min_face: float = 0.0  # faces smaller than this (px, after resize) become ignore regions
    # PyramidBox's data-anchor sampling instead of the crop, with this probability per sample
    # (detectors.data.transforms.DataAnchorSampling; BFBox, DSFD / ASFD)
    data_anchor_sampling: float = 0.0  # omitted from Recipe.to_dict at 0

    def __post_init__(self) -> None:
        if any(c <= 0 for c in self.crop_choices):
            raise UserError("augmentation.crop_choices must be positive scales (or empty: no crop)")
        if not 0 <= self.data_anchor_sampling <= 1:
            raise UserError(f"augmentation.data_anchor_sampling is a probability in [0, 1], "
                            f"not {self.data_anchor_sampling}")


@dataclass(frozen=True)
class LossWeights:
    """The loss (`type`, a name in detectors.catalog.LOSSES; 'scrfd' = quality focal loss +
    DIoU + smooth-L1 keypoints) and its weights. `aux_weight` multiplies the loss of each
    auxiliary prediction set a model returns (HeadOutputs.aux: ASFD's first shot, FANet's
    hierarchy); `margin` is the classification margin of margin-based losses (ASFD's DRMC);
    `neg_pos_ratio` the hard-negative mining ratio of SSD-style losses (multibox, DRMC:
    negatives trained per positive; <= 0 trains every negative)."""

    qfl_beta: float = 2.0
    cls_weight: float = 1.0
    box_weight: float = 2.0
    kps_weight: float = 0.1
    kps_beta: float = 1.0 / 9.0
    type: str = "scrfd"
    aux_weight: float = 1.0
    margin: float = 0.0
    neg_pos_ratio: float = 3.0

    def __post_init__(self) -> None:
        from detectors.catalog import loss_fn

        loss_fn(self.type)


@dataclass(frozen=True)
class AssignerConfig:
    """Label assignment (`type`, a name in detectors.catalog.ASSIGNERS): 'atss' takes the
    top-k candidates per pyramid level by centre distance (SCRFD); 'iou' is S3FD's max-IoU
    matcher with positive IoU >= pos_iou plus each face's best anchor (BFBox, FANet: 0.35)."""

    topk: int = 9
    type: str = "atss"
    pos_iou: float = 0.35

    def __post_init__(self) -> None:
        from detectors.catalog import assigner_fn

        assigner_fn(self.type)
        if self.topk < 1:
            raise UserError(f"assigner.topk must be >= 1, not {self.topk}")
        if not 0 < self.pos_iou <= 1:
            raise UserError(f"assigner.pos_iou must be in (0, 1], not {self.pos_iou}")


TEST_RESIZE = ("long", "short")
TEST_MERGE = ("nms", "vote")


@dataclass(frozen=True)
class TestConfig:
    """Test-time settings (docs/evaluation.md, "Test protocols"). The default is SCRFD's: one
    pass with the long side resized to `size`, score threshold, NMS IoU, detections kept per
    image (None: all, as SCRFD's max_per_img=-1).

    sizes: the test sizes of a multi-scale test (one or more; None: [size]); resize: which
    side becomes the size ('long': padded to size x size, SCRFD; 'short': FANet's "shorter
    size"); flip: also test each size on the mirrored image; pre_nms_top_k: boxes kept per
    pass before NMS, by score (ASFD: 5000); merge: how the passes' detections are combined
    ('nms', or 'vote': S3FD / DSFD box voting), at iou_thresh, keeping max_det (ASFD: 750).
    """

    size: int = 640
    score_thresh: float = 0.02
    iou_thresh: float = 0.45
    max_det: int | None = None
    # added after the first release: written only when not at their default (Recipe.to_dict),
    # so earlier recipes and checkpoints stay equal
    sizes: tuple[int, ...] | None = None
    resize: str = "long"
    flip: bool = False
    pre_nms_top_k: int | None = None
    merge: str = "nms"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UserError(f"recipe.test.size must be a positive integer, not {self.size}")
        if self.sizes is not None:
            if len(self.sizes) == 0:
                raise UserError("recipe.test.sizes is empty: list one or more test sizes "
                                "(or null for [recipe.test.size])")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.sizes):
                raise UserError(f"recipe.test.sizes must be positive integers, not {list(self.sizes)}")
        if self.resize not in TEST_RESIZE:
            raise UserError(f"recipe.test.resize must be one of {', '.join(TEST_RESIZE)}, not {self.resize!r}")
        if self.merge not in TEST_MERGE:
            raise UserError(f"recipe.test.merge must be one of {', '.join(TEST_MERGE)}, not {self.merge!r}")
        for key in ("pre_nms_top_k", "max_det"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"recipe.test.{key} must be >= 1 (or null: no cap), not {value}")

    @property
    def scales(self) -> tuple[int, ...]:
        """The sizes tested: `sizes`, or (size,)."""
        return tuple(self.sizes) if self.sizes is not None else (self.size,)

    @property
    def single_pass(self) -> bool:
        """One size and no flip: the detections are one pass's, with nothing to merge."""
        return len(self.scales) == 1 and not self.flip


# The test keys added after the first release (TestConfig), omitted from Recipe.to_dict at
# their default; smoke and quick budgets reset them: a CPU proxy tests one pass.
_TEST_ADDED = ("sizes", "resize", "flip", "pre_nms_top_k", "merge")
_SINGLE_PASS = {"sizes": None, "resize": "long", "flip": False, "merge": "nms"}


@dataclass(frozen=True)
class Pretrained:
    """ImageNet-pretrained weights loaded before training (not on resume): `backbone` is the
    path of a torchvision-format state dict (detectors/pretrained.py; docs/export.md)."""

    backbone: str | None = None


@dataclass(frozen=True)
class Recipe:
    """Everything about training except the architecture."""

    train_size: int = 640
    batch_size: int = 32  # total per optimiser step (SCRFD: 8 per GPU x 4 GPUs)
    # data-loading processes (0: load in the training process); None: one per CPU thread the
    # training was given. `--workers` on train and search overrides it (detectors.batches)
    workers: int | None = None
    seed: int = 0
    schedule: Schedule = field(default_factory=Schedule)
    augmentation: Augmentation = field(default_factory=Augmentation)
    loss: LossWeights = field(default_factory=LossWeights)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    test: TestConfig = field(default_factory=TestConfig)
    rsa: RSARecipe = field(default_factory=RSARecipe)  # omitted from to_dict at its default
    pretrained: Pretrained = field(default_factory=Pretrained)  # likewise
    # The global batch runs as this many micro-batches per process, gradients summed: one
    # SGD step of batch_size images needing the memory of batch_size / (processes x this).
    grad_accumulation: int = 1
    # BatchNorm statistics over the global batch across processes (SyncBatchNorm); GroupNorm
    # heads are unaffected. No effect in one process.
    sync_bn: bool = False
    # The one departure from the published recipe (BOX_INITS): "point" reproduces SCRFD's
    # init; "anchor" keeps every anchor trainable.
    box_init: str = "anchor"

    def __post_init__(self) -> None:
        if self.train_size < 32 or self.train_size % 32:
            raise UserError(f"recipe.train_size must be a multiple of 32 (>= 32), not {self.train_size}")
        if self.batch_size < 1:
            raise UserError(f"recipe.batch_size must be >= 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"recipe.workers must be >= 0 (0: load in the training process), not {self.workers}")
        if isinstance(self.grad_accumulation, bool) or not isinstance(self.grad_accumulation, int) \
                or self.grad_accumulation < 1 or self.batch_size % self.grad_accumulation:
            raise UserError(f"recipe.grad_accumulation must be an integer >= 1 dividing recipe.batch_size "
                            f"({self.batch_size}), not {self.grad_accumulation!r}")
        if not isinstance(self.sync_bn, bool):
            raise UserError(f"recipe.sync_bn must be true or false, not {self.sync_bn!r}")
        if self.box_init not in BOX_INITS:
            raise UserError(f"recipe.box_init must be one of {', '.join(BOX_INITS)}, not {self.box_init!r}")

    def to_dict(self, full: bool = False) -> dict:
        """Plain data; sections and keys added later are left out at their default (so
        recipes and checkpoints written before them stay equal) unless `full` (--set needs
        every key). box_init is always written: its default changed meaning (it was SCRFD's
        point init before the key existed), so a recipe must say which one trained it."""
        d = _plain(dataclasses.asdict(self))
        for name, default in (("rsa", RSARecipe()), ("pretrained", Pretrained())):
            if not full and getattr(self, name) == default:
                d.pop(name)
        if not full and self.augmentation.data_anchor_sampling == 0:
            d["augmentation"].pop("data_anchor_sampling")
        for key in () if full else EXECUTION_KEYS:
            if d[key] == getattr(Recipe, key):
                d.pop(key)
        if not full:
            for key in _TEST_ADDED:
                if getattr(self.test, key) == getattr(TestConfig, key):
                    d["test"].pop(key)
        return d

    def identity(self) -> dict:
        """What a resumed run must match: to_dict without EXECUTION_KEYS (how the global
        batch is split over processes and micro-batches may change between runs, as the
        number of processes may) and without box_init."""
        d = self.to_dict()
        for key in NOT_IDENTITY_KEYS:
            d.pop(key, None)
        return d


@dataclass(frozen=True)
class TrainConfig:
    """A retraining config: what to build (`spec`) and how to train it (`recipe`), plus the
    config's own per-budget sections (`budgets`: budget name -> {recipe, synthetic}, plain
    data checked by `load_config`; applied by `apply_budget`)."""

    spec: DetectorSpec
    recipe: Recipe = field(default_factory=Recipe)
    budgets: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, full: bool = False) -> dict:
        d = {"spec": self.spec.to_dict(), "recipe": self.recipe.to_dict(full)}
        if self.budgets:  # configs without one (and their checkpoints) stay as they were
            d["budgets"] = _plain(dict(self.budgets))
        return d

    def to_yaml(self) -> str:
        """Self-contained YAML (spec inline) that `load_config` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so YAML stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check and convert one YAML value to the dataclass field type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _from_mapping(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _convert(value, hint, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, not {value!r}")
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise UserError(f"{where} must be a string, not {value!r}")
    return value


def _from_mapping(cls: type, mapping: Any, where: str) -> Any:
    """Build dataclass `cls` from a (partial) mapping; unknown keys raise UserError."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise UserError(f"{where} must be a mapping, not {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]} (valid: {', '.join(names)})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in mapping.items()}
    return cls(**kwargs)


def recipe_from_dict(mapping: Mapping[str, Any] | None, where: str = "recipe") -> Recipe:
    """A Recipe from a (partial) mapping; omitted keys keep the published SCRFD defaults."""
    return _from_mapping(Recipe, mapping, where)


def load_config(path: str | Path) -> TrainConfig:
    """Read a retraining config YAML (see module docstring). Mistakes raise UserError naming
    the file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, Mapping) or "spec" not in data:
        raise UserError(f"{path}: a retraining config is a mapping with keys 'spec' and 'recipe'")
    # `run:` is the provenance a training run records in its config.yaml; it is not an input.
    unknown = [k for k in data if k not in ("spec", "recipe", "budgets", "run")]
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (valid: spec, recipe, budgets, run)")
    try:
        spec = _load_spec(data["spec"], path)
        recipe = recipe_from_dict(data.get("recipe"))
        config = TrainConfig(spec=spec, recipe=recipe, budgets=_load_budgets(data.get("budgets")))
        for name in config.budgets:  # a mistake in any budget's recipe shows now, not at its turn
            apply_budget(config, name)
    except UserError as err:
        message = str(err)
        raise UserError(message if str(path) in message else f"{path}: {message}") from None
    return config


def _load_budgets(value: Any) -> dict[str, Any]:
    """A config's `budgets:` mapping, checked: budget names, section keys, synthetic keys."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"budgets must be a mapping of budget name -> section, not {value!r}")
    budgets = {}
    for name, section in value.items():
        if name not in _BUDGET_OVERRIDES:
            raise UserError(f"unknown budget budgets.{name} (valid: {', '.join(BUDGETS)})")
        budgets[name] = check_budget_section(section or {}, f"budgets.{name}", CONFIG_BUDGET_KEYS)
    return budgets


def _load_spec(value: Any, config_path: Path) -> DetectorSpec:
    from detectors.spec import DetectorSpec

    if isinstance(value, str):
        spec_path = (config_path.parent / value).resolve()
        if not spec_path.is_file():
            raise UserError(f"key spec: spec file {value} not found (looked in {spec_path})")
        return DetectorSpec.from_yaml(spec_path)
    if isinstance(value, Mapping):
        return DetectorSpec.from_dict(dict(value))
    raise UserError("key spec must be a path to a spec YAML or an inline mapping")


def schedule_in_iterations(schedule: Schedule, iters_per_epoch: int) -> tuple[int, tuple[int, ...]]:
    """(total iterations, milestone iterations) of a schedule, given the epoch length."""
    scale = iters_per_epoch if schedule.unit == "epochs" else 1
    return schedule.total * scale, tuple(m * scale for m in schedule.milestones)


# Budget presets: what each one overrides in any recipe (everything else is kept).
# quick: minutes on a 2-core CPU (scrfd_0.5g at 320 px: ~10 img/s -> 8 x 600 its ~ 8 min).
# smoke: seconds, for tests (a handful of tiny iterations, no worker processes). Neither
# quick nor paper sets `workers`: loader processes then follow the CPUs given (--threads,
# --cpus-per-trial) unless the config or --workers says otherwise.
_BUDGET_OVERRIDES: dict[str, dict[str, Any]] = {
    "smoke": {"train_size": 128, "batch_size": 2, "workers": 0,
              "schedule": {"unit": "iterations", "total": 4, "milestones": (3,),
                           "warmup_iters": 1},
              "test": {"size": 256, **_SINGLE_PASS}},
    "quick": {"train_size": 320, "batch_size": 8,
              "schedule": {"unit": "iterations", "total": 600, "milestones": (450, 550),
                           "warmup_iters": 50},
              "test": {"size": 640, **_SINGLE_PASS}},
    "paper": {},
}
BUDGETS = tuple(_BUDGET_OVERRIDES)


def apply_budget(config: TrainConfig, budget: str) -> TrainConfig:
    """The config with its recipe scaled to `budget` ('smoke' | 'quick' | 'paper').

    `paper` keeps the recipe as written (the published schedule); `quick` and `smoke` replace
    the training size, batch size and schedule length (warm-up, total, milestones, in
    iterations) and keep lr, momentum, augmentation, losses, assigner and seed. Then the
    config's own `budgets[budget].recipe`, if any, is merged over the result.
    """
    own = (config.budgets.get(budget) or {}).get("recipe")
    return replace(config, recipe=budget_recipe(config.recipe, budget, own))


def budget_recipe(recipe: Recipe, budget: str, own: Mapping[str, Any] | None = None) -> Recipe:
    """`recipe` scaled to `budget` as apply_budget says, then `own` (a partial recipe, e.g. a
    config's or a search budget's section) merged over it."""
    if budget not in _BUDGET_OVERRIDES:
        raise UserError(f"unknown budget {budget!r} (valid: {', '.join(BUDGETS)})")
    changes: dict[str, Any] = {}
    for key, value in _BUDGET_OVERRIDES[budget].items():
        current = getattr(recipe, key)
        changes[key] = replace(current, **value) if isinstance(value, dict) else value
    recipe = replace(recipe, **changes)
    if own:
        recipe = recipe_from_dict(merge(recipe.to_dict(), own), f"budgets.{budget}.recipe")
    return recipe


def budget_synthetic(config: TrainConfig, budget: str) -> dict[str, Any]:
    """The arguments of detectors.data.synthetic.default_root for the default data of
    `budget` ({} = the default 640-px set), from the config's own budget section."""
    return dict((config.budgets.get(budget) or {}).get("synthetic") or {})


# The keys of one budget section: a retraining config's (CONFIG_BUDGET_KEYS) and a search
# preset's (nas.presets adds its own); `synthetic` holds arguments of synthetic.default_root.
CONFIG_BUDGET_KEYS = ("recipe", "synthetic")
SYNTHETIC_KEYS = ("num_train", "num_val", "image_size", "face_scale", "seed")


def check_budget_section(section: Any, where: str, keys: tuple[str, ...] | set[str]) -> dict[str, Any]:
    """One budget's section (`where` names it in errors), checked: only `keys`, and a
    `synthetic` mapping of SYNTHETIC_KEYS. Returns it as a dict."""
    section = _mapping_of(section, where)
    extra = sorted(set(section) - set(keys))
    if extra:
        raise UserError(f"{where}: unknown key {extra[0]!r}; valid: {', '.join(sorted(keys))}")
    synthetic = _mapping_of(section.get("synthetic") or {}, f"{where}.synthetic")
    extra = sorted(set(synthetic) - set(SYNTHETIC_KEYS))
    if extra:
        raise UserError(f"{where}.synthetic: unknown key {extra[0]!r}; "
                        f"valid: {', '.join(sorted(SYNTHETIC_KEYS))}")
    _mapping_of(section.get("recipe") or {}, f"{where}.recipe")
    return dict(section)


def _mapping_of(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (mappings merge, other values replace).
    The one merge of budget sections: retraining configs here, search presets in nas."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
