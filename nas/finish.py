"""The one finish of a search, for every space: analysis, export of the top-k, summary table."""

from __future__ import annotations

import sys
from typing import Any

from nas.results import RunStore

__all__ = ["finish_search"]


def finish_search(store: RunStore, search: dict[str, Any], bootstrap: bool = True) -> None:
    """With a successful trial: the bootstrap analysis (plots, ranges, report; only for a
    population of sampled specs, `bootstrap`), the top-k specs exported as retraining configs;
    then the summary table."""
    from nas.export import export_top
    from nas.progress import summary_table

    table = store.read_table()
    if table is not None and (table["status"] == "ok").any():
        if bootstrap:
            from analysis.report import analyze_run

            analyze_run(store.run_dir, metric="ap_hard", seed=search["seed"])
        paths = export_top(store.run_dir, top=search["top_k"], metric="ap_hard")
        print(f"exported {len(paths)} retraining configs to {store.run_dir / 'export'}",
              file=sys.stderr)
    print(summary_table(table, top=search["top_k"]) if table is not None else "no trials")
