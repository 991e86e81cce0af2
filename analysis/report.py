"""`analyze_run`: bootstrap a search run's results table, draw its plots, write its report.

Writes RUN_DIR/analysis/: ranges.csv (all successful trials), ranges_step1.csv and
ranges_step2.csv (when the table holds both steps of a two-step search), PNG plots and
report.md (the plots embedded, the ranges stated in words). Every file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis.bootstrap import bootstrap_ranges, write_ranges_csv
from analysis.edf import edf_summary
from analysis.errors import AnalysisError
from analysis.plots import (plot_computation_bars, plot_edfs, plot_flops_vs_latency,
                            plot_quantities, quantity_label,
                            save_figure)
from analysis.tables import (BACKBONE_RATIOS, DETECTOR_RATIOS, SHAPES, atomic_path,
                             load_results, ok_rows)

__all__ = ["analyze_run", "describe_range", "Population"]

# Plot groups: file stem -> (title, quantities).
GROUPS = {
    "ratios_backbone": ("computation within the backbone", BACKBONE_RATIOS),
    "ratios_detector": ("computation within the detector", DETECTOR_RATIOS),
    "shapes": ("stage widths and depths, neck and head", SHAPES),
}


@dataclass
class Population:
    """A named set of successful trials with its bootstrap ranges and written plots."""

    name: str
    suffix: str  # file-name suffix: "" for the whole run, "_step1" ...
    rows: pd.DataFrame
    ranges: pd.DataFrame
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, file name)


_PLACES = {"ratio_stem": "the stem", "ratio_shallow": "the shallow stages (stem+C2+C3)",
           "ratio_backbone": "the backbone", "ratio_neck": "the neck", "ratio_head": "the head"}


def describe_range(quantity: str, r: pd.Series) -> str:
    """One sentence stating a quantity's likely range among the best models."""
    title, _ = quantity_label(quantity)
    if not np.isfinite(r["best"]):
        return f"{title}: no value among the winners"
    if quantity in BACKBONE_RATIOS or quantity in DETECTOR_RATIOS:
        whole = "backbone" if quantity in BACKBONE_RATIOS else "detector"
        place = _PLACES.get(quantity, title)
        return (f"the best models put {r['low']:.2f}–{r['high']:.2f} of {whole} compute in "
                f"{place} (best {r['best']:.2f})")
    return f"the best models have {title} in {r['low']:g}–{r['high']:g} (best {r['best']:g})"


def _populations(rows: pd.DataFrame, ranges: pd.DataFrame, metric: str, n_boot: int,
                 seed: int) -> list[Population]:
    """The whole run, then step 1 and step 2 separately when both are present."""
    pops = [Population("all trials", "", rows, ranges)]
    if "step" in rows.columns:
        steps = sorted(pd.to_numeric(rows["step"], errors="coerce").dropna().unique())
        if {1, 2} <= set(int(s) for s in steps):
            for s in (1, 2):
                part = rows[pd.to_numeric(rows["step"], errors="coerce") == s]
                r = bootstrap_ranges(part, metric, n_boot=n_boot, seed=seed)
                pops.append(Population(f"step {s}", f"_step{s}", part, r))
    return pops


def _varying(rows: pd.DataFrame, quantities: list[str]) -> list[str]:
    return [q for q in quantities if q in rows.columns and rows[q].nunique(dropna=True) > 1]


def _plan_figures(pops: list[Population], edf_pops: dict[str, pd.Series],
                  metric: str) -> list[tuple[Population | None, str, str, Callable]]:
    """(population, caption, file name, draw()) for every figure to write."""
    jobs = []
    for pop in pops[1:] or pops:  # with two steps, each step's own plots (SCRFD Fig. 5, Fig. 9)
        for stem, (title, quantities) in GROUPS.items():
            qs = _varying(pop.rows, quantities)
            if qs:
                caption = f"{title} ({pop.name})"
                draw = partial(plot_quantities, pop.rows, pop.ranges, qs, metric, caption)
                jobs.append((pop, caption, f"{stem}{pop.suffix}.png", draw))
    jobs.append((None, "error EDF", "edf.png", partial(plot_edfs, edf_pops, metric)))
    if any(c.startswith("gflops_") for c in pops[0].rows.columns):
        jobs.append((None, "computation of the best specs", "computation.png",
                     partial(plot_computation_bars, pops[0].rows, metric)))
    rows = pops[0].rows
    if "latency_ms" in rows.columns and rows["latency_ms"].notna().any():  # a latency search
        jobs.append((None, "GFLOPs vs predicted latency", "flops_vs_latency.png",
                     partial(plot_flops_vs_latency, rows[rows["latency_ms"].notna()], metric)))
    return jobs


