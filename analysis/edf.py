"""Error empirical distribution functions (RegNet design-space comparison).

The EDF of a population's errors e_i = 1 - AP_i is F(e) = fraction of models with error <= e:
a curve further up and to the left means a population with more good models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EdfSummary", "error_edf", "edf_summary"]


@dataclass(frozen=True)
class EdfSummary:
    """n models, lowest and mean error (1 - AP) of a population."""

    n: int
    min: float
    mean: float

    def label(self, name: str) -> str:
        return f"{name} (n={self.n}, min={self.min:.3f}, mean={self.mean:.3f})"


def _errors(ap) -> np.ndarray:
    values = np.asarray(ap, dtype=float).ravel()
    return 1.0 - values[np.isfinite(values)]


def error_edf(ap) -> tuple[np.ndarray, np.ndarray]:
    """Sorted errors and their cumulative fractions.

    ap: (n,) APs in [0, 1] (non-finite values dropped). Returns (errors, fraction), both (m,)
    for the m finite values: errors ascending, fraction[i] = (i + 1) / m.
    """
    errors = np.sort(_errors(ap))
    return errors, np.arange(1, errors.size + 1) / max(errors.size, 1)


def edf_summary(ap) -> EdfSummary:
    """n, min and mean of the errors 1 - AP (finite values only)."""
    errors = _errors(ap)
    if errors.size == 0:
        return EdfSummary(0, float("nan"), float("nan"))
    return EdfSummary(int(errors.size), float(errors.min()), float(errors.mean()))
