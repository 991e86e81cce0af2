"""The one training loop, for every spec and recipe (the search calls it too).

    result = train(config, data_root, out_dir)          # TrainConfig, WIDER-layout root

Per iteration: a seeded batch (detectors.batches) -> forward in the device's training mode
(detectors.device) -> the recipe's assigner (ATSS by default) -> its loss (SCRFD's QFL + DIoU
+ keypoints by default; both named in detectors.catalog), plus the loss of any auxiliary
prediction sets -> SGD step with linear warm-up and step decay. `TrainHooks` extend the loop
(supernet path sampling, architecture steps) without a second copy of it. Writes into out_dir:

- config.yaml: the resolved config (spec inline + recipe) and, under `run:`, provenance
  (package versions, git revision, device mode, data root); `load_config` reads it back;
- metrics.jsonl: one JSON line per iteration (iteration, loss parts, lr, images/s, positives,
  data_wait_s: seconds waiting for the batch, step_s: the whole iteration; data_figures());
- checkpoint.pt: model + optimiser + scheduler + iteration + RNG (detectors.checkpoint),
  written atomically every `checkpoint_every` iterations and at the end.

A loss that is NaN or infinite stops the run with TrainingDiverged (status 'diverged'); the
last good checkpoint stays. `resume=True` continues from checkpoint.pt exactly: the batch of
iteration i and its augmentation depend only on (seed, i), so an interrupted and resumed run
computes the same losses as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from detectors.anchors import anchor_boxes, anchor_points, anchor_strides
from detectors.assign import Assignment
from detectors.batches import SeededBatches, resolve_workers
from detectors.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from detectors.config import Recipe, TrainConfig, schedule_in_iterations
from detectors.data.device_transforms import device_images
from detectors.device import TrainingMode, select_device, set_threads, training_mode
from detectors.errors import UserError
from detectors.losses import LossInputs, Targets
from detectors.model import HeadOutputs, build

__all__ = ["train", "total_iterations", "TrainHooks", "TrainResult", "TrainingDiverged", "lr_factor", "CHECKPOINT",
           "METRICS", "CONFIG", "data_figures"]


class TrainHooks:
    """The loop's extension points, for training that is more than one fixed network (a
    supernet's per-iteration path, a DARTS architecture step). Override what you need; the
    defaults train `build(config.spec)` plainly. A hook's state rides in the checkpoint, so a
    resumed run continues exactly.

    The model a hook builds must have `.spec` (its anchors drive assignment) and return
    HeadOutputs; `after_step` may run extra forwards through `loop.loss(batch)`.
    """

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return build(config.spec)

    def parameters(self, model: torch.nn.Module):
        """What SGD trains (a DARTS hook leaves its architecture parameters out)."""
        return model.parameters()

    def before_step(self, iteration: int, model: torch.nn.Module) -> None:
        """Called before iteration `iteration`'s forward (e.g. sample a supernet path)."""

    def after_step(self, iteration: int, loop: "_Loop") -> dict[str, float]:
        """Called after the SGD step; returns extra metrics for metrics.jsonl."""
        return {}

    def identity(self) -> dict[str, Any]:
        """Plain data a resumed run must match (e.g. the supernet's definition)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""

CHECKPOINT, METRICS, CONFIG = "checkpoint.pt", "metrics.jsonl", "config.yaml"


@dataclass
class TrainResult:
    """What a run produced. status: 'ok' | 'diverged'; losses: last iteration's loss parts."""

    status: str
    iterations: int
    total_iterations: int
    losses: dict[str, float]
    checkpoint: Path | None
    metrics: Path
    out_dir: Path
    message: str = ""
    images_per_s: float = float("nan")
    data_wait_frac: float = float("nan")  # share of step time spent waiting for the next batch


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf. `.result` is the TrainResult (status 'diverged') to record."""

    def __init__(self, result: TrainResult) -> None:
        super().__init__(result.message)
        self.result = result
        self.status = result.status


def lr_factor(iteration: int, warmup_iters: int, warmup_ratio: float,
              milestones: tuple[int, ...], gamma: float) -> float:
    """LR multiplier at `iteration` (0-based): mmdet's linear warm-up from `warmup_ratio`
    times the step decay (gamma per milestone passed)."""
    factor = gamma ** sum(iteration >= m for m in milestones)
    if iteration < warmup_iters:
        factor *= 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio)
    return factor


@dataclass
class _Anchors:
    """All levels concatenated, for one input size: boxes (A, 4), points (A, 2), strides (A,)."""

    per_level: list[torch.Tensor]
    points: torch.Tensor
    strides: torch.Tensor


def _anchors_for(spec, sizes: list[tuple[int, int]], device: torch.device) -> _Anchors:
    boxes = anchor_boxes(spec.anchors, sizes, device)
    return _Anchors(boxes, torch.cat(anchor_points(spec.anchors, sizes, device)),
                    torch.cat(anchor_strides(spec.anchors, sizes, device)))


def _targets(batch: dict, assignment: Assignment, anchors: _Anchors) -> Targets:
    """Gather the positives' boxes / keypoints in `assignment.positive.nonzero()` order."""
    img_idx, anchor_idx = assignment.positive.nonzero(as_tuple=True)
    gt_idx = assignment.matched[img_idx, anchor_idx]
    device = anchors.points.device
    offsets = torch.tensor([0] + [len(b) for b in batch["boxes"]], device=device).cumsum(0)[:-1]
    flat = offsets[img_idx] + gt_idx  # index into the batch's concatenated boxes
    boxes = torch.cat(batch["boxes"]).to(device)
    kps = torch.cat(batch["keypoints"]).to(device)
    kps_valid = torch.cat(batch["keypoints_valid"]).to(device)
    return Targets(boxes=boxes[flat], keypoints=kps[flat], keypoints_valid=kps_valid[flat],
                   points=anchors.points[anchor_idx], strides=anchors.strides[anchor_idx])


