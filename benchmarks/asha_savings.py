"""What does ASHA save, and what does it lose, against training every trial to the end?

    python benchmarks/asha_savings.py [--gflops 2.5] [--budget quick] [--num-samples 12]
        [--grace 0.111] [--reduction-factor 3] [--rung-metric ap|loss] [--data ROOT] [--out DIR]
        [--reuse-fifo DIR]

Runs the same step-1 plan (same seed, so the same sampled specs) twice through `facenas
search`'s own driver with real trials: `--scheduler fifo` and `--scheduler asha`. Prints total
trial-seconds of each (wall time summed over trials; stopped trials count until their last
rung), their ratio, the top-5 recall of asha's survivors against fifo's final top 5 (how many
of the 5 best models asha kept to the end), and Kendall tau over the survivors between their
fifo and asha APs (same recipe: a check that early-stopped runs do not disturb survivors).
`--reuse-fifo DIR` reads the fifo run of an earlier call (DIR/fifo; same options) instead of
training it again: fifo trials are deterministic, so only the asha side needs rerunning when
trying another grace, reduction factor or rung metric.
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


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from scipy import stats

    from nas.driver import SearchOptions, run_search

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gflops", type=float, default=2.5)
    p.add_argument("--budget", default="quick")
    p.add_argument("--num-samples", type=int, default=12)
    p.add_argument("--grace", type=float, default=1 / 9)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--data", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rung-metric", default="ap", choices=("ap", "loss"))
    p.add_argument("--out", help="directory for the two runs (default: a temporary one)")
    p.add_argument("--reuse-fifo", help="an earlier --out whose fifo run to read")
    args = p.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="asha_savings-"))
    tables, walls = {}, {}
    for scheduler in ("fifo", "asha"):
        if scheduler == "fifo" and args.reuse_fifo:
            tables["fifo"] = pd.read_parquet(Path(args.reuse_fifo) / "fifo" / "trials.parquet"
                                             ).set_index("spec_id")
            walls["fifo"] = float("nan")
            continue
        start = time.perf_counter()
        opts = SearchOptions(gflops=args.gflops, budget=args.budget, num_samples=args.num_samples,
                             data=args.data, out=str(out / scheduler), seed=args.seed, steps="1",
                             scheduler=scheduler, max_failures=0,
                             grace=args.grace if scheduler == "asha" else None,
                             reduction_factor=args.reduction_factor,
                             rung_metric=args.rung_metric if scheduler == "asha" else None)
        run_search(opts, after=lambda store, search: None)
        walls[scheduler] = time.perf_counter() - start
        tables[scheduler] = pd.read_parquet(out / scheduler / "trials.parquet").set_index("spec_id")
    fifo, asha = tables["fifo"], tables["asha"]
    survivors = asha[asha["status"] == "ok"].index
    fifo_top = set(fifo[fifo["status"] == "ok"]["ap_hard"].nlargest(args.top).index)
    recall = len(fifo_top & set(survivors)) / max(1, len(fifo_top))
    both = fifo.loc[survivors, "ap_hard"], asha.loc[survivors, "ap_hard"]
    tau = stats.kendalltau(*both).statistic if len(survivors) > 1 else float("nan")
    secs = {k: float(t["wall_time_s"].sum()) for k, t in tables.items()}
    # Training done, in schedules: load-independent (a stopped trial trained to its last rung).
    # Seconds also pay each rung's test on the val split, which the iterations do not count.
    fid = {k: float(t["fidelity"].fillna(1.0).sum() if "fidelity" in t else len(t))
           for k, t in tables.items()}
    print(pd.DataFrame({"fifo_ap": fifo["ap_hard"], "asha_ap": asha["ap_hard"],
                        "asha_status": asha["status"], "asha_fidelity": asha.get("fidelity"),
                        "fifo_s": fifo["wall_time_s"], "asha_s": asha["wall_time_s"]})
          .sort_values("fifo_ap", ascending=False).round(4).to_string())
    summary = {"budget": args.budget, "specs": args.num_samples, "grace": args.grace,
               "reduction_factor": args.reduction_factor, "rung_metric": args.rung_metric,
               "trial_s_fifo": round(secs["fifo"], 1),
               "trial_s_asha": round(secs["asha"], 1),
               "ratio": round(secs["fifo"] / max(secs["asha"], 1e-9), 3),
               "schedules_fifo": round(fid["fifo"], 3), "schedules_asha": round(fid["asha"], 3),
               "ratio_iterations": round(fid["fifo"] / max(fid["asha"], 1e-9), 3),
               "survivors": len(survivors), f"top{args.top}_recall": recall,
               "kendall_tau_survivors": float(tau),
               "wall_s": {k: round(v, 1) for k, v in walls.items()}}
    print(f"trial-seconds fifo {secs['fifo']:.0f} vs asha {secs['asha']:.0f} "
          f"({summary['ratio']:.2f}x; training iterations {summary['ratio_iterations']:.2f}x); "
          f"top-{args.top} recall {recall:.2f}; "
          f"Kendall tau over {len(survivors)} survivors {tau:.3f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
