"""Analytic parameters and multiply-accumulates of a DetectorSpec, without building a model.

Pure integer arithmetic mirroring the constructors in backbones.py, necks.py and heads.py:
for every valid spec, `cost(spec, hw)` equals a forward-hook count of Conv2d/Linear MACs and
`sum(p.numel())` of `build(spec)` run at that input size (tests/test_cost.py checks this over
hundreds of random specs). Components: stem, c2..c5 (backbone stages 1-4), neck, head.

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

from detectors.spec import DetectorSpec

__all__ = ["ComponentCost", "CostReport", "COMPONENTS", "cost", "vga_gflops", "level_sizes",
           "VGA_FACTOR"]

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
    components: dict[str, ComponentCost]  # ordered as COMPONENTS

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


class _Acc:
    """Running totals of one component: [params, macs, extra]."""

    __slots__ = ("p", "m", "e")

    def __init__(self) -> None:
        self.p = self.m = self.e = 0

    def conv(self, cin: int, cout: int, k: int, s: int, h: int, w: int, groups: int = 1,
             norm: bool = True, act: bool = True, times: int = 1, params: bool = True):
        """A k x k conv (padding k//2) [+ norm] [+ ReLU], `times` copies; -> output (h, w)."""
        ho, wo = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
        n_out = cout * ho * wo
        self.m += times * n_out * (cin // groups) * k * k
        if params:
            self.p += times * (cout * (cin // groups) * k * k + (2 * cout if norm else cout))
        self.e += times * n_out * ((0 if norm else 1) + (2 if norm else 0) + (1 if act else 0))
        return ho, wo


def _ceil2(x: int) -> int:
    return (x + 1) // 2


def _stem(acc: _Acc, width: int, kind: str, h: int, w: int) -> tuple[int, int]:
    if kind == "deep":
        h, w = acc.conv(3, width // 2, 3, 2, h, w)
        h, w = acc.conv(width // 2, width // 2, 3, 1, h, w)
        h, w = acc.conv(width // 2, width, 3, 1, h, w)
        acc.e += width * h * w  # max-pool: mmcv counts its input elements
        return h // 2, w // 2
    h, w = acc.conv(3, width, 3, 2, h, w)
    acc.conv(width, width, 3, 1, h, w, groups=width)
    return acc.conv(width, width, 1, 1, h, w)


def _block(acc: _Acc, block: str, cin: int, width: int, s: int, h: int, w: int, times: int = 1):
    """One block (or `times` identical ones) -> output (h, w)."""
    if block == "depthwise":
        ho, wo = acc.conv(cin, cin, 3, s, h, w, groups=cin, times=times)
        return acc.conv(cin, width, 1, 1, ho, wo, times=times)
    if block == "basic":
        cout = width
        ho, wo = acc.conv(cin, width, 3, s, h, w, times=times)
        acc.conv(width, width, 3, 1, ho, wo, act=False, times=times)
    else:  # bottleneck
        cout = 4 * width
        acc.conv(cin, width, 1, 1, h, w, times=times)
        ho, wo = acc.conv(width, width, 3, s, h, w, times=times)
        acc.conv(width, cout, 1, 1, ho, wo, act=False, times=times)
    if s != 1 or cin != cout:
        if s != 1:
            acc.e += times * cin * h * w  # avg-pool input elements
        acc.conv(cin, cout, 1, 1, _ceil2(h) if s != 1 else h, _ceil2(w) if s != 1 else w,
                 act=False, times=times)
    acc.e += times * cout * ho * wo  # the ReLU after the residual add
    return ho, wo


def _backbone(spec: DetectorSpec, h: int, w: int, accs: list[_Acc]) -> list[tuple[int, int]]:
    bb = spec.backbone
    h, w = _stem(accs[0], bb.stem_width, bb.stem, h, w)
    first_stride = 1 if bb.stem == "deep" else 2
    cin, sizes = bb.stem_width, []
    for i, st in enumerate(bb.stages):
        acc = accs[i + 1]
        h, w = _block(acc, st.block, cin, st.width, first_stride if i == 0 else 2, h, w)
        if st.depth > 1:
            _block(acc, st.block, st.out_channels, st.width, 1, h, w, times=st.depth - 1)
        cin = st.out_channels
        sizes.append((h, w))
    return sizes


def _neck(spec: DetectorSpec, cins: list[int], sizes: list[tuple[int, int]], acc: _Acc) -> None:
    c = spec.neck.channels
    for cin, (h, w) in zip(cins, sizes):
        acc.conv(cin, c, 1, 1, h, w, norm=False, act=False)  # lateral
        acc.conv(c, c, 3, 1, h, w, norm=False, act=False)  # fpn conv
    if spec.neck.type == "pafpn":
        for h, w in sizes[:-1]:
            acc.conv(c, c, 3, 2, h, w, norm=False, act=False)  # bottom-up downsample
        for h, w in sizes[1:]:
            acc.conv(c, c, 3, 1, h, w, norm=False, act=False)  # pafpn conv


def _tower(hs, cin: int, h: int, w: int, acc: _Acc, params: bool) -> None:
    for i in range(hs.num_convs):
        c = cin if i == 0 else hs.channels
        if hs.depthwise:
            acc.conv(c, c, 3, 1, h, w, groups=c, params=params)
            acc.conv(c, hs.channels, 1, 1, h, w, params=params)
        else:
            acc.conv(c, hs.channels, 3, 1, h, w, params=params)


def _head(spec: DetectorSpec, sizes: list[tuple[int, int]], acc: _Acc) -> None:
    hs, a = spec.head, spec.anchors.num_anchors
    cin = spec.neck.channels
    feat = hs.channels if hs.num_convs else cin
    outs = a * (1 + 4 + (10 if hs.keypoints else 0))
    towers = 1 if hs.shared_towers else 2
    for lvl, (h, w) in enumerate(sizes):
        own = lvl == 0 or not hs.shared_across_strides  # shared modules: params counted once
        for _ in range(towers):
            _tower(hs, cin, h, w, acc, own)
        acc.conv(feat, outs, 3, 1, h, w, norm=False, act=False, params=own)
    if hs.scale:
        acc.p += len(sizes)


def level_sizes(spec: DetectorSpec, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(H_l, W_l) of each neck/head level for an (H, W) input, as the built model computes."""
    sizes = _backbone(spec, int(input_hw[0]), int(input_hw[1]), [_Acc() for _ in range(5)])
    return [sizes[lv - 2] for lv in spec.neck.in_levels]


def cost(spec: DetectorSpec, input_hw: tuple[int, int] | None = None) -> CostReport:
    """Analytic cost of `spec` at input_hw (H, W); default spec.input_size (640x640)."""
    hw = tuple(spec.input_size if input_hw is None else input_hw)
    accs = [_Acc() for _ in COMPONENTS]
    sizes = _backbone(spec, hw[0], hw[1], accs)
    levels = spec.neck.in_levels
    cins = [spec.backbone.stages[lv - 2].out_channels for lv in levels]
    lsizes = [sizes[lv - 2] for lv in levels]
    _neck(spec, cins, lsizes, accs[5])
    _head(spec, lsizes, accs[6])
    comps = {name: ComponentCost(a.p, a.m, a.e) for name, a in zip(COMPONENTS, accs)}
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
