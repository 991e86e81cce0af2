"""`facenas latency`: measured latency tables and predicted latency of specs.

    facenas latency profile --runtime torch|onnxruntime --device cpu|cuda [--threads N]
        [--input 640x480] (--space S [--gflops G ...] [--samples N] | --spec FILE ...)
        [--calibrate N] -o TABLE
    facenas latency SPEC --table TABLE [--measure] [--json]

`profile` measures the grid layers (detectors/latency/table.py) that the given specs, or
samples of a search space, need and fits the whole-model terms on `--calibrate` of them
measured whole. It extends an existing TABLE (same runtime, device, threads and input) and
resumes an interrupted run. The second form prints a spec's predicted latency per component
and, with --measure, the measured one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detectors.errors import UserError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="profile|SPEC",
                        help="`profile` to measure a table, or a spec / retraining config")
    parser.add_argument("--table", help="latency table (JSON) to predict with")
    parser.add_argument("--measure", action="store_true", help="also measure the spec whole")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    g = parser.add_argument_group("profile")
    g.add_argument("-o", "--output", help="table file to write (extended when it exists)")
    g.add_argument("--runtime", default="onnxruntime", choices=("torch", "onnxruntime"))
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    g.add_argument("--input", default="640x480", metavar="WxH", help="input size (default VGA)")
    g.add_argument("--space", help="profile what this search space samples (scrfd, bfbox, asfd)")
    g.add_argument("--gflops", type=float, nargs="+", help="budgets of the space to cover")
    g.add_argument("--budget", default="paper", help="the search budget whose frame to cover "
                   "(bfbox: smoke/quick use a reduced frame)")
    g.add_argument("--samples", type=int, default=100, help="specs sampled per budget and step")
    g.add_argument("--spec", nargs="+", default=[], help="specs (or configs) to cover as well")
    g.add_argument("--calibrate", type=int, default=12,
                   help="whole models measured to fit the whole-model terms, drawn evenly "
                        "over the --gflops regimes (0: no fit)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--passes", type=int, default=2,
                   help="time each new row (and calibration model) this many times, in passes "
                        "spread over the profile, and keep the minimum (default 2)")
    g.add_argument("--quick-timing", action="store_true",
                   help="fewer repetitions (tests and smoke tables; noisier)")


def _timing(args: argparse.Namespace):
    from detectors.latency.measure import Timing

    return Timing(warmup=1, min_reps=3, min_seconds=0.0, max_reps=3) if args.quick_timing else Timing()


def _threads(n: int | None) -> int:
    import os

    if n is not None and n < 1:
        raise UserError(f"--threads must be at least 1, got {n}")
    return n or len(os.sched_getaffinity(0))


def _profile(args: argparse.Namespace) -> int:
    from detectors.latency.measure import runtime_versions
    from detectors.latency.profile import calibrate, fit_warning, needed_rows, profile_layers
    from detectors.latency.table import LatencyTable, channel_block
    from nas.commands.cost import load_spec, parse_input_size
    from nas.latency_specs import calibration_specs, sample_groups, space_specs

    if not args.output:
        raise UserError("latency profile needs -o TABLE (the file to write)")
    if not args.space and not args.spec:
        raise UserError("latency profile needs --space S and/or --spec FILE: what to cover")
    input_hw = parse_input_size(args.input)
    threads = _threads(args.threads)
    specs = [load_spec(Path(p)) for p in args.spec]
    # the fit draws from the space's samples, evenly over the --gflops regimes (a fit on one
    # regime extrapolated badly to others, docs/latency.md section 4); --spec files only when
    # there is no --space (they are the models a user wants predicted, not a sample)
    groups = [specs]
    if args.space:
        specs += space_specs(args.space, args.gflops, args.samples, args.seed, args.budget)
        groups = sample_groups(args.space, args.gflops, args.samples, args.seed, args.budget)
    out = Path(args.output)
    if out.exists():
        table = LatencyTable.load(out)
        want = (args.runtime, args.device, threads, input_hw)
        have = (table.runtime, table.device, table.threads, table.input_hw)
        if want != have:
            raise UserError(f"{out} holds a table for {table.describe}; this profile asks for "
                            f"{args.runtime}/{args.device}, {threads} thread(s), {args.input}: "
                            "write another file")
    else:
        table = LatencyTable(args.runtime, args.device, threads, input_hw,
                             channel_block=channel_block(args.runtime, args.device),
                             versions=runtime_versions(args.runtime))
    if args.passes < 1:
        raise UserError(f"--passes must be at least 1, got {args.passes}")
    table.passes = args.passes
    keys = needed_rows(specs, table)
    print(f"latency profile: {len(specs)} specs need {len(keys)} new layer rows "
          f"({len(table.layers)} in the table) on {table.describe}", file=sys.stderr)
    added = profile_layers(table, keys, out, _timing(args))
    if args.calibrate and (added or not table.fit.models):
        fit = calibrate(table, calibration_specs(groups, args.calibrate), out, _timing(args))
        print(f"fit on {fit.models} models: scale {fit.scale:.3f}, {fit.per_melem:.4f} ms per "
              f"M other elements, {fit.per_mweight:.4f} ms per M weights, {fit.per_mact:.4f} "
              f"ms per M activations, overhead "
              f"{fit.overhead_ms:.3f} ms", file=sys.stderr)
        warning = fit_warning(fit)
        if warning:
            print(warning, file=sys.stderr)
    print(f"wrote {out} ({len(table.layers)} layer rows)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from detectors.cost import cost
    from detectors.latency import latency
    from detectors.latency.measure import measure_spec
    from detectors.latency.table import LatencyTable
    from nas.commands.cost import load_spec

    if not args.table:
        raise UserError("latency SPEC needs --table TABLE (make one with `facenas latency profile`)")
    spec = load_spec(Path(args.target))
    table = LatencyTable.load(args.table)
    pred = latency(spec, table)
    gflops = {k: c.macs / 1e9 for k, c in cost(spec, table.input_hw).components.items()}
    # which components' FLOPs are cheap or dear on this device: ms per GFLOP of each
    per_gflop = {k: (ms / gflops[k] if gflops[k] > 0 else None) for k, ms in pred.components.items()}
    result = {"name": spec.name, "spec_id": spec.id, "table": str(args.table),
              "runtime": table.runtime, "device": table.device, "threads": table.threads,
              "input": {"width": table.input_hw[1], "height": table.input_hw[0]},
              "predicted_ms": pred.total_ms,
              "components_ms": pred.components, "overhead_ms": pred.overhead_ms,
              "components_gflops": gflops, "ms_per_gflop": per_gflop}
    if args.measure:
        result["measured_ms"] = measure_spec(spec, table.input_hw, table.runtime, table.device,
                                             table.threads)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{spec.name} (id {spec.id}) on {table.describe}")
    print(f"  {'':<9}{'ms':>9}{'GFLOPs':>9}{'ms/GFLOP':>10}")
    for name, ms in pred.components.items():
        rate = f"{per_gflop[name]:>10.2f}" if per_gflop[name] is not None else f"{'-':>10}"
        print(f"  {name:<9}{ms:>9.3f}{gflops[name]:>9.3f}{rate}")
    print(f"  {'overhead':<9}{pred.overhead_ms:>9.3f}")
    print(f"predicted {pred.total_ms:.3f} ms"
          + (f", measured {result['measured_ms']:.3f} ms" if args.measure else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    return _profile(args) if args.target == "profile" else _predict(args)
