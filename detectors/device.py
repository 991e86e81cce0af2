"""Where and how to train: device choice, numeric mode, CPU threads.

On CUDA: mixed precision by compute capability: bf16 autocast where bf16 is native (>= 8.0:
A100, H100, RTX 30xx and later), else fp16 autocast with a GradScaler (V100 7.0, T4 7.5: there
bf16 is emulated, and `torch.cuda.is_bf16_supported()` counts emulation, so it is not asked).
`--fp32` (fp32=True) forces fp32 NCHW on any device. The choice is `choose_mode`, a pure function
of (device, capability, request), so every branch is tested without a GPU.
On CPU: fp32 channels_last, never bf16 autocast. oneDNN's bf16 convolution backward (torch
2.14) returns wrong weight gradients, often NaN, for a strided 3x3 conv on a 1-pixel-wide
input: measured on an AVX512-BF16 CPU, 52 of 60 draws of a 3x3 stride-2 conv on a 1x1 input
were wrong (fp32: 0 of 60). Such inputs are everyday at proxy scale (an ASFD SSD-extra stage at
stride 128 sees 1x1 at 128 px), and the forward is unaffected, so the loss looks fine while a
weight turns NaN. bf16 also bought nothing there: scrfd_0.5g, batch 4, 2 threads, 9.3 img/s
either way at 320 px and 3.6 (bf16) against 4.1 img/s (fp32) at 640 px
(benchmarks/train_speed.py --all-modes). On an AVX2 CPU fp32 channels_last was 1.00-1.24x the
speed of NCHW in all 19 cases tried (published 0.5/2.5GF and sampled 2.5GF specs, 160-640 px).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from detectors.errors import UserError

__all__ = ["TrainingMode", "select_device", "choose_mode", "training_mode", "set_threads",
           "NATIVE_BF16_CAPABILITY", "tune_cuda"]

NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: the first CUDA compute capability with bf16 tensor cores


@dataclass(frozen=True)
class TrainingMode:
    """How to run forward/backward on a device.

    autocast_dtype: None for fp32; grad_scaler: use torch.amp.GradScaler (fp16 only).
    """

    device: torch.device
    channels_last: bool
    autocast_dtype: torch.dtype | None
    grad_scaler: bool

    def describe(self) -> str:
        dtype = "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.device.type} {dtype} {layout}"

    def autocast(self) -> torch.autocast:
        """Context manager for the forward pass (a disabled autocast in fp32 mode)."""
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None)


def select_device(prefer: str | torch.device | None = None) -> torch.device:
    """`prefer` if given ('cpu', 'cuda', 'cuda:1'), else CUDA when present, else CPU."""
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError:
        raise UserError(f"unknown device {prefer!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {prefer!r} requested but CUDA is not available here")
    return device


def choose_mode(device: torch.device, capability: tuple[int, int] | None = None, *,
                fp32: bool = False) -> TrainingMode:
    """The numeric mode for `device`, from facts passed in (no probing, so it is testable anywhere).

    capability: the CUDA card's (major, minor) (needed for CUDA). fp32 forces plain fp32 NCHW.
    CUDA: bf16 autocast at capability >= 8.0, otherwise fp16 autocast with a GradScaler (fp16's
    range needs the loss scaled). CPU: fp32 channels_last (the module docstring says why not
    bf16)."""
    if fp32:
        return TrainingMode(device, False, None, False)
    if device.type == "cuda":
        if capability is None:
            raise ValueError("choose_mode needs the CUDA device's compute capability")
        if tuple(capability) >= NATIVE_BF16_CAPABILITY:
            return TrainingMode(device, True, torch.bfloat16, False)
        return TrainingMode(device, True, torch.float16, True)
    return TrainingMode(device, device.type == "cpu", None, False)


def training_mode(device: torch.device, *, fp32: bool = False) -> TrainingMode:
    """The fastest sound numeric mode for `device` (`fp32=True` forces plain fp32 NCHW): the
    card's compute capability, read here, decided by choose_mode."""
    capability = None
    if device.type == "cuda" and not fp32:
        capability = tuple(torch.cuda.get_device_capability(device))
    return choose_mode(device, capability, fp32=fp32)


def tune_cuda(mode: TrainingMode, *, fp32: bool = False) -> None:
    """On CUDA: cuDNN autotuning (fixed training sizes) and, unless fp32 was asked for
    exactly, TF32 matmuls and convolutions (Ampere+; ignored below). Nothing on CPU."""
    if mode.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = not fp32
    torch.backends.cudnn.allow_tf32 = not fp32


def set_threads(n: int | None = None) -> int:
    """torch.set_num_threads to `n` (e.g. a Ray trial's CPUs), else $FACENAS_THREADS, else the
    CPUs this process may run on (its affinity mask, not the machine's core count).

    On an oversubscribed machine (several processes per core) OpenMP threads spin-wait for
    each other: measured here, 2 threads ran a training step 4-8x slower than 1 while 7 other
    processes shared the 2 cores. FACENAS_THREADS=1 is the remedy there (e.g. pytest -n 2).
    Returns the number set.
    """
    if n is None and os.environ.get("FACENAS_THREADS", "").strip():
        try:
            n = int(os.environ["FACENAS_THREADS"])
        except ValueError:
            raise UserError(f"FACENAS_THREADS={os.environ['FACENAS_THREADS']!r} is not an integer") from None
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    n = max(1, int(n))
    torch.set_num_threads(n)
    return n
