"""Loading and validating search results tables (one row per trial).

The columns are fixed in docs/architecture.md ("Results table"); this module only reads them.
Every mistake in what the user points us at (missing run dir, empty table, unknown metric, no
successful trial) is an `AnalysisError` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

__all__ = [
    "DEFAULT_QUANTITIES",
    "BACKBONE_RATIOS",
    "DETECTOR_RATIOS",
    "COMPONENTS",
    "find_table",
    "load_results",
    "ok_rows",
    "present_quantities",
    "SHAPES",
    "atomic_path",
]

# Computation shares of the backbone (SCRFD Fig. 5/6) and of the whole detector (Fig. 9).
BACKBONE_RATIOS = ["ratio_stem", "ratio_c2", "ratio_c3", "ratio_c4", "ratio_c5", "ratio_shallow"]
DETECTOR_RATIOS = ["ratio_backbone", "ratio_neck", "ratio_head"]
SHAPES = ["w1", "w2", "w3", "w4", "d1", "d2", "d3", "d4", "n", "h", "m"]
DEFAULT_QUANTITIES = BACKBONE_RATIOS + DETECTOR_RATIOS + SHAPES
# Components whose GFLOPs add up to the detector's (gflops_<name> columns).
COMPONENTS = ["stem", "c2", "c3", "c4", "c5", "neck", "head"]

_TABLE_NAMES = ("trials.parquet", "trials.csv")


def find_table(run: str | os.PathLike) -> Path:
    """The results file of a run: RUN_DIR/trials.parquet, else RUN_DIR/trials.csv, or a file."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.exists():
        raise AnalysisError(f"run directory {path} does not exist")
    for name in _TABLE_NAMES:
        if (path / name).is_file():
            return path / name
    raise AnalysisError(f"{path} holds no results table (expected {' or '.join(_TABLE_NAMES)})")


def load_results(run: str | os.PathLike) -> pd.DataFrame:
    """Read a run's results table (a run directory or a .parquet/.csv file).

    Raises AnalysisError when the run or its table is missing, unreadable or has no rows.
    """
    path = find_table(run)
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        elif path.suffix == ".csv":
            table = pd.read_csv(path)
        else:
            raise AnalysisError(f"{path}: results table must be .parquet or .csv")
    except AnalysisError:
        raise
    except Exception as err:  # pandas/pyarrow raise many types for a corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnalysisError(f"{path}: cannot read results table ({first})") from None
    if table.empty:
        raise AnalysisError(f"{path}: results table is empty (no trials recorded)")
    table.attrs["source"] = str(path)
    return table


def _where(table: pd.DataFrame) -> str:
    return table.attrs.get("source", "results table")


def ok_rows(table: pd.DataFrame, metric: str = "ap_hard", include_stopped: bool = False) -> pd.DataFrame:
    """Rows with status 'ok' and a finite `metric` (all rows if there is no status column);
    include_stopped also keeps rows an early-stopping scheduler stopped ('stopped': their
    metric is the one at the last rung they reached).

    Raises AnalysisError when the metric column is missing or no row qualifies.
    """
    where = _where(table)
    if table.empty:
        raise AnalysisError(f"{where}: results table is empty (no trials recorded)")
    if metric not in table.columns:
        aps = [c for c in table.columns if str(c).startswith("ap_")]
        hint = f"; metric columns present: {', '.join(aps)}" if aps else ""
        raise AnalysisError(f"{where}: no column '{metric}' for the metric{hint}")
    values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(values)
    if "status" in table.columns:
        wanted = ["ok", "stopped"] if include_stopped else ["ok"]
        keep &= table["status"].astype(str).isin(wanted).to_numpy()
    if not keep.any():
        raise AnalysisError(f"{where}: no trial with status 'ok' and a finite '{metric}'")
    rows = table.loc[keep].copy()
    rows[metric] = values[keep]
    rows.attrs = dict(table.attrs)
    return rows


def present_quantities(table: pd.DataFrame, quantities: list[str] | None = None) -> list[str]:
    """The quantities to analyse: the given ones (all must exist) or the defaults present."""
    if quantities is None:
        return [q for q in DEFAULT_QUANTITIES if q in table.columns]
    missing = [q for q in quantities if q not in table.columns]
    if missing:
        raise AnalysisError(f"{_where(table)}: no column(s) {', '.join(missing)} to bootstrap")
    return list(quantities)


def atomic_path(path: Path) -> Path:
    """A temporary name beside `path` (same directory, same suffix) to write then os.replace."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
