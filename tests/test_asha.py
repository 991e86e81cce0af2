"""Multi-fidelity search (nas/fidelity.py): rungs, ASHA stopping weak trials through the one
driver, stopped trials recorded once and kept out of the ranking, kill + resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from _cli import fakes_pythonpath
from detectors.errors import UserError
from nas.cli import main
from nas.fidelity import fidelity_from, rung_fractions, rung_iterations, warmup_note
from nas.results import RunStore



def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": fakes_pythonpath(), **extra}


def test_rungs_hand_computed():
    assert rung_fractions(1 / 9, 3) == pytest.approx([1 / 9, 1 / 3, 1])
    assert rung_fractions(0.25, 2) == pytest.approx([0.25, 0.5, 1])
    assert rung_fractions(0.3, 2) == pytest.approx([0.3, 0.6, 1])  # 1.2 is past the end
    assert rung_fractions(None, 3) == [1.0]
    assert rung_iterations([1 / 9, 1 / 3, 1], 250) == [28, 84, 250]  # ceil(27.8), ceil(83.3)
    assert rung_iterations([1 / 9, 1 / 3, 1], 9) == [1, 3, 9]
    f = fidelity_from("asha", None, None, 250)
    assert (f.grace, f.reduction_factor) == pytest.approx((1 / 9, 3))


def test_a_first_rung_inside_the_warm_up_is_pointed_out():
    """The quick recipe (250 iterations, 50 of warm-up): the default first rung, iteration 28,
    is inside the warm-up; the suggested grace puts it at iteration 51, past it."""
    note = warmup_note(fidelity_from("asha", None, None, 250), 250, 50)
    assert "iteration 28 of 250" in note and "50-iteration warm-up" in note
    suggested = float(note.split("--grace ")[1].split()[0])
    assert rung_iterations(fidelity_from("asha", suggested, 3, 250).rungs, 250)[0] == 51
    assert warmup_note(fidelity_from("asha", suggested, 3, 250), 250, 50) is None
    assert warmup_note(fidelity_from("asha", 1 / 3, 3, 250), 250, 50) is None
    assert warmup_note(fidelity_from("fifo", 1 / 9, 3, 250), 250, 50) is None  # stops nothing
    assert warmup_note(fidelity_from("asha", 1 / 9, 3, 250), 250, 0) is None
    # the smoke budget: 2 iterations, 1 of warm-up; no grace < 1 clears it, and none is offered
    smoke = warmup_note(fidelity_from("asha", None, None, 2), 2, 1)
    assert "or more" not in smoke and "longer budget" in smoke


@pytest.mark.parametrize("args, message", [
    (("asha", 0.5, 2, 1), "needs at least two rungs, but this budget trains 1 iterations"),
    (("asha", 1.5, 3, 100), "--grace 1.5 is not shorter than the schedule"),
    (("asha", None, 1.5, 100), "--reduction-factor must be >= 2, got 1.5"),
    (("hyperband", None, None, 100), "--scheduler 'hyperband' is not one of fifo, asha"),
])
def test_bad_fidelity_options(args, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fidelity_from(*args)


@pytest.mark.parametrize("extra, words", [
    (["--reduction-factor", "1"], "--reduction-factor must be >= 2"),
    (["--grace", "2"], "is not shorter than the schedule"),
    (["--space", "bfbox"], "--scheduler asha does not apply to --space bfbox: its candidates are not trained"),
    (["--space", "asfd"], "--scheduler asha does not apply to --space asfd"),
])
def test_bad_scheduler_options_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    code = main(["search", "--budget", "smoke", "--scheduler", "asha", "--data", str(data),
                 "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_asha_stops_weak_trials_and_ranks_only_full_fidelity(tmp_path, monkeypatch):
    import search_fakes
    from nas.driver import SearchOptions, run_search

    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    # one trial at a time: each reaches a rung after the earlier ones did, so ASHA can cut it
    opts = SearchOptions(budget="smoke", num_samples=6, steps="1", data=str(data), out=str(out),
                         scheduler="asha", grace=1 / 9, reduction_factor=3, max_concurrent=1,
                         seed=2)
    _, finished = run_search(opts, trial_fn=search_fakes.rung_trial)
    assert finished
    table = pd.read_parquet(out / "trials.parquet")
    planned = [s.id for s in RunStore(out).read_plan(1)]
    assert sorted(table["spec_id"]) == sorted(planned)  # every trial: one row
    stopped, ok = table[table["status"] == "stopped"], table[table["status"] == "ok"]
    assert len(stopped) >= 1 and len(ok) >= 1 and len(stopped) + len(ok) == 6
    assert (ok["fidelity"] == 1.0).all() and (stopped["fidelity"] < 1.0).all()
    assert ok[["ap_hard_r1", "ap_hard_r2", "ap_hard_r3"]].notna().all().all()
    # a stopped trial's AP is its last rung's; it never trained to the end
    assert (stopped["ap_hard"] == stopped["ap_hard_r1"].where(stopped["fidelity"] < 0.2,
                                                               stopped["ap_hard_r2"])).all()
    rungs = Counter(l.split()[1] for l in (out / "rungs.log").read_text().splitlines())
    completed = {l.split()[1] for l in (out / "completions.log").read_text().splitlines()}
    assert completed == set(ok["spec_id"])
    assert all(rungs[i] < 3 for i in stopped["spec_id"]) and all(rungs[i] == 3 for i in ok["spec_id"])
    # one Tune checkpoint per trial, the latest: that of its last reported rung (an ok trial
    # reports two of its three rungs, a stopped one those it reached)
    kept = sorted((d.parent.name.split("spec_id=")[1][:12], (d / "checkpoint.pt").read_text())
                  for d in (out / "ray").glob("step1-*/*/checkpoint_*"))
    assert kept == sorted((i, f"rung {min(rungs[i], 2)}\n") for i in table["spec_id"])
    # ASHA's rule at rung 1 for the second trial: stopped iff below the first one's value
    first, second = (table.set_index("spec_id").loc[i] for i in planned[:2])
    assert (second["status"] == "stopped") == (second["ap_hard_r1"] < first["ap_hard_r1"])
    # ASHA's saved decisions are the table's stopped set
    saved = json.loads((out / "asha" / "step1.json").read_text())
    assert {e["spec_id"] for e in saved["decisions"] if e["decision"] == "STOP"} == set(stopped["spec_id"])
    # the ranking (export) reads full-fidelity trials only
    exported = sorted((out / "export").glob("*.yaml"))
    assert exported and all(p.stem.split("_")[1] in set(ok["spec_id"]) for p in exported)
    assert "stopped early" in (out / "analysis" / "report.md").read_text()


@pytest.mark.slow
def test_sigkill_then_resume_of_an_asha_search_records_every_trial_once(tmp_path):
    run = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    env = _env(FACENAS_TRIAL_FN="search_fakes:rung_trial", FACENAS_FAKE_DELAY="1.5")
    cmd = [sys.executable, "-m", "nas.cli", "search", "--budget", "smoke", "--num-samples", "6",
           "--steps", "1", "--data", str(data), "--seed", "1", "--scheduler", "asha"]
    driver = subprocess.Popen(cmd + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240

    def rows() -> int:
        path = run / "trials.parquet"
        try:
            return len(pd.read_parquet(path)) if path.is_file() else 0
        except OSError:  # replaced (atomically) between pyarrow's opens of it: read again
            return 0

    while rows() < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the search ended before it could be killed: " + driver.stderr.read()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= rows() < 6
    resumed = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--resume", str(run)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    table = pd.read_parquet(run / "trials.parquet")
    planned = [s.id for s in RunStore(run).read_plan(1)]
    assert sorted(table["spec_id"]) == sorted(planned) and table["spec_id"].is_unique
    assert set(table["status"]) <= {"ok", "stopped"}
    # the stopped rows are exactly ASHA's saved STOP decisions, kept across the kill
    saved = json.loads((run / "asha" / "step1.json").read_text())["decisions"]
    assert {e["spec_id"] for e in saved if e["decision"] == "STOP"} == \
        set(table.loc[table["status"] == "stopped", "spec_id"])
    completions = Counter(l.split()[1] for l in (run / "completions.log").read_text().splitlines())
    assert max(completions.values()) == 1  # no trial trained to the end twice
    assert set(completions) == set(table.loc[table["status"] == "ok", "spec_id"])


def test_rung_loss_is_the_mean_of_the_last_tenth_of_iterations(tmp_path):
    from nas.fidelity import rung_loss

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"iteration": {i}, "total": {float(i)}}}\n' for i in range(1, 31)))
    assert rung_loss(path, 30) == pytest.approx((28 + 29 + 30) / 3)  # 30 // 10 = 3 iterations
    assert rung_loss(path, 9) == pytest.approx(9.0)  # at least one
    assert math.isnan(rung_loss(tmp_path / "none.jsonl", 5))


def test_rung_metric_picks_what_asha_compares():
    from nas.driver import _scheduler
    from nas.phases import Phase

    phase = Phase(step=1, label="step 1", plan=lambda store, search: [])
    for metric, (key, mode) in {"ap": ("ap_hard", "max"), "loss": ("rung_loss", "min")}.items():
        f = fidelity_from("asha", 1 / 9, 3, 250, metric).to_dict()
        sched = _scheduler({"fidelity": f}, phase)
        assert (sched._metric, sched._mode) == (key, mode)
    with pytest.raises(UserError, match="--rung-metric 'auc' is not one of ap, loss"):
        fidelity_from("asha", 1 / 9, 3, 250, "auc")
