"""The catalogue: every name a spec or recipe can use, mapped to its builder and its cost.

Each entry pairs an importable builder with the analytic cost function that mirrors it (tested
equal to a hook count over every entry, tests/test_catalog.py). A new family adds entries here
and its modules elsewhere (detectors/blocks/, necks, heads); nothing registers itself on import.

    BLOCKS  backbone blocks:  build(cin, width, stride) -> nn.Module
                              cost(counter, cin, width, stride, h, w, times=1) -> (h, w)
                              out channels = width * expansion
    STEMS   backbone stems:   build(width) -> nn.Module (output `width` channels at `stride`)
                              cost(counter, width, h, w) -> (h, w)
    NECKS   feature pyramids: build(neck_spec, in_channels) -> nn.Module mapping the list of
                              backbone maps at neck_spec.in_levels to as many maps of
                              neck_spec.channels at the same strides;
                              cost(counter, neck_spec, in_channels, sizes) -> None;
                              `options`: the frozen dataclass of the neck's own settings
                              (spec key neck.options), or None; `check`: check(detector_spec) raising
                              UserError for rules across the spec (fanet: its levels), or None
    HEADS   detection heads:  build(head_spec, in_channels, num_levels, num_anchors)
                              cost(counter, head_spec, in_channels, sizes, num_anchors) -> None
    ASSIGNERS  recipe.assigner.type: fn(anchors_per_level, gt_boxes, gt_ignore, config) -> Assignment
    LOSSES     recipe.loss.type: fn(LossInputs, LossWeights) -> {"total": ..., parts...}

Lookups (`block_entry(name)` ...) raise UserError naming the valid entries. This module
imports torch; detectors.spec imports it only inside validation, so `import detectors.spec`
stays light (and the import order spec -> catalog -> necks -> spec has no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from detectors.errors import UserError

__all__ = ["BlockEntry", "StemEntry", "NeckEntry", "HeadEntry", "BLOCKS", "STEMS", "NECKS",
           "HEADS", "ASSIGNERS", "LOSSES", "block_entry", "stem_entry", "neck_entry",
           "head_entry", "assigner_fn", "loss_fn", "lookup", "neck_out_levels"]


@dataclass(frozen=True)
class BlockEntry:
    build: Callable[..., Any]
    cost: Callable[..., tuple[int, int]]
    expansion: int = 1


@dataclass(frozen=True)
class StemEntry:
    build: Callable[[int], Any]
    cost: Callable[..., tuple[int, int]]
    stride: int  # output stride: 4 (stage 1 keeps it) or 2 (stage 1 strides)


@dataclass(frozen=True)
class NeckEntry:
    build: Callable[..., Any]
    cost: Callable[..., None]
    options: type | None = None
    # check(detector_spec) -> None: rules tying the neck to the rest of the spec (raises
    # UserError), run by DetectorSpec validation; None: no extra rules
    check: Callable[[Any], None] | None = None
    # A neck that makes its own pyramid (RSA's roll-out) names its output levels from its
    # spec; its cost function then returns their (h, w) sizes. None: outputs at in_levels.
    out_levels: Callable[..., tuple[int, ...]] | None = None


@dataclass(frozen=True)
class HeadEntry:
    build: Callable[..., Any]
    cost: Callable[..., None]
    # The FaceDetector subclass `build(spec)` makes for this head (a family whose inference is
    # more than one forward, e.g. RSA's forecast -> roll-out pipeline); None: FaceDetector.
    detector: type | None = None


from detectors import assign, heads, losses, multibox, necks  # noqa: E402
from detectors.asfd import autofem, drmc  # noqa: E402
from detectors.bfbox import blocks as bfbox, fpn as bfbox_fpn  # noqa: E402
from detectors.blocks import extra, mobilenet, mobilenet_v1, resnet, tv_resnet, vgg  # noqa: E402
from detectors.fanet import neck as fanet  # noqa: E402
from detectors.rsa import detector as rsa, lrn as rsa_lrn, unit as rsa_unit  # noqa: E402

BLOCKS: dict[str, BlockEntry] = {
    "basic": BlockEntry(resnet.BasicBlock, resnet.basic_cost),
    "bottleneck": BlockEntry(resnet.Bottleneck, resnet.bottleneck_cost, expansion=4),
    "depthwise": BlockEntry(mobilenet.DepthwiseBlock, mobilenet.depthwise_cost),
    "vgg": BlockEntry(vgg.VGGConv, vgg.vgg_conv_cost),
    "vgg_fc": BlockEntry(vgg.VGGFc, vgg.vgg_fc_cost),
    "ssd_extra": BlockEntry(vgg.SSDExtra, vgg.ssd_extra_cost),
    # BFBox's choice blocks (Fig. 2): bf_conv{k}, bf_dw{k}, bf_dw{k2}_{k3}, bf_dense{n}x{g}
    **{name: BlockEntry(build, cost) for name, (build, cost) in bfbox.BLOCKS.items()},
    "tv_basic": BlockEntry(tv_resnet.TVBasicBlock, tv_resnet.tv_basic_cost),
    "tv_bottleneck": BlockEntry(tv_resnet.TVBottleneck, tv_resnet.tv_bottleneck_cost, expansion=4),
    "ssd_extra_bn": BlockEntry(extra.ExtraBlock, extra.extra_cost),
}

STEMS: dict[str, StemEntry] = {
    "deep": StemEntry(resnet.deep_stem, resnet.deep_stem_cost, stride=4),
    "mobilenet": StemEntry(mobilenet.mobilenet_stem, mobilenet.mobilenet_stem_cost, stride=2),
    "vgg": StemEntry(vgg.vgg_stem, vgg.vgg_stem_cost, stride=4),
    "tv_resnet": StemEntry(tv_resnet.tv_stem, tv_resnet.tv_stem_cost, stride=4),
    "mobilenet_v1": StemEntry(mobilenet_v1.mobilenet_v1_stem, mobilenet_v1.mobilenet_v1_stem_cost,
                              stride=2),
}

NECKS: dict[str, NeckEntry] = {
    "pafpn": NeckEntry(necks.pafpn, necks.pafpn_cost),
    "fpn": NeckEntry(necks.fpn, necks.fpn_cost),
    "fanet": NeckEntry(fanet.fanet, fanet.fanet_cost, options=fanet.FANetOptions,
                       check=fanet.fanet_check),
    "bfbox_fpn": NeckEntry(bfbox_fpn.bfbox_fpn, bfbox_fpn.bfbox_fpn_cost,
                           options=bfbox_fpn.BFBoxFPNOptions, check=bfbox_fpn.bfbox_fpn_check),
    "autofem": NeckEntry(autofem.autofem, autofem.autofem_cost, options=autofem.AutoFEMOptions),
    "rsa": NeckEntry(rsa_unit.rsa_neck, rsa_unit.rsa_neck_cost, rsa_unit.RSAOptions,
                     out_levels=rsa_unit.rsa_out_levels),
}

HEADS: dict[str, HeadEntry] = {
    "scrfd": HeadEntry(heads.scrfd_head, heads.scrfd_head_cost),
    "retinanet": HeadEntry(heads.retinanet_head, heads.retinanet_head_cost),  # BFBox's detector
    "rsa_lrn": HeadEntry(rsa_lrn.lrn_head, rsa_lrn.lrn_head_cost, detector=rsa.RSADetector),
}

ASSIGNERS: dict[str, Callable[..., Any]] = {
    "atss": assign.atss_from_config,
    "iou": assign.iou_from_config,
}

LOSSES: dict[str, Callable[..., Any]] = {
    "scrfd": losses.scrfd_loss,
    "multibox": multibox.multibox_loss,
    "drmc": drmc.drmc_loss,
}


def neck_out_levels(neck_spec: Any) -> tuple[int, ...]:
    """The levels a neck outputs (in_levels, unless its entry makes its own pyramid)."""
    entry = neck_entry(neck_spec.type)
    return neck_spec.in_levels if entry.out_levels is None else entry.out_levels(neck_spec)


def lookup(table: dict, name: Any, what: str) -> Any:
    """table[name], or a UserError '<what> 'x' is not one of a, b, c'."""
    if not isinstance(name, str) or name not in table:
        raise UserError(f"{what} {name!r} is not one of {', '.join(table)}")
    return table[name]


def block_entry(name: str) -> BlockEntry:
    return lookup(BLOCKS, name, "block")


def stem_entry(name: str) -> StemEntry:
    return lookup(STEMS, name, "stem")


def neck_entry(name: str) -> NeckEntry:
    return lookup(NECKS, name, "neck type")


def head_entry(name: str) -> HeadEntry:
    return lookup(HEADS, name, "head type")


def assigner_fn(name: str) -> Callable[..., Any]:
    return lookup(ASSIGNERS, name, "assigner type")


def loss_fn(name: str) -> Callable[..., Any]:
    return lookup(LOSSES, name, "loss type")
