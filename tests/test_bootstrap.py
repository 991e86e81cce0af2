"""The empirical bootstrap against truth known by construction and independent implementations."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from analysis.bootstrap import (bootstrap_ranges, bootstrap_winners, read_ranges_csv,
                                write_ranges_csv)
from analysis.errors import AnalysisError


def _peaked_table(n: int, seed: int, optimum: float = 0.30, noise: float = 0.002) -> pd.DataFrame:
    """AP peaks where ratio_c2 == optimum (plus Gaussian noise); `unrelated` has no bearing on AP."""
    rng = np.random.default_rng(seed)
    c2 = rng.uniform(0.0, 0.6, n)
    return pd.DataFrame({
        "spec_id": [f"s{i}" for i in range(n)],
        "status": "ok",
        "ratio_c2": c2,
        "unrelated": rng.uniform(0.0, 1.0, n),
        "ap_hard": 0.80 - 2.0 * (c2 - optimum) ** 2 + rng.normal(0.0, noise, n),
    })


def _loop_winners_numpy(ap: np.ndarray, n_boot: int, frac: float, seed: int) -> np.ndarray:
    """Same draws as the vectorised code (row b = resample b), one resample at a time."""
    rng = np.random.default_rng(seed)
    k = max(1, round(frac * len(ap)))
    winners = []
    for _ in range(n_boot):
        subset = rng.integers(0, len(ap), size=k)
        best, best_ap = subset[0], ap[subset[0]]
        for i in subset[1:]:
            if ap[i] > best_ap:
                best, best_ap = i, ap[i]
        winners.append(best)
    return np.array(winners)


def _loop_ranges_stdlib(ap, values, n_boot, frac, seed):
    """A second, independent bootstrap: stdlib random, sort-based percentiles (linear)."""
    rng = random.Random(seed)
    n = len(ap)
    k = max(1, round(frac * n))
    picked = []
    for _ in range(n_boot):
        subset = [rng.randrange(n) for _ in range(k)]
        picked.append(values[max(subset, key=lambda i: ap[i])])
    picked.sort()

    def pct(p):  # numpy's default "linear" definition, by hand
        pos = p / 100 * (len(picked) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(picked) - 1)
        return picked[lo] + (picked[hi] - picked[lo]) * (pos - lo)

    return pct(2.5), pct(50), pct(97.5)


def test_range_contains_optimum_and_narrows_with_population():
    widths = {}
    for n in (80, 640):
        # Averaged over a few tables: one table's width is itself a noisy number.
        ranges = [bootstrap_ranges(_peaked_table(n, seed=s, noise=0.0005),
                                   quantities=["ratio_c2"]).loc["ratio_c2"] for s in range(4)]
        for r in ranges:
            assert r.low <= 0.30 <= r.high
            assert abs(r.best - 0.30) < 0.03
            assert r.n_models == n
        widths[n] = np.mean([r.high - r.low for r in ranges])
    assert widths[640] < 0.6 * widths[80], widths


def test_unrelated_quantity_gets_a_wide_range():
    table = _peaked_table(640, seed=3)
    ranges = bootstrap_ranges(table, quantities=["ratio_c2", "unrelated"])
    lo, hi = np.percentile(table["unrelated"], [2.5, 97.5])
    width_unrelated = ranges.loc["unrelated", "high"] - ranges.loc["unrelated", "low"]
    width_c2 = ranges.loc["ratio_c2", "high"] - ranges.loc["ratio_c2", "low"]
    # Winners are the few top models, so the spread is that of a small random sample of a
    # U(0, 1) population: wide, though not the full population spread.
    assert width_unrelated > 0.5 * (hi - lo)
    assert width_unrelated > 5 * width_c2


def test_vectorised_winners_equal_a_loop_with_the_same_draws():
    ap = _peaked_table(320, seed=4)["ap_hard"].to_numpy()
    for frac, n_boot in ((0.25, 500), (0.1, 300), (1.0, 50)):
        expected = _loop_winners_numpy(ap, n_boot, frac, seed=7)
        assert np.array_equal(bootstrap_winners(ap, n_boot, frac, seed=7), expected)


def test_agrees_with_stdlib_bootstrap_within_monte_carlo_error():
    table = _peaked_table(320, seed=5)
    ap = table["ap_hard"].tolist()
    ours = [bootstrap_ranges(table, quantities=["ratio_c2", "unrelated"], seed=s)
            for s in range(12)]
    for q in ("ratio_c2", "unrelated"):
        stacked = np.array([r.loc[q, ["low", "best", "high"]].to_numpy(float) for r in ours])
        mc_sd = stacked.std(axis=0, ddof=1)  # spread between seeds = Monte-Carlo error
        theirs = np.array(_loop_ranges_stdlib(ap, table[q].tolist(), 2500, 0.25, seed=99))
        tol = 4 * np.sqrt(mc_sd**2 + mc_sd**2 / len(ours)) + 1e-9
        assert np.all(np.abs(stacked.mean(axis=0) - theirs) <= tol), (q, stacked.mean(0), theirs)


def test_only_ok_rows_with_finite_metric_take_part():
    table = _peaked_table(100, seed=6)
    bad = pd.DataFrame({"spec_id": ["f", "nan"], "status": ["failed", "ok"],
                        "ratio_c2": [0.59, 0.58], "unrelated": [0.5, 0.5],
                        "ap_hard": [0.99, np.nan]})
    ranges = bootstrap_ranges(pd.concat([table, bad], ignore_index=True), quantities=["ratio_c2"])
    clean = bootstrap_ranges(table, quantities=["ratio_c2"])
    assert ranges.loc["ratio_c2", "n_models"] == 100
    pd.testing.assert_frame_equal(ranges, clean)


def test_seeded_and_default_quantities():
    table = _peaked_table(50, seed=8).rename(columns={"unrelated": "w1"})
    a, b = bootstrap_ranges(table, seed=3), bootstrap_ranges(table, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.index) == ["ratio_c2", "w1"]  # defaults present, in the standard order
    assert list(a.columns) == ["low", "best", "high", "n_models"]
    assert (a["low"] <= a["best"]).all() and (a["best"] <= a["high"]).all()


def test_missing_values_are_left_out_of_the_percentiles():
    table = _peaked_table(200, seed=11)
    table["half"] = np.where(np.arange(200) % 2 == 0, table["unrelated"], np.nan)
    table["none"] = np.nan
    table["text"] = table["ratio_c2"].map(lambda v: f"{v:.6f}")  # numbers stored as text
    ranges = bootstrap_ranges(table, quantities=["half", "none", "text", "ratio_c2"])
    winners = bootstrap_winners(table["ap_hard"].to_numpy())
    half = table["half"].to_numpy()[winners]
    expected = np.percentile(half[~np.isnan(half)], [2.5, 50, 97.5])
    np.testing.assert_allclose(ranges.loc["half", ["low", "best", "high"]].to_numpy(float), expected)
    assert ranges.loc["none", ["low", "best", "high"]].isna().all()
    np.testing.assert_allclose(ranges.loc["text", ["low", "best", "high"]].to_numpy(float),
                               ranges.loc["ratio_c2", ["low", "best", "high"]].to_numpy(float),
                               atol=1e-6)


def test_single_model_is_its_own_range():
    table = pd.DataFrame({"status": ["ok"], "ratio_c2": [0.4], "ap_hard": [0.5]})
    r = bootstrap_ranges(table).loc["ratio_c2"]
    assert (r.low, r.best, r.high, r.n_models) == (0.4, 0.4, 0.4, 1)


@pytest.mark.parametrize("table, kwargs, words", [
    (pd.DataFrame(columns=["status", "ap_hard", "ratio_c2"]), {}, "empty"),
    (pd.DataFrame({"status": ["ok"], "ratio_c2": [0.3]}), {}, "ap_hard"),
    (pd.DataFrame({"status": ["failed"], "ratio_c2": [0.3], "ap_hard": [0.5]}), {}, "'ok'"),
    (pd.DataFrame({"status": ["ok"], "ratio_c2": [0.3], "ap_hard": [0.5]}),
     {"quantities": ["ratio_c9"]}, "ratio_c9"),
    (pd.DataFrame({"status": ["ok"], "ratio_c2": [0.3], "ap_hard": [0.5]}), {"n_boot": 0}, "n_boot"),
    (pd.DataFrame({"status": ["ok"], "ratio_c2": [0.3], "ap_hard": [0.5]}), {"frac": 1.5}, "frac"),
])
def test_bad_inputs_are_user_errors(table, kwargs, words):
    with pytest.raises(AnalysisError, match=words):
        bootstrap_ranges(table, **kwargs)


def test_ranges_csv_round_trip_is_atomic(tmp_path):
    ranges = bootstrap_ranges(_peaked_table(60, seed=9), quantities=["ratio_c2", "unrelated"])
    path = write_ranges_csv(ranges, tmp_path / "sub" / "ranges.csv")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ranges.csv"]  # no temp left
    assert path.read_text().splitlines()[0] == "quantity,low,best,high,n_models"
    back = read_ranges_csv(path)
    np.testing.assert_allclose(back[["low", "best", "high"]], ranges[["low", "best", "high"]],
                               rtol=1e-5)
    (tmp_path / "broken.csv").write_text("quantity,low\nratio_c2,0.1\n")
    with pytest.raises(AnalysisError, match="broken.csv"):
        read_ranges_csv(tmp_path / "broken.csv")
    with pytest.raises(AnalysisError, match="does not exist"):
        read_ranges_csv(tmp_path / "nope.csv")


def test_analysis_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, analysis.bootstrap, analysis.edf, analysis.plots, analysis.report, "
            "analysis.tables, nas.commands.analyze; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
