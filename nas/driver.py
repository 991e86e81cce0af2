"""Search orchestration on Ray Tune: plan, trials, results store, resume, analysis, export.

This is the only module that imports Ray. What is searched comes from the space's entry in
nas/space_table.py (its phases, their plans and trial functions); a search run:

1. resolves and checks the whole search config (nas.search_config: preset, options, --set),
   then writes RUN_DIR/config.yaml (resolved search config, seed, the recipe its trials
   train with, versions, git revision);
2. per phase, plans its specs once (RUN_DIR/plan/stepN.yaml; e.g. SCRFD's step 2 is drawn
   inside step 1's bootstrap ranges) and runs every planned spec not yet finished as one Ray
   Tune trial (`tune.Tuner`, `tune.with_resources`) of the phase's trial function;
3. records each finished trial as one row of RUN_DIR/trials.parquet/.csv from the driver
   process (a `tune.Callback`), atomically; a trial that raises or diverges is retried up to
   `max_failures` times by Tune and then recorded 'failed' with its reason (phases without
   rows, e.g. a supernet's training, are recorded by their result.json only);
4. finishes (nas.finish: analysis, export of the top-k configs, the summary table).

Resources (nas.resources): each trial asks for what one node can hold, never the cluster's
sum; single-model phases (whole_node) ask for the largest node's CPUs and, with GPUs, the GPUs
of its `--nproc-per-trial` training processes (default: that node's GPUs); one GPU per trial
by default elsewhere when there are GPUs. Before anything is written, every phase's request is
checked against the alive nodes and CUDA is probed on every GPU node (one line, exit 2). In a
trial: no GPU given -> CUDA hidden; a GPU given where CUDA cannot start -> the trial fails
naming the node (never trains on the CPU); CUDA out of memory -> one retry with doubled
recipe.grad_accumulation (same batch), a second one -> a failed row.

Resume: the plan is fixed on disk, so `--resume RUN_DIR` runs exactly plan minus finished ids.
Each trial also writes its own RUN_DIR/trials/<id>/result.json when it finishes; resume folds
those in first, so a trial that finished just before the driver was killed is not retrained.
ASHA's rung decisions are saved in RUN_DIR/asha/ and replayed on resume (nas.asha_state). A
resume whose trials would train another recipe (a default changed) is refused
(nas.trial_recipe_record).

Test hook: the environment variable FACENAS_TRIAL_FN="module:function" replaces every
phase's trial function by any importable callable taking a TrialRequest and returning
the metric columns; the tests use it to run cheap deterministic or failing trials. Trials run
in Ray worker processes, so the module must be importable there (PYTHONPATH is inherited).
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from detectors.errors import UserError
from detectors.spec import DetectorSpec
from experiments import EXPERIMENTS_DIR
from nas.finish import finish_search
from nas.options import SearchOptions
from nas.phases import Phase
from nas.progress import Progress
from nas.results import METRIC_COLUMNS, RunStore, atomic_write_text, cost_columns, failed_metrics
from nas.search_config import resolve_search
from nas.space_table import space_entry
from nas.resources import TrialResources, alive_nodes, trial_resources, unschedulable
from nas.trial_recipe_record import TRIAL_RECIPE_KEY, check_trial_recipe, trial_recipe_record
from nas.trial import (TrialFn, TrialRequest, cuda_problem, grad_accumulation, is_cuda_oom,
                       run_trial, with_grad_accumulation)

__all__ = ["SearchOptions", "resolve_trial_fn", "run_search", "finish_run"]

_REPO = EXPERIMENTS_DIR.parent  # the checkout whose git revision a run records
TRIAL_FN_ENV = "FACENAS_TRIAL_FN"


def resolve_trial_fn() -> TrialFn | None:
    """The callable named by $FACENAS_TRIAL_FN (test hook), or None."""
    name = os.environ.get(TRIAL_FN_ENV)
    if not name:
        return None
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{TRIAL_FN_ENV}={name!r}: cannot import it ({err})") from None


# -- run directory: new or resumed ------------------------------------------------------------
def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import numpy
    import pandas
    import ray
    import torch
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": numpy.__version__, "pandas": pandas.__version__, "ray": ray.__version__}


def _new_run(opts: SearchOptions) -> tuple[RunStore, dict[str, Any]]:
    """The new run's store and resolved config, every option checked; nothing written yet."""
    search = resolve_search(opts)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out or f"runs/{opts.space}-{search['gflops']:g}g-{stamp}")
    store = RunStore(out)
    if store.config_path.exists():
        raise UserError(f"--out {out}: already holds a search run; resume it with --resume {out}")
    return store, search


