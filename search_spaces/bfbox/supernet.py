"""The BFBox single-path one-shot supernet (§4.1, §4.3): every choice of the space, shared.

`BFBoxSupernet(space)` holds, per backbone layer, one block of every candidate (ModuleDict by
catalogue name), the six FPN laterals, per merge one RF module of every kind, the shared head,
and (space.attention) the FPN-attention parameters. `model.path = path` selects the single
path the next forward runs (set per iteration by nas.strategies.spos); the forward of a path is
the function `build(space.template(path))` computes once loaded with `path_state_dict(path)`
(tests/test_bfbox_supernet.py).

FPN-attention (our reading of §4.3, docs/bfbox.md): merge k weighs its two inputs, its own
lateral i = k and the chosen input j, by w = 2 * softmax(a_k(i), a_k(j)), with logits

    a_k(j) = theta[k, j] + sum over the layers l of the backbone stage at pool member j's level
             of cond[k, j, l, choice(l)]

learnable per output level k and input j (theta) and conditioned on the backbone blocks that
produce input j's level (cond). All zeros at the start, so w = (1, 1) (the plain sum); for a
fixed path the weights are two numbers per merge, which is what `bfbox_fpn`'s `weighted`
option stores. With attention off the merge is the plain sum and there are no such parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detectors.bfbox.fpn import RF_MODULES, pool_levels, resize_to, rf_module
from detectors.blocks.conv import ConvNormAct
from detectors.catalog import block_entry, head_entry, stem_entry
from detectors.errors import UserError
from detectors.model import FaceDetector, init_weights
from search_spaces.bfbox.space import BFBoxPath, BFBoxSpace

__all__ = ["BFBoxSupernet", "build_supernet"]

_LEVELS = (2, 3, 4, 5, 6, 7)


class _SuperBackbone(nn.Module):
    """stem + stages[s][l][block name]; forward(x, path) -> [C2..C7]."""

    def __init__(self, space: BFBoxSpace) -> None:
        super().__init__()
        self.stem = stem_entry("deep").build(space.stem_width)
        choices, cin, i, stages = space.layer_choices(), space.stem_width, 0, []
        for s, (depth, width) in enumerate(zip(space.depths, space.widths)):
            layers = []
            for l in range(depth):
                stride = (1 if s == 0 else 2) if l == 0 else 1
                layers.append(nn.ModuleDict(
                    {name: block_entry(name).build(cin, width, stride) for name in choices[i]}))
                cin, i = width, i + 1
            stages.append(nn.ModuleList(layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, path: BFBoxPath) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage, names in zip(self.stages, path.blocks):
            for layer, name in zip(stage, names):
                x = layer[name](x)
            outs.append(x)
        return outs


class _SuperFPN(nn.Module):
    """Laterals, per merge every RF module, and the FPN-attention logits."""

    def __init__(self, space: BFBoxSpace) -> None:
        super().__init__()
        n, m = space.neck_channels, space.merges
        self.space = space
        self.levels = pool_levels(_LEVELS, m)
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, n, 1, norm=None, act=False) for c in space.widths)
        self.rf = nn.ModuleList(
            nn.ModuleDict({name: rf_module(name, n) for name in RF_MODULES}) for _ in range(m))
        choices = space.layer_choices()
        self._layers_of_stage = _layers_by_stage(space.depths)
        if space.attention:
            pool = len(_LEVELS) + m - 1
            self.attn_theta = nn.Parameter(torch.zeros(m, pool))
            self.attn_cond = nn.Parameter(torch.zeros(m, pool, len(choices),
                                                      max(len(c) for c in choices)))

    def merge_weights(self, path: BFBoxPath) -> torch.Tensor | None:
        """(M, 2) weights of each merge's (own lateral, chosen input) for `path`, or None."""
        if not self.space.attention:
            return None
        genes = self.space.encode(path)
        rows = []
        for k, j in enumerate(path.inputs):
            logits = torch.stack([self._logit(k, k, genes), self._logit(k, j, genes)])
            rows.append(2 * torch.softmax(logits, 0))
        return torch.stack(rows)

    def _logit(self, k: int, j: int, genes) -> torch.Tensor:
        stage = self.levels[j] - _LEVELS[0]
        layers = self._layers_of_stage[stage]
        cond = self.attn_cond[k, j, layers, torch.as_tensor(genes[layers], device=self.attn_cond.device)].sum()
        return self.attn_theta[k, j] + cond

    def forward(self, feats: list[torch.Tensor], path: BFBoxPath) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        weights = self.merge_weights(path)
        pool = list(laterals)
        for k, (j, name) in enumerate(zip(path.inputs, path.rf)):
            other = resize_to(pool[j], self.levels[j], self.levels[k], laterals[k].shape[-2:])
            if weights is None:
                x = laterals[k] + other
            else:
                w = weights[k].to(other.dtype)
                x = w[0] * laterals[k] + w[1] * other
            pool.append(self.rf[k][name](x))
        return pool[len(laterals):] + laterals[len(path.inputs):]


