"""EDF numbers by hand; plots draw what they claim (ranges, bars, curves) and write real PNGs."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from analysis.edf import edf_summary, error_edf
from analysis.plots import (plot_computation_bars, plot_edfs, plot_quantities, save_figure)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "spec_id": ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"],
        "ratio_c2": [0.1, 0.3, 0.5], "w1": [16, 32, 48],
        "gflops_stem": [0.1, 0.2, 0.3], "gflops_c2": [0.4, 0.2, 0.1], "gflops_c3": [0.5, 0.6, 0.6],
        "gflops_c4": [0.0, 0.0, 0.0], "gflops_c5": [0.0, 0.0, 0.0],
        "gflops_neck": [0.5, 0.5, 0.5], "gflops_head": [0.5, 0.5, 0.5],
        "ap_hard": [0.5, 0.8, 0.6],
    })


def test_error_edf_by_hand():
    errors, frac = error_edf([0.9, 0.7, np.nan, 0.8])
    np.testing.assert_allclose(errors, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(frac, [1 / 3, 2 / 3, 1.0])
    s = edf_summary([0.9, 0.7, np.nan, 0.8])
    assert s.n == 3 and s.min == pytest.approx(0.1) and s.mean == pytest.approx(0.2)
    assert s.label("run") == "run (n=3, min=0.100, mean=0.200)"
    assert edf_summary([]).n == 0


def test_quantity_panels_shade_the_given_range_and_mark_best(tmp_path):
    ranges = pd.DataFrame({"low": [0.2, 20.0], "best": [0.3, 32.0], "high": [0.4, 40.0],
                           "n_models": 3}, index=pd.Index(["ratio_c2", "w1"], name="quantity"))
    fig = plot_quantities(_table(), ranges, ["ratio_c2", "w1"], "ap_hard", "test")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax, q in zip(axes, ["ratio_c2", "w1"]):
        spans = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(spans) == 1
        x0 = spans[0].get_x()
        assert (x0, x0 + spans[0].get_width()) == pytest.approx((ranges.loc[q, "low"], ranges.loc[q, "high"]))
        assert ax.lines[0].get_xdata()[0] == pytest.approx(ranges.loc[q, "best"])
        offsets = ax.collections[0].get_offsets()
        np.testing.assert_allclose(offsets[:, 0], _table()[q])
        np.testing.assert_allclose(offsets[:, 1], _table()["ap_hard"])
    path = save_figure(fig, tmp_path / "q.png")
    width, height = _png_size(path)
    assert width > 300 and height > 200
    assert [p.name for p in tmp_path.iterdir()] == ["q.png"]  # no temp file left


def test_edf_plot_draws_each_population_as_its_edf(tmp_path):
    pops = {"a": [0.9, 0.7, 0.8], "b": [0.5, 0.6]}
    fig = plot_edfs(pops, "ap_hard")
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    for line, (name, ap) in zip(ax.lines, pops.items()):
        errors, frac = error_edf(ap)
        np.testing.assert_allclose(line.get_xdata(), errors)
        np.testing.assert_allclose(line.get_ydata(), frac)
        assert line.get_label().startswith(f"{name} (n={len(ap)}")
    assert _png_size(save_figure(fig, tmp_path / "edf.png"))[0] > 200


def test_computation_bars_are_shares_of_the_best_specs(tmp_path):
    fig = plot_computation_bars(_table(), "ap_hard", top_k=2)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 2 * 7  # two specs x seven components
    # Top spec is b (AP 0.8, drawn at the top, y=1): stem 0.2 of 2.0 GFLOPs, c2 0.2, c3 0.6 ...
    top = sorted((b for b in bars if b.get_y() + b.get_height() / 2 == pytest.approx(1.0)),
                 key=lambda b: b.get_x())
    np.testing.assert_allclose([b.get_width() for b in top],
                               [0.1, 0.1, 0.3, 0.0, 0.0, 0.25, 0.25])
    labels = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    assert labels[1].startswith("bbbbbbbb") and "0.800" in labels[1]
    assert labels[0].startswith("cccccccc") and "0.600" in labels[0]
    assert _png_size(save_figure(fig, tmp_path / "bars.png"))[1] > 100
