"""RSA's recurrent scale approximation unit and the `rsa` neck (Liu et al. 2017, sec. 3.2).

G^m = f(I^m) is the res2b map (stride 4) of the image downsampled by 2^m. The RSA unit maps
a map to its half-size version: F^0 = G^0, F^m = RSA(F^{m-1}) (Eq. 6), rolled out up to M = 5
times with the same weights; it is trained with L_RSA = 1/(2M) sum_m ||F^m - G^m||^2 (Eq. 7,
here the mean over elements so the loss does not grow with the map size).

The unit ("4-layer FCN", half channels, residual): 3x3/s2 conv+GN+ReLU, 3x3 conv+GN+ReLU,
3x3 conv+GN+ReLU, 1x1 conv (bias), plus the input 2x2-average-pooled (ceil mode) as the
residual; every map keeps the input's channels.

The `rsa` neck (catalogue entry `rsa`) reads one level (res2b, C2), rolls out
`options.rollouts` = M maps, and applies res3a (a stride-2 basic block to `neck.channels`, the
first layer of the landmark retracing network, shared by all scales) to each of the M + 1
maps: output levels in_level + 1 .. in_level + 1 + M (strides 8 .. 8 * 2^M for res2b at 4).
Level m of the output sees the image at 1/2^m, so the single 64*sqrt(2) anchor there is
64*sqrt(2) * 2^m in the input (anchors.base_sizes 64 .. 64 * 2^M, scale sqrt(2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detectors.blocks.conv import ConvNormAct
from detectors.blocks.resnet import BasicBlock, basic_cost
from detectors.errors import UserError
from detectors.macs import Counter

__all__ = ["MAX_ROLLOUTS", "RSAOptions", "RSAUnit", "RSANeck", "rsa_neck", "rsa_neck_cost",
           "rsa_out_levels", "rsa_unit_cost", "rollout", "rsa_loss", "DEFAULT_LAYOUT",
           "per_scale_norms", "SCALE_NORM_GROUPS"]

MAX_ROLLOUTS = 5  # M: six scales in all (the six main bins 2^5 .. 2^11 of the forecast)

# Mean 5-landmark layout relative to the face box: (x - cx) / w, (y - cy) / h per landmark
# (left eye, right eye, nose, left / right mouth corner). Computed from widerface-mini train
# (its landmarks) by `detectors.rsa.detector.mean_landmark_layout`; a spec may carry its own.
DEFAULT_LAYOUT = (-0.173, -0.129, 0.217, -0.134, 0.023, 0.07, -0.127, 0.251, 0.181, 0.247)


@dataclass(frozen=True)
class RSAOptions:
    """neck.options of the `rsa` neck. rollouts: M (0..5); landmark_layout: the mean layout
    (10 numbers, see DEFAULT_LAYOUT) the landmark regression starts from; inference settings
    of the pipeline: forecast_thresh / forecast_min_weight (Eq. 4 scale selection), max_side
    (the resized input's long side is capped, px)."""

    rollouts: int = MAX_ROLLOUTS
    landmark_layout: tuple[float, ...] = DEFAULT_LAYOUT
    forecast_thresh: float = 0.3
    forecast_min_weight: float = 0.1
    max_side: int = 2048

    def __post_init__(self) -> None:
        r = self.rollouts
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= MAX_ROLLOUTS:
            raise UserError(f"neck.options.rollouts must be an integer in 0..{MAX_ROLLOUTS} "
                            f"(roll-out depth), got {r!r}")
        if len(self.landmark_layout) != 10:
            raise UserError("neck.options.landmark_layout must list 10 numbers (5 x, y pairs), "
                            f"got {len(self.landmark_layout)}")
        if not 0 < self.forecast_thresh < 1 or self.max_side < 64:
            raise UserError("neck.options: forecast_thresh must be in (0, 1), max_side >= 64")


SCALE_NORM_GROUPS = 8  # GroupNorm groups of the modules applied once per scale


def per_scale_norms(module: nn.Module, groups: int = SCALE_NORM_GROUPS) -> nn.Module:
    """Replace every BatchNorm2d in `module` by GroupNorm(groups) (same parameters and cost).

    Modules applied once per scale (RSA unit, res3a, LRN) see maps of six scales; BatchNorm's
    running statistics average them, so at test every scale was normalised with the wrong
    statistics (measured: memorisation AP 0.07 with running statistics vs 0.79 with batch
    statistics). GroupNorm normalises each map by itself, in training and at test alike."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            per_scale_norms(child, groups)
    return module


class RSAUnit(nn.Module):
    """(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)): the map of the half-size image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ConvNormAct(channels, channels, 3, 2), ConvNormAct(channels, channels, 3),
            ConvNormAct(channels, channels, 3), ConvNormAct(channels, channels, 1, norm=None,
                                                           act=False))
        per_scale_norms(self.convs)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x) + self.pool(x)


