"""`facenas search` from the command line: user mistakes are one line + exit 2 and write
nothing; a smoke search with the real trial function (build -> train -> test) runs both steps
end to end and leaves the table, analysis and exported configs."""

from __future__ import annotations


import pandas as pd
import pytest

from detectors.config import load_config
from nas.results import COLUMNS
from _cli import facenas


@pytest.mark.parametrize("args, words", [
    (["--gflops", "0.001"], ["0.001 GFLOPs", "spans"]),
    (["--gflops", "100000"], ["100000 GFLOPs", "spans"]),
    # a band conv MACs could meet, but not mmcv's count (the default convention)
    (["--gflops", "0.23"], ["0.23 GFLOPs +-3% counted as mmcv", "spans 0.238"]),
    # inside the space's extent, but a band so narrow that step 2 could never be filled
    (["--num-samples", "2", "--set", "tolerance=0.0000001"],
     ["step 2 could not be filled", "2.5 GFLOPs (mmcv) +-1e-05%", "only 0 of the 4", "4,194,304 draws",
      "--set tolerance"]),
    (["--budget", "nonsense"], ["unknown budget", "smoke"]),
    (["--space", "nonsense"], ["unknown search space", "scrfd"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--data", "/nonexistent/facenas-data"], ["no such directory"]),
])
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, args, words):
    out = tmp_path / "run"
    data = [] if "--data" in args else ["--data", str(tmp_path)]
    result = facenas("search", "--out", str(out), *data, *args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert not out.exists()


def test_resume_of_a_non_run_and_reuse_of_a_run_dir_are_user_errors(tmp_path):
    result = facenas("search", "--resume", str(tmp_path / "nothing"), timeout=120)
    assert result.returncode == 2 and "not a search run directory" in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("search: {}\n")
    again = facenas("search", "--out", str(tmp_path / "run"), "--data", str(tmp_path), timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smoke_search_with_real_trials_end_to_end(tmp_path, tiny_data):
    out = tmp_path / "run"
    result = facenas("search", "--space", "scrfd", "--gflops", "2.5", "--budget", "smoke",
                      "--num-samples", "1", "--data", str(tiny_data), "--out", str(out),
                      "--max-failures", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(out / "trials.parquet")
    # the contract's columns, then the trial's further metrics (AP at precision >= 98%, the
    # data-path figures) and where each trial ran
    p98 = ["ap_at_p98_easy", "ap_at_p98_medium", "ap_at_p98_hard", "ap_at_p98"]
    assert list(table.columns) == (COLUMNS + ["gflops_mmcv"] + p98 + ["images_per_s", "data_wait_frac"]
                                   + ["node_id", "host", "ray_cpus", "ray_gpus"])
    assert table["ap_at_p98"].equals(table["ap_at_p98_hard"])
    assert (table["ap_at_p98_hard"] <= table["ap_hard"] + 1e-12).all()
    assert table["images_per_s"].gt(0).all() and table["data_wait_frac"].between(0, 1).all()
    assert table["node_id"].str.len().gt(0).all()
    assert len(table) == 2 and table["spec_id"].nunique() == 2
    assert sorted(table["step"]) == [1, 2]
    assert (table["status"] == "ok").all(), table["error"].tolist()
    assert table["ap_hard"].between(0, 1).all()
    # a 2-image val split may hold no 'easy' face: AP is then undefined (NaN), never out of range
    easy = table["ap_easy"]
    assert (easy.isna() | easy.between(0, 1)).all()
    assert (table["gflops"] - 2.5).abs().max() <= 0.05
    assert (table["wall_time_s"] > 0).all()
    assert (out / "trials.csv").is_file() and (out / "analysis" / "report.md").is_file()
    assert list((out / "analysis").glob("*.png"))
    exported = sorted((out / "export").glob("*.yaml"))
    assert exported and load_config(exported[0]).spec.id in set(table["spec_id"])
    assert "2 trials: 2 ok, 0 failed" in result.stdout
    # the acceptance: an exported config retrains with `facenas train` unchanged
    retrain = facenas("train", str(exported[0]), "--budget", "smoke", "--data", str(tiny_data),
                       "--out", str(tmp_path / "retrain"), "--quiet")
    assert retrain.returncode == 0, retrain.stderr[-2000:]
    assert (tmp_path / "retrain" / "checkpoint.pt").is_file()
    # each trial trained in its own absolute directory under the run, not Ray's cwd
    for step, spec_id in zip(table["step"], table["spec_id"]):
        assert (out / "trials" / f"step{step}-{spec_id}" / "train" / "checkpoint.pt").is_file()


def test_a_data_root_not_in_the_wider_layout_is_one_line_before_any_trial(tmp_path):
    (tmp_path / "photos").mkdir()
    out = tmp_path / "run"
    result = facenas("search", "--budget", "smoke", "--data", str(tmp_path / "photos"),
                     "--out", str(out), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a WIDER FACE root" in lines[0], result.stderr
    assert "wider_face_split/wider_face_train_bbx_gt.txt" in lines[0]
    assert not out.exists()
