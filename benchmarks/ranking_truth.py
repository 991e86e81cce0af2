"""A ground-truth ranking of SCRFD step-1 specs on real faces, and every cheap proxy scored
against it (issue 25).

    python benchmarks/ranking_truth.py [--gflops 2.5] [--specs 16] [--seeds 0 1]
        [--data ../shared/data/widerface-mini] [--recipe FILE] [--workers 2] [--threads 1]
        [--out runs/ranking_truth] [--results benchmarks/results] [--stop-after MINUTES]
        [--rungs 200 600 1200]
    python benchmarks/ranking_truth.py --probe 50     # time the first 50 iterations, project
    python benchmarks/ranking_truth.py --proxies      # zero-cost proxies -> proxies.csv
    python benchmarks/ranking_truth.py --short-recipes 0.5 1 2 4 [--short-budget quick]
                                                      # short-recipe proxies -> proxies.csv
    python benchmarks/ranking_truth.py --anchor-health  # dead-anchor check -> ranking_truth_anchors.csv
    python benchmarks/ranking_truth.py --val-noise    # the val set's part of the seed noise
                                                      # -> ranking_truth_val_noise.csv
    python benchmarks/ranking_truth.py --report       # every figure, from the CSVs alone

Truth: `--specs` step-1 specs of one regime, sampled as `facenas search --steps 1` samples
them (search seed `--sample-seed`), each trained on the train split with a long recipe once
per `--seeds` seed and tested on val, by the search's own trial function (nas.trial.run_trial:
detectors.train + detectors.test). The recipe is the regime preset's search recipe at budget
`paper` (unscaled) with the overrides of `--recipe` (a YAML mapping; default DEFAULT_RECIPE:
320 px, batch 8, 1800 iterations, tested at 640, anchor box init). The first truth, trained
with SCRFD's point init, is in benchmarks/results/truth_point_init/ (`--report --results`
reads it).

Resumable across sessions: each (spec, seed) trains in OUT/<spec_id>/seed<seed>/ (the trainer
resumes from its checkpoint there); a finished one has result.json, or a row in the committed
ranking_truth.csv (a later session on a fresh clone has the CSVs, not OUT), and is skipped;
rows and curve points already in the CSVs are kept when they are rewritten. The first
run writes, beside the CSVs in `--results`: ranking_truth_specs.yaml (the specs),
ranking_truth_recipe.yaml (sampling settings, overrides and the resolved recipe; a later run
with other settings is refused) and ranking_truth_versions.yaml. After each finished run
ranking_truth.csv is rewritten from every result.json and its committed rows (columns spec_id, seed, ap_easy,
ap_medium, ap_hard, train_s; train_s sums the logged iteration times: no start-up,
checkpoints or test). `--stop-after` starts no new run after that many minutes.

Learning curves: every run is tested on val at each iteration of `--rungs` (default
default_rungs: the iterations at which `facenas search --scheduler asha --grace 1/9
--reduction-factor 3` tests a trial of the truth recipe's length, nas.fidelity's rung_fractions
+ rung_iterations, plus 2/3 of the schedule for the curve: 200, 600, 1200 for 1800) and at its
end: training goes from rung to rung by detectors.train.train(resume=True, max_iterations=rung),
each point is tested by detectors.test.test (the trial's tester) and gets the rung loss of
nas.fidelity.rung_loss (what ASHA's --rung-metric loss compares). Each run keeps its points in
OUT/<spec_id>/seed<seed>/curve.json (rewritten atomically after each point); a resumed run
does not recompute a recorded point. ranking_curves.csv (columns spec_id, seed, iteration,
ap_easy, ap_medium, ap_hard, loss: benchmarks/asha_replay.py's contract) is rewritten from every
curve.json at the start, after each finished run and at the end. The end point is the test
that gives ranking_truth.csv's row, so the two agree.

`--proxies` scores the truth's specs (same settings, same sample) with every zero-cost proxy of
nas.proxies on batch 0 of the truth recipe's training stream (model initialised from seed 0)
into proxies.csv (spec_id, proxy, value, cost_s). `--short-recipes F ...` trains every spec once
(seed 0) with the trial recipe of `facenas search --budget quick` in the truth's regime (today's
preset; `--short-budget` another budget), its schedule scaled by each factor F, on the truth's
data, and adds its val hard AP as proxy recipe_quick_x<F> (cost_s: its summed iteration times),
resumable in OUT/short/<name>/<spec_id>/. The report reads any proxy name. ASHA's rung proxies come from the curves.

`--report` reads ranking_truth.csv, proxies.csv and ranking_curves.csv only: Kendall tau
(scipy.stats.kendalltau, tau-b) of hard AP between every pair of seeds; per AP subset, how
much of its spread is seed noise (seed_reliability: the two-way consistency intraclass
correlation, the tau it
predicts, and how many seeds a mean would need); with ranking_truth_anchors.csv
(`--anchor-health`: each finished run's per-anchor scores, detectors.anchor_health), the runs
with a dead anchor (a failed training, not the architecture) and the seed tau without their
specs; per proxy, tau between
its value and the mean hard AP over seeds, with a bootstrap 95% interval (specs resampled with
replacement), and its median cost per spec as a fraction of the truth's (median over specs of
the mean train_s over seeds: one long training). When ranking_curves.csv exists, also (issue
25, items 3.2 and 3.4):
- the rung AP (`--metric`) and the rung loss (negated: lower loss predicts higher AP) at each
  recorded iteration as proxies: as in a search, one run per spec, so for each seed in turn
  its value against the truth; `tau` is the mean over seeds of tau against the mean final
  metric over all seeds (the issue's truth), `tau_other` the mean over seeds of tau against
  the mean final metric of the *other* seeds (free of the run's own seed noise; at the end
  it is the seed-against-seed tau), the 95% bootstrap interval of `tau` (specs resampled),
  and the cost as a fraction iteration / final iteration;
- ASHA and synchronous successive halving replayed (benchmarks/asha_replay.replay) over
  `--orders` random arrival orders on the complete curves, with rungs grace 1/9,
  reduction factor 3 (`--grace`, `--reduction-factor`), `--replay-workers` slots, each order
  training every spec once with one of its seeds: on the rung AP, and on the rung loss scored
  against the final AP; savings against top-k recall (median and 5-95 % over orders).
With ranking_truth_val_noise.csv (`--val-noise`, benchmarks/truth_val_noise.py: each finished
spec's seeds scored on `--bootstrap` shared resamples of the val images), how much of the seed
noise is the val set's draw rather than the training's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRUTH_CSV, PROXIES_CSV, CURVES_CSV = "ranking_truth.csv", "proxies.csv", "ranking_curves.csv"
SPECS_YAML, RECIPE_YAML = "ranking_truth_specs.yaml", "ranking_truth_recipe.yaml"
VERSIONS_YAML = "ranking_truth_versions.yaml"
ANCHORS_CSV = "ranking_truth_anchors.csv"
ANCHOR_COLUMNS = ["spec_id", "seed", "anchor", "score", "faces"]
# A run is counted as failed when one anchor index scores under this share of the best one
# (detectors.anchor_health.dead_anchors): in the first 10 truth runs a healthy second anchor
# scored 0.83-0.94 of the first, the one dead one 0.000.
DEAD_RATIO = 0.25
TRUTH_COLUMNS = ["spec_id", "seed", "ap_easy", "ap_medium", "ap_hard", "train_s"]
PROXY_COLUMNS = ["spec_id", "proxy", "value", "cost_s"]
CURVE_COLUMNS = ["spec_id", "seed", "iteration", "ap_easy", "ap_medium", "ap_hard", "loss"]
RESULT, CURVE = "result.json", "curve.json"
# The search's ASHA rungs whose metrics the curves record (facenas search --scheduler asha
# --grace 1/9 --reduction-factor 3; the replay's default schedule too).
GRACE, REDUCTION_FACTOR = 1 / 9, 3.0
# The long recipe's overrides of the regime preset's search recipe (budget paper: unscaled).
# The regime is 2.5 GF (basic residual blocks). Session 10's probes (docs/proxies.md, "Choosing
# the regime") trained 0.5 GF step-1 samples (plain depthwise stacks, 20-30 blocks) to only
# val easy AP 0.002-0.004 after 1,200-3,600 iterations at lr 0.005-0.02, the published 0.5 GF
# spec to 0.04, and two 2.5 GF samples to 0.43 and 0.34 after 1,200 iterations: the 0.5 GF
# population does not learn on 2 cores, so it cannot rank.
# box_init "anchor" (detectors.model.init_box_bias): session 12 found that SCRFD's point init
# leaves an anchor untrainable in some runs (1 of the first 16 truth runs, both seeds of the
# published 2.5 GF spec). The first truth, with point init, is kept in
# benchmarks/results/truth_point_init/ (its specs are this truth's too).
DEFAULT_RECIPE: dict[str, Any] = {
    "train_size": 320, "batch_size": 8, "workers": 0,
    "schedule": {"unit": "iterations", "total": 1800, "milestones": [1350, 1650],
                 "warmup_iters": 300, "lr": 0.005},
    "test": {"size": 640},
    "box_init": "anchor",
}
BOOTSTRAP = 2000
# The offline prescreen comparison: a search training 4 specs, keeping 1 in 4 sampled (the
# default --prescreen-keep), judged by its best 3.
PRESCREEN_N, PRESCREEN_KEEP = 4, 0.25


def _sibling(name: str):
    """benchmarks/<name>.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- what is trained -------------------------------------------------------------------------
