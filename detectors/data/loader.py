"""WIDER FACE samples for torch: dataset and collate (training batches: detectors.batches).

`WiderFaceDataset(root, split, transform)` reads a root in the official layout (real WIDER
FACE, widerface-mini or the synthetic default) through detectors.data.widerface and yields the
samples of docs/architecture.md ("Data samples"): invalid faces and zero-size boxes become
ignore regions (neither positive nor negative), never positives.

Reproducibility: detectors.batches feeds the dataset keys (index, sample seed); the sample's
augmentation draws only from a generator seeded by that seed, a function of (run seed, stream
position). So batches are identical whatever the number of workers and whichever worker loads
a sample, and a run restarted at iteration i sees the batches an uninterrupted run saw. Plain
integer keys draw from NumPy's global state instead.

Decoding uses torchvision.io by default: on WIDER-size JPEGs it measured 3.0 ms/image against
PIL's 4.7 ms (to a numpy array; median of 40 images, 2-core CPU, one torch thread;
benchmarks/data_speed.py --decoders, 2026-12-07).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detectors.data.widerface import ImageRecord, load_split, read_image

__all__ = ["WiderFaceDataset", "collate", "decode_image"]


def decode_image(path: Path, decoder: str = "torchvision", listed_at: str = "") -> np.ndarray:
    """uint8 (H, W, 3) RGB. decoder: 'torchvision' (torchvision.io, faster) or 'pil'.

    Files torchvision cannot decode go through PIL, which decodes more formats and raises
    UserError naming a missing or corrupt image (and where it is listed)."""
    if decoder == "torchvision":
        try:
            from torchvision.io import ImageReadMode, decode_image as tv_decode, read_file

            return tv_decode(read_file(str(path)), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        except (RuntimeError, OSError, ValueError):
            return read_image(path, listed_at)
    if decoder == "pil":
        return read_image(path, listed_at)
    raise ValueError(f"unknown decoder {decoder!r}; valid: pil, torchvision")


def _raw_sample(record: ImageRecord, image: np.ndarray) -> dict[str, Any]:
    """Untransformed sample: boxes xyxy float32, ignore = invalid | zero-size."""
    k = len(record.boxes)
    if record.keypoints is not None:
        kps = record.keypoints.astype(np.float32).reshape(k, 5, 2)
        valid = np.asarray(record.keypoints_valid, bool).reshape(k)
    else:
        kps, valid = np.zeros((k, 5, 2), np.float32), np.zeros(k, bool)
    return {"image": image, "boxes": record.boxes_xyxy().astype(np.float32).reshape(k, 4),
            "ignore": record.invalid | record.zero_size, "keypoints": kps, "keypoints_valid": valid,
            "image_id": record.image_id}


class WiderFaceDataset(Dataset):
    """One split of a WIDER-layout root; item = transform(raw sample).

    landmarks: None (keypoints all invalid), 'auto' (root/retinaface_gt/<split>/label.txt when
    present) or a label.txt path. transform: a callable (sample, rng) -> sample, e.g.
    build_train_transform(); None returns the raw sample (image uint8 (H, W, 3), numpy targets).
    Key: an int index, or (index, sample_seed) to draw augmentation from that seed.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None,
                 landmarks: str | os.PathLike | None = None, decoder: str = "torchvision") -> None:
        self.split = load_split(root, split, landmarks=landmarks)
        self.records = self.split.records
        self.transform = transform
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        record = self.records[index]
        image = decode_image(record.path, self.decoder, f"{record.source}:{record.line}")
        sample = _raw_sample(record, image)
        if self.transform is None:
            return sample
        rng = np.random.default_rng(seed) if seed is not None else None
        return self.transform(sample, rng)


def collate(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch: `image` (B, 3, H, W) stacked (uint8 from training workers, float32 from the test
    transform); boxes, ignore, keypoints, keypoints_valid, image_id (and scale, when present)
    as per-image lists; `photometric` (B, 13), `image_hw` (B, 2) and `flip` (B,) stacked when
    every sample has them (detectors.data.device_transforms finishes such a batch on the device)."""
    images = [torch.as_tensor(s["image"]) for s in samples]
    if all(t.dim() == 3 and t.stride(0) == 1 for t in images):
        # (3, H, W) views of (H, W, 3) pixels (ToUint8Tensor): stacking the pixels is a plain
        # copy (10x faster than gathering each channel); the batch is a (B, 3, H, W) view
        out: dict[str, Any] = {"image": torch.stack([t.permute(1, 2, 0) for t in images]).permute(0, 3, 1, 2)}
    else:
        out = {"image": torch.stack(images)}
    for key in ("boxes", "ignore", "keypoints", "keypoints_valid"):
        out[key] = [torch.as_tensor(s[key]) for s in samples]
    out["image_id"] = [s["image_id"] for s in samples]
    if all("scale" in s for s in samples):
        out["scale"] = [s["scale"] for s in samples]
    for key in ("photometric", "image_hw", "flip"):
        if all(key in s for s in samples):
            out[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    return out
