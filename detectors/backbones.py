"""Backbones built from a `BackboneSpec`: ResNet-V1e (basic / bottleneck) and MobileNetV1.

Module layout (names matter: the ONNX importer and the per-component cost map onto them):
`stem` (nn.Sequential of ConvNormAct units, then the max-pool for the deep stem) and
`stages` (ModuleList of 4 nn.Sequential of blocks). Every conv is followed by BatchNorm and has
no bias (SCRFD). `forward(x)` returns the four stage outputs C2..C5.
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.spec import BackboneSpec, StageSpec

__all__ = ["ConvNormAct", "BasicBlock", "Bottleneck", "DepthwiseBlock", "Backbone",
           "stage_strides", "BLOCK_TYPES"]


class ConvNormAct(nn.Module):
    """conv -> optional norm -> optional ReLU. The conv has a bias only when there is no norm.

    norm: None, "bn" or "gn" (with `gn_groups`). Attribute names `conv`, `norm` follow mmcv's
    ConvModule so published weights map by name.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 norm: str | None = "bn", act: bool = True, gn_groups: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=norm is None)
        if norm == "bn":
            self.norm: nn.Module = nn.BatchNorm2d(cout)
        elif norm == "gn":
            self.norm = nn.GroupNorm(gn_groups, cout)
        else:
            self.norm = nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """ResNet-V1d/e shortcut: identity, or [2x2 avg-pool when striding] + 1x1 conv + BN."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    layers: list[nn.Module] = []
    if stride != 1:
        layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
    layers.append(ConvNormAct(cin, cout, 1, act=False))
    return nn.Sequential(*layers)


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


class DepthwiseBlock(nn.Module):
    """MobileNetV1 unit: 3x3 depthwise conv+BN+ReLU (strides), 1x1 pointwise conv+BN+ReLU."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(cin, cin, 3, stride, groups=cin)
        self.pointwise = ConvNormAct(cin, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


BLOCK_TYPES: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "depthwise": DepthwiseBlock,
}


def stage_strides(spec: BackboneSpec) -> tuple[int, int, int, int]:
    """Stride of the first block of each stage (the deep stem already reaches stride 4)."""
    return (1, 2, 2, 2) if spec.stem == "deep" else (2, 2, 2, 2)


def _stem(spec: BackboneSpec) -> nn.Sequential:
    w = spec.stem_width
    if spec.stem == "deep":
        # ResNet-V1e: three 3x3 convs, then a 2x2/s2 max-pool (SCRFD's `no_pool33`)
        return nn.Sequential(
            ConvNormAct(3, w // 2, 3, 2),
            ConvNormAct(w // 2, w // 2, 3),
            ConvNormAct(w // 2, w, 3),
            nn.MaxPool2d(2, 2),
        )
    # MobileNetV1: 3x3/s2 conv, then one depthwise-separable unit at stride 2
    return nn.Sequential(ConvNormAct(3, w, 3, 2), DepthwiseBlock(w, w, 1))


def _stage(stage: StageSpec, cin: int, stride: int) -> nn.Sequential:
    block = BLOCK_TYPES[stage.block]
    blocks = [block(cin if i == 0 else stage.out_channels, stage.width, stride if i == 0 else 1)
              for i in range(stage.depth)]
    return nn.Sequential(*blocks)


class Backbone(nn.Module):
    """images (N, 3, H, W) -> [C2, C3, C4, C5], Ck of shape (N, channels_k, ~H/2**k, ~W/2**k)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.stem = _stem(spec)
        cin = spec.stem_width
        stages = []
        for stage, stride in zip(spec.stages, stage_strides(spec)):
            stages.append(_stage(stage, cin, stride))
            cin = stage.out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = spec.out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
