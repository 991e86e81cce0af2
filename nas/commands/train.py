"""`facenas train CONFIG [--data ROOT] [--budget smoke|quick|paper] [--out RUN_DIR] [--resume]
[--nproc N [--port P]] [--log-every K] [--workers N] [--set KEY=VALUE ...]`.

`--nproc N` trains on N local processes (one per GPU on CUDA, gloo on CPU) started through
torch's elastic launcher; under `torchrun --nnodes M --nproc_per_node N -m nas.cli train
CONFIG --out RUN_DIR ...` each process started by torchrun runs this command and trains its
share (detectors.distributed). recipe.batch_size is the global batch either way.

Trains a retraining config (spec + recipe) scaled to a budget preset (the global override of
detectors.config, then the config's own `budgets:` section); without --data it uses the
embedded synthetic dataset (the budget section's `synthetic:` variant, else the default set;
generated once into the cache). `--workers N` sets the data-loading processes (docs/data.md).
`--set recipe.schedule.lr=0.01` overrides a key of the scaled config (recorded in
RUN_DIR/config.yaml). Prints the run directory and the final losses; a diverged run
exits 1 with one line naming the iteration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detectors.config import BUDGETS

    parser.add_argument("config", help="retraining config YAML (spec + recipe), e.g. experiments/scrfd_0.5g.yaml")
    parser.add_argument("--data", help="dataset root in the WIDER FACE layout (default: embedded synthetic data)")
    parser.add_argument("--budget", default="quick", help=f"budget preset: {', '.join(BUDGETS)} (default: quick)")
    parser.add_argument("--out", help="run directory (default: runs/<config name>-<budget>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: $FACENAS_THREADS or the CPUs this process may use)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes (default: recipe.workers if the config sets it, "
                             "else one per thread; 0: load in the training process)")
    parser.add_argument("--fp32", action="store_true", help="force fp32 NCHW instead of the device's fastest mode")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--nproc", type=int, default=1,
                        help="local training processes (one per GPU on CUDA; CPU: at most the CPUs "
                             "this process may use); recipe.batch_size is split over them")
    parser.add_argument("--port", type=int, help="rendezvous port of --nproc (default: a free one)")
    parser.add_argument("--log-every", type=int, default=10, dest="log_every",
                        help="iterations between reads of the losses from the device (default 10)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the config, after the budget scaled it (repeatable; "
                             "dotted keys, YAML values), e.g. --set recipe.schedule.lr=0.01")


def resolve_data_root(data: str | None, synthetic: dict[str, Any] | None = None) -> Path:
    """--data, checked, or the embedded synthetic dataset (`synthetic`: arguments of
    detectors.data.synthetic.default_root, e.g. a budget's 320-px variant)."""
    from detectors.errors import UserError

    if data is None:
        from detectors.data.synthetic import default_root

        return Path(default_root(**(synthetic or {})))
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"--data {data}: dataset root not found")
    return root


def recorded_data_root(config_path: str) -> Path | None:
    """The dataset a run trained on (`run.data_root` of a run's config.yaml), if the config
    is a run's and that root still exists; None otherwise. So `facenas test RUN_DIR/config.yaml`
    tests on the val split of the data the run trained on (e.g. a budget's synthetic variant)."""
    import yaml

    try:
        data = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # load_config reports a missing or broken file in its own words
    run = data.get("run") if isinstance(data, dict) else None
    root = run.get("data_root") if isinstance(run, dict) else None
    return Path(root) if isinstance(root, str) and Path(root).is_dir() else None


def run(args: argparse.Namespace) -> int:
    from detectors.config import apply_budget, budget_synthetic, load_config
    from detectors.distributed import under_launcher
    from detectors.errors import UserError
    from detectors.overrides import override_config

    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0 (0: load in the training process), not {args.workers}")
    loaded = load_config(args.config)
    config = override_config(apply_budget(loaded, args.budget), args.overrides)
    if args.resume and not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    if under_launcher() and not args.out:
        raise UserError("under torchrun every process must write the same run: pass --out RUN_DIR")
    out = Path(args.out) if args.out else Path("runs") / (
        f"{Path(args.config).stem}-{args.budget}-{time.strftime('%Y%m%d-%H%M%S')}")
    root = resolve_data_root(args.data, budget_synthetic(loaded, args.budget))
    options = dict(resume=args.resume, device=args.device, num_threads=args.threads,
                   progress=not args.quiet, fp32=args.fp32, log_every=args.log_every,
                   workers=args.workers)
    if args.nproc > 1 and not under_launcher():
        summary = _launch(args, config, root, out, options)
    else:
        if args.nproc < 1:
            raise UserError(f"--nproc must be >= 1, not {args.nproc}")
        summary = worker(config, root, out, options)
        if summary is None:  # a rank other than 0 under torchrun: rank 0 reports
            return 0
    if summary["status"] in ("diverged", "failed"):
        print(f"facenas train: {summary['message']}", file=sys.stderr)
        return 1
    losses = " ".join(f"{k}={v:.4f}" for k, v in summary["losses"].items())
    # a resumed run that was already complete trains nothing: no losses or speed to report
    print("; ".join([summary["message"]] + ([losses, f"{summary['images_per_s']:.1f} images/s",
                                             f"{100 * summary['data_wait_frac']:.0f}% of step time waiting for data"]
                                            if losses else ["nothing left to train"])))
    print(f"run directory: {summary['out_dir']}  (weights: {summary['checkpoint']})")
    return 0


def worker(config, root: Path, out: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """One training process (alone, or one rank of --nproc / torchrun): train, and return
    rank 0's summary as plain data (None on the other ranks)."""
    from detectors.distributed import env_world
    from detectors.train import TrainingDiverged, train

    try:
        result = train(config, root, out, **options)
    except TrainingDiverged as err:
        result = err.result
    if not env_world().main:
        return None
    return {"status": result.status, "message": result.message, "losses": result.losses,
            "images_per_s": result.images_per_s, "data_wait_frac": result.data_wait_frac,
            "out_dir": str(result.out_dir),
            "checkpoint": str(result.checkpoint)}


def _launch(args: argparse.Namespace, config, root: Path, out: Path, options: dict[str, Any]) -> dict:
    """--nproc N: check everything a worker would refuse, then start N processes."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from detectors import distributed
    from detectors.device import select_device
    from detectors.errors import UserError
    from detectors.train import check_run_dir, check_world

    kind = select_device(args.device).type
    slots = distributed.available_slots(kind)
    if args.nproc > slots:
        what = "CUDA devices" if kind == "cuda" else "CPUs this process may use"
        raise UserError(f"--nproc {args.nproc}: only {slots} {what} here")
    check_world(config.recipe, args.nproc)
    check_run_dir(config, out, args.resume)
    if args.port is not None:
        distributed.check_port_free(args.port)
    port = args.port if args.port is not None else distributed.free_port()
    if kind == "cpu" and args.threads is None:  # share the CPUs instead of oversubscribing
        options = {**options, "num_threads": max(1, slots // args.nproc)}
    try:
        results = distributed.launch(args.nproc, port, worker, config, root, out, options)
    except ChildFailedError as err:
        return {"status": "failed", "message": f"training process of {distributed.failure_line(err)}; "
                f"the others were stopped; continue with --resume --out {out}"}
    return results[0]
