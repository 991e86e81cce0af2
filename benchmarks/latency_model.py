"""How well does the latency table predict whole detectors on this machine?

    python benchmarks/latency_model.py [--runtime torch onnxruntime] [--threads 2]
        [--input 640x480] [--specs 50] [--calibrate 12] [--out DIR]

Draws `--specs` random specs from the search spaces (SCRFD at 0.5, 2.5 and 10 GF, steps 1
and 2; BFBox quick-frame paths; ASFD D0 and D1), and `--calibrate` others with another seed
for the fit (the evaluated specs never enter it). For each runtime: profiles a table of the
layers all of them need (DIR/<runtime>.json, resumable), fits the whole-model terms on the
calibration specs, then measures every evaluated spec whole and prints predicted vs measured,
the median and 90th-percentile absolute relative error, the same for the raw layer sum
(before the fit), and the rank correlation of GFLOPs and of predicted latency with measured
latency. Goal (issue 15): median absolute error <= 10%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pandas as pd
    from scipy import stats

    from detectors.cost import cost
    from detectors.latency import latency
    from detectors.latency.measure import Timing, measure_spec, runtime_versions
    from detectors.latency.profile import calibrate, needed_rows, profile_layers
    from detectors.latency.table import LatencyTable
    from nas.commands.cost import parse_input_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", nargs="+", default=["onnxruntime", "torch"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input", default="640x480")
    p.add_argument("--specs", type=int, default=50)
    p.add_argument("--calibrate", type=int, default=24)
    p.add_argument("--out", help="directory for the tables (default: a temporary one)")
    args = p.parse_args(argv)

    hw = parse_input_size(args.input)
    out = Path(args.out or tempfile.mkdtemp(prefix="latency_model-"))
    evaluated, held = _specs(args.specs, seed=0), _specs(args.calibrate, seed=100)
    layer_timing = Timing(warmup=2, min_reps=5, min_seconds=0.1)
    summary: dict = {"specs": len(evaluated), "calibration_specs": len(held), "threads": args.threads,
                     "input": args.input, "runtimes": {}}
    for runtime in args.runtime:
        start = time.perf_counter()
        path = out / f"{runtime}.json"
        table = (LatencyTable.load(path) if path.exists() else
                 LatencyTable(runtime, "cpu", args.threads, hw, versions=runtime_versions(runtime)))
        profile_layers(table, needed_rows(evaluated + held, table), path, layer_timing)
        if not table.call_ms:  # a table profiled before call_ms existed
            from detectors.latency.measure import measure_call

            table.call_ms = measure_call(runtime, "cpu", args.threads,
                                         Timing(warmup=5, min_reps=50, min_seconds=0.5, max_reps=2000))
        profiled = time.perf_counter() - start
        fit = calibrate(table, held, path)
        rows = []
        for spec in evaluated:
            pred = latency(spec, table)
            measured = measure_spec(spec, hw, runtime, "cpu", args.threads)
            rows.append({"name": spec.name, "spec_id": spec.id, "gflops": cost(spec, hw).macs / 1e9,
                         "raw_ms": pred.layers_ms, "predicted_ms": pred.total_ms,
                         "measured_ms": measured})
        frame = pd.DataFrame(rows)
        err = (frame["predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"]
        raw_err = (frame["raw_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"]
        frame["abs_err"] = err
        print(f"\n== {runtime}, {args.threads} thread(s), {args.input}: {len(table.layers)} layer rows "
              f"profiled in {profiled:.0f} s; fit scale {fit.scale:.3f}, {fit.per_melem:.4f} ms/Melem, "
              f"overhead {fit.overhead_ms:.2f} ms on {fit.models} held-out models; one call "
              f"{table.call_ms:.3f} ms")
        print(frame.sort_values("measured_ms").round(3).to_string(index=False))
        res = {"median_abs_err": float(err.median()), "p90_abs_err": float(np.quantile(err, 0.9)),
               "raw_median_abs_err": float(raw_err.median()),
               "raw_p90_abs_err": float(np.quantile(raw_err, 0.9)),
               "spearman_gflops_vs_measured": float(stats.spearmanr(frame["gflops"], frame["measured_ms"]).statistic),
               "spearman_predicted_vs_measured": float(stats.spearmanr(frame["predicted_ms"], frame["measured_ms"]).statistic),
               "layer_rows": len(table.layers), "profile_s": round(profiled, 1),
               "total_s": round(time.perf_counter() - start, 1), "table": str(path)}
        summary["runtimes"][runtime] = res
        print(f"{runtime}: median |error| {res['median_abs_err']:.1%}, p90 {res['p90_abs_err']:.1%} "
              f"(raw layer sum: {res['raw_median_abs_err']:.1%}, {res['raw_p90_abs_err']:.1%}); "
              f"Spearman GFLOPs {res['spearman_gflops_vs_measured']:.3f}, "
              f"predicted {res['spearman_predicted_vs_measured']:.3f}")
        frame.to_csv(out / f"{runtime}_specs.csv", index=False)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
