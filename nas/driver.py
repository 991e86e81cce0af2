"""Search orchestration on Ray Tune: plan, trials, results store, resume, analysis, export.

This is the only module that imports Ray. A search run:

1. writes RUN_DIR/config.yaml (resolved search config, seed, versions, git revision) first;
2. per step, plans its specs once (RUN_DIR/plan/stepN.yaml; step 2 is drawn inside step 1's
   bootstrap ranges, RUN_DIR/plan/step2_ranges.csv) and runs every planned spec not yet
   in the table as one Ray Tune trial (`tune.Tuner`, `tune.with_resources`);
3. records each finished trial as one row of RUN_DIR/trials.parquet/.csv from the driver
   process (a `tune.Callback`), atomically; a trial that raises or diverges is retried up to
   `max_failures` times by Tune and then recorded 'failed' with its reason;
4. analyses the run (analysis.report.analyze_run) and exports the top-k retraining configs.

Resume: the plan is fixed on disk, so `--resume RUN_DIR` runs exactly plan minus finished ids.
Each trial also writes its own RUN_DIR/trials/<id>/result.json when it finishes; resume folds
those in first, so a trial that finished just before the driver was killed is not retrained.

Test hook: the environment variable FACENAS_TRIAL_FN="module:function" replaces the trial
function (nas.trial.run_trial) by any importable callable taking a TrialRequest and returning
the metric columns; the tests use it to run cheap deterministic or failing trials. Trials run
in Ray worker processes, so the module must be importable there (PYTHONPATH is inherited).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from detectors.errors import UserError
from detectors.spec import DetectorSpec
from nas import presets
from nas.progress import Progress, summary_table
from nas.results import COLUMNS, RunStore, atomic_write_text, cost_columns, failed_metrics
from nas.trial import TrialFn, TrialRequest, run_trial
from search_spaces.scrfd import RATIO_QUANTITIES

__all__ = ["SearchOptions", "resolve_trial_fn", "run_search", "step2_ranges"]

_REPO = Path(__file__).resolve().parents[1]
TRIAL_FN_ENV = "FACENAS_TRIAL_FN"


@dataclass
class SearchOptions:
    """What `facenas search` was asked (CLI options; None = preset/default)."""

    space: str = "scrfd"
    gflops: float = 2.5
    budget: str = "quick"
    num_samples: int | None = None
    data: str | None = None
    out: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    address: str | None = None
    seed: int = 0
    steps: str = "both"
    max_failures: int = 1
    resume: str | None = None
    top_k: int | None = None
    verbose: bool = False


def resolve_trial_fn() -> TrialFn:
    """nas.trial.run_trial, or the callable named by $FACENAS_TRIAL_FN (test hook)."""
    name = os.environ.get(TRIAL_FN_ENV)
    if not name:
        return run_trial
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
    if opts.data is None:
        data = presets.default_data(opts.space, opts.gflops, opts.budget)
    else:
        data = Path(opts.data)
    if not data.is_dir():
        raise UserError(f"--data {opts.data}: no such directory")
    search = presets.resolve(opts.space, opts.gflops, opts.budget, num_samples=opts.num_samples,
                             seed=opts.seed, steps=opts.steps, data=str(data.resolve()),
                             max_failures=opts.max_failures)
    if opts.top_k is not None:
        search["top_k"] = int(opts.top_k)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out or f"runs/{opts.space}-{opts.gflops:g}g-{stamp}")
    store = RunStore(out)
    if store.config_path.exists():
        raise UserError(f"--out {out}: already holds a search run; resume it with --resume {out}")
    space = presets.build_space(search)
    for step in _steps(search):  # an infeasible budget is an error before anything is written
        space.check_feasible(step)
    store.write_config({"search": search, "seed": search["seed"], "versions": _versions(),
                        "git_revision": _git_revision(),
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)})
    return store, search


# -- planning -------------------------------------------------------------------------------
def step2_ranges(store: RunStore, search: dict[str, Any]) -> dict[str, tuple[float, float]] | None:
    """Step 1's bootstrap ranges of the backbone ratios (None if step 1 was not run).

    Ranges narrower than the preset's `step2.min_range_width` are widened around their centre:
    a small population (smoke/quick) can put every bootstrap winner on one model, which would
    leave step 2 a single point to sample from.
    """
    from analysis.bootstrap import bootstrap_ranges, read_ranges_csv, write_ranges_csv
    import pandas as pd

    rows = [r for r in store.rows() if r["step"] == 1]
    if not rows:
        return None
    # Kept with the plan, not in analysis/: `facenas analyze` (maybe with another seed) rewrites
    # analysis/ranges_step1.csv, and a resumed step 2 must keep the constraint it started with.
    path = store.run_dir / "plan" / "step2_ranges.csv"
    if not path.is_file():
        table = pd.DataFrame(rows, columns=COLUMNS)
        if not (table["status"] == "ok").any():
            raise UserError("step 1 has no successful trial, so it gives step 2 no ranges; "
                            f"see the errors in {store.run_dir / 'trials.csv'}")
        write_ranges_csv(bootstrap_ranges(table, metric="ap_hard", seed=search["seed"]), path)
    ranges = read_ranges_csv(path)
    if "quantity" in ranges.columns:
        ranges = ranges.set_index("quantity")
    min_width = float(search["step2"].get("min_range_width", 0.0))
    out = {}
    for q in RATIO_QUANTITIES:
        if q in ranges.index:
            low, high = float(ranges.loc[q, "low"]), float(ranges.loc[q, "high"])
            pad = max(0.0, (min_width - (high - low)) / 2)
            out[q] = (max(0.0, low - pad), min(1.0, high + pad))
    return out


def _plan(store: RunStore, search: dict[str, Any], step: int) -> list[DetectorSpec]:
    specs = store.read_plan(step)
    if specs is not None:
        return specs
    space = presets.build_space(search)
    ranges = step2_ranges(store, search) if step == 2 else None
    t0 = time.perf_counter()
    specs = space.sample(search["num_samples"], seed=presets.sample_seed(search["seed"], step), step=step,
                         ranges=ranges, exclude=store.read_plan(1) or [])
    print(f"step {step}: planned {len(specs)} specs in {time.perf_counter() - t0:.2f}s"
          + (f" within step-1 ranges {_fmt_ranges(ranges)}" if ranges else ""), file=sys.stderr)
    store.write_plan(step, specs)
    return specs


def _fmt_ranges(ranges: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{q[6:]} {lo:.2f}-{hi:.2f}" for q, (lo, hi) in ranges.items())


# -- rows ---------------------------------------------------------------------------------------
def _row(spec: DetectorSpec, step: int, trial_id: str, seed: int,
         metrics: dict[str, Any]) -> dict[str, Any]:
    row = {"spec_id": spec.id, "step": step, "trial_id": trial_id, "seed": seed,
           "spec_yaml": spec.to_yaml()}
    row.update(cost_columns(spec))
    row.update({k: metrics.get(k, math.nan) for k in
                ("status", "error", "wall_time_s", "ap_easy", "ap_medium", "ap_hard")})
    row["error"] = row["error"] if isinstance(row["error"], str) else ""
    return row


def _harvest(store: RunStore, step: int, specs: list[DetectorSpec], seed: int) -> None:
    """Fold in trials that finished (result.json) but whose row the killed driver never wrote."""
    done = store.finished()
    for spec in specs:
        if spec.id not in done:
            result = store.read_result(step, spec.id)
            if result is not None:
                store.add_row(_row(spec, step, result.get("trial_id", ""), seed, result))


def _request(store: RunStore, search: dict[str, Any], step: int, spec: DetectorSpec,
             threads: int) -> dict[str, Any]:
    return TrialRequest(
        spec_id=spec.id, spec_yaml=spec.to_yaml(), step=step, seed=search["seed"],
        budget=search["budget"], data_root=search["data"],
        out_dir=str(store.trial_dir(step, spec.id)), recipe=search["recipe"],
        recipe_overrides={**search["recipe_overrides"], "seed": search["seed"]},
        max_iterations=search["max_iterations"],
        num_threads=threads).to_dict()


# -- Ray -------------------------------------------------------------------------------------
def _ray_trainable(config: dict[str, Any], requests: dict[str, dict[str, Any]],
                   trial_fn: TrialFn) -> None:
    """Runs inside a Ray worker: one planned spec -> metrics, reported to Tune."""
    from ray import tune

    request = TrialRequest(**requests[config["spec_id"]])
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        metrics = dict(trial_fn(request))
    except Exception as err:
        # One line of reason for the results table; Tune keeps the traceback in its error file.
        atomic_write_text(out_dir / "error.txt", f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    metrics.setdefault("wall_time_s", time.perf_counter() - start)
    metrics["trial_id"] = tune.get_context().get_trial_id()
    RunStore.write_result(out_dir, metrics)
    tune.report({k: metrics[k] for k in ("status", "error", "wall_time_s", "ap_easy",
                                         "ap_medium", "ap_hard", "trial_id")})


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


def _store_callback(store: RunStore, specs: dict[str, DetectorSpec], step: int, seed: int,
                    progress: Progress):
    from ray import tune

    class _StoreRows(tune.Callback):
        """Writes one row per finished trial from the driver process (atomic rewrite)."""

        def on_step_end(self, iteration, trials, **info):
            progress.tick()

        def on_trial_start(self, iteration, trials, trial, **info):
            progress.running = _running(trials, trial) + 1  # it may not be marked RUNNING yet
            progress.show()

        def on_trial_complete(self, iteration, trials, trial, **info):
            spec = specs[trial.config["spec_id"]]
            metrics = dict(trial.last_result or {})
            metrics.setdefault("status", "ok")
            store.add_row(_row(spec, step, trial.trial_id, seed, metrics))
            progress.finished(metrics.get("ap_hard"), running=_running(trials, trial))

        def on_trial_error(self, iteration, trials, trial, **info):
            spec_id = trial.config["spec_id"]
            reason = _error_reason(store, step, spec_id, trial)
            store.add_row(_row(specs[spec_id], step, trial.trial_id, seed, failed_metrics(reason)))
            progress.finished(None, failed=True, running=_running(trials, trial))

    return _StoreRows()


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
        ray.init(address=opts.address, **kwargs)
    else:
        ray.init(num_cpus=len(os.sched_getaffinity(0)), **kwargs)
    return True


def _resources(opts: SearchOptions) -> tuple[dict[str, float], int, int]:
    """({'cpu', 'gpu'} per trial, max concurrent trials, torch threads per trial)."""
    import ray
    import torch

    cluster = ray.cluster_resources()
    cpus = float(opts.cpus_per_trial)
    if cpus <= 0:
        raise UserError(f"--cpus-per-trial must be positive, got {cpus}")
    concurrent = opts.max_concurrent or max(1, int(cluster.get("CPU", 1) // cpus))
    gpus = opts.gpus_per_trial
    if gpus is None:  # share the GPUs among the concurrent trials by default
        n_gpu = cluster.get("GPU", 0) or (torch.cuda.device_count() if not opts.address else 0)
        gpus = min(1.0, n_gpu / concurrent) if n_gpu else 0.0
    return {"cpu": cpus, "gpu": float(gpus)}, int(concurrent), max(1, math.ceil(cpus))


def _run_step_trials(store: RunStore, search: dict[str, Any], opts: SearchOptions, step: int,
                     specs: list[DetectorSpec], trial_fn: TrialFn) -> None:
    from ray import tune

    done = store.finished()
    todo = [s for s in specs if s.id not in done]
    best = max((r["ap_hard"] for r in store.rows() if r["status"] == "ok"
                and math.isfinite(r["ap_hard"])), default=math.nan)
    progress = Progress(step, len(specs), already_done=len(specs) - len(todo), best_ap=best)
    progress.show()
    if not todo:
        progress.close()
        return
    resources, concurrent, threads = _resources(opts)
    requests = {s.id: _request(store, search, step, s, threads) for s in todo}
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trainable, requests=requests, trial_fn=trial_fn), resources)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    tuner = tune.Tuner(
        trainable, param_space={"spec_id": tune.grid_search([s.id for s in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"step{step}-{stamp}", storage_path=str(store.run_dir / "ray"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=search["max_failures"]),
            callbacks=[_store_callback(store, {s.id: s for s in todo}, step, search["seed"],
                                       progress)]))
    try:
        tuner.fit()
    finally:
        progress.close()


# -- the whole search ---------------------------------------------------------------------------
def _steps(search: dict[str, Any]) -> tuple[int, ...]:
    return {"1": (1,), "2": (2,), "both": (1, 2)}[search["steps"]]


def run_search(opts: SearchOptions, trial_fn: TrialFn | None = None,
               after: Callable[[RunStore, dict[str, Any]], None] | None = None) -> tuple[Path, bool]:
    """Run (or resume) a search; returns (RUN_DIR, finished: every planned trial recorded).

    `trial_fn` defaults to resolve_trial_fn(); `after` to analysis + export + summary.
    """
    if opts.resume:
        store = RunStore(opts.resume)
        search = store.read_config()["search"]
    else:
        store, search = _new_run(opts)
    print(f"run directory: {store.run_dir}", file=sys.stderr)
    trial_fn = trial_fn or resolve_trial_fn()
    started = _init_ray(opts)
    try:
        for step in _steps(search):
            specs = _plan(store, search, step)
            _harvest(store, step, specs, search["seed"])
            _run_step_trials(store, search, opts, step, specs, trial_fn)
            missing = {s.id for s in specs} - store.finished(step)
            if missing:  # interrupted (SIGINT): Tune returned early; never go on half-done
                print(f"step {step}: {len(missing)} planned trials unfinished; continue with "
                      f"facenas search --resume {store.run_dir}", file=sys.stderr)
                return store.run_dir, False
    finally:
        if started:
            import ray
            ray.shutdown()
    (after or finish_run)(store, search)
    return store.run_dir, True


def finish_run(store: RunStore, search: dict[str, Any]) -> None:
    """Analysis (plots, ranges, report), export of the top-k specs, the summary table."""
    from analysis.report import analyze_run

    from nas.export import export_top

    table = store.read_table()
    if table is not None and (table["status"] == "ok").any():
        analyze_run(store.run_dir, metric="ap_hard", seed=search["seed"])
        paths = export_top(store.run_dir, top=search["top_k"], metric="ap_hard")
        print(f"exported {len(paths)} retraining configs to {store.run_dir / 'export'}",
              file=sys.stderr)
    print(summary_table(table, top=search["top_k"]) if table is not None else "no trials")
