"""The training batch's last steps, on the training device: mirror, photometric distortion
and normalisation of the uint8 images the loader workers hand over (docs/data.md).

    images = device_images(batch, device)    # float32 (B, 3, H, W), (RGB - 127.5) / 128

Workers draw each image's photometric numbers from the sample's own generator
(PhotoMetricDistortion(deferred=True), so batches stay a function of (seed, iteration)) and
send them as `batch["photometric"]` (B, 13), and the flip as `batch["flip"]` (B,) (boxes and
keypoints already mirrored: RandomFlip(deferred=True)); this module applies them to the whole batch at
once, equal to PhotoMetricDistortion.apply (float32 arithmetic, rounded to whole levels; a
pixel may differ by one level where a different summation order crosses a .5 boundary).
`batch["image_hw"]` (B, 2) marks padded content: the padding becomes exactly 0 after
normalisation, as Normalize's zero padding. Decisions that depend on the numbers are taken on
the CPU copies before the transfer, so nothing here waits for the device.
"""

from __future__ import annotations

import torch

from detectors.data.transforms import MEAN, PHOTOMETRIC_PARAMS, STD

__all__ = ["device_images", "photometric", "normalise"]


def _cpu_any(mask: torch.Tensor) -> bool:
    """Whether any element of a CPU tensor (the loader's per-image numbers) is true, read
    through NumPy: that raises on a CUDA tensor, so this can never hide a device sync (and the
    host-sync count, which watches tensor scalar reads, rightly does not see it)."""
    return bool(mask.numpy().any())


def photometric(images: torch.Tensor, params: torch.Tensor, colour: bool = True) -> torch.Tensor:
    """Float (B, 3, H, W) pixel values 0..255, distorted in place by per-image `params`
    (B, 13) of PhotoMetricDistortion.draw, rounded and clipped to 0..255; returns the result.
    `colour=False` skips the colour matrix (the caller knows no image has its flag set)."""
    b = params.shape[0]
    if params.shape != (b, PHOTOMETRIC_PARAMS) or not images.is_floating_point():
        raise ValueError(f"photometric needs float images and (B, {PHOTOMETRIC_PARAMS}) params, "
                         f"not {images.dtype} and {tuple(params.shape)}")
    # In place: on a CPU every new batch-sized tensor is fresh memory from the OS (page faults
    # cost more than the arithmetic); the colour product needs one more buffer.
    p = params.to(images.dtype)
    x = images.add_(p[:, 0].view(b, 1, 1, 1)).mul_(p[:, 1].view(b, 1, 1, 1))
    if colour:
        # flagged images clip to [0, 255] before the matrix; the others pass unclipped through
        # an identity matrix, which is exact
        flag = p[:, 2] > 0
        inf = torch.full_like(p[:, 2], float("inf"))
        x.clamp_(torch.where(flag, 0.0, -inf).view(b, 1, 1, 1), torch.where(flag, 255.0, inf).view(b, 1, 1, 1))
        x = torch.bmm(p[:, 3:12].reshape(b, 3, 3), x.reshape(b, 3, -1)).view_as(x)
    return x.mul_(p[:, 12].view(b, 1, 1, 1)).round_().clamp_(0, 255)


def normalise(images: torch.Tensor, image_hw: torch.Tensor | None = None) -> torch.Tensor:
    """(images - 127.5) / 128 as float32 (a float input is normalised in place); with
    `image_hw` (B, 2) (a CPU tensor) pixels outside each image's content are set to 0."""
    x = images.float() if not images.is_floating_point() else images
    x = x.sub_(MEAN).div_(STD)
    if image_hw is None:
        return x
    h, w = x.shape[-2:]
    if not _cpu_any((image_hw[:, 0] < h) | (image_hw[:, 1] < w)):
        return x  # nothing padded (the square crops): no mask to build
    hw = image_hw.to(x.device, non_blocking=True)
    rows = torch.arange(h, device=x.device)[None, :] < hw[:, :1]
    cols = torch.arange(w, device=x.device)[None, :] < hw[:, 1:]
    return x.mul_(rows[:, None, :, None] & cols[:, None, None, :])


def device_images(batch: dict, device: torch.device | str, non_blocking: bool = True,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The batch's images on `device` in `memory_format`: mirrored and distorted as the batch's
    `flip` and `photometric` say (when it carries them), normalised. A float batch is taken as
    already normalised (hand-built batches in tests and benchmarks) and only moved."""
    images = batch["image"]
    if images.dtype != torch.uint8:
        return images.to(device, non_blocking=non_blocking).contiguous(memory_format=memory_format)
    x = images.to(device, non_blocking=non_blocking).float()
    flip = batch.get("flip")
    if flip is not None and _cpu_any(flip):  # CPU copy: no device sync
        rows = torch.from_numpy(flip.numpy().nonzero()[0]).to(device, non_blocking=non_blocking)
        x[rows] = x[rows].flip(-1)
    params = batch.get("photometric")
    if params is not None:
        colour = _cpu_any(params[:, 2] > 0)  # CPU copy: no device sync
        x = photometric(x, params.to(device, non_blocking=non_blocking), colour)
    return normalise(x, batch.get("image_hw")).contiguous(memory_format=memory_format)
