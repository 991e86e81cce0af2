"""One search trial: build -> train with the preset's recipe -> test -> metrics. No Ray here.

The driver hands each planned spec to a trial function as a `TrialRequest` (plain data, all
paths absolute: Ray runs trials in a working directory of its own). The function returns the
metric part of a results-table row (`status`, `error`, `wall_time_s`, `ap_easy`, `ap_medium`,
`ap_hard`, and AP at precision >= 98%: `ap_at_p98_easy/_medium/_hard`, `ap_at_p98` = hard) or
raises; a raising or diverging trial is retried by the driver up to
`--max-failures` times and then recorded as failed.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

# re-exported: the one deep merge of budget sections lives with the retraining configs
from detectors.config import merge

if TYPE_CHECKING:
    from detectors.config import Recipe

__all__ = ["TrialDiverged", "TrialFn", "TrialRequest", "merge", "run_trial", "trial_config",
           "run_job", "budget_scaled_recipe", "is_cuda_oom", "grad_accumulation",
           "with_grad_accumulation", "cuda_problem", "p98_columns"]


class TrialDiverged(RuntimeError):
    """Training produced a non-finite loss (the driver retries, then records it failed)."""


@dataclass(frozen=True)
class TrialRequest:
    """Everything one trial needs; paths are absolute."""

    spec_id: str
    spec_yaml: str
    step: int
    seed: int
    budget: str  # detectors.config budget preset: smoke | quick | paper
    data_root: str
    out_dir: str
    recipe: dict[str, Any] = field(default_factory=dict)  # the preset's search recipe (H4 format)
    recipe_overrides: dict[str, Any] = field(default_factory=dict)  # per budget, after scaling
    max_iterations: int | None = None
    num_threads: int | None = None
    workers: int | None = None  # --workers: loader processes (None: recipe.workers, else threads)
    processes: int = 1  # training processes of a single-model trial (--nproc-per-trial; DDP);
    # num_threads and workers are then each process's
    split: str = "val"
    rungs: list[float] = field(default_factory=list)  # fractions of the schedule to test at
    # (nas.fidelity); [] = test once, at the end
    search: dict[str, Any] = field(default_factory=dict)  # the resolved search config (phases
    # of other spaces read their own settings from it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_cuda_oom(err: BaseException) -> bool:
    """Did a trial die of CUDA running out of memory (torch's own error, or an older or
    wrapped RuntimeError that says so)?"""
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "CUDA out of memory" in str(err))


def grad_accumulation(request: TrialRequest) -> int:
    """The gradient-accumulation steps a request trains with (recipe.grad_accumulation; 1)."""
    value = request.recipe_overrides.get("grad_accumulation",
                                         request.recipe.get("grad_accumulation", 1))
    return int(value or 1)


def with_grad_accumulation(request: TrialRequest, steps: int) -> TrialRequest:
    """The request with `recipe.grad_accumulation: steps`, everywhere a trial function reads
    its recipe (run_trial: `recipe` and `recipe_overrides`; a supernet's or ASFD's trial: the
    search config's `recipe`). `batch_size` stays the batch of one optimiser step, so the loop
    (detectors/train.py) steps on `batch_size / steps` images at a time: same effective batch,
    smaller micro-batches."""
    recipe = {**request.recipe, "grad_accumulation": steps}
    overrides = dict(request.recipe_overrides)
    if "grad_accumulation" in overrides:
        overrides["grad_accumulation"] = steps
    search = dict(request.search)
    if isinstance(search.get("recipe"), dict):
        search["recipe"] = {**search["recipe"], "grad_accumulation": steps}
    return replace(request, recipe=recipe, recipe_overrides=overrides, search=search)


def cuda_problem() -> str | None:
    """Why CUDA cannot start in this process (None when it can). Asks without creating a
    context (no GPU memory is taken): a driver too old for torch's CUDA, or no device visible,
    reads as torch.cuda.is_available() False."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return None
    except Exception as err:  # torch raises RuntimeError (or worse) on a broken driver
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    built = f"for CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
    return (f"torch.cuda.is_available() is False (torch {torch.__version__}, built {built}; "
            f"CUDA_VISIBLE_DEVICES={visible!r})")


TrialFn = Callable[..., dict]  # (request) or (request, report=...) -> metric columns
# report(metrics, checkpoint_dir): called by a multi-fidelity trial at each rung (nas.fidelity)
Report = Callable[[dict, Path], None]


def run_job(request: TrialRequest, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A trial that is one job (a supernet's training, one candidate, one seed's search): the
    request's torch threads (Ray's OMP_NUM_THREADS is ignored once torch is loaded), then
    `job()`'s columns as an ok row with its wall time."""
    from detectors.device import set_threads

    start = time.perf_counter()
    set_threads(request.num_threads)
    columns = job()
    return {"status": "ok", "error": "", "wall_time_s": time.perf_counter() - start, **columns}


def trial_config(spec_yaml: str, recipe: dict[str, Any], budget: str,
                 recipe_overrides: dict[str, Any], path: Path):
    """The TrainConfig of a trial: spec + recipe, scaled to `budget`, then the overrides.

    Written to `path` (a retraining config in detectors.config's format) and loaded back with
    `load_config`, so a trial trains exactly what an exported config would describe.
    """
    from detectors.config import apply_budget, load_config

    from nas.results import atomic_write_text

    spec = yaml.safe_load(spec_yaml)
    atomic_write_text(path, yaml.safe_dump({"spec": spec, "recipe": recipe}, sort_keys=False))
    config = apply_budget(load_config(path), budget)
    if recipe_overrides:
        scaled = yaml.safe_load(config.to_yaml())
        scaled["recipe"] = merge(scaled["recipe"], recipe_overrides)
        atomic_write_text(path, yaml.safe_dump(scaled, sort_keys=False))
        config = load_config(path)
    return config


def budget_scaled_recipe(search: dict[str, Any]) -> "Recipe":
    """The recipe `trial_config` gives a trial of `search`: its `recipe` scaled to its budget,
    then its `recipe_overrides` (the budget's own recipe section) merged over it."""
    from detectors.config import budget_recipe, recipe_from_dict

    scaled = budget_recipe(recipe_from_dict(search["recipe"]), search["budget"])
    return recipe_from_dict(merge(scaled.to_dict(), search["recipe_overrides"]), "recipe_overrides")


def p98_columns(metrics: dict[str, float]) -> dict[str, float]:
    """A row's AP at precision >= 98% (detectors.test's metrics): ap_at_p98_easy / _medium /
    _hard, and ap_at_p98 = the hard subset's (the figure SCRFD Fig. 10(d) quotes)."""
    cols = {f"ap_at_p98_{s}": float(metrics[f"ap_at_p98_{s}"]) for s in ("easy", "medium", "hard")}
    return {**cols, "ap_at_p98": cols["ap_at_p98_hard"]}


def run_trial(request: TrialRequest, report: Report | None = None) -> dict[str, Any]:
    """Train and test one spec; returns the metric columns of its results row.

    With `request.rungs` (fractions of the schedule), training stops at each rung, the model
    is tested and `report(metrics so far, train dir)` is called (the driver passes it to Tune,
    whose scheduler may stop the trial there); the returned row then also holds `fidelity`
    and the hard AP of every rung (ap_hard_r1, ...)."""
    from detectors.device import set_threads
    from detectors.test import test
    from detectors.train import CHECKPOINT, METRICS, data_figures, total_iterations, train

    from nas.fidelity import rung_iterations, rung_loss

    start = time.perf_counter()
    # Ray sets OMP_NUM_THREADS for the trial but torch ignores it once loaded: set it here.
    set_threads(request.num_threads)
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = trial_config(request.spec_yaml, request.recipe, request.budget,
                          request.recipe_overrides, out_dir / "trial_config.yaml")
    train_dir = out_dir / "train"
    total = total_iterations(config, request.data_root)
    if request.max_iterations is not None:
        total = min(total, int(request.max_iterations))
    fractions = list(request.rungs) or [1.0]
    metrics: dict[str, Any] = {}
    for k, stop in enumerate(rung_iterations(fractions, total), start=1):
        # A retried or resumed trial continues from its last checkpoint instead of starting over.
        result = train(config, request.data_root, train_dir,
                       resume=(train_dir / CHECKPOINT).is_file(), num_threads=request.num_threads,
                       progress=False, max_iterations=stop, workers=request.workers)
        if result.status != "ok" or result.checkpoint is None:  # train raises TrainingDiverged
            raise TrialDiverged(f"training {result.status} after {result.iterations} iterations")
        ap = test(config, result.checkpoint, request.data_root, split=request.split,
                  progress=False)
        metrics.update({"status": "ok", "error": "", "wall_time_s": time.perf_counter() - start,
                        "ap_easy": float(ap["easy"]), "ap_medium": float(ap["medium"]),
                        "ap_hard": float(ap["hard"]), **p98_columns(ap)})
        metrics["images_per_s"], metrics["data_wait_frac"] = data_figures(train_dir / METRICS)
        if request.rungs:
            loss = rung_loss(train_dir / "metrics.jsonl", stop)
            metrics.update({"fidelity": fractions[k - 1], f"ap_hard_r{k}": float(ap["hard"]),
                            f"loss_r{k}": loss, "rung_loss": loss,
                            "rung_t": fractions[k - 1] / fractions[0]})
            if report is not None and k < len(fractions):
                report(dict(metrics), train_dir)
    return metrics
