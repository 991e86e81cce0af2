"""FANet (Zhang et al. 2018, "Feature Agglomeration Networks"): A-blocks over a hierarchy.

The neck entry `fanet` (detectors.catalog.NECKS) over the six S3FD maps phi^1_1..phi^1_n
(conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2; levels 2..7, strides 4..128):

    phi^1_l = backbone map l                                               (Eq. 1)
    phi^k_l = A_l(phi^{k-1}_l, phi^{k-1}_{l+1})   for l <= n - k + 1        (Eq. 2)
    phi^k_l = phi^{k-1}_l                          for l >  n - k + 1  (shared blobs)

so with n = 6 and m = 3 the detector predicts from conv3_3(3), conv4_3(3), conv5_3(3),
conv_fc7(3), conv6_2(2), conv7_2(1): hierarchy 3 agglomerates from conv_fc7 down (§3.3).

A-block (Fig. 2): the shallower map goes through the context module (1x1 conv to X, then four
parallel branches 1x1, 1x3, 3x1, 3x3 of X/4 channels each, concatenated: 1:1:1:1); the deeper
map is 1x1-reduced to X / deep_ratio channels (§3.2: "to 1/8 of N (e.g., 32)", "the ratio of
deeper and shallower feature in one A-block is set to 1/8": N = X = 256 -> 32, whatever the
deeper map's own width) and bilinearly upsampled to the shallower map's size; both are concatenated and smoothed by a 3x3 conv to `neck.channels`.
Every conv has a bias and a ReLU. As S3FD, the first backbone maps are L2-normalised with a
learnable per-channel scale (`options.l2norm`: initial scales, S3FD's 10, 8, 5 for conv3_3,
conv4_3, conv5_3; [] for none) before anything reads them. `options.context: false` replaces the context module by its
1x1 reduce alone (the paper's "without context" ablation).

The hierarchical loss (Eq. 4): every hierarchy k < m is returned as an auxiliary feature set
(`NeckOutput.aux`, training only); the shared head predicts from each, and the trainer adds
recipe.loss.aux_weight x its loss. Because the head is shared and reads `neck.channels`, a
backbone map used as-is in a set (all of set 1; the top map in the others) whose channels
differ from neck.channels goes through a 1x1 conv + ReLU `adapters[l]` (one per level, shared
by the sets); for the full FANet only set 1 (training only) needs them. Shapes: maps (N, C_l,
H_l, W_l) in, (N, neck.channels, H_l, W_l) out, per level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detectors.errors import UserError
from detectors.macs import Counter
from detectors.necks import NeckOutput

__all__ = ["FANetOptions", "ContextModule", "ABlock", "FANetNeck", "fanet", "fanet_cost",
           "fanet_check", "computed_levels"]

MAX_DEPTH = 3


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class FANetOptions:
    """neck.options of `fanet`: depth = hierarchy levels m (1 = S3FD's maps, 3 = FANet);
    context_channels = X (divisible by 4: four equal branches); deep_ratio: the deeper map is
    reduced to X // deep_ratio channels (at least 1; the paper: 256 / 8 = 32); context: use the
    context module."""

    depth: int = 3
    context_channels: int = 256
    deep_ratio: int = 8
    context: bool = True
    l2norm: tuple[float, ...] = (10.0, 8.0, 5.0)

    def __post_init__(self) -> None:
        if not _is_int(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
            raise UserError(f"fanet neck options depth must be 1, 2 or 3 (hierarchy levels), "
                            f"got {self.depth!r}")
        x = self.context_channels
        if not _is_int(x) or x < 4 or x % 4:
            raise UserError(f"fanet neck options context_channels must be a positive multiple "
                            f"of 4, got {x!r}")
        if not _is_int(self.deep_ratio) or self.deep_ratio < 1:
            raise UserError(f"fanet neck options deep_ratio must be an integer >= 1, "
                            f"got {self.deep_ratio!r}")
        if not isinstance(self.context, bool):
            raise UserError(f"fanet neck options context must be true or false, got {self.context!r}")
        ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0  # noqa: E731
        if not isinstance(self.l2norm, tuple) or not all(ok(v) for v in self.l2norm):
            raise UserError(f"fanet neck options l2norm must be a list of positive numbers "
                            f"(S3FD: [10, 8, 5]), got {self.l2norm!r}")
        object.__setattr__(self, "l2norm", tuple(float(v) for v in self.l2norm))


def computed_levels(num_levels: int, depth: int) -> list[int]:
    """Number of A-blocks of hierarchies 2..depth: hierarchy k computes n - k + 1 levels."""
    return [num_levels - k + 1 for k in range(2, depth + 1)]


def fanet_check(spec) -> None:
    """Spec-level rules (DetectorSpec validation): the hierarchy agglomerates from the deepest
    backbone map down, so in_levels must end at the backbone's last level, and a depth-m
    hierarchy needs at least m levels."""
    levels, top = spec.neck.in_levels, spec.backbone.levels[-1]
    if levels[-1] != top:
        raise UserError(f"neck type 'fanet' agglomerates from the deepest backbone map: in_levels "
                        f"{list(levels)} must end at the backbone's last level {top} "
                        f"({len(spec.backbone.stages)} stages)")
    depth = spec.neck.options.depth
    if len(levels) < depth:
        raise UserError(f"neck type 'fanet' with depth {depth} needs at least {depth} levels, "
                        f"in_levels has {len(levels)}")


class L2Norm(nn.Module):
    """S3FD / SSD's L2 normalisation across channels with a learnable per-channel scale
    (initialised to `scale`): (N, C, H, W) -> same shape, x / ||x||_2 * weight."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-10)
        return x / norm * self.weight.view(1, -1, 1, 1)


def _conv(cin: int, cout: int, k) -> nn.Sequential:
    kh, kw = (k, k) if isinstance(k, int) else k
    return nn.Sequential(nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2)),
                         nn.ReLU(inplace=True))