def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling settings and the recipe overrides: ranking_truth_recipe.yaml's first keys
    (a resumed run must match them)."""
    import yaml

    overrides = DEFAULT_RECIPE if not args.recipe else yaml.safe_load(Path(args.recipe).read_text())
    return {"gflops": float(args.gflops), "specs": int(args.specs), "seeds": list(args.seeds),
            "sample_seed": int(args.sample_seed), "budget": "paper", "overrides": overrides}


def sample(setting: dict[str, Any], results: Path | None = None) -> tuple[dict[str, Any], list]:
    """(search config at budget paper with the overrides, the truth's step-1 specs): the specs
    recorded in `results`/ranking_truth_specs.yaml once a first run wrote them (recorded_specs),
    else sampled now, and the recipe recorded in ranking_truth_recipe.yaml, else the preset's.
    A later change to the sampler, the cost model or a recipe default would otherwise give
    other specs or another recipe for the same settings, and the truth must stay one set of
    runs across sessions."""
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.scrfd import build_space
    from nas.strategies.two_step import sample_seed

    search = resolve_config(SearchOptions(space="scrfd", gflops=setting["gflops"], budget="paper",
                                          num_samples=setting["specs"], seed=setting["sample_seed"],
                                          steps="1", max_failures=0))
    search["recipe_overrides"] = dict(setting["overrides"])
    recorded = _recorded(results)
    if recorded.get("recipe") is not None:  # train what the first run recorded, not today's defaults
        search["recipe"] = recorded["recipe"]
    specs = recorded_specs(results) if results is not None else None
    if specs is None:
        specs = build_space(search).sample(setting["specs"], seed=sample_seed(setting["sample_seed"], 1),
                                           step=1)
    return search, specs


def _recorded(results: Path | None) -> dict[str, Any]:
    """ranking_truth_recipe.yaml's mapping ({} before a first run)."""
    import yaml

    path = Path(results) / RECIPE_YAML if results is not None else None
    return (yaml.safe_load(path.read_text()) or {}) if path is not None and path.is_file() else {}


def recorded_specs(results: Path) -> list | None:
    """The specs of `results`/ranking_truth_specs.yaml (None before a first run). Each must
    still hash to its recorded spec_id (run directories and CSV rows are keyed by it)."""
    import yaml

    from detectors.spec import DetectorSpec

    path = Path(results) / SPECS_YAML
    if not path.is_file():
        return None
    specs = []
    for item in yaml.safe_load(path.read_text()) or []:
        spec = DetectorSpec.from_dict(item["spec"])
        if spec.id != item["spec_id"]:
            raise SystemExit(f"{path}: spec {item['spec_id']} now hashes to {spec.id} (the spec "
                             "format changed); its runs and rows cannot be matched")
        specs.append(spec)
    return specs


def truth_recipe(search: dict[str, Any], seed: int = 0):
    """The Recipe every truth run trains with (its seed replaced)."""
    import dataclasses

    from nas.trial import budget_scaled_recipe

    return dataclasses.replace(budget_scaled_recipe(search), seed=seed)


def _atomic_yaml(path: Path, data: Any) -> None:
    import yaml

    from nas.results import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def _versions() -> dict[str, Any]:
    import numpy
    import pandas
    import scipy
    import torch

    from nas.driver import _git_revision

    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": numpy.__version__, "pandas": pandas.__version__, "scipy": scipy.__version__,
            "git_revision": _git_revision(), "machine": platform.machine(),
            "processor": platform.processor(), "cuda": torch.cuda.is_available()}


def record_setup(results: Path, setting: dict[str, Any], search: dict[str, Any], specs: list,
                 versions: dict[str, Any], points: list[int] | None = None) -> None:
    """Write the specs, recipe and versions files (first run), or refuse other settings.
    `points`: the curve iterations (recorded, not compared: a later session may add rungs)."""
    recipe_path = results / RECIPE_YAML
    recipe = {**setting, "recipe": truth_recipe(search).to_dict()}
    before = _recorded(results)  # one read: {} before a first run
    if points is None:
        points = before.get("curve_iterations")
    if points is not None:
        recipe["curve_iterations"] = list(points)
    if before:
        if {k: before.get(k) for k in setting} != json.loads(json.dumps(setting)):
            raise SystemExit(f"{recipe_path} records other settings ({ {k: before.get(k) for k in setting} }); "
                             "use another --results/--out, or the recorded settings")
        if before.get("recipe") is not None and before["recipe"] != json.loads(json.dumps(recipe["recipe"])):
            raise SystemExit(f"{recipe_path}: its recorded recipe no longer resolves to itself (a recipe "
                             "key changed meaning); the truth's runs would not be comparable")
    results.mkdir(parents=True, exist_ok=True)
    _atomic_yaml(recipe_path, recipe)
    _atomic_yaml(results / SPECS_YAML, [{"spec_id": s.id, "spec": s.to_dict()} for s in specs])
    _atomic_yaml(results / VERSIONS_YAML, versions)


def _iteration_seconds(metrics_jsonl: Path, batch_size: int) -> list[float]:
    """Each logged iteration's time (batch / images_per_s) of a training directory."""
    with metrics_jsonl.open() as f:
        return [batch_size / r["images_per_s"] for r in map(json.loads, f)
                if r.get("images_per_s", 0) > 0]


