"""`build(spec) -> FaceDetector`: backbone + neck + head, with SCRFD's outputs and decoding.

See docs/architecture.md, "Model outputs". `model(images)` returns `HeadOutputs` (flattened per
level, rows y-major, then x, then anchor); `model.predict(images)` returns one `Detections` per
image (boxes xyxy in input pixels, after score threshold and NMS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from detectors.anchors import anchor_points, anchor_strides
from detectors.backbones import Backbone
from detectors.heads import NUM_KEYPOINTS
from detectors.necks import NeckOutput, build_neck
from detectors.postprocess import distance_to_boxes, nms, offsets_to_keypoints
from detectors.spec import DetectorSpec

__all__ = ["HeadOutputs", "Detections", "FaceDetector", "build", "decode_outputs", "init_weights"]


@dataclass
class HeadOutputs:
    """Raw outputs, one tensor per level l (strides `strides[l]`, map size feature_sizes[l]).

    cls_logits[l]: (N, H_l*W_l*A, 1) logits; box_dists[l]: (N, H_l*W_l*A, 4) l, t, r, b in
    stride units (scale applied); kps_offsets: None without keypoints, else per level
    (N, H_l*W_l*A, 10) (x, y) offsets of 5 points in stride units.
    """

    cls_logits: list[torch.Tensor]
    box_dists: list[torch.Tensor]
    kps_offsets: list[torch.Tensor] | None
    strides: tuple[int, ...]
    feature_sizes: list[tuple[int, int]]
    # Extra prediction sets trained beside the main one (e.g. ASFD's first shot, FANet's
    # hierarchy levels), each weighted by recipe.loss.aux_weight; ignored at inference.
    aux: list["HeadOutputs"] = field(default_factory=list)


@dataclass
class Detections:
    """One image's detections: boxes (K, 4) xyxy pixels, scores (K,), keypoints (K, 5, 2) or None."""

    boxes: torch.Tensor
    scores: torch.Tensor
    keypoints: torch.Tensor | None


def _flatten(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, A*k, H, W) -> (N, H*W*A, k): NHWC order, then split channels anchor-major."""
    n = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(n, -1, k)


class FaceDetector(nn.Module):
    """The detector of a DetectorSpec. Input: (N, 3, H, W) normalised RGB ((pixel-127.5)/128)."""

    def __init__(self, spec: DetectorSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = Backbone(spec.backbone)
        self.neck = build_neck(spec.neck, spec.backbone.out_channels)
        from detectors.catalog import head_entry

        self.head = head_entry(spec.head.type).build(
            spec.head, spec.neck.channels, len(spec.anchors.strides), spec.anchors.num_anchors)

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        c = self.backbone(images)
        feats = self.neck([c[lv - 2] for lv in self.spec.neck.in_levels])
        aux_sets: list = []
        if isinstance(feats, NeckOutput):  # necks with auxiliary feature sets
            feats, aux_sets = feats.maps, (feats.aux if self.training else [])
        out = self._predict(feats)
        out.aux = [self._predict(f) for f in aux_sets]
        return out

    def _predict(self, feats: list[torch.Tensor]) -> HeadOutputs:
        cls, box, kps = self.head(feats)
        return HeadOutputs(
            cls_logits=[_flatten(x, 1) for x in cls],
            box_dists=[_flatten(x, 4) for x in box],
            kps_offsets=None if kps is None else [_flatten(x, 2 * NUM_KEYPOINTS) for x in kps],
            strides=self.spec.anchors.strides,
            feature_sizes=[tuple(f.shape[-2:]) for f in feats],
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, score_thresh: float = 0.02, iou_thresh: float = 0.45,
                max_det: int | None = None) -> list[Detections]:
        """Decode, threshold scores, NMS per image (SCRFD's WIDER test: 0.02 / 0.45, no cap).

        Boxes are clamped to the input size. Runs in the model's current mode (call .eval()).
        """
        out = self(images)
        return decode_outputs(out, self.spec, images.shape[-2:], score_thresh, iou_thresh, max_det)


def decode_outputs(out: HeadOutputs, spec: DetectorSpec, input_hw, score_thresh: float = 0.02,
                   iou_thresh: float = 0.45, max_det: int | None = None) -> list[Detections]:
    """HeadOutputs -> per-image Detections (boxes xyxy pixels clamped to input_hw (H, W))."""
    device = out.cls_logits[0].device
    points = torch.cat(anchor_points(spec.anchors, out.feature_sizes, device))  # (M, 2)
    strides = torch.cat(anchor_strides(spec.anchors, out.feature_sizes, device))  # (M,)
    scores = torch.cat(out.cls_logits, 1).float().sigmoid()[..., 0]  # (N, M)
    dists = torch.cat(out.box_dists, 1).float()
    kps = None if out.kps_offsets is None else torch.cat(out.kps_offsets, 1).float()
    hw = (int(input_hw[0]), int(input_hw[1]))
    results = []
    for i in range(scores.shape[0]):
        sel = torch.nonzero(scores[i] > score_thresh).squeeze(1)
        boxes = distance_to_boxes(points[sel], dists[i, sel], strides[sel], max_hw=hw)
        keep = sel.new_tensor([]) if sel.numel() == 0 else nms(boxes, scores[i, sel], iou_thresh,
                                                             max_det=max_det)
        k = None
        if kps is not None:
            k = offsets_to_keypoints(points[sel][keep], kps[i, sel][keep], strides[sel][keep])
        results.append(Detections(boxes=boxes[keep], scores=scores[i, sel][keep], keypoints=k))
    return results


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


def build(spec: DetectorSpec) -> FaceDetector:
    """A FaceDetector for `spec` (or the subclass its head entry names), initialised as SCRFD
    (see init_weights)."""
    from detectors.catalog import head_entry

    model = (head_entry(spec.head.type).detector or FaceDetector)(spec)
    init_weights(model)
    return model
