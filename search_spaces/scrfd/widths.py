"""Channel rules SCRFD's sampler and its latency model share (one place, so they agree)."""

from __future__ import annotations

import math

__all__ = ["stem_width", "head_gn_groups"]


def stem_width(stem: str, w1: int) -> int:
    """The stem is merged into w1 (SCRFD): the ResNet deep stem outputs w1 channels; the
    MobileNet stem, whose depthwise unit runs at stride 2, half of w1 (at least 8), as the
    MobileNetV1 plan (stem 8 -> first stage 16 at x0.25)."""
    return int(w1) if stem == "deep" else max(8, int(w1) // 16 * 8)


def head_gn_groups(regime_groups: int, n: int, h: int, depthwise: bool) -> int:
    """The regime's GroupNorm groups reduced to a divisor of h (and of n when the tower's
    first depthwise conv normalises the n neck channels)."""
    groups = math.gcd(h, regime_groups)
    return math.gcd(groups, n) if depthwise else groups
