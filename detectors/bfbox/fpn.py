"""BFBox's searched feature pyramid (§4.2.2, Fig. 3): catalogue neck `bfbox_fpn`, with its cost.

The candidate pool starts as the 1x1 laterals L_i of the backbone maps at `in_levels` (pool
index i). Merge step k (k = 0 .. M-1) makes the output at level in_levels[k]:

    x_k = L_k + resize(pool[inputs[k]])        (the same-resolution feature L_k is always one
                                                 of the two: the paper's constraint)
    P_k = RF_{rf[k]}(x_k)                       a receptive-field module
    pool.append(P_k)                            (pool index n_in + k)

`resize` is nearest upsampling to L_k's size (coarser input) or a 2^d x 2^d / stride 2^d
ceil-mode max-pool (finer input, d levels finer: exactly L_k's size). Levels past the last
merge output their lateral (BFBox: p2..p6 are merged, p7 is conv7's lateral).
With `weighted`, the sum is w[k, 0] * L_k + w[k, 1] * resize(...), two learnable scalars per
merge: what a supernet path's FPN-attention (search_spaces/bfbox/supernet.py) reduces to for
one fixed path, so an exported path computes exactly what the supernet computed.

Module names: `lateral_convs.i.conv` (1x1 with bias, no norm: mmdet's FPN laterals),
`rf_modules.k` (the merge's RF module), `merge_weights` (M, 2) when weighted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detectors.blocks.conv import ConvNormAct, DepthwiseSeparable, depthwise_separable_cost
from detectors.errors import UserError
from detectors.macs import Counter

__all__ = ["BFBoxFPNOptions", "BFBoxFPN", "RF_MODULES", "rf_module", "rf_cost", "bfbox_fpn",
           "bfbox_fpn_cost", "resize_to", "pool_levels"]

RF_MODULES = ("conv3", "dil3", "sep5", "rfb")


@dataclass(frozen=True)
class BFBoxFPNOptions:
    """Merge choices of `bfbox_fpn` (spec key neck.options).

    inputs[k]: pool index of merge k's second input (0..n_in-1: the laterals of in_levels;
    n_in + j: merge j's output, j < k; never k itself); rf[k]: its receptive-field module
    (one of RF_MODULES); weighted: two learnable input weights per merge (FPN-attention path).
    """

    inputs: tuple[int, ...]
    rf: tuple[str, ...]
    weighted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, tuple) or not isinstance(self.rf, tuple) or not self.inputs:
            raise UserError("neck options inputs and rf must be non-empty lists")
        if len(self.inputs) != len(self.rf):
            raise UserError(f"neck options list {len(self.inputs)} inputs but {len(self.rf)} rf modules")
        for k, name in enumerate(self.rf):
            if name not in RF_MODULES:
                raise UserError(f"neck options rf[{k}] {name!r} is not one of {', '.join(RF_MODULES)}")
        if not isinstance(self.weighted, bool):
            raise UserError(f"neck options weighted must be true or false, got {self.weighted!r}")

    def check(self, n_in: int) -> None:
        """UserError unless the merges fit `n_in` input levels."""
        if len(self.inputs) > n_in:
            raise UserError(f"neck options list {len(self.inputs)} merges for {n_in} in_levels")
        for k, j in enumerate(self.inputs):
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < n_in + k or j == k:
                raise UserError(f"neck options inputs[{k}] {j!r} must be a pool index in "
                                f"0..{n_in + k - 1} other than {k} (its own lateral)")


def bfbox_fpn_check(spec) -> None:
    """Spec-level rule (DetectorSpec validation): the merges fit the neck's in_levels, so a bad
    path is refused when its YAML is read, not when it is built."""
    spec.neck.options.check(len(spec.neck.in_levels))


def pool_levels(in_levels: tuple[int, ...], num_merges: int) -> list[int]:
    """Level of each pool index: the laterals', then each merge output's."""
    return list(in_levels) + list(in_levels[:num_merges])


def resize_to(x: torch.Tensor, src_level: int, dst_level: int, size: tuple[int, int]) -> torch.Tensor:
    """x at src_level -> dst_level's `size`: nearest upsampling, or a ceil-mode max-pool."""
    if src_level > dst_level:
        return F.interpolate(x, size=size, mode="nearest")
    k = 2 ** (dst_level - src_level)
    y = F.max_pool2d(x, k, k, ceil_mode=True)
    # backbone sizes are nested ceil-halvings, so this is exact; guard other geometries
    return y if tuple(y.shape[-2:]) == tuple(size) else F.interpolate(y, size=size, mode="nearest")


