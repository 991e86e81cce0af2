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

A step whose loss is NaN or infinite (on any process) is skipped: no update, on every process.
NONFINITE_LIMIT consecutive skipped steps stop the run with TrainingDiverged (status
'diverged'); the last checkpoint stays. Loss values stay on the device and are read every
`log_every` iterations in one transfer (no host sync in between); metrics.jsonl still gets
one line per iteration. Distributed (torchrun, `facenas train --nproc`; detectors.distributed):
each process trains a disjoint shard of every global batch under DistributedDataParallel,
the loss normalisers are averaged over processes, and rank 0 alone writes. `resume=True` continues from checkpoint.pt exactly: the batch of
iteration i and its augmentation depend only on (seed, i), so an interrupted and resumed run
computes the same losses as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
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
from detectors.config import NOT_IDENTITY_KEYS, Recipe, TrainConfig, schedule_in_iterations
from detectors.device import TrainingMode, select_device, set_threads, training_mode, tune_cuda
from detectors.data.device_transforms import device_images
from detectors import distributed
from detectors.distributed import World
from detectors.errors import UserError
from detectors.losses import LossInputs, Targets
from detectors.model import HeadOutputs, build, init_box_bias
from detectors.pretrained import maybe_load_pretrained

__all__ = ["train", "total_iterations", "batch_loss", "TrainHooks", "TrainResult", "TrainingDiverged", "lr_factor",
           "CHECKPOINT", "METRICS", "CONFIG", "NONFINITE_LIMIT", "LOG_EVERY", "check_world", "check_run_dir",
           "data_figures"]

# A non-finite loss skips its step (on every process); this many consecutive skipped steps
# stop the run as diverged (a loss that stays non-finite will not recover by itself).
NONFINITE_LIMIT = 3
# Iterations between reads of the loss values from the device (metrics.jsonl is flushed and
# the progress bar moves then): the steps in between make no host synchronisation.
LOG_EVERY = 10


class TrainHooks:
    """The loop's extension points, for training that is more than one fixed network (a
    supernet's per-iteration path, a DARTS architecture step). Override what you need; the
    defaults train `build(config.spec)` plainly. A hook's state rides in the checkpoint, so a
    resumed run continues exactly.

    The model a hook builds must have `.spec` (its anchors drive assignment) and return
    HeadOutputs; `after_step` may run extra forwards through `loop.loss(batch)`.

    Distributed (several processes, DDP): hooks declare `distributed = True` only when they
    keep every process in step (the same path / sampling draws on every rank, extra
    gradients averaged over the ranks, files written by rank 0 alone, identical state);
    other hooks are refused with more than one process (check_world). `dynamic_graph = True`:
    a step runs a subgraph of the model (a sampled path), so DDP looks for the parameters
    without gradient (find_unused_parameters; those unused on every rank keep no gradient,
    and SGD skips them, as in one process).
    """

    distributed: bool = False
    dynamic_graph: bool = False

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
                     cache: dict, world: World = World()) -> tuple[dict, torch.Tensor]:
    """The recipe's assigner + loss on one prediction set; (loss parts, positives as a 0-d
    device tensor). The loss's normalisers are averaged over the processes of `world`."""
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
        points=anchors.points, strides=anchors.strides,
        reduce_mean=(lambda t: distributed.reduce_mean(t, world)) if world.active else None)
    return loss_fn(recipe.loss.type)(inputs, recipe.loss), assignment.positive.sum()


