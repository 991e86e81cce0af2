"""Inside one Ray trial (nas.driver._ray_trainable, called in-process with Tune's context
stubbed): a CUDA out-of-memory error is retried once with twice the gradient accumulation
(same batch), a recurring one is the trial's failed row without a Tune retry, other errors
go to Tune as before; a trial Ray gave no GPU has CUDA hidden, one given a GPU where CUDA
cannot start refuses, naming the node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import search_fakes
from detectors.spec import DetectorSpec
from nas import driver
from nas.trial import TrialRequest

REPO = Path(__file__).resolve().parents[1]
SPEC = DetectorSpec.from_yaml(REPO / "experiments" / "models" / "scrfd_2.5g.yaml").to_yaml()
RECIPE = {"batch_size": 8, "train_size": 128}


@pytest.fixture()
def tune_stub(monkeypatch):
    from ray import tune

    reported: list[dict] = []

    class _Context:
        def get_trial_id(self):
            return "t0"

    monkeypatch.setattr(tune, "get_context", lambda: _Context())
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reported.append(metrics))
    monkeypatch.setattr("ray.get_gpu_ids", lambda: [])
    monkeypatch.setattr(driver, "_where_it_ran", lambda: {"node_id": "n0", "host": "h"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # restored after the test
    return reported


def _run(tmp_path: Path, spec_id: str, trial_fn=search_fakes.oom_trial, rows: bool = True):
    out = tmp_path / "trials" / f"step1-{spec_id}"
    request = TrialRequest(spec_id=spec_id, spec_yaml=SPEC, step=1, seed=0, budget="smoke",
                           data_root=str(tmp_path), out_dir=str(out), recipe=dict(RECIPE),
                           search={"recipe": dict(RECIPE)})
    driver._ray_trainable({"spec_id": spec_id}, {spec_id: request.to_dict()}, trial_fn, rows)
    return json.loads((out / "result.json").read_text())


def _attempts(tmp_path: Path, spec_id: str) -> int:
    log = tmp_path / "attempts.log"
    return sum(l.split()[1] == spec_id for l in log.read_text().splitlines()) if log.is_file() else 0


# ids fixed so search_fakes.oom_kind gives 0 (always), 1 (at the full micro-batch), 2 (never)
ALWAYS, ONCE, NEVER = "000000000000", "000000000001", "000000000002"


def test_out_of_memory_once_is_retried_with_grad_accumulation_and_same_batch(tmp_path, tune_stub):
    import os

    result = _run(tmp_path, ONCE)
    assert result["status"] == "ok" and result["oom_retry"] is True
    assert result["grad_accumulation"] == 2 == result["seen_accumulation"]
    assert result["seen_search_accumulation"] == 2  # supernet/ASFD trials read the search recipe
    assert result["seen_batch"] == RECIPE["batch_size"]  # the effective batch is kept
    assert _attempts(tmp_path, ONCE) == 2 and tune_stub[-1]["oom_retry"] is True
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # Ray gave no GPU: CUDA hidden
    # a restart of that trial (Tune's, or --resume) trains with the retry's recipe at once
    again = _run(tmp_path, ONCE)
    assert again["status"] == "ok" and again["seen_accumulation"] == 2
    assert _attempts(tmp_path, ONCE) == 3


def test_out_of_memory_again_is_a_failed_row_not_a_tune_retry(tmp_path, tune_stub):
    result = _run(tmp_path, ALWAYS)  # returns: Tune records it, does not retry it
    assert result["status"] == "failed" and result["oom_retry"] is True
    assert result["grad_accumulation"] == 2 and _attempts(tmp_path, ALWAYS) == 2
    assert result["error"] == ("CUDA out of memory again with grad_accumulation 2 (half the "
                               "micro-batch): OutOfMemoryError: CUDA out of memory. Tried to "
                               "allocate 30.00 GiB")
    # a phase without rows (a supernet) has nowhere to record it: its trial fails, one line
    supernet = "000000000006"  # oom_kind 0 as well
    with pytest.raises(RuntimeError, match=r"^CUDA out of memory again with grad_accumulation 2 "):
        _run(tmp_path, supernet, rows=False)
    assert _attempts(tmp_path, supernet) == 2


def test_no_out_of_memory_no_retry_and_other_errors_go_to_tune(tmp_path, tune_stub):
    result = _run(tmp_path, NEVER)
    assert result["status"] == "ok" and "oom_retry" not in result
    assert result["seen_accumulation"] == 1 and _attempts(tmp_path, NEVER) == 1
    failing = "000000000003"  # search_fakes.fails: a NaN loss, which Tune retries
    with pytest.raises(FloatingPointError):
        _run(tmp_path, failing, trial_fn=search_fakes.failing_trial)
    error = (tmp_path / "trials" / f"step1-{failing}" / "error.txt").read_text()
    assert error.startswith("FloatingPointError: loss became nan")


def test_a_gpu_where_cuda_cannot_start_refuses_naming_the_node(tmp_path, tune_stub, monkeypatch):
    monkeypatch.setattr("ray.get_gpu_ids", lambda: [0])
    monkeypatch.setattr(driver, "_node_name", lambda: "gpu-host (10.1.2.3, node abcd1234)")
    monkeypatch.setattr("nas.driver.cuda_problem", lambda: "torch.cuda.is_available() is False")
    with pytest.raises(driver.CudaUnavailable):
        _run(tmp_path, NEVER)
    error = (tmp_path / "trials" / f"step1-{NEVER}" / "error.txt").read_text()
    assert error == ("CudaUnavailable: CUDA cannot start on Ray node gpu-host (10.1.2.3, node "
                     "abcd1234), which gave this trial GPU 0: torch.cuda.is_available() is "
                     "False; refusing to train on the CPU")
    assert _attempts(tmp_path, NEVER) == 0  # the trial function never ran
