"""The driver's space seam (nas/phases.py, nas/space_table.py): a space made of a one-trial phase without rows that
takes the whole node, then phases whose plans read earlier results, runs through the same
driver, table, resume and finish as SCRFD."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from _cli import fakes_pythonpath
from detectors.config import recipe_from_dict
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from nas import space_table
from nas.phases import Phase, PresetRules, SpaceEntry
from nas.results import COLUMNS, RunStore

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _template() -> DetectorSpec:
    return DetectorSpec.from_yaml(REPO / "experiments" / "models" / "scrfd_0.5g.yaml")


def _variant(width: int) -> DetectorSpec:
    import dataclasses

    t = _template()
    return dataclasses.replace(t, neck=dataclasses.replace(t.neck, channels=width))


def _plan_supernet(store, search):
    return [_template()]


def _plan_generation(store, search):
    # breeds from what is recorded so far: one more spec per generation, never a repeat
    done = len(store.rows())
    return [_variant(16 * (2 + done + i)) for i in range(2)]


def _entry(tmp_path: Path) -> SpaceEntry:
    import search_fakes

    preset = tmp_path / "toy.yaml"
    preset.write_text("space: toy\nbudgets: {smoke: {}, quick: {}}\n")

    def resolve(preset, budget, opts):
        return {"space": "toy", "seed": opts.seed, "budget": opts.budget, "data": None,
                "top_k": 1, "max_failures": 0, "recipe": {}, "recipe_overrides": {},
                "max_iterations": None, "generations": opts.space_options["generations"]}

    def check(search):
        if search["generations"] < 1:
            raise UserError("--generations must be at least 1")

    def phases(search):
        # fake trials: they never read the (empty) data directory
        out = [Phase(1, "supernet", _plan_supernet, search_fakes.fake_phase_trial,
                            rows=False, whole_node=True, reads_data=False)]
        out += [Phase(1 + g, f"generation {g}", _plan_generation,
                             search_fakes.fake_phase_trial, reads_data=False)
                for g in range(1, search["generations"] + 1)]
        return out

    rules = PresetRules(path=lambda gflops: preset, keys=frozenset({"space", "budgets"}),
                        budget_keys=frozenset())
    # trains nothing: no recipe of its own (asked for only when --set touches a recipe)
    return SpaceEntry(rules, resolve, lambda search, opts: None, check, phases,
                      trial_recipe=lambda search: recipe_from_dict({}))


def _finish(store, search):
    (store.run_dir / "finished.txt").write_text("yes")


def test_phased_space_runs_through_the_one_driver(tmp_path, monkeypatch):
    from nas.driver import SearchOptions, run_search

    monkeypatch.setitem(space_table.SPACES, "toy", _entry(tmp_path))
    monkeypatch.setattr("nas.driver.finish_run", _finish)  # the space's finish, as a marker
    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())
    monkeypatch.delenv("FACENAS_THREADS", raising=False)  # it would cap the threads below
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    opts = SearchOptions(space="toy", budget="smoke", data=str(data), out=str(out),
                         max_concurrent=2, space_options={"generations": 2})
    run_dir, finished = run_search(opts)
    assert finished and (out / "finished.txt").read_text() == "yes"
    store = RunStore(out)
    # the supernet phase: one trial, no row, all the node's slots, its artefact read later
    supernet_id = _template().id
    owner, threads = (out / "supernet.txt").read_text().split()
    assert owner == supernet_id and threads == "threads=2"
    assert store.read_result(1, supernet_id)["status"] == "ok"
    table = pd.read_parquet(out / "trials.parquet")
    assert list(table.columns)[: len(COLUMNS)] == COLUMNS
    assert sorted(table["step"]) == [2, 2, 3, 3]
    # generation 2 was planned after generation 1's rows existed: four distinct specs
    assert len(set(table["spec_id"])) == 4 and supernet_id not in set(table["spec_id"])
    # extra scalar metrics become extra columns; Tune's bookkeeping keys do not
    assert (table["inherited_from"] == supernet_id).all()
    assert table.sort_values("step")["generation"].tolist() == [1, 1, 2, 2]
    assert "timestamp" not in table.columns
    # resume of a finished run trains nothing again and changes no row
    before = table.copy()
    (out / "completions.log").write_text("")
    _, finished = run_search(SearchOptions(resume=str(out), max_concurrent=2))
    assert finished and (out / "completions.log").read_text() == ""
    pd.testing.assert_frame_equal(pd.read_parquet(out / "trials.parquet"), before)


def test_space_check_runs_before_anything_is_written(tmp_path, monkeypatch):
    from nas.driver import SearchOptions, run_search

    monkeypatch.setitem(space_table.SPACES, "toy", _entry(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    opts = SearchOptions(space="toy", data=str(data), out=str(tmp_path / "run"),
                         space_options={"generations": 0})
    with pytest.raises(UserError, match="--generations must be at least 1"):
        run_search(opts)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="unknown search space 'nope'; valid: scrfd"):
        space_table.space_entry("nope")
