"""SSD / S3FD / DSFD "extra layers" as a block: the cheap stages that extend a classification
backbone to strides 64 and 128 (C6, C7) for face detection.

`ssd_extra_bn`: 1x1 conv + BN + ReLU to width / 2, then 3x3 conv (strides) + BN + ReLU to
`width` (S3FD's conv6_1/conv6_2: 256 -> 512, conv7_1/conv7_2: 128 -> 256). No shortcut.
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.macs import Counter

__all__ = ["ExtraBlock", "extra_cost"]


class ExtraBlock(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.reduce = ConvNormAct(cin, width // 2, 1)
        self.conv = ConvNormAct(width // 2, width, 3, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.reduce(x))


def extra_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
               times: int = 1) -> tuple[int, int]:
    c.conv(cin, width // 2, 1, 1, h, w, times=times)
    return c.conv(width // 2, width, 3, s, h, w, times=times)
