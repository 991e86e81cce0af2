"""The layers a spec runs, from the analytic cost model's own call trace (no model is built).

Every catalogue entry's cost function calls `Counter.conv` once per conv it builds (that is
how `detectors.cost` is exact, tests/test_catalog.py). `LayerCounter` records those calls as
`Layer`s, so every block, stem, neck and head, present and future, is traced without code of
its own. What a conv call does not cover (residual adds, pools, upsampling) is the counter's
element count `e` minus what the convs' norm/ReLU/bias contributed: `other_elems`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from detectors.macs import Counter
from detectors.spec import DetectorSpec

__all__ = ["Layer", "LayerCounter", "ComponentTrace", "layer_counter", "trace", "conv_weights"]


@dataclass(frozen=True)
class Layer:
    """One conv [+ norm] [+ ReLU] as built: channels, kernel, stride, input size, extras."""

    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    h: int
    w: int
    groups: int = 1
    dilation: int = 1
    norm: str = "bn"  # "bn", "gn" or "none"
    act: bool = True
    bias: bool = False

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def kind(self) -> str:
        """'conv' (dense), 'dw' (depthwise) or 'g<groups>' (other grouped convs)."""
        return "conv" if self.groups == 1 else "dw" if self.depthwise else f"g{self.groups}"

    def with_channels(self, cin: int, cout: int) -> "Layer":
        """The same layer at other channels (a depthwise layer stays depthwise)."""
        groups = cin if self.depthwise else self.groups
        return replace(self, cin=cin, cout=cin if self.depthwise else cout, groups=groups)

    @property
    def key(self) -> str:
        """Stable text key of a latency table row."""
        k = f"{self.kh}x{self.kw}" + (f"d{self.dilation}" if self.dilation != 1 else "")
        return (f"{self.kind}|{self.cin}>{self.cout}|k{k}|s{self.stride}|{self.h}x{self.w}|"
                f"{self.norm}|{'relu' if self.act else 'id'}|{'bias' if self.bias else 'nobias'}")

    @classmethod
    def from_key(cls, key: str) -> "Layer":
        kind, ch, k, s, hw, norm, act, bias = key.split("|")
        cin, cout = (int(x) for x in ch.split(">"))
        kk, _, dil = k[1:].partition("d")
        kh, kw = (int(x) for x in kk.split("x"))
        h, w = (int(x) for x in hw.split("x"))
        groups = 1 if kind == "conv" else cin if kind == "dw" else int(kind[1:])
        return cls(cin, cout, kh, kw, int(s[1:]), h, w, groups, int(dil or 1), norm,
                   act == "relu", bias == "bias")

    @property
    def weights(self) -> int:
        """Its conv weights: what a model reads from memory each time it runs the layer."""
        return self.cin // self.groups * self.cout * self.kh * self.kw

    @property
    def out_elems(self) -> int:
        """Elements of its output: what it writes to memory (the latency model's per_mact)."""
        def size(n: int, k: int) -> int:
            return (n + 2 * self.dilation * (k // 2) - self.dilation * (k - 1) - 1) // self.stride + 1

        return self.cout * size(self.h, self.kh) * size(self.w, self.kw)

    @property
    def macs(self) -> int:
        """Its MACs, as the cost model counts them (Counter.conv's own arithmetic)."""
        c = Counter()
        c.conv(self.cin, self.cout, (self.kh, self.kw), self.stride, self.h, self.w,
               groups=self.groups, dilation=self.dilation, params=False)
        return c.m


class LayerCounter(Counter):
    """A Counter that also records each conv call as (Layer, times)."""

    __slots__ = ("layers", "conv_e", "norm")

    def __init__(self, norm: str = "bn") -> None:
        super().__init__()
        self.layers: list[tuple[Layer, int]] = []
        self.conv_e = 0
        self.norm = norm  # what `norm=True` means in this component (heads may use GroupNorm)

    def conv(self, cin: int, cout: int, k, s: int, h: int, w: int, groups: int = 1,
             norm: bool = True, act: bool = True, times: int = 1, params: bool = True,
             dilation: int = 1, bias: bool | None = None) -> tuple[int, int]:
        before = self.e
        out = super().conv(cin, cout, k, s, h, w, groups=groups, norm=norm, act=act, times=times,
                           params=params, dilation=dilation, bias=bias)
        self.conv_e += self.e - before
        kh, kw = (k, k) if isinstance(k, int) else k
        has_bias = (not norm) if bias is None else bias
        self.layers.append((Layer(cin, cout, kh, kw, s, h, w, groups, dilation,
                                  self.norm if norm else "none", act, has_bias), times))
        return out

    @property
    def other_elems(self) -> int:
        return self.e - self.conv_e


@dataclass(frozen=True)
class ComponentTrace:
    layers: tuple[tuple[Layer, int], ...]  # (layer, copies)
    other_elems: int


def layer_counter(spec: DetectorSpec, component: str) -> LayerCounter:
    """The counter for one component of `spec`: its head's `norm` may be GroupNorm; the
    backbone's and neck's norms are BatchNorm."""
    return LayerCounter(getattr(spec.head, "norm", "bn") if component == "head" else "bn")


def trace(spec: DetectorSpec, input_hw: tuple[int, int]) -> dict[str, ComponentTrace]:
    """Component -> the layers its cost functions count at input_hw (H, W)."""
    from detectors.cost import count

    counters = count(spec, (int(input_hw[0]), int(input_hw[1])),
                     lambda component: layer_counter(spec, component))
    return {name: ComponentTrace(tuple(c.layers), c.other_elems) for name, c in counters.items()}


def conv_weights(spec: DetectorSpec, input_hw: tuple[int, int]) -> int:
    """The conv weights one forward pass reads: a layer's once per run (a head shared across
    levels, once per level), what the latency model's per_mweight term prices."""
    return sum(times * layer.weights for comp in trace(spec, input_hw).values()
               for layer, times in comp.layers)
