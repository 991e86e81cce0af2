"""The backbone of a `BackboneSpec`: a stem and 1-6 stages of catalogue blocks.

Module layout (names matter: the ONNX importer and the per-component cost map onto them):
`stem` (the stem entry's module) and `stages` (ModuleList of nn.Sequential of blocks, one per
stage; stage i outputs level C_{i+2} at stride 2**(i+2)). The first block of each stage
strides: by 4 // stem stride for stage 1 (a stride-4 stem leaves it at 1), by 2 otherwise.
`forward(x)` returns the stage outputs C2, C3, ...
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.blocks.mobilenet import DepthwiseBlock
from detectors.blocks.resnet import BasicBlock, Bottleneck
from detectors.spec import BackboneSpec, StageSpec

__all__ = ["ConvNormAct", "BasicBlock", "Bottleneck", "DepthwiseBlock", "Backbone",
           "stage_strides"]


def stage_strides(spec: BackboneSpec) -> tuple[int, ...]:
    """Stride of the first block of each stage."""
    from detectors.catalog import stem_entry

    first = 4 // stem_entry(spec.stem).stride
    return (first,) + (2,) * (len(spec.stages) - 1)


def _stage(stage: StageSpec, cin: int, stride: int) -> nn.Sequential:
    from detectors.catalog import block_entry

    blocks = []
    for i, name in enumerate(stage.layer_blocks):
        entry = block_entry(name)
        blocks.append(entry.build(cin, stage.width, stride if i == 0 else 1))
        cin = stage.width * entry.expansion
    return nn.Sequential(*blocks)


class Backbone(nn.Module):
    """images (N, 3, H, W) -> [C2, C3, ...], Ck of shape (N, channels_k, ~H/2**k, ~W/2**k)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        from detectors.catalog import stem_entry

        self.stem = stem_entry(spec.stem).build(spec.stem_width)
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
