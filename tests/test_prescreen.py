"""`facenas search --prescreen PROXY [--prescreen-keep F]` (nas/strategies/prescreen.py): bad
options are one line and exit 2; a prescreened phase samples ceil(n / F) specs, trains the n
best by the proxy, records every score in plan/prescreen.csv and each kept row's score in the
results table; a re-plan reuses the recorded scores."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from _cli import facenas, fakes_pythonpath, one_line_error
from nas.cli import main


@pytest.mark.parametrize("args, words", [
    (["--prescreen", "zen"], ["--prescreen zen", "unknown zero-cost proxy",
                              "valid: naswot, synflow, grad_norm, zico"]),
    (["--prescreen", "naswot", "--prescreen-keep", "0"], ["--prescreen-keep 0", "(0, 1]"]),
    (["--prescreen", "naswot", "--prescreen-keep", "1.5"], ["--prescreen-keep 1.5", "(0, 1]"]),
    (["--prescreen-keep", "0.5"], ["--prescreen-keep 0.5", "only with --prescreen"]),
    (["--space", "bfbox", "--prescreen", "synflow"],
     ["--prescreen does not apply to --space bfbox", "not trained"]),
    (["--space", "asfd", "--prescreen", "synflow"],
     ["--prescreen does not apply to --space asfd", "derive"]),
    (["--prescreen", "zico"], ["proxy zico needs a batch of at least 4 images, got 2"]),
    (["--resume", "no-such-run", "--prescreen", "naswot"], ["do not apply with --resume"]),
])
def test_bad_prescreen_options_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, args,
                                                                     words):
    out = tmp_path / "run"
    code = main(["search", "--budget", "smoke", "--data", str(tmp_path), "--out", str(out), *args])
    err = one_line_error(capsys)
    assert code == 2 and all(w in err for w in words), err
    assert not out.exists()


@pytest.mark.slow
def test_prescreened_smoke_search_through_the_cli(tmp_path, tiny_data):
    from nas.proxies import proxy_batch, score_spec
    from nas.results import RunStore
    from nas.search_config import resolve_config
    from nas.options import SearchOptions
    from nas.spaces.scrfd import build_space, trial_recipe

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": fakes_pythonpath(),
           "FACENAS_TRIAL_FN": "search_fakes:fake_trial"}
    result = facenas("search", "--budget", "smoke", "--steps", "1", "--num-samples", "2",
                     "--prescreen", "synflow", "--prescreen-keep", "0.4", "--data",
                     str(tiny_data), "--out", str(out), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = pd.read_csv(out / "plan" / "prescreen.csv", dtype={"spec_id": str})
    # ceil(2 / 0.4) = 5 sampled, the 2 best kept
    assert len(record) == 5 and record["spec_id"].nunique() == 5
    assert (record["step"] == 1).all() and (record["proxy"] == "synflow").all()
    best = record.sort_values("score", ascending=False)
    assert list(best["rank"]) == [1, 2, 3, 4, 5]
    assert list(best["kept"]) == [True, True, False, False, False]
    kept = set(best["spec_id"][:2])
    store = RunStore(out)
    assert {s.id for s in store.read_plan(1)} == kept
    table = pd.read_parquet(out / "trials.parquet")
    assert set(table["spec_id"]) == kept and (table["status"] == "ok").all()
    by_id = record.set_index("spec_id")["score"]
    assert table.set_index("spec_id")["prescreen_synflow"].to_dict() == \
        {i: by_id[i] for i in kept}
    assert store.read_config()["search"]["prescreen"] == {"proxy": "synflow", "keep": 0.4}
    # the sampled specs are the sampler's own first 5, and each score is the proxy's (recomputed)
    search = resolve_config(SearchOptions(budget="smoke", steps="1", num_samples=5))
    sampled = build_space(search).sample(5, seed=record_seed(search), step=1)
    assert {s.id for s in sampled} == set(record["spec_id"])
    recipe = trial_recipe(search)
    batch = proxy_batch(tiny_data, recipe)
    spec = next(s for s in sampled if s.id == best["spec_id"].iloc[-1])
    assert score_spec("synflow", spec, batch, recipe, seed=0)[0] == pytest.approx(
        by_id[spec.id], rel=1e-9)


def record_seed(search: dict) -> int:
    from nas.strategies.two_step import sample_seed

    return sample_seed(search["seed"], 1)


def test_a_replan_reuses_the_recorded_scores(tmp_path):
    from detectors.spec import DetectorSpec
    from experiments import MODELS_DIR
    from nas.phases import Phase
    from nas.results import RunStore
    from nas.strategies.prescreen import PRESCREEN_FILE, plan, row_columns, sampled_count

    specs = [DetectorSpec.from_yaml(MODELS_DIR / f"scrfd_{g}.yaml") for g in ("0.5g", "2.5g", "10g")]
    asked = []

    def sample(store, search):
        asked.append(search["num_samples"])
        return specs[:search["num_samples"]]

    phase = Phase(step=1, label="step 1", plan=sample, prescreen="num_samples")
    store = RunStore(tmp_path / "run")
    (store.run_dir / "plan").mkdir(parents=True)
    search = {"num_samples": 1, "seed": 0, "data": None,
              "prescreen": {"proxy": "naswot", "keep": 0.34}}
    assert sampled_count(search, 1) == 3 and sampled_count({}, 7) == 7
    record = pd.DataFrame({"step": 1, "spec_id": [s.id for s in specs], "proxy": "naswot",
                           "score": [1.0, 3.0, 2.0], "cost_s": 0.5, "rank": 0, "kept": False})
    record.to_csv(store.run_dir / "plan" / PRESCREEN_FILE, index=False)
    # no data, no recipe: the recorded scores are used, not recomputed
    kept = plan(store, search, phase, trial_recipe=None)
    assert asked == [3] and [s.id for s in kept] == [specs[1].id]
    rewritten = pd.read_csv(store.run_dir / "plan" / PRESCREEN_FILE, dtype={"spec_id": str})
    assert list(rewritten["rank"]) == [1, 2, 3] and list(rewritten["kept"]) == [True, False, False]
    assert row_columns(store, 1, specs[1].id) == {"prescreen_naswot": 3.0}
    assert row_columns(store, 2, specs[1].id) == {}
    # without --prescreen the phase's own plan, as before
    assert plan(store, {"num_samples": 2}, phase, trial_recipe=None) == specs[:2]
