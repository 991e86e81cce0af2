"""ASHA's rung records survive --resume (nas/asha_state.py), Tune checkpoints are kept to the
latest, and a trial's result.json is read with a bounded retry (nas/results.py, nas/driver.py).

The scheduler is driven directly, with Tune's own Trial objects and a forced arrival order;
a kill is dropping the scheduler object and keeping only RUN_DIR/asha/step1.json.
"""

from __future__ import annotations

import json
import math

import pytest
from ray.tune.experiment import Trial

from detectors.errors import UserError
from nas.asha_state import ResumableASHA, state_path
from nas.results import RESULT_WAITS_S, RunStore

# rf 3, rung_t milestones 1, 3 and max_t 9 (grace 1/9), AP: higher is better
SETTINGS = dict(metric="ap_hard", mode="max", max_t=9.0, reduction_factor=3.0)

# Before the kill: a, b, c reach rung 1, a reaches rung 3.
BEFORE = [("a", 1, 0.90), ("b", 1, 0.80), ("c", 1, 0.95), ("a", 3, 0.50)]
# After it, uninterrupted: d and e reach rung 1, c and e rung 3.
AFTER = [("d", 1, 0.85), ("e", 1, 0.92), ("c", 3, 0.40), ("e", 3, 0.60)]
# After a kill the resumed Tune run restarts the trials without a row: a and c (mid-rung),
# and b (stopped at rung 1, its row never written). Restarted from their checkpoints they
# re-report the rungs they had passed, with values of a later checkpoint. d arrives first.
RESUMED = [("d", 1, 0.85), ("a", 1, 0.70), ("b", 1, 0.85), ("c", 1, 0.96), ("a", 3, 0.55),
           ("e", 1, 0.92), ("c", 3, 0.40), ("e", 3, 0.60)]


def _feed(scheduler, events, stopped: set[str]) -> None:
    """One Tune run: a Trial per spec (fresh trial ids, as a resumed run's), results in the
    given order; a stopped trial reports nothing more. Each trial still running completes."""
    trials = {}
    for spec_id, t, value in events:
        if spec_id in stopped:
            continue
        if spec_id not in trials:
            trials[spec_id] = Trial("__fake", config={"spec_id": spec_id}, stub=True)
            scheduler.on_trial_add(None, trials[spec_id])
        result = {"rung_t": float(t), "ap_hard": value}
        if scheduler.on_trial_result(None, trials[spec_id], result) == "STOP":
            stopped.add(spec_id)
            scheduler.on_trial_complete(None, trials[spec_id], result)
    for spec_id, trial in trials.items():
        if spec_id not in stopped:  # trains to max_t: ASHA stops it there, compares nothing
            final = {"rung_t": 9.0, "ap_hard": 0.5}
            assert scheduler.on_trial_result(None, trial, final) == "STOP"
            scheduler.on_trial_complete(None, trial, final)


def test_a_resumed_asha_stops_the_trials_an_uninterrupted_one_stops(tmp_path):
    """Hand-computed with ASHA's rule (stop below the (1 - 1/rf) percentile of the values
    recorded at the rung before): b (0.80 < 0.90); d (0.85 < 0.917, the 66.7th percentile of
    0.80, 0.90, 0.95); c at rung 3 (0.40 < 0.50). e: 0.92 >= 0.90 and 0.60 >= 0.467."""
    uninterrupted, stopped = ResumableASHA(None, **SETTINGS), set()
    _feed(uninterrupted, BEFORE + AFTER, stopped)
    assert stopped == uninterrupted.stopped_set() == {"b", "c", "d"}

    path = state_path(tmp_path, 1)
    killed, stopped = ResumableASHA(path, **SETTINGS), set()
    _feed(killed, BEFORE, stopped)
    saved = json.loads(path.read_text())
    assert [(e["spec_id"], e["rung_t"], e["value"], e["decision"]) for e in saved["decisions"]] \
        == [("a", 1, 0.9, "CONTINUE"), ("b", 1, 0.8, "STOP"), ("c", 1, 0.95, "CONTINUE"),
            ("a", 3, 0.5, "CONTINUE")]
    del killed
    resumed, stopped_after = ResumableASHA(path, **SETTINGS), set()
    assert resumed.stopped_set() == {"b"}  # restored from the file alone
    _feed(resumed, RESUMED, stopped_after)
    assert resumed.stopped_set() == {"b", "c", "d"}
    assert stopped_after == {"b", "c", "d"}  # b stopped again at its rung when it re-reported
    # the re-reports were not recorded again: each (spec, rung) once, with its first value
    log = [(e["spec_id"], e["rung_t"], e["value"]) for e in json.loads(path.read_text())["decisions"]]
    assert len(log) == len({(s, t) for s, t, _ in log}) == 8
    assert ("a", 1.0, 0.9) in log and ("a", 1.0, 0.7) not in log
    # a second kill at the end restores the same state
    assert ResumableASHA(path, **SETTINGS).state_dict() == resumed.state_dict()

    # Without the saved rungs, the same arrival order decides otherwise: d arrives at an
    # empty rung 1 and continues, a's re-report (0.70 < d's 0.85) stops it, and b, whose
    # stop was lost with the killed driver, continues (0.85 >= 0.80).
    forgetful, stopped = ResumableASHA(None, **SETTINGS), set()
    _feed(forgetful, RESUMED, stopped)
    assert forgetful.stopped_set() == stopped == {"a"}


