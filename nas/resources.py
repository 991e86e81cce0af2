"""What one search trial asks Ray for, from the alive nodes' sizes (plain data, no Ray here).

Ray schedules a trial on ONE node, so every request is checked against single nodes, never
against the cluster's sum:

- a phase of many trials (one spec each): `--cpus-per-trial` CPUs and a GPU share per trial;
  the share is `--gpus-per-trial` when given, else one whole GPU when any node has GPUs (never
  a fraction derived from the CPU count: at batch 32 and 640 px a 34 GF trial needs about
  30 GB, so trials packed by CPU count run out of memory); concurrent trials = the sum over
  nodes of the trials each node holds (or `--max-concurrent`);
- a whole-node phase (one model: BFBox's supernet, ASFD's search): the CPUs of the largest
  alive node (among those with a GPU when the trial uses one), capped by what the user allowed
  (`--cpus-per-trial` x `--max-concurrent`, when that is given), and `processes` GPUs: the
  trial trains its one model in that many local processes (DDP), one GPU each
  (`--nproc-per-trial`; default: the GPUs of that node, lowered to the largest count that
  divides the phase's global batch; 1 without GPUs); each process runs floor(CPUs /
  processes) torch threads; as many run at once as there are nodes that hold one.

A request no node can hold is a UserError naming the flag and the largest node, before
anything is written or trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from detectors.errors import UserError

__all__ = ["Node", "TrialResources", "alive_nodes", "trial_resources", "slots", "unschedulable"]

_EPS = 1e-9  # resource ratios are floored; 0.1 * 3 must count as 0.3


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its total CPUs and GPUs, and a name for messages."""

    cpus: float
    gpus: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class TrialResources:
    """One trial's request, how many run at once, its training processes and the torch
    threads of each."""

    cpus: float
    gpus: float
    concurrent: int
    threads: int
    processes: int = 1

    def request(self) -> dict[str, float]:
        """The form `tune.with_resources` takes."""
        return {"cpu": self.cpus, "gpu": self.gpus}


def alive_nodes(ray_nodes: Iterable[dict[str, Any]]) -> list[Node]:
    """Node sizes from `ray.nodes()` (its plain dicts), alive ones only."""
    out = []
    for n in ray_nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        host = n.get("NodeManagerHostname") or "?"
        name = f"{host} ({n.get('NodeManagerAddress', '?')}, node {str(n.get('NodeID', ''))[:8]})"
        out.append(Node(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), name))
    return out


def slots(node: Node, cpus: float, gpus: float) -> int:
    """How many trials of (cpus, gpus) one node holds at once."""
    n = math.floor(node.cpus / cpus + _EPS) if cpus > 0 else math.inf
    if gpus > 0:
        n = min(n, math.floor(node.gpus / gpus + _EPS))
    return int(n) if n != math.inf else 0


def _largest(nodes: list[Node], key) -> Node:
    return max(nodes, key=key)


def _check_flags(nodes: list[Node], cpus_per_trial: float, gpus_per_trial: float | None,
                 where: str) -> None:
    if not nodes:
        raise UserError(f"{where} has no alive Ray node")
    if cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be positive, got {cpus_per_trial:g}")
    big = _largest(nodes, key=lambda n: n.cpus)
    if cpus_per_trial > big.cpus + _EPS:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g}: no Ray node has that many CPUs "
                        f"(largest: {big.cpus:g} on {big.name}); a trial runs on one node")
    if gpus_per_trial is None or gpus_per_trial == 0:
        return
    if gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be 0 or more, got {gpus_per_trial:g}")
    most = _largest(nodes, key=lambda n: n.gpus)
    if most.gpus == 0:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}: {where} has no GPUs (Ray sees "
                        "none); leave it out to train on CPUs")
    if gpus_per_trial > most.gpus + _EPS:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}: above what any Ray node has "
                        f"(most: {most.gpus:g} on {most.name}); a trial runs on one node")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}: above 1 it must be a whole "
                        "number (Ray shares single GPUs only)")


