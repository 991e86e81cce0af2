"""ASFD's AutoFEM as derived by the search: the `autofem` neck (ASFD §3.1-3.2, Eq. 2, Fig. 4b).

    neck: {type: autofem, channels: 64, in_levels: [2, 3, 4, 5, 6, 7], options: {
      fpn: [[conv1x1, sep3x3, null], ..., [conv1x1, null, dil3x3_r2]],   # per level, finest first
      cpm: [[[0, sep3x3], [1, conv1x3], [0, dil3x3_r2]], ...],           # per level: nodes
      repeats: 1}}

One AutoFEM stage = AutoFEM-FPN then (when `cpm` is given) one AutoFEM-CPM cell per level;
`repeats` stages are stacked (ASFD's AutoFEM depth, docs/asfd.md). Per level l of L (C_l at
`channels` after a lateral 1x1 conv + BN + ReLU), our reading of Eq. 2 (whose P^td / P^bu are
the intermediate nodes of the top-down and bottom-up paths):

    TD_L = C_L,  TD_l = up(O_l^td(TD_{l+1})) * C_l          (bilinear up to C_l's size)
    BU_1 = C_1,  BU_l = maxpool(O_l^bu(BU_{l-1})) * C_l      (2x2/s2, ceil mode)
    P_l  = F_c(b_l^0 O_l^0(C_l) + b_l^td TD_l [l < L] + b_l^bu BU_l [l > 1])

with the O's the searched operations (detectors.asfd.ops, S_FPN), b_l = softmax of learnable
per-level scalars (kept after the search, as Eq. 2), F_c a 3x3 depthwise-separable conv, `*`
element-wise. A CPM cell is a tree rooted at its input (node 0): node j applies its op (S_CPM)
to node `input_j` < j; the leaves (nodes no other node reads) are concatenated and a 1x1 conv
+ BN + ReLU maps them back to `channels`.

Dual shot (§3.1): the module returns NeckOutput(maps=enhanced, aux=[first stage's laterals]):
in training the shared head also predicts from the original (lateral-projected) features, the
first shot, weighted by recipe.loss.aux_weight (lambda_2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from detectors.asfd.ops import S_CPM, S_FPN, op_entry
from detectors.blocks.conv import ConvNormAct, DepthwiseSeparable, depthwise_separable_cost
from detectors.errors import UserError
from detectors.macs import Counter
from detectors.necks import NeckOutput

if TYPE_CHECKING:  # a catalogue leaf: importing the spec at run time would close a cycle
    from detectors.spec import NeckSpec

__all__ = ["AutoFEMOptions", "AutoFEM", "FPNStage", "CPMCell", "autofem", "autofem_cost",
           "PATHS", "cell_leaves"]

PATHS = ("same", "top_down", "bottom_up")


@dataclass(frozen=True)
class AutoFEMOptions:
    """The derived architecture. fpn[l] = (same, top_down, bottom_up) op names (S_FPN) of level
    l, finest first; top_down is None at the top level, bottom_up None at the finest. cpm: ()
    for no CPM, else one cell per level, a cell being its nodes' (input, op) pairs (op in S_CPM,
    input of node j (1-based) in 0..j-1). repeats: AutoFEM stages stacked."""

    fpn: tuple[tuple[str | None, str | None, str | None], ...]
    cpm: tuple[tuple[tuple[int, str], ...], ...] = ()
    repeats: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.fpn, tuple) or not self.fpn:
            raise UserError(f"autofem fpn must list each level's 3 ops, got {self.fpn!r}")
        n = len(self.fpn)
        for lv, ops in enumerate(self.fpn):
            if not isinstance(ops, tuple) or len(ops) != 3:
                raise UserError(f"autofem fpn[{lv}] must be [same, top_down, bottom_up], "
                                f"got {ops!r}")
            for path, op in zip(PATHS, ops):
                exists = path == "same" or (path == "top_down" and lv < n - 1) or (
                    path == "bottom_up" and lv > 0)
                if exists:
                    op_entry(op, S_FPN, f"autofem fpn[{lv}] {path} op")
                elif op is not None:
                    raise UserError(f"autofem fpn[{lv}] has no {path} path (level {lv} of {n}): "
                                    f"write null, not {op!r}")
        if not isinstance(self.cpm, tuple) or (self.cpm and len(self.cpm) != n):
            raise UserError(f"autofem cpm must be empty or one cell per level ({n}), got "
                            f"{len(self.cpm) if isinstance(self.cpm, tuple) else self.cpm!r}")
        for lv, cell in enumerate(self.cpm):
            _check_cell(lv, cell)
        if not isinstance(self.repeats, int) or isinstance(self.repeats, bool) or self.repeats < 1:
            raise UserError(f"autofem repeats must be an integer >= 1, got {self.repeats!r}")


def _check_cell(lv: int, cell) -> None:
    if not isinstance(cell, tuple) or not cell:
        raise UserError(f"autofem cpm[{lv}] has 0 nodes; a cell needs at least one node")
    for j, node in enumerate(cell, start=1):
        if (not isinstance(node, tuple) or len(node) != 2 or not isinstance(node[0], int)
                or isinstance(node[0], bool)):
            raise UserError(f"autofem cpm[{lv}] node {j} must be [input, op], got {node!r}")
        if not 0 <= node[0] < j:
            raise UserError(f"autofem cpm[{lv}] node {j} input {node[0]} must be in 0..{j - 1}")
        op_entry(node[1], S_CPM, f"autofem cpm[{lv}] node {j} op")


def cell_leaves(inputs: list[int] | tuple[int, ...]) -> list[int]:
    """Nodes (1-based) that no later node reads, given each node's input (a tree's leaves)."""
    used = set(inputs)
    return [j for j in range(1, len(inputs) + 1) if j not in used]


def _resize_up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FPNStage(nn.Module):
    """Laterals + Eq. 2 over L levels: [C_l (N, cin_l, H_l, W_l)] -> (laterals, [P_l])."""

    def __init__(self, in_channels: list[int], channels: int,
                 fpn: tuple[tuple[str | None, ...], ...]) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels)
        self.paths = nn.ModuleList(
            nn.ModuleDict({p: op_entry(op).build(channels, channels)
                           for p, op in zip(PATHS, ops) if op is not None}) for ops in fpn)
        self.path_logits = nn.ParameterList(
            nn.Parameter(torch.zeros(sum(op is not None for op in ops))) for ops in fpn)
        self.fuse_convs = nn.ModuleList(DepthwiseSeparable(channels, channels) for _ in fpn)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        c = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        n = len(c)
        td, bu = list(c), list(c)
        for i in range(n - 2, -1, -1):
            td[i] = _resize_up(self.paths[i]["top_down"](td[i + 1]), c[i]) * c[i]
        for i in range(1, n):
            bu[i] = self.pool(self.paths[i]["bottom_up"](bu[i - 1])) * c[i]
        outs = []
        for i in range(n):
            terms = [self.paths[i]["same"](c[i])]
            terms += [td[i]] if i < n - 1 else []
            terms += [bu[i]] if i > 0 else []
            beta = torch.softmax(self.path_logits[i], 0)
            outs.append(self.fuse_convs[i](sum(b * t for b, t in zip(beta, terms))))
        return c, outs


class CPMCell(nn.Module):
    """A derived CPM cell: (N, channels, H, W) -> same shape (see the module docstring)."""

    def __init__(self, channels: int, nodes: tuple[tuple[int, str], ...]) -> None:
        super().__init__()
        self.inputs = [i for i, _ in nodes]
        self.node_ops = nn.ModuleList(op_entry(op).build(channels, channels) for _, op in nodes)
        self.leaves = cell_leaves(self.inputs)
        self.out_conv = ConvNormAct(len(self.leaves) * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [x]
        for i, op in zip(self.inputs, self.node_ops):
            xs.append(op(xs[i]))
        return self.out_conv(torch.cat([xs[j] for j in self.leaves], 1))


class AutoFEM(nn.Module):
    """`repeats` x (FPNStage, CPM cells); forward -> NeckOutput(maps=[P_l], aux=[laterals])."""

    def __init__(self, in_channels: list[int], channels: int, options: AutoFEMOptions) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.cells = nn.ModuleList()
        for r in range(options.repeats):
            cins = in_channels if r == 0 else [channels] * len(in_channels)
            self.stages.append(FPNStage(cins, channels, options.fpn))
            self.cells.append(nn.ModuleList(CPMCell(channels, cell) for cell in options.cpm))

    def forward(self, feats: list[torch.Tensor]) -> NeckOutput:
        first = None
        for stage, cells in zip(self.stages, self.cells):
            laterals, feats = stage(feats)
            first = laterals if first is None else first
            if len(cells):
                feats = [cell(f) for cell, f in zip(cells, feats)]
        return NeckOutput(maps=feats, aux=[first])


def _check_levels(spec: NeckSpec) -> AutoFEMOptions:
    opts = spec.options
    if len(opts.fpn) != len(spec.in_levels):
        raise UserError(f"autofem neck: options.fpn lists {len(opts.fpn)} levels but in_levels "
                        f"has {len(spec.in_levels)}")
    return opts


def autofem(spec: NeckSpec, in_channels: list[int]) -> AutoFEM:
    return AutoFEM(in_channels, spec.channels, _check_levels(spec))


def _fpn_cost(c: Counter, fpn, cins: list[int], n: int, sizes: list[tuple[int, int]]) -> None:
    L = len(sizes)
    for cin, (h, w) in zip(cins, sizes):
        c.conv(cin, n, 1, 1, h, w)  # lateral
    for i, ((h, w), ops) in enumerate(zip(sizes, fpn)):
        op_entry(ops[0]).cost(c, n, n, h, w)  # same level
        if i < L - 1:  # top-down: the op runs on level i+1, then bilinear up (not counted)
            op_entry(ops[1]).cost(c, n, n, *sizes[i + 1])
        if i > 0:  # bottom-up: the op runs on level i-1, then the max-pool reads its output
            op_entry(ops[2]).cost(c, n, n, *sizes[i - 1])
            c.e += n * sizes[i - 1][0] * sizes[i - 1][1]
        c.p += sum(op is not None for op in ops)  # path weights
        depthwise_separable_cost(c, n, n, h, w)  # F_c


def cell_cost(c: Counter, n: int, nodes, h: int, w: int) -> None:
    """Cost of one CPMCell at (h, w)."""
    for _, op in nodes:
        op_entry(op).cost(c, n, n, h, w)
    c.conv(len(cell_leaves([i for i, _ in nodes])) * n, n, 1, 1, h, w)


def autofem_cost(c: Counter, spec: NeckSpec, in_channels: list[int],
                 sizes: list[tuple[int, int]]) -> None:
    opts, n = _check_levels(spec), spec.channels
    for r in range(opts.repeats):
        _fpn_cost(c, opts.fpn, in_channels if r == 0 else [n] * len(sizes), n, sizes)
        for cell, (h, w) in zip(opts.cpm, sizes):
            cell_cost(c, n, cell, h, w)
