"""Predicted latency of a DetectorSpec on a measured device: `detectors.latency(spec, table)`.

The model (say which, the issue asks): additive over layers plus fitted whole-model terms.

    latency = scale * sum over the spec's layers of table[layer]      (interpolated, table.py)
              + per_melem * other elements / 1e6                      (adds, pools, upsampling)
              + per_mweight * conv weights / 1e6                      (weights read from memory)
              + per_mact * conv output elements / 1e6                 (activations written)
              + overhead_ms                                           (once per model)

The layers are the convs the analytic cost model counts (trace.py), so every catalogue entry
is priced without code of its own. scale, per_melem, per_mweight, per_mact and overhead_ms are
fitted by
non-negative least squares on whole models measured when the table was profiled (profile.py);
an unfitted table uses 1, 0, 0, 0, 0. Per component, `scale * layers + per_melem * elems +
per_mweight * weights + per_mact * activations`: components add up to the total minus the
overhead.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

from detectors.errors import UserError
from detectors.latency.table import LatencyTable, corners
from detectors.latency.trace import ComponentTrace, trace
from detectors.spec import DetectorSpec

__all__ = ["LatencyPrediction", "latency", "missing_layers", "component_ms", "price",
           "LatencyTable"]


@dataclass(frozen=True)
class LatencyPrediction:
    total_ms: float
    components: dict[str, float]  # ms per component (stem, c2.., neck, head), before overhead
    overhead_ms: float
    layers_ms: float  # the raw sum of table rows (before the fit)


def missing_layers(spec: DetectorSpec, table: LatencyTable) -> list[tuple[str, str]]:
    """(component, grid layer key) of every table row `spec` needs that the table lacks."""
    out: dict[str, str] = {}
    for name, comp in trace(spec, table.input_hw).items():
        for layer, _ in comp.layers:
            for corner, _ in corners(layer, table.channel_block):
                if corner.key not in table.layers:
                    out.setdefault(corner.key, name)
    return [(name, key) for key, name in out.items()]


def component_ms(comp: ComponentTrace, table: LatencyTable) -> tuple[float, float]:
    """(fitted ms, raw table ms) of one traced component; KeyError-free: None rows raise."""
    raw, weights, acts = 0.0, 0, 0
    for layer, times in comp.layers:
        ms = table.layer_ms(layer)
        if ms is None:
            raise LookupError(layer)
        raw += times * ms
        weights += times * layer.weights
        acts += times * layer.out_elems
    fit = table.fit
    return (fit.scale * raw + fit.per_melem * comp.other_elems / 1e6
            + fit.per_mweight * weights / 1e6 + fit.per_mact * acts / 1e6), raw


def price(counter, table: LatencyTable) -> float:
    """Fitted ms of what a LayerCounter recorded (one piece of a spec), NaN when the table
    lacks one of its rows: the samplers price pieces this way and reject NaN."""
    try:
        return component_ms(ComponentTrace(tuple(counter.layers), counter.other_elems), table)[0]
    except LookupError:
        return float("nan")


def latency(spec: DetectorSpec, table: LatencyTable) -> LatencyPrediction:
    """Predicted latency of one forward pass of `spec` at the table's input size."""
    comps, raw_total = {}, 0.0
    for name, comp in trace(spec, table.input_hw).items():
        try:
            comps[name], raw = component_ms(comp, table)
        except LookupError:
            missing = missing_layers(spec, table)
            where, key = missing[0]
            raise UserError(
                f"latency table ({table.describe}) lacks {len(missing)} layer(s) of spec "
                f"{spec.name!r}, e.g. {key} in its {where}; extend it with `facenas latency "
                f"profile --spec SPEC -o TABLE` (it adds only the missing rows)") from None
        raw_total += raw
    overhead = table.fit.overhead_ms
    return LatencyPrediction(sum(comps.values()) + overhead, comps, overhead, raw_total)


class _CallableModule(types.ModuleType):
    """`detectors.latency(spec, table)` (the issue's API), as `detectors.cost(spec)`."""

    def __call__(self, spec: DetectorSpec, table: LatencyTable) -> LatencyPrediction:
        return latency(spec, table)


sys.modules[__name__].__class__ = _CallableModule
