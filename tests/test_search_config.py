"""The search config a user controls: `--preset FILE` (their own preset, read and checked like
the built-in ones) and `--set KEY=VALUE` on the resolved config; bad input is one line naming
the key, exit 2 and no run directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from _cli import facenas, fakes_pythonpath, one_line_error
from detectors.errors import UserError
from experiments import MODELS_DIR, SEARCH_DIR
from nas.cli import main
from nas.options import SearchOptions
from nas.search_config import resolve_config


def _copy_preset(tmp_path: Path, name: str) -> Path:
    """experiments/search/<name> copied with its relative template (as a user would)."""
    (tmp_path / "search").mkdir(exist_ok=True)
    shutil.copytree(MODELS_DIR, tmp_path / "models", dirs_exist_ok=True)
    return Path(shutil.copy(SEARCH_DIR / name, tmp_path / "search" / name))


@pytest.mark.parametrize("space, name", [("scrfd", "scrfd_10g.yaml"), ("bfbox", "bfbox.yaml"),
                                         ("asfd", "asfd.yaml")])
def test_a_users_copy_of_a_preset_resolves_like_the_builtin(tmp_path, space, name):
    builtin = resolve_config(SearchOptions(space=space, gflops=10.0, budget="smoke"))
    # without --gflops, a preset naming its target (scrfd_10g) searches at that target
    gflops = None if space == "scrfd" else 10.0
    mine = resolve_config(SearchOptions(space=space, gflops=gflops, budget="smoke",
                                        preset=str(_copy_preset(tmp_path, name))))
    assert mine.pop("preset") == str(tmp_path / "search" / name)
    assert builtin.pop("preset") == str(SEARCH_DIR / name)
    assert mine == builtin


def test_set_overrides_any_key_of_the_resolved_config():
    base = resolve_config(SearchOptions(budget="smoke"))
    search = resolve_config(SearchOptions(budget="smoke", overrides=[
        "tolerance=0.03", "recipe.schedule.total=600", "bounds.max_depth=16",
        "recipe.train_size=128"]))
    assert search["tolerance"] == 0.03 and search["bounds"]["max_depth"] == 16
    assert search["recipe"]["schedule"] == {**base["recipe"]["schedule"], "total": 600}
    assert search["recipe"]["train_size"] == 128  # a recipe key the preset left out
    assert search["overrides"] == ["tolerance=0.03", "recipe.schedule.total=600",
                                   "bounds.max_depth=16", "recipe.train_size=128"]
    # what a trial trains follows: the budget's overrides are keys of the config too
    from nas.spaces.scrfd import trial_iterations

    longer = resolve_config(SearchOptions(budget="smoke", overrides=[
        "recipe_overrides.schedule.total=9"]))
    assert trial_iterations(base) == 2 and trial_iterations(longer) == 9


def _bad_presets(tmp_path: Path) -> dict[str, Path]:
    good = yaml.safe_load((SEARCH_DIR / "scrfd_2.5g.yaml").read_text())
    good["template"] = str(MODELS_DIR / "scrfd_2.5g.yaml")
    files = {"missing": tmp_path / "nothing.yaml"}
    files["yaml"] = tmp_path / "broken.yaml"
    files["yaml"].write_text("space: scrfd\nbounds: {max_depth: 24\n")
    for key, change in (("key", {"tolerence": 0.02}), ("type", {"tolerance": "two percent"}),
                        ("nested", {"bounds": {**good["bounds"], "max_depth": "deep"}})):
        files[key] = tmp_path / f"{key}.yaml"
        files[key].write_text(yaml.safe_dump({**good, **change}))
    return files


@pytest.mark.parametrize("args, words", [
    (["--preset", "{missing}"], ["nothing.yaml", "file not found"]),
    (["--preset", "{yaml}"], ["broken.yaml", "not valid YAML"]),
    (["--preset", "{key}"], ["unknown key 'tolerence'"]),
    (["--preset", "{type}"], ["tolerance must be a number", "two percent"]),
    (["--preset", "{nested}"], ["bounds.max_depth must be an integer", "deep"]),
    (["--set", "tolerance"], ["--set tolerance", "KEY=VALUE"]),
    (["--set", "tolerence=0.03"], ["unknown key 'tolerence'"]),
    (["--set", "bounds.max_dpeth=16"], ["unknown key 'bounds.max_dpeth'", "max_depth"]),
    (["--set", "recipe.schedule.totl=600"], ["recipe.schedule.totl"]),
    (["--set", "tolerance=abc"], ["--set tolerance must be a number"]),
    (["--set", "recipe.schedule.total=0"], ["--set recipe.schedule.total", "total must be >= 1"]),
    (["--set", "top_k=-1"], ["top_k must be an integer >= 0", "--set top_k"]),
    (["--set", "max_failures=1.5"], ["--set max_failures must be an integer"]),
])
def test_bad_preset_or_set_is_one_line_exit_2_and_no_run_dir(tmp_path, capsys, args, words):
    files = _bad_presets(tmp_path)
    args = [a.format(**files) for a in args]
    out = tmp_path / "run"
    rc = main(["search", "--budget", "smoke", "--data", str(tmp_path), "--out", str(out), *args])
    err = one_line_error(capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not out.exists()


def test_train_and_test_take_set_through_the_same_setter(tmp_path, capsys):
    config = str(Path(__file__).resolve().parents[1] / "experiments" / "scrfd_0.5g.yaml")
    for command in (["train", config, "--out", str(tmp_path / "run")],
                    ["test", config, "--weights", str(tmp_path / "none.pt")]):
        assert main([*command, "--set", "recipe.schedule.lr=fast"]) == 2
        assert "--set recipe.schedule.lr must be a number" in one_line_error(capsys)
        assert main([*command, "--set", "recipe.shedule.lr=0.1"]) == 2
        assert "unknown key 'recipe.shedule'" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    from detectors.config import load_config
    from detectors.overrides import override_config

    changed = override_config(load_config(config), ["recipe.schedule.lr=0.02",
                                                    "spec.head.num_convs=3"])
    assert changed.recipe.schedule.lr == 0.02 and changed.spec.head.num_convs == 3


@pytest.mark.slow
def test_preset_and_set_are_recorded_and_the_run_resumes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": fakes_pythonpath(),
           "FACENAS_TRIAL_FN": "search_fakes:fake_trial"}
    preset = _copy_preset(tmp_path, "scrfd_2.5g.yaml")
    result = facenas("search", "--budget", "smoke", "--steps", "1", "--num-samples", "2",
                     "--preset", str(preset), "--set", "tolerance=0.03",
                     "--set", "recipe.schedule.total=600", "--data", str(data), "--out", str(out),
                     env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    search = yaml.safe_load((out / "config.yaml").read_text())["search"]
    assert search["preset"] == str(preset) and search["tolerance"] == 0.03
    assert search["recipe"]["schedule"]["total"] == 600
    assert search["overrides"] == ["tolerance=0.03", "recipe.schedule.total=600"]
    again = facenas("search", "--resume", str(out), env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    refused = facenas("search", "--resume", str(out), "--set", "tolerance=0.5", env=env)
    assert refused.returncode == 2 and "--resume" in refused.stderr


def test_set_recipe_key_is_what_trials_train_whatever_the_budget():
    # quick and smoke replace the schedule length twice (the budget scaling, then budgets.yaml's
    # recipe section); a --set on the recipe still decides what a trial trains
    from nas.spaces import bfbox, scrfd

    for budget in ("smoke", "quick"):
        base = resolve_config(SearchOptions(budget=budget))
        search = resolve_config(SearchOptions(budget=budget, overrides=[
            "recipe.schedule.total=600", "recipe.schedule.momentum=0.8"]))
        assert scrfd.trial_iterations(base) != 600
        assert scrfd.trial_iterations(search) == 600
        assert search["recipe_overrides"]["schedule"]["total"] == 600
        # a key no budget layer replaces stays in the recipe alone, and trains
        assert "momentum" not in search["recipe_overrides"]["schedule"]
        assert scrfd.trial_recipe(search).schedule.momentum == 0.8
    # BFBox trains its recipe as resolved: nothing to carry over
    search = resolve_config(SearchOptions(space="bfbox", budget="smoke",
                                          overrides=["recipe.schedule.total=7"]))
    assert search["recipe_overrides"] == {} and bfbox.trial_recipe(search).schedule.total == 7
    # the carried value is checked with the layer it joins: quick's milestones exceed 100
    with pytest.raises(UserError, match=r"^--set recipe.schedule.total: .*milestones"):
        resolve_config(SearchOptions(budget="quick", overrides=["recipe.schedule.total=100"]))