def _write_new_run(store: RunStore, search: dict[str, Any]) -> None:
    store.write_config({"search": search, "seed": search["seed"],
                        TRIAL_RECIPE_KEY: trial_recipe_record(search), "versions": _versions(),
                        "git_revision": _git_revision(),
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)})


# -- planning -------------------------------------------------------------------------------
def _plan(store: RunStore, search: dict[str, Any], phase: Phase) -> list[DetectorSpec]:
    from nas.strategies.prescreen import plan

    specs = store.read_plan(phase.step)
    if specs is None:  # the phase's sampling, prescreened when asked (--prescreen)
        specs = plan(store, search, phase, space_entry(search["space"]).trial_recipe)
        store.write_plan(phase.step, specs)
    return specs


# -- rows ---------------------------------------------------------------------------------------
def _row(spec: DetectorSpec, step: int, trial_id: str, search: dict[str, Any],
         metrics: dict[str, Any], store: RunStore | None = None) -> dict[str, Any]:
    """One results-table row; scalar metrics beyond the contract's become extra columns (and
    a latency budget adds the predicted latency, `latency_ms`; a prescreened spec its proxy
    score, `prescreen_<proxy>`)."""
    from nas.latency_budget import latency_columns
    from nas.strategies.prescreen import row_columns

    row = {"spec_id": spec.id, "step": step, "trial_id": trial_id, "seed": search["seed"],
           "spec_yaml": spec.to_yaml()}
    row.update(cost_columns(spec))
    row.update(latency_columns(search, spec))
    row.update({k: metrics.get(k, math.nan) for k in METRIC_COLUMNS})
    row["error"] = row["error"] if isinstance(row["error"], str) else ""
    if store is not None:
        row.update(row_columns(store, step, spec.id))
    row.update({k: v for k, v in metrics.items() if k not in row and k != "trial_id"
                and isinstance(v, (int, float, str, bool))})
    return row


def _harvest(store: RunStore, phase: Phase, specs: list[DetectorSpec], search: dict[str, Any]) -> None:
    """Fold in trials that finished (result.json) but whose row the killed driver never wrote."""
    if not phase.rows:
        return
    done = store.finished()
    for spec in specs:
        if spec.id not in done:
            result = store.read_result(phase.step, spec.id)
            if result is not None:
                store.add_row(_row(spec, phase.step, result.get("trial_id", ""), search, result,
                                   store))


def _unfinished(store: RunStore, phase: Phase, specs: list[DetectorSpec]) -> list[DetectorSpec]:
    """Planned specs of the phase without a row (or, for phases without rows, a result)."""
    if phase.rows:
        done = store.finished(phase.step)
        return [s for s in specs if s.id not in done]
    return [s for s in specs if store.read_result(phase.step, s.id) is None]


def _request(store: RunStore, search: dict[str, Any], step: int, spec: DetectorSpec,
             threads: int, workers: int | None = None, processes: int = 1) -> dict[str, Any]:
    return TrialRequest(
        spec_id=spec.id, spec_yaml=spec.to_yaml(), step=step, seed=search["seed"],
        budget=search["budget"], data_root=search["data"],
        out_dir=str(store.trial_dir(step, spec.id)), recipe=search["recipe"],
        recipe_overrides={**search["recipe_overrides"], "seed": search["seed"]},
        max_iterations=search["max_iterations"],
        num_threads=threads, workers=workers, processes=processes, search=search,
        rungs=_rungs(search)).to_dict()