def _write_state(tmp_path, edit) -> object:
    path = state_path(tmp_path, 1)
    _feed(ResumableASHA(path, **SETTINGS), BEFORE, set())
    state = json.loads(path.read_text())
    text = edit(state)
    path.write_text(text if isinstance(text, str) else json.dumps(state))
    return path


def _flip_b(state):
    state["decisions"][1]["decision"] = "CONTINUE"  # b: 0.80 < 0.90 must stop


@pytest.mark.parametrize("edit, words", [
    (lambda s: '{"format": "facenas-asha-state", "decis', "not readable JSON"),
    (lambda s: "", "not readable JSON"),
    (lambda s: "[]", "not a facenas-asha-state file"),
    (_flip_b, "the logged CONTINUE of spec b at rung_t 1 does not follow"),
    (lambda s: s.update(reduction_factor=4.0), "reduction_factor is 4.0 but this run's ASHA has 3.0"),
    (lambda s: s["decisions"][0].update(value="high"), "decision 0's value is 'high', not a number"),
    (lambda s: s["decisions"][0].update(rung_t=9.0), "decision 0's rung_t 9 is not a rung below max_t"),
    (lambda s: s["decisions"].append(dict(s["decisions"][0])), "spec a is logged twice at rung_t 1"),
])
def test_a_corrupt_state_is_refused_naming_the_file(tmp_path, edit, words):
    path = _write_state(tmp_path, edit)
    with pytest.raises(UserError) as err:
        ResumableASHA(path, **SETTINGS)
    message = str(err.value)
    assert message.startswith(f"{path}: corrupt ASHA scheduler state") and words in message
    assert len(message.splitlines()) == 1


def test_resume_with_a_corrupt_state_exits_2_before_anything_trains(tmp_path, capsys):
    import ray

    from nas.cli import main
    from nas.options import SearchOptions
    from nas.search_config import resolve_search

    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    search = resolve_search(SearchOptions(budget="smoke", scheduler="asha", data=str(data),
                                          steps="1", num_samples=2))
    RunStore(run).write_config({"search": search, "seed": 0})
    path = state_path(run, 1)
    path.parent.mkdir()
    path.write_text("{ not json")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    capsys.readouterr()  # resolve_search's warm-up note
    code = main(["search", "--resume", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"facenas search: error: {path.resolve()}: corrupt ASHA scheduler state")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no plan, no ray/
    assert not ray.is_initialized()


# -- result.json read back by the driver -------------------------------------------------
def test_a_result_that_appears_after_the_first_read_is_read(tmp_path):
    store = RunStore(tmp_path)
    waits = []

    def sleep(s):  # the trial's node writes it while the driver waits
        waits.append(s)
        store.write_result(store.trial_dir(1, "abc"), {"status": "ok", "ap_hard": 0.25})

    result, why = store.wait_result(1, "abc", sleep=sleep)
    assert result == {"status": "ok", "ap_hard": 0.25} and why == ""
    assert waits == [RESULT_WAITS_S[0]]  # read twice: missing, then there


def test_a_missing_result_is_said_in_one_line_and_never_recorded_stopped(tmp_path, capsys):
    from nas.driver import _finished_metrics
    from nas.phases import Phase

    store = RunStore(tmp_path)
    phase = Phase(step=1, label="step 1", plan=lambda store, search: [])
    waits = []
    reported = {"status": "ok", "error": "", "wall_time_s": 3.0, "ap_easy": 0.5,
                "ap_medium": 0.4, "ap_hard": 0.3, "fidelity": 1.0, "rung_t": 9.0,
                "training_iteration": 3, "time_total_s": 4.0, "done": True, "trial_id": "x"}
    metrics = _finished_metrics(store, phase, "abc", reported, stopped=False, sleep=waits.append)
    assert waits == list(RESULT_WAITS_S) and sum(waits) == pytest.approx(3.0)
    assert metrics == {k: reported[k] for k in ("status", "error", "wall_time_s", "ap_easy",
                                                "ap_medium", "ap_hard", "fidelity", "rung_t")}
    err = capsys.readouterr().err.strip().splitlines()
    path = store.result_path(1, "abc")
    assert err == [f"step 1: trial abc: {path} is missing after 5 reads over 3 s; recorded from "
                   "the metrics it reported to Tune"]
    # an unreadable one, and Tune holding nothing either: failed, with the reason, not stopped
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "o')
    metrics = _finished_metrics(store, phase, "abc", {"training_iteration": 1}, stopped=False,
                                sleep=lambda s: None)
    assert metrics["status"] == "failed" and math.isnan(metrics["ap_hard"])
    assert metrics["error"].startswith(f"{path} is unreadable (")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # only ASHA's own decision makes a row 'stopped'
    assert _finished_metrics(store, phase, "abc", {"ap_hard": 0.1, "rung_t": 1.0}, stopped=True,
                             sleep=lambda s: None)["status"] == "stopped"


@pytest.mark.parametrize("value, kept", [("1", 1), ("3", 3), ("all", None)])
def test_keep_checkpoints_option(value, kept):
    import argparse

    from nas.commands.search import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).keep_checkpoints == 1
    assert parser.parse_args(["--keep-checkpoints", value]).keep_checkpoints == kept


def test_a_bad_keep_checkpoints_is_one_line_exit_2(capsys):
    from nas.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["search", "--keep-checkpoints", "0"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "--keep-checkpoints: '0' is not a count >= 1 or 'all'" in err
