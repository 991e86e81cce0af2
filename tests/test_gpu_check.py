"""benchmarks/gpu_check.py as the suite runs it: `--device cpu` at a tiny size (one space's
smoke search, a few training iterations, the checkpoint tested), one table, exit 0; and
`--device cuda` where there is no CUDA: one line, exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_device_cuda_without_cuda_is_one_line_exit_2():
    result = _run("--device", "cuda")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: --device cuda: CUDA is not "
                                                   "available here"), result.stderr


@pytest.mark.slow
def test_cpu_run_prints_one_table(tmp_path):
    result = _run("--device", "cpu", "--spaces", "scrfd", "--iterations", "2",
                  "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    # one table: a title, a rule, then "item  value" lines
    title, rule, *rows = result.stdout.splitlines()
    assert title == "gpu_check --device cpu" and set(rule) == {"-"}
    table = dict(re.fullmatch(r"\s*(.+?)\s{2,}(.+)", row).groups() for row in rows)
    assert table["torch"] == torch.__version__ and table["card"] == "none (--device cpu)"
    assert table["precision"].startswith("cpu ")
    assert table["search scrfd (--gpus-per-trial 0)"].startswith("ok, 1/1 rows ok")
    assert table["train scrfd_2.5g, 2 it"].startswith("128 px, batch 2")
    # the run's own metrics: 2 lines, each with a speed, whose median the table shows
    import json
    import statistics

    lines = [json.loads(l) for l in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert float(table["images/s (median)"]) == pytest.approx(
        statistics.median(l["images_per_s"] for l in lines), abs=0.051)
    assert table["test AP hard, same checkpoint"].endswith(": agree")
    assert (tmp_path / "train" / "checkpoint.pt").is_file()


def test_without_ray_the_searches_are_skipped_rows(monkeypatch, tmp_path, gpu_check):
    """A borrowed GPU machine may lack Ray (its wheel is too large to bring along): the
    searches become rows that say so, without starting anything, and the rest of the check
    (training, testing) still runs; with no --spaces there are no search rows at all."""
    import argparse

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = argparse.Namespace(device="cpu", spaces=["scrfd", "asfd"])
    rows = gpu_check._searches(args, None, tmp_path)
    assert [k for k, _ in rows] == ["search scrfd (--gpus-per-trial 0)", "search asfd (--gpus-per-trial 0)"]
    assert all(v.startswith("SKIPPED: Ray is not installed") for _, v in rows)
    assert gpu_check._searches(argparse.Namespace(device="cpu", spaces=[]), None, tmp_path) == []
    assert list(tmp_path.iterdir()) == []
