"""ZiCo (Li et al., "ZiCo: Zero-shot NAS via inverse Coefficient of Variation on Gradients",
ICLR 2023): per layer, how large the loss gradients are relative to how much they vary
between batches,

    Z = sum over conv / linear layers l of log( sum over weights w of l, with std_b(g_w) > 0,
                                                of mean_b |g_w| / std_b(g_w) )

with g_w = dL_b/dw on batch b, mean and (population) standard deviation over the batches. A
layer whose sum is 0 (no varying weight) adds nothing. For a detector the glue
(nas.proxies) splits the proxy batch into two halves, the two "batches" of the paper's N = 2,
each loss the recipe's training loss (detectors.train.batch_loss) in training mode.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["zico"]

_SCORED = (nn.modules.conv._ConvNd, nn.Linear)


def zico(model: nn.Module, losses: Sequence[Callable[[nn.Module], torch.Tensor]]) -> float:
    """Z over the batches whose scalar losses are `losses` (at least 2); the model's gradients
    are left cleared, its mode is the caller's."""
    if len(losses) < 2:
        raise ValueError("zico needs at least two batches")
    layers = [m for m in model.modules() if isinstance(m, _SCORED)]
    grads: list[list[torch.Tensor]] = [[] for _ in layers]
    for loss in losses:
        model.zero_grad(set_to_none=True)
        loss(model).backward()
        for k, m in enumerate(layers):
            g = m.weight.grad
            grads[k].append(torch.zeros(m.weight.numel(), dtype=torch.float64) if g is None
                            else g.detach().reshape(-1).to(torch.float64).cpu())
    model.zero_grad(set_to_none=True)
    score = 0.0
    for per_batch in grads:
        g = torch.stack(per_batch)  # (batches, weights)
        std = g.std(dim=0, unbiased=False)
        varying = std > 0
        total = float((g.abs().mean(dim=0)[varying] / std[varying]).sum())
        if total > 0:
            score += math.log(total)
    return score
