"""`facenas search --space bfbox` from the command line: bad options are one line, exit 2,
nothing written; a smoke search (supernet -> candidates -> export) runs end to end, its
export retrains with `facenas train`, and a second search reuses its supernet with evolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _cli import facenas, fakes_pythonpath, one_line_error

from detectors.checkpoint import save_checkpoint
from detectors.config import load_config
from detectors.cost import vga_gflops
from nas.options import SearchOptions
from nas.search_config import resolve_config
from search_spaces.bfbox.space import BFBoxSpace


def _smoke_frame() -> dict:
    return resolve_config(SearchOptions(space="bfbox", budget="smoke"))["frame"]


def _other_space_checkpoint(path: Path) -> Path:
    frame = BFBoxSpace.from_dict({**_smoke_frame(), "fdb": 3})
    save_checkpoint(path, {"model": {}, "hooks_identity": {"space": "bfbox",
                                                          "space_config": frame.to_dict()}})
    return path


SMOKE = BFBoxSpace.from_dict(_smoke_frame())
LO, HI = SMOKE.gflops_range()


@pytest.mark.parametrize("args, words", [
    (["--strategy", "grid"], ["unknown strategy 'grid'", "random, evolution"]),
    (["--gflops", "100"], ["--gflops 100", f"spans {LO:.3f} to {HI:.3f}"]),
    (["--strategy", "evolution", "--population", "5", "--parents", "10"],
     ["population 5 is smaller than top-k 10"]),
    (["--supernet", "OTHER"], ["another bfbox space", "fdb"]),
    (["--supernet", "MISSING"], ["no such checkpoint"]),
    (["--nproc-per-trial", "0"], ["--nproc-per-trial must be >= 1, got 0"]),
    # checked against the local Ray node's CPUs, before anything is written
    (["--nproc-per-trial", "999"], ["--nproc-per-trial 999: above the", "CPUs a single-model "
                                    "trial holds"]),
])
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, args, words):
    from nas.cli import main

    out = tmp_path / "run"
    args = [str(_other_space_checkpoint(tmp_path / "other.pt")) if a == "OTHER" else
            str(tmp_path / "missing.pt") if a == "MISSING" else a for a in args]
    code = main(["search", "--space", "bfbox", "--budget", "smoke", "--out", str(out),
                 "--data", str(tmp_path), *(["--gflops", "2.5"] if "--gflops" not in args else []),
                 *args])
    assert code == 2
    line = one_line_error(capsys)
    assert all(w in line for w in words), line
    assert not out.exists()


@pytest.mark.slow
def test_smoke_search_end_to_end_then_reuse_the_supernet(tmp_path, tiny_data):
    out = tmp_path / "run"
    # the supernet trains in 2 processes (DDP, gloo) inside its one Ray trial; SyncBN: one
    # image per process, whose 1x1 stride-128 maps BatchNorm alone could not normalise
    result = facenas("search", "--space", "bfbox", "--gflops", "2.5", "--budget", "smoke",
                      "--data", str(tiny_data), "--out", str(out), "--max-failures", "0",
                      "--nproc-per-trial", "2", "--set", "recipe.sync_bn=true")
    assert result.returncode == 0, result.stderr[-3000:]
    import yaml

    trained = list((out / "trials").glob("step0-*/supernet/config.yaml"))
    assert len(trained) == 1 and yaml.safe_load(trained[0].read_text())["run"]["processes"] == 2
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 3 and table["spec_id"].nunique() == 3 and set(table["step"]) == {1}
    assert (table["status"] == "ok").all(), table["error"].tolist()
    assert table["ap_hard"].between(0, 1).all()
    for text in table["spec_yaml"]:  # the band, from the analytic cost of each row's spec
        from detectors.spec import DetectorSpec

        assert 2.5 * 0.95 <= vga_gflops(DetectorSpec.from_yaml(text)) <= 2.5 * 1.05
    # the smoke frame's band counts the detector's VGA MACs: the row's band column is gflops
    assert (table["band_gflops"] - table["gflops"]).abs().max() < 1e-9
    assert (out / "analysis" / "report.md").is_file() and list((out / "analysis").glob("*.png"))
    supernets = list((out / "trials").glob("step0-*/supernet/checkpoint.pt"))
    assert len(supernets) == 1
    exported = sorted((out / "export").glob("*.yaml"))
    assert len(exported) == 3 and load_config(exported[0]).spec.id in set(table["spec_id"])
    retrain = facenas("train", str(exported[0]), "--budget", "smoke", "--data", str(tiny_data),
                       "--out", str(tmp_path / "retrain"), "--quiet")
    assert retrain.returncode == 0, retrain.stderr[-2000:]

    again = tmp_path / "again"
    result = facenas("search", "--space", "bfbox", "--gflops", "2.5", "--budget", "smoke",
                      "--data", str(tiny_data), "--out", str(again), "--supernet", str(supernets[0]),
                      "--strategy", "evolution", "--population", "2", "--parents", "2",
                      "--num-candidates", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(again / "trials.parquet")
    assert sorted(table["step"]) == [1, 1, 2, 2] and table["spec_id"].nunique() == 4
    assert not list((again / "trials").glob("step0-*"))  # the given supernet was reused


def _rows(run: Path) -> int:
    try:
        return len(pd.read_parquet(run / "trials.parquet"))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkill_of_the_candidate_phase_then_resume_gives_exactly_n_candidates(tmp_path):
    """Evolution, 2 generations of 3: killed after 2 candidate rows, resumed, the run holds
    exactly the 6 planned candidates, each evaluated once (fake trials: the driver is tested)."""
    import os
    import signal
    import time
    from collections import Counter

    from nas.results import RunStore

    env = {**os.environ, "PYTHONPATH": fakes_pythonpath(),
           "FACENAS_TRIAL_FN": "search_fakes:slow_trial", "FACENAS_FAKE_DELAY": "1.5",
           # a new local Ray cluster for the resumed driver: ray.init() would otherwise join the
           # killed driver's (or another process's) still-running cluster via
           # /tmp/ray/ray_current_cluster and refuse num_cpus
           "RAY_ADDRESS": "local"}
    (tmp_path / "data").mkdir()
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas.cli", "search", "--space", "bfbox", "--gflops", "2.5",
           "--budget", "smoke", "--data", str(tmp_path / "data"), "--strategy", "evolution",
           "--population", "3", "--parents", "2", "--num-candidates", "6"]
    driver = subprocess.Popen(cmd + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # Ray start-up and the fake supernet phase come first
    while _rows(run) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the search ended before it could be killed: " + driver.stderr.read()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= _rows(run) < 6
    resumed = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--resume", str(run)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    table = pd.read_parquet(run / "trials.parquet")
    store = RunStore(run)
    planned = [s.id for step in (1, 2) for s in store.read_plan(step)]
    assert len(planned) == len(set(planned)) == 6 and sorted(table["spec_id"]) == sorted(planned)
    completions = Counter(l.split()[1] for l in (run / "completions.log").read_text().splitlines()
                          if not l.startswith("0 "))  # step 0: the (fake) supernet trial
    assert set(completions) == set(planned) and max(completions.values()) == 1
