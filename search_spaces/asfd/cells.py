"""The searchable parts of ASFD's AutoFEM (§3.2): mixed operations, the AutoFEM-FPN supernet
(Eq. 2 with PC-DARTS mixed ops) and the AutoFEM-CPM search cell (Eq. 3-5, Fig. 4b).

Architecture parameters are the parameters whose name starts with `arch_` (a DARTS strategy
optimises them separately); everything else is an ordinary weight.

- MixedOp: sum_o softmax(alpha)_o * o(x) over a candidate set. With partial channels K > 1
  (PC-DARTS) only the first C/K channels go through the ops, the rest bypass them, and a
  channel shuffle (K groups) mixes the two halves for the next edge.
- SearchFPN: Eq. 2 as in detectors.asfd.autofem, every path a MixedOp over S_FPN and the path
  weights beta_l (softmax: PC-DARTS edge normalisation).
- SearchCell, one per level, N intermediate nodes, in one of three modes:
    hard    (ASFD): node j takes exactly one predecessor i ~ Gumbel-softmax(gamma_j / tau),
            hard: only the MixedOp of edge (i, j) runs; forward weight exactly 1, backward the
            softmax's (straight-through), scaled by j, the number of candidates (Eq. 5); the
            sampled graph is a tree rooted at node 0 and the output concatenates its leaves;
    pcdarts x_j = sum_{i<j} softmax(gamma_j)_i * O_ij(x_i) (Eq. 3), output all nodes;
    darts   x_j = sum_{i<j} O_ij(x_i) over full channels (K = 1), output all nodes.
  The output is a 1x1 conv + BN + ReLU over the concatenated nodes; its weight has a slice per
  node, and only the slices of the concatenated nodes are used (in hard mode the leaves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.asfd.autofem import PATHS, cell_leaves
from detectors.blocks.conv import ConvNormAct, DepthwiseSeparable
from detectors.asfd.ops import OPS, S_CPM, S_FPN
from detectors.errors import UserError

__all__ = ["MODES", "MixedOp", "channel_shuffle", "gumbel_hard", "SearchFPN", "SearchCell"]

MODES = ("hard", "pcdarts", "darts")
ARCH_INIT_STD = 1e-3  # DARTS' initialisation of architecture parameters


def _arch(*shape: int) -> nn.Parameter:
    return nn.Parameter(ARCH_INIT_STD * torch.randn(*shape))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, H, W) -> channels interleaved across `groups` groups (ShuffleNet / PC-DARTS)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """(N, C, H, W) x weights (n_ops,) -> (N, C, H, W): the weighted sum of every candidate."""

    def __init__(self, names: tuple[str, ...], channels: int, partial: int = 1) -> None:
        super().__init__()
        if channels % partial:
            raise UserError(f"channels {channels} are not divisible by partial channels "
                            f"K={partial}")
        self.partial, self.width = partial, channels // partial
        self.ops = nn.ModuleList(OPS[n].build(self.width, self.width) for n in names)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        head, rest = x[:, :self.width], x[:, self.width:]
        mixed = sum(w * op(head) for w, op in zip(weights, self.ops))
        return channel_shuffle(torch.cat([mixed, rest], 1), self.partial)


def gumbel_hard(logits: torch.Tensor, tau: float, scale: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Hard Gumbel-softmax sample of one index. Returns (weights, index): weights equal the
    one-hot vector of `index` in the forward pass and carry `scale` x the gradient of
    softmax((logits + g) / tau) backward (Eq. 4-5; g ~ Gumbel(0, 1)).

    The uniforms are drawn on the generator's device (the search's is a CPU generator) and
    moved to the logits': a CUDA tensor cannot be filled from a CPU generator, and drawing on
    the CPU keeps one stream for every device, so a checkpoint's generator state resumes the
    same path draws on CPU or CUDA (a CUDA generator's stream differs from the CPU's)."""
    where = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=where).to(logits.device).clamp_(1e-10, 1.0)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, 0)
    index = int(soft.detach().argmax())
    hard = F.one_hot(torch.tensor(index, device=logits.device), len(logits)).to(soft.dtype)
    return hard + scale * (soft - soft.detach()), index


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SearchFPN(nn.Module):
    """Eq. 2 with mixed ops: [C_l] -> (laterals, [P_l]); architecture: arch_alpha_<path>
    (levels, |S_FPN|) op weights per path, arch_beta (levels, 3) path weights (absent paths
    masked out of the softmax)."""

    def __init__(self, in_channels: list[int], channels: int, partial: int) -> None:
        super().__init__()
        n = len(in_channels)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels)
        self.paths = nn.ModuleList(
            nn.ModuleDict({p: MixedOp(S_FPN, channels, partial) for p in PATHS
                           if p == "same" or (p == "top_down" and lv < n - 1)
                           or (p == "bottom_up" and lv > 0)}) for lv in range(n))
        self.arch_alpha = nn.ParameterDict({p: _arch(n, len(S_FPN)) for p in PATHS})
        self.arch_beta = _arch(n, len(PATHS))
        self.fuse_convs = nn.ModuleList(DepthwiseSeparable(channels, channels) for _ in range(n))
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    def _op(self, lv: int, path: str, x: torch.Tensor) -> torch.Tensor:
        return self.paths[lv][path](x, torch.softmax(self.arch_alpha[path][lv], 0))

    def forward(self, feats: list[torch.Tensor]):
        c = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        n = len(c)
        td, bu = list(c), list(c)
        for i in range(n - 2, -1, -1):
            td[i] = _up(self._op(i, "top_down", td[i + 1]), c[i]) * c[i]
        for i in range(1, n):
            bu[i] = self.pool(self._op(i, "bottom_up", bu[i - 1])) * c[i]
        outs = []
        for i in range(n):
            have = [True, i < n - 1, i > 0]
            terms = [self._op(i, "same", c[i]), td[i], bu[i]]
            beta = torch.softmax(self.arch_beta[i][torch.tensor(have, device=c[i].device)], 0)
            kept = [t for t, h in zip(terms, have) if h]
            outs.append(self.fuse_convs[i](sum(b * t for b, t in zip(beta, kept))))
        return c, outs


