"""ResNet blocks (V1d/e shortcuts, as SCRFD's mmdet ResNet) and the deep stem, with costs.

Residual shortcuts that change shape use a 2x2 average pool (when striding) then a 1x1 conv +
BN ("avg_down"). `zero_init_residual()` zeroes the last norm of the residual branch, so the
block starts as identity (mmdet's zero_init_residual=True, which SCRFD keeps).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.macs import Counter, ceil2

__all__ = ["BasicBlock", "Bottleneck", "basic_cost", "bottleneck_cost", "deep_stem",
           "deep_stem_cost", "ShortcutCost"]

# shortcut_cost(counter, cin, cout, stride, h, w, times): counts a block's shortcut
ShortcutCost = Callable[[Counter, int, int, int, int, int, int], None]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """ResNet-V1d/e shortcut: identity, or [2x2 avg-pool when striding] + 1x1 conv + BN."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    layers: list[nn.Module] = []
    if stride != 1:
        layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
    layers.append(ConvNormAct(cin, cout, 1, act=False))
    return nn.Sequential(*layers)


def _shortcut_cost(c: Counter, cin: int, cout: int, s: int, h: int, w: int, times: int) -> None:
    if s == 1 and cin == cout:
        return
    if s != 1:
        c.e += times * cin * h * w  # avg-pool: mmcv counts its input elements
    c.conv(cin, cout, 1, 1, ceil2(h) if s != 1 else h, ceil2(w) if s != 1 else w, act=False,
           times=times)


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first strides) plus shortcut; output channels = width."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, width, 3, stride)
        self.conv2 = ConvNormAct(width, width, 3, act=False)
        self.shortcut = _shortcut(cin, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))

    def zero_init_residual(self) -> None:
        nn.init.zeros_(self.conv2.norm.weight)


def basic_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
               times: int = 1, shortcut_cost: ShortcutCost | None = None) -> tuple[int, int]:
    """Two 3x3 convs + shortcut + the ReLU after the add; `shortcut_cost` counts the shortcut
    (default: this module's avg-pool + 1x1; torchvision's blocks pass their strided 1x1)."""
    ho, wo = c.conv(cin, width, 3, s, h, w, times=times)
    c.conv(width, width, 3, 1, ho, wo, act=False, times=times)
    (shortcut_cost or _shortcut_cost)(c, cin, width, s, h, w, times)
    c.e += times * width * ho * wo  # the ReLU after the residual add
    return ho, wo


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strides, pytorch style) -> 1x1 to width*4, plus shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = ConvNormAct(cin, width, 1)
        self.conv2 = ConvNormAct(width, width, 3, stride)
        self.conv3 = ConvNormAct(width, cout, 1, act=False)
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))

    def zero_init_residual(self) -> None:
        nn.init.zeros_(self.conv3.norm.weight)


def bottleneck_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                    times: int = 1, shortcut_cost: ShortcutCost | None = None) -> tuple[int, int]:
    """1x1, strided 3x3, 1x1 to 4 x width + shortcut + the ReLU after the add (as basic_cost)."""
    cout = 4 * width
    c.conv(cin, width, 1, 1, h, w, times=times)
    ho, wo = c.conv(width, width, 3, s, h, w, times=times)
    c.conv(width, cout, 1, 1, ho, wo, act=False, times=times)
    (shortcut_cost or _shortcut_cost)(c, cin, cout, s, h, w, times)
    c.e += times * cout * ho * wo  # the ReLU after the residual add
    return ho, wo


def deep_stem(width: int) -> nn.Sequential:
    """ResNet-V1e stem: three 3x3 convs (the first /2), then a 2x2/s2 max-pool (SCRFD's
    `no_pool33`); stride 4, `width` channels."""
    return nn.Sequential(
        ConvNormAct(3, width // 2, 3, 2),
        ConvNormAct(width // 2, width // 2, 3),
        ConvNormAct(width // 2, width, 3),
        nn.MaxPool2d(2, 2),
    )


def deep_stem_cost(c: Counter, width: int, h: int, w: int) -> tuple[int, int]:
    h, w = c.conv(3, width // 2, 3, 2, h, w)
    h, w = c.conv(width // 2, width // 2, 3, 1, h, w)
    h, w = c.conv(width // 2, width, 3, 1, h, w)
    c.e += width * h * w  # max-pool: mmcv counts its input elements
    return h // 2, w // 2
