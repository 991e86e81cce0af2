"""torchvision-layout ResNet blocks and stem (ResNet-18/34/50/101/152), with costs, and a loader
for torchvision ImageNet weights.

Unlike detectors/blocks/resnet.py (SCRFD's ResNet-V1e: deep stem, avg-pool shortcuts) these
follow torchvision.models.resnet module for module, with its attribute names, so a
torchvision state dict maps onto a backbone by renaming only:

    conv1, bn1               -> backbone.stem.conv1, backbone.stem.bn1
    layer{k}.{j}.<rest>      -> backbone.stages.{k-1}.{j}.<rest>      (k = 1..4)
    fc.*                     -> dropped

(`torchvision_backbone_state` does it.) Stem: 7x7/s2 conv + BN + ReLU, 3x3/s2 max-pool
(stride 4). Blocks: `tv_basic` (3x3, 3x3) and `tv_bottleneck` (1x1, 3x3 strided, 1x1 to
width x 4); a shape-changing shortcut is `downsample` = 1x1 strided conv + BN.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from detectors.blocks.resnet import basic_cost, bottleneck_cost
from detectors.macs import Counter, conv_out

__all__ = ["TVBasicBlock", "TVBottleneck", "tv_basic_cost", "tv_bottleneck_cost", "tv_stem",
           "tv_stem_cost", "torchvision_backbone_state", "load_torchvision_resnet"]


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class TVBasicBlock(nn.Module):
    """torchvision BasicBlock: conv1 (3x3, strides), bn1, relu, conv2, bn2, + shortcut, relu."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 3, stride), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv(width, width, 3), nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    def zero_init_residual(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class TVBottleneck(nn.Module):
    """torchvision Bottleneck (V1.5: the 3x3 strides): 1x1, 3x3, 1x1 to width x 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv(cin, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, cout, 1), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    def zero_init_residual(self) -> None:
        nn.init.zeros_(self.bn3.weight)


def _downsample_cost(c: Counter, cin: int, cout: int, s: int, h: int, w: int, times: int) -> None:
    if s != 1 or cin != cout:
        c.conv(cin, cout, 1, s, h, w, act=False, times=times)


def tv_basic_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                  times: int = 1) -> tuple[int, int]:
    return basic_cost(c, cin, width, s, h, w, times, shortcut_cost=_downsample_cost)


def tv_bottleneck_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                       times: int = 1) -> tuple[int, int]:
    return bottleneck_cost(c, cin, width, s, h, w, times, shortcut_cost=_downsample_cost)


class _TVStem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def tv_stem(width: int) -> nn.Module:
    """torchvision's ResNet stem (stride 4, `width` channels; ImageNet ResNets: 64)."""
    return _TVStem(width)


def tv_stem_cost(c: Counter, width: int, h: int, w: int) -> tuple[int, int]:
    h, w = c.conv(3, width, 7, 2, h, w)
    c.e += width * h * w  # max-pool: its input elements
    return conv_out(h, w, 3, 2)


def torchvision_backbone_state(tv_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict renamed to FaceDetector keys (module docstring)."""
    out = {}
    for key, value in tv_state.items():
        head, _, rest = key.partition(".")
        if head in ("conv1", "bn1"):
            out[f"backbone.stem.{key}"] = value
        elif head.startswith("layer"):
            out[f"backbone.stages.{int(head[5:]) - 1}.{rest}"] = value
    return out


def load_torchvision_resnet(model: nn.Module, tv_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy torchvision ResNet weights into `model`'s stem and stages 1-4; returns the
    model's keys left as they were (extra stages C6/C7, neck, head). Shapes must match."""
    from detectors.errors import UserError

    state = torchvision_backbone_state(tv_state)
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise UserError(f"torchvision weights do not fit this backbone: {wrong[0]} "
                        f"({len(wrong)} keys differ); is it the same ResNet depth?")
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]