def _rungs(search: dict[str, Any]) -> list[float]:
    """The rung fractions trials test at ([] = once, at the end)."""
    from nas.fidelity import rung_fractions

    f = search.get("fidelity") or {}
    if f.get("grace") is None:
        return []
    return rung_fractions(f["grace"], f["reduction_factor"])


# -- Ray -------------------------------------------------------------------------------------
def _ray_trainable(config: dict[str, Any], requests: dict[str, dict[str, Any]],
                   trial_fn: TrialFn, rows: bool = True) -> None:
    """Runs inside a Ray worker: one planned spec -> metrics, reported to Tune.

    A trial that dies of CUDA out-of-memory runs once more at once, with twice the gradient
    accumulation (half the micro-batch, same effective batch; its row records `oom_retry` and
    `grad_accumulation`); an out-of-memory error that recurs then is that trial's `failed`
    row (no Tune retry: it would fail the same way)."""
    from ray import tune

    request = TrialRequest(**requests[config["spec_id"]])
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    retry = _read_oom_retry(out_dir)  # a restarted trial keeps its retry's recipe
    if retry:
        request = with_grad_accumulation(request, retry["grad_accumulation"])
    oom = None
    try:
        _pin_devices()
        metrics = _call_trial(trial_fn, request, out_dir)
    except Exception as err:
        if not is_cuda_oom(err):
            _write_error(out_dir, err)
            raise
        if retry:  # out of memory even at the retry's micro-batch (a restarted trial)
            metrics = _oom_failed(err, retry, rows, out_dir)
        else:
            oom = _one_line(err)
    if oom is not None:  # outside the except block: the failed attempt's tensors are freed
        _free_cuda()
        retry = _start_oom_retry(out_dir, grad_accumulation(request) * 2, oom)
        request = with_grad_accumulation(request, retry["grad_accumulation"])
        try:
            metrics = _call_trial(trial_fn, request, out_dir)
        except Exception as err:
            if not is_cuda_oom(err):
                _write_error(out_dir, err)
                raise
            metrics = _oom_failed(err, retry, rows, out_dir)
    if retry:
        metrics.update(oom_retry=True, grad_accumulation=retry["grad_accumulation"])
    metrics.setdefault("wall_time_s", time.perf_counter() - start)
    metrics["trial_id"] = tune.get_context().get_trial_id()
    metrics.update(_where_it_ran())
    RunStore.write_result(out_dir, metrics)
    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})


def _call_trial(trial_fn: TrialFn, request: TrialRequest, out_dir: Path) -> dict[str, Any]:
    if request.rungs:  # multi-fidelity: rung results and checkpoints go through Tune
        _restore_tune_checkpoint(out_dir / "train")
        return dict(trial_fn(request, report=_report_rung))
    return dict(trial_fn(request))


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _write_error(out_dir: Path, err: BaseException) -> None:
    # One line of reason for the results table; Tune keeps the traceback in its error file.
    atomic_write_text(out_dir / "error.txt", _one_line(err))


_OOM_RETRY_FILE = "oom_retry.json"


def _read_oom_retry(out_dir: Path) -> dict[str, Any] | None:
    import json

    path = out_dir / _OOM_RETRY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _start_oom_retry(out_dir: Path, steps: int, first_error: str) -> dict[str, Any]:
    """Clear the trial directory (its checkpoint was trained with the old recipe, which a
    resume refuses) and record the retry there, so a later restart trains with it too."""
    import json
    import shutil

    for child in out_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    retry = {"grad_accumulation": int(steps), "first_error": first_error}
    atomic_write_text(out_dir / _OOM_RETRY_FILE, json.dumps(retry))
    return retry


def _oom_failed(err: BaseException, retry: dict[str, Any], rows: bool,
                out_dir: Path) -> dict[str, Any]:
    reason = (f"CUDA out of memory again with grad_accumulation {retry['grad_accumulation']} "
              f"(half the micro-batch): {_one_line(err)}")[:400]
    atomic_write_text(out_dir / "error.txt", reason)
    if not rows:  # no row to hold it: the phase's trial fails (and the search stops there)
        raise RuntimeError(reason) from None
    return failed_metrics(reason)


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class CudaUnavailable(RuntimeError):
    """Ray gave a trial a GPU but CUDA cannot start in it (it would train on the CPU)."""