def _prediction_loss(out: HeadOutputs, batch: dict, recipe: Recipe, spec, device,
                     cache: dict) -> tuple[dict, int]:
    """The recipe's assigner + loss on one prediction set; (loss parts, positives)."""
    from detectors.catalog import assigner_fn, loss_fn

    key = (tuple(out.feature_sizes), spec.anchors)
    if key not in cache:
        cache[key] = _anchors_for(spec, out.feature_sizes, device)
    anchors = cache[key]
    boxes = [b.to(device) for b in batch["boxes"]]
    with torch.no_grad():
        assignment = assigner_fn(recipe.assigner.type)(anchors.per_level, boxes, batch["ignore"],
                                                       recipe.assigner)
    inputs = LossInputs(
        cls_logits=torch.cat(out.cls_logits, 1)[..., 0], box_dists=torch.cat(out.box_dists, 1),
        kps_offsets=torch.cat(out.kps_offsets, 1) if out.kps_offsets is not None else None,
        positive=assignment.positive, ignored=assignment.ignored, matched=assignment.matched,
        targets=_targets(batch, assignment, anchors), anchors=torch.cat(anchors.per_level),
        points=anchors.points, strides=anchors.strides)
    return loss_fn(recipe.loss.type)(inputs, recipe.loss), int(assignment.positive.sum())


