"""The gradient norm at initialisation (Abdelfattah et al., "Zero-cost proxies for
lightweight NAS", ICLR 2021): the Euclidean norm of the gradient of the training loss on one
batch with respect to every trainable parameter,

    G = || dL/dtheta ||_2 = sqrt(sum over parameters of sum(grad^2))

(the one global norm; the zero-cost-nas code sums per-layer norms of conv / linear weights
instead). For a detector, L is the recipe's training loss (detectors.train.batch_loss: the
assigner, the loss and any auxiliary prediction sets, as one iteration of the trainer computes
it) in training mode (BN on batch statistics), fp32.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["grad_norm"]


def grad_norm(model: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> float:
    """G for the scalar `loss(model)` (module docstring); the model's gradients are left
    cleared, its mode is the caller's."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    loss(model).backward()
    total = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is not None:
            total += p.grad.detach().to(torch.float64).pow(2).sum().cpu()
    model.zero_grad(set_to_none=True)
    return float(total.sqrt())
