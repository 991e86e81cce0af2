"""MobileNetV1's own stem (Howard et al. 2017), for ASFD's MobileNet 0.25 / 1.0 backbones.

MobileNetV1 at width multiplier a: 3x3/s2 conv to 32a, a depthwise unit to 64a, then
depthwise units 128a (s2), 128a, 256a (s2), 256a, 512a (s2), 5 x 512a, 1024a (s2), 1024a. The
`mobilenet` stem of detectors/blocks/mobilenet.py keeps its width through its depthwise unit
(SCRFD's variant); this one doubles it as the paper's network does: stem width = 64a (the
first conv has half of it), and the stages are `depthwise` blocks (C2: 2 x 128a, C3: 2 x
256a, C4: 6 x 512a, C5: 2 x 1024a).
"""

from __future__ import annotations

from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.blocks.mobilenet import DepthwiseBlock, depthwise_cost
from detectors.macs import Counter

__all__ = ["mobilenet_v1_stem", "mobilenet_v1_stem_cost"]


def mobilenet_v1_stem(width: int) -> nn.Sequential:
    """3x3/s2 conv to width / 2, then a depthwise unit to `width` (stride 2 overall)."""
    return nn.Sequential(ConvNormAct(3, width // 2, 3, 2), DepthwiseBlock(width // 2, width, 1))


def mobilenet_v1_stem_cost(c: Counter, width: int, h: int, w: int) -> tuple[int, int]:
    h, w = c.conv(3, width // 2, 3, 2, h, w)
    return depthwise_cost(c, width // 2, width, 1, h, w)
