"""The search driver on Ray Tune: store layout and atomic writes, a two-step search with an
injected failing trial, and SIGKILL of the driver followed by --resume.

Trials here are the cheap deterministic functions of tests/search_fakes.py, injected through
the documented FACENAS_TRIAL_FN hook (in-process: the trial_fn argument); the real trial
function runs in tests/test_search_cli.py.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from _cli import fakes_pythonpath
from detectors.config import load_config
from detectors.cost import vga_gflops
from detectors.spec import DetectorSpec
from nas.results import COLUMNS, RunStore, cost_columns, failed_metrics

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    # The fake trials never read data; the driver only checks that the root exists.
    root = tmp_path / "data"
    root.mkdir()
    return root


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": fakes_pythonpath(), **extra}


# -- the results store -----------------------------------------------------------------------
def _spec() -> DetectorSpec:
    return DetectorSpec.from_yaml(REPO / "experiments" / "models" / "scrfd_2.5g.yaml")


def test_results_columns_follow_the_contract_and_cost(tmp_path):
    spec = _spec()
    store = RunStore(tmp_path)
    row = {"spec_id": spec.id, "step": 1, "trial_id": "t0", "seed": 0, "spec_yaml": spec.to_yaml(),
           **cost_columns(spec), **failed_metrics("ValueError: boom", 1.5)}
    store.add_row(row)
    table = pd.read_parquet(tmp_path / "trials.parquet")
    assert list(table.columns) == COLUMNS
    csv = pd.read_csv(tmp_path / "trials.csv")
    assert list(csv.columns) == COLUMNS and csv.loc[0, "error"] == "ValueError: boom"
    r = table.iloc[0]
    assert math.isclose(r["gflops"], vga_gflops(spec), rel_tol=1e-12)
    comps = sum(r[f"gflops_{c}"] for c in ("stem", "c2", "c3", "c4", "c5", "neck", "head"))
    assert math.isclose(comps, r["gflops"], rel_tol=1e-12)
    backbone = sum(r[f"ratio_{c}"] for c in ("stem", "c2", "c3", "c4", "c5"))
    assert math.isclose(backbone, 1.0) and math.isclose(
        r["ratio_backbone"] + r["ratio_neck"] + r["ratio_head"], 1.0)
    # published scrfd_2.5g: stages (3,24) (5,48) (3,48) (2,80), neck 24, head 2 x 64
    assert [r[f"w{i}"] for i in range(1, 5)] == [24, 48, 48, 80]
    assert [r[f"d{i}"] for i in range(1, 5)] == [3, 5, 3, 2]
    assert (r["n"], r["h"], r["m"]) == (24, 64, 2)
    assert DetectorSpec.from_yaml(r["spec_yaml"]) == spec


def test_table_rewrite_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous table intact and no temporary files."""
    spec = _spec()
    store = RunStore(tmp_path)
    base = {"spec_id": spec.id, "step": 1, "trial_id": "t0", "seed": 0, "spec_yaml": spec.to_yaml(),
            **cost_columns(spec), **failed_metrics("x")}
    store.add_row(base)
    before = (tmp_path / "trials.parquet").read_bytes()

    def crash(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a parq")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(OSError):
        store.add_row({**base, "spec_id": "0" * 12})
    assert (tmp_path / "trials.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv", "trials.parquet"]


# -- a whole search in-process, with failing trials ---------------------------------------
def test_two_step_search_records_failed_trials_and_completes(tmp_path, data_dir, monkeypatch):
    import search_fakes
    from nas.driver import SearchOptions, run_search

    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())  # Ray workers import search_fakes
    out = tmp_path / "run"
    opts = SearchOptions(budget="smoke", num_samples=5, data=str(data_dir), out=str(out),
                         max_failures=1, seed=3)
    run_dir, finished = run_search(opts, trial_fn=search_fakes.failing_trial)
    assert finished and run_dir == out.resolve()

    table = pd.read_parquet(out / "trials.parquet")
    store = RunStore(out)
    planned = [s.id for step in (1, 2) for s in store.read_plan(step)]
    assert sorted(table["spec_id"]) == sorted(planned) and len(set(planned)) == 10
    failing = table["spec_id"].map(search_fakes.fails)
    assert failing.any() and (~failing).any()  # the seed gives both kinds
    assert (table.loc[failing, "status"] == "failed").all()
    assert table.loc[failing, "error"].str.startswith("FloatingPointError: loss became nan").all()
    assert table.loc[failing, "ap_hard"].isna().all()
    assert (table.loc[~failing, "status"] == "ok").all()
    # a failing trial ran 1 + max_failures times, a good one once
    attempts = Counter(line.split()[1] for line in (out / "attempts.log").read_text().splitlines())
    assert all(attempts[i] == (2 if search_fakes.fails(i) else 1) for i in planned)
    # every row within +-2% of 2.5 GFLOPs (independently recounted)
    for spec_yaml in table["spec_yaml"]:
        assert abs(vga_gflops(DetectorSpec.from_yaml(spec_yaml)) - 2.5) <= 0.05
    # step 2 respects step 1's ranges as the driver widened them
    from nas.spaces.scrfd import step2_ranges

    ranges = step2_ranges(store, store.read_config()["search"])
    step2 = table[table["step"] == 2]
    for q, (low, high) in ranges.items():
        assert step2[q].between(low, high).all(), q
    # provenance first, analysis and exports after
    config = store.read_config()
    assert config["versions"]["torch"] and config["git_revision"] and config["seed"] == 3
    assert (out / "analysis" / "ranges_step1.csv").is_file()
    assert (out / "plan" / "step2_ranges.csv").is_file()  # the constraint step 2 was drawn with
    assert (out / "analysis" / "report.md").is_file()
    exported = sorted((out / "export").glob("*.yaml"))
    best = table[table["status"] == "ok"].sort_values("ap_hard", ascending=False)
    assert [p.name for p in exported][:1] == [f"1_{best.iloc[0]['spec_id']}.yaml"]
    for path in exported:
        assert load_config(path).spec.id == path.stem.split("_", 1)[1]


# -- SIGKILL the driver, then --resume ------------------------------------------------------
def _rows(run: Path) -> int:
    try:
        return len(pd.read_parquet(run / "trials.parquet"))
    except (OSError, ValueError):
        return 0


def test_sigkill_then_resume_finishes_the_plan_once(tmp_path, data_dir):
    run = tmp_path / "run"
    env = _env(FACENAS_TRIAL_FN="search_fakes:slow_trial", FACENAS_FAKE_DELAY="1.5")
    cmd = [sys.executable, "-m", "nas.cli", "search", "--budget", "smoke", "--num-samples", "6",
           "--steps", "1", "--data", str(data_dir), "--seed", "1"]
    driver = subprocess.Popen(cmd + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _rows(run) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the search ended before it could be killed: " + driver.stderr.read()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed_at = _rows(run)
    assert 2 <= killed_at < 6

    resumed = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--resume", str(run)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    table = pd.read_parquet(run / "trials.parquet")
    planned = [s.id for s in RunStore(run).read_plan(1)]
    assert len(planned) == 6 and sorted(table["spec_id"]) == sorted(planned)
    assert (table["status"] == "ok").all()
    completions = Counter(line.split()[1] for line in (run / "completions.log").read_text().splitlines())
    assert set(completions) == set(planned) and max(completions.values()) == 1
    assert "top 5 by ap_hard" in resumed.stdout