def _compared(run_dir: Path, compare_dir, metric: str, n_boot: int, seed: int,
              rows: pd.DataFrame) -> tuple[Population, dict[str, pd.Series]]:
    """The compared run as a population, and the EDF populations of both runs."""
    other_rows = ok_rows(load_results(compare_dir), metric)
    names = [run_dir.name, Path(compare_dir).name]
    if names[0] == names[1]:  # two runs with one name: tell them apart by path
        names = [str(run_dir), str(compare_dir)]
    other = Population(names[1], "", other_rows,
                       bootstrap_ranges(other_rows, metric, n_boot=n_boot, seed=seed))
    return other, {names[0]: rows[metric], names[1]: other_rows[metric]}


def _write_text(path: Path, text: str) -> None:
    tmp = atomic_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _markdown_table(ranges: pd.DataFrame) -> list[str]:
    lines = ["| quantity | low | best | high | n_models |", "|---|---|---|---|---|"]
    for q, r in ranges.iterrows():
        lines.append(f"| {q} | {r['low']:.4g} | {r['best']:.4g} | {r['high']:.4g} "
                     f"| {int(r['n_models'])} |")
    return lines


def _comparison(pop: Population, other: Population) -> list[str]:
    out = [f"## Compared with {other.name} ({len(other.rows)} models)", "",
           f"| quantity | this run: best (likely range) | {other.name}: best (likely range) |",
           "|---|---|---|"]
    for q in pop.ranges.index.intersection(other.ranges.index):
        a, b = pop.ranges.loc[q], other.ranges.loc[q]
        out.append(f"| {q} | {a['best']:.3g} ({a['low']:.3g}–{a['high']:.3g}) "
                   f"| {b['best']:.3g} ({b['low']:.3g}–{b['high']:.3g}) |")
    return out + [""]


WIDENING = Path("plan") / "step2_widening.csv"  # written by the SCRFD search's step-2 planning


NARROW = Path("plan") / "step2_narrow.csv"  # step-1 ranges widened for lack of support


def _narrow_lines(run_dir: Path) -> list[str]:
    """The step-1 ranges widened to the preset's min_range_width because too few step-1 specs
    lay inside them (nothing when none was)."""
    path = run_dir / NARROW
    if not path.is_file():
        return []
    try:
        rows = pd.read_csv(path)
        out = ["Step 1's population was too small to support these ranges (fewer than "
               f"{int(rows['min_support'].iloc[0])} successful step-1 specs inside each), so "
               f"each was widened to `step2.min_range_width` around its centre (`{NARROW}`):", ""]
        out += [f"- {r.quantity}: {r.low:.3f}–{r.high:.3f}, {int(r.support)} specs inside -> "
                f"{r.low_used:.3f}–{r.high_used:.3f}" for r in rows.itertuples()]
    except Exception as err:  # a garbled record is said, not fatal to the analysis
        return [f"`{NARROW}` is unreadable ({type(err).__name__}).", ""]
    return out + [""]


def _step2_ranges_section(run_dir: Path) -> list[str]:
    """How step 2's ranges came about: step 1's as they were (some perhaps widened for lack of
    support), or widened toward the whole space because they admitted too few specs under the
    budget band (nothing for a run without step-1 ranges)."""
    narrow = _narrow_lines(run_dir)
    path = run_dir / WIDENING
    if not path.is_file():
        if not (run_dir / "plan" / "step2.yaml").is_file() or \
                not (run_dir / "plan" / "step2_ranges.csv").is_file():
            return []
        return ["## Step 2's ranges", "", *narrow, "Step 2 was drawn within step 1's ranges "
                "(`plan/step2_ranges.csv`), not widened toward the whole space"
                + (" (the ranges above as widened for lack of support)." if narrow else "."), ""]
    try:
        tried = pd.read_csv(path)
        last = tried.iloc[-1]
        quantities = [c[:-4] for c in tried.columns if c.endswith("_low")]
    except Exception as err:  # a garbled record is said, not fatal to the analysis
        return ["## Step 2's ranges", "", f"`{WIDENING}` is unreadable ({type(err).__name__}).", ""]
    first = tried.iloc[0]
    out = ["## Step 2's ranges, widened", "", *narrow,
           f"Step 1's ranges (`plan/step2_ranges.csv`) and the budget band admitted only "
           f"{int(first['found'])} of the {int(first['wanted'])} specs step 2 plans, so the ranges "
           f"were widened in {len(tried) - 1} step{'s' if len(tried) > 2 else ''}, each range's "
           f"ends moved toward the whole extent [0, 1]: **{float(last['fraction']):.1%} of the "
           f"way**, where {int(last['found'])} specs were found. Step 2 was drawn within:", ""]
    out += [f"- {q}: {float(last[q + '_low']):.3f}–{float(last[q + '_high']):.3f} (step 1: "
            f"{float(first[q + '_low']):.3f}–{float(first[q + '_high']):.3f})" for q in quantities]
    out += ["", "| widening | fraction | draws | found | wanted |", "|---|---|---|---|---|"]
    out += [f"| {int(r['widening'])} | {float(r['fraction']):.3f} | {int(r['draws']):,} "
            f"| {int(r['found'])} | {int(r['wanted'])} |" for _, r in tried.iterrows()]
    return out + [""]


