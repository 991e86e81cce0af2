"""The one check that the analytic cost equals a forward-hook count: every test of a cost
function goes through here, so a mismatch always reads the same way (per component, analytic
vs measured, with the difference).

    assert_cost_matches(spec_or_model, hw)   cost(spec, hw) == measured_cost(model, hw)
    measure_module(module, hw)               hook count of one bare module (an op, a sub-net)
"""

from __future__ import annotations

from torch import nn

from detectors.cost import ComponentCost, CostReport, components_of, cost
from detectors.macs import Counter
from detectors.measure import measured_cost
from detectors.model import build
from detectors.spec import DetectorSpec

__all__ = ["assert_cost_matches", "assert_counter_matches", "measure_module", "cost_diff"]

_FIELDS = ("params", "macs", "extra_flops")


def cost_diff(analytic: CostReport, measured: CostReport) -> list[str]:
    """One line per component (or missing component) where the two reports differ."""
    lines = []
    for name in dict.fromkeys([*analytic.components, *measured.components]):
        a, m = analytic.components.get(name), measured.components.get(name)
        if a is None or m is None:
            lines.append(f"{name}: only in the {'measured' if a is None else 'analytic'} report")
            continue
        parts = [f"{f} {getattr(a, f)} vs {getattr(m, f)} ({getattr(a, f) - getattr(m, f):+d})"
                 for f in _FIELDS if getattr(a, f) != getattr(m, f)]
        if parts:
            lines.append(f"{name}: " + ", ".join(parts))
    return lines


def assert_cost_matches(subject: DetectorSpec | nn.Module, hw: tuple[int, int]) -> CostReport:
    """cost(spec, hw) equals measured_cost(model, hw) in every component, in the spec's
    component order. `subject` is a spec
    (built here) or a built detector (its `.spec` is costed; pass one to reuse a model or to
    check trained / derived weights). Returns the measured report."""
    if isinstance(subject, DetectorSpec):
        spec, model = subject, build(subject)
    else:
        spec, model = subject.spec, subject
    analytic, measured = cost(spec, hw), measured_cost(model, hw)
    diff = cost_diff(analytic, measured)
    assert not diff, (f"analytic != hook count for spec {spec.name!r} ({spec.id}) at {hw} "
                      "(analytic vs measured):\n  " + "\n  ".join(diff))
    assert tuple(analytic.components) == components_of(spec), list(analytic.components)
    return measured


class _AsNeck(nn.Module):
    """One module under the component name 'neck', so measured_cost counts it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.neck = module

    def forward(self, x):
        return self.neck(x)


def measure_module(module: nn.Module, hw: tuple[int, int]) -> ComponentCost:
    """The hook count of one module on a (1, 3, H, W) zero input (its params, MACs, extras)."""
    return measured_cost(_AsNeck(module), hw).components["neck"]


def assert_counter_matches(counter: Counter, measured: ComponentCost, what: str = "") -> None:
    """An analytic Counter (a leaf cost function's totals) equals a measured component."""
    got = {"params": counter.p, "macs": counter.m, "extra_flops": counter.e}
    diff = [f"{f} {got[f]} vs {getattr(measured, f)} ({got[f] - getattr(measured, f):+d})"
            for f in _FIELDS if got[f] != getattr(measured, f)]
    assert not diff, f"analytic != hook count{' for ' + what if what else ''}: " + ", ".join(diff)