def trial_resources(nodes: list[Node], cpus_per_trial: float, gpus_per_trial: float | None,
                    max_concurrent: int | None, whole_node: bool = False,
                    where: str = "this machine", nproc: int | None = None,
                    batch_parts: int | None = None) -> TrialResources:
    """The request of one trial of a phase (see the module docstring); `where` names the
    cluster in messages. `nproc` (--nproc-per-trial; None: the default) and `batch_parts`
    (the global batch over recipe.grad_accumulation: what the processes must divide) apply
    to whole-node phases. Raises UserError for a request no single node can hold."""
    _check_flags(nodes, cpus_per_trial, gpus_per_trial, where)
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc-per-trial must be >= 1, got {nproc}")
    has_gpus = any(n.gpus > 0 for n in nodes)
    if whole_node:
        use_gpu = has_gpus if gpus_per_trial is None else gpus_per_trial > 0
        pool = [n for n in nodes if n.gpus > 0] if use_gpu else nodes
        node = _largest(pool, key=lambda n: n.cpus)
        cpus = node.cpus
        if max_concurrent:  # the user capped the CPUs a phase may take
            cpus = min(cpus, cpus_per_trial * max_concurrent)
        processes = _processes(node, use_gpu, cpus, nproc, batch_parts, where)
        gpus = float(processes) if use_gpu else 0.0
        fit = sum(1 for n in nodes if slots(n, cpus, gpus) >= 1)
        concurrent = min(fit, max_concurrent) if max_concurrent else fit
        return TrialResources(cpus, gpus, max(1, concurrent), max(1, math.floor(cpus / processes + _EPS)),
                              processes)
    gpus = float(gpus_per_trial) if gpus_per_trial is not None else (1.0 if has_gpus else 0.0)
    fit = sum(slots(n, cpus_per_trial, gpus) for n in nodes)
    if fit == 0:  # the CPUs fit one node, the GPUs another, both none
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g} with {gpus:g} GPU per trial: no "
                        f"Ray node has both (nodes: {_sizes(nodes)})")
    concurrent = max_concurrent or fit
    return TrialResources(float(cpus_per_trial), gpus, int(concurrent),
                          max(1, math.ceil(cpus_per_trial)))


def _processes(node: Node, use_gpu: bool, cpus: float, nproc: int | None,
               batch_parts: int | None, where: str) -> int:
    """A whole-node trial's training processes: --nproc-per-trial, checked against the node
    (one GPU each; on CPUs at most one per CPU the trial holds); by default the node's GPUs
    (1 without), lowered to the largest count that divides the global batch."""
    if nproc is None:
        if not use_gpu:
            return 1
        most = max(1, int(node.gpus + _EPS))
        return max(d for d in range(1, most + 1) if not batch_parts or batch_parts % d == 0)
    if use_gpu and nproc > node.gpus + _EPS:
        raise UserError(f"--nproc-per-trial {nproc}: above the GPUs of any Ray node that could "
                        f"hold the phase (most: {node.gpus:g} on {node.name}); a single-model "
                        "phase runs on one node, one GPU per process")
    if not use_gpu and nproc > cpus + _EPS:
        raise UserError(f"--nproc-per-trial {nproc}: above the {cpus:g} CPUs a single-model trial "
                        f"holds on {where} (largest node: {node.name}); at most one process per CPU")
    if batch_parts and batch_parts % nproc:
        raise UserError(f"--nproc-per-trial {nproc}: the phase's global batch (recipe.batch_size / "
                        f"grad_accumulation = {batch_parts}) does not divide into {nproc} processes")
    return nproc


def _sizes(nodes: list[Node]) -> str:
    return ", ".join(f"{n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)


def unschedulable(cpus: float, gpus: float, nodes: list[Node]) -> str | None:
    """Why a trial of (cpus, gpus) can never start on these nodes (None when one node could
    hold it, even if it is busy now)."""
    if any(slots(n, cpus, gpus) >= 1 for n in nodes):
        return None
    return (f"no alive Ray node has {cpus:g} CPU and {gpus:g} GPU (nodes: "
            f"{_sizes(nodes) or 'none'})")
