"""Activation memory and step time of one AutoFEM-CPM search cell: hard path vs PC-DARTS vs DARTS.

    .venv/bin/python benchmarks/asfd_memory.py [--nodes 6] [--channels 256] [--size 160]
        [--batch 2] [--partial 4] [--fit-sizes 16,32] [--time-size 32] [--repeats 3]

Activation memory = bytes of the tensors autograd keeps for backward (saved-tensor hooks,
distinct storages, parameters excluded): what a training step holds at the end of its
forward. Every tensor in a cell is a feature map of the input's size (stride-1 ops), so the
bytes are a + b * H * W exactly; the script measures them at two small sizes (--fit-sizes),
fits a and b, checks the fit at a third size and reports the bytes at --size (160x160: DARTS
there needs tens of GB, more than this machine has). Step time (forward + backward of
out.square().mean(), CPU, 1 thread) is the median of --repeats steps at --time-size. Hard-path
figures are the median over the repeats (each draws its own tree). Prints ratios to PC-DARTS.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from search_spaces.asfd.cells import MODES, SearchCell


def _saved_bytes(cell: SearchCell, x: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages saved for backward by one forward."""
    params = {p.untyped_storage().data_ptr() for p in cell.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = cell(x)
    out.square().mean().backward()
    cell.zero_grad(set_to_none=True)
    return sum(seen.values())


def _step_time(cell: SearchCell, x: torch.Tensor) -> float:
    t = time.perf_counter()
    cell(x).square().mean().backward()
    dt = time.perf_counter() - t
    cell.zero_grad(set_to_none=True)
    return dt


def _measure(mode: str, args) -> dict[str, float]:
    torch.manual_seed(0)
    cell = SearchCell(args.channels, args.nodes, mode, args.partial)
    cell.tau = 1.0
    fit = []
    for s in args.fit_sizes + [args.check_size]:
        x = torch.randn(args.batch, args.channels, s, s)
        fit.append(statistics.median(_saved_bytes(cell, x) for _ in range(args.repeats)))
    (s0, s1), (m0, m1) = args.fit_sizes, fit[:2]
    b = (m1 - m0) / (s1 * s1 - s0 * s0)
    a = m0 - b * s0 * s0
    predicted_check = a + b * args.check_size ** 2
    x = torch.randn(args.batch, args.channels, args.time_size, args.time_size)
    _step_time(cell, x)  # warm-up
    times = [_step_time(cell, x) for _ in range(args.repeats)]
    return {"bytes": a + b * args.size ** 2, "check_err": abs(predicted_check - fit[2]) / fit[2],
            "time": statistics.median(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=6)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--size", type=int, default=160, help="input H = W the memory is reported at")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--partial", type=int, default=4, help="PC-DARTS K (hard and pcdarts modes)")
    p.add_argument("--fit-sizes", default="16,32", help="two sizes the linear fit is measured at")
    p.add_argument("--check-size", type=int, default=24, help="a third size checking the fit")
    p.add_argument("--time-size", type=int, default=32, help="input H = W of the timed steps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.fit_sizes = [int(v) for v in args.fit_sizes.split(",")]
    torch.set_num_threads(args.threads)
    res = {mode: _measure(mode, args) for mode in MODES}
    ref = res["pcdarts"]
    print(f"one CPM cell: {args.nodes} nodes, {args.channels} channels, batch {args.batch}, "
          f"K={args.partial} (hard, pcdarts), CPU, {args.threads} thread(s)")
    print(f"{'mode':8s} {'act. memory @' + str(args.size) + 'px':>20s} {'x PC-DARTS':>10s} "
          f"{'fit err':>8s} {'step @' + str(args.time_size) + 'px':>14s} {'x PC-DARTS':>10s}")
    for mode, r in res.items():
        print(f"{mode:8s} {r['bytes'] / 2**30:17.2f} GiB {r['bytes'] / ref['bytes']:10.3f} "
              f"{100 * r['check_err']:7.2f}% {r['time'] * 1e3:11.0f} ms "
              f"{r['time'] / ref['time']:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
