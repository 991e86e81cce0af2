"""ASHA whose rung records survive `facenas search --resume`: RUN_DIR/asha/step<N>.json.

Ray Tune's `ASHAScheduler` (ray/tune/schedulers/async_hyperband.py) keeps each rung as a dict
{trial_id: signed metric} inside private `_Bracket` objects; its own `save()`/`restore()`
pickle the scheduler's whole `__dict__`. That is private, tied to one Ray version, and keyed
by Tune trial ids, which a resumed search (a new Tune run over the unfinished specs) does not
reuse: a resumed trial would be a stranger to its own earlier rungs and counted twice.

So `ResumableASHA` subclasses it and touches only its public hooks (`on_trial_add`,
`on_trial_result`, `on_trial_complete`, `on_trial_remove`), handing Ray a stand-in trial
whose `trial_id` is the *spec id* (stable across resumes). Its state is an explicit, plain
log of every rung decision in arrival order, `[spec_id, rung_t, metric value, decision]`
(`state_dict` / `load_state_dict`), written atomically after each decision. Loading replays
the log through the same public hooks into a fresh scheduler: ASHA's cutoff at a rung depends
only on the values recorded there, so the replay rebuilds Ray's rungs exactly, and it must
re-derive every logged decision (else the file is refused as corrupt).

Trials that were mid-rung when the driver was killed start again from their checkpoint and
re-report the rungs they had passed (nas.trial re-tests them, on a later checkpoint, so the
value may differ). A rung already in the log is answered with its logged decision and is not
recorded again: nothing is counted twice, and a trial stopped at a rung whose row the killed
driver never wrote is stopped at that rung again. Values recorded at max_t (a trial's final
result, via on_trial_complete) are not logged: ASHA stops every result at max_t without
comparing it, so they never decide anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from detectors.errors import UserError
from nas.fidelity import RUNG_METRICS, Fidelity
from nas.results import atomic_write_text

__all__ = ["ResumableASHA", "STATE_DIR", "asha_scheduler", "check_saved_states", "state_path"]

STATE_DIR = "asha"
_FORMAT, _VERSION = "facenas-asha-state", 1
_DECISIONS = (TrialScheduler.CONTINUE, TrialScheduler.STOP)


def state_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / STATE_DIR / f"step{step}.json"


class _Key:
    """What Ray's ASHA sees of a trial: it reads only `trial_id`, here the spec id."""

    def __init__(self, spec_id: str) -> None:
        self.trial_id = spec_id


def _spec_id(trial: Any) -> str:
    return str(trial.config["spec_id"])


class _Corrupt(ValueError):
    pass


