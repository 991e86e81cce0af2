"""The RSA face detector (Liu et al., "Recurrent Scale Approximation for Object Detection in
CNN", ICCV 2017) as a trainable FaceDetector: `build(spec)` of a spec with head type 'rsa_lrn'.

    trunk (stem + res2a/res2b, the backbone)  ->  G^0 (stride 4)
    `rsa` neck: RSA unit rolled out M times (F^m ~ G^m), res3a on each  -> M + 1 scales
    `rsa_lrn` head: landmark retracing network per scale, plus the scale-forecast network

Pipeline (Fig. 2), `model.predict(images)`, per image (boxes xyxy in the input's pixels):
  1. scale forecast on the image at long side 224 -> bins -> Gaussian-mixture scales (Eq. 4);
     no scale: no faces (only the forecast ran);
  2. resize so the smallest forecast face is 64*sqrt(2) px (within [64, 128]); the long side
     is capped at options.max_side;
  3. trunk once, RSA roll-out only as deep as the largest forecast face needs;
  4. LRN at every computed scale (revised scores, Eq. 9-10);
  5. boxes of all scales back to the input frame, merged by one NMS (torchvision).
`model(images)` is the fixed-scale part (all M + 1 scales, no forecast): what training at the
trainer's level, `facenas cost` and `export-onnx` see. Training: `training_loss` (rsa_train).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detectors.rsa.forecast import (REFERENCE_SIDE, bin_to_size, forecast_input,
                                              select_scales)
from detectors.rsa.unit import RSAOptions
from detectors.errors import UserError
from detectors.detector import Detections, FaceDetector, HeadOutputs, decode_outputs, flatten_level
from detectors.heads import NUM_KEYPOINTS

__all__ = ["RSADetector", "mean_landmark_layout", "plan_scales", "TARGET_FACE"]

TARGET_FACE = 64 * math.sqrt(2)  # the anchor side: the smallest face is resized to it


def plan_scales(face_sizes: np.ndarray, long_side: int, max_side: int,
                rollouts: int) -> tuple[float, int]:
    """(resize factor, roll-out depth) for forecast face sizes (px in the input frame):
    the smallest face goes to TARGET_FACE (capped so long_side * factor <= max_side); the
    depth is the scale m (face in [64, 128) * 2^m) of the largest face, within 0..rollouts."""
    factor = min(TARGET_FACE / float(np.min(face_sizes)), max_side / long_side)
    top = float(np.max(face_sizes)) * factor
    depth = int(np.clip(math.floor(math.log2(max(top, 1.0) / 64.0)), 0, rollouts))
    return factor, depth


class RSADetector(FaceDetector):
    """FaceDetector of the RSA baseline (module docstring). Input (N, 3, H, W) normalised RGB."""

    def __init__(self, spec, backbone, neck, head) -> None:
        super().__init__(spec, backbone, neck, head)
        a = spec.anchors
        ratios = {b * a.scales[0] / s for b, s in zip(a.base_sizes, a.strides)}
        if a.num_anchors != 1 or len(ratios) != 1:
            raise UserError("an RSA spec has one anchor per scale whose side / stride is the "
                            "same at every level (anchors.base_sizes proportional to strides)")
        self.options: RSAOptions = spec.neck.options or RSAOptions()
        self.head.ratio.fill_(ratios.pop())
        self.head.layout.copy_(torch.tensor(self.options.landmark_layout))
        self.register_buffer("stage_initialised", torch.zeros((), dtype=torch.long))

    def forward(self, images: torch.Tensor, depth: int | None = None) -> HeadOutputs:
        """All (or the first depth + 1) scales' outputs, SCRFD layout, strides 8 * 2^m."""
        c = self.backbone(images)
        feats = self.neck([c[lv - 2] for lv in self.spec.neck.in_levels], depth)
        cls, box, kps = self.head(feats)
        return HeadOutputs(
            cls_logits=[flatten_level(x, 1) for x in cls], box_dists=[flatten_level(x, 4) for x in box],
            kps_offsets=[flatten_level(x, 2 * NUM_KEYPOINTS) for x in kps],
            strides=self.spec.anchors.strides[:len(feats)],
            feature_sizes=[tuple(f.shape[-2:]) for f in feats])

    def training_loss(self, images: torch.Tensor, batch: dict, recipe) -> tuple[dict, int]:
        """The recipe's RSA stage objective (detectors.rsa.training)."""
        from detectors.rsa.training import rsa_training_loss

        if recipe.rsa.init_weights and not int(self.stage_initialised):
            self.load_stage(recipe.rsa.init_weights)
        self.stage_initialised.fill_(1)
        # fp32 even under the trainer's bf16 autocast (CUDA): in bf16 the res3a gradients of
        # the smallest roll-out maps (1x1, 2x2) became NaN within 10 steps (CPU, channels_last;
        # oneDNN's bf16 conv backward on 1-pixel-wide inputs, detectors/device.py)
        with torch.autocast(images.device.type, enabled=False):
            return rsa_training_loss(self, images.float(), batch, recipe)

    def load_stage(self, path: str | os.PathLike) -> None:
        """Weights of an earlier stage's checkpoint (same spec), e.g. the trained forecast."""
        from detectors.checkpoint import load_checkpoint

        state = load_checkpoint(path)
        if state.get("spec") != self.spec.to_dict():
            raise UserError(f"recipe.rsa.init_weights {path}: a checkpoint of another spec "
                            f"(this run trains {self.spec.name!r}, id {self.spec.id})")
        weights = {k: v for k, v in state["model"].items() if k != "stage_initialised"}
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if k != "stage_initialised"]:
            raise UserError(f"recipe.rsa.init_weights {path}: weights do not fit this spec")

    @torch.no_grad()
    def forecast(self, image: torch.Tensor) -> np.ndarray:
        """(1, 3, H, W) -> the selected scales as face sizes (px in this image's frame)."""
        probs = self.head.forecast(forecast_input(image)).sigmoid()[0].float().cpu().numpy()
        bins = select_scales(probs, self.options.forecast_thresh, self.options.forecast_min_weight)
        return bin_to_size(bins) * max(image.shape[-2:]) / REFERENCE_SIDE

    @torch.no_grad()
    def predict(self, images: torch.Tensor, score_thresh: float = 0.02, iou_thresh: float = 0.45,
                max_det: int | None = None, pre_nms_top_k: int | None = None) -> list[Detections]:
        """The Fig. 2 pipeline per image (module docstring); boxes xyxy in input pixels."""
        return [self._predict_one(images[i:i + 1], score_thresh, iou_thresh, max_det, pre_nms_top_k)
                for i in range(images.shape[0])]

    def _predict_one(self, image, score_thresh, iou_thresh, max_det, pre_nms_top_k=None) -> Detections:
        h, w = image.shape[-2:]
        sizes = self.forecast(image)
        if sizes.size == 0:
            empty = image.new_zeros((0, 4))
            return Detections(empty, image.new_zeros(0), image.new_zeros((0, NUM_KEYPOINTS, 2)))
        factor, depth = plan_scales(sizes, max(h, w), self.options.max_side, self.options.rollouts)
        size = (max(32, round(h * factor)), max(32, round(w * factor)))
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                antialias=factor < 1)
        out = self(resized, depth)
        det = decode_outputs(out, self.spec, size, score_thresh, iou_thresh, max_det, pre_nms_top_k)[0]
        fx, fy = size[1] / w, size[0] / h
        back = det.boxes.new_tensor([fx, fy])
        return Detections(det.boxes / back.repeat(2), det.scores, det.keypoints / back)


def mean_landmark_layout(data_root: str | os.PathLike, split: str = "train") -> tuple[float, ...]:
    """The training set's mean landmark layout: mean over faces with landmarks of
    ((x - cx) / w, (y - cy) / h) per landmark, (x1, y1, ..., x5, y5) rounded to 3 decimals."""
    from detectors.data.widerface import load_split

    rows = []
    for r in load_split(Path(data_root), split, landmarks="auto").records:
        if r.keypoints_valid is None or not r.keypoints_valid.any():
            continue
        b = r.boxes_xyxy()[r.keypoints_valid]
        k = r.keypoints[r.keypoints_valid]
        wh = np.maximum(b[:, 2:] - b[:, :2], 1e-6)[:, None]
        rows.append((k - ((b[:, :2] + b[:, 2:]) / 2)[:, None]) / wh)
    if not rows:
        raise UserError(f"{data_root}: no landmark labels in the {split} split")
    mean = np.concatenate(rows).mean(0).reshape(-1)
    return tuple(round(float(v), 3) for v in mean)
