"""ASHA and synchronous successive halving replayed offline on recorded learning curves.

    python benchmarks/asha_replay.py --curves benchmarks/results/ranking_curves.csv
        [--metric ap_hard] [--mode max|min] [--grace G] [--reduction-factor 3] [--max-t T]
        [--orders 1000] [--workers 4] [--k 1 3 5] [--seed 0] [--seeds random|mean] [--out CSV]
    python benchmarks/asha_replay.py --run RUN_DIR [same options]

Every trial of the curves table trained to the end; the replay (analysis/replay.py) computes,
for `--orders` random arrival orders, which trials Ray Tune's ASHA rule (one bracket, `--workers`
concurrent slots) and synchronous successive halving would have stopped, what that costs in
trial-iterations against training all to `--max-t`, and the top-k recall of the survivors
against the final metric (mean over seeds). Prints the median and 5-95 % range over orders.

Curves CSV contract (benchmarks/ranking_truth.py records the long runs' rungs there):
`benchmarks/results/ranking_curves.csv`, one row per (spec_id, seed, iteration) at which the run
was tested: columns spec_id, seed, iteration, ap_easy, ap_medium, ap_hard, loss (loss = the mean
training total loss over the last tenth of the iterations so far, nas.fidelity.rung_loss). Any
metric column can be replayed with `--metric`; `--mode` defaults to min for a column named
*loss*, else max; `--truth COLUMN` ranks the specs by that column's final value
(higher is better) instead, e.g. `--metric loss --truth ap_hard`. The table must hold every rung iteration and the last one for each run.

Schedule: `--grace` in iterations (a value below 1 is a fraction of `--max-t`, as facenas's
`--grace`); `--max-t` defaults to the table's largest iteration; rungs grace * rf^k as Ray's.

`--run RUN_DIR`: the curves of a facenas search run with `--scheduler fifo --grace G` (each trial
trained to the end, tested at every rung: columns ap_hard_r<k>, loss_r<k>), in Tune's time unit
rung_t = fraction / grace, so grace 1 and max-t 1/G replay the ASHA that `--scheduler asha` runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.errors import AnalysisError  # noqa: E402
from analysis.replay import Schedule, replay as replay_curves, summarize  # noqa: E402

CURVES_CSV = REPO / "benchmarks" / "results" / "ranking_curves.csv"
CURVES_COLUMNS = ("spec_id", "seed", "iteration", "ap_easy", "ap_medium", "ap_hard", "loss")


def curves_from_run(run_dir: str | Path) -> tuple[pd.DataFrame, float, float]:
    """(curves with columns spec_id, seed, iteration, ap_hard, loss; reduction factor; max_t)
    of a fifo run with rungs, iterations in rung_t units (1, rf, rf^2, ..., 1/grace)."""
    import yaml

    from analysis.tables import load_results

    run = Path(run_dir)
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    fid = (config.get("search") or config).get("fidelity") or {}
    grace, rf = fid.get("grace"), float(fid.get("reduction_factor") or 3)
    if not grace:
        raise AnalysisError(f"{run}/config.yaml: the run has no rungs; search with "
                            "--scheduler fifo --grace G to record them")
    df = load_results(run)
    df = df[df["status"] == "ok"] if "status" in df else df
    rungs = sorted((c for c in df.columns if c.startswith("ap_hard_r")), key=lambda c: int(c[9:]))
    if not rungs:
        raise AnalysisError(f"{run}: no ap_hard_r<k> columns (rung APs) in its results table")
    from nas.fidelity import rung_fractions

    # rung_t of each rung column; a rung that rounds onto a later one (e.g. 0.999 of the
    # schedule with --grace 0.111) is dropped, the later one (the end) kept.
    times = [round(f / grace) for f in rung_fractions(grace, rf)][:len(rungs)]
    keep = [k for k in range(len(times)) if times[k] not in times[k + 1:]]
    rows = []
    for _, r in df.iterrows():
        for k in keep:
            rows.append({"spec_id": r["spec_id"], "seed": 0, "iteration": times[k],
                         "ap_hard": r[rungs[k]], "loss": r.get(f"loss_r{k + 1}", float("nan"))})
    return pd.DataFrame(rows), rf, round(1 / grace)


def replay(curves: pd.DataFrame | str | Path = CURVES_CSV, metric: str = "ap_hard",
           grace: float | None = None, reduction_factor: float = 3.0, max_t: float | None = None,
           orders: int = 1000, workers: int = 4, k: Sequence[int] = (1, 3, 5),
           mode: str | None = None, seed: int = 0, seeds: str = "random",
           truth: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per method and k, one row per order and method) of a curves table or CSV
    (the contract above). ranking_truth.py --report calls this on ranking_curves.csv.
    grace None: the table's smallest iteration."""
    if not isinstance(curves, pd.DataFrame):
        path = Path(curves)
        if not path.is_file():
            raise AnalysisError(f"--curves {path}: no such file")
        curves = pd.read_csv(path)
    if metric not in curves.columns:
        raise AnalysisError(f"--metric {metric!r} is not a column of the curves table "
                            f"(columns: {', '.join(map(str, curves.columns))})")
    if "iteration" not in curves.columns or curves.empty:
        raise AnalysisError("the curves table needs rows with columns spec_id, seed, iteration")
    table = curves.assign(metric=curves[metric])
    if "seed" not in table:
        table = table.assign(seed=0)
    top = float(table["iteration"].max()) if max_t is None else float(max_t)
    g = float(table["iteration"].min()) if grace is None else float(grace)
    if g < 1:
        g *= top
    schedule = Schedule(g, float(reduction_factor), top)
    mode = mode or ("min" if "loss" in metric else "max")
    per = replay_curves(table, schedule, orders=orders, workers=workers, k=k, mode=mode,
                        seed=seed, seeds=seeds, truth=truth)
    per.attrs["schedule"] = schedule
    return summarize(per, list(k)), per