def _pin_devices() -> None:
    """The trial trains where Ray put it: with no GPU assigned, CUDA is hidden (Ray leaves
    CUDA_VISIBLE_DEVICES alone then, so a CPU trial on a GPU node would take GPU 0); with a
    GPU assigned, CUDA must start, else the trial fails naming the node, never falling back
    to the CPU."""
    import ray

    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    problem = cuda_problem()
    if problem:
        where = _node_name()
        raise CudaUnavailable(f"CUDA cannot start on Ray node {where}, which gave this trial "
                              f"GPU {','.join(map(str, gpu_ids))}: {problem}; refusing to train "
                              "on the CPU")


def _node_name() -> str:
    import socket

    import ray

    return (f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node "
            f"{ray.get_runtime_context().get_node_id()[:8]})")


_TUNE_CHECKPOINT_FILE = "checkpoint.pt"  # detectors.train.CHECKPOINT


def _report_rung(metrics: dict[str, Any], train_dir: Path) -> None:
    """A rung's result to Tune, with the trial's training checkpoint as a Tune checkpoint (so
    a paused or moved trial resumes from it; the scheduler may stop the trial here)."""
    import shutil
    import tempfile

    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(train_dir) / _TUNE_CHECKPOINT_FILE
        checkpoint = None
        if src.is_file():
            shutil.copy2(src, Path(tmp) / _TUNE_CHECKPOINT_FILE)
            checkpoint = tune.Checkpoint.from_directory(tmp)
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
                    checkpoint=checkpoint)


def _restore_tune_checkpoint(train_dir: Path) -> None:
    """Put Tune's latest checkpoint of this trial in place when the trial dir lacks one (a
    trial restarted on a node whose disk does not hold its earlier work)."""
    import shutil

    from ray import tune

    checkpoint = tune.get_checkpoint()
    target = Path(train_dir) / _TUNE_CHECKPOINT_FILE
    if checkpoint is None or target.is_file():
        return
    with checkpoint.as_directory() as d:
        src = Path(d) / _TUNE_CHECKPOINT_FILE
        if src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.restore")
            shutil.copy2(src, tmp)
            tmp.replace(target)


def _stopped_metrics(last_result: dict[str, Any]) -> dict[str, Any]:
    """The row of a trial the scheduler stopped at a rung: its last rung's metrics."""
    keep = {k: v for k, v in last_result.items()
            if k in METRIC_COLUMNS or k in ("fidelity", "rung_loss")
            or k.startswith(("ap_hard_r", "loss_r"))}
    keep["status"] = "stopped"
    return keep


def _error_reason(store: RunStore, step: int, spec_id: str, trial: Any) -> str:
    path = store.trial_dir(step, spec_id) / "error.txt"
    if path.is_file():
        return path.read_text().strip()
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).is_file():
        lines = [ln for ln in Path(error_file).read_text().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "failed"
    return "failed (no reason recorded)"


def _running(trials: list, finishing: Any = None) -> int:
    return sum(1 for t in trials if t.status == "RUNNING" and t is not finishing)


def _reported(last_result: dict[str, Any]) -> dict[str, Any]:
    """What a trial reported to Tune, without Tune's own bookkeeping keys."""
    from ray.tune.result import AUTO_RESULT_KEYS

    tune_keys = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}
    return {k: v for k, v in last_result.items() if k not in tune_keys}