def _step(model, batch: dict, recipe: Recipe, mode: TrainingMode, cache: dict, net=None,
          world: World = World()) -> tuple[dict, torch.Tensor]:
    """Forward + loss for one batch; returns (loss parts, number of positives), tensors.

    `net` is what runs the forward (the DistributedDataParallel wrapper of `model` in a
    distributed run; `model` itself by default); `world` averages the loss normalisers.

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
        out = (net or model)(images)
    parts, num_pos = _prediction_loss(out, batch, recipe, model.spec, mode.device, cache, world)
    for k, aux in enumerate(out.aux):
        aux_parts, _ = _prediction_loss(aux, batch, recipe, model.spec, mode.device, cache, world)
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
                     hooks: TrainHooks, world: World = World()) -> dict | None:
    """Checks the run directory; returns the checkpoint to resume from (or None). Every
    process checks (reading only); rank 0 creates the directory."""
    if world.main:
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
    # grad_accumulation / sync_bn may change, as the number of processes may, and box_init
    # (NOT_IDENTITY_KEYS); loader processes (workers) change the speed, not the batches
    recorded = _without_workers({k: v for k, v in (state.get("recipe") or {}).items()
                                 if k not in NOT_IDENTITY_KEYS})
    if state.get("spec") != config.spec.to_dict() or recorded != _without_workers(config.recipe.identity()):
        raise UserError(f"cannot resume {out_dir}: its checkpoint was trained with a different "
                        f"spec or recipe than this config (see {out_dir / CONFIG})")
    if state.get("hooks_identity", {}) != hooks.identity():
        raise UserError(f"cannot resume {out_dir}: its checkpoint was trained with another "
                        "supernet or search setting than this run")
    return state


def check_run_dir(config: TrainConfig, out_dir: str | os.PathLike, resume: bool,
                  hooks: TrainHooks | None = None) -> None:
    """UserError when `out_dir` cannot take this run: a fresh run into an old one, nothing to
    resume, or a checkpoint of another spec / recipe (what train() checks first; the
    launcher of several processes checks it before starting them)."""
    _prepare_out_dir(Path(out_dir), config, resume, hooks or TrainHooks())


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


def batch_loss(model: torch.nn.Module, batch: dict, recipe: Recipe) -> tuple[dict, torch.Tensor]:
    """The recipe's training loss of `model` on one batch, in fp32 on the model's device: (loss
    parts with graph, incl. 'total'; positives). What one iteration of the loop computes,
    without a step (zero-cost proxies score it at initialisation)."""
    device = next(model.parameters()).device
    return _step(model, batch, recipe, training_mode(device, fp32=True), {})


def _optimiser(params, recipe: Recipe, milestones: tuple[int, ...]):
    """SGD with the recipe's LR schedule. On CUDA fused SGD: it takes the non-finite flag
    `found_inf` on the device and skips the update there, without a host sync. On a CPU the
    plain (foreach) SGD: there is no device to wait for, so the flag is simply read (see
    fused_step). (The NaN weights once blamed on the fused CPU kernel came from bf16 conv
    backward on 1-pixel inputs; detectors/device.py.)"""
    s = recipe.schedule
    params = list(params)
    fused = bool(params) and params[0].is_cuda
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, fused=fused)
    if s.momentum and fused:
        # Fused SGD skipping its first step (found_inf) leaves an uninitialised momentum
        # buffer (torch 2.14); a zero buffer gives the same first step (buf = 0.9*0 + grad).
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, s.warmup_iters, s.warmup_ratio, milestones, s.gamma))
    return opt, sched


def align_grads(opt: torch.optim.Optimizer) -> None:
    """Give every gradient its weight's strides. Fused SGD (torch 2.14, CPU) reads a gradient
    laid out unlike its weight (a channels_last conv weight with a contiguous gradient, as
    conv backward may return) in the weight's order and steps wrongly, even to NaN;
    metadata only, so no host sync."""
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.stride() != p.stride():
                p.grad = torch.empty_like(p).copy_(p.grad)


def fused_step(opt: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """opt.step() skipped where `found_inf` (0-d, nonzero: skip) says so: on the device by a
    fused optimiser, else (a CPU optimiser, a CPU flag) by reading the flag through NumPy,
    which raises on a CUDA tensor, so this can never hide a device sync."""
    if not opt.defaults.get("fused"):
        if not found_inf.numpy().any():
            opt.step()
        return
    align_grads(opt)
    opt.found_inf = found_inf
    try:
        opt.step()
    finally:
        del opt.found_inf


def _micro_batches(batch: dict, k: int) -> list[dict]:
    """`batch` as k equal consecutive micro-batches (tensors and per-image lists sliced)."""
    if k == 1:
        return [batch]
    n = len(batch["image"]) // k
    return [{key: value[i * n:(i + 1) * n] for key, value in batch.items()} for i in range(k)]


@dataclass
class _Loop:
    """What one iteration needs besides the batch. `net` runs the forward (the
    DistributedDataParallel wrapper of `model` in a distributed run); `world` is this
    process's place in it."""

    model: torch.nn.Module
    recipe: Recipe
    mode: TrainingMode
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    hooks: TrainHooks = field(default_factory=TrainHooks)
    cache: dict = field(default_factory=dict)
    world: World = field(default_factory=World)
    net: torch.nn.Module | None = None
    fault: Any = None  # test hook: fault(iteration, world) -> True makes this rank's loss NaN

    def loss(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """Forward + the recipe's loss on `batch` (tensors with graph; for hooks)."""
        return _step(self.model, batch, self.recipe, self.mode, self.cache, self.net, self.world)

    def iteration(self, batch: dict, it: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One SGD step (with the hooks around it) on this process's share of the global
        batch; returns (loss parts: 0-d device tensors, the mean over processes; positives
        in the global batch; skipped: 0-d bool, the step was not finite on some process).

        The share runs as recipe.grad_accumulation micro-batches, each loss divided by their
        number and the gradients summed (DDP all-reduces them after the last). A non-finite
        loss on any process skips the update on every process: the flag is all-reduced and
        handed to fused SGD as `found_inf` (GradScaler's does the same under fp16), so
        nothing here waits for the device."""
        self.hooks.before_step(it, self.model)
        self.opt.zero_grad(set_to_none=True)
        k = self.recipe.grad_accumulation
        micro = _micro_batches(batch, k)
        sums: dict[str, torch.Tensor] = {}
        positives = bad = None
        for m, part in enumerate(micro):
            sync_now = self.net is None or m == k - 1 or not hasattr(self.net, "no_sync")
            with (contextlib.nullcontext() if sync_now else self.net.no_sync()):
                parts, num_pos = self.loss(part)
                if self.fault is not None and self.fault(it, self.world):
                    parts = {**parts, "total": parts["total"] * float("nan")}
                self.scaler.scale(parts["total"] / k).backward()
            finite = torch.stack([torch.isfinite(v.detach()).all() for v in parts.values()]).all()
            bad = ~finite if bad is None else bad | ~finite
            positives = torch.as_tensor(num_pos, device=self.mode.device) + (0 if positives is None else positives)
            for name, v in parts.items():
                sums[name] = v.detach().float() / k + sums.get(name, 0)
        bad = distributed.reduce_max(bad.float(), self.world)
        if self.scaler.is_enabled():  # fp16: the scaler's own found_inf (non-finite loss -> inf grads)
            align_grads(self.opt)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            fused_step(self.opt, bad)
        self.sched.step()
        names = list(sums)
        stacked = distributed.reduce_mean(torch.stack([sums[n] for n in names] + [positives.float()]), self.world)
        values = dict(zip(names, stacked[:-1]))
        values.update(self.hooks.after_step(it, self))
        return values, stacked[-1] * self.world.size, bad > 0


def check_world(recipe: Recipe, world_size: int, hooks: TrainHooks | None = None) -> None:
    """UserError unless the global batch divides into world_size processes x
    recipe.grad_accumulation micro-batches (and, distributed, the training is a plain one)."""
    k = recipe.grad_accumulation
    if recipe.batch_size % (world_size * k):
        raise UserError(f"recipe.batch_size {recipe.batch_size} (the global batch) does not divide into "
                        f"{world_size} process(es) x recipe.grad_accumulation {k}")
    if world_size > 1 and hooks is not None and type(hooks) is not TrainHooks and not hooks.distributed:
        raise UserError(f"{type(hooks).__name__} trains in one process only (its hooks are not "
                        "made for several); run it without --nproc / --nproc-per-trial / torchrun")


def _setup(config: TrainConfig, data_root: Path, state: dict | None, device, fp32: bool,
           hooks: TrainHooks, world: World = World()):
    recipe = config.recipe
    chosen = select_device(device)
    if world.active and chosen.type == "cuda":  # one GPU per local process
        chosen = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(chosen)
    mode = training_mode(chosen, fp32=fp32)
    tune_cuda(mode, fp32=fp32)
    _seed_everything(recipe.seed)
    batches = SeededBatches(data_root, recipe, distributed.shard(recipe.batch_size, world),
                            pin_memory=mode.device.type == "cuda")
    total, milestones = schedule_in_iterations(recipe.schedule, batches.iters_per_epoch)
    model = hooks.build_model(config).to(mode.device)
    init_box_bias(model, recipe.box_init)  # a resumed run's weights replace it below
    maybe_load_pretrained(model, config, resuming=state is not None)  # recipe.pretrained
    if recipe.sync_bn and world.active:
        model = distributed.convert_sync_bn(model, mode.device.type)
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
    net = None
    if world.active:
        from torch.nn.parallel import DistributedDataParallel

        ids = [mode.device.index] if mode.device.type == "cuda" else None
        # broadcasts rank 0's weights; a sampled subgraph per step needs the unused-parameter search
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=hooks.dynamic_graph)
    loop = _Loop(model, recipe, mode, opt, sched, scaler, hooks, world=world, net=net)
    return loop, batches, total, start


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
    log_every: int = LOG_EVERY,
    fault: Any = None,
    workers: int | None = None,
) -> TrainResult:
    """Train `config` on the train split of `data_root` into `out_dir` (see module docstring).

    max_iterations stops early (the schedule still spans the whole recipe, so a later
    `resume=True` continues it); checkpoint_every defaults to a tenth of the run (<= 500
    iterations); fp32 forces fp32 NCHW instead of the device's fastest mode. Raises
    TrainingDiverged after NONFINITE_LIMIT consecutive non-finite steps and UserError for bad
    inputs. `hooks` (TrainHooks) change what is trained and add work around each step
    (supernets, DARTS). `workers`
    (--workers) overrides recipe.workers; without either, one loader process per thread. log_every: iterations between reads of the losses from the device.

    Started by torchrun or `facenas train --nproc` (RANK, WORLD_SIZE, LOCAL_RANK set), each
    process trains its shard of every global batch (recipe.batch_size) under
    DistributedDataParallel and rank 0 alone writes out_dir; `fault` is a test hook
    (fault(iteration, world) -> True: this process's loss is NaN at that iteration).
    """
    hooks = hooks or TrainHooks()
    out_dir, data_root = Path(out_dir), Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"dataset root not found: {data_root}")
    if log_every < 1:
        raise UserError(f"log_every must be >= 1, not {log_every}")
    world = distributed.env_world()
    check_world(config.recipe, world.size, hooks)
    if world.active and hasattr(hooks.build_model(config), "training_loss"):
        raise UserError("models trained on their own objective (training_loss, e.g. RSA stages) "
                        "train in one process")
    threads = set_threads(num_threads)
    if workers is not None:
        resolve_workers(workers, None, threads)  # a negative count: one line, before anything runs
        config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, workers=workers))
    state = _prepare_out_dir(out_dir, config, resume, hooks, world)
    # joined after every process has checked the run directory, so no rank sees rank 0's
    # first checkpoint as an old run
    world = distributed.init(select_device(device).type)
    try:
        loop, batches, total, start = _setup(config, data_root, state, device, fp32, hooks, world)
        loop.fault = fault
        if state is None and world.main:
            info = {**config.to_dict(), "run": _provenance(config, data_root, loop.mode, threads)}
            info["run"]["processes"] = world.size
            info["run"]["workers"] = batches.workers
            _write_text(out_dir / CONFIG, yaml.safe_dump(info, sort_keys=False, default_flow_style=None))
        metrics = out_dir / METRICS
        if world.main:
            _truncate_metrics(metrics, start)
        stop = total if max_iterations is None else min(total, max(start, max_iterations))
        every = checkpoint_every or max(1, min(500, total // 10))
        result = _run(loop, config, batches, out_dir, range(start, stop), total, every,
                      progress and world.main, log_every)
    finally:
        distributed.teardown(world)
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
    message = (f"training diverged at iteration {it + 1}: {NONFINITE_LIMIT} consecutive non-finite "
               f"steps, last loss parts {values} (lr {lr:.3g}); last good checkpoint: {last or 'none'}")
    return TrainResult("diverged", it, total, values, last, out_dir / METRICS, out_dir, message)


def _finite_weights(model: torch.nn.Module) -> bool:
    """Every floating weight and buffer finite (one host read; checkpoints only): a finite
    loss can still step the weights to inf, and a checkpoint must stay a good one."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def _non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the floating weights and buffers holding a NaN or inf (diagnostics only)."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@dataclass
class _Pending:
    """One iteration's record whose values are still on the device."""

    it: int
    values: dict
    num_pos: torch.Tensor
    skipped: torch.Tensor
    lr: float
    images: int
    seconds: float
    wait: float  # seconds waiting for the batch (data_wait_s)


def _read(pending: list[_Pending]) -> list[tuple[_Pending, dict, int, bool]]:
    """The pending records' values read from the device in one transfer: (record, loss
    parts as floats, positives, skipped)."""
    tensors = [t for p in pending for t in (*[v for v in p.values.values() if torch.is_tensor(v)],
                                             p.num_pos, p.skipped)]
    flat = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist()) if tensors else iter(())
    out = []
    for p in pending:
        values = {k: next(flat) if torch.is_tensor(v) else float(v) for k, v in p.values.items()}
        out.append((p, values, int(round(next(flat))), bool(next(flat))))
    return out


def _run(loop: _Loop, config: TrainConfig, batches: SeededBatches, out_dir: Path,
         iterations: range, total: int, every: int, progress: bool,
         log_every: int = LOG_EVERY) -> TrainResult:
    """Iterations `iterations` of the loop: log, checkpoint, stop after NONFINITE_LIMIT
    consecutive non-finite steps. Values stay on the device between flushes (every
    `log_every` iterations, at a checkpoint and at the end); a flush reads them in one
    transfer and rank 0 writes their metrics.jsonl lines, each line once."""
    ckpt = out_dir / CHECKPOINT
    main = loop.world.main
    bar = tqdm(total=total, initial=iterations.start, desc="train", unit="it", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    values: dict[str, float] = {}
    done, seen, t_run = iterations.start, 0, time.perf_counter()
    bad_run = 0  # consecutive non-finite steps so far
    pending: list[_Pending] = []
    waited = stepped = 0.0
    stream = batches.iterate(iterations.start)
    log = (out_dir / METRICS).open("a") if main else None
    try:
        for it in iterations:
            t0 = time.perf_counter()
            batch = next(stream)
            wait = time.perf_counter() - t0  # the loader was behind by this much
            lr = loop.opt.param_groups[0]["lr"]
            parts, num_pos, skipped = loop.iteration(batch, it)
            n = int(batch["image"].shape[0]) * loop.world.size
            step = max(time.perf_counter() - t0, 1e-9)
            waited, stepped = waited + wait, stepped + step
            pending.append(_Pending(it, parts, num_pos, skipped, lr, n, step, wait))
            last = it + 1 == iterations.stop
            if not ((it + 1) % log_every == 0 or (it + 1) % every == 0 or last):
                continue
            for p, values, positives, was_skipped in _read(pending):
                bad_run = bad_run + 1 if was_skipped else 0
                if log is not None:
                    log.write(json.dumps({"iteration": p.it + 1, **values, "lr": p.lr, "num_pos": positives,
                                          "skipped": was_skipped,
                                          "images_per_s": p.images / max(p.seconds, 1e-9),
                                          "data_wait_s": p.wait, "step_s": p.seconds}) + "\n")
                if bad_run >= NONFINITE_LIMIT:
                    log is not None and log.flush()
                    return _diverged(p.it, total, values, p.lr, out_dir)
                done, seen = p.it + 1, seen + p.images
            pending.clear()
            if log is not None:
                log.flush()
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{values.get('total', float('nan')):.3f}", refresh=False)
            if main and (done % every == 0 or last):
                if _finite_weights(loop.model):
                    _save(loop, config, batches, done, ckpt)
                else:  # the last good one stays; say which tensors, so it can be traced
                    print(f"train: no checkpoint at iteration {done}: non-finite values in "
                          f"{', '.join(_non_finite(loop.model)[:5])}", file=sys.stderr)
    finally:
        bar.close()
        batches.close()
        if log is not None:
            log.close()
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
