"""Search results -> retraining configs: RUN_DIR/export/<rank>_<spec_id>.yaml.

Each exported file is a retraining config in detectors.config's format (`spec:` mapping plus
the preset's `retrain_recipe`, the paper's full schedule), so `facenas train FILE` accepts it
unchanged. Ranks count from 1 (best `metric` first) among trials with status 'ok'.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from detectors.errors import UserError
from detectors.spec import DetectorSpec
from nas.results import RunStore, atomic_write_text, best_first

__all__ = ["export_top"]

_METRICS = ("ap_easy", "ap_medium", "ap_hard")


def export_top(run_dir: str | Path, top: int = 5, metric: str = "ap_hard") -> list[Path]:
    """Write the `top` best specs of a run as retraining configs; returns their paths."""
    from detectors.config import load_config
    from nas.latency_budget import export_latency, header_line, write_export_latency

    if metric not in _METRICS:
        raise UserError(f"unknown metric {metric!r}; valid: {', '.join(_METRICS)}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    store = RunStore(run_dir)
    search = store.read_config()["search"]
    table = store.read_table()
    if table is None or table.empty:
        raise UserError(f"{store.run_dir}: no trials recorded yet (no trials.parquet)")
    ok = table[(table["status"] == "ok") & table[metric].map(lambda v: math.isfinite(v))]
    if ok.empty:
        raise UserError(f"{store.run_dir}: no successful trial to export")
    best = best_first(ok, metric).head(top)
    out_dir = store.run_dir / "export"
    paths, latencies = [], {}
    for rank, row in enumerate(best.to_dict("records"), start=1):
        spec = DetectorSpec.from_yaml(row["spec_yaml"])
        path = out_dir / f"{rank}_{spec.id}.yaml"
        header = (f"# rank {rank} of {store.run_dir.name} by {metric} = {row[metric]:.4f} "
                  f"(step {row['step']}, {row['gflops']:.3f} VGA GFLOPs)\n")
        record = export_latency(search, spec)  # a latency search: measured at export time
        if record is not None:
            latencies[path.name] = record
            header += header_line(record)
        body = yaml.safe_dump({"spec": spec.to_dict(), "recipe": search["retrain_recipe"]},
                              sort_keys=False)
        atomic_write_text(path, header + body)
        load_config(path)  # what `facenas train` will read; a failure here is a bug
        paths.append(path)
    write_export_latency(out_dir, latencies)
    for stale in set(out_dir.glob("*_*.yaml")) - set(paths):  # from an earlier export
        stale.unlink()
    return paths