class SearchCell(nn.Module):
    """A CPM search cell (module docstring): (N, C, H, W) -> (N, C, H, W).

    arch_alpha (edges, |S_CPM|): op weights of edge (i, j), row j(j-1)/2 + i for 1-based j;
    arch_gamma_<j> (j,): input weights of node j. `tau`: the Gumbel temperature (set by the
    strategy's schedule); `generator`: the torch.Generator sampling draws from (None: global).
    After a hard forward, `sampled` holds each node's input.
    """

    def __init__(self, channels: int, nodes: int, mode: str = "hard", partial: int = 4,
                 gradient_scale: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserError(f"cell mode {mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(nodes, int) or nodes < 1:
            raise UserError(f"a search cell needs at least 1 intermediate node, got {nodes!r}")
        k = 1 if mode == "darts" else partial
        self.mode, self.nodes, self.channels = mode, nodes, channels
        self.gradient_scale = gradient_scale
        self.edges = nn.ModuleList(MixedOp(S_CPM, channels, k)
                                   for j in range(1, nodes + 1) for _ in range(j))
        self.arch_alpha = _arch(len(self.edges), len(S_CPM))
        self.arch_gamma = nn.ParameterList(_arch(j) for j in range(1, nodes + 1))
        self.out_conv = ConvNormAct(nodes * channels, channels, 1)
        self.tau = 1.0
        self.generator: torch.Generator | None = None
        self.sampled: list[int] = []

    @staticmethod
    def edge_index(i: int, j: int) -> int:
        return j * (j - 1) // 2 + i

    def _edge(self, i: int, j: int, x: torch.Tensor) -> torch.Tensor:
        e = self.edge_index(i, j)
        return self.edges[e](x, torch.softmax(self.arch_alpha[e], 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, self.sampled = [x], []
        for j in range(1, self.nodes + 1):
            gamma = self.arch_gamma[j - 1]
            if self.mode == "hard":
                w, i = gumbel_hard(gamma, self.tau, float(j) if self.gradient_scale else 1.0,
                                   self.generator)
                self.sampled.append(i)
                xs.append(w[i] * self._edge(i, j, xs[i]))
            elif self.mode == "pcdarts":
                w = torch.softmax(gamma, 0)
                xs.append(sum(w[i] * self._edge(i, j, xs[i]) for i in range(j)))
            else:
                xs.append(sum(self._edge(i, j, xs[i]) for i in range(j)))
        used = cell_leaves(self.sampled) if self.mode == "hard" else range(1, self.nodes + 1)
        return self._output([xs[j] for j in used], list(used))

    def _output(self, feats: list[torch.Tensor], nodes: list[int]) -> torch.Tensor:
        c = self.channels
        idx = torch.cat([torch.arange((j - 1) * c, j * c, device=feats[0].device) for j in nodes])
        conv = self.out_conv.conv
        y = F.conv2d(torch.cat(feats, 1), conv.weight[:, idx], conv.bias)
        return self.out_conv.act(self.out_conv.norm(y))
