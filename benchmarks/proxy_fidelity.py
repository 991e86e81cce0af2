"""How well does a cheap training recipe rank architectures like a k-times longer one?

    python benchmarks/proxy_fidelity.py [--gflops 2.5] [--budget quick] [--specs 12] [--k 4]
        [--top 3] [--data ROOT] [--workers 2] [--long-seeds 1] [--out DIR] [--report]

Samples `--specs` step-1 specs of the regime's space (as `facenas search` would), trains and
tests each with the budget's trial recipe and with the same recipe k times longer (total,
milestones and warm-up scaled by k; the search's own trial function, `--workers` processes of
one torch thread each), and prints per spec both hard APs and the trial times, then Kendall tau
and Spearman between the two rankings and the overlap of their top `--top` sets. Finished
trials are kept in DIR/rows.jsonl: rerunning with the same --out resumes, and --report ranks
the pairs finished so far without training. This is the
fidelity of the proxy that early stopping (ASHA) relies on: if the short recipe does not rank
like the long one, stopping trials early at short rungs throws good models away.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(request_dict: dict, label: str) -> dict:
    from nas.trial import TrialRequest, run_trial

    request = TrialRequest(**request_dict)
    return {"spec_id": request.spec_id, "recipe": label, **run_trial(request)}


def _longer(overrides: dict, base_schedule: dict, k: int) -> dict:
    """The overrides with the schedule k times longer (iterations, milestones, warm-up)."""
    from nas.trial import merge

    s = merge(base_schedule, overrides.get("schedule", {}))
    longer = {"total": int(s["total"]) * k, "milestones": [int(m) * k for m in s["milestones"]],
              "warmup_iters": int(s.get("warmup_iters", 0)) * k}
    return merge(overrides, {"schedule": longer})


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from scipy import stats

    from detectors.config import TrainConfig, apply_budget, recipe_from_dict
    from detectors.spec import DetectorSpec
    from proxy_signal import step1_sample  # the same step-1 sample (benchmarks/ is on sys.path)
    from nas.trial import TrialRequest

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gflops", type=float, default=2.5)
    p.add_argument("--budget", default="quick")
    p.add_argument("--specs", type=int, default=12)
    p.add_argument("--k", type=int, default=4, help="the long recipe is k x the budget's")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--data", help="dataset root (default: the budget's embedded dataset)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", help="directory for the trials (default: a temporary one)")
    p.add_argument("--long-seeds", type=int, default=1,
                   help="train the long recipe with this many training seeds (>1: also report "
                        "how well it ranks like itself)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: rank the finished pairs already in --out")
    args = p.parse_args(argv)

    search, specs = step1_sample(args.gflops, args.budget, args.specs, args.sample_seed, args.data)
    data = search["data"]
    scaled = apply_budget(TrainConfig(DetectorSpec.from_dict(search["template"]),
                                      recipe_from_dict(search["recipe"])), args.budget)
    base_schedule = scaled.recipe.to_dict()["schedule"]
    recipes = {"short": search["recipe_overrides"],
               f"{args.k}x": _longer(search["recipe_overrides"], base_schedule, args.k)}
    out = Path(args.out or tempfile.mkdtemp(prefix="proxy_fidelity-"))
    # Replicates of the long recipe with other training seeds come after every pair: they
    # measure how well the long recipe agrees with itself, the ceiling of any proxy's tau.
    replicas = [(f"{args.k}x_s{seed}", seed) for seed in range(1, args.long_seeds)]

    def request(s, label: str, overrides: dict, seed: int) -> tuple[dict, str]:
        return (TrialRequest(spec_id=s.id, spec_yaml=s.to_yaml(), step=1, seed=0,
                             budget=args.budget, data_root=data, out_dir=str(out / label / s.id),
                             recipe=search["recipe"], recipe_overrides={**overrides, "seed": seed},
                             num_threads=1).to_dict(), label)

    jobs = [request(s, label, ov, 0) for s in specs for label, ov in recipes.items()]
    jobs += [request(s, label, recipes[f"{args.k}x"], seed) for label, seed in replicas
             for s in specs]
    labels = list(recipes) + [label for label, _ in replicas]
    print(f"{len(specs)} specs x recipes {labels}, budget {args.budget}, data {data}; "
          f"trials in {out}", flush=True)
    # Finished rows go to rows.jsonl as they come, so a rerun with the same --out skips them
    # (a stopped run resumes; unfinished trials continue from their checkpoints).
    log = out / "rows.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["spec_id"], r["recipe"]) for r in rows}
    todo = [(r, label) for r, label in jobs if (r["spec_id"], label) not in done]
    start = time.perf_counter()
    if todo and not args.report:
        with ProcessPoolExecutor(max_workers=args.workers,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run, r, label) for r, label in todo]
            for n, fut in enumerate(as_completed(futures), 1):
                row = fut.result()
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"[{n}/{len(futures)} {time.perf_counter() - start:6.0f}s] {row['spec_id']} "
                      f"{row['recipe']}: AP hard {row['ap_hard']:.4f} in {row['wall_time_s']:.0f}s",
                      flush=True)
    short, long_ = "short", f"{args.k}x"
    # Only specs with both recipes finished are ranked (a partial run ranks its pairs).
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(
        columns=["spec_id", "recipe", "ap_hard", "wall_time_s"])
    aps = frame.pivot(index="spec_id", columns="recipe", values="ap_hard")
    ap = aps.reindex(columns=[short, long_]).dropna()
    secs = frame.pivot(index="spec_id", columns="recipe", values="wall_time_s").loc[ap.index]
    if len(ap) < 3:
        print(f"only {len(ap)} spec(s) have both recipes finished: nothing to rank yet")
        return 1
    print(pd.concat([ap.add_prefix("ap_"), secs.add_prefix("s_")], axis=1)
          .sort_values(f"ap_{long_}", ascending=False).round(4).to_string())
    tau = stats.kendalltau(ap[short], ap[long_]).statistic
    rho = stats.spearmanr(ap[short], ap[long_]).statistic
    top_short = set(ap[short].nlargest(args.top).index)
    top_long = set(ap[long_].nlargest(args.top).index)
    summary = {"budget": args.budget, "specs": len(specs), "pairs_ranked": len(ap), "k": args.k,
               "kendall_tau": float(tau), "spearman": float(rho),
               f"top{args.top}_overlap": len(top_short & top_long) / args.top,
               "median_s_short": float(secs[short].median()),
               "median_s_long": float(secs[long_].median()),
               "mean_ap_short": float(ap[short].mean()), "mean_ap_long": float(ap[long_].mean()),
               "total_s": round(time.perf_counter() - start, 1)}
    print(f"{len(ap)} pairs: Kendall tau {tau:.3f}, Spearman {rho:.3f}, top-{args.top} overlap "
          f"{len(top_short & top_long)}/{args.top}")
    for label, _ in replicas:
        both = aps.reindex(columns=[short, long_, label]).dropna()
        if len(both) < 3:
            continue
        self_tau = stats.kendalltau(both[long_], both[label]).statistic
        mean_long = both[[long_, label]].mean(axis=1)
        summary[f"kendall_tau_{long_}_vs_{label}"] = float(self_tau)
        summary[f"kendall_tau_short_vs_mean_{long_}"] = float(
            stats.kendalltau(both[short], mean_long).statistic)
        summary[f"ap_{label}_mean"] = float(both[label].mean())
        print(f"{len(both)} specs: the long recipe against itself (seed 0 vs {label}): Kendall "
              f"tau {self_tau:.3f}; short vs the mean of both long seeds: "
              f"{summary[f'kendall_tau_short_vs_mean_{long_}']:.3f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
