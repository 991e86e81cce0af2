"""A measured latency lookup table: per-layer medians on one device and runtime, saved as JSON.

Rows are layers (detectors/latency/trace.py) at channel counts on a fixed grid: powers of two
and their 1.5x midpoints (1, 2, 3, 4, 6, 8, 12, 16, 24, ...). A layer between grid points is
priced by bilinear interpolation over (cin, cout) from its four grid corners (linear over c for
depthwise layers). A conv's MACs are bilinear in (cin, cout), so the interpolation is exact
where the device runs at a constant rate and only bends where its efficiency changes.

The table records what it was measured on (runtime, device, threads, input size, package
versions) and the fitted whole-model terms (detectors/latency/__init__.py). Written to a
temporary name and renamed: an interrupted profile leaves the last complete table, which a
rerun extends (`facenas latency profile` skips rows it has).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detectors.errors import UserError
from detectors.latency.trace import Layer

__all__ = ["FORMAT", "LatencyTable", "Fit", "grid_below", "grid_above", "corners", "padded",
           "channel_block"]

# 2: onnxruntime rows write into outputs allocated once (measure.py); format-1 rows paid a
# fresh output allocation per call and mean something else, so format-1 tables are refused
FORMAT = "facenas-latency/3"
RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")


def channel_block(runtime: str, device: str) -> int:
    """The channel block a runtime computes convs in on this machine: on an x86 CPU both
    onnxruntime (MLAS, NCHWc) and torch (oneDNN, nChw16c/nChw8c) block channels by 16 with
    AVX-512F and by 8 with AVX2; anything else 1. Measured here (AVX-512): onnxruntime's
    3x3 convs cost the same at 56 and 64 channels, and at 88 and 96; torch's steps alike,
    less cleanly, and priced with the block its published-model error fell (docs/latency.md)."""
    if device != "cpu":
        return 1
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return 1
    words = set(flags.split())
    return 16 if "avx512f" in words else 8 if "avx2" in words else 1


def grid_below(c: int) -> int:
    """The largest grid value <= c (grid: 2^k and 3 * 2^(k-1))."""
    k = int(c).bit_length() - 1
    mid = 3 << (k - 1) if k >= 1 else 1
    return mid if mid <= c else 1 << k


def grid_above(c: int) -> int:
    """The smallest grid value >= c."""
    low = grid_below(c)
    if low == c:
        return c
    k = low.bit_length() - 1
    return 3 << (k - 1) if low == 1 << k and k >= 1 else 1 << (k + 1)


def _weights(c: int) -> list[tuple[int, float]]:
    lo, hi = grid_below(c), grid_above(c)
    if lo == hi:
        return [(lo, 1.0)]
    t = (c - lo) / (hi - lo)
    return [(lo, 1.0 - t), (hi, t)]


def padded(c: int, block: int, is_input: bool = False) -> int:
    """The channels a runtime that computes in blocks of `block` channels pays for: c rounded
    up to a multiple of the block (input channels of 4 or fewer, an image's, are read as they
    are). onnxruntime on x86 CPUs runs convs in a blocked layout (NCHWc, 16 channels with
    AVX-512, 8 with AVX2): here a 3x3 conv of 56 channels costs what one of 64 does, and 88
    what 96 does (docs/latency.md), which interpolating between grid rows misses."""
    if block <= 1 or (is_input and c <= 4):
        return c
    return -(-c // block) * block


def corners(layer: Layer, block: int = 1) -> list[tuple[Layer, float]]:
    """The grid layers that price `layer`, with their interpolation weights (sum 1), its
    channels first padded to the runtime's channel block (`padded`)."""
    if block > 1:
        cin, cout = padded(layer.cin, block, True), padded(layer.cout, block)
        if layer.depthwise:
            cout = cin
        if (cin, cout) != (layer.cin, layer.cout) and (layer.groups == 1 or layer.depthwise):
            layer = layer.with_channels(cin, cout)
    if layer.depthwise:
        return [(layer.with_channels(c, c), wt) for c, wt in _weights(layer.cin)]
    if layer.groups != 1:  # other grouped convs: priced only where measured exactly
        return [(layer, 1.0)]
    return [(layer.with_channels(ci, co), wi * wo)
            for ci, wi in _weights(layer.cin) for co, wo in _weights(layer.cout)]


@dataclass(frozen=True)
class Fit:
    """Whole-model terms fitted on measured models: total = scale * sum(layer ms)
    + per_melem * (other elements / 1e6) + per_mweight * (conv weights / 1e6)
    + per_mact * (conv output elements / 1e6) + overhead_ms, per model. (Tables fitted before
    per_mweight or per_mact existed load with 0 for them.)"""

    scale: float = 1.0
    per_melem: float = 0.0
    overhead_ms: float = 0.0
    models: int = 0  # how many measured models the fit used (0: not fitted)
    # A row times its layer in a loop, where the weights stay in cache; inside a model each
    # layer's weights come from memory again (on onnxruntime here 0.6-0.7 ms per M fp32
    # weights, ~6 GB/s; on the same measurements the median error fell from 9.3% to 6.0%).
    per_mweight: float = 0.0
    # Inside a model every layer's output is a fresh activation written to memory and read
    # by the next; a row's loop rewrites one warm buffer. Priced per M conv output elements
    # (detectors.latency.trace.Layer.out_elems); across the published SCRFD models the
    # measured/rows ratio grew with activation size (docs/latency.md). 0 in older tables.
    per_mact: float = 0.0


