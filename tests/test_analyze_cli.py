"""`facenas analyze` on fixture run directories: files written, numbers consistent, bad inputs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.bootstrap import bootstrap_ranges, read_ranges_csv
from analysis.report import analyze_run
from nas.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _copy_run(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _assert_same_ranges(path: Path, expected: pd.DataFrame) -> None:
    got = read_ranges_csv(path)
    assert list(got.index) == list(expected.index)
    pd.testing.assert_frame_equal(got[["low", "best", "high"]], expected[["low", "best", "high"]],
                                  rtol=1e-5, check_names=False)
    assert (got["n_models"] == expected["n_models"]).all()


def test_cli_on_a_real_quick_search_run_with_compare(tmp_path):
    # search_run_quick: the table of a real `facenas search --space scrfd --gflops 2.5` run
    # (quick budget; tests/fixtures/README.md); the notebook reads the constructed tables.
    run, other = _copy_run("search_run_quick", tmp_path), _copy_run("search_run_b", tmp_path)
    result = subprocess.run([sys.executable, "-m", "nas.cli", "analyze", str(run), "--compare",
                             str(other), "--seed", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ratio_c2\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+\d+$", result.stdout, re.M)
    out = run / "analysis"
    table = pd.read_csv(run / "trials.csv")
    ok = table[(table.status == "ok") & table.ap_hard.notna()]
    _assert_same_ranges(out / "ranges.csv", bootstrap_ranges(table, seed=3))
    for step in (1, 2):
        _assert_same_ranges(out / f"ranges_step{step}.csv",
                            bootstrap_ranges(ok[ok.step == step], seed=3))
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"ratios_backbone_step1.png", "ratios_detector_step2.png", "edf.png",
            "computation.png"} <= set(images)
    for name in images:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    c2 = read_ranges_csv(out / "ranges_step1.csv").loc["ratio_c2"]
    assert f"put {c2.low:.2f}–{c2.high:.2f} of backbone compute in C2 (best {c2.best:.2f})" in report
    assert "search_run_b (n=" in report  # the compared run's EDF summary
    other_table = pd.read_csv(other / "trials.csv")
    n_other = int(((other_table.status == "ok") & other_table.ap_hard.notna()).sum())
    assert f"## Compared with search_run_b ({n_other} models)" in report
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert ("Warning: every model has the same `ap_hard`" in report) == (ok.ap_hard.nunique() == 1)


def test_parquet_single_step_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    # Few columns keep it quick: two quantity figures and the EDF, no gflops_* -> no bars.
    table = pd.DataFrame({"spec_id": [f"s{i}" for i in range(40)], "status": "ok",
                          "ratio_c2": rng.uniform(0, 0.6, 40), "ratio_shallow": rng.uniform(0, 1, 40),
                          "w1": rng.integers(2, 9, 40) * 8, "ap_hard": rng.uniform(0, 1, 40),
                          "ap_medium": rng.uniform(0, 1, 40)})
    table.to_parquet(run / "trials.parquet")
    pd.DataFrame({"status": ["bogus"]}).to_csv(run / "trials.csv")  # parquet takes precedence
    ranges = analyze_run(run, metric="ap_medium", n_boot=400)
    pd.testing.assert_frame_equal(ranges, bootstrap_ranges(table, "ap_medium", n_boot=400))
    assert "Warning" not in (run / "analysis" / "report.md").read_text()
    names = sorted(p.name for p in (run / "analysis").iterdir())
    assert names == ["edf.png", "ranges.csv", "ratios_backbone.png", "report.md", "shapes.png"]


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("facenas analyze: error:")
    return err


def test_missing_run_dir_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nas.cli", "analyze", str(tmp_path / "nope")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"facenas analyze: error: run directory {tmp_path / 'nope'} does not exist"]


@pytest.mark.parametrize("content, argv_extra, words", [
    ("spec_id,status,ap_hard,ratio_c2\n", [], "empty"),
    ("spec_id,status,ratio_c2\na,ok,0.3\n", [], "no column 'ap_hard'"),
    ("spec_id,status,ap_hard,ratio_c2\na,ok,0.5,0.3\n", ["--metric", "ap_easy"], "'ap_easy'"),
    ("spec_id,status,ap_hard,ratio_c2\na,failed,,0.3\nb,failed,,0.2\n", [], "no trial with status 'ok'"),
    ("", [], "cannot read"),
    ("spec_id,status,ap_hard,ratio_c2\na,ok,0.5,0.3\n", ["--n-boot", "0"], "n_boot"),
])
def test_bad_tables_are_one_line_exit_2(tmp_path, capsys, content, argv_extra, words):
    (tmp_path / "trials.csv").write_text(content)
    err = _one_line_error(capsys, ["analyze", str(tmp_path), *argv_extra])
    assert words in err
    assert not (tmp_path / "analysis").exists()  # nothing written for a bad input


def test_dir_without_table_and_bad_compare_run(tmp_path, capsys):
    assert "holds no results table" in _one_line_error(capsys, ["analyze", str(tmp_path)])
    run = _copy_run("search_run_b", tmp_path)
    err = _one_line_error(capsys, ["analyze", str(run), "--compare", str(tmp_path / "other")])
    assert "other does not exist" in err
    assert not (run / "analysis").exists()
