"""RSA's scale-forecast network (Liu et al. 2017, sec. 3.1): which face sizes an image holds.

- Scale bins (Eq. 1): a face of size x, measured in the image resized so its long side is
  2048, falls in bin b = 10 (log2 x - 5); B = 60 bins cover x = 32 .. 2^10.9 (~1910) px.
  The face size is sqrt(w * h) of its box (the paper does not say; for square faces it is
  the side).
- Targets (Eq. 3): 1 at each occurring bin b*, and its +-2 neighbours get the Gaussian
  N(b; mu = b*, sigma = 1 / sqrt(2 pi)) density, whose peak is exactly 1: exp(-pi) at +-1,
  exp(-4 pi) at +-2. Several faces: the maximum over faces.
- Loss (Eq. 2): binary cross entropy averaged over the B bins.
- Network: half-channel ResNet-18 (7x7/s2 stem of 32, max-pool, 4 stages of 2 basic blocks,
  32-64-128-256) + global average pooling + a linear layer to B logits, on the image resized
  so its long side is 224.
- Inference (Eq. 4): a 1-D Gaussian mixture with K = 1..6 components is fitted (weighted
  EM over the bins whose probability passes a threshold, K chosen by BIC); the means of the
  components with weight >= `min_weight` are the predicted scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.blocks.tv_resnet import tv_stem, tv_stem_cost
from detectors.blocks.resnet import BasicBlock, basic_cost
from detectors.macs import Counter

__all__ = ["NUM_BINS", "FORECAST_SIDE", "REFERENCE_SIDE", "FORECAST_WIDTHS", "scale_bin",
           "bin_to_size", "gaussian_targets", "ScaleForecastNet", "forecast_cost",
           "forecast_loss", "select_scales"]

NUM_BINS = 60
FORECAST_SIDE = 224  # the network's input: long side 224 (paper)
REFERENCE_SIDE = 2048  # face sizes are measured with the long side resized to 2048
FORECAST_WIDTHS = (32, 64, 128, 256)  # ResNet-18's 64-128-256-512, halved
NEIGHBOURS = 2
SIGMA = 1.0 / math.sqrt(2.0 * math.pi)


def scale_bin(size: torch.Tensor | float) -> torch.Tensor:
    """Eq. 1: face size x (px at long side 2048) -> continuous bin 10 (log2 x - 5)."""
    x = torch.as_tensor(size, dtype=torch.float32, device=size.device if isinstance(size, torch.Tensor) else None)
    return 10.0 * (torch.log2(x.clamp_min(1e-6)) - 5.0)


def bin_to_size(b: np.ndarray | float) -> np.ndarray:
    """Inverse of Eq. 1: bin -> face size in px at long side 2048."""
    return 2.0 ** (np.asarray(b, dtype=np.float64) / 10.0 + 5.0)


def gaussian_targets(sizes: torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """Eq. 3 targets (num_bins,) for face sizes (K,) (px at long side 2048).

    Each face's bin b* = round(Eq. 1), clipped to 0..num_bins-1, gets 1; bins b* +- 1, +- 2
    get exp(-(b - b*)^2 / (2 sigma^2)) (sigma = 1/sqrt(2 pi): the density, peak 1). Max over
    faces; no faces -> all zeros. On the device of `sizes`.
    """
    target = torch.zeros(num_bins, device=sizes.device)
    if sizes.numel() == 0:
        return target
    centre = scale_bin(sizes).round().clamp(0, num_bins - 1)  # (K,)
    bins = torch.arange(num_bins, dtype=torch.float32, device=sizes.device)
    dist = bins[None, :] - centre[:, None]  # (K, B)
    value = torch.exp(-dist.square() / (2 * SIGMA**2))
    value = torch.where(dist.abs() <= NEIGHBOURS, value, torch.zeros_like(value))
    return value.max(dim=0).values


class ScaleForecastNet(nn.Module):
    """images (N, 3, H, W) normalised RGB -> (N, NUM_BINS) logits of the scale bins.

    The caller resizes the image so its long side is FORECAST_SIDE (see `forecast_input`).
    """

    def __init__(self, stem_width: int = 32, widths: tuple[int, ...] = FORECAST_WIDTHS) -> None:
        super().__init__()
        self.stem = tv_stem(stem_width)  # ResNet's 7x7 stem, shared with ASFD's backbones
        blocks, cin = [], stem_width
        for i, width in enumerate(widths):
            blocks += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, NUM_BINS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(images))
        return self.fc(x.mean(dim=(2, 3)))


def forecast_cost(c: Counter, h: int, w: int, stem_width: int = 32,
                  widths: tuple[int, ...] = FORECAST_WIDTHS, macs: bool = True) -> None:
    """ScaleForecastNet's params (and, with macs, its MACs at an (h, w) input) into c."""
    probe = Counter()
    h, w = tv_stem_cost(probe, stem_width, h, w)
    cin = stem_width
    for i, width in enumerate(widths):
        h, w = basic_cost(probe, cin, width, 1 if i == 0 else 2, h, w)
        basic_cost(probe, width, width, 1, h, w)
        cin = width
    probe.linear(cin, NUM_BINS)
    c.p += probe.p
    if macs:
        c.m += probe.m
        c.e += probe.e


