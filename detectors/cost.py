"""Analytic parameters and multiply-accumulates of a DetectorSpec, without building a model.

Pure integer arithmetic: every catalogue entry (detectors/catalog.py) pairs its builder with a
cost function that mirrors it call by call, and this module sums them per component:
for every valid spec, `cost(spec, hw)` equals a forward-hook count of Conv2d/Linear MACs and
`sum(p.numel())` of `build(spec)` run at that input size (tests/test_cost.py checks this over
hundreds of random specs). Components: stem, c2, c3, ... (one per backbone stage), neck, head.

"GFLOPs" in this project are G multiply-accumulates of convolutions (and linears); "VGA"
figures are counts at 640x640 x 0.75, the convention of the SCRFD tables. The published SCRFD
figures were counted with mmcv's flops counter, which also adds conv biases, 2 ops per
normalised element, 1 per ReLU element and the pools' input elements; `CostReport.mmcv_flops`
reproduces that count (the gap is ~0.5-1% for ResNet models, ~6% for the depthwise 0.5GF).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Callable

from detectors.macs import Counter
from detectors.spec import DetectorSpec

__all__ = ["ComponentCost", "CostReport", "COMPONENTS", "components_of", "cost", "vga_gflops",
           "level_sizes", "backbone_sizes", "VGA_FACTOR", "count"]

# The components of a four-stage (SCRFD) spec; components_of(spec) gives any spec's.
COMPONENTS = ("stem", "c2", "c3", "c4", "c5", "neck", "head")
VGA_FACTOR = 0.75  # 640x480 / 640x640: SCRFD quotes VGA FLOPs as the 640x640 count x 0.75


@dataclass(frozen=True)
class ComponentCost:
    """params: learnable scalars; macs: conv MACs; extra_flops: mmcv's non-conv additions."""

    params: int
    macs: int
    extra_flops: int = 0

    @property
    def gflops(self) -> float:
        return self.macs / 1e9


@dataclass(frozen=True)
class CostReport:
    """Totals and per-component costs at `input_hw` (H, W)."""

    input_hw: tuple[int, int]
    components: dict[str, ComponentCost]  # ordered as components_of(spec)

    @property
    def params(self) -> int:
        return sum(c.params for c in self.components.values())

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.components.values())

    @property
    def gflops(self) -> float:
        """G multiply-accumulates at input_hw (not scaled to VGA)."""
        return self.macs / 1e9

    @property
    def mmcv_flops(self) -> int:
        """The count mmcv's get_flops gives (MACs + bias + norm + ReLU + pool ops)."""
        return self.macs + sum(c.extra_flops for c in self.components.values())


def components_of(spec: DetectorSpec) -> tuple[str, ...]:
    """The spec's components: stem, one per backbone stage (c2, c3, ...), neck, head."""
    return ("stem",) + tuple(f"c{lv}" for lv in spec.backbone.levels) + ("neck", "head")


def backbone_sizes(spec: DetectorSpec, h: int, w: int, counters: list[Counter]) -> list[tuple[int, int]]:
    """Stem and stages into counters[0], counters[1..]; returns each stage's output size."""
    from detectors.backbones import stage_strides
    from detectors.catalog import block_entry, stem_entry

    bb = spec.backbone
    h, w = stem_entry(bb.stem).cost(counters[0], bb.stem_width, h, w)
    cin, sizes = bb.stem_width, []
    for i, (st, stride) in enumerate(zip(bb.stages, stage_strides(bb))):
        c = counters[i + 1]
        layers = st.layer_blocks
        j = 0
        while j < len(layers):  # runs of identical blocks are counted at once (`times`)
            entry = block_entry(layers[j])
            if j == 0:
                h, w = entry.cost(c, cin, st.width, stride, h, w)
                cin, j = st.width * entry.expansion, 1
                continue
            run = 1
            while j + run < len(layers) and layers[j + run] == layers[j]:
                run += 1
            entry.cost(c, cin, st.width, 1, h, w, times=run)
            cin, j = st.width * entry.expansion, j + run
        sizes.append((h, w))
    return sizes


def level_sizes(spec: DetectorSpec, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(H_l, W_l) of each neck/head level for an (H, W) input, as the built model computes.

    Every stride-2 step in the network rounds up (3x3/s2 convs with padding 1 and ceil-mode
    pools), except the deep stem's 2x2 max-pool, which rounds down; for inputs divisible by the
    largest stride all of this is simply H / s. Prefer the sizes the model reports
    (`HeadOutputs.feature_sizes`) when you have them.
    """
    n = len(spec.backbone.stages)
    sizes = backbone_sizes(spec, int(input_hw[0]), int(input_hw[1]), [Counter() for _ in range(n + 1)])
    return _neck(spec, sizes, Counter())


def _neck(spec: DetectorSpec, sizes: list[tuple[int, int]], counter: Counter) -> list[tuple[int, int]]:
    """Counts the neck into `counter`; returns the sizes of its output levels (a neck whose
    entry has `out_levels` makes its own pyramid and its cost returns them)."""
    from detectors.catalog import neck_entry

    levels = spec.neck.in_levels
    cins = [spec.backbone.stages[lv - 2].out_channels for lv in levels]
    lsizes = [sizes[lv - 2] for lv in levels]
    out = neck_entry(spec.neck.type).cost(counter, spec.neck, cins, lsizes)
    return lsizes if out is None else list(out)


def count(spec: DetectorSpec, hw: tuple[int, int], make: Callable[[str], Counter] = lambda _: Counter()
          ) -> dict[str, Counter]:
    """Every component's cost functions run into its own counter, `make(component)` (a Counter
    subclass can record more than totals: detectors/latency traces the convs)."""
    from detectors.catalog import head_entry

    names = components_of(spec)
    counters = [make(name) for name in names]
    sizes = backbone_sizes(spec, int(hw[0]), int(hw[1]), counters)
    lsizes = _neck(spec, sizes, counters[-2])
    head_entry(spec.head.type).cost(counters[-1], spec.head, spec.neck.channels, lsizes,
                                    spec.anchors.num_anchors)
    return dict(zip(names, counters))


def cost(spec: DetectorSpec, input_hw: tuple[int, int] | None = None) -> CostReport:
    """Analytic cost of `spec` at input_hw (H, W); default spec.input_size (640x640)."""
    hw = tuple(spec.input_size if input_hw is None else input_hw)
    comps = {name: ComponentCost(c.p, c.m, c.e) for name, c in count(spec, hw).items()}
    return CostReport(input_hw=(int(hw[0]), int(hw[1])), components=comps)


def vga_gflops(spec: DetectorSpec) -> float:
    """SCRFD's "VGA GFLOPs": G MACs at 640x640 x 0.75."""
    return cost(spec, (640, 640)).macs * VGA_FACTOR / 1e9


class _CallableModule(types.ModuleType):
    """`detectors.cost` names both this module and the function `cost` (the issue's API,
    `detectors.cost(spec)`); once the module is imported, Python binds the package attribute
    to the module, so the module itself forwards calls to `cost`."""

    def __call__(self, spec: DetectorSpec, input_hw: tuple[int, int] | None = None) -> CostReport:
        return cost(spec, input_hw)


sys.modules[__name__].__class__ = _CallableModule
