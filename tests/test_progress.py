"""The search's live status line."""

import io

from nas.progress import Progress


def test_status_line_counts_and_ticks_between_events():
    out = io.StringIO()
    progress = Progress(step=1, total=4, stream=out)
    progress.tick()  # nothing changed, less than a minute passed: no new line in a log
    assert out.getvalue() == ""
    progress.finished(0.25, running=1)
    progress.finished(None, failed=True, running=0)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("step 1: 2/4 done (1 failed), 0 running | best hard AP 0.250")
    progress._shown -= 61  # a minute without events: the log gets a fresh line (elapsed, ETA)
    progress.tick()
    assert len(out.getvalue().splitlines()) == 3


def test_eta_projects_from_the_last_finished_trial_and_counts_down(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("nas.progress.time.monotonic", lambda: now[0])
    progress = Progress(step=2, total=4, stream=io.StringIO())
    assert progress.eta() != progress.eta()  # nothing finished yet: unknown (NaN)
    now[0] += 150
    progress.finished(0.3, running=1)
    now[0] += 10
    progress.finished(0.2, running=2)  # 2 done in 160 s -> 2 left take ~160 s
    assert progress.eta() == 160
    now[0] += 100  # a long trial still running: the estimate counts down, not up
    assert progress.eta() == 60
    assert "ETA 1m00s" in progress.line()
    now[0] += 500  # overdue: never negative
    assert progress.eta() == 0


def test_summary_and_plots_rank_ties_by_spec_id_in_every_order_of_rows():
    """Tied APs (every AP 0 in a smoke run) used to come out in table order: the summary and
    the export then disagreed on the best trial and changed between runs."""
    import pandas as pd

    from analysis.plots import plot_computation_bars
    from nas.progress import summary_table
    from nas.results import best_first

    from nas.results import COLUMNS

    rows = pd.DataFrame({"spec_id": ["cc33", "aa11", "bb22", "dd44"], "status": "ok",
                         "ap_hard": [0.0, 0.0, 0.5, 0.0]})
    for c in COLUMNS:
        if c not in rows:
            rows[c] = 1.0
    expected = ["bb22", "aa11", "cc33", "dd44"]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        shuffled = rows.iloc[order]
        assert list(best_first(shuffled)["spec_id"]) == expected
        text = summary_table(shuffled, top=4)
        assert [i for i in expected if i in text] == expected
        assert sorted(expected, key=text.index) == expected
        fig = plot_computation_bars(shuffled, top_k=4)
        labels = [t.get_text().split()[0] for t in fig.axes[0].get_yticklabels()]
        assert sorted(labels, key=expected.index) in (labels, labels[::-1])
        assert {labels[0], labels[-1]} == {"bb22", "dd44"}
