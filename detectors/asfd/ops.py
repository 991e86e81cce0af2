"""Candidate operations of differentiable searches (ASFD's S_FPN and S_CPM), by name.

Every operation maps (N, cin, H, W) -> (N, cout, H, W) (stride 1, 'same' padding) and, as ASFD
implements all of them, is depthwise-separable: k x k (or kh x kw) depthwise conv(s) + norm +
ReLU, then a 1x1 pointwise conv + norm + ReLU. The 1x1 conv is a plain 1x1 conv + norm + ReLU
(its depthwise part would be a per-channel scale). Each name pairs a builder with the analytic
cost that mirrors it call by call (tests: equal to a hook count).

    conv1x1                 1x1 conv
    sep3x3, sep5x5          3x3 / 5x5 depthwise-separable conv
    dil3x3_r2, dil3x3_r3    3x3 depthwise-separable conv, dilation 2 / 3
    dil5x5_r2               5x5 depthwise-separable conv, dilation 2
    conv1x3, conv3x1, conv1x5, conv5x1            rectangular depthwise kernel + pointwise
    conv1x3_3x1, conv1x5_5x1                      1xk depthwise, then kx1 depthwise, pointwise

S_FPN and S_CPM (ASFD §3.2) are tuples of these names; `op_entry(name)` raises UserError on
an unknown one. Other families may reuse any entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct, DepthwiseSeparable, depthwise_separable_cost
from detectors.errors import UserError
from detectors.macs import Counter

__all__ = ["OpEntry", "OPS", "S_FPN", "S_CPM", "op_entry", "RectSeparable"]


@dataclass(frozen=True)
class OpEntry:
    """build(cin, cout) -> nn.Module; cost(counter, cin, cout, h, w, params=True, times=1)."""

    build: Callable[[int, int], nn.Module]
    cost: Callable[..., tuple[int, int]]


class RectSeparable(nn.Module):
    """Depthwise convs with (kh, kw) kernels in sequence (each + norm + ReLU), then a 1x1
    pointwise conv + norm + ReLU. Module names: `depthwise_convs.i`, `pointwise_conv`."""

    def __init__(self, cin: int, cout: int, kernels: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.depthwise_convs = nn.Sequential(
            *(ConvNormAct(cin, cin, k, groups=cin) for k in kernels))
        self.pointwise_conv = ConvNormAct(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_convs(x))


def _conv1x1() -> OpEntry:
    def cost(c: Counter, cin: int, cout: int, h: int, w: int, params: bool = True,
             times: int = 1) -> tuple[int, int]:
        return c.conv(cin, cout, 1, 1, h, w, params=params, times=times)

    return OpEntry(lambda cin, cout: ConvNormAct(cin, cout, 1), cost)


def _separable(k: int, dilation: int = 1) -> OpEntry:
    def build(cin: int, cout: int) -> nn.Module:
        return DepthwiseSeparable(cin, cout, k=k, dilation=dilation)

    def cost(c: Counter, cin: int, cout: int, h: int, w: int, params: bool = True,
             times: int = 1) -> tuple[int, int]:
        return depthwise_separable_cost(c, cin, cout, h, w, k=k, dilation=dilation,
                                        params=params, times=times)

    return OpEntry(build, cost)


def _rect(*kernels: tuple[int, int]) -> OpEntry:
    def build(cin: int, cout: int) -> nn.Module:
        return RectSeparable(cin, cout, kernels)

    def cost(c: Counter, cin: int, cout: int, h: int, w: int, params: bool = True,
             times: int = 1) -> tuple[int, int]:
        for k in kernels:
            h, w = c.conv(cin, cin, k, 1, h, w, groups=cin, params=params, times=times)
        return c.conv(cin, cout, 1, 1, h, w, params=params, times=times)

    return OpEntry(build, cost)


OPS: dict[str, OpEntry] = {
    "conv1x1": _conv1x1(),
    "sep3x3": _separable(3),
    "sep5x5": _separable(5),
    "dil3x3_r2": _separable(3, 2),
    "dil3x3_r3": _separable(3, 3),
    "dil5x5_r2": _separable(5, 2),
    "conv1x3": _rect((1, 3)),
    "conv3x1": _rect((3, 1)),
    "conv1x3_3x1": _rect((1, 3), (3, 1)),
    "conv1x5": _rect((1, 5)),
    "conv5x1": _rect((5, 1)),
    "conv1x5_5x1": _rect((1, 5), (5, 1)),
}

# ASFD §3.2: the FPN paths' and the CPM cells' candidate sets, in the paper's order.
S_FPN = ("conv1x1", "sep3x3", "sep5x5", "dil3x3_r2", "dil3x3_r3", "dil5x5_r2")
S_CPM = ("conv1x1", "sep3x3", "sep5x5", "conv1x3", "conv3x1", "conv1x3_3x1", "conv1x5",
         "conv5x1", "conv1x5_5x1", "dil3x3_r2", "dil3x3_r3", "dil5x5_r2")


def op_entry(name: str, valid: tuple[str, ...] = tuple(OPS), what: str = "op") -> OpEntry:
    """OPS[name] if name is one of `valid`, else UserError '<what> 'x' is not one of ...'."""
    if not isinstance(name, str) or name not in valid:
        raise UserError(f"{what} {name!r} is not one of {', '.join(valid)}")
    return OPS[name]