def _finished_metrics(store: RunStore, phase: Phase, spec_id: str, last_result: dict[str, Any],
                      stopped: bool, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The metrics of a trial Tune calls complete: its last rung's when ASHA stopped it, else
    its own result.json (read with a bounded retry: it may come from another node). Should that
    stay unreadable, the metrics it reported to Tune, said in one line on stderr; a trial that
    trained to the end is never recorded 'stopped'."""
    if stopped:
        return _stopped_metrics(last_result)
    metrics, why = store.wait_result(phase.step, spec_id, sleep=sleep)
    if metrics is not None:
        return metrics
    reported = _reported(last_result)
    if reported.get("status") in ("ok", "failed"):
        print(f"{phase.label}: trial {spec_id}: {why}; recorded from the metrics it reported "
              "to Tune", file=sys.stderr)
        return reported
    print(f"{phase.label}: trial {spec_id}: {why}, and Tune holds no result of it",
          file=sys.stderr)
    return failed_metrics(f"{why}; no result of this trial reached the driver")



UNSCHEDULABLE_AFTER_S = 30.0  # pending with none running this long: ask whether any node fits


class _WaitWatch:
    """Says in one line when the phase's trials wait and no alive node could ever hold one
    (e.g. the nodes that could have left the cluster). Tune's own warning compares a trial
    with the cluster's sum, not with single nodes, and is muted with Ray's logs."""

    def __init__(self, label: str, resources: TrialResources) -> None:
        self.label, self.resources = label, resources
        self.since: float | None = None
        self.said = False

    def check(self, trials: list) -> None:
        waiting = any(t.status == "PENDING" for t in trials)
        if _running(trials) or not waiting:
            self.since, self.said = None, False
            return
        now = time.monotonic()
        self.since = self.since or now
        if self.said or now - self.since < UNSCHEDULABLE_AFTER_S:
            return
        reason = unschedulable(self.resources.cpus, self.resources.gpus, _nodes())
        if reason:
            self.said = True
            print(f"{self.label}: trials cannot be scheduled: each asks for "
                  f"{self.resources.cpus:g} CPU and {self.resources.gpus:g} GPU and {reason}; "
                  "add such a node, or stop (Ctrl-C) and --resume with smaller "
                  "--cpus-per-trial/--gpus-per-trial", file=sys.stderr)


def _store_callback(store: RunStore, specs: dict[str, DetectorSpec], phase: Phase,
                    search: dict[str, Any], progress: Progress,
                    scheduler: Any = None, resources: TrialResources | None = None):
    from ray import tune

    watch = _WaitWatch(phase.label, resources) if resources is not None else None

    class _StoreRows(tune.Callback):
        """Writes one row per finished trial from the driver process (atomic rewrite)."""

        def on_step_end(self, iteration, trials, **info):
            progress.tick()
            if watch is not None:
                watch.check(trials)

        def on_trial_start(self, iteration, trials, trial, **info):
            progress.running = _running(trials, trial) + 1  # it may not be marked RUNNING yet
            progress.show()

        def on_trial_complete(self, iteration, trials, trial, **info):
            spec = specs[trial.config["spec_id"]]
            # The trial's own record holds exactly what it returned (Tune's result adds its
            # bookkeeping keys: timestamp, time_this_iter_s, ...).
            stopped = scheduler is not None and scheduler.stopped(spec.id)
            metrics = _finished_metrics(store, phase, spec.id, dict(trial.last_result or {}),
                                        stopped)
            if phase.rows:
                store.add_row(_row(spec, phase.step, trial.trial_id, search, metrics, store))
            progress.finished(metrics.get("ap_hard"), failed=metrics.get("status") == "failed",
                              running=_running(trials, trial))

        def on_trial_error(self, iteration, trials, trial, **info):
            spec_id = trial.config["spec_id"]
            reason = _error_reason(store, phase.step, spec_id, trial)
            if phase.rows:
                store.add_row(_row(specs[spec_id], phase.step, trial.trial_id, search,
                                   failed_metrics(reason), store))
            else:
                print(f"{phase.label}: trial {spec_id} failed: {reason}", file=sys.stderr)
            progress.finished(None, failed=True, running=_running(trials, trial))

    return _StoreRows()


def _where_it_ran() -> dict[str, Any]:
    """The Ray node (and host) a trial ran on and what Ray gave it: results-table columns
    node_id, host, ray_cpus, ray_gpus."""
    import socket

    import ray

    context = ray.get_runtime_context()
    given = context.get_assigned_resources()
    return {"node_id": context.get_node_id(), "host": socket.gethostname(),
            "ray_cpus": float(given.get("CPU", 0.0)), "ray_gpus": float(given.get("GPU", 0.0))}


_CONNECT_TIMEOUT_S = 3.0


def _check_address(address: str) -> None:
    """Fail within seconds, naming the address, when no Ray cluster listens there (ray.init
    would retry for minutes). 'auto' is left to Ray (it reads the local cluster's address)."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379), "
                        "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"--address {address}: no Ray cluster answers there (tried for "
                        f"{_CONNECT_TIMEOUT_S:g} s: {err.strerror or err}); start one with "
                        "`ray start --head` or fix the address") from None


def _where(opts: SearchOptions) -> str:
    return f"the cluster at {opts.address}" if opts.address else "this machine"


def _nodes():
    import ray

    return alive_nodes(ray.nodes())


def _check_resources(opts: SearchOptions, search: dict[str, Any], phases: list[Phase]) -> None:
    """Every phase's trial request fits one alive node, and CUDA starts on every GPU node the
    trials would use; else one line (UserError) before anything is written or trains."""
    nodes = _nodes()
    wanted = [_resources(opts, p.whole_node, nodes, search) for p in phases]
    if any(r.gpus > 0 for r in wanted):
        _check_cuda_on_gpu_nodes()


_PROBE_TIMEOUT_S = 60.0


def _check_cuda_on_gpu_nodes() -> None:
    """A tiny task on each node that declares GPUs, holding a sliver of one, asks torch
    whether CUDA starts there (no CUDA context is made; the worker exits after it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, num_gpus=0.01, max_calls=1)
    def probe() -> tuple[str, str | None]:
        return _node_name(), cuda_problem()

    gpu_nodes = [n for n in ray.nodes() if n.get("Alive") and (n.get("Resources") or {}).get("GPU")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote() for n in gpu_nodes]
    try:
        answers = ray.get(refs, timeout=_PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        print(f"could not check within {_PROBE_TIMEOUT_S:g} s that CUDA starts on every GPU node "
              "(GPUs busy?); a trial on a node where it does not will fail, naming it",
              file=sys.stderr)
        return
    for name, problem in answers:
        if problem:
            raise UserError(f"CUDA cannot start on Ray node {name}, which declares GPUs: "
                            f"{problem}; fix its driver or leave it out (or --gpus-per-trial 0 "
                            "to train on CPUs)")


@functools.lru_cache(maxsize=None)
def _sees_path_task():
    import ray

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return Path(path).is_file()

    return sees


def _check_run_dir_visible(store: RunStore) -> None:
    """Every alive node must see RUN_DIR (trials write there; a dead node's trial resumes from
    its checkpoint there): a tiny zero-CPU task per node looks for config.yaml."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    sees = _sees_path_task()
    refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: sees.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        str(store.config_path)) for n in nodes}
    try:
        blind = [name for name, ok in zip(refs, ray.get(list(refs.values()), timeout=60)) if not ok]
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"could not check within 60 s that every Ray node sees {store.run_dir}; "
                        "is the cluster busy or partitioned?") from None
    if blind:
        raise UserError(f"run directory {store.run_dir} is not visible from Ray node(s) "
                        f"{', '.join(blind)}: put --out on storage every node mounts at the same "
                        "path (see docs/cluster.md)")