def _layers_by_stage(depths: tuple[int, ...]) -> list[list[int]]:
    out, i = [], 0
    for d in depths:
        out.append(list(range(i, i + d)))
        i += d
    return out


class BFBoxSupernet(FaceDetector):
    """All paths of a BFBoxSpace with shared weights; `path` selects what forward runs.

    Outputs are FaceDetector's (HeadOutputs; `predict` decodes them), so the one trainer and
    the test path take it as any detector. `spec` is the default path's spec: every path shares
    its anchors and head."""

    def __init__(self, space: BFBoxSpace) -> None:
        nn.Module.__init__(self)
        self.space = space
        self.spec = space.template(space.default_path())
        self.backbone = _SuperBackbone(space)
        self.neck = _SuperFPN(space)
        self.head = head_entry(self.spec.head.type).build(
            self.spec.head, space.neck_channels, len(_LEVELS), self.spec.anchors.num_anchors)
        self.path: BFBoxPath | None = None

    def forward(self, images: torch.Tensor):
        if self.path is None:
            raise UserError("the bfbox supernet needs a path (model.path = ...) before forward")
        feats = self.neck(self.backbone(images, self.path), self.path)
        return self._predict(feats)

    def path_state_dict(self, path: BFBoxPath) -> dict[str, torch.Tensor]:
        """The weights of `build(space.template(path))` taken from this supernet (copies)."""
        self.space.encode(path)
        out: dict[str, Any] = {}
        for name, value in self.state_dict().items():
            target = _standalone_name(name, path)
            if target is not None:
                out[target] = value.detach().clone()
        weights = self.neck.merge_weights(path)
        if weights is not None:
            out["neck.merge_weights"] = weights.detach().clone()
        return out


def _standalone_name(name: str, path: BFBoxPath) -> str | None:
    """Supernet parameter/buffer name -> the standalone model's, or None if off the path."""
    parts = name.split(".")
    if parts[:2] == ["backbone", "stages"]:
        s, l, choice = int(parts[2]), int(parts[3]), parts[4]
        if path.blocks[s][l] != choice:
            return None
        return ".".join(parts[:4] + parts[5:])
    if parts[:2] == ["neck", "rf"]:
        k, choice = int(parts[2]), parts[3]
        if k >= len(path.rf) or path.rf[k] != choice:
            return None
        return ".".join(["neck", "rf_modules", str(k)] + parts[4:])
    if parts[:2] == ["neck", "attn_theta"] or parts[:2] == ["neck", "attn_cond"]:
        return None
    return name


def build_supernet(space: BFBoxSpace) -> BFBoxSupernet:
    """A supernet initialised as every detector (detectors.model.init_weights)."""
    model = BFBoxSupernet(space)
    init_weights(model)
    return model
