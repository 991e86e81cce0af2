"""Measured cost of a built model: forward hooks count what the analytic cost() predicts.

`measured_cost(model, input_hw)` runs one no-grad forward of a zero image and counts, per
component (stem, c2..c5, neck, head, from module names), Conv2d/Linear multiply-accumulates,
`sum(p.numel())`, and mmcv's extra ops (conv bias: 1 per output element, a Linear's none;
BatchNorm/GroupNorm: 2 per element; ReLU: 1 per element; pools: 1 per input element). It is
the second, independent
method against which detectors.cost is tested, and the slow path benchmarked against it.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from detectors.cost import COMPONENTS, ComponentCost, CostReport, components_of

__all__ = ["component_of", "measured_cost"]


def component_of(name: str) -> str:
    """Component of a module/parameter name of FaceDetector ('backbone.stages.1.0...' -> 'c3')."""
    parts = name.split(".")
    if parts[0] == "backbone":
        return "stem" if parts[1] == "stem" else f"c{int(parts[2]) + 2}"
    return parts[0]


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    per_sample = out.numel() // out.shape[0]
    if isinstance(m, nn.Conv2d):
        return per_sample * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return per_sample * m.in_features  # nn.Linear


def _extra(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    n_in, n_out = inp.numel() // inp.shape[0], out.numel() // out.shape[0]
    if isinstance(m, nn.Linear):  # mmcv's linear hook: MACs only, no bias adds
        return 0
    if isinstance(m, nn.Conv2d):
        return n_out if m.bias is not None else 0
    if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        return 2 * n_in
    if isinstance(m, nn.ReLU):
        return n_out
    return n_in  # pools


_COUNTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d)


@torch.no_grad()
def measured_cost(model: nn.Module, input_hw: tuple[int, int]) -> CostReport:
    """Per-component params / MACs / mmcv extras of `model` on a (1, 3, H, W) input."""
    macs: dict[str, int] = defaultdict(int)
    extra: dict[str, int] = defaultdict(int)
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _COUNTED):
            comp = component_of(name)

            def hook(mod, inputs, out, comp=comp):
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    macs[comp] += _macs(mod, out)
                extra[comp] += _extra(mod, inputs[0], out)

            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.zeros(1, 3, *input_hw, device=param.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        params[component_of(name)] += p.numel()
    spec = getattr(model, "spec", None)
    names = components_of(spec) if spec is not None else COMPONENTS
    unknown = (set(params) | set(macs)) - set(names)
    if unknown:  # a module outside the named components would be silently dropped
        raise ValueError(f"modules outside the components {names}: {sorted(unknown)}")
    comps = {c: ComponentCost(params[c], macs[c], extra[c]) for c in names}
    return CostReport(input_hw=(int(input_hw[0]), int(input_hw[1])), components=comps)
