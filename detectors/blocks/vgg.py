"""VGG16 (torchvision layout, no BN) and the SSD / S3FD extra layers, with their costs.

The S3FD backbone (Zhang et al. 2017; FANet's, Zhang et al. 2018) as catalogue entries:

    stem "vgg"        conv1_1, conv1_2 (width/2), pool1, conv2_1, conv2_2 (width), pool2: stride 4
    block "vgg"       [2x2/s2 max-pool when striding] 3x3 conv + ReLU (conv3_x, conv4_x, conv5_x)
    block "vgg_fc"    [pool5 when striding] fc6: 3x3 conv dilation 6 + ReLU, fc7: 1x1 conv + ReLU
    block "ssd_extra" conv*_1: 1x1 conv to width/2 + ReLU, conv*_2: 3x3 conv (strides) + ReLU

Every conv has a bias and is followed by ReLU (torchvision vgg16 / the S3FD prototxt). Pools are
2x2/s2 max-pools with ceil_mode (for even sizes identical to torchvision's floor mode; odd sizes
round up like every other stride-2 step of the project, see detectors.cost.level_sizes).
The 13 VGG convs appear in the module tree in torchvision's order, so `load_torchvision_vgg16`
maps `torchvision.models.vgg16().features` weights onto them (fc6/fc7 stay as initialised:
torchvision's classifier is fully connected, not the SSD "reduced" convs).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from detectors.errors import UserError
from detectors.macs import Counter, ceil2

__all__ = ["VGGConv", "VGGFc", "SSDExtra", "vgg_stem", "vgg_stem_cost", "vgg_conv_cost",
           "vgg_fc_cost", "ssd_extra_cost", "load_torchvision_vgg16", "FC6_DILATION"]

FC6_DILATION = 6  # S3FD / SSD: fc6 is a 3x3 conv with pad 6, dilation 6 after a 2x2 pool5
# torchvision vgg16 `features` indices of its 13 convs, in order
TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _conv_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (k // 2)
    return [nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation), nn.ReLU(inplace=True)]


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


def _pool_cost(c: Counter, ch: int, h: int, w: int, times: int = 1) -> tuple[int, int]:
    c.e += times * ch * h * w  # pools: their input elements (mmcv)
    return ceil2(h), ceil2(w)


def vgg_stem(width: int) -> nn.Sequential:
    """conv1_1, conv1_2 (width/2 channels), pool1, conv2_1, conv2_2 (width), pool2: stride 4.
    VGG16: width 128."""
    half = width // 2
    return nn.Sequential(*_conv_relu(3, half), *_conv_relu(half, half), _pool(),
                         *_conv_relu(half, width), *_conv_relu(width, width), _pool())


def vgg_stem_cost(c: Counter, width: int, h: int, w: int) -> tuple[int, int]:
    half = width // 2
    h, w = c.conv(3, half, 3, 1, h, w, norm=False)
    h, w = c.conv(half, half, 3, 1, h, w, norm=False)
    h, w = _pool_cost(c, half, h, w)
    h, w = c.conv(half, width, 3, 1, h, w, norm=False)
    h, w = c.conv(width, width, 3, 1, h, w, norm=False)
    return _pool_cost(c, width, h, w)


class VGGConv(nn.Sequential):
    """[2x2/s2 max-pool when stride 2] then 3x3 conv + ReLU; (N, cin, H, W) -> (N, width, H/s, W/s)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__(*([_pool()] if stride == 2 else []), *_conv_relu(cin, width))


def vgg_conv_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                  times: int = 1) -> tuple[int, int]:
    if s == 2:
        h, w = _pool_cost(c, cin, h, w, times)
    return c.conv(cin, width, 3, 1, h, w, norm=False, times=times)


class VGGFc(nn.Sequential):
    """S3FD's pool5 (when striding), fc6 (3x3, dilation 6) + ReLU, fc7 (1x1) + ReLU; both
    `width` channels (1024 in S3FD)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__(*([_pool()] if stride == 2 else []),
                         *_conv_relu(cin, width, 3, dilation=FC6_DILATION),
                         *_conv_relu(width, width, 1))


def vgg_fc_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                times: int = 1) -> tuple[int, int]:
    if s == 2:
        h, w = _pool_cost(c, cin, h, w, times)
    h, w = c.conv(cin, width, 3, 1, h, w, norm=False, times=times, dilation=FC6_DILATION)
    return c.conv(width, width, 1, 1, h, w, norm=False, times=times)


class SSDExtra(nn.Sequential):
    """SSD extra layer pair: 1x1 conv to width/2 + ReLU, 3x3 conv (stride s, pad 1) to width +
    ReLU (S3FD conv6: width 512, conv7: width 256)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__(*_conv_relu(cin, width // 2, 1), *_conv_relu(width // 2, width, 3, stride))


def ssd_extra_cost(c: Counter, cin: int, width: int, s: int, h: int, w: int,
                   times: int = 1) -> tuple[int, int]:
    h, w = c.conv(cin, width // 2, 1, 1, h, w, norm=False, times=times)
    return c.conv(width // 2, width, 3, s, h, w, norm=False, times=times)


def _vgg_convs(backbone: nn.Module) -> list[nn.Conv2d]:
    """The 13 VGG16 convs of a backbone built from the vgg stem and vgg blocks, in order."""
    convs = [m for m in backbone.stem.modules() if isinstance(m, nn.Conv2d)]
    for stage in backbone.stages:
        for block in stage:
            if isinstance(block, VGGConv):
                convs += [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs


def load_torchvision_vgg16(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Copy torchvision vgg16 weights (`features.<i>.weight/bias` of its 13 convs) into the
    backbone's VGG convs; returns how many convs were loaded (13). Keys may carry a prefix
    (e.g. 'module.' or 'vgg.'); shapes must match exactly (a full-width VGG16 spec).
    Raises UserError naming the first missing key or mismatched shape."""
    convs = _vgg_convs(backbone)
    if len(convs) != len(TORCHVISION_CONVS):
        raise UserError(f"the backbone has {len(convs)} VGG convs, torchvision vgg16 has 13 "
                        f"(stem 'vgg' and 10 'vgg' blocks are needed)")
    by_suffix = {k.split("features.", 1)[-1]: v for k, v in state_dict.items() if "features." in k}
    with torch.no_grad():
        for conv, idx in zip(convs, TORCHVISION_CONVS):
            for name in ("weight", "bias"):
                key = f"{idx}.{name}"
                if key not in by_suffix:
                    raise UserError(f"VGG16 weights: key features.{key} missing")
                src, dst = by_suffix[key], getattr(conv, name)
                if tuple(src.shape) != tuple(dst.shape):
                    raise UserError(f"VGG16 weights: features.{key} has shape {tuple(src.shape)}, "
                                    f"the model's conv has {tuple(dst.shape)}")
                dst.copy_(src)
    return len(convs)