class _RFB(nn.Module):
    """RFB-style module: [1x3 -> 3x1] and [3x3 dilation 3] branches of n/2 channels,
    concatenated, 1x1 fuse + BN, plus the input, ReLU."""

    def __init__(self, n: int) -> None:
        super().__init__()
        h = n // 2
        self.asym = nn.Sequential(ConvNormAct(n, h, (1, 3)), ConvNormAct(h, h, (3, 1)))
        self.dilated = ConvNormAct(n, h, 3, dilation=3)
        self.fuse = ConvNormAct(2 * h, n, 1, act=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fuse(torch.cat([self.asym(x), self.dilated(x)], 1)) + x)


def rf_module(name: str, n: int) -> nn.Module:
    """A receptive-field module on n channels (same size out)."""
    if name == "conv3":
        return ConvNormAct(n, n, 3)
    if name == "dil3":
        return ConvNormAct(n, n, 3, dilation=2)
    if name == "sep5":
        return DepthwiseSeparable(n, n, k=5)
    if name == "rfb":
        return _RFB(n)
    raise UserError(f"receptive-field module {name!r} is not one of {', '.join(RF_MODULES)}")


def rf_cost(c: Counter, name: str, n: int, h: int, w: int) -> None:
    if name == "conv3":
        c.conv(n, n, 3, 1, h, w)
    elif name == "dil3":
        c.conv(n, n, 3, 1, h, w, dilation=2)
    elif name == "sep5":
        depthwise_separable_cost(c, n, n, h, w, k=5)
    else:  # rfb
        half = n // 2
        c.conv(n, half, (1, 3), 1, h, w)
        c.conv(half, half, (3, 1), 1, h, w)
        c.conv(n, half, 3, 1, h, w, dilation=3)
        c.conv(2 * half, n, 1, 1, h, w, act=False)
        c.e += n * h * w  # ReLU after the add


class BFBoxFPN(nn.Module):
    """[C_l for l in in_levels] -> as many (N, channels, H_l, W_l) maps (see module docstring)."""

    def __init__(self, in_channels: list[int], channels: int, in_levels: tuple[int, ...],
                 options: BFBoxFPNOptions) -> None:
        super().__init__()
        options.check(len(in_channels))
        self.options, self.levels = options, pool_levels(in_levels, len(options.inputs))
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, channels, 1, norm=None, act=False) for c in in_channels)
        self.rf_modules = nn.ModuleList(rf_module(name, channels) for name in options.rf)
        if options.weighted:
            self.merge_weights = nn.Parameter(torch.ones(len(options.inputs), 2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        pool = list(laterals)
        for k, (j, rf) in enumerate(zip(self.options.inputs, self.rf_modules)):
            other = resize_to(pool[j], self.levels[j], self.levels[k], laterals[k].shape[-2:])
            if self.options.weighted:
                w = self.merge_weights[k].to(other.dtype)
                x = w[0] * laterals[k] + w[1] * other
            else:
                x = laterals[k] + other
            pool.append(rf(x))
        return pool[len(laterals):] + laterals[len(self.options.inputs):]


def bfbox_fpn(spec, in_channels: list[int]) -> BFBoxFPN:
    return BFBoxFPN(in_channels, spec.channels, spec.in_levels, spec.options)


def bfbox_fpn_cost(c: Counter, spec, in_channels: list[int], sizes: list[tuple[int, int]]) -> None:
    """Cost of BFBoxFPN over maps of `in_channels` at `sizes` (resizes and sums are free)."""
    opts, n = spec.options, spec.channels
    opts.check(len(in_channels))
    for cin, (h, w) in zip(in_channels, sizes):
        c.conv(cin, n, 1, 1, h, w, norm=False, act=False)  # lateral
    for k, name in enumerate(opts.rf):
        rf_cost(c, name, n, *sizes[k])
    if opts.weighted:
        c.p += 2 * len(opts.inputs)
