"""Retraining configs: YAML loading and errors, round trip, budget presets, published recipes."""

from __future__ import annotations

import pytest

from detectors.config import (BUDGETS, SR_CROPS, apply_budget, load_config, schedule_in_iterations)
from detectors.errors import UserError


@pytest.fixture
def config_file(tmp_path, repo_root):
    spec_text = (repo_root / "experiments" / "models" / "scrfd_0.5g.yaml").read_text()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "s.yaml").write_text(spec_text)
    path = tmp_path / "c.yaml"
    path.write_text("spec: models/s.yaml\nrecipe:\n  batch_size: 16\n  schedule: {lr: 0.02}\n")
    return path


def test_partial_recipe_keeps_published_defaults(config_file):
    config = load_config(config_file)
    r = config.recipe
    assert config.spec.name == "scrfd_0.5g"
    assert (r.batch_size, r.schedule.lr) == (16, 0.02)
    assert (r.schedule.momentum, r.schedule.weight_decay, r.schedule.milestones) == (0.9, 5e-4, (440, 544))
    assert r.augmentation.crop_choices == SR_CROPS and r.assigner.topk == 9 and r.loss.box_weight == 2.0


def test_round_trip_through_yaml_with_inline_spec(config_file, tmp_path):
    config = load_config(config_file)
    again = tmp_path / "again.yaml"
    again.write_text(config.to_yaml())
    assert "spec:\n  name: scrfd_0.5g" in again.read_text()  # self-contained: spec inline
    assert load_config(again) == config


@pytest.mark.parametrize("text, words", [
    ("spec: models/s.yaml\nrecipe: {batch_sise: 4}\n", ["recipe.batch_sise", "batch_size"]),
    ("spec: models/s.yaml\nrecipe: {schedule: {lr: fast}}\n", ["recipe.schedule.lr", "number"]),
    ("spec: models/s.yaml\nrecipes: {}\n", ["'recipes'", "spec, recipe"]),
    ("spec: models/missing.yaml\n", ["missing.yaml", "not found"]),
    ("spec: models/s.yaml\nrecipe: {schedule: {unit: weeks}}\n", ["weeks"]),
    ("spec: [unclosed\n", ["line", "YAML"]),
])
def test_mistakes_name_file_and_key(config_file, text, words):
    config_file.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(config_file)
    message = str(err.value)
    assert str(config_file) in message and "\n" not in message
    for word in words:
        assert word in message


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_budgets_scale_without_editing(config_file):
    config = load_config(config_file)
    assert BUDGETS == ("smoke", "quick", "paper")
    assert apply_budget(config, "paper") == config
    for budget in ("smoke", "quick"):
        scaled = apply_budget(config, budget)
        s = scaled.recipe.schedule
        assert s.unit == "iterations" and s.total < 1000 and all(m < s.total for m in s.milestones)
        # what a budget must not touch: optimiser settings, augmentation, losses, spec, seed
        assert (s.lr, s.momentum, s.weight_decay) == (0.02, 0.9, 5e-4)
        assert scaled.recipe.augmentation == config.recipe.augmentation
        assert scaled.recipe.loss == config.recipe.loss and scaled.spec == config.spec
        assert scaled.recipe.seed == config.recipe.seed
    assert config.recipe.schedule.unit == "epochs"  # the original is untouched (frozen)
    with pytest.raises(UserError, match="nonsense.*smoke, quick, paper"):
        apply_budget(config, "nonsense")


@pytest.mark.parametrize("name, lr", [("0.5g", 0.01), ("2.5g", 0.01), ("10g", 0.01), ("34g", 0.02),
                                      ("2.5g_bnkps", 0.01)])
def test_published_recipes(repo_root, name, lr):
    """The paper budget is insightface's scrfd_*.py: SGD lr (0.02 for 34g), 640 epochs with
    x0.1 at 440 and 544, 1500 warm-up iterations from lr/1000, 4 GPUs x 8 images."""
    config = apply_budget(load_config(repo_root / "experiments" / f"scrfd_{name}.yaml"), "paper")
    r = config.recipe
    assert config.spec.name == f"scrfd_{name}"
    assert (r.schedule.lr, r.schedule.total, r.schedule.milestones) == (lr, 640, (440, 544))
    assert (r.schedule.warmup_iters, r.schedule.warmup_ratio, r.batch_size) == (1500, 0.001, 32)
    assert (r.train_size, r.test.size, r.test.score_thresh, r.test.iou_thresh) == (640, 640, 0.02, 0.45)
    # WIDER FACE train: 12,880 images / 32 per step = 403 iterations per epoch
    total, milestones = schedule_in_iterations(r.schedule, 403)
    assert (total, milestones) == (257_920, (177_320, 219_232))