def default_rungs(total: int) -> list[int]:
    """The iterations at which a search's ASHA (grace 1/9, reduction factor 3) tests a trial
    of `total` iterations, plus 2/3 of the schedule (one more point for the learning curve),
    without the end."""
    from nas.fidelity import rung_fractions, rung_iterations

    its = set(rung_iterations(rung_fractions(GRACE, REDUCTION_FACTOR), total))
    its.add(math.ceil(2 * total / 3))
    return sorted(i for i in its if i < total)


def curve_points(rungs: list[int] | None, total: int) -> list[int]:
    """The iterations every run is tested at: `rungs` (default default_rungs) and the end."""
    from detectors.errors import UserError

    rungs = default_rungs(total) if rungs is None else [int(r) for r in rungs]
    bad = [r for r in rungs if not 1 <= r <= total]
    if bad:
        raise UserError(f"--rungs {' '.join(map(str, bad))}: outside 1..{total} (the truth "
                        "recipe's iterations)")
    return sorted(set(rungs) | {total})


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The points a run has recorded (curve.json; [] before the first)."""
    path = Path(run_dir) / CURVE
    return json.loads(path.read_text()) if path.is_file() else []


def _run(request: dict[str, Any], batch_size: int, points: list[int]) -> dict[str, Any]:
    """One (spec, seed), in a worker: from rung to rung, train (resuming from the checkpoint)
    up to it, test on val and record the point in curve.json, skipping recorded points; the
    end point becomes its result.json. The trial's own pieces: nas.trial.trial_config,
    detectors.train.train, detectors.test.test, nas.fidelity.rung_loss."""
    from detectors.device import set_threads
    from detectors.test import test
    from detectors.train import CHECKPOINT, METRICS, train

    from nas.fidelity import rung_loss
    from nas.results import RunStore, atomic_write_text
    from nas.trial import TrialDiverged, TrialRequest, trial_config

    req = TrialRequest(**request)
    set_threads(req.num_threads)
    out = Path(req.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = trial_config(req.spec_yaml, req.recipe, req.budget, req.recipe_overrides,
                          out / "trial_config.yaml")
    train_dir = out / "train"
    curve = read_curve(out)
    for stop in points:
        if any(p["iteration"] == stop for p in curve):
            continue
        result = train(config, req.data_root, train_dir,
                       resume=(train_dir / CHECKPOINT).is_file(), num_threads=req.num_threads,
                       progress=False, max_iterations=stop)
        if result.status != "ok" or result.checkpoint is None:
            raise TrialDiverged(f"{req.spec_id} seed {req.seed}: training {result.status} "
                                f"after {result.iterations} iterations")
        if result.iterations != stop:  # its checkpoint is past this rung: cannot test it there
            print(f"{req.spec_id} seed {req.seed}: checkpoint at iteration {result.iterations}, "
                  f"past {stop}; that point is not recorded", flush=True)
            continue
        ap = test(config, result.checkpoint, req.data_root, split=req.split, progress=False)
        curve.append({"spec_id": req.spec_id, "seed": req.seed, "iteration": stop,
                      **{f"ap_{k}": float(ap[k]) for k in ("easy", "medium", "hard")},
                      "loss": rung_loss(train_dir / METRICS, stop)})
        atomic_write_text(out / CURVE, json.dumps(curve))
    end = next(p for p in curve if p["iteration"] == points[-1])
    row = {"spec_id": req.spec_id, "seed": req.seed,
           **{k: float(end[k]) for k in ("ap_easy", "ap_medium", "ap_hard")},
           "train_s": sum(_iteration_seconds(train_dir / METRICS, batch_size))}
    RunStore.write_result(out, row)
    return row


def _committed(results: Path | None, name: str) -> list[dict[str, Any]]:
    """The rows of results/<name> as plain dicts ([] without one). The committed CSVs are the
    durable record: a later session (a fresh clone) has them but not the runs directory."""
    import pandas as pd

    path = None if results is None else results / name
    if path is None or not path.is_file():
        return []
    return pd.read_csv(path, dtype={"spec_id": str}).to_dict("records")


def collect_curves(out: Path, specs: list, seeds: list[int],
                   results: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded point of every run (finished or not), in (spec, seed, iteration) order:
    those in the runs directory, and those already in results/ranking_curves.csv (a point
    recorded in both is the runs directory's)."""
    wanted = {(spec.id, int(seed)) for spec in specs for seed in seeds}
    points = {(p["spec_id"], int(p["seed"]), int(p["iteration"])): p
              for p in _committed(results, CURVES_CSV) if (p["spec_id"], int(p["seed"])) in wanted}
    for spec in specs:
        for seed in seeds:
            for p in read_curve(out / spec.id / f"seed{seed}"):
                points[(spec.id, int(seed), int(p["iteration"]))] = p
    order = {spec.id: k for k, spec in enumerate(specs)}
    return [points[key] for key in sorted(points, key=lambda k: (order[k[0]], k[1], k[2]))]


