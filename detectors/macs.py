"""The analytic counter every block's cost function writes into (pure integers, no torch).

A cost function mirrors its module's constructor call by call: `counter.conv(...)` for each
conv it builds, `counter.extra += ...` for mmcv's non-conv operations (pools, the ReLU after a
residual add). detectors.cost sums one Counter per component (stem, c2.., neck, head).
"""

from __future__ import annotations

__all__ = ["Counter", "conv_out", "ceil2"]


def conv_out(h: int, w: int, k: int, s: int, dilation: int = 1,
             padding: int | None = None) -> tuple[int, int]:
    """Output (h, w) of a k x k conv with stride s (padding defaults to 'same' for odd k)."""
    eff = dilation * (k - 1) + 1
    pad = dilation * (k // 2) if padding is None else padding
    return (h + 2 * pad - eff) // s + 1, (w + 2 * pad - eff) // s + 1


def ceil2(x: int) -> int:
    """Size after a 2x2/s2 pool with ceil_mode (ResNet-D avg-down shortcuts)."""
    return (x + 1) // 2


class Counter:
    """Running totals of one component: params, conv/linear MACs, mmcv's extra ops."""

    __slots__ = ("p", "m", "e")

    def __init__(self) -> None:
        self.p = self.m = self.e = 0

    def conv(self, cin: int, cout: int, k: int | tuple[int, int], s: int, h: int, w: int,
             groups: int = 1, norm: bool = True, act: bool = True, times: int = 1,
             params: bool = True, dilation: int = 1, bias: bool | None = None) -> tuple[int, int]:
        """A conv (padding 'same' per axis: dilation * (k // 2)) [+ norm] [+ ReLU], `times`
        identical copies; returns the output (h, w). `k` may be (kh, kw) for 1xk / kx1 convs.
        The conv has a bias exactly when it has no norm, unless `bias` says otherwise."""
        kh, kw = (k, k) if isinstance(k, int) else k
        ho = (h + 2 * dilation * (kh // 2) - dilation * (kh - 1) - 1) // s + 1
        wo = (w + 2 * dilation * (kw // 2) - dilation * (kw - 1) - 1) // s + 1
        has_bias = (not norm) if bias is None else bias
        n_out = cout * ho * wo
        self.m += times * n_out * (cin // groups) * kh * kw
        if params:
            self.p += times * (cout * (cin // groups) * kh * kw + (cout if has_bias else 0)
                               + (2 * cout if norm else 0))
        self.e += times * n_out * ((1 if has_bias else 0) + (2 if norm else 0) + (1 if act else 0))
        return ho, wo

    def linear(self, cin: int, cout: int, bias: bool = True, act: bool = False) -> None:
        """A Linear layer on one vector (MACs per sample). mmcv's linear hook counts the
        MACs alone (no bias adds, unlike its conv hook)."""
        self.m += cin * cout
        self.p += cin * cout + (cout if bias else 0)
        self.e += cout if act else 0

    def add(self, other: "Counter") -> None:
        self.p += other.p
        self.m += other.m
        self.e += other.e
