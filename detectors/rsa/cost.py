"""RSA's operations split as the paper's Table 1 (scale forecast / RSA / LRN), per roll-out depth.

    pipeline_cost(spec, input_hw, depth) -> {"forecast", "trunk", "rsa", "lrn"} ComponentCost

at the pipeline's input (H, W) (VGA: 480 x 640) for scales 0..depth: the forecast network at
long side 224; the trunk (conv1 .. res2b) once; the RSA unit `depth` times; the LRN (res3a and
the landmark / RPN branches) at each of the depth + 1 scales. Built from the catalogue entries'
cost functions (each tested equal to a hook count), so no model is built.
"""

from __future__ import annotations

from detectors.rsa.forecast import FORECAST_SIDE, forecast_cost
from detectors.rsa.lrn import _level_cost
from detectors.rsa.unit import rsa_unit_cost
from detectors.blocks.resnet import basic_cost
from detectors.cost import ComponentCost, cost
from detectors.macs import Counter

__all__ = ["pipeline_cost"]


def _as_cost(c: Counter) -> ComponentCost:
    return ComponentCost(c.p, c.m, c.e)


def pipeline_cost(spec, input_hw: tuple[int, int], depth: int) -> dict[str, ComponentCost]:
    """MACs of one image through the pipeline with scales 0..depth (params: each part's own)."""
    h, w = input_hw
    s = FORECAST_SIDE / max(h, w)
    fc = Counter()
    forecast_cost(fc, max(1, round(h * s)), max(1, round(w * s)))
    report = cost(spec, input_hw)
    trunk = ComponentCost(report.components["stem"].params + report.components["c2"].params,
                          report.components["stem"].macs + report.components["c2"].macs)
    from detectors.cost import backbone_sizes

    sizes = backbone_sizes(spec, h, w, [Counter() for _ in range(2)])
    cin, maps, rsa = spec.backbone.stages[0].out_channels, [sizes[0]], Counter()
    for m in range(depth):
        maps.append(rsa_unit_cost(rsa, cin, *maps[-1], params=m == 0))
    lrn = Counter()
    for i, (mh, mw) in enumerate(maps):
        probe = Counter()
        lh, lw = basic_cost(probe, cin, spec.neck.channels, 2, mh, mw)
        _level_cost(probe, spec.head, spec.neck.channels, lh, lw)
        lrn.m, lrn.e, lrn.p = lrn.m + probe.m, lrn.e + probe.e, lrn.p + (probe.p if i == 0 else 0)
    return {"forecast": _as_cost(fc), "trunk": trunk, "rsa": _as_cost(rsa), "lrn": _as_cost(lrn)}
