"""Measuring latency: one layer or one whole detector, with torch or onnxruntime, as medians.

Both runtimes time a batch-1 forward at the table's input size after a warm-up, repeating
until `min_reps` runs and `min_seconds` have passed; the median is reported (this project's
machines stall now and then, so means would mislead). torch runs fp32 NCHW in inference mode
with `threads` intra-op threads; onnxruntime runs the module exported to ONNX (opset 17,
graph optimisations on, so conv + BN + ReLU fuse as they would in deployment) with
`threads` intra-op threads and one inter-op thread.

A latency table's rows (`measure_layer`) time a layer as it runs inside a model. For
onnxruntime that means its output is written into a buffer allocated once (IOBinding), as a
model's arena reuses its buffers: a plain `session.run` allocates every graph output afresh
(and page-faults it in), which a model pays for its few final outputs only. On this machine
that per-call allocation made small, high-resolution layers 10-40% dearer than in a model
(docs/latency.md, table format 2). torch allocates every layer's output in a model as well,
so its layers are timed by plain calls.
"""

from __future__ import annotations

import io
import inspect
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.errors import UserError
from detectors.latency.trace import Layer
from detectors.spec import DetectorSpec

__all__ = ["Timing", "layer_module", "measure_layer", "measure_spec", "measure_module", "measure_call",
           "runtime_versions"]


@dataclass(frozen=True)
class Timing:
    warmup: int = 3
    min_reps: int = 7
    min_seconds: float = 0.2
    max_reps: int = 200


