"""ASFD's AutoFEM search space (§3.2): the supernet neck, and derive() -> a DetectorSpec.

    config = SupernetConfig(mode="hard", nodes=6, partial=4)
    model = build_supernet(base_spec, config)       # a FaceDetector whose neck is the supernet
    ... train it (nas/strategies/darts.py: weights by SGD, architecture by Adam) ...
    spec = derive(model, base_spec)                 # neck: autofem with the strongest choices

The base spec gives the backbone, head, anchors and the neck's channels and levels (its neck
type is replaced). The supernet neck is AutoFEM-FPN (search_spaces/asfd/cells.py SearchFPN) then
one AutoFEM-CPM search cell per level (SearchCell), and like the derived neck it returns the
laterals as the dual shot's first feature set. Both modules are searched jointly here (the
paper searched them one after the other and cascaded the results).

derive() is deterministic, ties going to the first candidate: per FPN path the op of largest
alpha; per CPM node the input of largest gamma and, on that edge, the op of largest alpha.
`derive_from_checkpoint(path)` does the same from a search run's checkpoint.pt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detectors.asfd.autofem import PATHS, AutoFEMOptions
from detectors.asfd.ops import S_CPM, S_FPN
from detectors.errors import UserError
from detectors.model import FaceDetector, build_parts, init_weights
from detectors.necks import NeckOutput
from detectors.spec import DetectorSpec, NeckSpec
from search_spaces.asfd.cells import MODES, SearchCell, SearchFPN

__all__ = ["SPACE", "SupernetConfig", "AutoFEMSupernet", "build_supernet", "derive",
           "derive_options", "architecture", "derive_from_checkpoint", "arch_parameters",
           "weight_parameters"]

SPACE = "asfd"


@dataclass(frozen=True)
class SupernetConfig:
    """nodes: CPM intermediate nodes N; partial: PC-DARTS K (1/K of the channels through the
    ops); mode: 'hard' (ASFD), 'pcdarts' or 'darts' (the CPM cell, asfd_cells); gradient_scale:
    Eq. 5's factor in hard mode; search_cpm: False searches the FPN only."""

    nodes: int = 6
    partial: int = 4
    mode: str = "hard"
    gradient_scale: bool = True
    search_cpm: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"supernet mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise UserError(f"supernet nodes must be an integer >= 1 (a cell with 0 nodes has "
                            f"no output), got {self.nodes!r}")
        if not isinstance(self.partial, int) or self.partial < 1:
            raise UserError(f"supernet partial must be an integer >= 1, got {self.partial!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AutoFEMSupernet(nn.Module):
    """[C_l] -> NeckOutput(maps=[P_l after the CPM cells], aux=[laterals])."""

    def __init__(self, in_channels: list[int], channels: int, config: SupernetConfig) -> None:
        super().__init__()
        self.config = config
        self.fpn = SearchFPN(in_channels, channels, config.partial)
        self.cells = nn.ModuleList(
            SearchCell(channels, config.nodes, config.mode, config.partial, config.gradient_scale)
            for _ in in_channels) if config.search_cpm else nn.ModuleList()

    def forward(self, feats: list[torch.Tensor]) -> NeckOutput:
        laterals, maps = self.fpn(feats)
        if len(self.cells):
            maps = [cell(x) for cell, x in zip(self.cells, maps)]
        return NeckOutput(maps=maps, aux=[laterals])

    def set_temperature(self, tau: float) -> None:
        for cell in self.cells:
            cell.tau = tau

    def set_generator(self, generator: torch.Generator | None) -> None:
        for cell in self.cells:
            cell.generator = generator


def build_supernet(base: DetectorSpec, config: SupernetConfig) -> FaceDetector:
    """A FaceDetector of `base` whose neck is the AutoFEM supernet over base.neck's levels."""
    model = FaceDetector(base, *build_parts(base))
    cins = [base.backbone.out_channels[lv - 2] for lv in base.neck.in_levels]
    model.neck = AutoFEMSupernet(cins, base.neck.channels, config)
    init_weights(model)
    return model


def _neck(model: nn.Module) -> AutoFEMSupernet:
    neck = model.neck if isinstance(model, FaceDetector) else model
    if not isinstance(neck, AutoFEMSupernet):
        raise UserError(f"not an ASFD supernet: {type(neck).__name__}")
    return neck


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture parameters (names starting with arch_ at any depth)."""
    return [p for name, p in model.named_parameters()
            if any(part.startswith("arch_") for part in name.split("."))]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    ids = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in ids]


def _argmax(values: torch.Tensor) -> int:
    """Index of the largest value; ties go to the first (torch.argmax's rule, made explicit)."""
    v = values.detach().cpu().tolist()
    return v.index(max(v))


def derive_options(model: nn.Module) -> AutoFEMOptions:
    neck = _neck(model)
    fpn = neck.fpn
    n = len(fpn.lateral_convs)
    levels = []
    for lv in range(n):
        have = (True, lv < n - 1, lv > 0)
        levels.append(tuple(S_FPN[_argmax(fpn.arch_alpha[p][lv])] if h else None
                            for p, h in zip(PATHS, have)))
    cells = []
    for cell in neck.cells:
        nodes = []
        for j in range(1, cell.nodes + 1):
            i = _argmax(cell.arch_gamma[j - 1])
            nodes.append((i, S_CPM[_argmax(cell.arch_alpha[cell.edge_index(i, j)])]))
        cells.append(tuple(nodes))
    return AutoFEMOptions(fpn=tuple(levels), cpm=tuple(cells))


def derive(model: nn.Module, base: DetectorSpec, name: str | None = None) -> DetectorSpec:
    """The discrete AutoFEM detector: base with an `autofem` neck of the strongest choices."""
    neck = NeckSpec("autofem", base.neck.channels, base.neck.in_levels, derive_options(model))
    return dataclasses.replace(base, name=name or f"{base.name}-autofem", neck=neck)


def architecture(model: nn.Module) -> dict[str, list]:
    """Softmax-normalised architecture weights as plain lists (for the search history)."""
    neck = _neck(model)
    out: dict[str, list] = {f"fpn.{p}": torch.softmax(neck.fpn.arch_alpha[p].detach(), 1).tolist()
                            for p in PATHS}
    out["fpn.beta"] = neck.fpn.arch_beta.detach().tolist()
    for k, cell in enumerate(neck.cells):
        out[f"cpm{k}.alpha"] = torch.softmax(cell.arch_alpha.detach(), 1).tolist()
        out[f"cpm{k}.gamma"] = [torch.softmax(g.detach(), 0).tolist() for g in cell.arch_gamma]
    return out


def supernet_identity(base: DetectorSpec, config: SupernetConfig) -> dict[str, Any]:
    """What a search checkpoint records about its space (TrainHooks.identity)."""
    return {"space": SPACE, "base_spec": base.to_dict(), "supernet": config.to_dict()}


def derive_from_checkpoint(path: str | Path, name: str | None = None) -> DetectorSpec:
    """derive() from a search run's checkpoint.pt; UserError if it is not an ASFD search's."""
    from detectors.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    state = load_checkpoint(path)
    ident = state.get("hooks_identity") or {}
    if ident.get("space") != SPACE:
        other = ident.get("space") or "no search space (a plain training run)"
        raise UserError(f"{path} is a checkpoint of {other}, not of the asfd space")
    base = DetectorSpec.from_dict(ident["base_spec"])
    model = build_supernet(base, SupernetConfig(**ident["supernet"]))
    model.load_state_dict(state["model"])
    return derive(model, base, name)
