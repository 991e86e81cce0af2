"""The results store of one search run (RUN_DIR), written only by the driver process.

Layout of RUN_DIR:

    config.yaml             resolved search config, seed, package versions, git revision (first)
    plan/step1.yaml         the planned specs of each step: a list of {spec_id, spec} (step 2's
    plan/step2.yaml         plan is drawn after step 1's analysis, so it may appear later)
    trials.parquet/.csv     one row per finished trial, columns = COLUMNS (docs/architecture.md,
                            "Results table"); rewritten atomically as each trial finishes
    trials/<id>/            a trial's working dir (training output) and result.json, the
                            trial's own atomic record that it finished (lets --resume keep a
                            trial that finished just before the driver was killed)
    asha/step<N>.json       ASHA's rung decisions (nas.asha_state), rewritten at each one
    ray/                    Ray Tune's own state: the latest Tune checkpoint of each trial
    analysis/ export/       written after the trials

Every file is written to a temporary name in the same directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import yaml

from detectors.cost import cost
from detectors.errors import UserError
from detectors.spec import DetectorSpec

__all__ = [
    "COLUMNS",
    "METRIC_COLUMNS",
    "COMPONENTS",
    "RESULT_WAITS_S",
    "RunStore",
    "atomic_write_text",
    "best_first",
    "cost_columns",
    "failed_metrics",
]

COMPONENTS = ("stem", "c2", "c3", "c4", "c5", "neck", "head")
_BACKBONE = ("stem", "c2", "c3", "c4", "c5")
# The contract's column order (docs/architecture.md, "Results table").
COLUMNS = (
    ["spec_id", "step", "trial_id", "seed", "status", "error", "wall_time_s", "spec_yaml",
     "params", "gflops"]
    + [f"gflops_{c}" for c in COMPONENTS]
    + [f"ratio_{c}" for c in _BACKBONE]
    + ["ratio_shallow", "ratio_backbone", "ratio_neck", "ratio_head"]
    + ["w1", "w2", "w3", "w4", "d1", "d2", "d3", "d4", "n", "h", "m"]
    + ["ap_easy", "ap_medium", "ap_hard"]
)
# What a trial function returns (the rest of a row comes from the spec). A trial may return
# further scalar metrics (e.g. a candidate's generation); they become extra columns after
# COLUMNS, as do the cost columns of backbones with more than four stages (gflops_c6, w5, ...).
METRIC_COLUMNS = ("status", "error", "wall_time_s", "ap_easy", "ap_medium", "ap_hard")
_VGA = 0.75  # SCRFD's convention: count at 640x640, scale by 0.75
# A result.json written by a trial on another node may not be visible yet to the driver (NFS
# caches directory lookups and attributes): read it again after each of these waits, i.e. at
# most 5 reads over 3.0 s, before calling it missing.
RESULT_WAITS_S = (0.2, 0.4, 0.8, 1.6)


def best_first(rows: pd.DataFrame, metric: str = "ap_hard") -> pd.DataFrame:
    """Rows by `metric`, best first; ties (e.g. every AP 0 in a smoke run) by spec id, so the
    summary, the export and the plots agree on one order, the same in every run."""
    return rows.sort_values([metric, "spec_id"], ascending=[False, True], kind="mergesort")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and os.replace."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cost_columns(spec: DetectorSpec) -> dict[str, Any]:
    """Analytic cost and architecture columns of the results table for one spec.

    GFLOPs are VGA multiply-accumulates (640x640 count x 0.75), `gflops_mmcv` the same frame
    counted as mmcv's flops counter does (detectors.cost.CostReport.mmcv_flops); backbone ratios are shares of
    the backbone's MACs (SCRFD Fig. 5), detector ratios shares of the whole detector (Fig. 9).
    """
    report = cost(spec, input_hw=(640, 640))
    macs = {name: c.macs for name, c in report.components.items()}
    stages = [c for c in macs if c not in ("neck", "head")]
    backbone = sum(macs[c] for c in stages)
    total = sum(macs.values())
    row: dict[str, Any] = {"params": int(report.params), "gflops": total * _VGA / 1e9}
    # mmcv's count (the SCRFD tables' convention): the column a `flops: mmcv` band applies to
    row["gflops_mmcv"] = report.mmcv_flops * _VGA / 1e9
    row.update({f"gflops_{c}": macs.get(c, 0) * _VGA / 1e9 for c in COMPONENTS})
    row.update({f"gflops_{c}": macs[c] * _VGA / 1e9 for c in macs if c not in COMPONENTS})
    row.update({f"ratio_{c}": macs.get(c, 0) / backbone for c in stages + list(_BACKBONE)})
    row["ratio_shallow"] = (macs["stem"] + macs["c2"] + macs.get("c3", 0)) / backbone
    row["ratio_backbone"] = backbone / total
    row["ratio_neck"] = macs["neck"] / total
    row["ratio_head"] = macs["head"] / total
    for i in range(1, 5):  # the contract's w1..w4/d1..d4 (0 for missing stages)
        row[f"w{i}"] = row[f"d{i}"] = 0
    for i, stage in enumerate(spec.backbone.stages, start=1):
        row[f"w{i}"], row[f"d{i}"] = int(stage.width), int(stage.depth)
    row["n"], row["h"], row["m"] = int(spec.neck.channels), int(spec.head.channels), int(spec.head.num_convs)
    return row


def failed_metrics(error: str, wall_time_s: float = float("nan")) -> dict[str, Any]:
    """The metric part of a row for a trial that failed for good."""
    nan = float("nan")
    return {"status": "failed", "error": error, "wall_time_s": wall_time_s,
            "ap_easy": nan, "ap_medium": nan, "ap_hard": nan}


class RunStore:
    """Reads and writes one run directory (see the module docstring for its layout)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir).resolve()
        self._rows: list[dict[str, Any]] | None = None

    # -- config and plan ---------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise UserError(f"{self.run_dir} is not a search run directory (no config.yaml)")
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"{self.config_path}: not valid YAML ({err})") from None
        if not isinstance(config, dict) or "search" not in config:
            raise UserError(f"{self.config_path}: not a facenas search config (no 'search' key)")
        return config

    def plan_path(self, step: int) -> Path:
        return self.run_dir / "plan" / f"step{step}.yaml"

    def write_plan(self, step: int, specs: Iterable[DetectorSpec]) -> None:
        entries = [{"spec_id": s.id, "spec": s.to_dict()} for s in specs]
        atomic_write_text(self.plan_path(step), yaml.safe_dump(entries, sort_keys=False))

    def read_plan(self, step: int) -> list[DetectorSpec] | None:
        """The planned specs of `step`, or None when that step has not been planned yet."""
        path = self.plan_path(step)
        if not path.is_file():
            return None
        entries = yaml.safe_load(path.read_text()) or []
        specs = [DetectorSpec.from_dict(e["spec"]) for e in entries]
        for entry, spec in zip(entries, specs):
            if spec.id != entry["spec_id"]:  # the spec format changed under the plan
                raise UserError(f"{path}: spec {entry['spec_id']} now hashes to {spec.id}; "
                                "the run was planned with another facenas version")
        return specs

    # -- the trials table --------------------------------------------------------------------
    def trial_dir(self, step: int, spec_id: str) -> Path:
        return self.run_dir / "trials" / f"step{step}-{spec_id}"

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            table = self.read_table()
            self._rows = [] if table is None else table.to_dict("records")
        return self._rows

    def read_table(self) -> pd.DataFrame | None:
        path = self.run_dir / "trials.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    def finished(self, step: int | None = None) -> set[str]:
        """Spec ids with a row (ok or failed), optionally of one step only."""
        return {r["spec_id"] for r in self.rows() if step is None or r["step"] == step}

    def add_row(self, row: dict[str, Any]) -> None:
        """Add (or replace: same spec id) one finished trial and rewrite the table atomically."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"results row lacks columns {missing}")  # a bug, not a user error
        rows = [r for r in self.rows() if r["spec_id"] != row["spec_id"]]
        rows.append(dict(row))
        self._rows = rows
        self._write(rows)

    def remove_rows(self, spec_ids: Iterable[str]) -> None:
        """Drop the rows of these spec ids (trials that will run again) and rewrite atomically."""
        drop = set(spec_ids)
        self._rows = [r for r in self.rows() if r["spec_id"] not in drop]
        self._write(self._rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        extra = list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))
        table = pd.DataFrame(rows, columns=list(COLUMNS) + extra)
        table["error"] = table["error"].fillna("").astype(str)
        _atomic(self.run_dir / "trials.parquet", lambda tmp: table.to_parquet(tmp, index=False))
        _atomic(self.run_dir / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))

    # -- a trial's own completion record (written by the trial, read on resume) ------------
    @staticmethod
    def write_result(trial_dir: Path, result: dict[str, Any]) -> None:
        atomic_write_text(Path(trial_dir) / "result.json", json.dumps(result))

    def result_path(self, step: int, spec_id: str) -> Path:
        return self.trial_dir(step, spec_id) / "result.json"

    def read_result(self, step: int, spec_id: str) -> dict[str, Any] | None:
        """The trial's record, or None when it has none that reads (absent, or not a JSON
        object: a half-visible or stale copy is no record, and the trial runs again)."""
        return _read_json(self.result_path(step, spec_id))[0]

    def wait_result(self, step: int, spec_id: str, waits: Iterable[float] = RESULT_WAITS_S,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[dict[str, Any] | None, str]:
        """(record, "") for a trial known to have finished, read again after each of `waits`
        seconds while it is absent or unreadable; (None, one line saying why) after the last."""
        path = self.result_path(step, spec_id)
        result, why = _read_json(path)
        waits = list(waits)
        for wait in waits:
            if result is not None:
                break
            sleep(wait)
            result, why = _read_json(path)
        if result is None:
            why = f"{path} {why} after {1 + len(waits)} reads over {sum(waits):g} s"
        return result, why


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object at path, "") or (None, "is missing" | "is unreadable (...)")."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"is unreadable ({str(err).splitlines()[0][:80]})"
    if not isinstance(value, dict):
        return None, "is unreadable (not a JSON object)"
    return value, ""
