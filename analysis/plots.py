"""Design-space plots (matplotlib, PNG): AP vs quantity with the likely range, error EDFs,
computation distribution of the best specs. One style, sized for a paper column.

Functions build and return a `matplotlib.figure.Figure` (no pyplot state, safe in threads and
notebooks); `save_figure` writes it atomically as PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.edf import edf_summary, error_edf
from analysis.tables import COMPONENTS, atomic_path

__all__ = ["STYLE", "quantity_label", "plot_quantity", "plot_quantities", "plot_edfs",
           "plot_flops_vs_latency",
           "plot_computation_bars", "save_figure"]

STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.dpi": 150, "figure.dpi": 100,
}
PANEL = (2.5, 2.2)  # inches per panel: five across fits a two-column paper figure
POINT_COLOR, RANGE_COLOR, BEST_COLOR = "#4c72b0", "#dd8452", "#c44e52"
COMPONENT_COLORS = dict(zip(COMPONENTS, ["#8c8c8c", "#4c72b0", "#55a868", "#c44e52", "#8172b3",
                                         "#ccb974", "#64b5cd"]))

_LABELS = {
    "ratio_stem": ("stem", "share of backbone GFLOPs"),
    "ratio_c2": ("C2", "share of backbone GFLOPs"),
    "ratio_c3": ("C3", "share of backbone GFLOPs"),
    "ratio_c4": ("C4", "share of backbone GFLOPs"),
    "ratio_c5": ("C5", "share of backbone GFLOPs"),
    "ratio_shallow": ("shallow (stem+C2+C3)", "share of backbone GFLOPs"),
    "ratio_backbone": ("backbone", "share of detector GFLOPs"),
    "ratio_neck": ("neck", "share of detector GFLOPs"),
    "ratio_head": ("head", "share of detector GFLOPs"),
    "n": ("neck channels n", "channels"), "h": ("head channels h", "channels"),
    "m": ("head convs m", "3x3 convs"),
}
_LABELS.update({f"w{i}": (f"stage {i} width w{i}", "channels") for i in range(1, 5)})
_LABELS.update({f"d{i}": (f"stage {i} depth d{i}", "blocks") for i in range(1, 5)})


def quantity_label(quantity: str) -> tuple[str, str]:
    """(title, axis label) of a quantity; unknown names are shown as they are."""
    return _LABELS.get(quantity, (quantity, quantity))


def _short(value: float) -> str:
    if float(value).is_integer() or abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}"


def plot_quantity(ax, rows: pd.DataFrame, quantity: str, metric: str,
                  likely: pd.Series | None = None) -> None:
    """AP vs value scatter on `ax`; `likely` (low, best, high) shades the range, marks best."""
    title, xlabel = quantity_label(quantity)
    ax.scatter(rows[quantity], rows[metric], s=7, alpha=0.6, color=POINT_COLOR, linewidths=0)
    if likely is not None and np.isfinite(likely["best"]):
        ax.axvspan(likely["low"], likely["high"], color=RANGE_COLOR, alpha=0.25, lw=0)
        ax.axvline(likely["best"], color=BEST_COLOR, lw=1.2)
        low, best, high = (_short(likely[k]) for k in ("low", "best", "high"))
        title += f"\nbest {best}, range {low}–{high}"
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)


def plot_quantities(rows: pd.DataFrame, ranges: pd.DataFrame | None, quantities: Sequence[str],
                    metric: str, title: str | None = None, ncols: int = 5) -> Figure:
    """A grid of `plot_quantity` panels (as SCRFD Fig. 5/9), one per quantity.

    Points: one model each (n in the caption); shaded: the likely range of the best models
    (2.5-97.5th bootstrap percentiles); line: the best value (median).
    """
    with matplotlib.rc_context(STYLE):
        nrows = max(1, -(-len(quantities) // ncols))  # fewest rows, then balanced columns
        ncols = max(1, -(-len(quantities) // nrows))
        # Fixed margins in inches instead of constrained layout: half the rendering time.
        width, height = PANEL[0] * ncols, PANEL[1] * nrows + 0.45
        fig = Figure(figsize=(width, height))
        grid = dict(left=0.55 / width, right=1 - 0.15 / width, bottom=0.45 / height,
                    top=1 - 0.95 / height, wspace=0.42, hspace=0.85)
        axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid).ravel()
        for ax, q in zip(axes, quantities):
            likely = ranges.loc[q] if ranges is not None and q in ranges.index else None
            plot_quantity(ax, rows, q, metric, likely)
        for ax in axes[len(quantities):]:
            ax.set_visible(False)
        fig.suptitle(f"{title + ', ' if title else ''}{len(rows)} models\nshaded: likely range "
                     "of the best models (95% bootstrap); line: best value")
    return fig


def plot_edfs(populations: Mapping[str, Sequence[float]], metric: str = "ap_hard",
              title: str | None = None) -> Figure:
    """Error EDFs (1 - AP sorted vs cumulative fraction) of named populations, one line each."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.4, 2.6), layout="constrained")
        ax = fig.subplots()
        for name, ap in populations.items():
            errors, frac = error_edf(ap)
            ax.step(errors, frac, where="post", lw=1.4, label=edf_summary(ap).label(name))
        ax.set_xlabel(f"error (1 - {metric})")
        ax.set_ylabel("cumulative fraction of models")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", frameon=False)
        ax.set_title(title or "error EDF")
    return fig


