"""ASFD user mistakes from the command line: one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from detectors.asfd.autofem import AutoFEMOptions
from tests.test_asfd_ops import autofem_spec


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


GOOD = autofem_spec(AutoFEMOptions(
    fpn=(("conv1x1", "sep3x3", None), ("conv1x1", None, "sep3x3")),
    cpm=(((0, "sep3x3"),), ((0, "conv1x3"), (1, "sep5x5")))), levels=(4, 5)).to_yaml()


@pytest.mark.parametrize("old, new, words", [
    ("conv1x3", "conv9x9", ["'conv9x9' is not one of"]),
    ("- - [0, sep3x3]\n    - - [0, conv1x3]", "- []\n    - - [0, conv1x3]", ["has 0 nodes"]),
])
def test_bad_autofem_spec_in_facenas_cost(tmp_path, old, new, words):
    assert old in GOOD
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    line = _one_line(_run("-m", "nas.cli", "cost", str(path)))
    assert all(w in line for w in words) and "bad.yaml" in line


def test_derive_from_a_plain_training_checkpoint(tmp_path):
    from detectors.checkpoint import save_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"model": {}, "hooks_identity": {}})
    line = _one_line(_run("-m", "nas.spaces.asfd", "--derive", str(ckpt)))
    assert "not of the asfd space" in line
