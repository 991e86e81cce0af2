"""Cheap deterministic trial functions for the driver tests (FACENAS_TRIAL_FN test hook).

They stand in for nas.trial.run_trial: same TrialRequest in, same metric columns out, in well
under a second. AP is a fixed function of the spec (more backbone compute in C2/C3 scores
higher, as SCRFD found), so rankings and bootstrap ranges are reproducible. Each completion is
appended to RUN_DIR/completions.log (O_APPEND: one line per finished training), so a test can
count how often each spec was trained to completion across kills and resumes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from detectors.cost import cost

__all__ = ["fake_trial", "failing_trial", "slow_trial", "fails"]


def _run_dir(request) -> Path:
    return Path(request.out_dir).parents[1]  # RUN_DIR/trials/<step>-<id>


def _log(request, name: str) -> None:
    with open(_run_dir(request) / name, "a") as f:
        f.write(f"{request.step} {request.spec_id}\n")


def _fake_metrics(request, delay: float) -> dict:
    from detectors.spec import DetectorSpec

    spec = DetectorSpec.from_yaml(request.spec_yaml)
    comps = cost(spec, (640, 640)).components
    backbone = sum(comps[c].macs for c in ("stem", "c2", "c3", "c4", "c5"))
    shallow = (comps["c2"].macs + comps["c3"].macs) / backbone
    ap = 0.2 + 0.6 * shallow
    return {"status": "ok", "error": "", "wall_time_s": delay, "ap_easy": min(1.0, ap + 0.2),
            "ap_medium": min(1.0, ap + 0.1), "ap_hard": ap}


def fake_trial(request, delay: float = 0.0) -> dict:
    metrics = _fake_metrics(request, delay)
    time.sleep(delay)
    _log(request, "completions.log")
    return metrics


def slow_trial(request) -> dict:
    return fake_trial(request, delay=float(os.environ.get("FACENAS_FAKE_DELAY", "1.0")))


def fails(spec_id: str) -> bool:
    """The specs failing_trial fails on: about a third, fixed by the id."""
    return int(spec_id, 16) % 3 == 0


def failing_trial(request) -> dict:
    _log(request, "attempts.log")
    if fails(request.spec_id):
        raise FloatingPointError(f"loss became nan at iteration 3 (spec {request.spec_id})")
    return fake_trial(request)


def fake_phase_trial(request) -> dict:
    """For the space-seam test: step 1 ('supernet') writes an artefact beside its trial dir
    and must get every CPU of the node; later steps read it and report an extra metric."""
    run_dir = _run_dir(request)
    if request.step == 1:
        (run_dir / "supernet.txt").write_text(f"{request.spec_id} threads={request.num_threads}\n")
        return {"status": "ok", "error": "", "wall_time_s": 0.0}
    owner = (run_dir / "supernet.txt").read_text().split()[0]
    metrics = fake_trial(request)
    metrics["inherited_from"] = owner
    metrics["generation"] = request.step - 1
    return metrics


def rung_trial(request, report=None) -> dict:
    """A multi-fidelity fake: AP at rung k is the spec's fake AP x the rung's fraction; it
    reports every rung but the last (as nas.trial.run_trial), with a stand-in train/checkpoint.pt,
    and logs each one."""
    delay = float(os.environ.get("FACENAS_FAKE_DELAY", "0"))
    final = _fake_metrics(request, delay)
    fractions = list(request.rungs) or [1.0]
    metrics = dict(final)
    for k, f in enumerate(fractions, start=1):
        time.sleep(delay / len(fractions))
        metrics.update({"ap_hard": final["ap_hard"] * f, "fidelity": f,
                        f"ap_hard_r{k}": final["ap_hard"] * f, "rung_t": f / fractions[0]})
        _log(request, "rungs.log")
        if report is not None and k < len(fractions):
            train = Path(request.out_dir) / "train"  # a stand-in checkpoint, Tune keeps a copy
            train.mkdir(parents=True, exist_ok=True)
            (train / "checkpoint.pt").write_text(f"rung {k}\n")
            report(dict(metrics), train)
    _log(request, "completions.log")
    return metrics


def lost_once_trial(request) -> dict:
    """Dies the first time as if its node went down (a RayActorError raised in the trial; the
    driver cannot tell it from a real lost node), then trains normally."""
    marker = Path(request.out_dir) / "lost_once"
    if not marker.exists():
        marker.write_text("lost")
        _log(request, "lost.log")
        from ray.exceptions import RayActorError

        raise RayActorError()
    return fake_trial(request)
