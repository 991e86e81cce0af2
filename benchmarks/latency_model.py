"""How well does the latency table predict whole detectors on this machine?

    python benchmarks/latency_model.py [--runtime torch onnxruntime] [--threads 2]
        [--input 640x480] [--specs 50] [--calibrate 24] [--rounds 2] [--no-v1] [--out DIR]
        [--passes 2] [--seed 0] [--reuse-measured]

Draws `--specs` random specs from the search spaces (SCRFD at 0.5, 2.5 and 10 GF, steps 1
and 2; BFBox quick-frame paths; ASFD D0 and D1), and `--calibrate` others with another seed
for the fit (the evaluated specs never enter it). For each runtime, in a process of its own
(torch measured slower in a process that had run onnxruntime): profiles a table of the
layers all of them need (DIR/<runtime>.json, resumable) and, for onnxruntime, a second one
with rows timed as table format 1 did (a fresh output per call: DIR/onnxruntime_v1rows.json,
the old model, unless --no-v1; torch rows did not change), row by row in turn so that both
tables see the same load, in `--passes` passes over all rows (a row is the minimum of its
passes, as `facenas latency profile` makes them). Then measures every spec whole in
`--rounds` interleaved rounds (each round: batch-1 median; a spec's latency is the median of
its rounds, so a stall of the shared machine does not decide it), fits each table's
whole-model terms on the calibration specs (whole-model latencies are saved in
DIR/<runtime>_measured.json; --reuse-measured refits on them without measuring), and prints
per model the median and
90th-percentile absolute relative error, the same for the raw layer sum (before the fit),
and the rank correlation of GFLOPs and of predicted latency with measured latency.
Goal (issue 15): median absolute error <= 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectors.latency.measure import Timing  # noqa: E402


def _specs(num: int, seed: int):
    """`num` specs, taken in turn from SCRFD 0.5/2.5/10 GF, BFBox quick paths and ASFD D0/D1."""
    from detectors.spec import DetectorSpec
    from nas.latency_specs import space_specs

    per = max(1, -(-num // 8))  # per budget and step: 3 budgets x 2 steps + bfbox 2 per
    groups = [space_specs("scrfd", [g], per, seed=seed)[4:] for g in (0.5, 2.5, 10.0)]  # no corners
    groups.append(space_specs("bfbox", None, 2 * per, seed=seed, budget="quick"))
    groups.append([DetectorSpec.from_yaml(REPO / "experiments" / "models" / f"asfd_d{d}.yaml")
                   for d in (0, 1)])
    specs = []
    while len(specs) < num and any(groups):  # round robin: every family in any prefix
        for g in groups:
            if g and len(specs) < num:
                specs.append(g.pop(0))
    return specs


def _tables(paths: dict[str, tuple[Path, bool]], runtime: str, threads: int, hw, specs, timing,
            passes: int):
    """The tables {key: (path, legacy rows)}, profiled row by row in turn (each row once per
    table, back to back), so that the machine's load drifts alike for all of them, in
    `passes` passes over all rows (a row is the minimum of its passes, as `facenas latency
    profile` makes them)."""
    from detectors.latency.measure import measure_call, measure_layer, runtime_versions
    from detectors.latency.profile import needed_rows
    from detectors.latency.table import LatencyTable
    from detectors.latency.trace import Layer

    tables = {k: (LatencyTable.load(path) if path.exists() else
                  LatencyTable(runtime, "cpu", threads, hw, versions=runtime_versions(runtime),
                               passes=passes))
              for k, (path, _) in paths.items()}
    call = Timing(warmup=5, min_reps=50, min_seconds=0.5, max_reps=2000)
    for table in tables.values():
        table.passes = passes
    keys = sorted({k for t in tables.values() for k in needed_rows(specs, t)})
    todo = [(p, key) for p in range(passes) for key in keys]
    last = time.monotonic()
    for i, (p, key) in enumerate(todo):
        for k, table in tables.items():
            if not table.call_ms:
                table.call_ms = measure_call(runtime, "cpu", threads, call, paths[k][1])
            if table.passes_done(key) <= p:
                table.add_sample(key, measure_layer(Layer.from_key(key), runtime, "cpu", threads,
                                                   timing, paths[k][1]))
        if time.monotonic() - last > 30 or i == len(todo) - 1:
            for k, table in tables.items():
                table.save(paths[k][0])
            print(f"latency rows {i + 1}/{len(todo)} (pass {p + 1} of {passes})",
                  file=sys.stderr, flush=True)
            last = time.monotonic()
    return tables


def _measure(specs, hw, runtime: str, threads: int, rounds: int) -> list[float]:
    """Each spec's latency: the median of `rounds` interleaved rounds of measure_spec."""
    from detectors.latency.measure import measure_spec

    per = [[] for _ in specs]
    for _ in range(rounds):
        for i, spec in enumerate(specs):
            per[i].append(measure_spec(spec, hw, runtime, "cpu", threads))
    return [statistics.median(p) for p in per]


