"""Distributed training on CPU (gloo): N processes x B/N images equal 1 process x B, exact
resume with another N after a SIGKILL, agreement on a non-finite step, gradient
accumulation, and the launcher's bad-input lines (detectors/distributed.py, detectors/train.py,
`facenas train --nproc`)."""

from __future__ import annotations

import json
import math
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers import tests/_ddp.py

import _ddp  # noqa: E402
from detectors import distributed  # noqa: E402
from detectors.checkpoint import load_checkpoint  # noqa: E402
from detectors.config import TrainConfig, recipe_from_dict  # noqa: E402
from detectors.spec import DetectorSpec  # noqa: E402
from detectors.train import train  # noqa: E402

# BatchNorm backbone (what SyncBN must synchronise), GroupNorm head (untouched by it).
TINY = {
    "name": "tiny",
    "backbone": {"stem_width": 8, "stem": "deep", "stages": [
        {"block": "basic", "depth": 1, "width": w} for w in (8, 16, 16, 16)]},
    "neck": {"type": "pafpn", "channels": 8},
    "head": {"channels": 16, "num_convs": 1, "norm": "gn", "gn_groups": 4},
}
ITERS = 20
OPTIONS = dict(fp32=True, progress=False, num_threads=1, checkpoint_every=10, log_every=7)


def _config(**recipe) -> TrainConfig:
    base = dict(train_size=64, batch_size=8, workers=0, seed=1, sync_bn=True,
                schedule={"lr": 0.02, "unit": "iterations", "total": ITERS, "milestones": [15],
                          "warmup_iters": 4})
    return TrainConfig(DetectorSpec.from_dict(TINY), recipe_from_dict({**base, **recipe}))