def rsa_unit_cost(c: Counter, channels: int, h: int, w: int, params: bool = True) -> tuple[int, int]:
    """One application of RSAUnit at an (h, w) input; returns the output size."""
    ho, wo = c.conv(channels, channels, 3, 2, h, w, params=params)
    c.conv(channels, channels, 3, 1, ho, wo, params=params)
    c.conv(channels, channels, 3, 1, ho, wo, params=params)
    c.conv(channels, channels, 1, 1, ho, wo, norm=False, act=False, params=params)
    c.e += channels * h * w  # the avg-pool's input elements (mmcv)
    return ho, wo


def rollout(unit: RSAUnit, g0: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """[F^0 = g0, F^1, ..., F^depth] (Eq. 6): each half the size of the one before."""
    maps = [g0]
    for _ in range(depth):
        maps.append(unit(maps[-1]))
    return maps


def rsa_loss(predicted: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 7 over levels m = 1..M: 1/(2M) sum_m mean((F^m - G^m)^2); maps are compared on
    their common top-left extent (odd sizes round differently in the unit and the trunk)."""
    terms = []
    for f, g in zip(predicted[1:], targets[1:]):
        h, w = min(f.shape[-2], g.shape[-2]), min(f.shape[-1], g.shape[-1])
        terms.append((f[..., :h, :w].float() - g[..., :h, :w].float()).square().mean())
    if not terms:
        return predicted[0].new_zeros(())
    return torch.stack(terms).sum() / (2 * len(terms))


class RSANeck(nn.Module):
    """[res2b (N, C, H, W)] -> M + 1 maps (N, channels, ~H/2^(m+1), ~W/2^(m+1)), m = 0..M."""

    def __init__(self, in_channels: int, channels: int, rollouts: int) -> None:
        super().__init__()
        self.rollouts = rollouts
        self.unit = RSAUnit(in_channels)
        self.res3a = per_scale_norms(BasicBlock(in_channels, channels, 2))

    def approximate(self, g0: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """F^0..F^depth (default: all M roll-outs)."""
        return rollout(self.unit, g0, self.rollouts if depth is None else depth)

    def forward(self, feats: list[torch.Tensor], depth: int | None = None) -> list[torch.Tensor]:
        return [self.res3a(f) for f in self.approximate(feats[0], depth)]


def _options(neck_spec) -> RSAOptions:
    return neck_spec.options if neck_spec.options is not None else RSAOptions()


def rsa_out_levels(neck_spec) -> tuple[int, ...]:
    """Output levels of the `rsa` neck: in_level + 1 .. in_level + 1 + M."""
    first = neck_spec.in_levels[0] + 1
    return tuple(range(first, first + _options(neck_spec).rollouts + 1))


def rsa_neck(neck_spec, in_channels) -> RSANeck:
    if len(neck_spec.in_levels) != 1:
        raise UserError(f"neck type 'rsa' reads one level (res2b), got in_levels "
                        f"{list(neck_spec.in_levels)}")
    return RSANeck(in_channels[0], neck_spec.channels, _options(neck_spec).rollouts)


def rsa_neck_cost(c: Counter, neck_spec, in_channels, sizes) -> list[tuple[int, int]]:
    """RSA unit (params once, MACs per roll-out) + res3a per map; returns output sizes."""
    cin, maps = in_channels[0], [tuple(sizes[0])]
    c.p += _params(lambda k: rsa_unit_cost(k, cin, 2, 2))
    for _ in range(_options(neck_spec).rollouts):
        maps.append(rsa_unit_cost(c, cin, *maps[-1], params=False))
    c.p += _params(lambda k: basic_cost(k, cin, neck_spec.channels, 2, 2, 2))
    out = []
    for mh, mw in maps:
        probe = Counter()
        out.append(basic_cost(probe, cin, neck_spec.channels, 2, mh, mw))
        c.m, c.e = c.m + probe.m, c.e + probe.e
    return out


def _params(count) -> int:
    """Parameters of whatever `count(counter)` counts (sizes do not matter)."""
    probe = Counter()
    count(probe)
    return probe.p