def _init_ray(opts: SearchOptions) -> bool:
    """Start (or attach to) Ray; returns whether we started it (and so shut it down)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # keep Tune's tables off our stdout
    import ray

    if ray.is_initialized():
        return False
    if not opts.verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    kwargs = dict(include_dashboard=False, log_to_driver=opts.verbose, configure_logging=False)
    if opts.address:
        _check_address(opts.address)
        try:
            ray.init(address=opts.address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            # e.g. a cluster started with token authentication (Ray's default for `ray start`
            # since 2.5x) and no token here: Ray retries, then raises
            raise UserError(f"--address {opts.address}: could not join the Ray cluster "
                            f"({str(err).splitlines()[0][:160]}); if it uses token "
                            "authentication, set RAY_AUTH_TOKEN to its token, or start it with "
                            "RAY_AUTH_MODE=disabled (docs/cluster.md)") from None
    else:
        # "local": a Ray of our own, even when `ray start` left a cluster on this machine
        try:
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), **kwargs)
        except Exception as err:  # Ray raises a bare Exception when its node misses its start-up deadline
            if "timed out during startup" not in str(err):
                raise
            raise UserError("Ray's local node did not start in time (the machine is too loaded: "
                            "its processes missed Ray's start-up deadline); nothing was written, "
                            "run the search again when the load is lower") from None
    return True


def _resources(opts: SearchOptions, whole_node: bool = False, nodes=None,
               search: dict[str, Any] | None = None) -> TrialResources:
    """One trial's request in this cluster (nas.resources: one node's worth at most); a
    whole-node phase's processes must divide its recipe's global batch (the search's
    trial_recipe). Each process's torch threads are capped by $FACENAS_THREADS when set."""
    parts = None
    if whole_node and search is not None:
        recipe = space_entry(search["space"]).trial_recipe(search)
        parts = recipe.batch_size // max(1, recipe.grad_accumulation)
    r = trial_resources(_nodes() if nodes is None else nodes, float(opts.cpus_per_trial),
                        opts.gpus_per_trial, opts.max_concurrent, whole_node, _where(opts),
                        nproc=opts.nproc_per_trial, batch_parts=parts)
    cap = os.environ.get("FACENAS_THREADS", "").strip()
    if cap.isdigit() and int(cap) >= 1 and r.threads > int(cap):
        # the operator's cap (an oversubscribed machine: OpenMP threads spin-wait there)
        r = TrialResources(r.cpus, r.gpus, r.concurrent, int(cap), r.processes)
    return r