def _report(run_dir: Path, table: pd.DataFrame, pops: list[Population], extra_images,
            metric: str, n_boot: int, seed: int, edf_pops: dict[str, pd.Series],
            other: Population | None, include_stopped: bool = False) -> str:
    rows = pops[0].rows
    k = max(1, round(0.25 * len(rows)))
    status = table.get("status", pd.Series(dtype=str)).astype(str)
    stopped = int((status == "stopped").sum())
    failed = int((~status.isin(["ok", "stopped"])).sum())
    out = [f"# Design-space analysis: {run_dir.name}", "",
           f"Results table `{table.attrs.get('source')}`: {len(table)} trials, {len(rows)} "
           f"ranked with a finite `{metric}`, {failed} failed or unfinished.",
           f"Empirical bootstrap: {n_boot} resamples of {k} model{'s' if k > 1 else ''} "
           f"(25%, with replacement); the winner of each is the model with the highest "
           f"`{metric}`; ranges are the 2.5th–97.5th percentiles of the winners' values, best "
           f"is the median (seed {seed}).", ""]
    if stopped:
        out += [(f"{stopped} trials were stopped early by ASHA at a rung and are ranked by their "
                 f"`{metric}` at that rung (--include-stopped): mixed fidelities."
                 if include_stopped else
                 f"{stopped} trials were stopped early by ASHA at a rung and are not ranked: "
                 f"only trials that reached full fidelity are bootstrapped "
                 f"(`facenas analyze --include-stopped` ranks them by their rung `{metric}`)."), ""]
    if rows[metric].nunique() == 1:
        out += [f"**Warning: every model has the same `{metric}` ({rows[metric].iloc[0]:.3f}), so "
                "the winners are decided by tie-breaking (the first model drawn) and the ranges "
                "below say nothing about which designs are better.**", ""]
    for pop in pops:
        out += [f"## Likely ranges: {pop.name} ({len(pop.rows)} models)", ""]
        out += [f"- {describe_range(q, r)}." for q, r in pop.ranges.iterrows()
                if q in _varying(pop.rows, list(pop.ranges.index))]
        out += [""] + _markdown_table(pop.ranges) + [""]
        out += [f"![{c}]({f})" for c, f in pop.images] + [""]
    out += _step2_ranges_section(run_dir)
    if other is not None:
        out += _comparison(pops[0], other)
    out += ["## Populations and the best specs", ""]
    for name, ap in edf_pops.items():
        out.append(f"- {edf_summary(ap).label(name)}: error = 1 − {metric}.")
    out += [""] + [f"![{c}]({f})" for c, f in extra_images] + [""]
    return "\n".join(out)


def analyze_run(run_dir: str | os.PathLike, metric: str = "ap_hard",
                compare_dir: str | os.PathLike | None = None, seed: int = 0,
                n_boot: int = 2500, include_stopped: bool = False) -> pd.DataFrame:
    """Bootstrap, plot and report a search run; return the ranges of all successful trials.

    Reads RUN_DIR/trials.parquet (or .csv), writes RUN_DIR/analysis/ (ranges*.csv, *.png,
    report.md). compare_dir: a second run whose error EDF is drawn against this one's.
    Raises AnalysisError for a missing run dir, an empty table, a missing metric column, or a
    table without a successful trial.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AnalysisError(f"run directory {run_dir} does not exist")
    table = load_results(run_dir)
    rows = ok_rows(table, metric, include_stopped=include_stopped)
    ranges = bootstrap_ranges(rows, metric, n_boot=n_boot, seed=seed)
    pops = _populations(rows, ranges, metric, n_boot, seed)
    edf_pops = {p.name: p.rows[metric] for p in (pops[1:] or pops)}
    other = None
    if compare_dir is not None:
        other, edf_pops = _compared(run_dir, compare_dir, metric, n_boot, seed, rows)
    out = run_dir / "analysis"  # created only once every input has been checked
    out.mkdir(exist_ok=True)
    for pop in pops:
        write_ranges_csv(pop.ranges, out / f"ranges{pop.suffix}.csv")
    extra = []
    for pop, caption, name, draw in tqdm(_plan_figures(pops, edf_pops, metric),
                                         desc="analyze: plots", unit="fig", disable=None):
        save_figure(draw(), out / name)
        (pop.images if pop is not None else extra).append((caption, name))
    _write_text(out / "report.md", _report(run_dir, table, pops, extra, metric, n_boot, seed,
                                           edf_pops, other, include_stopped))
    return ranges