class ResumableASHA(ASHAScheduler):
    """ASHA (one bracket, stop_last_trials) keyed by spec id, its decisions logged to
    `path` (None: not saved) and restored from it when it exists."""

    def __init__(self, path: str | Path | None, *, metric: str, mode: str, max_t: float,
                 reduction_factor: float, grace_period: float = 1.0,
                 time_attr: str = "rung_t") -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor, brackets=1)
        self.path = None if path is None else Path(path)
        self.settings = {"time_attr": time_attr, "metric": metric, "mode": mode,
                         "max_t": float(max_t), "grace_period": float(grace_period),
                         "reduction_factor": float(reduction_factor)}
        self._log: list[tuple[str, float, float, str]] = []
        self._decided: dict[tuple[str, float], str] = {}
        self._added: set[str] = set()  # spec ids Ray's ASHA holds a bracket entry for
        if self.path is not None and self.path.is_file():
            self.load_state_dict(_read(self.path), source=self.path)

    # -- Tune's hooks, keyed by spec id -----------------------------------------------------
    def on_trial_add(self, tune_controller, trial) -> None:
        self._add(tune_controller, _spec_id(trial))

    def on_trial_remove(self, tune_controller, trial) -> None:
        spec_id = _spec_id(trial)
        if spec_id in self._added:  # Ray's ASHA raises on an id it does not hold
            self._added.discard(spec_id)
            super().on_trial_remove(tune_controller, _Key(spec_id))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        spec_id = _spec_id(trial)
        if spec_id in self._added:
            self._added.discard(spec_id)
            super().on_trial_complete(tune_controller, _Key(spec_id), result)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        spec_id = _spec_id(trial)
        t = result.get(self.settings["time_attr"])
        if (spec_id, t) in self._decided:  # a resumed trial re-reports a rung: same answer
            return self._decided[(spec_id, t)]
        self._add(tune_controller, spec_id)
        action = super().on_trial_result(tune_controller, _Key(spec_id), result)
        if self._is_rung(result):
            self._record(spec_id, float(t), float(result[self.settings["metric"]]), action)
            self._save()
        return action

    def _add(self, tune_controller, spec_id: str) -> None:
        if spec_id not in self._added:
            self._added.add(spec_id)
            super().on_trial_add(tune_controller, _Key(spec_id))

    # -- the decisions ---------------------------------------------------------------------
    def stopped(self, spec_id: str) -> bool:
        """Did ASHA stop this spec's trial at a rung (before max_t)?"""
        return any(s == spec_id and d == TrialScheduler.STOP for s, _, _, d in self._log)

    def stopped_set(self) -> set[str]:
        return {s for s, _, _, d in self._log if d == TrialScheduler.STOP}

    def state_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, **self.settings,
                "decisions": [{"spec_id": s, "rung_t": t, "value": v, "decision": d}
                              for s, t, v, d in self._log]}

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "state") -> None:
        """Replay `state`'s decisions into this (fresh) scheduler; UserError naming `source`
        when it is not a state of this scheduler or its decisions do not follow."""
        if self._log:
            raise RuntimeError("load_state_dict needs a fresh scheduler")  # a bug
        try:
            entries = _validated(state, self.settings)
            for spec_id, t, value, decision in entries:
                if (spec_id, t) in self._decided:
                    raise _Corrupt(f"spec {spec_id} is logged twice at rung_t {t:g}")
                self._add(None, spec_id)
                action = super().on_trial_result(None, _Key(spec_id), {
                    self.settings["time_attr"]: t, self.settings["metric"]: value})
                if action != decision:
                    raise _Corrupt(f"the logged {decision} of spec {spec_id} at rung_t {t:g} "
                                   f"does not follow from the values logged before it ({action})")
                self._record(spec_id, t, value, decision)
        except _Corrupt as err:
            raise UserError(f"{source}: corrupt ASHA scheduler state ({err}); it cannot be "
                            "resumed as it was: delete it to resume with ASHA's rungs "
                            "forgotten") from None

    def _is_rung(self, result: dict) -> bool:
        t, metric = self.settings["time_attr"], self.settings["metric"]
        return t in result and metric in result and result[t] < self.settings["max_t"]

    def _record(self, spec_id: str, t: float, value: float, decision: str) -> None:
        self._log.append((spec_id, t, value, decision))
        self._decided[(spec_id, t)] = decision

    def _save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.state_dict(), indent=1))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: corrupt ASHA scheduler state (not readable JSON: "
                        f"{str(err).splitlines()[0]}); delete it to resume with ASHA's rungs "
                        "forgotten") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Corrupt(f"{what} is {value!r}, not a number")
    return float(value)


def _validated(state: Any, settings: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise _Corrupt(f"not a {_FORMAT} file")
    if state.get("version") != _VERSION:
        raise _Corrupt(f"version {state.get('version')!r}, this facenas reads {_VERSION}")
    for key, want in settings.items():
        if state.get(key) != want:
            raise _Corrupt(f"{key} is {state.get(key)!r} but this run's ASHA has {want!r}")
    decisions = state.get("decisions")
    if not isinstance(decisions, list):
        raise _Corrupt("no list of decisions")
    out = []
    for i, e in enumerate(decisions):
        if not isinstance(e, dict) or not isinstance(e.get("spec_id"), str):
            raise _Corrupt(f"decision {i} has no spec_id")
        t = _number(e.get("rung_t"), f"decision {i}'s rung_t")
        if not math.isfinite(t) or t >= settings["max_t"]:
            raise _Corrupt(f"decision {i}'s rung_t {t:g} is not a rung below max_t")
        value = _number(e.get("value"), f"decision {i}'s value")  # NaN allowed (ASHA ignores it)
        if e.get("decision") not in _DECISIONS:
            raise _Corrupt(f"decision {i} is {e.get('decision')!r}, not one of "
                           f"{', '.join(_DECISIONS)}")
        out.append((e["spec_id"], t, value, e["decision"]))
    return out


def asha_scheduler(search: dict[str, Any], path: str | Path | None) -> ResumableASHA:
    """The run's ASHA (nas.fidelity: milestones 1, rf, rf^2 ... in rung_t), its state at
    `path`."""
    fidelity = Fidelity(**search["fidelity"])
    metric, mode = RUNG_METRICS[fidelity.metric]
    return ResumableASHA(path, metric=metric, mode=mode, max_t=fidelity.max_t,
                         reduction_factor=fidelity.reduction_factor)


def check_saved_states(run_dir: str | Path, search: dict[str, Any]) -> None:
    """Load every saved ASHA state of a run about to resume (UserError naming a corrupt one),
    before anything trains."""
    if (search.get("fidelity") or {}).get("scheduler") != "asha":
        return
    for path in sorted((Path(run_dir) / STATE_DIR).glob("step*.json")):
        asha_scheduler(search, path)
