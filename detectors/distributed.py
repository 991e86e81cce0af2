"""The distributed plumbing of the one trainer (detectors/train.py): who am I, talk to the
others, take my share of the batch, launch N local processes.

    world = init(device)        # reads torchrun's / the elastic agent's RANK, WORLD_SIZE, ...
    lo, hi = shard(batch_size, world)
    mean = reduce_mean(t, world)
    teardown(world)

A process started without RANK / WORLD_SIZE is a world of one, and every helper here is then
the identity, so single-process training runs the same code with no process group. The
backend is nccl on CUDA and gloo on CPU. `launch(N, port, fn, *args)` starts N processes on
this machine through torch's elastic launcher (the API torchrun uses), so `facenas train
--nproc N` and `torchrun --nproc_per_node N -m nas.cli train ...` run the same worker code.

torch.nn.SyncBatchNorm refuses CPU tensors; `convert_sync_bn` uses it on CUDA and
`GlooSyncBatchNorm` (global mean, then variance, from differentiable all-reduces of per-channel
sums) on CPU, so the CPU tests check the same arithmetic the CUDA path runs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from detectors.errors import UserError

__all__ = ["World", "init", "teardown", "shard", "reduce_mean", "reduce_max", "convert_sync_bn",
           "GlooSyncBatchNorm", "launch", "check_port_free", "free_port", "available_slots",
           "RENDEZVOUS_TIMEOUT_S", "under_launcher", "env_world", "run_local", "RanksFailed",
           "failure_line"]

# How long a collective waits for a missing rank before it raises (gloo and nccl): a rank that
# died is noticed by the elastic agent within its monitor interval (0.1 s here) and the others
# are stopped; this timeout is the backstop for a rank that hangs without dying.
RENDEZVOUS_TIMEOUT_S = 120


@dataclass(frozen=True)
class World:
    """This process's place: rank among size processes, local_rank on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def under_launcher() -> bool:
    """True in a process started by torchrun / the elastic agent (it sets these variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def env_world() -> World:
    if not under_launcher():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def init(device_type: str) -> World:
    """Join the process group the launcher set up (no-op for a world of one). device_type
    'cuda' -> nccl, otherwise gloo."""
    world = env_world()
    if world.active and not dist.is_initialized():
        if device_type == "cuda":  # NCCL binds each process to its GPU: choose it first
            torch.cuda.set_device(world.local_rank)
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    return world


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch_size: int, world: World) -> tuple[int, int]:
    """Positions [lo, hi) of the global batch that this rank trains on (disjoint, in rank
    order, so the union over ranks is the global batch in its seeded order)."""
    per = batch_size // world.size
    return world.rank * per, (world.rank + 1) * per


def reduce_mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Mean over ranks (mmdet's reduce_mean); the tensor itself in a world of one. No host
    sync: the collective is enqueued on the tensor's device."""
    if not world.active:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world.size


