"""BFBox's backbone choice blocks (Fig. 2 of the paper), each beside its analytic cost.

Every block maps `cin` channels to `width` (expansion 1) and strides by `stride` (1 or 2).
Our reading of Fig. 2 (the figure itself is not in the text; see docs/bfbox.md):

    (a) conv{k}      1x1 cin->m, k x k conv m->m (strides), 1x1 m->width, + shortcut;
                     m = width // 4 (a bottleneck whose second conv, "KernelSize_2", is searched),
                     k in {3, 5, 7, 9} (shallow stages) / {3, 5, 7} (deep stages)
    (b) dw{k}        the same with a k x k *depthwise* second conv (Table 3's "Dwconv" rows),
                     m = width // 2
    (c) dw{k2}_{k3}  1x1 cin->m, k2 x k2 depthwise (strides), k3 x k3 depthwise, 1x1 m->width,
                     + shortcut (4 convs; Table 3's two-kernel rows are depthwise), m = width // 2
    (d) dense{n}x{g} [2x2 avg-pool when striding], n dense layers (3x3 conv+BN+ReLU, growth g,
                     each reading the concatenation of everything before it), then a 1x1
                     transition conv (cin + n*g) -> width: n + 1 <= 4 convs

Residual blocks end with BN (no ReLU) before the add, then ReLU after it, and use the ResNet-D
shortcut of detectors.blocks.resnet (identity, or [2x2 avg-pool] + 1x1 conv + BN).
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.blocks.resnet import _shortcut, _shortcut_cost
from detectors.macs import Counter, ceil2

__all__ = ["ConvChoice", "DwChoice", "DenseChoice", "conv_choice_cost", "dw_choice_cost",
           "dense_choice_cost", "SHALLOW_KERNELS", "DEEP_KERNELS", "TWO_KERNELS", "DENSE"]

SHALLOW_KERNELS = (3, 5, 7, 9)
DEEP_KERNELS = (3, 5, 7)
TWO_KERNELS = ((3, 5), (5, 7))
DENSE = ((2, 32), (3, 16))  # (dense layers, growth rate)


class _Residual(nn.Module):
    """relu(body(x) + shortcut(x)); `body` ends in a norm without activation."""

    def __init__(self, body: nn.Sequential, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.shortcut = _shortcut(cin, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))

    def zero_init_residual(self) -> None:
        nn.init.zeros_(self.body[-1].norm.weight)


class ConvChoice(_Residual):
    """(a): 1x1 -> k x k (strides) -> 1x1, bottleneck width // 4, plus shortcut."""

    def __init__(self, cin: int, width: int, stride: int, k: int) -> None:
        m = width // 4
        super().__init__(nn.Sequential(
            ConvNormAct(cin, m, 1), ConvNormAct(m, m, k, stride),
            ConvNormAct(m, width, 1, act=False)), cin, width, stride)


def conv_choice_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int, times: int = 1,
                     k: int = 3) -> tuple[int, int]:
    m = width // 4
    c.conv(cin, m, 1, 1, h, w, times=times)
    ho, wo = c.conv(m, m, k, s, h, w, times=times)
    c.conv(m, width, 1, 1, ho, wo, act=False, times=times)
    _shortcut_cost(c, cin, width, s, h, w, times)
    c.e += times * width * ho * wo  # ReLU after the add
    return ho, wo


class DwChoice(_Residual):
    """(b) with kernels=(k,), (c) with kernels=(k2, k3): 1x1 -> depthwise convs (the first
    strides) -> 1x1, inner width width // 2, plus shortcut."""

    def __init__(self, cin: int, width: int, stride: int, kernels: tuple[int, ...]) -> None:
        m = width // 2
        layers = [ConvNormAct(cin, m, 1)]
        for i, k in enumerate(kernels):
            layers.append(ConvNormAct(m, m, k, stride if i == 0 else 1, groups=m))
        layers.append(ConvNormAct(m, width, 1, act=False))
        super().__init__(nn.Sequential(*layers), cin, width, stride)


def dw_choice_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int, times: int = 1,
                   kernels: tuple[int, ...] = (3,)) -> tuple[int, int]:
    m = width // 2
    c.conv(cin, m, 1, 1, h, w, times=times)
    ho, wo = h, w
    for i, k in enumerate(kernels):
        ho, wo = c.conv(m, m, k, s if i == 0 else 1, ho, wo, groups=m, times=times)
    c.conv(m, width, 1, 1, ho, wo, act=False, times=times)
    _shortcut_cost(c, cin, width, s, h, w, times)
    c.e += times * width * ho * wo  # ReLU after the add
    return ho, wo


class DenseChoice(nn.Module):
    """(d): [avg-pool /2], `layers` 3x3 dense layers of `growth` channels, 1x1 transition."""

    def __init__(self, cin: int, width: int, stride: int, layers: int, growth: int) -> None:
        super().__init__()
        self.pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                     if stride != 1 else nn.Identity())
        self.dense = nn.ModuleList(ConvNormAct(cin + i * growth, growth, 3) for i in range(layers))
        self.transition = ConvNormAct(cin + layers * growth, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.pool(x)]
        for layer in self.dense:
            feats.append(layer(torch.cat(feats, 1)))
        return self.transition(torch.cat(feats, 1))


def dense_choice_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int, times: int = 1,
                      layers: int = 2, growth: int = 32) -> tuple[int, int]:
    if s != 1:
        c.e += times * cin * h * w  # avg-pool: its input elements
        h, w = ceil2(h), ceil2(w)
    for i in range(layers):
        c.conv(cin + i * growth, growth, 3, 1, h, w, times=times)
    return c.conv(cin + layers * growth, width, 1, 1, h, w, times=times)


def _names() -> dict[str, tuple]:
    """Catalogue name -> (builder(cin, width, stride), cost): the blocks of all four kinds."""
    from functools import partial

    out: dict[str, tuple] = {}
    for k in SHALLOW_KERNELS:
        out[f"bf_conv{k}"] = (partial(ConvChoice, k=k), partial(conv_choice_cost, k=k))
    for k in SHALLOW_KERNELS:
        out[f"bf_dw{k}"] = (partial(DwChoice, kernels=(k,)), partial(dw_choice_cost, kernels=(k,)))
    for k2, k3 in TWO_KERNELS:
        out[f"bf_dw{k2}_{k3}"] = (partial(DwChoice, kernels=(k2, k3)),
                                  partial(dw_choice_cost, kernels=(k2, k3)))
    for n, g in DENSE:
        out[f"bf_dense{n}x{g}"] = (partial(DenseChoice, layers=n, growth=g),
                                   partial(dense_choice_cost, layers=n, growth=g))
    return out


# name -> (builder, cost), merged into detectors.catalog.BLOCKS
BLOCKS: dict[str, tuple] = _names()
