"""The numeric mode follows the card (issue 23, item 1): bf16 only where CUDA computes it
natively (compute capability >= 8.0), fp16 with a GradScaler below that, fp32 on request.
No GPU needed: the capability is passed in (choose_mode) or monkeypatched (training_mode)."""

from __future__ import annotations

import pytest
import torch

import detectors.device as dev

CUDA = torch.device("cuda")  # constructing a device object needs no GPU
CARDS = {  # name: (capability, autocast dtype, GradScaler)
    "V100": ((7, 0), torch.float16, True),
    "T4": ((7, 5), torch.float16, True),
    "A100": ((8, 0), torch.bfloat16, False),
    "RTX 3090": ((8, 6), torch.bfloat16, False),
    "H100": ((9, 0), torch.bfloat16, False),
}


@pytest.mark.parametrize("card", sorted(CARDS))
def test_choose_mode_by_capability(card):
    capability, dtype, scaler = CARDS[card]
    mode = dev.choose_mode(CUDA, capability)
    assert (mode.autocast_dtype, mode.grad_scaler, mode.channels_last) == (dtype, scaler, True)
    assert mode.device == CUDA
    fp32 = dev.choose_mode(CUDA, capability, fp32=True)
    assert (fp32.autocast_dtype, fp32.grad_scaler, fp32.channels_last) == (None, False, False)
    assert fp32.describe() == "cuda fp32 NCHW"


def test_choose_mode_cpu_and_missing_capability():
    cpu = torch.device("cpu")
    assert dev.choose_mode(cpu).describe() == "cpu fp32 channels_last"
    assert dev.choose_mode(cpu, cpu_bf16=True).describe() == "cpu bfloat16 channels_last"
    assert dev.choose_mode(cpu, cpu_bf16=True, fp32=True).describe() == "cpu fp32 NCHW"
    with pytest.raises(ValueError, match="capability"):
        dev.choose_mode(CUDA)


@pytest.mark.parametrize("card", sorted(CARDS))
def test_training_mode_reads_the_capability_not_is_bf16_supported(monkeypatch, card):
    """training_mode on a (pretend) CUDA card: the capability decides, even where PyTorch's
    is_bf16_supported() says True because it counts emulation (what pre-Ampere cards got)."""
    capability, dtype, scaler = CARDS[card]
    asked = []

    def get_capability(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    mode = dev.training_mode(CUDA)
    assert (mode.autocast_dtype, mode.grad_scaler) == (dtype, scaler)
    assert asked == [CUDA]
    assert dev.training_mode(CUDA, fp32=True).describe() == "cuda fp32 NCHW"
