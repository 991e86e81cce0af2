"""RSA's operations per component at VGA beside the paper's Table 1 (no timing; counts only).

    .venv/bin/python benchmarks/rsa_cost.py [--spec experiments/models/rsa.yaml]

Prints, for roll-out depths 0..M, the multiply-accumulates (M) of the scale-forecast network
(long side 224), the trunk (conv1..res2b), the RSA unit and the LRN, and Table 1's figures
(forecast 95.67M, RSA 0-182.42M, LRN 0-1.3G, total 95.67M-1.5G). docs/rsa.md explains the gaps.
"""

from __future__ import annotations

import argparse

from detectors.rsa.cost import pipeline_cost
from detectors.spec import DetectorSpec

PAPER = {"forecast": "95.67M", "rsa": "0 to 182.42M", "lrn": "0 to 1.3G", "total": "95.67M to 1.5G"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="experiments/models/rsa.yaml")
    args = parser.parse_args()
    spec = DetectorSpec.from_yaml(args.spec)
    m = spec.neck.options.rollouts
    print(f"{spec.name} at 640x480 (VGA), M MACs; paper Table 1: {PAPER}")
    print(f"{'depth':>5} {'forecast':>10} {'trunk':>10} {'rsa':>10} {'lrn':>10} {'total':>10}")
    for depth in range(m + 1):
        c = pipeline_cost(spec, (480, 640), depth)
        total = sum(x.macs for x in c.values())
        print(f"{depth:>5} " + " ".join(f"{c[k].macs / 1e6:>10.2f}" for k in c) + f" {total / 1e6:>10.2f}")
    c = pipeline_cost(spec, (480, 640), m)
    print("params: " + ", ".join(f"{k} {v.params:,}" for k, v in c.items()))
    print(f"no face forecast: only the forecast runs ({c['forecast'].macs / 1e6:.2f} M)")


if __name__ == "__main__":
    main()
