"""The SCRFD detection head built from a `HeadSpec`.

Per level: a tower of `num_convs` 3x3 conv+norm+ReLU (depthwise-separable if asked), then
3x3 prediction convs (with bias) for classification (A channels), box distances (4A) and
optionally keypoints (10A); box distances are multiplied by a learnable per-stride scalar.

Module layout (ModuleLists indexed by level, or of length 1 when shared across strides):
`cls_towers[i]` (ModuleList of conv units), `reg_towers[i]` (only when towers are not shared),
`cls_preds[i]`, `reg_preds[i]`, `kps_preds[i]` (nn.Conv2d), `scales[i]` (`Scale`, one per
stride even when convs are shared, as SCRFD).
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.backbones import ConvNormAct
from detectors.spec import HeadSpec

__all__ = ["Scale", "DepthwiseSeparable", "SCRFDHead", "NUM_KEYPOINTS"]

NUM_KEYPOINTS = 5


class Scale(nn.Module):
    """Multiplies its input by one learnable scalar (a 0-dim parameter named `scale`)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv+norm+ReLU then 1x1 pointwise conv+norm+ReLU (mmcv's names)."""

    def __init__(self, cin: int, cout: int, norm: str, gn_groups: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvNormAct(cin, cin, 3, groups=cin, norm=norm, gn_groups=gn_groups)
        self.pointwise_conv = ConvNormAct(cin, cout, 1, norm=norm, gn_groups=gn_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def _tower(spec: HeadSpec, cin: int) -> nn.ModuleList:
    units = []
    for i in range(spec.num_convs):
        c = cin if i == 0 else spec.channels
        if spec.depthwise:
            units.append(DepthwiseSeparable(c, spec.channels, spec.norm, spec.gn_groups))
        else:
            units.append(ConvNormAct(c, spec.channels, 3, norm=spec.norm, gn_groups=spec.gn_groups))
    return nn.ModuleList(units)


class SCRFDHead(nn.Module):
    """Per-level features (N, in_channels, H_l, W_l) -> raw maps per level.

    forward returns three lists over levels: cls (N, A, H, W), box (N, 4A, H, W) with the
    scale applied, kps (N, 10A, H, W) or None. Channel c of a map belongs to anchor c // k
    (k = 1, 4, 10): anchor-major, as the published export.
    """

    def __init__(self, spec: HeadSpec, in_channels: int, num_levels: int, num_anchors: int) -> None:
        super().__init__()
        self.spec = spec
        n = 1 if spec.shared_across_strides else num_levels
        feat = spec.channels if spec.num_convs else in_channels
        self.num_levels = num_levels
        self.cls_towers = nn.ModuleList(_tower(spec, in_channels) for _ in range(n))
        self.reg_towers = nn.ModuleList(
            () if spec.shared_towers else (_tower(spec, in_channels) for _ in range(n)))
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