def _lost_with_its_node(error: BaseException | None) -> bool:
    """Did a trial fail because its Ray actor or node died (not because of its own code)?"""
    import ray

    return isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError))


_MAX_RESCHEDULES = 3  # rounds for trials lost with a dead node before the driver gives up


def _run_phase_trials(store: RunStore, search: dict[str, Any], opts: SearchOptions, phase: Phase,
                      specs: list[DetectorSpec], trial_fn: TrialFn) -> None:
    """Runs the phase's unfinished trials; trials lost with a dead node run again (a new Tune
    run over them), up to _MAX_RESCHEDULES times."""
    for _ in range(1 + _MAX_RESCHEDULES):
        lost = _fit(store, search, opts, phase, specs, _unfinished(store, phase, specs), trial_fn)
        if not lost:
            return


def _fit(store: RunStore, search: dict[str, Any], opts: SearchOptions, phase: Phase,
         specs: list[DetectorSpec], todo: list[DetectorSpec], trial_fn: TrialFn) -> list[str]:
    """One Tune run over `todo`; returns the ids of trials lost with their node."""
    from ray import tune

    best = max((r["ap_hard"] for r in store.rows() if r["status"] == "ok"
                and math.isfinite(r["ap_hard"])), default=math.nan)
    progress = Progress(phase.step, len(specs), already_done=len(specs) - len(todo), best_ap=best)
    progress.show()
    if not todo:
        progress.close()
        return []
    resources = _resources(opts, phase.whole_node, search=search)
    requests = {s.id: _request(store, search, phase.step, s, resources.threads, opts.workers,
                               resources.processes) for s in todo}
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trainable, requests=requests, trial_fn=trial_fn,
                             rows=phase.rows), resources.request())
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    scheduler = _scheduler(search, phase, store)
    tuner = tune.Tuner(
        trainable, param_space={"spec_id": tune.grid_search([s.id for s in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=resources.concurrent, reuse_actors=True,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(
            name=f"step{phase.step}-{stamp}", storage_path=str(store.run_dir / "ray"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=search["max_failures"]),
            # each rung's Tune checkpoint copies the trial's checkpoint.pt: keep the latest
            checkpoint_config=tune.CheckpointConfig(num_to_keep=opts.keep_checkpoints),
            callbacks=[_store_callback(store, {s.id: s for s in todo}, phase, search,
                                       progress, scheduler, resources)]))
    try:
        grid = tuner.fit()
    finally:
        progress.close()
    # Tune retries only trials that were RUNNING; one whose actor died while starting on a
    # dying node is errored at once. Such rows are taken back and the trials run again.
    lost = [r.config["spec_id"] for r in grid
            if r.error is not None and _lost_with_its_node(r.error)]
    if lost:
        store.remove_rows(lost)
        print(f"{phase.label}: {len(lost)} trials lost with their node; running them again",
              file=sys.stderr)
    return lost


def _scheduler(search: dict[str, Any], phase: Phase, store: RunStore | None = None):
    """Tune's ASHA for phases that train sampled models, when asked (its rung decisions kept
    in the run's RUN_DIR/asha/step<N>.json and restored from it); else Tune's FIFO (None)."""
    from nas.asha_state import asha_scheduler, state_path

    f = search.get("fidelity") or {}
    if f.get("scheduler") != "asha" or not phase.rows:
        return None
    return asha_scheduler(search, None if store is None else state_path(store.run_dir, phase.step))


# -- the whole search ---------------------------------------------------------------------------
def run_search(opts: SearchOptions, trial_fn: TrialFn | None = None,
               after: Callable[[RunStore, dict[str, Any]], None] | None = None) -> tuple[Path, bool]:
    """Run (or resume) a search; returns (RUN_DIR, finished: every planned trial recorded).

    `trial_fn` (default: $FACENAS_TRIAL_FN, else each phase's own) replaces every phase's
    trial function; `after` the space's finish (analysis + export + summary).
    """
    if opts.resume:
        if opts.preset or opts.overrides:
            raise UserError("--preset and --set do not apply with --resume: a resumed run "
                            "keeps the config it recorded")
        if opts.prescreen or opts.prescreen_keep is not None:
            raise UserError("--prescreen and --prescreen-keep do not apply with --resume: a "
                            "resumed run keeps the plan and config it recorded")
        store = RunStore(opts.resume)
        config = store.read_config()
        search = config["search"]
        from nas.asha_state import check_saved_states

        check_saved_states(store.run_dir, search)  # a corrupt one: refused before Ray starts
        check_trial_recipe(store, config)  # a changed default: refused, never mixed
    else:
        store, search = _new_run(opts)
    started = _init_ray(opts)  # a wrong --address or --gpus-per-trial still writes nothing
    try:
        _check_resources(opts, search, space_entry(search["space"]).phases(search))
        if not opts.resume:
            if not (trial_fn or resolve_trial_fn()) and any(
                    p.reads_data for p in space_entry(search["space"]).phases(search)):
                from detectors.data.widerface import check_root

                for split in ("train", "val"):  # else every trial would fail on it, retried
                    check_root(search["data"], split)
            _write_new_run(store, search)
        space = space_entry(search["space"])
        print(f"run directory: {store.run_dir}", file=sys.stderr)
        if opts.address:
            _check_run_dir_visible(store)
        override = trial_fn or resolve_trial_fn()
        for phase in space.phases(search):
            specs = _plan(store, search, phase)
            _harvest(store, phase, specs, search)
            _run_phase_trials(store, search, opts, phase, specs,
                              override or phase.trial_fn or run_trial)
            missing = _unfinished(store, phase, specs)
            if missing:  # interrupted (SIGINT) or failed: never go on half-done
                print(f"{phase.label}: {len(missing)} planned trials unfinished; continue with "
                      f"facenas search --resume {store.run_dir}", file=sys.stderr)
                return store.run_dir, False
    finally:
        if started:
            import ray
            ray.shutdown()
    (after or finish_run)(store, search)
    return store.run_dir, True


def finish_run(store: RunStore, search: dict[str, Any]) -> None:
    """The one finish (nas.finish), with the bootstrap analysis where the space has one."""
    finish_search(store, search, bootstrap=space_entry(search["space"]).bootstrap)