def reduce_max(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Maximum over ranks (e.g. a 'this step was not finite' flag every rank must agree on)."""
    if not world.active:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch, for CPU
    process groups (torch.nn.SyncBatchNorm accepts only accelerator tensors).

    Per-channel sums and the count, then the squared deviations from the global mean, are
    summed over ranks by an all-reduce whose backward sums the gradients over ranks: the
    gradient is that of BatchNorm over the concatenated batch. Running statistics use the
    unbiased global variance, as BatchNorm does. Outside training, or alone, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        c = xf.shape[1]
        # two passes (mean, then squared deviations) as BatchNorm computes them: E[x^2] - mean^2
        # loses digits that 20 iterations of training amplify past 1e-4
        count = torch.full((1,), xf.numel() / c, dtype=xf.dtype, device=xf.device)
        first = _SumOverRanks.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = first[c]
        mean = first[:c] / n
        centred = xf - mean.view(1, c, 1, 1)
        var = _SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_((var * n / (n - 1).clamp(min=1)).detach(), alpha=m)
        y = centred * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the gradient: every rank's loss
    depends on every rank's share of the statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _to_gloo_sync_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        out.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        out.add_module(name, _to_gloo_sync_bn(child))
    return out


def convert_sync_bn(model: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm of `model` synchronised over the process group (GroupNorm untouched):
    torch.nn.SyncBatchNorm on CUDA, GlooSyncBatchNorm on CPU. Same state_dict keys, so
    checkpoints load either way."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_gloo_sync_bn(model)


def available_slots(device_type: str) -> int:
    """How many local processes --nproc may start: the CUDA devices on CUDA, the CPUs this
    process may run on (its affinity mask) on CPU."""
    if device_type == "cuda":
        return torch.cuda.device_count()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int, flag: str = "--port") -> None:
    """UserError when the rendezvous port cannot be bound (another job holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise UserError(f"{flag} {port}: the rendezvous port is already in use ({err.strerror}); "
                            "choose another or leave it out to take a free one") from None


def launch(nproc: int, port: int, fn: Callable[..., Any], *args: Any,
           start_method: str = "spawn") -> dict[int, Any]:
    """Run fn(*args) in `nproc` processes on this machine through torch's elastic launcher
    (torch.distributed.launcher.api.elastic_launch, what torchrun runs), rendezvous on
    127.0.0.1:port; returns {rank: return value}. A worker that dies (e.g. SIGKILL) makes the
    agent stop the others and raise torch.distributed.elastic.multiprocessing.errors.
    ChildFailedError: no restarts, no hang. start_method 'spawn' (fresh interpreters: safe
    after CUDA or OpenMP started here) or 'fork' (quicker; tests)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"facenas-{port}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0,
                          monitor_interval=0.1, start_method=start_method)
    return elastic_launch(config, fn)(*args)


class RanksFailed(RuntimeError):
    """A process of `run_local` died or raised; the message names the rank and the cause."""


def failure_line(err: Any) -> str:
    """'rank R failed (signal SIGKILL | exit code C)' for the elastic agent's ChildFailedError:
    the killed rank first (the others then fail on the collective it broke, sometimes first)."""
    rank, failure = min(err.failures.items(), key=lambda kv: (kv[1].exitcode >= 0, kv[0]))
    cause = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return f"rank {rank} failed ({cause})"


@contextlib.contextmanager
def _main_not_reimported():
    """Spawned ranks re-run this process's __main__ module first (multiprocessing's rule),
    e.g. a Ray worker's entry script, importing Ray in every rank for nothing; `fn` is
    always a module-level function of ours, so hide __main__'s file and spec meanwhile."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    if "__file__" in saved:
        del main.__file__
    main.__spec__ = None  # multiprocessing reads it unguarded
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _rank_entry(report_dir: str, fn: Callable[..., Any], *args: Any) -> Any:
    """A run_local rank: fn(*args); a UserError or a CUDA out-of-memory error is written to
    `report_dir`/rank<R>.json (kind and one line) before the rank exits with it, so the
    parent can raise the same kind of error with the same line (the driver retries an
    out-of-memory trial; a bad-input line stays one line)."""
    import json

    import torch

    try:
        return fn(*args)
    except (UserError, torch.cuda.OutOfMemoryError) as err:
        kind = "oom" if isinstance(err, torch.cuda.OutOfMemoryError) else "user"
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        rank = os.environ.get("RANK", "0")
        (Path(report_dir) / f"rank{rank}.json").write_text(json.dumps({"kind": kind, "line": line}))
        raise


def _reported(report_dir: Path, nproc: int) -> Exception | None:
    """The error a rank wrote (_rank_entry), as the parent's exception; an out-of-memory
    first (what the others then failed on is noise), else the lowest rank's."""
    import json

    import torch

    found = []
    for path in sorted(report_dir.glob("rank*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    for item in sorted(found, key=lambda d: d.get("kind") != "oom"):
        prefix = f"{nproc}-process training: "
        if item.get("kind") == "oom":
            return torch.cuda.OutOfMemoryError(prefix + "CUDA out of memory: " + item.get("line", ""))
        return UserError(item.get("line", "a rank failed"))
    return None


def run_local(nproc: int, fn: Callable[..., Any], *args: Any, start_method: str = "spawn") -> Any:
    """fn(*args) as one job of `nproc` local processes (launch, on a free port), returning
    rank 0's value; with nproc 1, fn(*args) in this process (no process group). What a search
    trial runs for a single-model phase on N GPUs (or N x C/N CPUs): the same worker code
    `facenas train --nproc` starts. A rank's UserError is raised here with its own line, and a
    rank's CUDA out-of-memory error as torch.cuda.OutOfMemoryError (so a trial's out-of-memory
    retry sees it); a process that dies or raises otherwise stops the others and raises
    RanksFailed in one line (the workers' tracebacks are on their stderr)."""
    if nproc < 1:
        raise UserError(f"processes must be >= 1, not {nproc}")
    if nproc == 1:
        return fn(*args)
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    with tempfile.TemporaryDirectory(prefix="facenas-ranks-") as report_dir:
        try:
            with _main_not_reimported():
                return launch(nproc, free_port(), _rank_entry, report_dir, fn, *args,
                              start_method=start_method)[0]
        except ChildFailedError as err:
            reported = _reported(Path(report_dir), nproc)
            if reported is not None:
                raise reported from None
            raise RanksFailed(f"{nproc}-process training: {failure_line(err)}; the others were "
                              "stopped") from None
