"""FaceDetector: backbone + neck + head as one module, with SCRFD's outputs and decoding.

`FaceDetector(spec, backbone, neck, head)` wires built parts; `detectors.model.build(spec)` makes
the parts from the catalogue. Outputs follow SCRFD's layout (per stride level, rows y-major,
then x, then anchor); `model.predict(images)` returns one `Detections` per image (boxes xyxy in
input pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from detectors.anchors import anchor_points, anchor_strides
from detectors.heads import NUM_KEYPOINTS
from detectors.necks import NeckOutput
from detectors.postprocess import distance_to_boxes, nms, offsets_to_keypoints, top_k

if TYPE_CHECKING:
    from detectors.spec import DetectorSpec

__all__ = ["HeadOutputs", "Detections", "FaceDetector", "decode_outputs", "flatten_level"]


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


def flatten_level(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, A*k, H, W) -> (N, H*W*A, k): NHWC order, then split channels anchor-major."""
    n = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(n, -1, k)


class FaceDetector(nn.Module):
    """The detector of a DetectorSpec. Input: (N, 3, H, W) normalised RGB ((pixel-127.5)/128).

    Built from its parts (detectors.model.build makes them from the catalogue), so that a
    family's subclass (RSA's pipeline) can sit below the catalogue that names it.
    """

    def __init__(self, spec: DetectorSpec, backbone: nn.Module, neck: nn.Module,
                 head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.neck = neck
        self.head = head

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
            cls_logits=[flatten_level(x, 1) for x in cls],
            box_dists=[flatten_level(x, 4) for x in box],
            kps_offsets=None if kps is None else [flatten_level(x, 2 * NUM_KEYPOINTS) for x in kps],
            strides=self.spec.anchors.strides,
            feature_sizes=[tuple(f.shape[-2:]) for f in feats],
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, score_thresh: float = 0.02, iou_thresh: float = 0.45,
                max_det: int | None = None, pre_nms_top_k: int | None = None) -> list[Detections]:
        """Decode, threshold scores, NMS per image (SCRFD's WIDER test: 0.02 / 0.45, no cap;
        pre_nms_top_k keeps that many highest scores before NMS, ASFD: 5000).

        Boxes are clamped to the input size. Runs in the model's current mode (call .eval()).
        """
        out = self(images)
        return decode_outputs(out, self.spec, images.shape[-2:], score_thresh, iou_thresh, max_det,
                              pre_nms_top_k)


def decode_outputs(out: HeadOutputs, spec: DetectorSpec, input_hw, score_thresh: float = 0.02,
                   iou_thresh: float = 0.45, max_det: int | None = None,
                   pre_nms_top_k: int | None = None) -> list[Detections]:
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
        sel = sel[top_k(scores[i, sel], pre_nms_top_k)]
        boxes = distance_to_boxes(points[sel], dists[i, sel], strides[sel], max_hw=hw)
        keep = sel.new_tensor([]) if sel.numel() == 0 else nms(boxes, scores[i, sel], iou_thresh,
                                                             max_det=max_det)
        k = None
        if kps is not None:
            k = offsets_to_keypoints(points[sel][keep], kps[i, sel][keep], strides[sel][keep])
        results.append(Detections(boxes=boxes[keep], scores=scores[i, sel][keep], keypoints=k))
    return results


