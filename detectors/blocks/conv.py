"""Conv units every family uses: conv + norm + ReLU, and depthwise-separable convs."""

from __future__ import annotations

import torch
from torch import nn

from detectors.macs import Counter

__all__ = ["ConvNormAct", "DepthwiseSeparable", "depthwise_separable_cost"]


class ConvNormAct(nn.Module):
    """conv -> optional norm -> optional ReLU. The conv has a bias only when there is no norm.

    norm: None, "bn" or "gn" (with `gn_groups`). `k` may be an int or (kh, kw); padding keeps
    the size ('same': dilation * (k // 2) per axis). Attribute names `conv`, `norm` follow
    mmcv's ConvModule so published weights map by name.
    """

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
                 groups: int = 1, norm: str | None = "bn", act: bool = True, gn_groups: int = 16,
                 dilation: int = 1) -> None:
        super().__init__()
        kh, kw = (k, k) if isinstance(k, int) else k
        padding = (dilation * (kh // 2), dilation * (kw // 2))
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride, padding, dilation=dilation,
                              groups=groups, bias=norm is None)
        if norm == "bn":
            self.norm: nn.Module = nn.BatchNorm2d(cout)
        elif norm == "gn":
            self.norm = nn.GroupNorm(gn_groups, cout)
        else:
            self.norm = nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """k x k depthwise conv+norm+ReLU then 1x1 pointwise conv+norm+ReLU (mmcv's names).

    `dilation` dilates the depthwise conv (ASFD's / DARTS' dilated separable ops)."""

    def __init__(self, cin: int, cout: int, norm: str | None = "bn", gn_groups: int = 16,
                 k: int = 3, stride: int = 1, dilation: int = 1, act: bool = True) -> None:
        super().__init__()
        self.depthwise_conv = ConvNormAct(cin, cin, k, stride, groups=cin, norm=norm,
                                          gn_groups=gn_groups, dilation=dilation)
        self.pointwise_conv = ConvNormAct(cin, cout, 1, norm=norm, gn_groups=gn_groups, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def depthwise_separable_cost(counter: Counter, cin: int, cout: int, h: int, w: int, k: int = 3,
                             stride: int = 1, dilation: int = 1, norm: bool = True,
                             act: bool = True, params: bool = True, times: int = 1) -> tuple[int, int]:
    """Cost of DepthwiseSeparable; returns the output (h, w)."""
    h, w = counter.conv(cin, cin, k, stride, h, w, groups=cin, norm=norm, params=params,
                        dilation=dilation, times=times)
    return counter.conv(cin, cout, 1, 1, h, w, norm=norm, act=act, params=params, times=times)
