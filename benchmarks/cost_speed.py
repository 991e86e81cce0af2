"""Time analytic cost() against building the model and hook-counting one forward.

    .venv/bin/python benchmarks/cost_speed.py [--n 100] [--input 640x640] [--max-width 64]

Draws N random valid specs (all block types, necks and head options; see
detectors/spec_sampling.py), and per spec times (a) `cost(spec, hw)` and (b) `build(spec)` +
`measured_cost(model, hw)` (one no-grad forward with counting hooks), checks both agree, and
prints the median time of each and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch
from tqdm import tqdm

from detectors.cost import cost
from detectors.measure import measured_cost
from detectors.model import build
from detectors.spec_sampling import random_spec
from nas.commands.cost import parse_input_size


def _time_cost(spec, hw, repeats: int) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        cost(spec, hw)
    return (time.perf_counter() - t) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="number of random specs")
    p.add_argument("--input", default="640x640", help="input WxH (default 640x640, as the sampler)")
    p.add_argument("--max-width", type=int, default=64, help="largest stage/neck/head width")
    p.add_argument("--seed", type=int, default=0)
    # 1 by default: on a shared 2-core machine intra-op threads mostly add contention
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hw = parse_input_size(args.input)
    rng = random.Random(args.seed)
    analytic, measured = [], []
    for i in tqdm(range(args.n), desc="specs", file=sys.stderr):
        spec = random_spec(rng, max_width=args.max_width, max_depth=4, name=f"bench{i}")
        analytic.append(_time_cost(spec, hw, repeats=20))
        t = time.perf_counter()
        m = measured_cost(build(spec), hw)
        measured.append(time.perf_counter() - t)
        if m != cost(spec, hw):
            raise AssertionError(f"analytic and measured cost differ for spec {i}:\n{spec.to_yaml()}")
    a, b = statistics.median(analytic), statistics.median(measured)
    print(f"{args.n} random specs at {args.input} (W x H), max width {args.max_width}, "
          f"{args.threads} torch threads")
    print(f"cost():                 median {a * 1e6:10.1f} us per spec")
    print(f"build + hook count:     median {b * 1e3:10.1f} ms per spec")
    print(f"ratio (build / cost):   {b / a:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