_BRANCHES = (1, (1, 3), (3, 1), 3)


class ContextModule(nn.Module):
    """(N, cin, H, W) -> (N, X, H, W): 1x1 reduce to X, then [1x1 | 1x3 | 3x1 | 3x3] of X/4
    each, concatenated (`context` False: the reduce alone)."""

    def __init__(self, cin: int, x: int, context: bool = True) -> None:
        super().__init__()
        self.reduce = _conv(cin, x, 1)
        self.branches = nn.ModuleList(_conv(x, x // 4, k) for k in _BRANCHES) if context else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        if self.branches is None:
            return x
        return torch.cat([b(x) for b in self.branches], 1)


def _context_cost(c: Counter, cin: int, x: int, context: bool, h: int, w: int) -> None:
    c.conv(cin, x, 1, 1, h, w, norm=False)
    if context:
        for k in _BRANCHES:
            c.conv(x, x // 4, k, 1, h, w, norm=False)


def _deep_channels(opts: FANetOptions) -> int:
    """The deep branch's width: X / deep_ratio (the paper's 1:8 of deeper to shallower)."""
    return max(1, opts.context_channels // opts.deep_ratio)


class ABlock(nn.Module):
    """Agglomeration connection: shallow (N, cs, H, W) and deep (N, cd, H', W') maps ->
    (N, cout, H, W) = smooth3x3(cat(context(shallow), upsample(reduce1x1(deep))))."""

    def __init__(self, c_shallow: int, c_deep: int, cout: int, opts: FANetOptions) -> None:
        super().__init__()
        self.context = ContextModule(c_shallow, opts.context_channels, opts.context)
        nd = _deep_channels(opts)
        self.deep = _conv(c_deep, nd, 1)
        self.smooth = _conv(opts.context_channels + nd, cout, 3)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        d = F.interpolate(self.deep(deep), size=shallow.shape[-2:], mode="bilinear",
                          align_corners=False)
        return self.smooth(torch.cat([self.context(shallow), d], 1))


def ablock_cost(c: Counter, c_shallow: int, c_deep: int, cout: int, opts: FANetOptions,
                shallow_hw: tuple[int, int], deep_hw: tuple[int, int]) -> None:
    h, w = shallow_hw
    _context_cost(c, c_shallow, opts.context_channels, opts.context, h, w)
    nd = _deep_channels(opts)
    c.conv(c_deep, nd, 1, 1, *deep_hw, norm=False)
    c.conv(opts.context_channels + nd, cout, 3, 1, h, w, norm=False)


def _hierarchy_channels(in_channels: list[int], cout: int, depth: int) -> list[list[int]]:
    """Channels of every map of every hierarchy (A-block outputs have cout)."""
    sets = [list(in_channels)]
    for count in computed_levels(len(in_channels), depth):
        sets.append([cout] * count + sets[-1][count:])
    return sets


class FANetNeck(nn.Module):
    """[phi^1_l] (N, C_l, H_l, W_l) -> hierarchy `depth` maps (N, channels, H_l, W_l); in
    training the lower hierarchies as NeckOutput.aux. Modules: `hierarchy[k-2][l]` (A-blocks of
    hierarchy k), `adapters[l]` (1x1 conv + ReLU, or Identity when C_l == channels)."""

    def __init__(self, in_channels: list[int], channels: int, opts: FANetOptions) -> None:
        super().__init__()
        self.depth, self.channels = opts.depth, channels
        sets = _hierarchy_channels(in_channels, channels, opts.depth)
        self.hierarchy = nn.ModuleList(
            nn.ModuleList(ABlock(prev[l], prev[l + 1], channels, opts) for l in range(count))
            for prev, count in zip(sets, computed_levels(len(in_channels), opts.depth)))
        # S3FD normalises its shallow maps (conv3_3, conv4_3, conv5_3: scales 10, 8, 5)
        self.l2norms = nn.ModuleList(L2Norm(c, v) for c, v in zip(in_channels, opts.l2norm))
        self.adapters = nn.ModuleList(
            nn.Identity() if c == channels else _conv(c, channels, 1) for c in in_channels)
        for m in self.modules():  # the paper: new layers are initialised with "xavier"
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]):
        feats = [n(x) for n, x in zip(self.l2norms, feats)] + list(feats[len(self.l2norms):])
        sets = [list(feats)]
        for blocks in self.hierarchy:
            prev = sets[-1]
            sets.append([b(prev[l], prev[l + 1]) for l, b in enumerate(blocks)]
                        + prev[len(blocks):])
        adapted: dict[int, torch.Tensor] = {}

        def out(maps: list[torch.Tensor]) -> list[torch.Tensor]:
            res = []
            for l, x in enumerate(maps):
                if x is feats[l]:  # a backbone map used as is
                    if l not in adapted:
                        adapted[l] = self.adapters[l](x)
                    x = adapted[l]
                res.append(x)
            return res

        main = out(sets[-1])
        if self.depth == 1:
            return main
        return NeckOutput(main, [out(s) for s in sets[:-1]] if self.training else [])


def fanet(spec, in_channels: list[int]) -> FANetNeck:
    return FANetNeck(in_channels, spec.channels, spec.options)


def fanet_cost(c: Counter, spec, in_channels: list[int], sizes: list[tuple[int, int]]) -> None:
    """Cost of FANetNeck at inference (what predict / export run): every A-block, and the
    adapters of the backbone maps in the last hierarchy; the adapters only the auxiliary sets
    use (training) count their parameters only."""
    opts, n, cout = spec.options, len(in_channels), spec.channels
    sets = _hierarchy_channels(in_channels, cout, opts.depth)
    for prev, count in zip(sets, computed_levels(n, opts.depth)):
        for l in range(count):
            ablock_cost(c, prev[l], prev[l + 1], cout, opts, sizes[l], sizes[l + 1])
    c.p += sum(in_channels[: len(opts.l2norm)])  # L2Norm scales (ops not counted, as mmcv)
    first_raw = n - 1 if opts.depth > 1 else 0  # levels of the final set that are backbone maps
    for l, cin in enumerate(in_channels):
        if cin == cout:
            continue
        if l >= first_raw:
            c.conv(cin, cout, 1, 1, *sizes[l], norm=False)
        else:  # used by the auxiliary (training-only) sets: parameters, no inference MACs
            c.p += cin * cout + cout
