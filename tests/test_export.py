"""Export of a run's best specs as retraining configs that `load_config` (facenas train) accepts."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detectors.config import Recipe, load_config
from detectors.errors import UserError
from nas.options import SearchOptions
from nas.search_config import resolve_config
from nas.spaces.scrfd import build_space
from nas.export import export_top
from nas.results import RunStore, cost_columns, failed_metrics


def _make_run(run_dir: Path, aps: list[float | None]) -> tuple[RunStore, list]:
    """A run directory with one row per AP (None: a failed trial), specs from the 2.5GF space."""
    search = resolve_config(SearchOptions(space="scrfd", gflops=2.5, budget="smoke",
                                          num_samples=len(aps), steps="1", data=str(run_dir),
                                          max_failures=0))
    search["data"] = str(run_dir)
    store = RunStore(run_dir)
    store.write_config({"search": search})
    specs = build_space(search).sample(len(aps), seed=0, step=1)
    store.write_plan(1, specs)
    for i, (spec, ap) in enumerate(zip(specs, aps)):
        metrics = failed_metrics("RuntimeError: x") if ap is None else {
            "status": "ok", "error": "", "wall_time_s": 1.0, "ap_easy": ap, "ap_medium": ap,
            "ap_hard": ap}
        store.add_row({"spec_id": spec.id, "step": 1, "trial_id": f"t{i}", "seed": 0,
                       "spec_yaml": spec.to_yaml(), **cost_columns(spec), **metrics})
    return store, specs


def test_top_k_by_hard_ap_as_loadable_retraining_configs(tmp_path):
    aps = [0.30, None, 0.55, 0.10, 0.42]
    store, specs = _make_run(tmp_path / "run", aps)
    paths = export_top(store.run_dir, top=3)
    expected = [specs[2], specs[4], specs[0]]  # 0.55 > 0.42 > 0.30; the failed one never
    assert [p.name for p in paths] == [f"{r}_{s.id}.yaml" for r, s in enumerate(expected, 1)]
    for path, spec in zip(paths, expected):
        config = load_config(path)
        assert config.spec == spec
        assert config.recipe == Recipe()  # the published 640-epoch recipe, unchanged
        assert config.recipe.schedule.total == 640
    assert sorted(p.name for p in (store.run_dir / "export").iterdir()) == sorted(p.name for p in paths)


def test_reexport_replaces_stale_files(tmp_path):
    store, _ = _make_run(tmp_path / "run", [0.2, 0.4, 0.3])
    export_top(store.run_dir, top=3)
    paths = export_top(store.run_dir, top=1)
    assert [p.name for p in (store.run_dir / "export").iterdir()] == [paths[0].name]


def test_export_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a search run"):
        export_top(tmp_path / "missing")
    store, _ = _make_run(tmp_path / "run", [None, None])
    with pytest.raises(UserError, match="no successful trial"):
        export_top(store.run_dir)
    with pytest.raises(UserError, match="unknown metric"):
        export_top(store.run_dir, metric="ap_extreme")
    with pytest.raises(UserError, match="at least 1"):
        export_top(store.run_dir, top=0)


def test_export_cli_prints_paths_and_one_line_errors(tmp_path):
    store, specs = _make_run(tmp_path / "run", [0.2, 0.6])
    ok = subprocess.run([sys.executable, "-m", "nas.cli", "export", str(store.run_dir), "--top", "1",
                         "--metric", "ap_easy"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith(f"1_{specs[1].id}.yaml")
    header = Path(ok.stdout.strip()).read_text().splitlines()[0]
    assert header.startswith("# rank 1") and "ap_easy = 0.6000" in header
    assert yaml.safe_load(Path(ok.stdout.strip()).read_text())["spec"]["name"]
    bad = subprocess.run([sys.executable, "-m", "nas.cli", "export", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert math.isfinite(store.read_table()["ap_hard"].max())
