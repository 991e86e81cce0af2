"""Run an ONNX face detector in onnxruntime: the independent reference path.

This is deliberately separate from the PyTorch test path (detectors.test / postprocess): it
preprocesses, decodes and suppresses on its own, so that agreement between the two is
evidence that both are right (issue 4, item 4).

It runs two kinds of ONNX file:
- *raw* (the published SCRFD export, and `facenas export-onnx --raw`): outputs
  `score_{s}` (1, H_s*W_s*A, 1) sigmoid scores, `bbox_{s}` (1, H_s*W_s*A, 4) distances
  (left, top, right, bottom) in units of the stride s, `kps_{s}` (1, H_s*W_s*A, 10) keypoint
  (x, y) offsets in units of s; rows ordered y-major, then x, then anchor a;
- *decoded* (`facenas export-onnx --decoded`): outputs `boxes` (N, K, 4) xyxy pixels of the
  network input, `scores` (N, K), optionally `keypoints` (N, K, 5, 2), all before NMS.

Preprocessing is the test path's own `detectors.test.preprocess` (README of the published
model: resize keeping the aspect ratio so the long side is the test size, normalise
(pixel - 127.5) / 128, pad with 0 at the bottom/right), so that a comparison of the two paths
measures the network, decoding, NMS and mapping back, not two resize implementations.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

from detectors.errors import UserError

__all__ = ["decode_raw", "OnnxDetector", "OnnxDetections", "predict_split_onnx"]

_RAW_NAME = re.compile(r"^(score|bbox|kps)_(\d+)$")


def decode_raw(scores: np.ndarray, dists: np.ndarray, kps: np.ndarray | None, stride: int,
               height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decode one image's raw outputs of one stride level.

    scores (R, 1), dists (R, 4) in stride units, kps (R, 10) in stride units or None, with
    R = height * width * A for a (height, width) feature map. Returns boxes (R, 4) xyxy pixels,
    scores (R,), keypoints (R, 5, 2) pixels or None. Anchor point of cell (y, x) is (x*s, y*s).
    """
    rows = scores.shape[0]
    anchors = rows // (height * width)
    if anchors * height * width != rows:
        raise UserError(f"stride {stride}: {rows} rows do not fit a {height}x{width} feature map")
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 1, 2).astype(np.float32) * stride
    # Rows are (y, x, a): repeat every cell centre A times.
    centres = np.repeat(centres, anchors, axis=1).reshape(-1, 2)
    d = dists * stride
    boxes = np.concatenate([centres - d[:, :2], centres + d[:, 2:]], axis=1)
    points = None
    if kps is not None:
        points = centres[:, None, :] + kps.reshape(-1, 5, 2) * stride
    return boxes, scores.reshape(-1), points


@dataclass
class OnnxDetections:
    """Detections of one image in original-image pixels: boxes (K, 4) xyxy, scores (K,),
    keypoints (K, 5, 2) or None; sorted by descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None


class OnnxDetector:
    """An ONNX face detector (raw or decoded outputs, see the module docstring)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort  # heavy; only when an ONNX model is actually run

        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise UserError(f"{path} is not a loadable ONNX model ({str(err).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.decoded = "boxes" in self.output_names
        if not self.decoded:
            self.strides = sorted({int(m.group(2)) for m in map(_RAW_NAME.match, self.output_names) if m})
            if not self.strides:
                raise UserError(f"{path}: outputs {self.output_names} are neither raw "
                                "(score_8, bbox_8, ...) nor decoded (boxes, scores)")

    def run(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        """Run the network on a (N, 3, H, W) float32 blob; returns {output name: array}."""
        outputs = self.session.run(None, {self.input_name: blob})
        return dict(zip(self.output_names, outputs))

    def candidates(self, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Pre-NMS candidates of the first image of `blob`, in network-input pixels:
        boxes (R, 4) xyxy, scores (R,), keypoints (R, 5, 2) or None."""
        out = self.run(blob)
        if self.decoded:
            kps = out.get("keypoints")
            return out["boxes"][0], out["scores"][0], None if kps is None else kps[0]
        height, width = blob.shape[2:]
        parts = [decode_raw(out[f"score_{s}"][0], out[f"bbox_{s}"][0],
                            out[f"kps_{s}"][0] if f"kps_{s}" in out else None,
                            s, -(-height // s), -(-width // s)) for s in self.strides]
        boxes = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        kps = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        return boxes, scores, kps

    def detect(self, image: np.ndarray, size: int = 640, score_thresh: float = 0.02,
               iou_thresh: float = 0.45) -> OnnxDetections:
        """uint8 (H, W, 3) RGB image -> detections in its pixels: preprocess, run, decode,
        keep scores > score_thresh, NMS (no cap on the count, as SCRFD's WIDER test), scale
        back. As SCRFD's mmdet test (`distance2bbox(..., max_shape=img_shape)`), boxes are
        clamped to the resized, unpadded image before NMS (its onnx demo code does not clamp;
        on the 250 mini-val images that costs 0.005 / 0.003 / 0.002 AP)."""
        from detectors.test import preprocess  # the test path's resize + pad (see docstring)

        blob, (sx, sy) = preprocess(image, size)
        boxes, scores, kps = self.candidates(blob[None].numpy())
        keep = scores > score_thresh
        boxes, scores = boxes[keep], scores[keep]
        height, width = image.shape[0] * sy, image.shape[1] * sx  # the resized image, unpadded
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        order = nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou_thresh).numpy()
        back = np.array([sx, sy], dtype=np.float32)
        kept_kps = None if kps is None else kps[keep][order] / back
        return OnnxDetections(boxes[order] / np.tile(back, 2), scores[order], kept_kps)


def predict_split_onnx(detector: OnnxDetector, data_root: str | os.PathLike, split: str = "val",
                       size: int = 640, score_thresh: float = 0.02, iou_thresh: float = 0.45,
                       image_ids: list[str] | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """The ONNX model's own predictions for a split: image_id -> (N, 5) float64 x, y, w, h,
    score in original pixels (the layout `detectors.evaluate.evaluate` takes)."""
    from tqdm import tqdm

    from detectors.data.widerface import load_split, read_image

    records = load_split(data_root, split).records
    if image_ids is not None:
        wanted = set(image_ids)
        records = [r for r in records if r.image_id in wanted]
    out: dict[str, np.ndarray] = {}
    for record in tqdm(records, desc=f"onnx {split}", disable=not progress, unit="img"):
        det = detector.detect(read_image(record.path, f"{record.source}:{record.line}"), size,
                              score_thresh, iou_thresh)
        b = det.boxes.astype(np.float64)
        out[record.image_id] = np.column_stack([b[:, :2], b[:, 2:] - b[:, :2], det.scores])
    return out