def plot_computation_bars(rows: pd.DataFrame, metric: str = "ap_hard", top_k: int = 8) -> Figure:
    """Stacked horizontal bars: GFLOPs share of stem, C2..C5, neck, head of the top-k specs.

    Shares are gflops_<component> over their sum (components whose column is missing are left
    out); bars are labelled with spec id and metric, best at the top.
    """
    comps = [c for c in COMPONENTS if f"gflops_{c}" in rows.columns]
    by = [metric, "spec_id"] if "spec_id" in rows.columns else [metric]  # ties: nas.results.best_first's order
    top = rows.sort_values(by, ascending=[False, True][:len(by)], kind="mergesort").head(top_k)
    gflops = top[[f"gflops_{c}" for c in comps]].to_numpy(dtype=float)
    shares = gflops / gflops.sum(axis=1, keepdims=True)
    ids = top["spec_id"] if "spec_id" in top.columns else pd.Series(top.index)
    names = ids.astype(str).str[:8]
    labels = [f"{s}  {v:.3f}" for s, v in zip(names, top[metric])]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.6, 0.6 + 0.28 * len(top)), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(top))[::-1]
        left = np.zeros(len(top))
        for j, c in enumerate(comps):
            ax.barh(y, shares[:, j], left=left, color=COMPONENT_COLORS[c], label=c, height=0.7)
            left += shares[:, j]
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of detector GFLOPs")
        ax.grid(axis="y", visible=False)
        ax.set_title(f"computation of the top {len(top)} specs (by {metric})")
        below = -0.25 - 0.1 / max(len(top), 1)  # under the x label, whatever the bar count
        ax.legend(ncols=len(comps), loc="upper center", bbox_to_anchor=(0.5, below),
                  frameon=False, fontsize=6, handlelength=1.0, columnspacing=0.8)
    return fig


def plot_flops_vs_latency(rows: pd.DataFrame, metric: str = "ap_hard") -> Figure:
    """GFLOPs against predicted latency of a latency search's models, coloured by `metric`:
    how far FLOPs are from the device's cost at one latency budget."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.6, 2.8), layout="constrained")
        ax = fig.subplots()
        pts = ax.scatter(rows["gflops"], rows["latency_ms"], c=rows[metric], s=14, cmap="viridis")
        fig.colorbar(pts, ax=ax, label=metric)
        ax.set_xlabel("GFLOPs (VGA)")
        ax.set_ylabel("predicted latency (ms)")
        ax.set_title("FLOPs vs latency")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as PNG at `path` atomically (temp name + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        with matplotlib.rc_context(STYLE):
            fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
