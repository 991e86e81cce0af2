"""MobileNetV1 units and stem (SCRFD's 0.5GF / 2.5GF-depthwise family), with costs."""

from __future__ import annotations

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.macs import Counter

__all__ = ["DepthwiseBlock", "depthwise_cost", "mobilenet_stem", "mobilenet_stem_cost"]


class DepthwiseBlock(nn.Module):
    """MobileNetV1 unit: 3x3 depthwise conv+BN+ReLU (strides), 1x1 pointwise conv+BN+ReLU."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(cin, cin, 3, stride, groups=cin)
        self.pointwise = ConvNormAct(cin, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def depthwise_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                   times: int = 1) -> tuple[int, int]:
    ho, wo = c.conv(cin, cin, 3, s, h, w, groups=cin, times=times)
    return c.conv(cin, width, 1, 1, ho, wo, times=times)


def mobilenet_stem(width: int) -> nn.Sequential:
    """MobileNetV1 stem: 3x3/s2 conv, then one depthwise-separable unit (stride 2 overall)."""
    return nn.Sequential(ConvNormAct(3, width, 3, 2), DepthwiseBlock(width, width, 1))


def mobilenet_stem_cost(c: Counter, width: int, h: int, w: int) -> tuple[int, int]:
    h, w = c.conv(3, width, 3, 2, h, w)
    return depthwise_cost(c, width, width, 1, h, w)
