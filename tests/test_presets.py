"""Search presets: shared budgets merged under each regime, the budget's default dataset, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detectors.errors import UserError
from nas import presets
from nas.options import SearchOptions
from nas.search_config import resolve_config
from nas.spaces import scrfd

RULES = scrfd.PRESET


def _shared() -> dict:
    return yaml.safe_load(presets.BUDGETS_FILE.read_text())["budgets"]


@pytest.mark.parametrize("gflops", scrfd.REGIMES)
def test_every_regime_gets_the_shared_budgets(gflops):
    preset = presets.load_preset(scrfd.preset_path(gflops), RULES)
    assert preset["budgets"] == _shared()
    search = resolve_config(SearchOptions(space="scrfd", gflops=gflops, budget="quick"))
    assert search["num_samples"] == _shared()["quick"]["num_samples"]
    assert search["recipe_overrides"] == _shared()["quick"]["recipe"]


def test_a_presets_own_budgets_merge_over_the_shared_ones(tmp_path):
    src = scrfd.preset_path(2.5)
    preset = yaml.safe_load(src.read_text())
    preset["template"] = str(src.parent / preset["template"])
    preset["budgets"] = {"quick": {"num_samples": 3, "recipe": {"schedule": {"total": 99}}},
                         "tiny": {"num_samples": 1}}
    path = tmp_path / "scrfd_2.5g.yaml"
    path.write_text(yaml.safe_dump(preset))
    budgets = presets.load_preset(path, RULES)["budgets"]
    quick = _shared()["quick"]
    assert budgets["quick"]["num_samples"] == 3
    assert budgets["quick"]["recipe"]["schedule"]["total"] == 99
    # keys not overridden keep the shared values, deep inside the recipe too
    assert budgets["quick"]["recipe"]["train_size"] == quick["recipe"]["train_size"]
    assert (budgets["quick"]["recipe"]["schedule"]["milestones"]
            == quick["recipe"]["schedule"]["milestones"])
    assert budgets["tiny"] == {"num_samples": 1} and budgets["smoke"] == _shared()["smoke"]


def test_bad_synthetic_key_is_a_one_line_error(tmp_path):
    src = scrfd.preset_path(2.5)
    preset = yaml.safe_load(src.read_text())
    preset["budgets"] = {"quick": {"synthetic": {"image_sise": 320}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(UserError, match=r"budgets\.quick\.synthetic: unknown key 'image_sise'"):
        presets.load_preset(path, RULES)


def test_default_data_follows_the_budget(monkeypatch):
    calls = []

    def fake_root(**kwargs):
        calls.append(kwargs)
        return Path("/cache/root")

    monkeypatch.setattr("detectors.data.synthetic.default_root", fake_root)
    for budget in ("quick", "smoke"):
        search = resolve_config(SearchOptions(space="scrfd", gflops=2.5, budget=budget))
        assert presets.default_data(search, progress=False) == Path("/cache/root")
    assert calls == [{"progress": False, **_shared()["quick"]["synthetic"]}, {"progress": False}]
    with pytest.raises(UserError, match="unknown budget 'nonsense'"):
        resolve_config(SearchOptions(space="scrfd", gflops=2.5, budget="nonsense"))
