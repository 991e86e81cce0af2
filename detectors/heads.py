"""The SCRFD detection head built from a `HeadSpec`.

Per level: a tower of `num_convs` 3x3 conv+norm+ReLU (depthwise-separable if asked), then
3x3 prediction convs (with bias) for classification (A channels), box distances (4A) and
optionally keypoints (10A); box distances are multiplied by a learnable per-stride scalar.

Module layout (ModuleLists indexed by level, or of length 1 when shared across strides):
`cls_towers[i]` (ModuleList of conv units), `reg_towers[i]` (only when towers are not shared),
`cls_preds[i]`, `reg_preds[i]`, `kps_preds[i]` (nn.Conv2d), `scales[i]` (`Scale`, one per
stride even when convs are shared, as SCRFD).

Head type `retinanet` (catalogue): RetinaNet's head (Lin et al. 2017; BFBox's detector): the
same module with tower convs that have a bias and a ReLU but no norm; with `shared_towers:
false`, `num_convs: 4`, `channels: 256` it is RetinaNet's two 4 x 256 towers. The spec's norm
and gn_groups are then unused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct, DepthwiseSeparable
from detectors.macs import Counter

if TYPE_CHECKING:  # a catalogue leaf: importing the spec at run time would close a cycle
    from detectors.spec import HeadSpec

__all__ = ["Scale", "DepthwiseSeparable", "SCRFDHead", "scrfd_head", "scrfd_head_cost",
           "retinanet_head", "retinanet_head_cost", "NUM_KEYPOINTS"]

NUM_KEYPOINTS = 5


class Scale(nn.Module):
    """Multiplies its input by one learnable scalar (a 0-dim parameter named `scale`)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


def _tower(spec: HeadSpec, cin: int, normed: bool = True) -> nn.ModuleList:
    units = []
    norm = spec.norm if normed else None  # no norm: the conv has a bias (ConvNormAct)
    for i in range(spec.num_convs):
        c = cin if i == 0 else spec.channels
        if spec.depthwise:
            units.append(DepthwiseSeparable(c, spec.channels, norm, spec.gn_groups))
        else:
            units.append(ConvNormAct(c, spec.channels, 3, norm=norm, gn_groups=spec.gn_groups))
    return nn.ModuleList(units)


class SCRFDHead(nn.Module):
    """Per-level features (N, in_channels, H_l, W_l) -> raw maps per level.

    forward returns three lists over levels: cls (N, A, H, W), box (N, 4A, H, W) with the
    scale applied, kps (N, 10A, H, W) or None. Channel c of a map belongs to anchor c // k
    (k = 1, 4, 10): anchor-major, as the published export.
    """

    def __init__(self, spec: HeadSpec, in_channels: int, num_levels: int, num_anchors: int,
                 normed: bool = True) -> None:
        super().__init__()
        self.spec = spec
        n = 1 if spec.shared_across_strides else num_levels
        feat = spec.channels if spec.num_convs else in_channels
        self.num_levels = num_levels
        self.cls_towers = nn.ModuleList(_tower(spec, in_channels, normed) for _ in range(n))
        self.reg_towers = nn.ModuleList(
            () if spec.shared_towers else (_tower(spec, in_channels, normed) for _ in range(n)))
        self.cls_preds = nn.ModuleList(nn.Conv2d(feat, num_anchors, 3, padding=1) for _ in range(n))
        self.reg_preds = nn.ModuleList(nn.Conv2d(feat, 4 * num_anchors, 3, padding=1) for _ in range(n))
        self.kps_preds = nn.ModuleList(
            nn.Conv2d(feat, 2 * NUM_KEYPOINTS * num_anchors, 3, padding=1) for _ in range(n)
        ) if spec.keypoints else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if spec.scale else None

    def forward_level(self, x: torch.Tensor, level: int):
        """One level's (cls, box, kps-or-None) maps."""
        j = 0 if self.spec.shared_across_strides else level
        cls_feat = x
        for unit in self.cls_towers[j]:
            cls_feat = unit(cls_feat)
        reg_feat = cls_feat
        if not self.spec.shared_towers:
            reg_feat = x
            for unit in self.reg_towers[j]:
                reg_feat = unit(reg_feat)
        # cls, box, kps: the published export's order
        cls = self.cls_preds[j](cls_feat)
        box = self.reg_preds[j](reg_feat)
        if self.scales is not None:
            box = self.scales[level](box)
        kps = self.kps_preds[j](reg_feat) if self.kps_preds is not None else None
        return cls, box, kps

    def forward(self, feats: list[torch.Tensor]):
        outs = [self.forward_level(x, i) for i, x in enumerate(feats)]
        cls, box, kps = (list(t) for t in zip(*outs))
        return cls, box, (kps if self.kps_preds is not None else None)


def scrfd_head(spec: HeadSpec, in_channels: int, num_levels: int, num_anchors: int) -> SCRFDHead:
    return SCRFDHead(spec, in_channels, num_levels, num_anchors)


def _tower_cost(hs: HeadSpec, c: Counter, cin: int, h: int, w: int, params: bool,
                normed: bool = True) -> None:
    for i in range(hs.num_convs):
        ch = cin if i == 0 else hs.channels
        if hs.depthwise:
            c.conv(ch, ch, 3, 1, h, w, groups=ch, params=params, norm=normed)
            c.conv(ch, hs.channels, 1, 1, h, w, params=params, norm=normed)
        else:
            c.conv(ch, hs.channels, 3, 1, h, w, params=params, norm=normed)


def retinanet_head(spec: HeadSpec, in_channels: int, num_levels: int, num_anchors: int) -> SCRFDHead:
    """RetinaNet's head: towers of 3x3 conv (bias) + ReLU, no norm."""
    return SCRFDHead(spec, in_channels, num_levels, num_anchors, normed=False)


def retinanet_head_cost(c: Counter, hs: HeadSpec, in_channels: int,
                        sizes: list[tuple[int, int]], num_anchors: int) -> None:
    scrfd_head_cost(c, hs, in_channels, sizes, num_anchors, normed=False)


def scrfd_head_cost(c: Counter, hs: HeadSpec, in_channels: int, sizes: list[tuple[int, int]],
                    num_anchors: int, normed: bool = True) -> None:
    """Cost of SCRFDHead over levels of `sizes` (H_l, W_l); shared modules' params once."""
    feat = hs.channels if hs.num_convs else in_channels
    outs = num_anchors * (1 + 4 + (2 * NUM_KEYPOINTS if hs.keypoints else 0))
    towers = 1 if hs.shared_towers else 2
    for lvl, (h, w) in enumerate(sizes):
        own = lvl == 0 or not hs.shared_across_strides
        for _ in range(towers):
            _tower_cost(hs, c, in_channels, h, w, own, normed)
        c.conv(feat, outs, 3, 1, h, w, norm=False, act=False, params=own)
    if hs.scale:
        c.p += len(sizes)
