"""Empirical bootstrap of where the best models fall (RegNet design-space analysis, SCRFD §4.2).

Each of B resamples draws max(1, round(frac * n)) models with replacement from the n successful
trials and keeps the one with the highest metric (the "winner"). For every quantity (a
computation ratio, a width, a depth, ...) the 2.5th / 50th / 97.5th percentiles of the winners'
values are the likely range (low, high) and the best value. All B resamples are drawn in one
(B, k) index array, so 2,500 x 320 takes milliseconds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.tables import atomic_path, ok_rows, present_quantities

__all__ = ["bootstrap_ranges", "bootstrap_winners", "write_ranges_csv", "read_ranges_csv",
           "RANGE_COLUMNS"]

RANGE_COLUMNS = ["quantity", "low", "best", "high", "n_models"]
PERCENTILES = (2.5, 50.0, 97.5)


def bootstrap_winners(metric_values: np.ndarray, n_boot: int = 2500, frac: float = 0.25,
                      seed: int = 0) -> np.ndarray:
    """Row index of the winner of each resample, shape (n_boot,).

    metric_values: (n,) finite metric per model (higher is better). Resample b draws
    k = max(1, round(frac * n)) indices with `np.random.default_rng(seed).integers(0, n,
    (n_boot, k))` (row b = resample b); ties go to the first drawn.
    """
    if int(n_boot) < 1:
        raise AnalysisError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < float(frac) <= 1.0:
        raise AnalysisError(f"frac must be in (0, 1], got {frac}")
    values = np.asarray(metric_values, dtype=float)
    n = values.shape[0]
    k = max(1, round(frac * n))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(int(n_boot), k))
    best = np.argmax(values[draws], axis=1)
    return draws[np.arange(draws.shape[0]), best]


def _numeric(frame: pd.DataFrame) -> np.ndarray:
    """(n, q) float array; non-numeric entries become NaN."""
    if all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        return frame.to_numpy(dtype=float)
    return frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def bootstrap_ranges(table: pd.DataFrame, metric: str = "ap_hard",
                     quantities: list[str] | None = None, n_boot: int = 2500,
                     frac: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Likely range and best value of each quantity among the best models.

    table: a results table (docs/architecture.md); only rows with status 'ok' and a finite
    `metric` take part. quantities: column names (default: the standard ratios, widths, depths,
    n, h, m present in the table). Returns a DataFrame indexed by quantity with columns
    low (2.5th pct), best (50th), high (97.5th) of the winners' values and n_models (the number
    of models bootstrapped). A quantity missing for a winner (NaN) is left out of its percentiles.
    """
    rows = ok_rows(table, metric)
    names = present_quantities(rows, quantities)
    winners = bootstrap_winners(rows[metric].to_numpy(dtype=float), n_boot, frac, seed)
    values = _numeric(rows[names])[winners]
    if not names:
        low = best = high = []
    elif np.isnan(values).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN
            low, best, high = np.nanpercentile(values, PERCENTILES, axis=0)
    else:  # the common case; np.percentile is several times faster than nanpercentile
        low, best, high = np.percentile(values, PERCENTILES, axis=0)
    ranges = pd.DataFrame({"low": low, "best": best, "high": high,
                           "n_models": len(rows)}, index=pd.Index(names, name="quantity"))
    ranges.attrs = {"metric": metric, "n_boot": int(n_boot), "frac": float(frac), "seed": seed}
    return ranges


def write_ranges_csv(ranges: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ranges as CSV (columns quantity, low, best, high, n_models), atomically."""
    path = Path(path)
    frame = ranges.reset_index() if "quantity" not in ranges.columns else ranges
    frame = frame[RANGE_COLUMNS]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        frame.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_ranges_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ranges CSV back: indexed by quantity, columns low, best, high, n_models."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"ranges file {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except Exception as err:  # empty or garbled file
        raise AnalysisError(f"{path}: cannot read ranges CSV ({type(err).__name__})") from None
    missing = [c for c in RANGE_COLUMNS[:4] if c not in frame.columns]
    if missing:
        raise AnalysisError(f"{path}: ranges CSV lacks column(s) {', '.join(missing)}")
    for col in ("low", "best", "high"):
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise AnalysisError(f"{path}: column '{col}' must be numeric")
    return frame.set_index("quantity")
