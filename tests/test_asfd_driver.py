"""`facenas search --space asfd` end to end through the driver: one search trial per seed
(each derives an AutoFEM), the derived detectors trained and tested as rows, exported, the
export retrained by `facenas train`; bad options are one line and exit 2. (--resume is the
driver's, tested with every space in tests/test_spaces.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from detectors.config import load_config
from detectors.spec import DetectorSpec
from _cli import facenas


def _facenas(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return facenas(*args, timeout=timeout)  # an asfd search trains: a longer default


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0"], ["--seeds must be an integer >= 1"]),
    (["--budget", "nonsense"], ["unknown budget", "smoke, quick, paper"]),
])
def test_bad_asfd_options_are_one_line_exit_2(tmp_path, args, words):
    out = tmp_path / "run"
    result = _facenas("search", "--space", "asfd", "--out", str(out), "--data", str(tmp_path),
                      *args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert not out.exists()


@pytest.mark.slow
def test_asfd_smoke_search_end_to_end(tmp_path, tiny_data):
    out = tmp_path / "run"
    result = _facenas("search", "--space", "asfd", "--budget", "smoke", "--seeds", "1",
                      "--seed", "5", "--data", str(tiny_data), "--out", str(out),
                      "--max-failures", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    plan = yaml_plan(out / "plan" / "step1.yaml")
    assert [s.name for s in plan] == ["asfd_search-seed5"]
    for base in plan:
        trial = out / "trials" / f"step1-{base.id}"
        derived = DetectorSpec.from_yaml(trial / "derived_spec.yaml")
        assert derived.neck.type == "autofem" and derived.name == f"{base.name}-autofem"
        assert (trial / "search" / "architecture.jsonl").is_file()
    table = pd.read_parquet(out / "trials.parquet")
    assert table["search_seed"].tolist() == [5] and (table["step"] == 2).all()
    assert (table["status"] == "ok").all(), table["error"].tolist()
    assert table["ap_hard"].between(0, 1).all()
    exported = sorted((out / "export").glob("*.yaml"))
    assert len(exported) == 1 and load_config(exported[0]).spec.id in set(table["spec_id"])
    retrain = _facenas("train", str(exported[0]), "--budget", "smoke", "--data", str(tiny_data),
                       "--out", str(tmp_path / "retrain"), "--quiet")
    assert retrain.returncode == 0, retrain.stderr[-2000:]
    assert (tmp_path / "retrain" / "checkpoint.pt").is_file()


def yaml_plan(path: Path) -> list[DetectorSpec]:
    import yaml

    return [DetectorSpec.from_dict(item["spec"]) for item in yaml.safe_load(path.read_text())]
