"""Time the empirical bootstrap (issue 6 asks for 2,500 resamples x 320 models).

    .venv/bin/python benchmarks/bootstrap_speed.py [--models 320] [--n-boot 2500] [--repeats 20]

Builds a results table of N models with all 20 default quantities (random values, AP peaked in
ratio_c2), then times `bootstrap_ranges` (all quantities) and `bootstrap_winners` (the resampling
alone) and prints the fastest and median of the repeats in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from analysis.bootstrap import bootstrap_ranges, bootstrap_winners
from analysis.tables import DEFAULT_QUANTITIES


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({q: rng.uniform(0, 1, n) for q in DEFAULT_QUANTITIES})
    table["status"] = "ok"
    table["ap_hard"] = 0.8 - (table["ratio_c2"] - 0.3) ** 2 + rng.normal(0, 0.002, n)
    return table


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=320)
    parser.add_argument("--n-boot", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    table = _table(args.models)
    ap = table["ap_hard"].to_numpy()
    for name, fn in (("bootstrap_ranges, 20 quantities",
                      lambda: bootstrap_ranges(table, n_boot=args.n_boot)),
                     ("bootstrap_winners (resampling only)",
                      lambda: bootstrap_winners(ap, n_boot=args.n_boot))):
        t = _times(fn, args.repeats)
        print(f"{name}: {args.n_boot} x {args.models}: min {min(t):.1f} ms, "
              f"median {statistics.median(t):.1f} ms")


if __name__ == "__main__":
    main()