def layer_module(layer: Layer) -> nn.Module:
    """The layer as the catalogue builds it: conv [+ BN/GN] [+ ReLU]."""
    pad = (layer.dilation * (layer.kh // 2), layer.dilation * (layer.kw // 2))
    mods: list[nn.Module] = [nn.Conv2d(layer.cin, layer.cout, (layer.kh, layer.kw), layer.stride,
                                       pad, layer.dilation, layer.groups, bias=layer.bias)]
    if layer.norm == "bn":
        mods.append(nn.BatchNorm2d(layer.cout))
    elif layer.norm == "gn":
        mods.append(nn.GroupNorm(int(np.gcd(layer.cout, 16)), layer.cout))
    if layer.act:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class _Maps(nn.Module):
    """A detector's raw prediction maps as a tuple (what ONNX export and timing need)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out.cls_logits) + tuple(out.box_dists) + tuple(out.kps_offsets or ())


def _times(run, timing: Timing, sync=None) -> float:
    for _ in range(timing.warmup):
        run()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < timing.max_reps and (
            len(samples) < timing.min_reps or time.perf_counter() - start < timing.min_seconds):
        t0 = time.perf_counter()
        run()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _onnx_session(module: nn.Module, example: torch.Tensor, device: str, threads: int,
                  profile: bool = False):
    import onnxruntime as ort
    import tempfile

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, (example,), buf, input_names=["input"], opset_version=17, **legacy)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"facenas_row_{os.getpid()}")
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError("onnxruntime here has no CUDA provider; install onnxruntime-gpu or "
                        "profile with --device cpu")
    return ort.InferenceSession(buf.getvalue(), options, providers=providers)


def _bound_run(session, feed: dict[str, np.ndarray]):
    """session.run with the input bound and every output written into a buffer allocated
    once (onnxruntime IOBinding; CPU only): what one layer costs inside a model."""
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, value)
    buffers = [np.empty(out.shape, out.dtype) for out in session.run(None, feed)]
    for meta, buf in zip(session.get_outputs(), buffers):
        binding.bind_output(meta.name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)

    def run() -> None:
        session.run_with_iobinding(binding)

    run.outputs = buffers  # the bound memory lives as long as the runner (tests read it)
    return run


# onnxruntime's CPU layout nodes: with all graph optimisations a model's convs run in a blocked
# layout (NCHWc), converted to and from once at the model's edges; a one-layer session pays
# both conversions of its own (big) activations on every call, which no layer pays in a model
_LAYOUT_NODES = ("ReorderInput", "ReorderOutput")


def _kernel_ms(events: list[dict], runs: int) -> float:
    """The median over the last `runs` runs of the summed kernel time of every node but the
    layout conversions, from onnxruntime profile events (each node runs once per run)."""
    per_node: dict[str, list[float]] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time") \
                and ev.get("args", {}).get("op_name") not in _LAYOUT_NODES:
            per_node.setdefault(ev["name"], []).append(ev["dur"] / 1e3)
    if not per_node:
        return 0.0
    n = min(runs, *(len(v) for v in per_node.values()))
    return statistics.median(sum(v[-n + i] for v in per_node.values()) for i in range(n))


def _kernel_run(module: nn.Module, example: torch.Tensor, threads: int, timing: Timing) -> float:
    """Median ms of the layer's kernels alone (onnxruntime profiling, CPU, outputs bound):
    what the layer costs inside a model, without the call and layout conversions a
    one-layer session adds (docs/latency.md, table format 3)."""
    import json

    session = _onnx_session(module, example, "cpu", threads, profile=True)
    run = _bound_run(session, {session.get_inputs()[0].name: example.numpy()})
    runs = [0]

    def counted() -> None:
        run()
        runs[0] += 1

    _times(counted, timing)
    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.unlink(path)
    return _kernel_ms(events, runs[0] - timing.warmup)


def measure_module(module: nn.Module, input_shape: tuple[int, ...], runtime: str, device: str,
                   threads: int, timing: Timing = Timing(), seed: int = 0,
                   bind_outputs: bool = False, kernels: bool = False) -> float:
    """Median ms of one forward of `module` on a random input of `input_shape`.
    `bind_outputs` (onnxruntime on CPU): outputs into buffers allocated once (IOBinding).
    `kernels` (onnxruntime on CPU): the summed kernel time of its nodes, less layout
    conversions, from onnxruntime's profiler (what a table row is, format 3)."""
    module = module.eval()
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    if runtime == "onnxruntime":
        if kernels and device == "cpu":
            return _kernel_run(module, example, threads, timing)
        session = _onnx_session(module, example, device, threads)
        feed = {session.get_inputs()[0].name: example.numpy()}
        if bind_outputs and device == "cpu":
            return _times(_bound_run(session, feed), timing)
        return _times(lambda: session.run(None, feed), timing)
    if runtime != "torch":
        raise UserError(f"latency runtime {runtime!r} is not one of torch, onnxruntime")
    torch.set_num_threads(threads)
    dev = torch.device(device)
    module, example = module.to(dev), example.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    with torch.inference_mode():
        return _times(lambda: module(example), timing, sync)


def measure_layer(layer: Layer, runtime: str, device: str, threads: int,
                  timing: Timing = Timing(), legacy: bool = False) -> float:
    """Median ms of one layer as a table row (module docstring); `legacy`: as format 1 timed
    it (onnxruntime outputs allocated on every call), for comparisons."""
    torch.manual_seed(0)
    return measure_module(layer_module(layer), (1, layer.cin, layer.h, layer.w), runtime, device,
                          threads, timing, bind_outputs=not legacy, kernels=not legacy)


def measure_call(runtime: str, device: str, threads: int, timing: Timing = Timing(),
                 legacy: bool = False) -> float:
    """Median ms of one call of a trivial layer (a 1x1 conv of one channel on 8x8), timed as
    rows are: what timing a layer on its own adds to it."""
    return measure_layer(Layer(1, 1, 1, 1, 1, 8, 8, norm="none", act=False), runtime, device,
                         threads, timing, legacy)


def measure_spec(spec: DetectorSpec, input_hw: tuple[int, int], runtime: str, device: str,
                 threads: int, timing: Timing = Timing()) -> float:
    """Median ms of one batch-1 forward of the whole network (no decoding or NMS)."""
    from detectors.model import build

    torch.manual_seed(0)
    return measure_module(_Maps(build(spec)), (1, 3, int(input_hw[0]), int(input_hw[1])), runtime,
                          device, threads, timing)


def runtime_versions(runtime: str) -> dict[str, str]:
    import platform

    out = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    if runtime == "onnxruntime":
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out
