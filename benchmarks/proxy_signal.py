"""Does a search budget rank architectures by a real AP signal, or by noise?

    python benchmarks/proxy_signal.py [--gflops 2.5] [--budget quick] [--specs 6]
        [--seeds 0 1] [--data ROOT] [--workers 2] [--override YAML] [--out DIR]

Samples `--specs` step-1 specs of the regime's search space (as `facenas search` would), trains
and tests each one with the budget's trial recipe once per training seed (the search's own
trial function, `--workers` processes of one torch thread each), and prints:

- per spec: hard AP per seed, trial wall time;
- Spearman and Kendall rank correlation of the specs' hard AP between every pair of seeds
  (1 = the budget ranks the specs identically whatever the seed; ~0 = ranking by noise);
- the spread between specs (std of the per-spec mean AP) against the seed noise (std of the
  seed-to-seed differences / sqrt 2), i.e. a signal-to-noise ratio.

`--override` is a YAML mapping merged into the budget's recipe overrides (e.g.
"{schedule: {total: 200}}") to calibrate a preset before editing it. The default data is what
`facenas search --budget BUDGET` uses without --data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(request_dict: dict) -> dict:
    from nas.trial import TrialRequest, run_trial

    request = TrialRequest(**request_dict)
    return {"spec_id": request.spec_id, "seed": request.seed, **run_trial(request)}


def step1_sample(gflops: float, budget: str, num: int, seed: int, data: str | None) -> tuple[dict, list]:
    """The budget's step-1 search config (its dataset: `data`, else the budget's embedded one)
    and `num` specs sampled as the search's step 1 would with search seed `seed`."""
    from nas import presets
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.scrfd import build_space
    from nas.strategies.two_step import sample_seed

    search = resolve_config(SearchOptions(space="scrfd", gflops=gflops, budget=budget,
                                          num_samples=num, seed=seed, steps="1", max_failures=0))
    search["data"] = data or str(presets.default_data(search))
    return search, build_space(search).sample(num, seed=sample_seed(seed, 1), step=1)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pandas as pd
    import yaml
    from scipy import stats

    from nas.trial import TrialRequest, merge

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gflops", type=float, default=2.5)
    p.add_argument("--budget", default="quick")
    p.add_argument("--specs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the spec sample")
    p.add_argument("--data", help="dataset root (default: the budget's embedded dataset)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--override", default="{}", help="YAML mapping merged into the recipe overrides")
    p.add_argument("--out", help="directory for the trials (default: a temporary one)")
    args = p.parse_args(argv)

    search, specs = step1_sample(args.gflops, args.budget, args.specs, args.sample_seed, args.data)
    data = search["data"]
    overrides = merge(search["recipe_overrides"], yaml.safe_load(args.override) or {})
    out = Path(args.out or tempfile.mkdtemp(prefix="proxy_signal-"))
    requests = [TrialRequest(spec_id=s.id, spec_yaml=s.to_yaml(), step=1, seed=seed,
                             budget=args.budget, data_root=data,
                             out_dir=str(out / f"seed{seed}" / s.id), recipe=search["recipe"],
                             recipe_overrides={**overrides, "seed": seed}, num_threads=1).to_dict()
                for seed in args.seeds for s in specs]
    print(f"{len(specs)} specs x {len(args.seeds)} seeds, budget {args.budget}, data {data}, "
          f"overrides {json.dumps(overrides)}; trials in {out}", flush=True)
    rows, start = [], time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = [pool.submit(_run, r) for r in requests]
        for done, fut in enumerate(as_completed(futures), 1):
            row = fut.result()
            rows.append(row)
            print(f"[{done}/{len(futures)} {time.perf_counter() - start:6.0f}s] {row['spec_id']} "
                  f"seed {row['seed']}: AP hard {row['ap_hard']:.4f} medium {row['ap_medium']:.4f} "
                  f"easy {row['ap_easy']:.4f} in {row['wall_time_s']:.0f}s", flush=True)
    table = pd.DataFrame(rows).pivot(index="spec_id", columns="seed", values="ap_hard")
    table["mean"] = table[args.seeds].mean(axis=1)
    table["wall_s"] = pd.DataFrame(rows).groupby("spec_id")["wall_time_s"].median()
    print(table.sort_values("mean", ascending=False).round(4).to_string())
    summary: dict = {"budget": args.budget, "specs": len(specs), "seeds": args.seeds,
                     "overrides": overrides, "mean_ap_hard": float(table["mean"].mean()),
                     "median_trial_s": float(table["wall_s"].median()),
                     "total_s": round(time.perf_counter() - start, 1), "pairs": []}
    for a, b in itertools.combinations(args.seeds, 2):
        rho = stats.spearmanr(table[a], table[b]).statistic
        tau = stats.kendalltau(table[a], table[b]).statistic
        summary["pairs"].append({"seeds": [a, b], "spearman": float(rho), "kendall": float(tau)})
        print(f"seeds {a} vs {b}: Spearman {rho:.3f}, Kendall {tau:.3f}")
    if len(args.seeds) >= 2:
        noise = float(np.std(np.diff(table[args.seeds].to_numpy(), axis=1), ddof=1) / np.sqrt(2))
        spread = float(table["mean"].std(ddof=1))
        summary.update(spread=spread, seed_noise=noise, snr=spread / noise if noise > 0 else None)
        print(f"spread between specs {spread:.4f} vs seed noise {noise:.4f} "
              f"(ratio {'n/a' if noise == 0 else f'{spread / noise:.2f}'})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