def _fit(table, held, measured, path: Path):
    from detectors.latency.profile import calibration_row, fit_terms

    rows = [calibration_row(s, table, m) for s, m in zip(held, measured)]
    table.calibration, table.fit = rows, fit_terms(rows)
    table.save(path)
    return table.fit


def _report(label: str, table, evaluated, measured, hw) -> dict:
    import numpy as np
    from scipy import stats

    from detectors.cost import cost
    from detectors.latency import latency

    preds = [latency(s, table) for s in evaluated]
    pred = np.array([p.total_ms for p in preds])
    raw = np.array([p.layers_ms for p in preds])
    meas = np.array(measured)
    gflops = np.array([cost(s, hw).macs / 1e9 for s in evaluated])
    err, raw_err = np.abs(pred - meas) / meas, np.abs(raw - meas) / meas
    fit = table.fit
    res = {"median_abs_err": float(np.median(err)), "p90_abs_err": float(np.quantile(err, 0.9)),
           "raw_median_abs_err": float(np.median(raw_err)),
           "raw_p90_abs_err": float(np.quantile(raw_err, 0.9)),
           "spearman_gflops_vs_measured": float(stats.spearmanr(gflops, meas).statistic),
           "spearman_predicted_vs_measured": float(stats.spearmanr(pred, meas).statistic),
           "fit": {"scale": fit.scale, "per_melem": fit.per_melem, "per_mweight": fit.per_mweight,
                   "overhead_ms": fit.overhead_ms},
           "call_ms": table.call_ms, "layer_rows": len(table.layers)}
    print(f"{label}: median |error| {res['median_abs_err']:.1%}, p90 {res['p90_abs_err']:.1%} "
          f"(raw layer sum: {res['raw_median_abs_err']:.1%}, {res['raw_p90_abs_err']:.1%}); "
          f"Spearman GFLOPs {res['spearman_gflops_vs_measured']:.3f}, predicted "
          f"{res['spearman_predicted_vs_measured']:.3f}; fit scale {fit.scale:.3f}, "
          f"{fit.per_melem:.4f} ms/Melem, {fit.per_mweight:.4f} ms/Mweight, overhead "
          f"{fit.overhead_ms:.2f} ms; one call "
          f"{table.call_ms:.3f} ms")
    return res


