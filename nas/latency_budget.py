"""`--latency-ms L --latency-table TABLE`: a search budget in measured milliseconds.

Every space reads the same resolved entry, `search["latency"]`:

    {"ms": L, "tolerance": t, "table": "/abs/path.json", "runtime": ..., "device": ...,
     "threads": ..., "input_hw": [H, W]}

A spec meets it when its predicted latency (detectors.latency) lies in [L (1 - t), L]: at most
L, and near it, so that a search compares models at the budget as `--gflops` does (t = 0.1 by
default; a latency model's error on CPUs is of that order). With `--gflops` as well, a spec
must meet both. Rows of a latency search carry the predicted `latency_ms`, and its exports
record their latency measured on the table's target at export time (`export_latency`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from detectors.errors import UserError

__all__ = ["resolve_latency", "latency_columns", "band", "table_of", "export_latency",
           "header_line", "write_export_latency", "EXPORT_RECORD", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 0.1
EXPORT_RECORD = "latency.json"  # in RUN_DIR/export/, beside the exported configs


def resolve_latency(ms: float | None, table: str | None, tolerance: float | None = None,
                    runtime: str | None = None, device: str | None = None) -> dict[str, Any] | None:
    """The resolved entry (plain data), or None without a latency budget; one-line errors."""
    if ms is None and table is None:
        return None
    if ms is None or table is None:
        raise UserError("--latency-ms and --latency-table go together (the budget and the "
                        "device's measured table, from `facenas latency profile`)")
    if not ms > 0:
        raise UserError(f"--latency-ms must be positive, got {ms}")
    tol = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if not 0 < tol < 1:
        raise UserError(f"--latency-tolerance must be in (0, 1), got {tol}")
    path = Path(table).resolve()
    t = table_of(str(path))
    t.check_target(runtime, device, where=str(table))
    return {"ms": float(ms), "tolerance": tol, "table": str(path), "runtime": t.runtime,
            "device": t.device, "threads": t.threads, "input_hw": list(t.input_hw)}


@functools.lru_cache(maxsize=4)
def table_of(path: str):
    from detectors.latency.table import LatencyTable

    return LatencyTable.load(path)


def band(entry: dict[str, Any]) -> tuple[float, float]:
    return entry["ms"] * (1 - entry["tolerance"]), entry["ms"]


def latency_columns(search: dict[str, Any], spec) -> dict[str, float]:
    """{"latency_ms": predicted} for a latency search's row; {} otherwise."""
    entry = search.get("latency")
    if not entry:
        return {}
    from detectors.latency import latency

    try:
        return {"latency_ms": latency(spec, table_of(entry["table"])).total_ms}
    except UserError:  # a row is never lost to a table that lacks a layer
        return {"latency_ms": float("nan")}


def export_latency(search: dict[str, Any], spec) -> dict[str, Any] | None:
    """A latency search's record of one exported spec: its latency measured now on the
    table's runtime, device, threads and input (detectors.latency.measure.measure_spec, the
    table's own timing) beside the predicted one; None without a latency budget."""
    entry = search.get("latency")
    if not entry:
        return None
    from detectors.latency import latency
    from detectors.latency.measure import measure_spec

    hw = (int(entry["input_hw"][0]), int(entry["input_hw"][1]))
    try:
        predicted = latency(spec, table_of(entry["table"])).total_ms
    except UserError:  # the export is not lost to a table that lacks a layer
        predicted = None
    try:
        measured, why = measure_spec(spec, hw, entry["runtime"], entry["device"],
                                     int(entry["threads"])), None
    except (UserError, RuntimeError) as err:  # e.g. a CUDA table exported on a CPU machine
        measured, why = None, f"not measured here: {err}"
    record = {"spec_id": spec.id, "name": spec.name, "measured_ms": measured,
              "predicted_ms": predicted, "runtime": entry["runtime"], "device": entry["device"],
              "threads": int(entry["threads"]), "input": f"{hw[1]}x{hw[0]}",
              "table": entry["table"]}
    return record if why is None else {**record, "error": why}


def header_line(record: dict[str, Any]) -> str:
    """The exported config's comment line for its record."""
    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    return (f"# latency: measured {ms(record['measured_ms'])} ms (predicted "
            f"{ms(record['predicted_ms'])} ms) on {record['runtime']}/{record['device']}, "
            f"{record['threads']} thread(s), {record['input']}\n")


def write_export_latency(out_dir: Path, records: dict[str, dict[str, Any]]) -> Path | None:
    """RUN_DIR/export/latency.json: exported file name -> its record (atomically); a stale
    record of an earlier export is removed when this one has none."""
    import json

    from nas.results import atomic_write_text

    path = Path(out_dir) / EXPORT_RECORD
    if not records:
        path.unlink(missing_ok=True)
        return None
    atomic_write_text(path, json.dumps(records, indent=1, sort_keys=True) + "\n")
    return path
