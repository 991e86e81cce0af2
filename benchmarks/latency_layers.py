"""Where does a table's prediction of a whole model go wrong? Each layer's table row against the
same layer's time inside the whole model (onnxruntime's per-node profiling).

    python benchmarks/latency_layers.py SPEC... --table T.json [--runs 5]
        [--profile-rows kernel|wall [--threads 1] [--input 640x480]]

For each spec: exports it as `facenas latency --measure` does, runs it `--runs` times under
onnxruntime's profiler (the table's threads, all graph optimisations) and takes each node's
median kernel time. Conv nodes (conv + BN + ReLU fused) are matched to the layer the table
prices (its cin, cout, kernel, stride, groups, input size); everything else is glue (adds,
upsampling, concat, reshapes). Prints, per spec: wall time of a run, the sum of node times,
the sum of conv nodes against the sum of their rows (less call_ms, as the model prices them),
glue time, and the in-model / row ratio of convs binned by their output activation size.
`--profile-rows` first measures the rows the specs need into T.json (created when absent):
`kernel` as tables are now (format 3), `wall` as format 2 did (a one-layer session's wall
time, outputs bound, less the per-call cost): the comparison that found what format 2 missed.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _profile(spec, hw, threads: int, runs: int):
    """({node: median µs}, {node: (op, in shapes, out shapes)}, median wall ms of a run)."""
    import inspect

    import onnxruntime as ort
    import torch

    from detectors.latency.measure import _Maps
    from detectors.model import build

    torch.manual_seed(0)
    module = _Maps(build(spec)).eval()
    example = torch.randn(1, 3, *hw)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, (example,), buf, input_names=["input"], opset_version=17, **legacy)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"input": example.numpy()}
    for _ in range(2):
        sess.run(None, feed)
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        walls.append((time.perf_counter() - t0) * 1e3)
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    durs, meta = defaultdict(list), {}
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            name = ev["name"][: -len("_kernel_time")]
            durs[name].append(ev["dur"])
            a = ev["args"]
            meta[name] = (a.get("op_name"), [list(x.values())[0] for x in a.get("input_type_shape", [])],
                          [list(x.values())[0] for x in a.get("output_type_shape", [])])
    # the first 2 runs are warm-up: keep the last `runs` of each node
    return ({k: statistics.median(v[-runs:]) for k, v in durs.items()}, meta,
            statistics.median(walls))


def _row_ms(table, ins, outs):
    """The table's price (less call_ms) of a conv node, trying the norm/act variants rows
    carry; None when unpriced."""
    from detectors.latency.trace import Layer

    x, w = ins[0], ins[1]
    cin, h, wd = x[1], x[2], x[3]
    cout, kh, kw = w[0], w[2], w[3]
    groups = cin // w[1]
    stride = max(1, round(h / outs[0][2]))
    for norm, act, bias in (("bn", True, False), ("bn", False, False), ("none", False, True),
                            ("none", True, True), ("gn", True, False), ("gn", False, False)):
        ms = table.layer_ms(Layer(cin, cout, kh, kw, stride, h, wd, groups, 1, norm, act, bias))
        if ms is not None:
            return ms
    return None


def _profile_rows(specs, path: Path, how: str, threads: int, size: str,
                  again: bool = False) -> None:
    """Rows the specs need into the table at `path`; `again`: one more sample of every row
    the specs need (a row is the minimum of its samples)."""
    from detectors.latency.measure import Timing, measure_call, measure_module, layer_module
    from detectors.latency.profile import needed_rows
    from detectors.latency.table import LatencyTable, channel_block
    from detectors.latency.trace import Layer
    from nas.commands.cost import parse_input_size

    table = LatencyTable.load(path) if path.exists() else LatencyTable(
        "onnxruntime", "cpu", threads, parse_input_size(size),
        channel_block=channel_block("onnxruntime", "cpu"))
    timing = Timing(warmup=2, min_reps=5, min_seconds=0.1)

    def row(layer: Layer) -> float:
        import torch

        torch.manual_seed(0)
        return measure_module(layer_module(layer), (1, layer.cin, layer.h, layer.w),
                              "onnxruntime", "cpu", threads, timing, bind_outputs=True,
                              kernels=how == "kernel")

    if not table.call_ms:
        table.call_ms = row(Layer(1, 1, 1, 1, 1, 8, 8, norm="none", act=False)) \
            if how == "wall" else measure_call("onnxruntime", "cpu", threads)
    keys = needed_rows(specs, table)
    block, table.channel_block = table.channel_block, 1  # the rows of both pricings
    keys = sorted(set(keys) | set(needed_rows(specs, table)))
    table.channel_block = block
    if again:
        keys = sorted(set(keys) | {key for spec in specs for key in _spec_rows(spec, table)})
    for key in keys:
        table.add_sample(key, row(Layer.from_key(key)))
    table.save(path)


def _spec_rows(spec, table) -> set[str]:
    from detectors.latency.table import corners
    from detectors.latency.trace import trace

    return {c.key for comp in trace(spec, table.input_hw).values() for layer, _ in comp.layers
            for b in {1, table.channel_block} for c, _ in corners(layer, b)}


def main(argv: list[str] | None = None) -> int:
    from detectors.latency import latency
    from detectors.latency.table import LatencyTable
    from nas.commands.cost import load_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+")
    p.add_argument("--table", required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--profile-rows", choices=("kernel", "wall"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--input", default="640x480")
    args = p.parse_args(argv)
    specs = [load_spec(Path(path)) for path in args.specs]
    if args.profile_rows:
        _profile_rows(specs, Path(args.table), args.profile_rows, args.threads, args.input)
    table = LatencyTable.load(args.table)
    out = {}
    for path, spec in zip(args.specs, specs):
        node_us, meta, wall = _profile(spec, table.input_hw, table.threads, args.runs)
        conv_model = conv_rows = glue = 0.0
        unpriced = 0
        bins: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        glue_ops: dict[str, float] = defaultdict(float)
        for name, us in node_us.items():
            op, ins, outs = meta[name]
            ms = us / 1e3
            if op in ("Conv", "FusedConv") and len(ins) >= 2 and len(ins[1]) == 4:
                row = _row_ms(table, ins, outs)
                if row is None:
                    unpriced += 1
                    continue
                conv_model += ms
                conv_rows += row
                o = outs[0]
                mb = o[1] * o[2] * o[3] * 4 / 2**20
                b = "<0.25MB" if mb < 0.25 else "<1MB" if mb < 1 else "<4MB" if mb < 4 else ">=4MB"
                bins[b][0] += ms
                bins[b][1] += row
            else:
                glue += ms
                glue_ops[op] += ms
        pred = latency(spec, table)
        res = {"wall_ms": wall, "nodes_ms": sum(node_us.values()) / 1e3, "conv_model_ms": conv_model,
               "conv_rows_ms": conv_rows, "glue_ms": glue, "unpriced_convs": unpriced,
               "layers_ms_table": pred.layers_ms,
               "by_output_size": {b: {"model_ms": v[0], "rows_ms": v[1], "ratio": v[0] / v[1]}
                                  for b, v in sorted(bins.items())},
               "glue_by_op": dict(sorted(glue_ops.items(), key=lambda kv: -kv[1]))}
        out[spec.name] = res
        print(f"{path}: wall {wall:.1f} ms, nodes {res['nodes_ms']:.1f}, convs in model "
              f"{conv_model:.1f} vs rows {conv_rows:.1f} ({conv_model / conv_rows:.2f}x), glue "
              f"{glue:.1f} ms, unpriced convs {unpriced}; by output size: " + ", ".join(
                  f"{b} {v['model_ms']:.1f}/{v['rows_ms']:.1f} ({v['ratio']:.2f})"
                  for b, v in res["by_output_size"].items()), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
