"""analysis.replay: ASHA and synchronous successive halving replayed on recorded curves.

Hand-computed decisions (cutoffs worked out in the comments), and a second method: a real Ray
Tune ASHAScheduler driven iteration by iteration with fake trials must stop the same trials.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.errors import AnalysisError
from analysis.replay import Schedule, asha, milestones, replay, successive_halving, summarize

S139 = Schedule(grace=1, reduction_factor=3, max_t=9)  # milestones 1, 3, 9; decisions at 1, 3


def _vals(**rungs: tuple[float, float]) -> dict[str, dict[int, float]]:
    """trial -> {1: v1, 3: v3, 9: v3 + 0.1}."""
    return {t: {1: a, 3: b, 9: b + 0.1} for t, (a, b) in rungs.items()}


def test_milestones_are_rays():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for grace, rf, max_t in [(1, 3, 9), (1, 3, 27), (1, 4, 100), (100, 3, 900), (1, 2.5, 10),
                             (28, 3, 250)]:
        ray_rungs = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs)
        assert milestones(grace, rf, max_t) == pytest.approx(ray_rungs)
    assert S139.decision_rungs == [1, 3]


def test_asha_order_changes_the_stopped_set():
    v = _vals(A=(0.5, 0.6), B=(0.3, 0.2), C=(0.7, 0.8))
    # A, B, C: A first at each rung (nothing recorded) goes on; B at rung 1: cutoff = 0.5
    # (one value), 0.3 < 0.5 stops; C at rung 1: 66.7th percentile of [0.3, 0.5] = 0.433,
    # 0.7 goes on; at rung 3 cutoff = A's 0.6, 0.8 goes on.
    assert asha(v, ["A", "B", "C"], S139) == {"A": 9, "B": 1, "C": 9}
    # C, B, A: B stops below 0.7; A at rung 1: percentile of [0.3, 0.7] = 0.3 + 2/3 * 0.4 =
    # 0.567 > 0.5, stops too.
    assert asha(v, ["C", "B", "A"], S139) == {"C": 9, "B": 1, "A": 1}


def test_asha_with_two_workers_and_loss_mode():
    v = _vals(A=(0.5, 0.5), B=(0.6, 0.4), C=(0.55, 0.9), D=(0.58, 0.45))
    # t=0 A, B start. t=1 A r1 goes on; B r1 cutoff 0.5, goes on. t=3 A r3 goes on; B r3 cutoff
    # 0.5, 0.4 stops -> C starts at 3. t=4 C r1: [0.5, 0.6] -> 0.567, 0.55 stops -> D starts.
    # t=5 D r1: [0.5, 0.55, 0.6] -> 0.567, 0.58 goes on. t=7 D r3: [0.5, 0.4] -> 0.467, stops.
    expect = {"A": 9, "B": 3, "C": 1, "D": 3}
    assert asha(v, "ABCD", S139, workers=2) == expect
    neg = {t: {i: -x for i, x in c.items()} for t, c in v.items()}
    assert asha(neg, "ABCD", S139, workers=2, mode="min") == expect


def test_successive_halving_keeps_three_then_one():
    # rung 1 ranks T0 > T1 > ... > T8; rung 3 reverses the three kept, so T2 is the survivor.
    v = {f"T{i}": {1: 1.0 - i / 10, 3: i / 10, 9: 0.0} for i in range(9)}
    order = [f"T{i}" for i in (4, 0, 7, 2, 8, 1, 3, 6, 5)]
    trained = successive_halving(v, order, S139)
    assert sorted(s for s, t in trained.items() if t >= 3) == ["T0", "T1", "T2"]
    assert [s for s, t in trained.items() if t == 9] == ["T2"]
    assert sum(trained.values()) == 6 * 1 + 2 * 3 + 1 * 9  # 21 of 81


def _table(curves: dict[str, dict[int, float]], seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame([{"spec_id": s, "seed": seed, "iteration": i, "metric": m}
                         for s, c in curves.items() for i, m in c.items()])


def test_replay_cost_and_recall_arithmetic():
    v = _vals(A=(0.5, 0.6), B=(0.3, 0.2), C=(0.7, 0.8))
    per = replay(_table(v), S139, orders=40, workers=1, k=[1, 2], seed=3)
    # truth at 9: C 0.9 > A 0.7 > B 0.3. The six orders by hand (as in the test above):
    expect = {"ABC": "AC", "ACB": "AC", "BAC": "ABC", "BCA": "BC", "CAB": "C", "CBA": "C"}
    for _, row in per[per.method == "asha"].iterrows():
        assert row.baseline == 27
        assert row.savings == pytest.approx(1 - row.cost / 27)
        surv = set(row.survivors.split(";"))
        assert surv == set(expect[row.arrival.replace(";", "")])
        assert row.cost == 9 * len(surv) + 1 * (3 - len(surv))  # stops only at rung 1 here
        assert row.recall_at_1 == ("C" in surv)
        assert row.recall_at_2 == len(surv & {"C", "A"}) / 2
    sh = per[per.method == "sh"]
    # SH: floor(3/3) = 1 kept at rung 1 (C, 0.7); cost 1 + 1 + 9 = 11 whatever the order.
    assert set(sh.survivors) == {"C"} and set(sh.cost) == {11}
    assert set(sh.recall_at_2) == {0.5}
    assert set(per[per.method == "asha"].n_survivors) == {1, 2, 3}  # 40 orders see all six
    summ = summarize(per)
    row = summ[(summ.method == "sh") & (summ.k == 1)].iloc[0]
    assert row.savings_median == pytest.approx(1 - 11 / 27) and row.recall_median == 1.0
    # ASHA's pick is C whenever C survives, and C is stopped in no order (hand list above)
    assert set(per[per.method == "asha"].best_rank) == {1}
    assert (summ[summ.method == "asha"].pick_in_top_k == 1.0).all()


def test_seeds_random_draws_one_seed_per_spec_and_mean_averages():
    # Rung 1, seed 0: A 0.9, B 0.1; seed 1: A 0.2, B 0.8. Truth at 9 (mean): A 0.6 < B 0.8.
    t = pd.concat([_table(_vals(A=(0.9, 0.5), B=(0.1, 0.5)), 0),
                   _table(_vals(A=(0.2, 0.5), B=(0.8, 0.9)), 1)])
    per = replay(t, S139, orders=5, k=[1], seeds="mean")
    # means at rung 1: A 0.55 > B 0.45, so SH (keeps floor(2/3) -> 1) keeps A, missing B
    assert set(per[per.method == "sh"].survivors) == {"A"}
    assert set(per[per.method == "sh"].recall_at_1) == {0.0}
    per = replay(t, S139, orders=400, k=[1], seed=1)
    # one seed drawn per spec: B wins rung 1 only when A's seed 1 meets B's seed 1 (1 in 4)
    frac = per[per.method == "sh"].recall_at_1.mean()
    assert 0.15 < frac < 0.35


def test_asha_matches_ray_tune_scheduler_driven_iteration_by_iteration():
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    class FakeTrial:
        def __init__(self, trial_id: str):
            self.trial_id = trial_id

    rng = np.random.default_rng(0)
    stops = 0
    for case in range(30):
        rf = [2, 3, 4][case % 3]
        sched_ = Schedule(grace=1, reduction_factor=rf, max_t=rf ** 2 * (1 + case % 2))
        end = sched_.end
        n, workers = int(rng.integers(3, 13)), int(rng.integers(1, 5))
        mode = "max" if case % 4 else "min"
        names = [f"t{i}" for i in range(n)]
        v = {s: {i: float(x) for i, x in enumerate(np.round(rng.random(end + 1), 2))}
             for s in names}  # ties on purpose (2 decimals)
        order = list(rng.permutation(names))
        mine = asha(v, order, sched_, workers=workers, mode=mode)

        ray_sched = ASHAScheduler(time_attr="t", metric="m", mode=mode, max_t=sched_.max_t,
                                  grace_period=1, reduction_factor=rf, brackets=1)
        trials = {s: FakeTrial(s) for s in order}
        theirs, running, nxt = {}, [], 0  # running: [name, iterations done]
        while nxt < n or running:
            while len(running) < workers and nxt < n:
                ray_sched.on_trial_add(None, trials[order[nxt]])
                running.append([order[nxt], 0])
                nxt += 1
            for slot in list(running):  # one iteration each, reported in arrival order
                slot[1] += 1
                name, it = slot
                act = ray_sched.on_trial_result(None, trials[name], {"t": it, "m": v[name][it]})
                if act == TrialScheduler.STOP:
                    theirs[name] = it
                    running.remove(slot)
        assert mine == theirs, (case, order, workers, mode)
        stops += sum(t < end for t in mine.values())
    assert stops > 50  # the cases do exercise stopping, at every kind of rung


def test_bad_input_is_one_line():
    good = _table(_vals(A=(0.5, 0.6), B=(0.3, 0.2)))
    with pytest.raises(AnalysisError, match="lacks column.*metric"):
        replay(good.drop(columns="metric"), S139)
    with pytest.raises(AnalysisError, match="B seed 0 has no metric at iteration.*3"):
        replay(good[~((good.spec_id == "B") & (good.iteration == 3))], S139)
    with pytest.raises(AnalysisError, match="k must be in 1..2"):
        replay(good, S139, k=[3])
    with pytest.raises(AnalysisError, match="mode must be"):
        replay(good, S139, mode="best")
    with pytest.raises(AnalysisError, match="max_t"):
        Schedule(grace=10, reduction_factor=3, max_t=9)


def test_cli_reads_the_curves_csv_contract(tmp_path, capsys, asha_replay):
    bench = asha_replay
    v = _vals(A=(0.5, 0.6), B=(0.3, 0.2), C=(0.7, 0.8))
    t = _table(v).rename(columns={"metric": "ap_hard"})
    t = t.assign(ap_easy=0.0, ap_medium=0.0, loss=-t["ap_hard"])[list(bench.CURVES_COLUMNS)]
    csv = tmp_path / "ranking_curves.csv"
    t.to_csv(csv, index=False)
    # grace 1/9 as a fraction of max_t 9 -> iteration 1; SH keeps C: savings 1 - 11/27
    assert bench.main(["--curves", str(csv), "--grace", str(1 / 9), "--orders", "20",
                       "--workers", "1", "--k", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "| sh | 1 | 0.59 [0.59, 0.59] | 1.00 [1.00, 1.00] | 1.00 | 1.00 | 1 |" in out
    # the loss column (mode min by its name) makes the same decisions here
    summ, _ = bench.replay(csv, metric="loss", grace=1, orders=20, workers=1, k=[1, 2])
    summ_ap, _ = bench.replay(csv, metric="ap_hard", grace=1, orders=20, workers=1, k=[1, 2])
    pd.testing.assert_frame_equal(summ, summ_ap)
    # a truth column ranks the specs instead: with truth = ap_easy (0 for all, ties by spec_id)
    # the "best" is A, so SH (keeping C) has recall@1 = 0
    _, per = bench.replay(csv, metric="ap_hard", grace=1, orders=5, k=[1],
                          truth="ap_easy")
    assert set(per[per.method == "sh"].recall_at_1) == {0.0}
    assert bench.main(["--curves", str(csv), "--metric", "ap_tiny"]) == 2
    assert bench.main(["--curves", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "ap_tiny" in err[0] and "none.csv" in err[1]
