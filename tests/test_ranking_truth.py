"""benchmarks/ranking_truth.py --report: every figure from the two CSVs, checked by hand on a
4-spec truth (Kendall tau of 4 items: (concordant - discordant) / 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

def test_report_by_hand(tmp_path, ranking_truth, capsys):
    # seed 0 ranks a > b > c > d; seed 1 swaps c and d: 5 concordant, 1 discordant -> 4/6
    truth = pd.DataFrame({
        "spec_id": ["a", "b", "c", "d"] * 2, "seed": [0] * 4 + [1] * 4,
        "ap_easy": 0.5, "ap_medium": 0.4,
        "ap_hard": [0.40, 0.30, 0.20, 0.10, 0.42, 0.32, 0.10, 0.14],
        "train_s": [90.0, 110.0, 100.0, 100.0, 110.0, 90.0, 100.0, 100.0]})
    # mean over seeds: a 0.41 > b 0.31 > c 0.15 > d 0.12
    truth.to_csv(tmp_path / ranking_truth.TRUTH_CSV, index=False)
    proxies = pd.DataFrame({
        "spec_id": ["a", "b", "c", "d"] * 3,
        "proxy": ["same"] * 4 + ["reversed"] * 4 + ["one_swap"] * 4,
        "value": [4, 3, 2, 1, 1, 2, 3, 4, 4, 2, 3, 1],   # one_swap: b and c swapped
        "cost_s": [1.0] * 4 + [2.0] * 4 + [5.0, 5.0, 15.0, 15.0]})
    proxies.to_csv(tmp_path / ranking_truth.PROXIES_CSV, index=False)

    rep = ranking_truth.report(tmp_path, n_boot=300)
    assert rep["specs"] == 4 and rep["seeds"] == [0, 1]
    assert rep["seed_pairs"] == [{"seeds": [0, 1], "specs": 4, "tau": pytest.approx(4 / 6)}]
    # one long training per spec: mean over seeds is 100 s for every spec
    assert rep["truth_cost_s"] == pytest.approx(100.0)
    got = {p["proxy"]: p for p in rep["proxies"]}
    assert got["same"]["tau"] == pytest.approx(1.0) and got["reversed"]["tau"] == pytest.approx(-1.0)
    assert got["one_swap"]["tau"] == pytest.approx(4 / 6)
    # every resample of a perfect ranking has tau 1 (or is undefined, skipped)
    assert (got["same"]["ci_low"], got["same"]["ci_high"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert got["reversed"]["ci_high"] == pytest.approx(-1.0)
    assert got["one_swap"]["ci_low"] < 4 / 6 <= got["one_swap"]["ci_high"] <= 1.0
    assert got["same"]["cost_fraction"] == pytest.approx(0.01)
    assert got["one_swap"]["cost_fraction"] == pytest.approx(0.10)  # median of 5, 5, 15, 15
    # each proxy's offline --prescreen against random sampling (prescreen_vs_random's test)
    assert got["same"]["prescreen"]["worse"] == 0 and got["reversed"]["prescreen"]["better"] == 0
    # the command prints the same figures (and runs from the CSVs alone)
    assert ranking_truth.main(["--report", "--results", str(tmp_path), "--bootstrap", "300"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["seed_pairs"][0]["tau"] == pytest.approx(4 / 6)
    # per metric: easy and medium are equal for every run (no spread), hard as above
    noise = {r["metric"]: r for r in printed["seed_noise"]}
    assert noise["ap_hard"]["tau"] == pytest.approx(4 / 6) and noise["ap_hard"]["specs"] == 4
    assert noise["ap_hard"]["icc"] > 0.8
    assert [p["proxy"] for p in printed["proxies"]] == ["same", "reversed", "one_swap"]


def test_collect_and_write_truth_skip_unfinished_runs(tmp_path, ranking_truth):
    from types import SimpleNamespace

    specs = [SimpleNamespace(id="0a1b2c3d4e5f"), SimpleNamespace(id="00aa11bb22cc")]
    row = {"spec_id": specs[1].id, "seed": 1, "ap_easy": 0.3, "ap_medium": 0.2, "ap_hard": 0.1,
           "train_s": 12.5}
    done = tmp_path / "out" / specs[1].id / "seed1"
    done.mkdir(parents=True)
    (done / ranking_truth.RESULT).write_text(json.dumps(row))
    (tmp_path / "out" / specs[0].id / "seed0").mkdir(parents=True)  # started, not finished
    rows = ranking_truth.collect(tmp_path / "out", specs, [0, 1])
    assert rows == [row]
    ranking_truth.write_truth(tmp_path, rows)
    table = pd.read_csv(tmp_path / ranking_truth.TRUTH_CSV, dtype={"spec_id": str})
    assert list(table.columns) == ranking_truth.TRUTH_COLUMNS and table.iloc[0]["train_s"] == 12.5


def test_committed_rows_survive_a_fresh_runs_directory(tmp_path, ranking_truth):
    """A later session (fresh clone) has benchmarks/results/ but no runs directory: the
    committed rows and curve points stay in the rewritten CSVs and count as finished."""
    from types import SimpleNamespace

    specs = [SimpleNamespace(id="0a1b2c3d4e5f"), SimpleNamespace(id="00aa11bb22cc")]
    old = {"spec_id": specs[0].id, "seed": 0, "ap_easy": 0.5, "ap_medium": 0.4, "ap_hard": 0.3,
           "train_s": 99.0}
    ranking_truth.write_truth(tmp_path, [old])
    point = {"spec_id": specs[0].id, "seed": 0, "iteration": 400, "ap_easy": 0.1, "ap_medium": 0.1,
             "ap_hard": 0.05, "loss": 2.5}
    ranking_truth.write_curves(tmp_path, [point])
    new = {"spec_id": specs[1].id, "seed": 1, "ap_easy": 0.3, "ap_medium": 0.2, "ap_hard": 0.1,
           "train_s": 12.5}
    done = tmp_path / "out" / specs[1].id / "seed1"
    done.mkdir(parents=True)
    (done / ranking_truth.RESULT).write_text(json.dumps(new))
    rows = ranking_truth.collect(tmp_path / "out", specs, [0, 1], tmp_path)
    assert rows == [old, new]  # (spec, seed) order: the committed one first
    assert ranking_truth.collect(tmp_path / "out", specs, [0, 1]) == [new]  # without results/
    curves = ranking_truth.collect_curves(tmp_path / "out", specs, [0, 1], tmp_path)
    assert curves == [point]


def test_the_recorded_specs_are_the_truth_across_code_changes(tmp_path, ranking_truth):
    """Once ranking_truth_specs.yaml is written, later runs train those specs, not a fresh
    sample: a change to the sampler or the cost model between sessions (session 8's FLOPs
    convention changed the sample under the same settings) must not swap the truth's specs.
    The recorded file here holds a spec no 0.5 GF sample would draw (the published 2.5 GF
    model); a spec that no longer hashes to its recorded id is refused."""
    import yaml

    from detectors.spec import DetectorSpec

    setting = {"gflops": 0.5, "specs": 1, "seeds": [0], "sample_seed": 0, "budget": "paper",
               "overrides": {"train_size": 128}}
    _, fresh = ranking_truth.sample(setting, tmp_path)  # nothing recorded yet: a sample
    recorded = DetectorSpec.from_yaml(Path(__file__).resolve().parents[1] / "experiments" / "models" / "scrfd_2.5g.yaml")
    assert [s.id for s in fresh] != [recorded.id]
    path = tmp_path / ranking_truth.SPECS_YAML
    path.write_text(yaml.safe_dump([{"spec_id": recorded.id, "spec": recorded.to_dict()}]))
    _, specs = ranking_truth.sample(setting, tmp_path)
    assert [s.id for s in specs] == [recorded.id]
    path.write_text(yaml.safe_dump([{"spec_id": "0123456789ab", "spec": recorded.to_dict()}]))
    with pytest.raises(SystemExit, match="spec 0123456789ab now hashes to"):
        ranking_truth.sample(setting, tmp_path)


def test_the_recorded_recipe_is_what_later_runs_train(tmp_path, ranking_truth):
    """A later session trains the recipe the first run recorded, even where the preset's
    defaults have moved since (here: the recorded lr is not the preset's); a recorded recipe
    that no longer resolves to itself is refused rather than silently mixed."""
    import yaml

    setting = {"gflops": 0.5, "specs": 1, "seeds": [0], "sample_seed": 0, "budget": "paper",
               "overrides": {"train_size": 128}}
    search, specs = ranking_truth.sample(setting, tmp_path)
    ranking_truth.record_setup(tmp_path, setting, search, specs, {"torch": "x"})
    path = tmp_path / ranking_truth.RECIPE_YAML
    recorded = yaml.safe_load(path.read_text())
    assert recorded["recipe"]["schedule"]["lr"] != 0.123
    recorded["recipe"]["schedule"]["lr"] = 0.123  # as if the preset's default moved later
    path.write_text(yaml.safe_dump(recorded))
    search, specs = ranking_truth.sample(setting, tmp_path)
    assert ranking_truth.truth_recipe(search).schedule.lr == 0.123
    ranking_truth.record_setup(tmp_path, setting, search, specs, {"torch": "x"})  # consistent: kept
    assert yaml.safe_load(path.read_text())["recipe"]["schedule"]["lr"] == 0.123
    search["recipe"] = {**search["recipe"], "batch_size": 3}  # resolves to another recipe
    with pytest.raises(SystemExit, match="no longer resolves to itself"):
        ranking_truth.record_setup(tmp_path, setting, search, specs, {"torch": "x"})


def test_short_recipes_train_each_spec_once_and_become_proxies(tmp_path, ranking_truth, tiny_data):
    """--short-recipes: each factor scales the budget's schedule (iterations, milestones,
    warm-up); every spec's run lands in proxies.csv as recipe_<budget>_x<factor> with its
    val hard AP (the run's own result.json) and summed iteration time; zero-cost rows stay;
    a rerun reads finished runs back instead of training them again."""
    import json

    import pandas as pd
    import yaml

    results, out = tmp_path / "results", tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train_size": 128, "batch_size": 2, "workers": 0,
                                      "schedule": {"unit": "iterations", "total": 4, "milestones": [3],
                                                   "warmup_iters": 1}, "test": {"size": 128}}))
    results.mkdir()
    pd.DataFrame([{"spec_id": "x", "proxy": "synflow", "value": 1.0, "cost_s": 0.5}]).to_csv(
        results / ranking_truth.PROXIES_CSV, index=False)
    argv = ["--gflops", "0.5", "--specs", "1", "--seeds", "0", "--recipe", str(recipe),
            "--results", str(results), "--out", str(out), "--data", str(tiny_data),
            "--workers", "1", "--short-budget", "smoke", "--short-recipes", "1", "2"]
    assert ranking_truth.main(argv) == 0
    frame = pd.read_csv(results / ranking_truth.PROXIES_CSV, dtype={"spec_id": str})
    spec_id = yaml.safe_load((results / ranking_truth.SPECS_YAML).read_text())[0]["spec_id"]
    assert sorted(frame["proxy"]) == ["recipe_smoke_x1", "recipe_smoke_x2", "synflow"]
    for name, total in (("recipe_smoke_x1", 2), ("recipe_smoke_x2", 4)):  # smoke: 2 iterations, milestone 1
        run = out / "short" / name / spec_id
        trained = yaml.safe_load((run / "trial_config.yaml").read_text())["recipe"]["schedule"]
        assert trained["total"] == total and trained["milestones"] == [total // 2]
        result = json.loads((run / ranking_truth.RESULT).read_text())
        mine = frame[frame["proxy"] == name].iloc[0]
        assert mine["spec_id"] == spec_id and mine["value"] == pytest.approx(result["ap_hard"])
        assert mine["cost_s"] == pytest.approx(result["train_s"]) and mine["cost_s"] > 0
        assert len((run / "train" / "metrics.jsonl").read_text().splitlines()) == total
    stamp = (out / "short" / "recipe_smoke_x2" / spec_id / "train" / "checkpoint.pt").stat().st_mtime_ns
    assert ranking_truth.main(argv) == 0
    assert (out / "short" / "recipe_smoke_x2" / spec_id / "train" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert len(pd.read_csv(results / ranking_truth.PROXIES_CSV)) == 3


def test_prescreen_against_random_sampling_by_hand(ranking_truth):
    """The offline --prescreen comparison: a proxy that ranks like the truth never picks a
    worse top than random sampling of the same pool, a reversed one never a better; with
    keep 1 both train the same pool, so they always tie; and a hand-sized case: pool of 2
    from specs whose truth is 1 and 0, training 1, top 1."""
    import numpy as np

    ids = [f"s{i}" for i in range(8)]
    truth = pd.Series(np.linspace(0.8, 0.1, 8), index=ids)
    same = ranking_truth.prescreen_vs_random(truth * 10, truth, draws=500)
    assert same["worse"] == 0 and same["better"] > 0.5 and same["mean_gain"] > 0
    assert same["pool"] == 16 and same["specs"] == 8
    assert same["prescreen_median"] > same["random_median"]
    reverse = ranking_truth.prescreen_vs_random(-truth, truth, draws=500)
    assert reverse["better"] == 0 and reverse["worse"] > 0.5
    tie = ranking_truth.prescreen_vs_random(-truth, truth, keep=1.0, draws=200)
    assert tie["equal"] == 1.0 and tie["mean_gain"] == 0
    # two specs, pool 2, train 1: the pool is (a, a), (a, b), (b, a), (b, b) with 1/4 each;
    # the prescreen (proxy = truth) picks a whenever a is in the pool, random only if a is first
    two = pd.Series([1.0, 0.0], index=["a", "b"])
    hand = ranking_truth.prescreen_vs_random(two, two, n=1, keep=0.5, top=1, draws=4000)
    assert hand["better"] == pytest.approx(0.25, abs=0.03)  # only (b, a)
    assert hand["worse"] == 0 and hand["mean_gain"] == pytest.approx(0.25, abs=0.03)


def test_seed_reliability_by_hand(ranking_truth):
    import math

    # seed 1 is 2 better for every spec: a shift that changes no ranking costs nothing
    shifted = pd.DataFrame({0: [1.0, 4.0, 7.0], 1: [3.0, 6.0, 9.0]}, index=["a", "b", "c"])
    got = ranking_truth.seed_reliability(shifted)
    assert (got["specs"], got["seeds"]) == (3, 2)
    assert got["icc"] == pytest.approx(1.0) and got["seed_sd"] == pytest.approx(0.0)
    assert got["seed_shift"] == pytest.approx(math.sqrt(2)) and got["seeds_for_tau"] == 1
    # spec means 2.5, 5, 9 (grand 5.5), seed means 4, 7; residuals 0, 0, +-0.5, -+0.5:
    # MSR = 2 * 21.5 / 2 = 21.5, MSE = 1 / 2 = 0.5
    table = pd.DataFrame({0: [1.0, 4.0, 7.0], 1: [4.0, 6.0, 11.0]})
    got = ranking_truth.seed_reliability(table)
    assert got["icc"] == pytest.approx(21 / 22) and got["reliability"] == pytest.approx(21 / 21.5)
    assert got["seed_sd"] == pytest.approx(math.sqrt(0.5)) and got["between_sd"] == pytest.approx(math.sqrt(10.5))
    assert got["tau_one_seed"] == pytest.approx(2 / math.pi * math.asin(21 / 22))
    assert got["tau_mean"] == pytest.approx(2 / math.pi * math.asin(math.sqrt(21 / 21.5)))
    # ICC 0.2 (spec means -c, 0, c with c^2 = 1.5; residuals +-1 in two specs): Spearman-Brown
    # needs m >= 0.6545 * 0.8 / (0.2 * 0.3455) = 7.58 seeds for the mean's tau to reach 0.6
    c = math.sqrt(1.5)
    noisy = pd.DataFrame({0: [-c + 1, -1.0, c], 1: [-c - 1, 1.0, c]})
    got = ranking_truth.seed_reliability(noisy)
    assert got["icc"] == pytest.approx(0.2) and got["seeds_for_tau"] == 8
    # seeds disagree completely: no spread between specs, and no number of seeds helps
    got = ranking_truth.seed_reliability(pd.DataFrame({0: [0.0, 3.0], 1: [4.0, 1.0]}))
    assert got["icc"] == pytest.approx(-1.0) and got["seeds_for_tau"] == math.inf
    # one seed: nothing to compare
    assert "icc" not in ranking_truth.seed_reliability(pd.DataFrame({0: [1.0, 2.0]}))


def test_report_names_runs_with_a_dead_anchor(tmp_path, ranking_truth, capsys):
    # the 4-spec truth of test_report_by_hand: seed 1 swaps c and d (tau 4/6); c's seed 1 run
    # has a dead second anchor, so without c the seeds agree (a, b, d in order: tau 1)
    truth = pd.DataFrame({
        "spec_id": ["a", "b", "c", "d"] * 2, "seed": [0] * 4 + [1] * 4,
        "ap_easy": 0.5, "ap_medium": 0.4,
        "ap_hard": [0.40, 0.30, 0.20, 0.10, 0.42, 0.32, 0.10, 0.14], "train_s": 100.0})
    truth.to_csv(tmp_path / ranking_truth.TRUTH_CSV, index=False)
    anchors = pd.DataFrame([{"spec_id": s, "seed": seed, "anchor": k, "faces": 100,
                             "score": 0.0 if (s, seed, k) == ("c", 1, 1) else 0.15}
                            for s in "abcd" for seed in (0, 1) for k in (0, 1)])
    anchors.to_csv(tmp_path / ranking_truth.ANCHORS_CSV, index=False)
    assert ranking_truth.failed_runs(anchors) == [("c", 1)]
    rep = ranking_truth.report(tmp_path, n_boot=50)
    assert rep["failed_runs"] == [["c", 1]]
    pair = rep["seed_pairs"][0]
    assert pair["tau"] == pytest.approx(4 / 6)
    assert pair["tau_without_failed"] == pytest.approx(1.0) and pair["specs_without_failed"] == 3
    ranking_truth.print_report(rep)
    assert "c seed 1" in capsys.readouterr().out


def _perturbed(gt, rng, miss: float, jitter: float) -> dict:
    """Predictions on every ground-truth face: a share `miss` left out, boxes jittered, random
    scores, one false positive per image."""
    import numpy as np

    out = {}
    for image_id in gt.image_ids:
        boxes = gt.boxes[image_id]
        kept = boxes[rng.random(len(boxes)) >= miss]
        moved = kept + rng.normal(0, jitter, kept.shape) * kept[:, 2:].repeat(2).reshape(-1, 4)
        rows = np.r_[np.c_[moved, rng.random(len(moved)) + 0.5], [[1.0, 1.0, 5.0, 5.0, rng.random()]]]
        out[image_id] = rows
    return out


@pytest.fixture(scope="module")
def val_data(tmp_path_factory) -> Path:
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("val_noise") / "root", num_train=1, num_val=12,
                    image_size=128, seed=3, progress=False)


def test_val_noise_pairs_each_specs_seeds_on_shared_resamples(val_data, ranking_truth):
    """Rows: both runs' AP on the full val set (evaluate's), their difference, and the sd of
    the difference over resamples shared by all runs (image_bootstrap_ap's columns)."""
    import numpy as np

    from detectors.data.widerface import load_eval_ground_truth
    from detectors.evaluate import evaluate, image_bootstrap_ap

    truth_val_noise = ranking_truth._sibling("truth_val_noise")
    gt = load_eval_ground_truth(val_data)
    rng = np.random.default_rng(0)
    preds = {("b", 0): _perturbed(gt, rng, 0.2, 0.05), ("b", 1): _perturbed(gt, rng, 0.4, 0.05),
             ("a", 1): _perturbed(gt, rng, 0.1, 0.3), ("a", 0): _perturbed(gt, rng, 0.1, 0.02)}
    rows = truth_val_noise.rows(preds, gt, "hard", samples=200, seed=5)
    assert [(r["spec_id"], r["seed_a"], r["seed_b"]) for r in rows] == [("a", 0, 1), ("b", 0, 1)]
    order = sorted(preds)  # the columns of the shared resamples
    boot = image_bootstrap_ap([preds[k] for k in order], gt, "hard", 200, 5)
    for r in rows:
        a, b = (r["spec_id"], r["seed_a"]), (r["spec_id"], r["seed_b"])
        assert r["ap_a"] == pytest.approx(evaluate(preds[a], gt, progress=False).ap["hard"])
        assert r["diff"] == pytest.approx(r["ap_a"] - r["ap_b"])
        d = boot[:, order.index(a)] - boot[:, order.index(b)]
        assert r["boot_sd"] == pytest.approx(d.std(ddof=1)) and r["boot_sd"] > 0
    # a run against itself differs on no resample
    same = truth_val_noise.rows({("c", 0): preds[("a", 0)], ("c", 1): preds[("a", 0)]}, gt, "hard", 50)
    assert same[0]["diff"] == 0 and same[0]["boot_sd"] == 0


def test_val_noise_summary_by_hand(ranking_truth):
    truth_val_noise = ranking_truth._sibling("truth_val_noise")
    table = pd.DataFrame({"spec_id": ["a", "b"], "seed_a": 0, "seed_b": 1, "setting": "hard",
                          "ap_a": [0.3, 0.3], "ap_b": [0.28, 0.34], "diff": [0.02, -0.04],
                          "boot_sd": [0.01, 0.01], "samples": 100})
    got = truth_val_noise.summary(table)
    # seed variance (0.02^2 + 0.04^2) / 2 / 2 = 5e-4; val-set part 0.01^2 / 2 = 5e-5
    assert got["seed_sd"] == pytest.approx(5e-4 ** 0.5) and got["val_set_sd"] == pytest.approx(5e-5 ** 0.5)
    assert got["val_set_share"] == pytest.approx(0.1) and got["pairs"] == 2


def test_val_noise_command_uses_each_runs_predictions_and_the_report_prints_it(
        tmp_path, val_data, ranking_truth, capsys):
    """--val-noise scores every spec whose seeds all finished (a spec with a seed missing is
    left out), from the predictions in its run directories; --report then prints the rows."""
    import numpy as np
    import yaml

    from detectors.data.widerface import load_eval_ground_truth
    from detectors.evaluate import write_predictions
    from detectors.spec import DetectorSpec

    models = Path(__file__).resolve().parents[1] / "experiments" / "models"
    specs = [DetectorSpec.from_yaml(models / name) for name in ("scrfd_2.5g.yaml", "scrfd_0.5g.yaml")]
    results, out = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    (results / ranking_truth.SPECS_YAML).write_text(
        yaml.safe_dump([{"spec_id": s.id, "spec": s.to_dict()} for s in specs]))
    gt = load_eval_ground_truth(val_data)
    rng = np.random.default_rng(1)
    for spec, seeds in ((specs[0], (0, 1)), (specs[1], (0,))):  # the second spec: seed 1 unfinished
        for seed in seeds:
            run = out / spec.id / f"seed{seed}"
            (run / "train").mkdir(parents=True)
            (run / "train" / "checkpoint.pt").write_bytes(b"")  # not read: predictions exist
            (run / ranking_truth.RESULT).write_text("{}")
            for image_id, p in _perturbed(gt, rng, 0.3, 0.05).items():
                write_predictions(run / "val_predictions", image_id, p[:, :4], p[:, 4])
    truth = pd.DataFrame({"spec_id": [specs[0].id] * 2, "seed": [0, 1], "ap_easy": 0.1,
                          "ap_medium": 0.1, "ap_hard": [0.1, 0.2], "train_s": 1.0})
    truth.to_csv(results / ranking_truth.TRUTH_CSV, index=False)
    argv = ["--results", str(results), "--out", str(out), "--data", str(val_data), "--bootstrap", "100"]
    assert ranking_truth.main(["--val-noise", *argv]) == 0
    table = pd.read_csv(results / "ranking_truth_val_noise.csv", dtype={"spec_id": str})
    assert table["spec_id"].tolist() == [specs[0].id] and table["samples"].tolist() == [100]
    capsys.readouterr()
    assert ranking_truth.main(["--report", "--results", str(results), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "of the seed variance" in printed
    rep = json.loads(printed.strip().splitlines()[-1])
    assert rep["val_noise"]["rows"][0]["diff"] == pytest.approx(table["diff"].iloc[0])