def write_curves(results: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    from nas.results import atomic_write_text

    atomic_write_text(results / CURVES_CSV,
                      pd.DataFrame(rows, columns=CURVE_COLUMNS).to_csv(index=False))


def collect(out: Path, specs: list, seeds: list[int], results: Path | None = None) -> list[dict[str, Any]]:
    """Every finished run's row, in (spec, seed) order: its result.json in the runs directory,
    else its row in results/ranking_truth.csv (finished in an earlier session)."""
    committed = {(r["spec_id"], int(r["seed"])): r for r in _committed(results, TRUTH_CSV)}
    rows = []
    for spec in specs:
        for seed in seeds:
            path = out / spec.id / f"seed{seed}" / RESULT
            if path.is_file():
                rows.append(json.loads(path.read_text()))
            elif (spec.id, int(seed)) in committed:
                rows.append(committed[(spec.id, int(seed))])
    return rows


def write_truth(results: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    from nas.results import atomic_write_text

    atomic_write_text(results / TRUTH_CSV, pd.DataFrame(rows, columns=TRUTH_COLUMNS).to_csv(index=False))


def _requests(search: dict[str, Any], specs: list, seeds: list[int], out: Path, data: str,
              threads: int, max_iterations: int | None = None) -> list[dict[str, Any]]:
    from nas.trial import TrialRequest

    return [TrialRequest(spec_id=s.id, spec_yaml=s.to_yaml(), step=1, seed=seed, budget="paper",
                         data_root=data, out_dir=str(out / s.id / f"seed{seed}"),
                         recipe=search["recipe"],
                         recipe_overrides={**search["recipe_overrides"], "seed": seed},
                         num_threads=threads, max_iterations=max_iterations).to_dict()
            for s in specs for seed in seeds]  # a spec's seeds together: seed noise shows early


def _completed(calls: list[tuple[Any, tuple]], workers: int, minutes: float | None):
    """Yield (key, _run(*args)) for each (key, args) of `calls` as runs finish, on `workers`
    spawned processes (in this process for 1: no start-up, and tests can watch it); no run
    starts after `minutes` (the running ones finish)."""
    start, deadline = time.perf_counter(), (minutes or float("inf")) * 60
    pending = list(calls)
    if workers <= 1:
        while pending and time.perf_counter() - start < deadline:
            key, call = pending.pop(0)
            yield key, _run(*call)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures: dict = {}
        while pending or futures:
            while pending and len(futures) < workers and time.perf_counter() - start < deadline:
                key, call = pending.pop(0)
                futures[pool.submit(_run, *call)] = key
            if not futures:
                break
            fut = next(as_completed(futures))
            yield futures.pop(fut), fut.result()


def run_truth(args: argparse.Namespace) -> int:
    setting = settings(args)
    search, specs = sample(setting, Path(args.results))
    results, out = Path(args.results), Path(args.out)
    recipe = truth_recipe(search)
    if recipe.schedule.unit != "iterations":
        from detectors.errors import UserError

        raise UserError("--recipe: the truth's schedule must count iterations (its rungs "
                        f"do), not {recipe.schedule.unit}")
    points = curve_points(args.rungs, recipe.schedule.total)
    record_setup(results, setting, search, specs, _versions(), points)
    batch = recipe.batch_size
    write_curves(results, collect_curves(out, specs, setting["seeds"], results))
    finished = {(r["spec_id"], int(r["seed"])) for r in collect(out, specs, setting["seeds"], results)}
    todo = [r for r in _requests(search, specs, setting["seeds"], out, args.data, args.threads)
            if (r["spec_id"], int(r["seed"])) not in finished]
    done = len(specs) * len(setting["seeds"]) - len(todo)
    print(f"{len(specs)} specs x {len(setting['seeds'])} seeds at {setting['gflops']:g} GF: {done} "
          f"finished, {len(todo)} to run in {out} ({args.workers} workers x {args.threads} threads); "
          f"tested at iterations {', '.join(map(str, points))}", flush=True)
    start = time.perf_counter()
    for _, row in _completed([(None, (r, batch, points)) for r in todo], args.workers, args.stop_after):
        write_truth(results, collect(out, specs, setting["seeds"], results))
        write_curves(results, collect_curves(out, specs, setting["seeds"], results))
        print(f"[{time.perf_counter() - start:7.0f}s] {row['spec_id']} seed {row['seed']}: AP "
              f"hard {row['ap_hard']:.4f} medium {row['ap_medium']:.4f} easy "
              f"{row['ap_easy']:.4f}, trained in {row['train_s'] / 60:.1f} min", flush=True)
    rows = collect(out, specs, setting["seeds"], results)
    write_truth(results, rows)
    write_curves(results, collect_curves(out, specs, setting["seeds"], results))
    left = len(specs) * len(setting["seeds"]) - len(rows)
    print(f"{len(rows)} runs recorded in {results / TRUTH_CSV}, their curves in {results / CURVES_CSV}"
          + (f"; {left} left: run the same command again" if left else ""), flush=True)
    return 0


def run_probe(args: argparse.Namespace) -> int:
    """Train the first spec for `--probe` iterations (fresh directory), time them and the
    test, and project one run and the whole truth."""
    import shutil
    import tempfile

    setting = settings(args)
    search, specs = sample(setting, Path(args.results))
    results = Path(args.results)
    record_setup(results, setting, search, specs, _versions())
    recipe = truth_recipe(search)
    tmp = Path(tempfile.mkdtemp(prefix="ranking_truth_probe-"))
    try:
        request = _requests(search, specs[:1], setting["seeds"][:1], tmp, args.data, args.threads,
                            max_iterations=args.probe)[0]
        t0 = time.perf_counter()
        from nas.trial import TrialRequest, run_trial

        run_trial(TrialRequest(**request))
        wall = time.perf_counter() - t0
        its = _iteration_seconds(Path(request["out_dir"]) / "train" / "metrics.jsonl",
                                 recipe.batch_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steady = sorted(its[len(its) // 5:])[len(its[len(its) // 5:]) // 2]  # median after warm-up
    total = recipe.schedule.total
    runs = len(specs) * len(setting["seeds"])
    test_s = wall - sum(its)
    one = steady * total + test_s
    summary = {"spec_id": specs[0].id, "iterations": len(its), "median_iteration_s": steady,
               "probe_wall_s": wall, "test_and_setup_s": test_s, "iterations_per_run": total,
               "projected_run_min": one / 60, "runs": runs,
               "projected_total_h": one * runs / 3600 / max(1, args.workers),
               "workers": args.workers, "threads": args.threads}
    print(f"{specs[0].id}: {len(its)} iterations, median {steady:.2f} s each after warm-up; "
          f"test + set-up {test_s:.0f} s; one {total}-iteration run ~{one / 60:.0f} min; "
          f"{runs} runs on {args.workers} workers ~{summary['projected_total_h']:.1f} h")
    print(json.dumps(summary))
    return 0


def run_anchor_health(args: argparse.Namespace) -> int:
    """Every finished run's anchor scores (detectors.anchor_health, on the first
    `--health-images` val images at the truth's test size) -> ranking_truth_anchors.csv; runs
    already in it are kept, not measured again."""
    import pandas as pd

    from detectors.anchor_health import anchor_index_scores, anchor_scores
    from detectors.checkpoint import load_model_weights
    from detectors.config import load_config
    from detectors.device import set_threads
    from detectors.model import build
    from nas.results import atomic_write_text

    set_threads(args.threads)
    results, out = Path(args.results), Path(args.out)
    setting = settings(args)
    search, specs = sample(setting, results)
    size = truth_recipe(search).test.size
    rows = _committed(results, ANCHORS_CSV)
    done = {(r["spec_id"], int(r["seed"])) for r in rows}
    for spec in specs:
        for seed in args.seeds:
            run = out / spec.id / f"seed{seed}"
            checkpoint = run / "train" / "checkpoint.pt"
            if (spec.id, seed) in done or not (run / RESULT).is_file() or not checkpoint.is_file():
                continue
            config = load_config(run / "train" / "config.yaml")
            model = build(config.spec)
            load_model_weights(model, checkpoint)
            scores = anchor_scores(model, args.data, args.health_images, size)
            per_index = anchor_index_scores(scores)
            rows += [{"spec_id": spec.id, "seed": seed, "anchor": k, "score": float(v),
                      "faces": len(scores.best)} for k, v in enumerate(per_index)]
            atomic_write_text(results / ANCHORS_CSV, pd.DataFrame(rows, columns=ANCHOR_COLUMNS).to_csv(index=False))
            print(f"{spec.id} seed {seed}: anchor scores " + ", ".join(f"{v:.3f}" for v in per_index), flush=True)
    print(f"{len({(r['spec_id'], int(r['seed'])) for r in rows})} runs in {results / ANCHORS_CSV}", flush=True)
    return 0


def run_val_noise(args: argparse.Namespace) -> int:
    """Every spec whose seeds have all finished: each run's val predictions (predicted once from
    its final checkpoint, kept in its run directory) scored on the same --bootstrap resamples of
    the val images (benchmarks/truth_val_noise.py) -> ranking_truth_val_noise.csv, rewritten
    whole: the resamples are shared by every run, so it is measured afresh each time."""
    import pandas as pd

    from detectors.data.widerface import load_eval_ground_truth
    from detectors.device import set_threads
    from nas.results import atomic_write_text

    truth_val_noise = _sibling("truth_val_noise")
    set_threads(args.threads)
    results, out = Path(args.results), Path(args.out)
    _, specs = sample(settings(args), results)
    predictions = {}
    for spec in specs:
        runs = [out / spec.id / f"seed{seed}" for seed in args.seeds]
        if not all((r / RESULT).is_file() and (r / "train" / "checkpoint.pt").is_file() for r in runs):
            continue
        for seed, run in zip(args.seeds, runs):
            predictions[(spec.id, int(seed))] = truth_val_noise.run_predictions(run, args.data)
            print(f"{spec.id} seed {seed}: val predictions in {run / truth_val_noise.PREDICTIONS}", flush=True)
    if not predictions:
        print("no spec has all its seeds finished (with checkpoints) in " + str(out))
        return 0
    metric = args.metric.removeprefix("ap_")
    rows = truth_val_noise.rows(predictions, load_eval_ground_truth(args.data), metric, args.bootstrap)
    atomic_write_text(results / truth_val_noise.VAL_NOISE_CSV,
                      pd.DataFrame(rows, columns=truth_val_noise.VAL_NOISE_COLUMNS).to_csv(index=False))
    print(f"{len(rows)} seed pairs in {results / truth_val_noise.VAL_NOISE_CSV}")
    return 0


def failed_runs(anchors, ratio: float = DEAD_RATIO) -> list[tuple[str, int]]:
    """(spec_id, seed) of the runs in ranking_truth_anchors.csv with a dead anchor index."""
    from detectors.anchor_health import dead_anchors

    return [(str(spec), int(seed)) for (spec, seed), g in anchors.groupby(["spec_id", "seed"], sort=False)
            if dead_anchors(g.sort_values("anchor")["score"].to_numpy(float), ratio)]


def run_proxies(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from nas.proxies import PROXIES, proxy_batch, score_specs
    from nas.results import atomic_write_text

    torch.set_num_threads(args.threads)
    setting = settings(args)
    search, specs = sample(setting, Path(args.results))  # the truth's specs (the recorded settings must match)
    results = Path(args.results)
    record_setup(results, setting, search, specs, _versions())
    recipe = truth_recipe(search)
    names = args.proxy_names or list(PROXIES)
    batch = proxy_batch(args.data, recipe)
    rows = score_specs(names, specs, batch, recipe, seed=0)
    new = pd.DataFrame(rows, columns=PROXY_COLUMNS)
    path = results / PROXIES_CSV
    if path.is_file():  # keep other proxies' rows (short recipes, ASHA rungs)
        old = pd.read_csv(path, dtype={"spec_id": str})
        new = pd.concat([old[~old["proxy"].isin(names)], new], ignore_index=True)
    atomic_write_text(path, new.to_csv(index=False))
    cost = pd.DataFrame(rows).groupby("proxy")["cost_s"].median()
    print(f"{len(specs)} specs scored into {path}; median cost per spec (s): "
          + ", ".join(f"{p} {cost[p]:.2f}" for p in names), flush=True)
    return 0


def short_requests(setting: dict[str, Any], specs: list, budget: str, factors: list[float],
                   out: Path, data: str, threads: int) -> list[tuple[str, int, int, dict[str, Any]]]:
    """(proxy name, iterations, batch size, trial request) per short recipe and spec: the trial recipe a
    `facenas search --budget BUDGET` of the truth's regime trains (today's preset, on the
    truth's data, tested as that budget tests), its schedule's iterations, milestones and
    warm-up scaled by each factor, seed 0: one run per spec, as a search trains it. The name is
    recipe_<budget>_x<factor>."""
    from detectors.errors import UserError

    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.trial import TrialRequest, budget_scaled_recipe

    base = resolve_config(SearchOptions(space="scrfd", gflops=setting["gflops"], budget=budget,
                                        num_samples=setting["specs"], seed=setting["sample_seed"],
                                        steps="1", max_failures=0))
    scaled = budget_scaled_recipe(base)
    schedule = scaled.schedule
    if schedule.unit != "iterations":
        raise UserError(f"--short-budget {budget}: its schedule counts {schedule.unit}, not iterations")
    jobs = []
    for factor in factors:
        if factor <= 0:
            raise UserError(f"--short-recipes {factor:g}: a factor must be positive")
        total = max(1, round(schedule.total * factor))
        milestones = sorted({round(m * factor) for m in schedule.milestones} & set(range(1, total)))
        overrides = {**base["recipe_overrides"], "seed": 0,
                     "schedule": {**base["recipe_overrides"].get("schedule", {}), "unit": "iterations",
                                  "total": total, "milestones": milestones,
                                  "warmup_iters": max(1, min(total, round(schedule.warmup_iters * factor)))}}
        name = f"recipe_{budget}_x{factor:g}"
        for spec in specs:
            request = TrialRequest(spec_id=spec.id, spec_yaml=spec.to_yaml(), step=1, seed=0,
                                   budget=budget, data_root=data,
                                   out_dir=str(out / "short" / name / spec.id), recipe=base["recipe"],
                                   recipe_overrides=overrides, num_threads=threads)
            jobs.append((name, total, scaled.batch_size, request.to_dict()))
    return jobs


def write_short_rows(results: Path, rows: list[dict[str, Any]]) -> None:
    """Replace proxies.csv's rows of these (proxy, spec) pairs with `rows`; others are kept."""
    import pandas as pd

    from nas.results import atomic_write_text

    path = results / PROXIES_CSV
    new = pd.DataFrame(rows, columns=PROXY_COLUMNS)
    if path.is_file():
        old = pd.read_csv(path, dtype={"spec_id": str})
        done = set(zip(new["proxy"], new["spec_id"]))
        keep = [(p, s) not in done for p, s in zip(old["proxy"], old["spec_id"])]
        new = pd.concat([old[keep], new], ignore_index=True)
    atomic_write_text(path, new.to_csv(index=False))


def run_short(args: argparse.Namespace) -> int:
    """Issue 25, item 3.1: the truth's specs trained with short recipes (`--short-recipes`
    factors of `--short-budget`'s schedule), each run's val hard AP a proxy in proxies.csv
    (cost_s: its summed iteration times). Resumable like the truth: OUT/short/<name>/<spec_id>/
    keeps each run; a finished one is read back, not trained again."""
    setting = settings(args)
    search, specs = sample(setting, Path(args.results))  # the truth's specs (recorded settings must match)
    results, out = Path(args.results), Path(args.out)
    record_setup(results, setting, search, specs, _versions())
    jobs = short_requests(setting, specs, args.short_budget, args.short_recipes, out, args.data,
                          args.threads)
    rows: list[dict[str, Any]] = []

    def row(name: str, result: dict[str, Any]) -> dict[str, Any]:
        return {"spec_id": result["spec_id"], "proxy": name, "value": float(result["ap_hard"]),
                "cost_s": float(result["train_s"])}

    from nas.results import _read_json

    todo = []
    for name, total, batch, request in jobs:
        done = _read_json(Path(request["out_dir"]) / RESULT)[0]
        if done is not None:
            rows.append(row(name, done))
        else:
            todo.append((name, total, batch, request))
    print(f"short recipes {', '.join(sorted({job[0] for job in jobs}))}: {len(rows)} runs finished, "
          f"{len(todo)} to run ({args.workers} workers x {args.threads} threads)", flush=True)
    if rows:
        write_short_rows(results, rows)
    start = time.perf_counter()
    calls = [(name, (request, batch, [total])) for name, total, batch, request in todo]
    for name, result in _completed(calls, args.workers, args.stop_after):
        rows.append(row(name, result))
        write_short_rows(results, rows)
        print(f"[{time.perf_counter() - start:7.0f}s] {name} {result['spec_id']}: hard AP "
              f"{result['ap_hard']:.4f}, trained in {result['train_s']:.0f} s", flush=True)
    print(f"{len(rows)} of {len(jobs)} short-recipe runs in {results / PROXIES_CSV}", flush=True)
    return 0


# -- the report: from the CSVs alone ---------------------------------------------------------
def _tau(a, b) -> float:
    from scipy import stats

    return float(stats.kendalltau(a, b).statistic)


def bootstrap_tau(x, y, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of Kendall tau over `n` resamples of the pairs (x_i, y_i) with
    replacement (resamples where tau is undefined are skipped)."""
    import numpy as np

    return bootstrap_mean_tau(np.asarray(x, float)[:, None], y, n, seed)


def bootstrap_mean_tau(xs, y, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """The same for the mean over the columns of `xs` (one per seed: item i's proxy value in
    that seed's run) of tau(column, y): the items (rows) resampled with replacement."""
    import numpy as np

    xs, y = np.asarray(xs, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    taus = np.array([_mean_tau(xs[i], y[i]) for i in rng.integers(0, len(y), (n, len(y)))])
    taus = taus[np.isfinite(taus)]
    if not len(taus):  # e.g. every value tied: no ranking to resample
        return float("nan"), float("nan")
    return float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))


def _mean_tau(xs, y) -> float:
    """Mean over the columns of xs of tau(column, y) (NaN when one is undefined)."""
    return float(sum(_tau(xs[:, j], y) for j in range(xs.shape[1])) / xs.shape[1])


def _seed_pair_taus(by_seed) -> list[tuple[Any, Any, int, float]]:
    """(seed a, seed b, specs with both, Kendall tau) for every pair of a spec x seed table's
    columns (NaN with fewer than 2 specs)."""
    out = []
    for a, b in itertools.combinations(by_seed.columns, 2):
        both = by_seed[[a, b]].dropna()
        out.append((a, b, len(both), _tau(both[a], both[b]) if len(both) > 1 else float("nan")))
    return out


def seed_reliability(by_seed) -> dict[str, Any]:
    """How much of a metric's spread across specs is architecture rather than seed: the
    two-way consistency intraclass correlation of a spec x seed table (complete rows only).

    A seed that shifts every spec alike (its data order suits every detector) leaves the
    ranking alone, so the seeds' main effect is removed: over n specs and k seeds with spec
    means m_i, seed means c_j and grand mean g, MSR = k sum_i (m_i - g)^2 / (n - 1) and MSE =
    sum_ij (x_ij - m_i - c_j + g)^2 / ((n - 1)(k - 1)); `icc` = ICC(C,1) = (MSR - MSE) / (MSR +
    (k - 1) MSE), the expected correlation of two seeds' runs, and `reliability` = ICC(C,k) =
    (MSR - MSE) / MSR, that of the k-seed mean. Under bivariate normality Kendall tau =
    (2 / pi) asin(r), so `tau_one_seed` = (2 / pi) asin(icc) is the seed-against-seed tau the
    table predicts, `tau_mean` = (2 / pi) asin(sqrt(reliability)) that of the k-seed mean
    against the noise-free ranking, and `seeds_for_tau` (Spearman-Brown) how many seeds a mean
    needs for that tau to reach 0.6. `seed_shift` is the spread of the seed means (sd).
    """
    import numpy as np

    x = by_seed.dropna().to_numpy(float)
    n, k = x.shape
    out: dict[str, Any] = {"specs": int(n), "seeds": int(k)}
    if n < 2 or k < 2:
        return out
    means, seed_means, grand = x.mean(axis=1), x.mean(axis=0), x.mean()
    msb = k * float(((means - grand) ** 2).sum()) / (n - 1)
    msw = float(((x - means[:, None] - seed_means[None, :] + grand) ** 2).sum()) / ((n - 1) * (k - 1))
    icc = (msb - msw) / (msb + (k - 1) * msw) if msb + (k - 1) * msw > 0 else float("nan")
    reliability = (msb - msw) / msb if msb > 0 else float("nan")
    target = math.sin(0.6 * math.pi / 2) ** 2  # reliability at which tau_mean is 0.6
    if not icc > 0:
        seeds_for = float("inf")
    else:  # Spearman-Brown: m icc / (1 + (m - 1) icc) >= target
        seeds_for = float(max(1, math.ceil(target * (1 - icc) / (icc * (1 - target)) - 1e-9)))
    out.update({
        "between_sd": float(np.sqrt(max(msb - msw, 0.0) / k)), "seed_sd": float(np.sqrt(msw)),
        "seed_shift": float(seed_means.std(ddof=1)),
        "icc": icc, "reliability": reliability,
        "tau_one_seed": 2 / math.pi * math.asin(max(-1.0, min(1.0, icc))),
        "tau_mean": 2 / math.pi * math.asin(math.sqrt(max(0.0, reliability))),
        "seeds_for_tau": seeds_for})
    return out


def rung_proxies(curves, by_seed, metric: str, n_boot: int = BOOTSTRAP) -> list[dict[str, Any]]:
    """Rung AP (`metric`) and rung loss at each recorded iteration, as proxies of the truth
    (module docstring). curves: ranking_curves.csv; by_seed: the truth's final `metric`,
    spec x seed (ranking_truth.csv). Only specs with a point in every seed count."""
    import numpy as np

    final = int(curves["iteration"].max())
    seeds = [s for s in by_seed.columns if (curves["seed"] == s).any()]
    out = []
    for it in sorted(curves["iteration"].unique()):
        at = curves[curves["iteration"] == it]
        for name, column, sign in ((f"rung_{metric}", metric, 1.0), ("rung_loss", "loss", -1.0)):
            values = at.pivot(index="spec_id", columns="seed", values=column)
            values = values.reindex(columns=seeds).dropna()
            common = [s for s in values.index
                      if s in by_seed.index and by_seed.loc[s].notna().all()]
            if len(common) < 2:
                continue
            xs = sign * values.loc[common].to_numpy(float)
            truth = by_seed.loc[common].to_numpy(float)
            y = truth.mean(axis=1)
            other = [np.delete(truth, by_seed.columns.get_loc(s), axis=1).mean(axis=1)
                     for s in seeds] if truth.shape[1] > 1 else []
            low, high = bootstrap_mean_tau(xs, y, n_boot)
            out.append({"proxy": name, "iteration": int(it), "specs": len(common),
                        "seeds": len(seeds), "tau": _mean_tau(xs, y),
                        "tau_other": (float(np.mean([_tau(xs[:, j], other[j])
                                                     for j in range(len(seeds))]))
                                      if other else float("nan")),
                        "ci_low": low, "ci_high": high, "cost_fraction": int(it) / final})
    return out


def replay_summary(curves, metric: str, grace: float = GRACE,
                   reduction_factor: float = REDUCTION_FACTOR, orders: int = 1000,
                   workers: int = 4) -> dict[str, Any]:
    """ASHA and synchronous SH replayed on the complete runs' curves (asha_replay.replay), on
    the rung `metric` and on the rung loss (scored against the final `metric`): per replayed
    metric, the schedule and one row per (method, k) of savings and recall@k."""
    asha_replay = _sibling("asha_replay")
    from analysis.errors import AnalysisError

    final = int(curves["iteration"].max())
    done = curves.groupby(["spec_id", "seed"])["iteration"].transform("max") == final
    complete = curves[done]
    n = complete["spec_id"].nunique()
    k = [x for x in (1, 3, 5) if x <= n]
    out: dict[str, Any] = {"specs": int(n), "orders": orders, "workers": workers, "runs": []}
    for replayed, truth in ((metric, None), ("loss", metric)):
        try:
            summary, per = asha_replay.replay(complete, replayed, grace, reduction_factor, final,
                                              orders, workers, k, None, 0, "random", truth)
        except AnalysisError as err:
            out["runs"].append({"metric": replayed, "error": str(err)})
            continue
        sch = per.attrs["schedule"]
        out["runs"].append({"metric": replayed, "truth": truth or metric,
                            "rungs": [math.ceil(m - 1e-9) for m in sch.decision_rungs],
                            "max_t": sch.end, "rows": summary.to_dict("records"),
                            "table": asha_replay.format_table(summary)})
    return out


def prescreen_vs_random(values, truth_mean, n: int = PRESCREEN_N, keep: float = PRESCREEN_KEEP,
                        top: int = 3, draws: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Issue 25's second goal, offline: `facenas search --prescreen P --prescreen-keep keep`
    against a plain search, both training `n` specs. Each draw samples a pool of ceil(n / keep)
    specs from the truth's specs (with replacement: the truth's specs stand for the regime's
    population); the prescreened search trains the pool's n best by the proxy `values`, the
    plain one the pool's first n (a random sample of n). Each keeps its `top` best trained
    specs by the truth (a search knows what it trained); the score is their mean truth
    `truth_mean`. Returns the medians of both scores, the mean difference and the share of
    draws where the prescreened top is better, equal, worse."""
    import numpy as np

    common = [s for s in truth_mean.index if s in values.index]
    proxy = values[common].to_numpy(float)
    truth = truth_mean[common].to_numpy(float)
    pool_size = math.ceil(n / keep)
    rng = np.random.default_rng(seed)
    pre, plain = np.empty(draws), np.empty(draws)
    for d in range(draws):
        pool = rng.integers(0, len(common), size=pool_size)
        picked = pool[np.argsort(-proxy[pool], kind="stable")[:n]]
        pre[d] = np.sort(truth[picked])[::-1][:top].mean()
        plain[d] = np.sort(truth[pool[:n]])[::-1][:top].mean()
    diff = pre - plain
    return {"specs": len(common), "n": n, "keep": keep, "pool": pool_size, "top": top, "draws": draws,
            "prescreen_median": float(np.median(pre)), "random_median": float(np.median(plain)),
            "mean_gain": float(diff.mean()), "better": float((diff > 0).mean()),
            "equal": float((diff == 0).mean()), "worse": float((diff < 0).mean())}


def report(results: Path, metric: str = "ap_hard", n_boot: int = BOOTSTRAP, orders: int = 1000,
           grace: float = GRACE, reduction_factor: float = REDUCTION_FACTOR,
           workers: int = 4) -> dict[str, Any]:
    """Every figure of the note from ranking_truth.csv, proxies.csv and ranking_curves.csv
    (module docstring)."""
    import pandas as pd

    if not (results / TRUTH_CSV).is_file():
        raise SystemExit(f"{results / TRUTH_CSV} not found: the truth has not been trained yet "
                         "(run this script without --report)")
    truth = pd.read_csv(results / TRUTH_CSV, dtype={"spec_id": str})
    by_seed = truth.pivot(index="spec_id", columns="seed", values=metric)
    seeds = list(by_seed.columns)
    pairs = [{"seeds": [int(a), int(b)], "specs": n, "tau": tau} for a, b, n, tau in _seed_pair_taus(by_seed)]
    failed: list = []
    bad: set = set()
    if (results / ANCHORS_CSV).is_file():
        failed = failed_runs(pd.read_csv(results / ANCHORS_CSV, dtype={"spec_id": str}))
        bad = {spec for spec, _ in failed}
        kept = by_seed.drop(index=[s for s in by_seed.index if s in bad])
        for p, (_, _, n, tau) in zip(pairs, _seed_pair_taus(kept)):
            p["specs_without_failed"], p["tau_without_failed"] = n, tau
    mean = by_seed.mean(axis=1)
    noise = []
    for name, without in itertools.product(("ap_easy", "ap_medium", "ap_hard"), (False, True)):
        if without and not bad:
            continue
        table = truth.pivot(index="spec_id", columns="seed", values=name)
        if without:  # the specs of failed runs (dead anchors) left out
            table = table.drop(index=[s for s in table.index if s in bad])
        taus = [tau for _, _, _, tau in _seed_pair_taus(table)]
        noise.append({"metric": name, "without_failed": without,
                      "tau": float(sum(taus) / len(taus)) if taus else float("nan"),
                      **seed_reliability(table)})
    truth_cost = float(truth.groupby("spec_id")["train_s"].mean().median())
    out: dict[str, Any] = {"metric": metric, "specs": int(by_seed.shape[0]), "seeds": [int(s) for s in seeds],
                           "seed_pairs": pairs, "failed_runs": [list(f) for f in failed],
                           "seed_noise": noise, "truth_cost_s": truth_cost,
                           "proxies": []}
    path = results / PROXIES_CSV
    if path.is_file():
        proxies = pd.read_csv(path, dtype={"spec_id": str})
        for name, group in proxies.groupby("proxy", sort=False):
            values = group.set_index("spec_id")["value"]
            common = [s for s in mean.index if s in values.index]
            x, y = values[common].to_numpy(float), mean[common].to_numpy(float)
            low, high = bootstrap_tau(x, y, n_boot)
            cost = float(group["cost_s"].median())
            out["proxies"].append({"proxy": name, "specs": len(common), "tau": _tau(x, y),
                                   "ci_low": low, "ci_high": high, "cost_s": cost,
                                   "cost_fraction": cost / truth_cost if truth_cost > 0 else float("nan"),
                                   "prescreen": prescreen_vs_random(values, mean, draws=n_boot)})
    truth_val_noise = _sibling("truth_val_noise")
    path = results / truth_val_noise.VAL_NOISE_CSV
    if path.is_file():
        table = pd.read_csv(path, dtype={"spec_id": str})
        if not table.empty:
            out["val_noise"] = {**truth_val_noise.summary(table), "rows": table.to_dict("records")}
    path = results / CURVES_CSV
    if path.is_file():
        curves = pd.read_csv(path, dtype={"spec_id": str})
        if not curves.empty:
            out["rung_proxies"] = rung_proxies(curves, by_seed, metric, n_boot)
            out["replay"] = replay_summary(curves, metric, grace, reduction_factor, orders, workers)
    return out


def print_report(rep: dict[str, Any]) -> None:
    print(f"truth: {rep['specs']} specs x seeds {rep['seeds']}, {rep['metric']}; one long training "
          f"{rep['truth_cost_s'] / 60:.1f} min (median over specs)")
    for p in rep["seed_pairs"]:
        print(f"seed {p['seeds'][0]} vs {p['seeds'][1]}: Kendall tau {p['tau']:.3f} ({p['specs']} specs)")
        if "tau_without_failed" in p:
            print(f"  without the specs of runs with a dead anchor: {p['tau_without_failed']:.3f} "
                  f"({p['specs_without_failed']} specs)")
    if rep.get("failed_runs"):
        print("runs with a dead anchor (ranking_truth_anchors.csv): "
              + ", ".join(f"{spec} seed {seed}" for spec, seed in rep["failed_runs"]))
    if any("icc" in r for r in rep.get("seed_noise", [])):
        print("seed noise per metric (seed_reliability: tau predicted from the ICC under normality; "
              "seeds a mean needs for tau 0.6 against the noise-free ranking):")
        print("| metric | seed tau | spec sd | seed sd | seed shift | ICC | tau predicted | "
              "reliability of mean | tau of mean | seeds for 0.6 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rep["seed_noise"]:
            if "icc" in r:
                label = r["metric"] + (" without failed" if r.get("without_failed") else "")
                print(f"| {label} | {r['tau']:.3f} | {r['between_sd']:.4f} | {r['seed_sd']:.4f} | {r['seed_shift']:.4f} | "
                      f"{r['icc']:.3f} | {r['tau_one_seed']:.3f} | {r['reliability']:.3f} | "
                      f"{r['tau_mean']:.3f} | {r['seeds_for_tau']:g} |")
    if rep.get("val_noise"):
        v = rep["val_noise"]
        print(f"seed differences against the val set's draw ({v['setting']} AP; paired image "
              f"bootstrap, ranking_truth_val_noise.csv): seed sd {v['seed_sd']:.4f}, of it the val "
              f"set's {v['val_set_sd']:.4f}: {v['val_set_share']:.0%} of the seed variance")
        print("| spec | seeds | AP | difference | its bootstrap sd |")
        print("|---|---|---|---|---|")
        for r in v["rows"]:
            print(f"| {r['spec_id']} | {r['seed_a']} / {r['seed_b']} | {r['ap_a']:.4f} / {r['ap_b']:.4f} | "
                  f"{r['diff']:+.4f} | {r['boot_sd']:.4f} |")
    if rep["proxies"]:
        print("| proxy | specs | tau vs mean | 95% CI | cost/spec (s) | cost / truth |")
        print("|---|---|---|---|---|---|")
        for p in rep["proxies"]:
            print(f"| {p['proxy']} | {p['specs']} | {p['tau']:.3f} | [{p['ci_low']:.3f}, "
                  f"{p['ci_high']:.3f}] | {p['cost_s']:.2f} | {p['cost_fraction']:.2e} |")
        first = rep["proxies"][0]["prescreen"]
        print(f"--prescreen against plain sampling, both training {first['n']} specs (pool "
              f"{first['pool']}, {first['draws']} draws from the truth's specs), judged by the "
              f"truth's mean {rep['metric']} of the best {first['top']} trained:")
        print("| proxy | prescreen median | random median | mean gain | better | equal | worse |")
        print("|---|---|---|---|---|---|---|")
        for p in rep["proxies"]:
            q = p["prescreen"]
            print(f"| {p['proxy']} | {q['prescreen_median']:.4f} | {q['random_median']:.4f} | "
                  f"{q['mean_gain']:+.4f} | {q['better']:.2f} | {q['equal']:.2f} | {q['worse']:.2f} |")
    if rep.get("rung_proxies"):
        print("rung proxies (one run per spec, each seed in turn; loss negated):")
        print("| proxy | iteration | specs | tau vs mean | 95% CI | tau vs other seeds | cost / truth |")
        print("|---|---|---|---|---|---|---|")
        for p in rep["rung_proxies"]:
            print(f"| {p['proxy']} | {p['iteration']} | {p['specs']} | {p['tau']:.3f} | "
                  f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}] | {p['tau_other']:.3f} | "
                  f"{p['cost_fraction']:.3f} |")
    if rep.get("replay"):
        r = rep["replay"]
        for run in r["runs"]:
            if "error" in run:
                print(f"replay on {run['metric']}: not possible: {run['error']}")
                continue
            print(f"replay on {run['metric']} (scored by final {run['truth']}): {r['specs']} specs, "
                  f"rungs at {', '.join(map(str, run['rungs']))}, max_t {run['max_t']}; "
                  f"{r['orders']} arrival orders, {r['workers']} workers")
            print(run["table"])
    print(json.dumps(rep, default=float))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--report", action="store_true", help="figures from the CSVs alone")
    what.add_argument("--proxies", action="store_true", help="zero-cost proxies -> proxies.csv")
    what.add_argument("--short-recipes", type=float, nargs="+", metavar="FACTOR",
                      help="train every spec once with --short-budget's recipe, its schedule "
                           "scaled by each FACTOR; val hard AP -> proxies.csv")
    what.add_argument("--anchor-health", action="store_true",
                      help="every finished run's anchor scores -> ranking_truth_anchors.csv")
    what.add_argument("--val-noise", action="store_true",
                      help="how much of the seed noise is the val set's draw (paired image "
                           "bootstrap of every finished spec's seeds) -> ranking_truth_val_noise.csv")
    what.add_argument("--probe", type=int, metavar="N",
                      help="time the first N iterations of one run and project the whole truth")
    p.add_argument("--health-images", type=int, default=50,
                   help="--anchor-health: the first N val images")
    p.add_argument("--short-budget", default="quick", help="--short-recipes: the budget whose trial recipe is scaled")
    p.add_argument("--proxy-names", nargs="+", help="with --proxies: these (default: all)")
    p.add_argument("--gflops", type=float, default=2.5)
    p.add_argument("--specs", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sample-seed", type=int, default=0, help="search seed of the spec sample")
    p.add_argument("--recipe", help="YAML mapping of recipe overrides (default DEFAULT_RECIPE)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "widerface-mini"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--out", default=str(REPO / "runs" / "ranking_truth"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--stop-after", type=float, metavar="MINUTES",
                   help="start no new run after this many minutes")
    p.add_argument("--rungs", type=int, nargs="+", metavar="ITERATION",
                   help="test every run at these iterations too (default: ASHA's at grace 1/9, "
                   "rf 3, plus 2/3 of the schedule)")
    p.add_argument("--metric", default="ap_hard", choices=("ap_easy", "ap_medium", "ap_hard"))
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
    p.add_argument("--orders", type=int, default=1000, help="--report: replay arrival orders")
    p.add_argument("--grace", type=float, default=GRACE,
                   help="--report: replay's first rung (fraction of the run, or iterations)")
    p.add_argument("--reduction-factor", type=float, default=REDUCTION_FACTOR)
    p.add_argument("--replay-workers", type=int, default=4, help="--report: ASHA's slots")
    args = p.parse_args(argv)
    from detectors.errors import UserError

    try:
        return _dispatch(args)
    except UserError as err:
        print(f"ranking_truth: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.report:
        print_report(report(Path(args.results), args.metric, args.bootstrap, args.orders,
                            args.grace, args.reduction_factor, args.replay_workers))
        return 0
    if args.proxies:
        return run_proxies(args)
    if args.short_recipes:
        return run_short(args)
    if args.anchor_health:
        return run_anchor_health(args)
    if args.val_noise:
        return run_val_noise(args)
    if args.probe:
        return run_probe(args)
    return run_truth(args)


if __name__ == "__main__":
    sys.exit(main())
