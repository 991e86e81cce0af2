"""ImageNet-pretrained backbones from a torchvision-format state dict (`recipe.pretrained`).

A file saved by `torch.save(torchvision.models.<net>().state_dict())` (torchvision's weight
URLs hold exactly that) is mapped onto `model.backbone` by an explicit table per backbone
type, chosen from the spec's stem; nothing is matched by position or by shape:

    stem tv_resnet + blocks tv_basic / tv_bottleneck    torchvision resnet18 ... resnet152
        conv1, bn1                  -> stem.conv1, stem.bn1
        layer{k}.{j}.<m>            -> stages.{k-1}.{j}.<m>   (m: conv1..3, bn1..3, downsample.0/1)
    stem tv_resnet + blocks basic / bottleneck (RSA)   torchvision resnet, ConvNormAct names
        layer{k}.{j}.conv{i} / bn{i} -> stages.{k-1}.{j}.conv{i}.conv / .norm
        layer{k}.{j}.downsample.0/1  -> stages.{k-1}.{j}.shortcut.{p}.conv / .norm
                                        (p = 1 after the block's 2x2 average pool when it strides)
    stem vgg (VGG16 layout: stages 1-3 of three `vgg` blocks)   torchvision vgg16
        features.{0,2,5,7}          -> stem.{0,2,5,7}
        features.{10,12,14}         -> stages.0.{0,1,2}.0
        features.{17,19,21}         -> stages.1.0.1, stages.1.{1,2}.0   (a pool opens the stage)
        features.{24,26,28}         -> stages.2.0.1, stages.2.{1,2}.0

The classifier (`fc.*`, `classifier.*`) is dropped by rule and counted as such; backbone keys
the file does not give (C6/C7 extra layers, VGG's fc6/fc7) stay as initialised and are
reported as missing; file keys outside the table are reported as unexpected; a shape that
differs is an error naming the key. Other stems (SCRFD's `deep`, `mobilenet`, MobileNetV1)
have no torchvision counterpart (torchvision ships no MobileNetV1 and no ResNet-V1e).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from detectors.errors import UserError

__all__ = ["load_pretrained_backbone", "backbone_table", "read_state_dict", "maybe_load_pretrained"]

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_CONV = ("weight", "bias")
_CLASSIFIER = {"torchvision resnet": ("fc.",), "torchvision vgg16": ("classifier.",)}
_TV_BLOCKS = {"tv_basic", "tv_bottleneck"}
_CNA_BLOCKS = {"basic", "bottleneck"}
# torchvision vgg16 `features` index -> our module (see the module docstring)
VGG16_TABLE: dict[int, str] = {
    0: "stem.0", 2: "stem.2", 5: "stem.5", 7: "stem.7",
    10: "stages.0.0.0", 12: "stages.0.1.0", 14: "stages.0.2.0",
    17: "stages.1.0.1", 19: "stages.1.1.0", 21: "stages.1.2.0",
    24: "stages.2.0.1", 26: "stages.2.1.0", 28: "stages.2.2.0",
}


def _modules(table: Mapping[str, str], suffixes: tuple[str, ...]) -> dict[str, str]:
    return {f"{src}.{s}": f"{dst}.{s}" for src, dst in table.items() for s in suffixes}


def _resnet_table(spec) -> dict[str, str]:
    from detectors.backbones import stage_strides

    table = _modules({"conv1": "stem.conv1"}, _CONV) | _modules({"bn1": "stem.bn1"}, _BN)
    strides = stage_strides(spec.backbone)
    for k, stage in enumerate(spec.backbone.stages[:4]):  # torchvision has layer1..layer4
        kinds = set(stage.layer_blocks)
        if not kinds <= _TV_BLOCKS | _CNA_BLOCKS or (kinds & _TV_BLOCKS and kinds & _CNA_BLOCKS):
            break  # ASFD's C6/C7 extra layers: not in the file
        for j in range(stage.depth):
            src, dst = f"layer{k + 1}.{j}", f"stages.{k}.{j}"
            for i in (1, 2, 3):
                if kinds <= _TV_BLOCKS:
                    convs, bns = {f"conv{i}": f"conv{i}"}, {f"bn{i}": f"bn{i}"}
                else:
                    convs, bns = {f"conv{i}": f"conv{i}.conv"}, {f"bn{i}": f"conv{i}.norm"}
                table |= _modules({f"{src}.{a}": f"{dst}.{b}" for a, b in convs.items()}, _CONV)
                table |= _modules({f"{src}.{a}": f"{dst}.{b}" for a, b in bns.items()}, _BN)
            if kinds <= _TV_BLOCKS:
                down = {"downsample.0": "downsample.0", "downsample.1": "downsample.1"}
            else:
                p = 1 if j == 0 and strides[k] != 1 else 0
                down = {"downsample.0": f"shortcut.{p}.conv", "downsample.1": f"shortcut.{p}.norm"}
            table |= _modules({f"{src}.downsample.0": f"{dst}.{down['downsample.0']}"}, _CONV)
            table |= _modules({f"{src}.downsample.1": f"{dst}.{down['downsample.1']}"}, _BN)
    return table


def _vgg_table(spec) -> dict[str, str]:
    stages = spec.backbone.stages
    if len(stages) < 3 or any(s.layer_blocks != ("vgg",) * 3 for s in stages[:3]):
        raise UserError("recipe.pretrained: torchvision vgg16 needs the VGG16 layout (stem 'vgg', "
                        "stages 1-3 of three 'vgg' blocks), as experiments/models/fanet.yaml")
    return _modules({f"features.{i}": dst for i, dst in VGG16_TABLE.items()}, _CONV)


def backbone_table(spec) -> tuple[str, dict[str, str]]:
    """(network name, {torchvision key: our backbone key}) for the spec's backbone."""
    stem = spec.backbone.stem
    if stem == "tv_resnet":
        return "torchvision resnet", _resnet_table(spec)
    if stem == "vgg":
        return "torchvision vgg16", _vgg_table(spec)
    raise UserError(f"recipe.pretrained: backbone stem {stem!r} has no torchvision-format table "
                    f"(stems with one: tv_resnet, vgg; torchvision ships no MobileNetV1 or ResNet-V1e)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (tensors only, loaded on the CPU without unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe.pretrained.backbone: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"recipe.pretrained.backbone: {path} is not a PyTorch state dict ({first})") from None
    if (not isinstance(state, Mapping) or not state
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise UserError(f"recipe.pretrained.backbone: {path} is not a state dict (a mapping of "
                        f"parameter names to tensors, as torch.save(model.state_dict()) writes)")
    return dict(state)


def _names(keys: list[str], limit: int = 4) -> str:
    more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_pretrained_backbone(model: nn.Module, spec, path: str | Path) -> list[str]:
    """Copy the torchvision state dict at `path` into `model.backbone` (module docstring);
    returns the report: one line loaded/classifier, one line missing, one line unexpected."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise UserError("recipe.pretrained: this model has no backbone to load into")
    network, table = backbone_table(spec)
    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    own = backbone.state_dict()
    classifier = [k for k in state if k.startswith(_CLASSIFIER[network])]
    matched = {k: table[k] for k in state if k in table and table[k] in own}
    unexpected = [k for k in state if k not in matched and k not in classifier]
    if not matched:
        raise UserError(f"recipe.pretrained.backbone: {path}: none of its {len(state)} keys is a "
                        f"{network} backbone key (first: {next(iter(state))}); is it that network?")
    for src, dst in matched.items():
        if tuple(state[src].shape) != tuple(own[dst].shape):
            raise UserError(f"recipe.pretrained.backbone: {path}: {src} has shape "
                            f"{tuple(state[src].shape)}, the backbone's {dst} has {tuple(own[dst].shape)}")
    with torch.no_grad():
        for src, dst in matched.items():
            own[dst].copy_(state[src])  # state_dict() tensors share storage with the parameters
    missing = [k for k in own if k not in set(matched.values())]
    return [f"pretrained backbone {path} ({network}): {len(matched)} tensors loaded, "
            f"{len(classifier)} unused, classifier",
            f"pretrained backbone: {len(missing)} missing (kept as initialised): {_names(missing) or 'none'}",
            f"pretrained backbone: {len(unexpected)} unexpected (not loaded): {_names(unexpected) or 'none'}"]


def maybe_load_pretrained(model: nn.Module, config, resuming: bool = False) -> None:
    """The trainer's call: load `config.recipe.pretrained.backbone` when set, report to stderr.
    A resumed run skips it: its checkpoint holds the weights trained from that start."""
    path = config.recipe.pretrained.backbone
    if path and not resuming:
        for line in load_pretrained_backbone(model, config.spec, path):
            print(line, file=sys.stderr)