def _step(model, batch: dict, recipe: Recipe, mode: TrainingMode, cache: dict) -> tuple[dict, int]:
    """Forward + loss for one batch; returns (loss parts, number of positives).

    Auxiliary prediction sets (HeadOutputs.aux) add recipe.loss.aux_weight times their loss;
    their parts are logged as aux<k>_<part>. A model with a `training_loss(images, batch,
    recipe) -> (parts with 'total', positives)` method is trained on that instead of the
    recipe's assigner + loss (stages that are not detection, e.g. RSA's scale forecast)."""
    # uint8 from the loader: flip, photometric and normalisation on the training device
    images = device_images(batch, mode.device, memory_format=torch.channels_last if mode.channels_last
                           else torch.contiguous_format)
    own_loss = getattr(model, "training_loss", None)
    if own_loss is not None:  # models trained with another objective (e.g. RSA's stages)
        with mode.autocast():
            return own_loss(images, batch, recipe)
    with mode.autocast():
        out = model(images)
    parts, num_pos = _prediction_loss(out, batch, recipe, model.spec, mode.device, cache)
    for k, aux in enumerate(out.aux):
        aux_parts, _ = _prediction_loss(aux, batch, recipe, model.spec, mode.device, cache)
        parts.update({f"aux{k}_{name}": v for name, v in aux_parts.items()})
        parts["total"] = parts["total"] + recipe.loss.aux_weight * aux_parts["total"]
    return parts, num_pos


def _git_revision() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def _provenance(config: TrainConfig, data_root: Path, mode: TrainingMode, threads: int) -> dict:
    import torchvision
    from importlib import metadata

    try:
        version = metadata.version("facenas")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "seed": config.recipe.seed, "data_root": str(data_root), "git_revision": _git_revision(),
        "mode": mode.describe(), "threads": threads, "python": platform.python_version(),
        "versions": {"facenas": version, "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_text(path: Path, text: str) -> None:
    """Atomic text write (temporary file + os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _prepare_out_dir(out_dir: Path, config: TrainConfig, resume: bool,
                     hooks: TrainHooks) -> dict | None:
    """Checks the run directory; returns the checkpoint to resume from (or None)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CHECKPOINT
    if not resume:
        if ckpt.exists():
            raise UserError(f"{out_dir} already holds a training run ({CHECKPOINT}); "
                            "pass --resume to continue it or choose another --out")
        return None
    if not ckpt.exists():
        raise UserError(f"nothing to resume: {ckpt} does not exist")
    state = load_checkpoint(ckpt)
    if state.get("spec") != config.spec.to_dict() or _without_workers(state.get("recipe")) != \
            _without_workers(config.recipe.to_dict()):
        raise UserError(f"cannot resume {out_dir}: its checkpoint was trained with a different "
                        f"spec or recipe than this config (see {out_dir / CONFIG})")
    if state.get("hooks_identity", {}) != hooks.identity():
        raise UserError(f"cannot resume {out_dir}: its checkpoint was trained with another "
                        "supernet or search setting than this run")
    return state


def _without_workers(recipe: dict | None) -> dict | None:
    # loader processes change the speed, not the batches: a run resumes under any --workers
    return None if recipe is None else {k: v for k, v in recipe.items() if k != "workers"}


def _rng_state(batches: SeededBatches) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(), "batches": batches.state_dict()}


def _numpy_state_to_plain(state: tuple) -> list:
    # weights_only loading accepts tensors, not numpy arrays: keep the key array as a tensor.
    return [state[0], torch.from_numpy(np.asarray(state[1]).astype(np.int64)), *state[2:]]


