"""First-order bilevel architecture search (DARTS / PC-DARTS / ASFD) through the one trainer.

    spec = run_search(config, data_root, out_dir, SupernetConfig(), DartsSettings())

`DartsHooks` turns detectors.train.train into the bilevel search: the model is the ASFD
supernet (search_spaces/asfd/supernet.py); SGD (the recipe's schedule) trains the weights only, on the
`weights` half of the training images; after `warmup_fraction` of the iterations each
iteration ends with one architecture step, Adam (lr 0.01, weight decay 5e-4 as ASFD §4.1,
betas (0.5, 0.999) as DARTS) on the recipe's loss of one batch of the `heldout` half
(nas/strategies/heldout.py; first-order: no unrolled weight step). The Gumbel temperature
follows a linear or exponential schedule from tau_start to tau_end over the run.

Everything that makes a resumed search exact is in the checkpoint (TrainHooks.state_dict):
Adam's state, the Gumbel sampler's generator, the held-out stream's position (its batch k
depends only on (seed + 1, k)), and the architecture history's length. The history,
RUN/architecture.jsonl, gets one line per architecture step (softmax weights of every
choice, search_spaces.asfd.supernet.architecture); `plot_history` draws it (architecture.png).

Distributed (`processes` > 1: N local processes, DDP, through detectors.distributed.run_local):
the weight step is the trainer's (each rank a shard of the global batch, DDP averages); the
architecture step takes each rank's shard of the held-out global batch through the same DDP
forward, so the alphas' gradient is averaged over the ranks and every rank's Adam takes the
same step; the Gumbel draws come from a generator seeded alike on every rank (one stream,
drawn in the same order); the ranks agree on a non-finite architecture loss (its mean over
the ranks) and rank 0 alone writes the history. The hooks' state is thus the same on every
rank, and rank 0's checkpoint resumes the search exactly with any N.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detectors.config import TrainConfig, schedule_in_iterations
from detectors.data.widerface import load_split
from detectors.distributed import env_world, run_local
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from detectors.train import CHECKPOINT, TrainHooks, TrainingDiverged, TrainResult, _write_text, train
from search_spaces.asfd.supernet import (SupernetConfig, architecture, arch_parameters, build_supernet,
                                derive_from_checkpoint, supernet_identity, weight_parameters)

__all__ = ["DartsSettings", "DartsHooks", "run_search", "plot_history", "HISTORY",
           "DERIVED"]

HISTORY, DERIVED, PLOT = "architecture.jsonl", "derived_spec.yaml", "architecture.png"
SCHEDULES = ("linear", "exponential")


@dataclass(frozen=True)
class DartsSettings:
    arch_lr: float = 0.01
    arch_weight_decay: float = 5e-4
    warmup_fraction: float = 0.4  # ASFD: architecture steps after 20 of 50 epochs
    tau_start: float = 10.0
    tau_end: float = 0.1
    tau_schedule: str = "linear"
    seed: int = 0  # Gumbel sampling and the data split

    def __post_init__(self) -> None:
        if self.tau_schedule not in SCHEDULES:
            raise UserError(f"tau_schedule {self.tau_schedule!r} is not one of "
                            f"{', '.join(SCHEDULES)}")
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise UserError("tau_start and tau_end must be > 0")
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def temperature(self, iteration: int, total: int) -> float:
        p = iteration / max(total - 1, 1)
        if self.tau_schedule == "linear":
            return self.tau_start + (self.tau_end - self.tau_start) * p
        return self.tau_start * (self.tau_end / self.tau_start) ** p


class DartsHooks(TrainHooks):
    """The bilevel search as trainer hooks (module docstring)."""

    distributed = True  # same Gumbel draws on every rank, alpha gradients averaged (module doc)
    dynamic_graph = True  # a hard Gumbel draw runs one input edge per node

    def __init__(self, base: DetectorSpec, supernet: SupernetConfig, settings: DartsSettings,
                 heldout_root: Path, out_dir: Path, total_iterations: int) -> None:
        self.base, self.supernet, self.settings = base, supernet, settings
        self.heldout_root, self.out_dir = Path(heldout_root), Path(out_dir)
        self.total = total_iterations
        self.warmup = int(settings.warmup_fraction * total_iterations)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.arch_steps, self.iteration = 0, 0
        self.model: torch.nn.Module | None = None
        self.adam: torch.optim.Optimizer | None = None
        self._stream = None

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        self.model = build_supernet(self.base, self.supernet)
        self.model.neck.set_generator(self.generator)
        self.adam = torch.optim.Adam(arch_parameters(self.model), lr=self.settings.arch_lr,
                                     betas=(0.5, 0.999),
                                     weight_decay=self.settings.arch_weight_decay)
        return self.model

    def parameters(self, model: torch.nn.Module):
        return weight_parameters(model)

    def before_step(self, iteration: int, model: torch.nn.Module) -> None:
        model.neck.set_temperature(self.settings.temperature(iteration, self.total))

    def _heldout_batch(self, loop) -> dict:
        """This rank's shard of held-out batch `arch_steps` (the whole batch in one process)."""
        if self._stream is None:
            from detectors.batches import SeededBatches
            from detectors.distributed import shard

            held = dataclasses.replace(loop.recipe, seed=loop.recipe.seed + 1, workers=0)
            self._stream = SeededBatches(self.heldout_root, held, shard(held.batch_size, loop.world)
                                         ).iterate(self.arch_steps)
        return next(self._stream)

    def after_step(self, iteration: int, loop) -> dict[str, float]:
        from detectors.distributed import reduce_mean

        self.iteration = iteration + 1
        tau = self.settings.temperature(iteration, self.total)
        if iteration < self.warmup:
            return {"tau": tau}
        batch = self._heldout_batch(loop)
        self.adam.zero_grad(set_to_none=True)
        parts, _ = loop.loss(batch)  # through DDP when distributed: backward averages the grads
        # the global batch's loss (mean over ranks), so every rank takes the same decision
        value = float(reduce_mean(parts["total"].detach(), loop.world))
        self.arch_steps += 1
        # backward even when non-finite: every DDP forward needs its backward on every rank;
        # the weights' gradients are cleared before the next SGD step
        parts["total"].backward()
        if math.isfinite(value):  # a non-finite architecture loss leaves alpha untouched
            self.adam.step()
        if loop.world.main:
            self._append_history(tau, value)
        return {"tau": tau, "arch_loss": value}

    def _append_history(self, tau: float, loss: float) -> None:
        row = {"iteration": self.iteration, "arch_step": self.arch_steps, "tau": tau,
               "arch_loss": loss, **architecture(self.model)}
        with (self.out_dir / HISTORY).open("a") as f:
            f.write(json.dumps(row) + "\n")

    def identity(self) -> dict[str, Any]:
        return {**supernet_identity(self.base, self.supernet),
                "search": dataclasses.asdict(self.settings), "total_iterations": self.total}

    def state_dict(self) -> dict[str, Any]:
        return {"adam": self.adam.state_dict(), "generator": self.generator.get_state(),
                "arch_steps": self.arch_steps, "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.adam.load_state_dict(state["adam"])
        self.generator.set_state(state["generator"])
        self.arch_steps, self.iteration = int(state["arch_steps"]), int(state["iteration"])
        path = self.out_dir / HISTORY
        if path.exists() and env_world().main:  # drop history past the checkpoint: it will be recomputed
            rows = [l for l in path.read_text().splitlines()
                    if l.strip() and json.loads(l)["arch_step"] <= self.arch_steps]
            _write_text(path, "".join(r + "\n" for r in rows))


def _total_iterations(config: TrainConfig, root: Path) -> int:
    images = len(load_split(root, "train").records)
    total, _ = schedule_in_iterations(config.recipe.schedule,
                                      math.ceil(images / config.recipe.batch_size))
    return total


def run_search(config: TrainConfig, data_root: str | Path, out_dir: str | Path,
               supernet: SupernetConfig, settings: DartsSettings, *, resume: bool = False,
               progress: bool = False, num_threads: int | None = None,
               max_iterations: int | None = None, derived: Path | None = None,
               workers: int | None = None, processes: int = 1) -> DetectorSpec:
    """Search, derive and write the derived spec (default RUN/derived_spec.yaml) and the
    history plot; returns the spec. config.spec is the base spec (backbone, head, anchors,
    neck channels and levels). `processes` > 1: the search trains in that many local
    processes (DDP; num_threads each), the split and the derivation stay here."""
    from nas.strategies.heldout import split_train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_root, heldout_root = split_train(data_root, out / "data", settings.seed)
    total = _total_iterations(config, weights_root)
    if not resume and not (out / CHECKPOINT).exists():
        (out / HISTORY).unlink(missing_ok=True)  # a fresh start keeps no earlier history
    options = dict(resume=resume, progress=progress, num_threads=num_threads,
                   max_iterations=max_iterations, workers=workers)
    result = run_local(processes, _search_rank, config, str(weights_root), str(heldout_root),
                       str(out), supernet, settings, total, options)
    if result.status == "diverged":
        raise TrainingDiverged(result)
    spec = derive_from_checkpoint(out / CHECKPOINT, name=f"{config.spec.name}-autofem")
    derived = Path(derived) if derived is not None else out / DERIVED
    derived.parent.mkdir(parents=True, exist_ok=True)
    _write_text(derived, spec.to_yaml())
    if (out / HISTORY).exists():
        plot_history(out / HISTORY, out / PLOT)
    return spec


def _search_rank(config: TrainConfig, weights_root: str, heldout_root: str, out: str,
                 supernet: SupernetConfig, settings: DartsSettings, total: int,
                 options: dict[str, Any]) -> TrainResult | None:
    """One process's share of the search (alone or one rank); rank 0's result, None elsewhere."""
    hooks = DartsHooks(config.spec, supernet, settings, Path(heldout_root), Path(out), total)
    try:
        result = train(config, weights_root, out, hooks=hooks, **options)
    except TrainingDiverged as err:  # every rank agrees on it; rank 0 reports it
        result = err.result
    return result if env_world().main else None


def plot_history(history: Path, png: Path) -> Path:
    """One panel per choice group: weight of each level's / node's finally strongest option
    over the architecture steps (FPN paths' ops, CPM inputs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in Path(history).read_text().splitlines() if l.strip()]
    steps = [r["arch_step"] for r in rows]
    groups = [k for k in rows[0] if k.startswith("fpn.") and k != "fpn.beta"]
    groups += [k for k in rows[0] if k.endswith(".gamma")]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 2.8), squeeze=False)
    for ax, key in zip(axes[0], groups):
        final = rows[-1][key]
        for lv, weights in enumerate(final):
            if key.endswith(".gamma") and len(weights) == 1:
                continue  # node 1 has a single input
            best = weights.index(max(weights))
            label = str(lv + 1 if key.endswith("gamma") else lv)  # node j / level index
            ax.plot(steps, [r[key][lv][best] for r in rows], label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("architecture step")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, title="node" if key.endswith("gamma") else "level",
                  title_fontsize=6)
    axes[0][0].set_ylabel("weight of the final choice")
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(png)
    return png