def _launch(nproc: int, fn, *args) -> dict:
    # fork: the same elastic agent as `--nproc` (which spawns), without re-importing torch
    # in every worker (~10 s each on a busy 2-core machine)
    return distributed.launch(nproc, distributed.free_port(), fn, *args, start_method="fork")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    """Per-iteration losses (total) within 1e-4 relative, each part within 1e-4 of the total
    (the small classification part alone carries float32 reduction-order noise ~1e-4 of
    itself); one line per iteration; final weights within 1e-4."""
    ma, mb = _metrics(a), _metrics(b)
    assert [m["iteration"] for m in ma] == [m["iteration"] for m in mb] == list(range(1, ITERS + 1))
    for x, y in zip(ma, mb):
        assert x["num_pos"] == y["num_pos"] > 0 and x["lr"] == pytest.approx(y["lr"], rel=1e-12)
        assert x["skipped"] == y["skipped"]
        if x["skipped"]:
            continue
        assert y["total"] == pytest.approx(x["total"], rel=1e-4), x["iteration"]
        for key in ("cls", "box"):
            assert y[key] == pytest.approx(x[key], abs=1e-4 * x["total"]), (x["iteration"], key)
    wa, wb = (load_checkpoint(r / "checkpoint.pt") for r in (a, b))
    assert wa["iteration"] == wb["iteration"] == ITERS
    for key, tensor in wa["model"].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(wb["model"][key], tensor, rtol=1e-4, atol=1e-4, msg=key)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "root", num_train=16, num_val=1,
                    image_size=128, progress=False)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict:
    """Four runs of the same config (batch 8, SyncBN, 20 iterations) whose loss at iteration
    4 is NaN on the last rank only:
    - one: 1 process x 8 images (SyncBN alone is BatchNorm), uninterrupted: the reference;
    - killed: 2 processes x 4 images; rank 1 is SIGKILLed at iteration 13 (checkpoint: 10);
    - again2: killed's directory resumed with 2 processes; again1: resumed with 1 process.
    Two launches only: starting processes costs seconds each on a busy machine."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    base, root = tmp_path_factory.mktemp("ddp"), data
    out = {name: base / name for name in ("one", "killed", "again2", "again1")}
    train(_config(), root, out["one"], fault=_ddp.nan_rank1_at_4, **OPTIONS)
    t0 = time.monotonic()
    failure = None
    try:
        _launch(2, _ddp.train_worker, _config(), str(root), str(out["killed"]), OPTIONS,
                "nan_rank1_at_4_kill_rank1_at_13")
    except ChildFailedError as err:
        failure = err
    stopped_after = time.monotonic() - t0
    killed_at = load_checkpoint(out["killed"] / "checkpoint.pt")["iteration"]
    killed_lines = _metrics(out["killed"])
    shutil.copytree(out["killed"], out["again2"])
    shutil.copytree(out["killed"], out["again1"])
    _launch(2, _ddp.train_worker, _config(), str(root), str(out["again2"]), {**OPTIONS, "resume": True})
    train(_config(), root, out["again1"], resume=True, **OPTIONS)
    return {"out": out, "failure": failure, "stopped_after": stopped_after, "killed_at": killed_at,
            "killed_lines": killed_lines}


def test_sigkill_of_one_rank_stops_the_job(runs):
    failure = runs["failure"]
    assert failure is not None, "the job went on after a rank was killed"
    # rank 0 may fail first, on the collective its dead peer broke; rank 1, if recorded, died
    # of the SIGKILL
    assert set(failure.failures) <= {0, 1}
    assert 1 not in failure.failures or failure.failures[1].signal_name() == "SIGKILL"
    # the agent notices the dead rank within its monitor interval (0.1 s) and stops the
    # other; the bound is the collective timeout a hung rank would reach (plus start-up), not
    # a speed requirement
    assert runs["stopped_after"] < distributed.RENDEZVOUS_TIMEOUT_S + 60
    assert runs["killed_at"] == 10
    assert [m["iteration"] for m in runs["killed_lines"]] == list(range(1, 11))  # flushed at 7, 10


def test_two_processes_with_sync_bn_equal_one_process(runs):
    """2 x 4 images with SyncBN (iterations 1-10 before the kill, 11-20 resumed with 2
    processes) against 1 x 8: losses per iteration and final weights."""
    _assert_same_run(runs["out"]["one"], runs["out"]["again2"])
    assert yaml.safe_load((runs["out"]["again2"] / "config.yaml").read_text())["run"]["processes"] == 2


def test_resume_with_one_process_after_two(runs):
    _assert_same_run(runs["out"]["one"], runs["out"]["again1"])


def test_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(runs):
    """Rank 1's loss is NaN at iteration 4, rank 0's is not. Had rank 0 stepped, it would
    have applied DDP's averaged (NaN) gradients, or, with finite ones, its weights would
    differ from the one-process run, which skipped the step: the equality of weights above
    and this line show every rank skipped it."""
    for name in ("one", "again2"):
        lines = _metrics(runs["out"][name])
        assert [m["iteration"] for m in lines if m["skipped"]] == [4], name
        assert math.isnan(lines[3]["total"]) and all(math.isfinite(m["total"]) for m in lines if not m["skipped"])


def test_gradient_accumulation_two_by_four_equals_one_by_eight(data):
    """One process: a batch of 8 whose second half repeats the first. With
    grad_accumulation 2 the two micro-batches are equal (so are their normalisers and their
    BatchNorm statistics), and the SGD step must equal the full batch's: losses and weights."""
    from detectors.batches import SeededBatches
    from detectors.device import training_mode
    from detectors.model import build
    from detectors.train import _Loop, _optimiser

    half = next(SeededBatches(data, _config(batch_size=4).recipe).iterate(0))
    batch = {k: (torch.cat([v, v]) if torch.is_tensor(v) else v + v) for k, v in half.items()}
    results = []
    for k in (1, 2):
        recipe = _config(grad_accumulation=k, sync_bn=False).recipe
        torch.manual_seed(0)
        model = build(_config().spec)
        opt, sched = _optimiser(model.parameters(), recipe, ())
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loop = _Loop(model, recipe, training_mode(torch.device("cpu"), fp32=True), opt, sched, scaler)
        logged = [loop.iteration(batch, it)[0]["total"].item() for it in range(3)]
        results.append((logged, model.state_dict()))
    (l1, w1), (l2, w2) = results
    assert l2 == pytest.approx(l1, rel=1e-5)
    assert l1[0] != pytest.approx(l1[2], rel=1e-3)  # the steps moved the weights
    for key, tensor in w1.items():
        if tensor.is_floating_point() and "running" not in key:
            torch.testing.assert_close(w2[key], tensor, rtol=1e-5, atol=1e-6, msg=key)


# --- bad input: one line, exit 2 -------------------------------------------------------------

