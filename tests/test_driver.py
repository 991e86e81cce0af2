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
from detectors.cost import cost, vga_gflops
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
    # gflops_mmcv (what an mmcv band counts) follows the contract's columns
    assert list(table.columns) == COLUMNS + ["gflops_mmcv"]
    csv = pd.read_csv(tmp_path / "trials.csv")
    assert list(csv.columns) == COLUMNS + ["gflops_mmcv"] and csv.loc[0, "error"] == "ValueError: boom"
    r = table.iloc[0]
    assert math.isclose(r["gflops"], vga_gflops(spec), rel_tol=1e-12)
    assert math.isclose(r["gflops_mmcv"], cost(spec, (640, 640)).mmcv_flops * 0.75 / 1e9,
                        rel_tol=1e-12)
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
    # every row within +-2% of 2.5 GFLOPs as the band counts them (mmcv, independently
    # recounted), and the row carries that count
    assert store.read_config()["search"]["flops"] == "mmcv"
    for spec_yaml, mmcv in zip(table["spec_yaml"], table["gflops_mmcv"]):
        count = cost(DetectorSpec.from_yaml(spec_yaml), (640, 640)).mmcv_flops * 0.75 / 1e9
        assert abs(count - 2.5) <= 0.05 and math.isclose(mmcv, count, rel_tol=1e-12)
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
    # step 1's ranges admitted enough specs: no widening recorded, and the report says so
    assert not (out / "plan" / "step2_widening.csv").exists()
    assert "drawn within step 1's ranges (`plan/step2_ranges.csv`), not widened" in \
        (out / "analysis" / "report.md").read_text()
    exported = sorted((out / "export").glob("*.yaml"))
    best = table[table["status"] == "ok"].sort_values("ap_hard", ascending=False)
    assert [p.name for p in exported][:1] == [f"1_{best.iloc[0]['spec_id']}.yaml"]
    for path in exported:
        assert load_config(path).spec.id == path.stem.split("_", 1)[1]


def test_step2_widens_ranges_that_admit_no_spec_records_and_reports_it(tmp_path, data_dir,
                                                                         monkeypatch, capsys):
    """Step 1's ranges put 40-50% of the backbone's compute in the stem, which no 2.5 GF spec
    does (at most ~30%): step 2 widens them toward the whole space until it fills."""
    import search_fakes
    from nas.driver import SearchOptions, run_search
    from nas.spaces.scrfd import WIDEN_STEPS, plan_step2, step2_sampled_ranges, step2_ranges

    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())
    out = tmp_path / "run"
    # the ranges file is kept with the plan and read instead of bootstrapping step 1 again
    bootstrap = {"ratio_stem": (0.4, 0.5), "ratio_c2": (0.1, 0.3), "ratio_c3": (0.1, 0.3),
                 "ratio_c4": (0.1, 0.3), "ratio_c5": (0.1, 0.3)}
    (out / "plan").mkdir(parents=True)
    pd.DataFrame([{"quantity": q, "low": lo, "best": (lo + hi) / 2, "high": hi, "n_models": 3}
                  for q, (lo, hi) in bootstrap.items()]).to_csv(out / "plan" / "step2_ranges.csv",
                                                                 index=False)
    opts = SearchOptions(budget="smoke", num_samples=3, data=str(data_dir), out=str(out), seed=5)
    run_dir, finished = run_search(opts, trial_fn=search_fakes.fake_trial)
    assert finished
    err = capsys.readouterr().err
    assert "(0.0% widened) and the budget band admit only 0 of 3 specs" in err
    assert "after widening step 1's ranges" in err

    store = RunStore(run_dir)
    search = store.read_config()["search"]
    kept = step2_ranges(store, search)  # step 1's ranges kept as step 1 gave them
    assert {q: pytest.approx(r) for q, r in kept.items()} == bootstrap
    tried = pd.read_csv(out / "plan" / "step2_widening.csv")
    # widening 0 is step 1's ranges; one row per step, each 1/8 further; only the last filled
    assert list(tried["widening"]) == list(range(len(tried))) and len(tried) >= 2
    assert tried["fraction"].tolist() == pytest.approx([k / WIDEN_STEPS for k in range(len(tried))])
    assert tried.loc[0, "found"] == 0 and (tried["found"].iloc[:-1] < 3).all()
    assert tried["found"].iloc[-1] == 3
    final = step2_sampled_ranges(store, search)
    f = tried["fraction"].iloc[-1]
    for q, (lo, hi) in bootstrap.items():
        assert final[q] == pytest.approx((lo * (1 - f), hi + f * (1 - hi)))
        assert final[q][0] < lo and final[q][1] > hi  # widened, from both ends
    table = pd.read_parquet(out / "trials.parquet")
    step2 = table[table["step"] == 2]
    assert len(step2) == 3 and (step2["status"] == "ok").all()
    for q, (lo, hi) in final.items():
        assert step2[q].between(lo, hi).all(), q
    assert not step2["ratio_stem"].between(*bootstrap["ratio_stem"]).any()
    # a resume that finds no plan/step2.yaml draws the same widened plan
    assert [s.id for s in plan_step2(store, search)] == [s.id for s in store.read_plan(2)]
    # the report says how far, and the final ranges
    report = (out / "analysis" / "report.md").read_text()
    assert "## Step 2's ranges, widened" in report and f"**{f:.1%} of the way**" in report
    assert f"- ratio_stem: {final['ratio_stem'][0]:.3f}–{final['ratio_stem'][1]:.3f} " \
           "(step 1: 0.400–0.500)" in report


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