@dataclass
class LatencyTable:
    runtime: str
    device: str
    threads: int
    input_hw: tuple[int, int]
    versions: dict[str, str] = field(default_factory=dict)
    layers: dict[str, float] = field(default_factory=dict)  # Layer.key -> median ms
    fit: Fit = field(default_factory=Fit)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # measured models
    # The runtime's cost of one call of a trivial layer (ms): every row was timed as its own
    # call (an onnxruntime session.run, a torch module call), which a model pays once, so it
    # is taken off each row when pricing (measured by profiling; 0 for older tables).
    call_ms: float = 0.0
    # Rows are profiled in `passes` passes over all of them, spread in time, and a row is the
    # minimum of its passes: a stall of the machine only ever adds time, and on this
    # project's VM a minute-long slow spell tripled some rows of a one-pass table.
    passes: int = 1
    samples: dict[str, list[float]] = field(default_factory=dict)  # row -> ms of each pass
    # The runtime's channel block (`padded`): layers are priced at their channels rounded up
    # to it. Set when the table is made (channel_block()); 1 prices channels as they are.
    channel_block: int = 1

    def add_sample(self, key: str, ms: float) -> None:
        """Record one pass's ms of row `key`; the row becomes the minimum of its passes."""
        self.samples.setdefault(key, []).append(float(ms))
        self.layers[key] = min(self.samples[key])

    def passes_done(self, key: str) -> int:
        """Passes row `key` has had (a row without samples, from an older table, is complete)."""
        if key in self.samples:
            return len(self.samples[key])
        return self.passes if key in self.layers else 0

    def incomplete(self) -> list[str]:
        """Rows an interrupted profile left with fewer than `passes` passes."""
        return sorted(k for k, v in self.samples.items() if len(v) < self.passes)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise UserError(f"latency runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.device not in DEVICES:
            raise UserError(f"latency device {self.device!r} is not one of {', '.join(DEVICES)}")
        self.input_hw = (int(self.input_hw[0]), int(self.input_hw[1]))

    @property
    def describe(self) -> str:
        h, w = self.input_hw
        return f"{self.runtime}/{self.device}, {self.threads} thread(s), {w}x{h}"

    def check_target(self, runtime: str | None = None, device: str | None = None,
                     where: str = "") -> None:
        """UserError when the table was measured for another runtime or device."""
        for name, want, have in (("runtime", runtime, self.runtime), ("device", device, self.device)):
            if want is not None and want != have:
                raise UserError(f"latency table{' ' + where if where else ''} was profiled for "
                                f"{name} {have!r}, not {want!r}; profile one with --{name} {want}")

    def layer_ms(self, layer: Layer) -> float | None:
        """Interpolated ms of one layer, or None when a grid corner is missing."""
        total = 0.0
        for corner, weight in corners(layer, self.channel_block):
            ms = self.layers.get(corner.key)
            if ms is None:
                return None
            total += weight * ms
        return max(0.0, total - self.call_ms)  # weights sum to 1: the call counted once

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "runtime": self.runtime, "device": self.device,
                "threads": self.threads, "input_hw": list(self.input_hw),
                "versions": self.versions, "fit": asdict(self.fit),
                "calibration": self.calibration, "call_ms": self.call_ms,
                "passes": self.passes, "channel_block": self.channel_block,
                "layers": dict(sorted(self.layers.items())),
                "samples": dict(sorted(self.samples.items()))}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"latency table {path} does not exist "
                            "(make one with `facenas latency profile -o TABLE`)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"latency table {path} is not readable JSON ({err})") from None
        if isinstance(data, dict) and str(data.get("format", "")).startswith("facenas-latency/") \
                and data["format"] != FORMAT:
            raise UserError(f"latency table {path} has format {data['format']!r}, whose rows "
                            f"this version reads differently ({FORMAT!r}); profile it again "
                            "(`facenas latency profile ... -o NEW_TABLE`)")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a facenas latency table (format {FORMAT!r} expected)")
        try:
            table = cls(runtime=data["runtime"], device=data["device"], threads=int(data["threads"]),
                        input_hw=tuple(data["input_hw"]), versions=dict(data.get("versions", {})),
                        layers={str(k): float(v) for k, v in data["layers"].items()},
                        fit=Fit(**data.get("fit", {})), calibration=list(data.get("calibration", [])),
                        call_ms=float(data.get("call_ms", 0.0)), passes=int(data.get("passes", 1)),
                        channel_block=int(data.get("channel_block", 1)),
                        samples={str(k): [float(x) for x in v]
                                 for k, v in data.get("samples", {}).items()})
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"latency table {path} is malformed ({type(err).__name__}: {err})") from None
        for key, ms in table.layers.items():
            if not (math.isfinite(ms) and ms >= 0):
                raise UserError(f"latency table {path}: row {key!r} has latency {ms}")
        return table
