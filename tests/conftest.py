"""Shared fixtures.

Real WIDER FACE data and published weights are research-only and live in ../shared beside the
clone (never in the repo). Tests that need them use the fixtures below: without ../shared they
skip with a message on a user's machine, and fail under CI=true, where the data must be there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACENAS_SHARED", REPO.parent / "shared"))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path} (research-only data lives in ../shared beside the clone)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must have it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def widerface_mini() -> Path:
    """Root of the real widerface-mini subset in the official WIDER FACE layout."""
    return _need(SHARED / "data" / "widerface-mini", "widerface-mini")


@pytest.fixture(scope="session")
def scrfd_onnx() -> Path:
    """The published SCRFD-2.5GF-bnkps ONNX model."""
    return _need(SHARED / "models" / "scrfd_2.5g_bnkps.onnx", "scrfd_2.5g_bnkps.onnx")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convs: intra-op threads only add contention on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny synthetic dataset root (4 train / 2 val images, 128 px): for end-to-end CLI
    searches and training that must run in seconds."""
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "root", num_train=4, num_val=2,
                    image_size=128, seed=0, progress=False)


def benchmark_module(name: str):
    """benchmarks/<name>.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ranking_truth():
    return benchmark_module("ranking_truth")


@pytest.fixture(scope="module")
def learning_curve():
    return benchmark_module("learning_curve")


@pytest.fixture(scope="module")
def asha_replay():
    return benchmark_module("asha_replay")


@pytest.fixture(scope="module")
def gpu_check():
    return benchmark_module("gpu_check")