def _restore_rng(rng: dict, batches: SeededBatches) -> None:
    torch.set_rng_state(rng["torch"])
    name, key, *rest = rng["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
    batches.load_state_dict(rng["batches"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _truncate_metrics(path: Path, iteration: int) -> None:
    """On resume, drop metric lines past the checkpoint (they will be recomputed)."""
    if not path.exists():
        return
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    kept = [l for l in lines if json.loads(l)["iteration"] <= iteration]
    _write_text(path, "".join(l + "\n" for l in kept))


def _optimiser(params, recipe: Recipe, milestones: tuple[int, ...]):
    s = recipe.schedule
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, s.warmup_iters, s.warmup_ratio, milestones, s.gamma))
    return opt, sched


@dataclass
class _Loop:
    """What one iteration needs besides the batch."""

    model: torch.nn.Module
    recipe: Recipe
    mode: TrainingMode
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    hooks: TrainHooks = field(default_factory=TrainHooks)
    cache: dict = field(default_factory=dict)

    def loss(self, batch: dict) -> tuple[dict, int]:
        """Forward + the recipe's loss on `batch` (tensors with graph; for hooks)."""
        return _step(self.model, batch, self.recipe, self.mode, self.cache)

    def iteration(self, batch: dict, it: int = 0) -> tuple[dict[str, float], int, bool]:
        """One SGD step (with the hooks around it); returns (loss parts as floats, positives,
        finite). A non-finite loss leaves the model untouched."""
        self.hooks.before_step(it, self.model)
        self.opt.zero_grad(set_to_none=True)
        parts, num_pos = self.loss(batch)
        values = {k: float(v.detach()) for k, v in parts.items()}
        if not all(np.isfinite(v) for v in values.values()):
            return values, num_pos, False
        self.scaler.scale(parts["total"]).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        values.update(self.hooks.after_step(it, self))
        return values, num_pos, True


def _setup(config: TrainConfig, data_root: Path, state: dict | None, device, fp32: bool,
           hooks: TrainHooks):
    recipe = config.recipe
    mode = training_mode(select_device(device), fp32=fp32)
    _seed_everything(recipe.seed)
    batches = SeededBatches(data_root, recipe, pin_memory=mode.device.type == "cuda")
    total, milestones = schedule_in_iterations(recipe.schedule, batches.iters_per_epoch)
    model = hooks.build_model(config).to(mode.device)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt, sched = _optimiser(hooks.parameters(model), recipe, milestones)
    scaler = torch.amp.GradScaler(mode.device.type, enabled=mode.grad_scaler)
    start = 0
    if state is not None:
        load_model_weights(model, state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        _restore_rng(state["rng"], batches)
        hooks.load_state_dict(state.get("hooks", {}))
    return _Loop(model, recipe, mode, opt, sched, scaler, hooks), batches, total, start


def _save(loop: _Loop, config: TrainConfig, batches: SeededBatches, iteration: int, path: Path) -> None:
    save_checkpoint(path, {
        "spec": config.spec.to_dict(), "model": loop.model.state_dict(),
        "optimizer": loop.opt.state_dict(), "scheduler": loop.sched.state_dict(),
        "scaler": loop.scaler.state_dict(), "iteration": iteration,
        "rng": _rng_state(batches), "recipe": config.recipe.to_dict(),
        "hooks": loop.hooks.state_dict(), "hooks_identity": loop.hooks.identity()})


def train(
    config: TrainConfig,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    max_iterations: int | None = None,
    checkpoint_every: int | None = None,
    fp32: bool = False,
    hooks: TrainHooks | None = None,
    workers: int | None = None,
) -> TrainResult:
    """Train `config` on the train split of `data_root` into `out_dir` (see module docstring).

    max_iterations stops early (the schedule still spans the whole recipe, so a later
    `resume=True` continues it); checkpoint_every defaults to a tenth of the run (<= 500
    iterations); fp32 forces fp32 NCHW instead of the device's fastest mode. Raises
    TrainingDiverged on a NaN/inf loss and UserError for bad inputs. `hooks` (TrainHooks)
    change what is trained and add work around each step (supernets, DARTS). `workers`
    (--workers) overrides recipe.workers; without either, one loader process per thread.
    """
    hooks = hooks or TrainHooks()
    out_dir, data_root = Path(out_dir), Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"dataset root not found: {data_root}")
    threads = set_threads(num_threads)
    if workers is not None:
        resolve_workers(workers, None, threads)  # a negative count: one line, before anything runs
        config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, workers=workers))
    state = _prepare_out_dir(out_dir, config, resume, hooks)
    loop, batches, total, start = _setup(config, data_root, state, device, fp32, hooks)
    if state is None:
        info = {**config.to_dict(), "run": {**_provenance(config, data_root, loop.mode, threads),
                                            "workers": batches.workers}}
        _write_text(out_dir / CONFIG, yaml.safe_dump(info, sort_keys=False, default_flow_style=None))
    metrics = out_dir / METRICS
    _truncate_metrics(metrics, start)
    stop = total if max_iterations is None else min(total, max(start, max_iterations))
    every = checkpoint_every or max(1, min(500, total // 10))
    result = _run(loop, config, batches, out_dir, range(start, stop), total, every, progress)
    if result.status == "diverged":
        raise TrainingDiverged(result)
    return result


def total_iterations(config: TrainConfig, data_root: str | os.PathLike) -> int:
    """Iterations of the config's whole schedule (epochs count the train split's batches)."""
    schedule = config.recipe.schedule
    if schedule.unit == "iterations":
        return schedule.total
    per_epoch = SeededBatches(Path(data_root), config.recipe).iters_per_epoch
    return schedule_in_iterations(schedule, per_epoch)[0]


def _diverged(it: int, total: int, values: dict, lr: float, out_dir: Path) -> TrainResult:
    ckpt = out_dir / CHECKPOINT
    last = ckpt if ckpt.exists() else None
    message = (f"training diverged at iteration {it + 1}: loss parts {values} (lr {lr:.3g}); "
               f"last good checkpoint: {last or 'none'}")
    return TrainResult("diverged", it, total, values, last, out_dir / METRICS, out_dir, message)


def _run(loop: _Loop, config: TrainConfig, batches: SeededBatches, out_dir: Path,
         iterations: range, total: int, every: int, progress: bool) -> TrainResult:
    """Iterations `iterations` of the loop: log, checkpoint, stop at a non-finite loss."""
    ckpt = out_dir / CHECKPOINT
    bar = tqdm(total=total, initial=iterations.start, desc="train", unit="it", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    values: dict[str, float] = {}
    done, seen, t_run = iterations.start, 0, time.perf_counter()
    waited = stepped = 0.0
    stream = batches.iterate(iterations.start)
    try:
        with (out_dir / METRICS).open("a") as log:
            for it in iterations:
                t0 = time.perf_counter()
                batch = next(stream)
                wait = time.perf_counter() - t0  # the loader was behind by this much
                lr = loop.opt.param_groups[0]["lr"]
                values, num_pos, finite = loop.iteration(batch, it)
                n = int(batch["image"].shape[0])
                step = max(time.perf_counter() - t0, 1e-9)
                waited, stepped = waited + wait, stepped + step
                log.write(json.dumps({"iteration": it + 1, **values, "lr": lr, "num_pos": num_pos,
                                      "images_per_s": n / step, "data_wait_s": wait,
                                      "step_s": step}) + "\n")
                log.flush()
                if not finite:
                    return _diverged(it, total, values, lr, out_dir)
                done, seen = it + 1, seen + n
                bar.update(1)
                bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)
                if done % every == 0 or done == iterations.stop:
                    _save(loop, config, batches, done, ckpt)
    finally:
        bar.close()
        batches.close()
    rate = seen / max(time.perf_counter() - t_run, 1e-9)
    return TrainResult("ok", done, total, values, ckpt if ckpt.exists() else None, out_dir / METRICS,
                       out_dir, f"trained {done}/{total} iterations", rate,
                       waited / stepped if stepped else float("nan"))


def data_figures(metrics: str | os.PathLike) -> tuple[float, float]:
    """(images/s, data-wait fraction) of a whole run from its metrics.jsonl (every segment of
    a resumed or rung-by-rung run): images over step time, waiting over step time. NaN when
    the file has no timed step."""
    images = wait = step = 0.0
    path = Path(metrics)
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line) if line.strip() else {}
        if "step_s" in row:
            images += row["images_per_s"] * row["step_s"]
            wait, step = wait + row["data_wait_s"], step + row["step_s"]
    return (images / step, wait / step) if step else (float("nan"), float("nan"))
