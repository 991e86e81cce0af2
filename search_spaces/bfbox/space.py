"""BFBox search space (BFBox paper §4.2, Fig. 2-3): face-appropriate backbone and FPN paths.

A path chooses, independently,
- for every layer of the six backbone stages conv2..conv7 (levels C2..C7, strides 4..128) one
  choice block: in the `shallow_stages` first stages one of the blocks of the first `fdb` kinds
  (the paper's FDB(k); k = 4: single-kernel conv, its depthwise variant, two-kernel depthwise,
  dense), in the deep stages one of the first three kinds with kernels <= 7;
- for every FPN merge k (output level in_levels[k], p2..p6) the second input (any pool member
  but its own lateral, which is always the first) and its receptive-field module.
Every path is a plain DetectorSpec (backbone stages list their per-layer blocks, neck
`bfbox_fpn` with the merge choices; YAML round trip, stable id, `detectors.cost` exact).

Because every block of a layer maps the same channels to the same size, a path's MACs are a
fixed part plus one term per choice: `gene_macs` tabulates them (tests: equal to cost(spec)),
so FLOPs-band sampling is a vectorised table lookup over thousands of candidates at once.

What the FLOPs band counts is the frame's `flops` convention (FLOPS_CONVENTIONS):
`detector_vga`, the whole detector's MACs at 640x640 x 0.75 (the SCRFD tables' frame), or
`backbone_224`, the backbone's MACs at 224x224, the ImageNet convention in which BFBox's Table 9
quotes its backbones (ResNet-50 + FPN 3.8G, ResNet-101 + FPN 7.6G: He et al.'s 224x224
multiply-adds of the backbones alone; docs/bfbox.md has the evidence).
Genes: one integer per backbone layer, then one per merge input, then one per merge RF module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from detectors.bfbox.fpn import RF_MODULES, BFBoxFPNOptions
from detectors.bfbox.blocks import DEEP_KERNELS, DENSE, SHALLOW_KERNELS, TWO_KERNELS
from detectors.errors import UserError
from detectors.spec import AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, StageSpec

__all__ = ["KINDS", "BFBoxSpace", "BFBoxPath", "DEFAULT_TOLERANCE", "FLOPS_CONVENTIONS",
           "HEAD_TYPES", "latency_tables"]

# Block kinds in FDB order: (name, shallow-stage blocks, deep-stage blocks). Kinds 5 and 6
# (ResNet basic, MobileNet unit) are the "state-of-the-art blocks" the paper tried and
# dropped; they exist so FDB(5) / FDB(6) can be measured (the paper's FDB(6), FDB(8) lists
# are not published).
KINDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("conv", tuple(f"bf_conv{k}" for k in SHALLOW_KERNELS), tuple(f"bf_conv{k}" for k in DEEP_KERNELS)),
    ("dw", tuple(f"bf_dw{k}" for k in SHALLOW_KERNELS), tuple(f"bf_dw{k}" for k in DEEP_KERNELS)),
    ("dw2", tuple(f"bf_dw{a}_{b}" for a, b in TWO_KERNELS), tuple(f"bf_dw{a}_{b}" for a, b in TWO_KERNELS)),
    ("dense", tuple(f"bf_dense{n}x{g}" for n, g in DENSE), ()),
    ("basic", ("basic",), ()),
    ("depthwise", ("depthwise",), ()),
)
DEEP_KINDS = 3  # "only the first three blocks are for deep layers"
DEFAULT_TOLERANCE = 0.05
_LEVELS = (2, 3, 4, 5, 6, 7)
_VGA = 0.75
# What --gflops counts (see the module docstring), and the input side of backbone_224.
FLOPS_CONVENTIONS = {"detector_vga": "VGA GFLOPs (detector MACs, 640x640 x 0.75)",
                     "backbone_224": "GFLOPs (backbone MACs at 224x224, BFBox Table 9)"}
_IMAGENET = 224
# scrfd: SCRFD's head (GN towers, cls and box share one); retinanet: RetinaNet's (BFBox's
# detector): separate cls and box towers of conv + ReLU, no norm.
HEAD_TYPES = ("scrfd", "retinanet")


@dataclass(frozen=True)
class BFBoxPath:
    """One architecture: blocks[s][l] per stage and layer, FPN merge inputs and RF modules."""

    blocks: tuple[tuple[str, ...], ...]
    inputs: tuple[int, ...]
    rf: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": [list(b) for b in self.blocks], "inputs": list(self.inputs),
                "rf": list(self.rf)}


@dataclass(frozen=True)
class BFBoxSpace:
    """The space's fixed frame. Defaults: Fig. 2's channel plan (conv2..conv7 out 256, 256,
    512, 512, 512, 256 from a 64-channel stem), FDB(4), FPN-attention on; depths, neck and
    head sizes are not given by the paper (our choice, see docs/bfbox.md)."""

    fdb: int = 4
    stem_width: int = 64
    widths: tuple[int, ...] = (256, 256, 512, 512, 512, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2, 1, 1)
    shallow_stages: int = 2
    neck_channels: int = 64
    head_channels: int = 64
    head_convs: int = 1
    merges: int = 5
    attention: bool = True
    input_size: int = 640
    head_type: str = "scrfd"
    flops: str = "detector_vga"
    # (LatencyTable, low ms, high ms): a predicted-latency band (set by the search from
    # --latency-ms, never part of the frame's config)
    latency: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.fdb <= len(KINDS):
            raise UserError(f"bfbox fdb must be 1..{len(KINDS)}, got {self.fdb}")
        if len(self.widths) != len(_LEVELS) or len(self.depths) != len(_LEVELS):
            raise UserError(f"bfbox widths and depths need {len(_LEVELS)} stages (conv2..conv7)")
        if any(d < 1 for d in self.depths) or not 0 <= self.shallow_stages <= len(_LEVELS):
            raise UserError("bfbox depths must be >= 1 and shallow_stages within 0..6")
        if not 1 <= self.merges <= len(_LEVELS):
            raise UserError(f"bfbox merges must be 1..{len(_LEVELS)}, got {self.merges}")
        if self.head_type not in HEAD_TYPES:
            raise UserError(f"bfbox head_type {self.head_type!r} is not one of "
                            f"{', '.join(HEAD_TYPES)}")
        if self.flops not in FLOPS_CONVENTIONS:
            raise UserError(f"bfbox flops {self.flops!r} is not one of "
                            f"{', '.join(FLOPS_CONVENTIONS)}")
        self.template(self.default_path())  # validates widths/channels through DetectorSpec

    # ---- plain data ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if f.name != "latency"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "space") -> "BFBoxSpace":
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls) if f.name != "latency"]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise UserError(f"unknown key {where}.{unknown[0]} (valid: {', '.join(names)})")
        for key in ("widths", "depths"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    # ---- choices -------------------------------------------------------------------------
    def layer_choices(self) -> list[tuple[str, ...]]:
        """Candidate block names of every backbone layer, stage by stage."""
        shallow = tuple(n for _, blocks, _ in KINDS[: self.fdb] for n in blocks)
        deep = tuple(n for _, _, blocks in KINDS[:DEEP_KINDS] for n in blocks)
        return [shallow if s < self.shallow_stages else deep
                for s, d in enumerate(self.depths) for _ in range(d)]

    def merge_inputs(self, k: int) -> tuple[int, ...]:
        """Pool indices merge k may take as its second input (not its own lateral k)."""
        return tuple(j for j in range(len(_LEVELS) + k) if j != k)

    def gene_sizes(self) -> list[int]:
        return ([len(c) for c in self.layer_choices()]
                + [len(self.merge_inputs(k)) for k in range(self.merges)]
                + [len(RF_MODULES)] * self.merges)

    def size(self) -> int:
        """Number of distinct paths."""
        return int(np.prod([float(n) for n in self.gene_sizes()]))

    def decode(self, genes) -> BFBoxPath:
        choices, blocks, i = self.layer_choices(), [], 0
        for d in self.depths:
            blocks.append(tuple(choices[i + l][int(genes[i + l])] for l in range(d)))
            i += d
        m = self.merges
        inputs = tuple(self.merge_inputs(k)[int(genes[i + k])] for k in range(m))
        rf = tuple(RF_MODULES[int(genes[i + m + k])] for k in range(m))
        return BFBoxPath(tuple(blocks), inputs, rf)

    def encode(self, path: BFBoxPath) -> np.ndarray:
        """Genes of a path (UserError if it is not a path of this space)."""
        names = [n for stage in path.blocks for n in stage]
        choices = self.layer_choices()
        if [len(b) for b in path.blocks] != list(self.depths) or len(path.inputs) != self.merges \
                or len(path.rf) != self.merges:
            raise UserError("not a path of this bfbox space: stage depths or merge count differ")
        genes = []
        for i, (name, cands) in enumerate(zip(names, choices)):
            if name not in cands:
                raise UserError(f"not a path of this bfbox space: layer {i} block {name!r} is not "
                                f"one of {', '.join(cands)}")
            genes.append(cands.index(name))
        for k, j in enumerate(path.inputs):
            if j not in self.merge_inputs(k):
                raise UserError(f"not a path of this bfbox space: merge {k} input {j}")
            genes.append(self.merge_inputs(k).index(j))
        genes += [RF_MODULES.index(r) for r in path.rf]
        return np.asarray(genes, dtype=np.int64)

    def default_path(self) -> BFBoxPath:
        """The first choice everywhere (a plain 3x3 network with top-down merges)."""
        return self.decode([0] * len(self.gene_sizes()))

    # ---- specs ---------------------------------------------------------------------------
    def template(self, path: BFBoxPath) -> DetectorSpec:
        """The DetectorSpec of a path (validated on construction)."""
        stages = tuple(StageSpec(block=tuple(b), depth=len(b), width=w)
                       for b, w in zip(path.blocks, self.widths))
        options = BFBoxFPNOptions(inputs=tuple(path.inputs), rf=tuple(path.rf),
                                  weighted=self.attention)
        return DetectorSpec(
            name="bfbox",
            backbone=BackboneSpec(stem_width=self.stem_width, stages=stages, stem="deep"),
            neck=NeckSpec("bfbox_fpn", self.neck_channels, in_levels=_LEVELS, options=options),
            # >= 4 channels per GroupNorm group: C7 is 1x1 at small training sizes
            head=HeadSpec(channels=self.head_channels, num_convs=self.head_convs,
                          gn_groups=max(1, min(16, self.head_channels // 4)),
                          type=self.head_type, shared_towers=self.head_type == "scrfd"),
            anchors=AnchorSpec(strides=tuple(2**lv for lv in _LEVELS),
                               base_sizes=tuple(4 * 2**lv for lv in _LEVELS),  # 16 .. 512
                               scales=(1.0,), ratios=(1.0,)),
            input_size=(self.input_size, self.input_size))


    def from_spec(self, spec: DetectorSpec) -> BFBoxPath:
        """The path a spec of this space encodes (UserError naming the mismatch otherwise)."""
        n = spec.neck
        if n.type != "bfbox_fpn" or not isinstance(n.options, BFBoxFPNOptions):
            raise UserError(f"spec {spec.name!r} is not a bfbox path (neck type {n.type!r})")
        path = BFBoxPath(tuple(st.layer_blocks for st in spec.backbone.stages),
                         tuple(n.options.inputs), tuple(n.options.rf))
        self.encode(path)
        if self.template(path) != spec:
            raise UserError(f"spec {spec.name!r} differs from this bfbox space's frame "
                            "(widths, stem, neck, head, anchors or FPN-attention)")
        return path

    # ---- cost ----------------------------------------------------------------------------
    @functools.cached_property
    def _macs_tables(self) -> tuple[int, list[np.ndarray]]:
        return _macs_tables(self)

    def vga_gflops(self, genes: np.ndarray) -> np.ndarray:
        """VGA GFLOPs (640x640 MACs x 0.75 / 1e9 at input_size 640) of gene rows (B, G)."""
        fixed, tables = self._macs_tables
        genes = np.atleast_2d(np.asarray(genes, dtype=np.int64))
        macs = np.full(genes.shape[0], fixed, dtype=np.int64)
        for g, table in enumerate(tables):
            macs += table[genes[:, g]]
        return macs * _VGA / 1e9

    @functools.cached_property
    def _band_tables(self) -> tuple[int, list[np.ndarray], float]:
        """(fixed, per-gene tables, scale to GFLOPs) of what the band counts (`flops`)."""
        if self.flops == "detector_vga":
            return (*self._macs_tables, _VGA / 1e9)
        return (*_backbone_tables(self, (_IMAGENET, _IMAGENET)), 1 / 1e9)

    def band_gflops(self, genes: np.ndarray) -> np.ndarray:
        """GFLOPs of gene rows (B, G) as the band counts them (the frame's `flops`)."""
        fixed, tables, scale = self._band_tables
        genes = np.atleast_2d(np.asarray(genes, dtype=np.int64))
        count = np.full(genes.shape[0], fixed, dtype=np.int64)
        for g, table in enumerate(tables):
            count += table[genes[:, g]]
        return count * scale

    def gflops_range(self) -> tuple[float, float]:
        """(min, max) GFLOPs, as the band counts them, over all paths (each gene's cheapest /
        dearest choice)."""
        fixed, tables, scale = self._band_tables
        lo = fixed + sum(int(t.min()) for t in tables)
        hi = fixed + sum(int(t.max()) for t in tables)
        return lo * scale, hi * scale

    def check_feasible(self, gflops: float, tolerance: float = DEFAULT_TOLERANCE) -> None:
        """UserError (one line, with the space's min and max) when no path meets the band."""
        lo, hi = self.gflops_range()
        if not (gflops > 0 and gflops * (1 + tolerance) >= lo and gflops * (1 - tolerance) <= hi):
            raise UserError(f"no bfbox path meets --gflops {gflops:g} (+-{tolerance:.0%}): this "
                            f"space spans {lo:.3f} to {hi:.3f} {FLOPS_CONVENTIONS[self.flops]}")

    def check_latency(self) -> None:
        """UserError (one line, with the space's fastest and slowest path on the table) when
        no path meets the latency band."""
        lo, hi = self.latency_range()
        table, low_ms, high_ms = self.latency
        if math.isnan(lo) or math.isnan(hi):
            raise UserError(f"the latency table ({table.describe}) lacks layers of this bfbox "
                            "space; extend it with `facenas latency profile --space bfbox`")
        if high_ms < lo or low_ms > hi:
            raise UserError(f"no bfbox path runs in {low_ms:.3g}-{high_ms:.3g} ms on the latency "
                            f"table ({table.describe}): this space spans {lo:.3g} to {hi:.4g} ms")

    # ---- sampling ------------------------------------------------------------------------
    def random_genes(self, rng: np.random.Generator, num: int) -> np.ndarray:
        """(num, G) genes drawn uniformly and independently (Eq. 1's uniform path prior)."""
        sizes = np.asarray(self.gene_sizes())
        return (rng.random((num, len(sizes))) * sizes).astype(np.int64)

    def sample_uniform(self, rng: np.random.Generator) -> BFBoxPath:
        """One path from the uniform prior Gamma(A) (supernet training, Eq. 1)."""
        return self.decode(self.random_genes(rng, 1)[0])

    @functools.cached_property
    def _latency_tables(self) -> tuple[float, list[np.ndarray]]:
        return latency_tables(self, self.latency[0])

    def latency_ms(self, genes: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of gene rows on the space's latency table."""
        fixed, tables = self._latency_tables
        genes = np.atleast_2d(np.asarray(genes, dtype=np.int64))
        return fixed + sum(t[genes[:, g]] for g, t in enumerate(tables))

    def latency_range(self) -> tuple[float, float]:
        fixed, tables = self._latency_tables
        return (fixed + sum(float(t.min()) for t in tables),
                fixed + sum(float(t.max()) for t in tables))

    def in_band(self, genes: np.ndarray, gflops: float | None,
                tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
        """Rows inside the FLOPs band (when gflops is given) and the latency band (when set)."""
        ok = np.ones(len(genes), dtype=bool)
        if gflops is not None:
            g = self.band_gflops(genes)
            ok &= (g >= gflops * (1 - tolerance)) & (g <= gflops * (1 + tolerance))
        if self.latency is not None:
            ms = self.latency_ms(genes)  # NaN (the table lacks a layer) fails both
            ok &= (ms >= self.latency[1]) & (ms <= self.latency[2])
        return ok

    def sample(self, num: int, rng: np.random.Generator, gflops: float | None = None,
               tolerance: float = DEFAULT_TOLERANCE, exclude: set | None = None,
               max_batches: int = 200) -> np.ndarray:
        """(num, G) distinct gene rows, uniform over the paths within the FLOPs band (rejection
        sampling in batches), none in `exclude` (a set of gene tuples)."""
        if gflops is not None:
            self.check_feasible(gflops, tolerance)
        if self.latency is not None:
            self.check_latency()
        seen = set(exclude or ())
        rows: list[np.ndarray] = []
        for _ in range(max_batches):
            batch = self.random_genes(rng, max(256, 4 * num))
            for row in batch[self.in_band(batch, gflops, tolerance)]:
                key = tuple(int(x) for x in row)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    if len(rows) == num:
                        return np.stack(rows)
        band = "the whole space" if gflops is None else f"{gflops} GFLOPs +-{tolerance:.0%}"
        raise UserError(f"found only {len(rows)} of {num} distinct bfbox paths within {band}; "
                        "widen the band or ask for fewer")


def _macs_tables(space: BFBoxSpace) -> tuple[int, list[np.ndarray]]:
    """(fixed MACs, per gene an array of MACs per choice) at input_size x input_size, mirroring
    detectors.cost over the catalogue's cost functions."""
    from detectors.macs import Counter

    fixed, tables = _choice_tables(space, (space.input_size, space.input_size),
                                   lambda _: Counter(), lambda c: c.m, np.int64)
    return int(fixed), tables


def _backbone_tables(space: BFBoxSpace, hw: tuple[int, int]) -> tuple[int, list[np.ndarray]]:
    """(stem MACs, per gene MACs per choice) of the backbone alone at `hw`: the FPN genes
    (inputs, RF modules) count nothing."""
    from detectors.macs import Counter

    fixed, tables = _choice_tables(space, hw, lambda _: Counter(), lambda c: c.m, np.int64,
                                   backbone_only=True)
    return int(fixed), tables


def latency_tables(space: BFBoxSpace, table: Any) -> tuple[float, list[np.ndarray]]:
    """(fixed ms, per gene an array of ms per choice) on a latency table, at its input size:
    the same decomposition as the MACs (tests: equal to detectors.latency of the path's spec);
    NaN where the table lacks a choice's layers."""
    from detectors.latency import price
    from detectors.latency.trace import layer_counter

    spec = space.template(space.default_path())
    fixed, tables = _choice_tables(space, table.input_hw, lambda comp: layer_counter(spec, comp),
                                   lambda c: price(c, table), np.float64)
    return fixed + table.fit.overhead_ms, tables


def _choice_tables(space: BFBoxSpace, hw: tuple[int, int], make, value, dtype,
                   backbone_only: bool = False):
    """(value of the fixed parts, per gene an array of values per choice): every choice's cost
    functions run into a fresh counter `make(component)`, read by `value(counter)`; with
    `backbone_only` the neck and head count nothing."""
    from detectors.bfbox.fpn import rf_cost
    from detectors.catalog import block_entry, head_entry, stem_entry

    stem = make("stem")
    h, w = stem_entry("deep").cost(stem, space.stem_width, int(hw[0]), int(hw[1]))
    fixed = [stem]
    tables, choices, cin, sizes, i = [], space.layer_choices(), space.stem_width, [], 0
    for s, (depth, width) in enumerate(zip(space.depths, space.widths)):
        for l in range(depth):
            stride = (1 if s == 0 else 2) if l == 0 else 1
            row, out = [], (h, w)
            for name in choices[i]:
                c = make("backbone")
                out = block_entry(name).cost(c, cin, width, stride, h, w)
                row.append(value(c))
            tables.append(np.asarray(row, dtype=dtype))
            (h, w), cin, i = out, width, i + 1
        sizes.append((h, w))
    if backbone_only:
        tables += [np.zeros(len(space.merge_inputs(k)), dtype=dtype) for k in range(space.merges)]
        tables += [np.zeros(len(RF_MODULES), dtype=dtype) for _ in range(space.merges)]
        return value(stem), tables
    n = space.neck_channels
    laterals = make("neck")
    for cin, (h, w) in zip(space.widths, sizes):
        laterals.conv(cin, n, 1, 1, h, w, norm=False, act=False)
    fixed.append(laterals)
    tables += [np.zeros(len(space.merge_inputs(k)), dtype=dtype) for k in range(space.merges)]
    for k in range(space.merges):
        row = []
        for name in RF_MODULES:
            c = make("neck")
            rf_cost(c, name, n, *sizes[k])
            row.append(value(c))
        tables.append(np.asarray(row, dtype=dtype))
    spec = space.template(space.default_path())
    head = make("head")
    head_entry(spec.head.type).cost(head, spec.head, n, sizes, spec.anchors.num_anchors)
    fixed.append(head)
    return sum(value(c) for c in fixed), tables
