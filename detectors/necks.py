"""Feature pyramids built from a `NeckSpec`: FPN and PAFPN (mmdet's, as SCRFD uses them).

All convs have a bias and no norm or activation (mmdet FPN defaults). Module names follow
mmdet (`lateral_convs.i.conv`, `fpn_convs.i.conv`, `downsample_convs.i.conv`,
`pafpn_convs.i.conv`) so published weights map by name.

- fpn:   P_i = fpn_conv_i(L_i + upsample(L_{i+1}) ...), L_i = lateral 1x1 conv of C_i.
- pafpn: FPN outputs N_i, then bottom-up N_{i+1} += downsample_conv_i(N_i) (3x3/s2), outputs
         [N_0, pafpn_conv_0(N_1), pafpn_conv_1(N_2), ...] (no extra conv on the finest level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.macs import Counter

if TYPE_CHECKING:  # a catalogue leaf: importing the spec at run time would close a cycle
    from detectors.spec import NeckSpec

__all__ = ["NeckOutput", "FPN", "PAFPN", "fpn", "pafpn", "fpn_cost", "pafpn_cost"]


@dataclass
class NeckOutput:
    """What a neck with auxiliary feature sets returns (others return a plain list of maps).

    maps: the features the detector predicts from (one per level); aux: further feature sets
    of the same shape that the same head also predicts from during training only, each one
    an auxiliary loss (ASFD's first shot on the original features, FANet's lower hierarchy
    levels). detectors.model turns them into HeadOutputs.aux.
    """

    maps: list[torch.Tensor]
    aux: list[list[torch.Tensor]] = field(default_factory=list)


def _convs(cins: list[int], cout: int, k: int, stride: int = 1) -> nn.ModuleList:
    return nn.ModuleList(ConvNormAct(c, cout, k, stride, norm=None, act=False) for c in cins)


class FPN(nn.Module):
    """[C_l for l in in_levels] -> same-length list of (N, channels, H_l, W_l) maps."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral_convs = _convs(in_channels, channels, 1)
        self.fpn_convs = _convs([channels] * len(in_channels), channels, 3)

    def top_down(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            # upsample to the finer map's exact size (odd inputs: sizes are not exact doubles)
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.top_down(feats)


class PAFPN(FPN):
    """FPN plus a bottom-up path (3x3/s2 downsample convs and 3x3 output convs)."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__(in_channels, channels)
        n = len(in_channels) - 1
        self.downsample_convs = _convs([channels] * n, channels, 3, stride=2)
        self.pafpn_convs = _convs([channels] * n, channels, 3)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        inter = self.top_down(feats)
        for i, conv in enumerate(self.downsample_convs):
            inter[i + 1] = inter[i + 1] + conv(inter[i])
        return [inter[0]] + [conv(x) for conv, x in zip(self.pafpn_convs, inter[1:])]


def fpn(spec: NeckSpec, in_channels: list[int]) -> FPN:
    return FPN(in_channels, spec.channels)


def pafpn(spec: NeckSpec, in_channels: list[int]) -> PAFPN:
    return PAFPN(in_channels, spec.channels)


def fpn_cost(c: Counter, spec: NeckSpec, in_channels: list[int],
             sizes: list[tuple[int, int]]) -> None:
    """Cost of FPN over maps of `in_channels` at `sizes` (H_l, W_l)."""
    n = spec.channels
    for cin, (h, w) in zip(in_channels, sizes):
        c.conv(cin, n, 1, 1, h, w, norm=False, act=False)  # lateral
        c.conv(n, n, 3, 1, h, w, norm=False, act=False)  # fpn conv


def pafpn_cost(c: Counter, spec: NeckSpec, in_channels: list[int],
               sizes: list[tuple[int, int]]) -> None:
    fpn_cost(c, spec, in_channels, sizes)
    n = spec.channels
    for h, w in sizes[:-1]:
        c.conv(n, n, 3, 2, h, w, norm=False, act=False)  # bottom-up downsample
    for h, w in sizes[1:]:
        c.conv(n, n, 3, 1, h, w, norm=False, act=False)  # pafpn conv