def forecast_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> resized so the long side is FORECAST_SIDE (bilinear)."""
    h, w = images.shape[-2:]
    s = FORECAST_SIDE / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def forecast_loss(logits: torch.Tensor, boxes: list[torch.Tensor], ignore: list[torch.Tensor],
                  long_side: float) -> torch.Tensor:
    """Eq. 2: BCE over the bins, averaged. logits (N, B); boxes per image (K, 4) xyxy px of an
    image whose long side is `long_side`; ignored faces are left out of the targets."""
    targets = []
    for b, ign in zip(boxes, ignore):
        keep = b[~ign.to(torch.bool)] if b.numel() else b
        wh = (keep[:, 2:] - keep[:, :2]).clamp_min(0)
        sizes = wh.prod(dim=1).sqrt() * (REFERENCE_SIDE / long_side)
        targets.append(gaussian_targets(sizes[sizes > 0].float().to(logits.device)))
    target = torch.stack(targets)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def _weighted_gmm(x: np.ndarray, wts: np.ndarray, k: int, iters: int = 60):
    """Weighted 1-D EM; returns (phi (k,), mu (k,), var (k,), log-likelihood)."""
    mu = np.quantile(np.repeat(x, np.maximum(1, np.round(wts * 20).astype(int))),
                     (np.arange(k) + 0.5) / k)
    var = np.full(k, max(np.var(x), 1.0))
    phi = np.full(k, 1.0 / k)
    for _ in range(iters):
        dens = phi * np.exp(-(x[:, None] - mu) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
        total = dens.sum(1, keepdims=True) + 1e-300
        resp = dens / total * wts[:, None]
        nk = resp.sum(0) + 1e-12
        phi = nk / nk.sum()
        mu = (resp * x[:, None]).sum(0) / nk
        var = np.maximum((resp * (x[:, None] - mu) ** 2).sum(0) / nk, 0.25)
    dens = phi * np.exp(-(x[:, None] - mu) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
    return phi, mu, var, float((wts * np.log(dens.sum(1) + 1e-300)).sum())


def select_scales(probs: np.ndarray, thresh: float = 0.3, min_weight: float = 0.1,
                  max_components: int = 6) -> np.ndarray:
    """Eq. 4: predicted bin probabilities (B,) -> the selected scales' bins (sorted, float).

    Bins with probability >= thresh are the observations (weighted by it); mixtures of
    K = 1..max_components Gaussians are fitted and the lowest BIC wins; components with
    weight >= min_weight give the scales. No bin above thresh: no faces (empty array).
    """
    probs = np.asarray(probs, dtype=np.float64)
    x = np.flatnonzero(probs >= thresh).astype(np.float64)
    if x.size == 0:
        return np.zeros(0)
    wts = probs[x.astype(int)]
    best = None
    for k in range(1, min(max_components, x.size) + 1):
        phi, mu, _, ll = _weighted_gmm(x, wts, k)
        bic = -2 * ll + (3 * k - 1) * math.log(max(wts.sum(), 1.0 + 1e-9))
        if best is None or bic < best[0]:
            best = (bic, phi, mu)
    _, phi, mu = best
    return np.sort(mu[phi >= min_weight])