def _each_in_its_own_process(argv: list[str], args, out: Path) -> int:
    """Run each runtime in a fresh process: torch models measured in the process that had just
    run the onnxruntime half measured 30-80% slower than in a fresh one (here, 2026-12-06:
    torch's median error 14% after onnxruntime, 7-8% alone), which no table row shares."""
    import subprocess

    summary: dict = {"runtimes": {}}
    for runtime in args.runtime:  # argparse keeps the last --runtime and --out given
        done = subprocess.run([sys.executable, __file__, *argv, "--runtime", runtime, "--out",
                               str(out)], stdout=subprocess.PIPE, text=True)
        print(done.stdout, end="", flush=True)
        if done.returncode != 0:
            return done.returncode
        one = json.loads(done.stdout.strip().splitlines()[-1])
        summary = {**one, "runtimes": {**summary["runtimes"], **one["runtimes"]}}
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from detectors.cost import cost
    from detectors.latency import latency
    from nas.commands.cost import parse_input_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", nargs="+", default=["onnxruntime", "torch"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input", default="640x480")
    p.add_argument("--specs", type=int, default=50)
    p.add_argument("--calibrate", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--passes", type=int, default=2,
                   help="row timings per table row, in passes over all rows (minimum kept)")
    p.add_argument("--seed", type=int, default=0,
                   help="draws the evaluated specs (the calibration specs use seed + 100)")
    p.add_argument("--no-v1", action="store_true", help="skip the format-1 rows (old model)")
    p.add_argument("--out", help="directory for the tables (default: a temporary one)")
    p.add_argument("--reuse-measured", action="store_true",
                   help="refit and report on the whole-model latencies a run saved in --out "
                        "(<runtime>_measured.json) instead of measuring again")
    args = p.parse_args(argv)

    hw = parse_input_size(args.input)
    out = Path(args.out or tempfile.mkdtemp(prefix="latency_model-"))
    out.mkdir(parents=True, exist_ok=True)
    if len(args.runtime) > 1:
        return _each_in_its_own_process(argv if argv is not None else sys.argv[1:], args, out)
    evaluated, held = _specs(args.specs, seed=args.seed), _specs(args.calibrate, seed=args.seed + 100)
    layer_timing = Timing(warmup=2, min_reps=5, min_seconds=0.1)
    summary: dict = {"specs": len(evaluated), "calibration_specs": len(held), "passes": args.passes,
                     "threads": args.threads,
                     "input": args.input, "rounds": args.rounds, "seed": args.seed,
                     "runtimes": {}}
    for runtime in args.runtime:
        start = time.perf_counter()
        tables = {"new": (out / f"{runtime}.json", False)}
        if runtime == "onnxruntime" and not args.no_v1:
            tables["v1 rows"] = (out / f"{runtime}_v1rows.json", True)
        built = _tables(tables, runtime, args.threads, hw, evaluated + held, layer_timing,
                        args.passes)
        profiled = time.perf_counter() - start
        saved = out / f"{runtime}_measured.json"  # [spec id, measured ms] in order
        reused = args.reuse_measured and saved.exists()
        if reused:
            known = json.loads(saved.read_text())
            if [i for i, _ in known] != [s.id for s in evaluated + held]:
                raise SystemExit(f"{saved} holds other specs than --specs/--calibrate/--seed draw")
            measured = [ms for _, ms in known]
            print(f"{runtime}: reusing the whole-model measurements in {saved}", file=sys.stderr)
        else:
            measured = _measure(evaluated + held, hw, runtime, args.threads, args.rounds)
            saved.write_text(json.dumps([[s.id, m] for s, m in zip(evaluated + held, measured)]))
        m_eval, m_held = measured[:len(evaluated)], measured[len(evaluated):]
        rounds = "measurements reused" if reused else f"{args.rounds} round(s) each"
        print(f"\n== {runtime}, {args.threads} thread(s), {args.input}: tables profiled in "
              f"{profiled:.0f} s; {len(evaluated)} specs evaluated (seed {args.seed}), fit on "
              f"{len(held)} others, {rounds}")
        res = {}
        for key, table in built.items():
            _fit(table, held, m_held, tables[key][0])
            res[key] = _report(f"{runtime} [{key}]", table, evaluated, m_eval, hw)
        frame = pd.DataFrame([{"name": s.name, "spec_id": s.id, "gflops": cost(s, hw).macs / 1e9,
                               "measured_ms": m,
                               **{f"predicted_ms[{k}]": latency(s, t).total_ms
                                  for k, t in built.items()}}
                              for s, m in zip(evaluated, m_eval)])
        print(frame.sort_values("measured_ms").round(3).to_string(index=False))
        frame.to_csv(out / f"{runtime}_specs.csv", index=False)
        res["total_s"] = round(time.perf_counter() - start, 1)
        summary["runtimes"][runtime] = res
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
