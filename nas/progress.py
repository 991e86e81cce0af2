"""Live view of a search: one status line while trials run, a summary table at the end.

The status line (stderr) reads e.g.
    step 1: 5/8 done (1 failed), 2 running | best hard AP 0.412 | 1m05s elapsed, ETA 0m40s
and is redrawn in place on a terminal, printed as a new line otherwise (logs, CI).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

import pandas as pd

from nas.results import best_first

__all__ = ["Progress", "summary_table"]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Counts trials of one step and prints the status line on every change."""

    def __init__(self, step: int, total: int, already_done: int = 0, best_ap: float = math.nan,
                 stream: TextIO | None = None) -> None:
        self.step, self.total = step, total
        self.done, self.failed, self.running = already_done, 0, 0
        self.best_ap = best_ap
        self._new = 0  # trials finished in this session (the ETA's rate excludes resumed ones)
        self._start = time.monotonic()
        self._last = self._start  # when the latest trial finished
        self._shown = self._start
        # Looked up at print time, not stored: Tune pickles its callbacks (and so this object).
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def _tty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def finished(self, ap_hard: float | None, failed: bool = False, running: int = 0) -> None:
        self.running = running
        self.done += 1
        self._new += 1
        self._last = time.monotonic()
        self.failed += int(failed)
        if ap_hard is not None and math.isfinite(ap_hard):
            self.best_ap = ap_hard if not math.isfinite(self.best_ap) else max(self.best_ap, ap_hard)
        self.show()

    def eta(self) -> float:
        """Seconds left: the rate up to the latest finished trial projects the step's end, and
        the estimate counts down from there between events (a naive elapsed/done rate would
        grow while long trials run)."""
        if self._new == 0:
            return math.nan
        end = (self._last - self._start) / self._new * (self.total - self.done)
        return max(0.0, end - (time.monotonic() - self._last))

    def line(self) -> str:
        failed = f" ({self.failed} failed)" if self.failed else ""
        best = f"{self.best_ap:.3f}" if math.isfinite(self.best_ap) else "-"
        elapsed = time.monotonic() - self._start
        return (f"step {self.step}: {self.done}/{self.total} done{failed}, {self.running} running"
                f" | best hard AP {best} | {_duration(elapsed)} elapsed, ETA {_duration(self.eta())}")

    def tick(self) -> None:
        """Redraw between trial events so elapsed time and ETA keep moving: every second on a
        terminal, every minute in a log."""
        if time.monotonic() - self._shown >= (1.0 if self._tty else 60.0):
            self.show()

    def show(self) -> None:
        self._shown = time.monotonic()
        end = "\r" if self._tty else "\n"
        print(self.line().ljust(100 if self._tty else 0), end=end, file=self.stream, flush=True)

    def close(self) -> None:
        if self._tty:
            print(file=self.stream, flush=True)


def summary_table(table: pd.DataFrame, top: int = 5, metric: str = "ap_hard") -> str:
    """The top `top` ok trials by `metric` with their cost ratios, as fixed-width text."""
    ok = best_first(table[table["status"] == "ok"], metric).head(top)
    counts = (f"{len(table)} trials: {int((table['status'] == 'ok').sum())} ok, "
              f"{int((table['status'] == 'failed').sum())} failed")
    if ok.empty:
        return counts + "; no successful trial to rank"
    cols = ["spec_id", "step", "ap_easy", "ap_medium", "ap_hard", "gflops", "params",
            "ratio_stem", "ratio_c2", "ratio_c3", "ratio_c4", "ratio_c5", "ratio_neck",
            "ratio_head"]
    shown = ok[cols].copy()
    shown["params"] = (shown["params"] / 1e6).round(3)
    shown = shown.rename(columns={"params": "params_M"})
    shown.insert(0, "rank", range(1, len(shown) + 1))
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")
    return f"{counts}; top {len(shown)} by {metric}:\n{text}"
