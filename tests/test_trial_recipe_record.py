"""A search records the recipe its trials train with, and --resume refuses to train another
(nas.trial_recipe_record): a default changed between begin and resume must not mix trials."""

from __future__ import annotations

import pytest
import yaml

from detectors.errors import UserError
from nas.options import SearchOptions
from nas.results import RunStore
from nas.search_config import resolve_search
from nas.trial_recipe_record import TRIAL_RECIPE_KEY, check_trial_recipe


def _search(tmp_path, space: str = "scrfd") -> dict:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return resolve_search(SearchOptions(space=space, budget="smoke", data=str(data), steps="1",
                                        num_samples=2))


@pytest.mark.parametrize("space", ["scrfd", "bfbox", "asfd"])
def test_a_new_run_records_the_recipe_its_trials_train(tmp_path, space):
    from nas.driver import _write_new_run

    search = _search(tmp_path, space)
    store = RunStore(tmp_path / "run")
    _write_new_run(store, search)
    recorded = yaml.safe_load(store.config_path.read_text())[TRIAL_RECIPE_KEY]
    assert recorded["box_init"] == "anchor"  # today's default, written out
    if space == "scrfd":  # a second route to the same recipe: the config a trial writes
        from detectors.spec import DetectorSpec
        from experiments import EXPERIMENTS_DIR
        from nas.trial import trial_config

        spec = DetectorSpec.from_yaml(EXPERIMENTS_DIR / "models" / "scrfd_2.5g.yaml")
        trained = trial_config(spec.to_yaml(), search["recipe"], search["budget"],
                               search["recipe_overrides"], tmp_path / "trial_config.yaml")
        assert recorded == trained.recipe.to_dict()
    check_trial_recipe(store, yaml.safe_load(store.config_path.read_text()))  # resumes as is


def test_resume_refuses_a_recipe_whose_default_changed(tmp_path, capsys):
    import ray

    from nas.cli import main
    from nas.trial_recipe_record import trial_recipe_record

    search = _search(tmp_path)
    run = tmp_path / "run"
    began = {**trial_recipe_record(search), "box_init": "point"}  # the default when it began
    RunStore(run).write_config({"search": search, "seed": 0, TRIAL_RECIPE_KEY: began,
                                "git_revision": "abc123"})
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    code = main(["search", "--resume", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "recipe.box_init 'point' -> 'anchor'" in err and "abc123" in err
    assert (run / "config.yaml").read_text() == before and sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert not ray.is_initialized()


def test_a_nested_difference_is_named_by_its_dotted_key(tmp_path):
    search = _search(tmp_path)
    store = RunStore(tmp_path / "run")
    from nas.trial_recipe_record import trial_recipe_record

    began = trial_recipe_record(search)
    began["schedule"] = {**began["schedule"], "total": began["schedule"]["total"] + 1}
    with pytest.raises(UserError, match=r"recipe\.schedule\.total \d+ -> \d+"):
        check_trial_recipe(store, {"search": search, TRIAL_RECIPE_KEY: began})


def _legacy_run(tmp_path, finished: bool) -> tuple[RunStore, dict]:
    """A run begun before the record existed (and before recipe.box_init): no trial_recipe."""
    search = _search(tmp_path)
    store = RunStore(tmp_path / "run")
    store.write_config({"search": search, "seed": 0})
    if finished:
        store.write_result(store.trial_dir(1, "0123456789ab"), {"status": "ok", "ap_hard": 0.3})
    return store, yaml.safe_load(store.config_path.read_text())


def test_a_legacy_run_with_finished_trials_is_refused_until_it_names_its_init(tmp_path):
    store, config = _legacy_run(tmp_path, finished=True)
    with pytest.raises(UserError) as err:
        check_trial_recipe(store, config)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "`box_init: point`" in message
    assert TRIAL_RECIPE_KEY not in yaml.safe_load(store.config_path.read_text())
    # doing what the line says resumes it with point init, recorded from then on
    config["search"]["recipe"]["box_init"] = "point"
    check_trial_recipe(store, config)
    assert yaml.safe_load(store.config_path.read_text())[TRIAL_RECIPE_KEY]["box_init"] == "point"


def test_a_legacy_run_with_nothing_finished_resumes_with_todays_recipe_recorded(tmp_path):
    store, config = _legacy_run(tmp_path, finished=False)
    check_trial_recipe(store, config)
    recorded = yaml.safe_load(store.config_path.read_text())
    assert recorded[TRIAL_RECIPE_KEY]["box_init"] == "anchor" and recorded["search"] == config["search"]
