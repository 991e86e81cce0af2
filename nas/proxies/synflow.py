"""SynFlow (Tanaka et al., "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020), as a zero-cost proxy (Abdelfattah et al. 2021).

Every parameter is replaced by its absolute value, the input is all ones (one image of the
batch's shape), and R = 1^T f(1) is the sum of the network's outputs; the score is

    S = sum over conv / linear weights theta of |theta * dR/dtheta|

(biases and norm parameters are not scored, as in both references). Computed in float64: R
is a product of |weights| along every path and overflows float32 in deep nets. For a chain of
L bias-free linear layers, R = 1^T |W_L| ... |W_1| 1 and each layer's terms sum to R (R is
linear in each layer's weights), so S = L R.

How the detector is handled:
- normalisation layers (BatchNorm, GroupNorm) are neutral: replaced by the identity, as the
  zero-cost-nas `synflow` (bn=False) removes them. A norm would divide the all-ones flow by
  data statistics (GroupNorm of a constant map is 0), which is not the synaptic flow of the
  weights; with identities every ReLU sees non-negative input and the network is linear in
  each weight, as the definition assumes. SCRFD's zero-initialised residual norms are thus
  bypassed (their weight 0 would otherwise cut each residual branch out of the flow);
- the model runs in eval mode (no auxiliary prediction sets, as at test time);
- its several outputs are summed into one R: every level's classification logits, box
  distances and keypoint offsets (HeadOutputs), each element once.

The model given is not changed (the score is computed on a float64 copy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["synflow", "output_sum"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
_SCORED = (nn.modules.conv._ConvNd, nn.Linear)


def output_sum(out: object) -> torch.Tensor:
    """The sum of every element of every tensor in a model's output (a tensor, a list or tuple
    of them, or a dataclass such as HeadOutputs; None and non-tensor fields are skipped)."""
    if isinstance(out, torch.Tensor):
        return out.sum()
    if isinstance(out, (list, tuple)):
        parts = [output_sum(o) for o in out]
    elif hasattr(out, "__dataclass_fields__"):
        parts = [output_sum(getattr(out, name)) for name in out.__dataclass_fields__]
    else:
        return torch.zeros((), dtype=torch.float64)
    parts = [p for p in parts if p is not None]
    return torch.stack([p.to(torch.float64) for p in parts]).sum() if parts else \
        torch.zeros((), dtype=torch.float64)


def _neutral_norms(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NORMS):
                setattr(parent, name, nn.Identity())


def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """S of `model` for one all-ones input of shape `input_shape` (C, H, W) (see module
    docstring)."""
    net = copy.deepcopy(model)
    _neutral_norms(net)
    net = net.double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *input_shape), dtype=torch.float64,
                      device=next(net.parameters()).device)
    output_sum(net(ones)).backward()
    score = torch.zeros((), dtype=torch.float64)
    for m in net.modules():
        if isinstance(m, _SCORED) and m.weight.grad is not None:
            score += (m.weight.detach() * m.weight.grad).abs().sum().cpu()
    return float(score)
