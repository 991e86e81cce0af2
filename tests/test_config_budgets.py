"""A retraining config's own `budgets:` sections: merged over the global budget override,
checked at load, honoured by `facenas train` (recipe and default data) and recorded in the
run's config.yaml, whose data `facenas test` then uses."""

from __future__ import annotations

import json

import pytest
import yaml

from _cli import one_line_error
from detectors.config import apply_budget, budget_synthetic, load_config, merge
from detectors.errors import UserError
from nas.cli import main

OWN_QUICK = ("budgets:\n  quick:\n    synthetic: {image_size: 320, face_scale: 2}\n"
             "    recipe:\n      train_size: 128\n      schedule: {total: 150, milestones: [120]}\n")


@pytest.fixture
def config_file(tmp_path, repo_root):
    (tmp_path / "models").mkdir()
    spec = (repo_root / "experiments" / "models" / "scrfd_0.5g.yaml").read_text()
    (tmp_path / "models" / "s.yaml").write_text(spec)
    path = tmp_path / "c.yaml"
    path.write_text("spec: models/s.yaml\nrecipe: {schedule: {lr: 0.02}}\n")
    return path


def test_own_budget_section_is_merged_over_the_global_override(config_file):
    plain = load_config(config_file)
    config_file.write_text(config_file.read_text() + OWN_QUICK)
    config = load_config(config_file)
    quick, global_quick = apply_budget(config, "quick").recipe, apply_budget(plain, "quick").recipe
    # the section's keys win ...
    assert (quick.train_size, quick.schedule.total, quick.schedule.milestones) == (128, 150, (120,))
    assert (global_quick.train_size, global_quick.schedule.total) == (320, 600)
    # ... every other key keeps the global override (batch, warm-up, test size) or the recipe (lr)
    assert (quick.batch_size, quick.schedule.warmup_iters, quick.test.size) == (8, 50, 640)
    assert quick.schedule.lr == 0.02 and quick.schedule.unit == "iterations"
    # other budgets are untouched by the quick section
    assert apply_budget(config, "smoke").recipe == apply_budget(plain, "smoke").recipe
    assert budget_synthetic(config, "quick") == {"image_size": 320, "face_scale": 2}
    assert budget_synthetic(config, "smoke") == {}


def test_budgets_round_trip_and_merge_is_deep(config_file, tmp_path):
    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 5}}) == {"a": {"b": 1, "c": 5}, "d": 3}
    config_file.write_text(config_file.read_text() + OWN_QUICK)
    config = load_config(config_file)
    again = tmp_path / "again.yaml"
    again.write_text(config.to_yaml())
    assert load_config(again) == config and load_config(again).budgets["quick"]["recipe"]["train_size"] == 128


def test_fanet_quick_recipe_keeps_the_model_and_scales_the_run(repo_root):
    config = load_config(repo_root / "experiments" / "fanet.yaml")
    quick = apply_budget(config, "quick")
    r = quick.recipe
    assert quick.spec == config.spec  # the architecture is FANet's, whatever the budget
    assert (r.train_size, r.batch_size, r.schedule.total, r.test.size) == (128, 4, 150, 320)
    assert (r.loss, r.assigner) == (config.recipe.loss, config.recipe.assigner)
    assert budget_synthetic(config, "quick") == {"image_size": 320, "face_scale": 2}


@pytest.mark.parametrize("section, words", [
    ("budgets:\n  quik: {recipe: {train_size: 64}}\n", ["budgets.quik", "smoke, quick, paper"]),
    ("budgets:\n  quick: {recipes: {}}\n", ["budgets.quick", "'recipes'", "recipe, synthetic"]),
    ("budgets:\n  quick: {recipe: {trian_size: 64}}\n", ["budgets.quick.recipe.trian_size", "train_size"]),
    ("budgets:\n  quick: {synthetic: {size: 320}}\n", ["budgets.quick.synthetic", "'size'", "image_size"]),
    ("budgets: [quick]\n", ["budgets must be a mapping"]),
])
def test_budget_mistakes_name_file_and_key(config_file, section, words):
    config_file.write_text(config_file.read_text() + section)
    with pytest.raises(UserError) as err:
        load_config(config_file)
    message = str(err.value)
    assert str(config_file) in message and "\n" not in message
    for word in words:
        assert word in message


def test_train_with_an_unknown_budget_key_is_one_line_exit_2(config_file, tmp_path, capsys):
    config_file.write_text(config_file.read_text() + "budgets:\n  quick: {recipe: {trian_size: 64}}\n")
    assert main(["train", str(config_file), "--budget", "quick", "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert err.startswith("facenas train: error:") and "budgets.quick.recipe.trian_size" in err
    assert not (tmp_path / "run").exists()  # rejected before any work


def test_train_honours_and_records_the_section_and_test_uses_its_data(
        config_file, tmp_path, monkeypatch, capsys, one_torch_thread):
    monkeypatch.setenv("FACENAS_CACHE", str(tmp_path / "cache"))
    config_file.write_text(config_file.read_text() + (
        "budgets:\n  smoke:\n    synthetic: {num_train: 4, num_val: 2, image_size: 128}\n"
        "    recipe: {train_size: 64, schedule: {total: 2, milestones: [1]}, test: {size: 128}}\n"))
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--budget", "smoke", "--out", str(run), "--quiet"]) == 0
    assert "trained 2/2 iterations" in capsys.readouterr().out
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["recipe"]["train_size"] == 64 and recorded["recipe"]["schedule"]["total"] == 2
    assert recorded["recipe"]["batch_size"] == 2  # the global smoke override, kept
    assert recorded["budgets"]["smoke"]["synthetic"]["image_size"] == 128
    data_root = recorded["run"]["data_root"]
    assert data_root.startswith(str(tmp_path / "cache")) and "-n4-v2-s128-" in data_root
    assert len([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]) == 2
    # the run's config tests on the data it trained on, at its resolved test size
    assert main(["test", str(run / "config.yaml"), "--weights", str(run / "checkpoint.pt"), "--quiet"]) == 0
    assert data_root in capsys.readouterr().out
