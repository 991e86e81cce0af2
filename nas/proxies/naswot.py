"""NASWOT (Mellor et al., "Neural Architecture Search without Training", ICML 2021).

Each input x_i of a minibatch gets a binary code c_i: for every ReLU unit of the network,
whether it is active (input > 0). The kernel K_H[i, j] = N_A - d_H(c_i, c_j) counts the units
on which inputs i and j agree (N_A units in all, d_H the Hamming distance); the score is
log |det K_H|. Networks that give distinct inputs distinct activation patterns score higher.

    K_H = C C^T + (1 - C)(1 - C)^T        C: (B, N_A) codes as 0/1

which is what the sum over every ReLU call below accumulates (a ReLU module applied twice, as
a residual block's shared `relu`, contributes both calls' units).

For a detector: every `nn.ReLU` call in the forward of the model in training mode (BN on the
batch's own statistics, as the authors score untrained networks), auxiliary prediction sets
included (ASFD's dual shot); ReLUs written as functions are not seen (the catalogue's blocks
use modules). The kernel is accumulated in float64; a singular kernel (two inputs with the
same pattern) scores -inf.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["naswot", "activation_kernel"]


def activation_kernel(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """K_H (B, B), float64: for each pair of inputs, the number of ReLU units that are both
    active or both inactive (module docstring)."""
    b = images.shape[0]
    kernel = torch.zeros(b, b, dtype=torch.float64)

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        codes = (output.detach() > 0).reshape(b, -1).to(torch.float64).cpu()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return kernel


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """log |det K_H| of `model` on the minibatch `images` (module docstring). The model's
    mode (train/eval) is the caller's."""
    sign, logdet = torch.linalg.slogdet(activation_kernel(model, images))
    return float(logdet) if float(sign) > 0 else float("-inf")