def format_table(summary: pd.DataFrame) -> str:
    lines = ["| method | k | savings median [5-95 %] | recall@k median [5-95 %] | mean recall | "
             "pick in top k | survivors |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r.method} | {r.k} | {r.savings_median:.2f} [{r.savings_p5:.2f}, "
                     f"{r.savings_p95:.2f}] | {r.recall_median:.2f} [{r.recall_p5:.2f}, "
                     f"{r.recall_p95:.2f}] | {r.recall_mean:.2f} | {r.pick_in_top_k:.2f} | "
                     f"{r.survivors_median:g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--curves", help=f"curves CSV (default {CURVES_CSV.relative_to(REPO)})")
    src.add_argument("--run", help="a facenas run searched with --scheduler fifo --grace G")
    p.add_argument("--metric", default="ap_hard")
    p.add_argument("--mode", choices=("max", "min"))
    p.add_argument("--truth", help="column whose final value (higher is better) ranks the "
                   "specs (default: --metric; e.g. --metric loss --truth ap_hard)")
    p.add_argument("--grace", type=float)
    p.add_argument("--reduction-factor", type=float)
    p.add_argument("--max-t", type=float)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", choices=("random", "mean"), default="random")
    p.add_argument("--out", help="write the per-order rows to this CSV")
    args = p.parse_args(argv)
    try:
        rf = args.reduction_factor
        if args.run:
            curves, run_rf, run_max = curves_from_run(args.run)
            rf = rf or run_rf
            grace, max_t = args.grace or 1.0, args.max_t or run_max
        else:
            curves, grace, max_t = args.curves or CURVES_CSV, args.grace, args.max_t
        summary, per = replay(curves, args.metric, grace, rf or 3.0, max_t, args.orders,
                              args.workers, args.k, args.mode, args.seed, args.seeds, args.truth)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sch = per.attrs["schedule"]
    rungs = ", ".join(str(math.ceil(m - 1e-9)) for m in sch.decision_rungs)
    print(f"{int(per['baseline'].iloc[0] // sch.end)} specs, rungs at iteration(s) {rungs}, "
          f"max_t {sch.end}; {per['order'].nunique()} arrival orders, {args.workers} workers, "
          f"metric {args.metric}; savings = 1 - trial-iterations / (all trials to max_t)")
    print(format_table(summary))
    if args.out:
        from analysis.tables import atomic_path

        out = Path(args.out)
        tmp = atomic_path(out)
        per.to_csv(tmp, index=False)
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
