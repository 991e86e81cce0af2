"""benchmarks/ranking_truth.py's learning curves (issue 25, 3.2 and 3.4): the rung proxies and
the ASHA/SH replay in --report, checked by hand on a 4-spec, 2-seed curves table; and the
resumable recording through the real trainer and tester on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

def _write_tables(root: Path, ranking_truth) -> None:
    # final hard AP: seed 0 a > b > c > d, seed 1 a > b > d > c; mean a .41 > b .31 > c .15 > d .12
    final = {0: [0.40, 0.30, 0.20, 0.10], 1: [0.42, 0.32, 0.10, 0.14]}
    # iteration 1: seed 0's AP ranks the reverse of the truth, seed 1's the truth's order;
    # iteration 3: both seeds the truth's order; the loss is lowest for a, highest for d, always
    rung = {(1, 0): [0.01, 0.02, 0.03, 0.04], (1, 1): [0.04, 0.03, 0.02, 0.01],
            (3, 0): [0.2, 0.1, 0.06, 0.05], (3, 1): [0.2, 0.1, 0.06, 0.05]}
    rows, truth = [], []
    for seed in (0, 1):
        for i, spec in enumerate("abcd"):
            for it in (1, 3, 9):
                ap = final[seed][i] if it == 9 else rung[(it, seed)][i]
                rows.append({"spec_id": spec, "seed": seed, "iteration": it, "ap_easy": ap,
                             "ap_medium": ap, "ap_hard": ap, "loss": 1.0 + i + 1 / it})
            truth.append({"spec_id": spec, "seed": seed, "ap_easy": final[seed][i],
                          "ap_medium": final[seed][i], "ap_hard": final[seed][i], "train_s": 9.0})
    pd.DataFrame(rows, columns=ranking_truth.CURVE_COLUMNS).to_csv(root / ranking_truth.CURVES_CSV, index=False)
    pd.DataFrame(truth, columns=ranking_truth.TRUTH_COLUMNS).to_csv(root / ranking_truth.TRUTH_CSV, index=False)


def test_rung_proxies_and_replay_by_hand(tmp_path, ranking_truth, capsys):
    _write_tables(tmp_path, ranking_truth)
    rep = ranking_truth.report(tmp_path, n_boot=200, orders=40, grace=1 / 9, reduction_factor=3, workers=2)
    got = {(p["proxy"], p["iteration"]): p for p in rep["rung_proxies"]}
    assert set(got) == {(n, i) for n in ("rung_ap_hard", "rung_loss") for i in (1, 3, 9)}
    # tau of 4 items = (concordant - discordant) / 6
    # iteration 1: seed 0 tau -1, seed 1 tau 1 -> mean 0. Against the other seed's final:
    # seed 0's rung (d>c>b>a) vs seed 1's final (a>b>d>c): 1 concordant, 5 discordant -> -4/6;
    # seed 1's rung (a>b>c>d) vs seed 0's final (a>b>c>d): 1 -> mean 1/6
    assert got[("rung_ap_hard", 1)]["tau"] == pytest.approx(0.0)
    assert got[("rung_ap_hard", 1)]["tau_other"] == pytest.approx(1 / 6)
    assert got[("rung_ap_hard", 1)]["cost_fraction"] == pytest.approx(1 / 9)
    assert got[("rung_ap_hard", 3)]["tau"] == pytest.approx(1.0)
    assert (got[("rung_ap_hard", 3)]["ci_low"], got[("rung_ap_hard", 3)]["ci_high"]) == (
        pytest.approx(1.0), pytest.approx(1.0))
    assert got[("rung_ap_hard", 3)]["cost_fraction"] == pytest.approx(1 / 3)
    # the end: seed 0 ranks like the mean (1), seed 1 swaps c and d (4/6) -> 5/6; against the
    # other seed it is the seed-against-seed tau
    assert got[("rung_ap_hard", 9)]["tau"] == pytest.approx(5 / 6)
    assert got[("rung_ap_hard", 9)]["tau_other"] == pytest.approx(rep["seed_pairs"][0]["tau"])
    assert rep["seed_pairs"][0]["tau"] == pytest.approx(4 / 6)
    # the loss, negated, ranks a > b > c > d in both seeds at every iteration
    for it in (1, 3, 9):
        assert got[("rung_loss", it)]["tau"] == pytest.approx(1.0)
    assert got[("rung_loss", 1)]["tau_other"] == pytest.approx((4 / 6 + 1) / 2)

    replay = {r["metric"]: r for r in rep["replay"]["runs"]}
    assert replay["ap_hard"]["rungs"] == [1, 3] and replay["ap_hard"]["max_t"] == 9
    rows = {(r["metric"], x["method"], x["k"]): x for r in replay.values() for x in r["rows"]}
    # SH: 4 specs, keep floor(4/3) = 1 at iteration 1 and 1 at 3: 3 * 1 + 9 of 4 * 9 iterations
    for metric in ("ap_hard", "loss"):
        sh = rows[(metric, "sh", 1)]
        assert sh["savings_p5"] == pytest.approx(2 / 3) and sh["savings_p95"] == pytest.approx(2 / 3)
        assert sh["orders"] == 40
    # on the loss, spec a (best final AP) is best at every rung in either seed: never stopped
    assert rows[("loss", "sh", 1)]["recall_p5"] == 1.0
    assert rows[("loss", "asha", 1)]["recall_p5"] == 1.0
    assert 0 < rows[("loss", "asha", 1)]["savings_median"] < 1

    assert ranking_truth.main(["--report", "--results", str(tmp_path), "--bootstrap", "50",
                    "--orders", "10"]) == 0
    out = capsys.readouterr().out
    assert "| rung_loss | 3 | 4 | 1.000 |" in out
    assert "replay on loss (scored by final ap_hard): 4 specs, rungs at 1, 3, max_t 9" in out
    assert "| sh | 1 | 0.67 [0.67, 0.67] |" in out


def test_default_rungs_are_the_search_asha_rungs(ranking_truth):
    from detectors.errors import UserError
    from nas.fidelity import fidelity_from, rung_iterations

    asha = fidelity_from("asha", 1 / 9, 3, 3600)
    assert rung_iterations(asha.rungs, 3600) == [400, 1200, 3600]
    assert ranking_truth.default_rungs(3600) == [400, 1200, 2400]
    assert ranking_truth.curve_points(None, 3600) == [400, 1200, 2400, 3600]
    assert ranking_truth.curve_points([5, 2, 5], 8) == [2, 5, 8]
    with pytest.raises(UserError, match="--rungs 9: outside 1..8"):
        ranking_truth.curve_points([2, 9], 8)


def test_real_recording_resumes_without_recomputing(tmp_path, ranking_truth, tiny_data, monkeypatch,
                                                    one_torch_thread):
    import detectors.test
    import detectors.train

    overrides = {"train_size": 128, "batch_size": 2, "workers": 0,
                 "schedule": {"unit": "iterations", "total": 4, "milestones": [3],
                              "warmup_iters": 1},
                 "test": {"size": 128}}
    setting = {"gflops": 0.5, "specs": 1, "seeds": [0], "sample_seed": 0, "budget": "paper",
               "overrides": overrides}
    search, specs = ranking_truth.sample(setting)
    out = tmp_path / "out"
    request = ranking_truth._requests(search, specs, [0], out, str(tiny_data), 1)[0]
    run_dir = Path(request["out_dir"])
    real_train, real_test = detectors.train.train, detectors.test.test
    calls = []

    def train(*a, **kw):
        calls.append(("train", kw["max_iterations"], kw["resume"]))
        return real_train(*a, **kw)

    def killed_test(*a, **kw):  # the session dies while testing the end point
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(("test",))
        return real_test(*a, **kw)

    monkeypatch.setattr(detectors.train, "train", train)
    monkeypatch.setattr(detectors.test, "test", killed_test)
    with pytest.raises(KeyboardInterrupt):
        ranking_truth._run(request, 2, [2, 4])
    assert calls == [("train", 2, False), ("test",), ("train", 4, True)]
    first = ranking_truth.read_curve(run_dir)
    assert [p["iteration"] for p in first] == [2] and not (run_dir / ranking_truth.RESULT).is_file()

    # resumed: the recorded point is kept, training continues from the checkpoint at 4
    calls.clear()
    monkeypatch.setattr(detectors.test, "test", lambda *a, **kw: calls.append(("test",)) or real_test(*a, **kw))
    row = ranking_truth._run(request, 2, [2, 4])
    assert calls == [("train", 4, True), ("test",)]
    curve = ranking_truth.read_curve(run_dir)
    # NaN-safe: the tiny val set has no easy face, so a model with detections gets AP NaN there
    assert curve[0] == pytest.approx(first[0], nan_ok=True) and [p["iteration"] for p in curve] == [2, 4]
    # the truth row is the end point; the rung loss is the trainer's loss over the last tenth
    # (>= 1 iteration) of the iterations so far: here that iteration's own total
    assert {k: row[k] for k in ("ap_easy", "ap_medium", "ap_hard")} == pytest.approx({
        k: curve[1][k] for k in ("ap_easy", "ap_medium", "ap_hard")}, nan_ok=True)
    logged = {}
    for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        logged.setdefault(rec["iteration"], rec["total"])
    assert curve[0]["loss"] == pytest.approx(logged[2]) and curve[1]["loss"] == pytest.approx(logged[4])

    # finished: nothing is trained or tested again
    calls.clear()
    (run_dir / ranking_truth.RESULT).unlink()
    assert ranking_truth._run(request, 2, [2, 4]) == pytest.approx(row, nan_ok=True) and calls == []
    ranking_truth.write_curves(tmp_path, ranking_truth.collect_curves(out, specs, [0]))
    table = pd.read_csv(tmp_path / ranking_truth.CURVES_CSV, dtype={"spec_id": str})
    assert list(table.columns) == ranking_truth.CURVE_COLUMNS and table["iteration"].tolist() == [2, 4]
