"""`build(spec) -> FaceDetector`: the assembly of a detector from the catalogue's parts.

Backbone (detectors.backbones), neck and head builders are looked up by the spec's names in
detectors.catalog; the module class is detectors.detector.FaceDetector (or the subclass the
head entry names), initialised as SCRFD's code does. HeadOutputs, Detections, FaceDetector and
decode_outputs are re-exported from detectors.detector.
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.anchors import anchor_sizes
from detectors.backbones import Backbone
from detectors.catalog import head_entry, neck_entry
from detectors.config import BOX_INITS
from detectors.detector import Detections, FaceDetector, HeadOutputs, decode_outputs
from detectors.spec import DetectorSpec, NeckSpec

__all__ = ["HeadOutputs", "Detections", "FaceDetector", "build", "build_parts", "build_neck",
           "decode_outputs", "init_weights", "init_box_bias"]


# SCRFD's classification prior: sigmoid(-4.595) ~= 0.01 at the start of training
CLS_BIAS_INIT = -4.595


def init_weights(model: FaceDetector) -> None:
    """SCRFD's initialisation: Kaiming for backbone convs, N(0, 0.01) for head convs, the
    classification bias at CLS_BIAS_INIT, norms to weight 1 / bias 0 (neck keeps PyTorch's),
    except the last norm of each residual block, which starts at weight 0."""
    for m in model.backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in model.head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for conv in getattr(model.head, "cls_preds", ()):  # heads without one keep their own
        nn.init.constant_(conv.bias, CLS_BIAS_INIT)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # SCRFD's ResNet keeps mmdet's zero_init_residual=True: each residual branch ends in a
    # norm with weight 0, so every block starts as identity (Goyal et al. 2017), which eases
    # training deep stacks (sampled d_i go up to 24) from scratch. Tiny shallow nets learn
    # slower this way (tests/test_train.py's memorisation run needs more iterations).
    # Blocks with a residual branch say how (detectors/blocks: `zero_init_residual()`).
    for m in model.backbone.modules():
        if hasattr(m, "zero_init_residual"):
            m.zero_init_residual()


def init_box_bias(model: nn.Module, box_init: str) -> None:
    """How a model's box regression starts (recipe.box_init, detectors.config.BOX_INITS).

    "point" keeps init_weights' N(0, 0.01) weights and zero bias (SCRFD's): every box starts
    as a point at its anchor, and whether its width l + r is positive depends on the sign of
    the weights' sum, fixed at initialisation. An anchor whose boxes start inverted has IoU 0
    with every face, so the DIoU loss gives its sides no gradient and QFL's target (that IoU)
    is 0: it never learns (docs/proxies.md, "Dead anchors"). "anchor" sets the bias of each
    anchor's l, t, r, b channels to half its anchor box at the conv's first level, in stride
    units (base size x scale / 2 / stride), so every anchor's first boxes are its anchor
    boxes, as an anchor-based head's zero offsets are. Heads without `reg_preds` (RSA's LRN)
    have no box regression and are left alone.
    """
    head = getattr(model, "head", None)
    convs = getattr(head, "reg_preds", None)
    if box_init == "point" or convs is None:
        return
    if box_init not in BOX_INITS:
        raise ValueError(f"box_init must be one of {', '.join(BOX_INITS)}, not {box_init!r}")
    anchors = model.spec.anchors
    with torch.no_grad():
        for level, conv in enumerate(convs):  # one conv per level, or one shared (level 0)
            half = anchor_sizes(anchors, level) / (2 * anchors.strides[level])  # (A, 2) w, h
            conv.bias.copy_(torch.cat([half, half], 1).reshape(-1).to(conv.bias))  # l, t, r, b


def build_neck(spec: NeckSpec, backbone_channels: tuple[int, ...]) -> nn.Module:
    """backbone_channels: channels of C2, C3, ...; the neck reads spec.in_levels of them."""
    cins = [backbone_channels[lv - 2] for lv in spec.in_levels]
    return neck_entry(spec.type).build(spec, cins)


def build_parts(spec: DetectorSpec) -> tuple[Backbone, nn.Module, nn.Module]:
    """(backbone, neck, head) of `spec`, from the catalogue's builders (not initialised)."""
    backbone = Backbone(spec.backbone)
    neck = build_neck(spec.neck, spec.backbone.out_channels)
    head = head_entry(spec.head.type).build(
        spec.head, spec.neck.channels, len(spec.anchors.strides), spec.anchors.num_anchors)
    return backbone, neck, head


def build(spec: DetectorSpec) -> FaceDetector:
    """A FaceDetector for `spec` (or the subclass its head entry names), initialised as SCRFD
    (see init_weights)."""
    model = (head_entry(spec.head.type).detector or FaceDetector)(spec, *build_parts(spec))
    init_weights(model)
    return model
