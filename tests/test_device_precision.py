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
    assert dev.choose_mode(cpu, fp32=True).describe() == "cpu fp32 NCHW"
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


def test_cpu_training_mode_gives_true_gradients_for_a_strided_conv_on_a_one_pixel_input():
    """A 3x3 stride-2 conv on a 1x1 input (an ASFD SSD-extra stage at stride 128 and 128 px):
    its weight gradient in the CPU trainer's mode equals the hand-computed one in every draw.
    Only the centre tap sees the input (the rest sees padding), so grad_w[o, i, 1, 1] =
    sum_n x[n, i] * gy[n, o] and every other tap is exactly 0. In bf16 autocast (what CPUs
    with native bf16 got before) oneDNN returned NaN or garbage in most draws."""
    mode = dev.training_mode(torch.device("cpu"))
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        conv = torch.nn.Conv2d(32, 64, 3, 2, 1, bias=False).to(memory_format=fmt)
        x = torch.randn(2, 32, 1, 1, generator=generator).contiguous(memory_format=fmt)
        gy = torch.randn(2, 64, 1, 1, generator=generator)
        with mode.autocast():
            y = conv(x)
        (y.float() * gy).sum().backward()
        expected = torch.zeros(64, 32, 3, 3)
        expected[:, :, 1, 1] = gy[:, :, 0, 0].T @ x[:, :, 0, 0]
        torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-4, atol=1e-5)
