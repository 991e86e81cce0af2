"""Profiling a latency table: measure the grid layers some specs need, then fit the
whole-model terms on measured models (`facenas latency profile`).

Resumable: the table is saved (atomically) every few rows, and a rerun measures only the rows
it lacks; the calibration models are measured again only when new rows were added or the fit
is missing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from detectors.latency import latency, missing_layers
from detectors.latency.measure import Timing, measure_layer, measure_spec
from detectors.latency.table import Fit, LatencyTable
from detectors.latency.trace import Layer, conv_weights
from detectors.spec import DetectorSpec

__all__ = ["needed_rows", "profile_layers", "calibrate", "calibration_row", "fit_terms",
           "fit_warning"]


def needed_rows(specs: Iterable[DetectorSpec], table: LatencyTable) -> list[str]:
    """The grid rows these specs need that the table lacks, and the rows an interrupted
    profile left with fewer passes than the table's (sorted, so reruns agree)."""
    keys: set[str] = set(table.incomplete())
    for spec in specs:
        keys.update(key for _, key in missing_layers(spec, table))
    return sorted(keys)


def profile_layers(table: LatencyTable, keys: Sequence[str], path: Path, timing: Timing = Timing(),
                   save_every_s: float = 10.0, progress: bool = True, legacy: bool = False) -> int:
    """Measure rows `keys` into `table` in `table.passes` passes over all of them (a row is
    the minimum of its passes; table.py), saving it to `path` as it goes; returns rows
    measured. `legacy`: rows timed as format 1 did (benchmarks/latency_model.py)."""
    from tqdm import tqdm

    from detectors.latency.measure import measure_call

    last, touched = time.monotonic(), set()
    if keys and not table.call_ms:
        table.call_ms = measure_call(table.runtime, table.device, table.threads,
                                     Timing(warmup=5, min_reps=50, min_seconds=0.5, max_reps=2000),
                                     legacy)
    todo = [(p, key) for p in range(table.passes) for key in keys if table.passes_done(key) <= p]
    for p, key in tqdm(todo, desc=f"latency layers ({table.passes} passes)", unit="row",
                       disable=not progress, file=sys.stderr):
        table.add_sample(key, measure_layer(Layer.from_key(key), table.runtime, table.device,
                                            table.threads, timing, legacy))
        touched.add(key)
        if time.monotonic() - last > save_every_s:
            table.save(path)
            last = time.monotonic()
    table.save(path)
    return len(touched)


def fit_terms(rows: Sequence[dict]) -> Fit:
    """Non-negative least squares of measured ms on (layer ms, other Melems, M weights, M conv
    output elements, 1) over models (3-7 models: on (layer ms, 1)); fewer than 3 models, or a
    fit without the layers: scale 1 and the median of measured - layers as the overhead. Rows
    without "mweights" or "macts" (calibrations saved before those terms) count 0."""
    from scipy.optimize import nnls

    if not rows:
        return Fit()
    measured = np.array([r["measured_ms"] for r in rows])
    raw = np.array([r["layers_ms"] for r in rows])
    melems = np.array([r["other_melems"] for r in rows])
    mweights = np.array([r.get("mweights", 0.0) for r in rows])
    macts = np.array([r.get("macts", 0.0) for r in rows])
    overhead_only = Fit(1.0, 0.0, float(max(0.0, np.median(measured - raw))), len(rows))
    if len(rows) < 3:
        return overhead_only
    # Fit relative errors (the goal is a % error): each model's row is scaled by 1/measured.
    # Under 8 models: scale and overhead only (four terms would chase the noise).
    full = len(rows) >= 8
    cols = [raw, melems, mweights, macts, np.ones_like(raw)] if full else [raw, np.ones_like(raw)]
    coef, _ = nnls(np.stack(cols, 1) / measured[:, None], np.ones_like(measured))
    if coef[0] <= 0:  # a fit that ignores the layers is no latency model: keep the plain sum
        return overhead_only
    scale, overhead = float(coef[0]), float(coef[-1])
    return Fit(scale, float(coef[1]) if full else 0.0, overhead, len(rows),
               float(coef[2]) if full else 0.0, float(coef[3]) if full else 0.0)


def fit_warning(fit: Fit) -> str | None:
    """A line for a fit whose layer scale is implausible: rows and whole models measured under
    different load. Quiet profiles here fit 0.8-1.2; one made while a test suite ran on the
    same cores fit 0.23 with an 11 ms overhead, a table that prices the layers at a quarter."""
    if fit.models < 3 or 0.5 <= fit.scale <= 2.0:
        return None
    return (f"warning: the fit prices layers at {fit.scale:.2f}x their table rows: rows and "
            "whole models were timed under different load (was the machine busy?); profile "
            "again into a new file on a quiet machine")


def calibration_row(spec: DetectorSpec, table: LatencyTable, measured_ms: float) -> dict:
    """One measured model as fit_terms reads it: its raw layer sum on `table` (before any fit),
    its other elements, conv weights read and conv output elements (millions), and its
    measured ms."""
    from detectors.latency.trace import trace

    comps = trace(spec, table.input_hw).values()
    elems = sum(c.other_elems for c in comps)
    acts = sum(t * layer.out_elems for c in comps for layer, t in c.layers)
    return {"name": spec.name, "spec_id": spec.id, "layers_ms": latency(spec, table).layers_ms,
            "other_melems": elems / 1e6, "mweights": conv_weights(spec, table.input_hw) / 1e6,
            "macts": acts / 1e6, "measured_ms": measured_ms}


def calibrate(table: LatencyTable, specs: Sequence[DetectorSpec], path: Path,
              timing: Timing = Timing(), progress: bool = True) -> Fit:
    """Measure whole models (each the minimum of `table.passes` rounds over all of them, as
    rows are), fit the table's whole-model terms, save; returns the fit."""
    from tqdm import tqdm

    rounds = max(1, table.passes)
    measured = [float("inf")] * len(specs)
    for i in tqdm([i for _ in range(rounds) for i in range(len(specs))], desc="latency models",
                  unit="model", disable=not progress, file=sys.stderr):
        measured[i] = min(measured[i], measure_spec(specs[i], table.input_hw, table.runtime,
                                                    table.device, table.threads, timing))
    rows = [calibration_row(spec, table, ms) for spec, ms in zip(specs, measured)]
    table.calibration = rows
    table.fit = fit_terms(rows)
    table.save(path)
    return table.fit