def _cli(capsys, *args: str) -> tuple[int, str]:
    from nas.cli import main

    code = main(["train", *args])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    recipe = _config().recipe.to_dict()
    recipe["schedule"].update(total=2, milestones=[1])
    path.write_text(yaml.safe_dump({"spec": TINY, "recipe": recipe}))
    return path


def test_nproc_above_the_cpus_refused(capsys, data, config_file, tmp_path):
    n = distributed.available_slots("cpu") + 1
    code, err = _cli(capsys, str(config_file), "--budget", "paper", "--data", str(data), "--device", "cpu",
                     "--nproc", str(n), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.splitlines()) == 1 and f"--nproc {n}" in err and "CPUs" in err


def test_rendezvous_port_in_use_refused(capsys, data, config_file, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, err = _cli(capsys, str(config_file), "--budget", "paper", "--data", str(data), "--device", "cpu",
                         "--nproc", "2", "--port", str(port), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.splitlines()) == 1 and f"--port {port}" in err and "in use" in err


def test_batch_that_does_not_divide_refused(capsys, data, config_file, tmp_path):
    code, err = _cli(capsys, str(config_file), "--budget", "paper", "--data", str(data), "--device", "cpu",
                     "--nproc", "2", "--set", "recipe.grad_accumulation=8", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.splitlines()) == 1 and "does not divide" in err and "grad_accumulation 8" in err


def test_resume_of_another_config_refused_but_another_nproc_or_accumulation_allowed(
        capsys, data, config_file, tmp_path):
    out = tmp_path / "r"
    common = [str(config_file), "--budget", "paper", "--data", str(data), "--device", "cpu",
              "--threads", "1", "--quiet", "--out", str(out)]
    assert _cli(capsys, *common, "--set", "recipe.schedule.total=2")[0] == 0
    code, err = _cli(capsys, *common, "--resume", "--nproc", "2", "--set", "recipe.seed=5")
    assert code == 2 and len(err.splitlines()) == 1 and "different spec or recipe" in err
    code, err = _cli(capsys, *common, "--resume", "--set", "spec.head.channels=32")
    assert code == 2 and "different spec or recipe" in err
    # execution settings are not the run's identity
    from detectors.train import check_run_dir

    check_run_dir(_config(grad_accumulation=2, sync_bn=False,
                          schedule={"lr": 0.02, "unit": "iterations", "total": 2,
                                    "milestones": [1], "warmup_iters": 4}), out, resume=True)


def test_loss_without_positives_keeps_box_and_keypoint_outputs_in_the_graph():
    """A process whose shard has no positive anchor must still give every head output a
    gradient (zero), or DistributedDataParallel waits for the missing ones."""
    from detectors.losses import Targets, detection_loss

    cls = torch.randn(2, 10, requires_grad=True)
    box = torch.rand(2, 10, 4, requires_grad=True)
    kps = torch.randn(2, 10, 10, requires_grad=True)
    none = torch.zeros(2, 10, dtype=torch.bool)
    targets = Targets(torch.zeros(0, 4), torch.zeros(0, 5, 2), torch.zeros(0, dtype=torch.bool),
                      torch.zeros(0, 2), torch.zeros(0))
    parts = detection_loss(cls, box, kps, none, none, targets)
    assert parts["box"].item() == parts["kps"].item() == 0
    parts["total"].backward()
    assert box.grad is not None and kps.grad is not None and not box.grad.any() and not kps.grad.any()
    assert cls.grad.abs().sum() > 0


def test_a_dead_rank_is_one_line_and_exit_1(capsys, data, config_file, tmp_path, monkeypatch):
    """What `facenas train --nproc` prints when the agent reports a killed worker (the kill
    itself is exercised by the SIGKILL test above)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def killed(*args, **kwargs):
        raise ChildFailedError("worker", {1: ProcessFailure(1, 12345, -9, "<N/A>")})

    monkeypatch.setattr(distributed, "launch", killed)
    code, err = _cli(capsys, str(config_file), "--budget", "paper", "--data", str(data), "--device", "cpu",
                     "--nproc", "2", "--out", str(tmp_path / "r"))
    assert code == 1 and len(err.splitlines()) == 1
    assert "rank 1 failed (signal SIGKILL)" in err and "--resume" in err
