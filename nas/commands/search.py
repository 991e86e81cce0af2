"""`facenas search`: a search over one space (nas/space_table.py) on Ray Tune; SCRFD's two-step
computation-redistribution search by default.

    facenas search --space scrfd --gflops 2.5 [--budget smoke|quick|paper] [--num-samples N]
                   [--data ROOT] [--out RUN_DIR] [--cpus-per-trial C] [--workers W] [--gpus-per-trial G]
                   [--nproc-per-trial N] [--max-concurrent K] [--address RAY_ADDRESS] [--seed S] [--steps 1|2|both]
                   [--max-failures F] [--top K] [--scheduler fifo|asha] [--grace G]
                   [--reduction-factor RF] [--keep-checkpoints N|all] [--preset FILE]
                   [--set KEY=VALUE ...] [--no-flops-band]
                   [--prescreen naswot|synflow|grad_norm|zico [--prescreen-keep F]]
    facenas search --resume RUN_DIR      (finishes the same plan after an interruption)
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def _keep_checkpoints(value: str) -> int | None:
    """--keep-checkpoints: a count >= 1, or 'all' (None: Tune keeps every one)."""
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a count >= 1 or 'all'")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", default="scrfd", help="search space (default scrfd)")
    parser.add_argument("--gflops", type=float, default=None,
                        help="target VGA GFLOPs; the nearest regime's preset is used (default "
                             "2.5, or a --preset's own gflops; with --latency-ms alone it only "
                             "picks the regime)")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="latency budget: predicted ms in [L (1 - tolerance), L] on "
                             "--latency-table (alone or with --gflops)")
    parser.add_argument("--latency-table", default=None,
                        help="the device's table from `facenas latency profile`")
    parser.add_argument("--latency-tolerance", type=float, default=None,
                        help="relative width of the latency band below L (default 0.1)")
    parser.add_argument("--latency-runtime", default=None, choices=("torch", "onnxruntime"),
                        help="the runtime the table must have been profiled for")
    parser.add_argument("--latency-device", default=None, choices=("cpu", "cuda"),
                        help="the device the table must have been profiled for")
    parser.add_argument("--no-flops-band", action="store_true",
                        help="sample without a FLOPs band (bfbox: the paper's unconstrained "
                             "candidates, e.g. with --strategy random); --gflops then only names "
                             "the run")
    parser.add_argument("--budget", default="quick",
                        help="smoke | quick | paper: trial count and training scale (default quick)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="specs per step (default: the budget's; paper 320)")
    parser.add_argument("--data", default=None,
                        help="dataset root in the WIDER FACE layout (default: the budget's embedded "
                             "synthetic set; quick: the 320-px proxy set)")
    parser.add_argument("--out", default=None,
                        help="run directory (default runs/<space>-<gflops>g-<timestamp>)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="default 1")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes per trial (default: the preset's recipe.workers "
                             "if set, else one per CPU of the trial; 0: load in the trial's process)")
    parser.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per trial (default: 1 when the cluster has GPUs, else 0; "
                             "0.5 packs two trials on a GPU)")
    parser.add_argument("--nproc-per-trial", type=int, default=None, dest="nproc_per_trial",
                        help="training processes of a single-model phase's trial (BFBox supernet, "
                             "ASFD search; DDP, one GPU each; default: the GPUs of the node that "
                             "runs it, lowered to divide the global batch; 1 without GPUs)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="concurrent trials (default: the trials the nodes hold, node by "
                             "node)")
    parser.add_argument("--address", default=None, help="attach to an existing Ray cluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", default="both", choices=("1", "2", "both"),
                        help="SCRFD1 (backbone), SCRFD2 (whole detector) or both (default)")
    parser.add_argument("--max-failures", type=int, default=1,
                        help="retries of a raising/diverging trial before it is recorded failed")
    parser.add_argument("--top", type=int, default=None, help="specs to export (default: preset's)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="finish an interrupted run (its plan and config are reused)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    parser.add_argument("--scheduler", default="fifo", choices=("fifo", "asha"),
                        help="fifo: train every trial to the end (default); asha: test at rungs "
                             "and stop the weak trials early (Ray Tune's ASHA)")
    parser.add_argument("--grace", type=float, default=None,
                        help="first rung as a fraction of the schedule (asha default 1/rf^2, "
                             "i.e. 1/9: rungs at 1/9, 1/3, 1); with fifo it records rung APs")
    parser.add_argument("--reduction-factor", type=float, default=None,
                        help="ASHA's reduction factor rf >= 2: rungs grace x rf^k, keeping the "
                             "top 1/rf at each (default 3)")
    parser.add_argument("--keep-checkpoints", type=_keep_checkpoints, default=1,
                        metavar="N|all",
                        help="Tune checkpoints kept per trial in RUN_DIR/ray (default 1: the "
                             "latest, all a resume needs); also applies to --resume")
    parser.add_argument("--rung-metric", default=None, choices=("ap", "loss"),
                        help="what ASHA compares at a rung: the hard AP (default) or the "
                             "training loss (better early: AP is ~0 before a short schedule "
                             "has converged)")
    parser.add_argument("--preset", default=None, metavar="FILE",
                        help="your own preset, in the format of experiments/search/*.yaml "
                             "(default: the space's built-in one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a key of the resolved search config (repeatable; dotted "
                             "keys, YAML values), e.g. --set recipe.schedule.total=600")
    parser.add_argument("--prescreen", default=None, metavar="PROXY",
                        help="score 1/F times as many sampled specs with a zero-cost proxy "
                             "(naswot, synflow, grad_norm, zico) and train only the best F of them "
                             "(docs/proxies.md)")
    parser.add_argument("--prescreen-keep", type=float, default=None, metavar="F",
                        help="with --prescreen: the fraction F in (0, 1] of the sampled specs "
                             "trained (default 0.25)")
    from nas.space_table import add_space_arguments

    add_space_arguments(parser)  # each space's own options, in its own group


_COMMON = {"space", "gflops", "budget", "num_samples", "data", "out", "cpus_per_trial", "workers",
           "gpus_per_trial", "nproc_per_trial", "max_concurrent", "address", "seed", "steps", "max_failures", "top",
           "resume", "verbose", "keep_checkpoints", "scheduler", "grace", "reduction_factor", "rung_metric", "latency_ms",
           "latency_table", "latency_tolerance", "latency_runtime", "latency_device",
           "preset", "overrides", "no_flops_band", "prescreen", "prescreen_keep"}


def run(args: argparse.Namespace) -> int:
    from detectors.errors import UserError
    from nas.driver import run_search
    from nas.options import SearchOptions

    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0 (0: load in the trial's process), not {args.workers}")
    if args.nproc_per_trial is not None and args.nproc_per_trial < 1:
        raise UserError(f"--nproc-per-trial must be >= 1, got {args.nproc_per_trial}")
    opts = SearchOptions(
        space=args.space, gflops=args.gflops, preset=args.preset, overrides=list(args.overrides),
        gflops_band=not args.no_flops_band and (args.gflops is not None or args.latency_ms is None),
        latency_ms=args.latency_ms, latency_table=args.latency_table,
        latency_tolerance=args.latency_tolerance, latency_runtime=args.latency_runtime,
        latency_device=args.latency_device, budget=args.budget, num_samples=args.num_samples,
        data=args.data, out=args.out, cpus_per_trial=args.cpus_per_trial, workers=args.workers,
        gpus_per_trial=args.gpus_per_trial, nproc_per_trial=args.nproc_per_trial,
        max_concurrent=args.max_concurrent,
        address=args.address, seed=args.seed, steps=args.steps, max_failures=args.max_failures,
        resume=args.resume, top_k=args.top, verbose=args.verbose, scheduler=args.scheduler,
        grace=args.grace, reduction_factor=args.reduction_factor, rung_metric=args.rung_metric,
        keep_checkpoints=args.keep_checkpoints,
        prescreen=args.prescreen, prescreen_keep=args.prescreen_keep,
        space_options={k: v for k, v in vars(args).items() if k not in _COMMON and k not in ("func", "command")
                       and not k.startswith("_")})
    _, finished = run_search(opts)
    return 0 if finished else 130
