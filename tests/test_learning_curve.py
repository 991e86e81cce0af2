"""benchmarks/learning_curve.py: the curve's points are the trainer's and tester's, its CSV
survives a rerun of another label, --plot draws it, and bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_points_match_the_run_and_land_in_the_csv(learning_curve, tiny_data, tmp_path, capsys):
    csv = tmp_path / "curves.csv"
    pd.DataFrame([{"label": "other", "iteration": 5, "train_minutes": 0.1, "loss": 1.0,
                   "easy": 0.1, "medium": 0.1, "hard": 0.1}]).to_csv(csv, index=False)
    argv = ["--config", str(REPO / "experiments" / "scrfd_0.5g.yaml"), "--budget", "smoke",
            "--data", str(tiny_data), "--points", "2", "--threads", "1", "--out", str(tmp_path / "run"),
            "--csv", str(csv), "--label", "scrfd_0.5g smoke", "--set", "recipe.schedule.total=4"]
    assert learning_curve.main(argv) == 0
    curve = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["curve"]
    assert [p["iteration"] for p in curve] == [2, 4]  # --set reached the schedule: 2 chunks of 4
    frame = pd.read_csv(csv)
    assert list(frame.columns) == learning_curve.CSV_COLUMNS
    assert frame["label"].tolist() == ["other", "scrfd_0.5g smoke", "scrfd_0.5g smoke"]
    ours = frame[frame["label"] == "scrfd_0.5g smoke"]
    assert ours["iteration"].tolist() == [2, 4]
    assert ours["train_minutes"].is_monotonic_increasing
    # the last point is the run's own checkpoint, as `facenas test` would score it
    from detectors.config import load_config
    from detectors.test import test
    from detectors.train import CHECKPOINT

    config = load_config(tmp_path / "run" / "config.yaml")
    ap = test(config, tmp_path / "run" / CHECKPOINT, tiny_data, split="val", progress=False)
    assert ours["hard"].iloc[-1] == pytest.approx(ap["hard"], abs=1e-4)
    # a rerun of the same label replaces its rows, others stay
    assert learning_curve.main(argv + ["--points", "1",
                                            "--out", str(tmp_path / "run2")]) == 0
    frame = pd.read_csv(csv)
    assert frame["label"].tolist() == ["other", "scrfd_0.5g smoke"]
    png = tmp_path / "plot" / "curves.png"
    assert learning_curve.main(["--plot", str(csv), str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(png.parent.glob("*.tmp*"))
    logged = tmp_path / "plot" / "log.png"  # AP on a log axis: another drawing of the same rows
    assert learning_curve.main(["--plot", str(csv), str(logged), "--log-ap"]) == 0
    assert logged.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and logged.read_bytes() != png.read_bytes()
    some = tmp_path / "plot" / "some.png"  # --labels: one curve of the two
    assert learning_curve.main(["--plot", str(csv), str(some), "--labels", "other"]) == 0
    assert some.read_bytes() != png.read_bytes()
    assert learning_curve.main(["--plot", str(csv), str(some), "--labels", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--set", "recipe.schedule.totl=4"], "totl"),
    (["--budget", "paper"], "epochs"),
    (["--config", "no/such.yaml"], "no/such.yaml"),
    (["--points", "0"], "--points"),
])
def test_bad_input_is_one_line_and_exit_2(learning_curve, tiny_data, tmp_path, capsys, argv, says):
    base = ["--budget", "smoke", "--data", str(tiny_data), "--out", str(tmp_path / "run")]
    assert learning_curve.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "run").exists()


def test_plot_of_a_csv_without_the_columns_is_one_line(learning_curve, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert learning_curve.main(["--plot", str(bad), str(tmp_path / "x.png")]) == 2
    assert "missing columns" in capsys.readouterr().err


def test_an_interrupted_curve_resumes_where_it_stopped(learning_curve, tiny_data, tmp_path, capsys):
    """A curve stopped after its first point (here by --minutes), then run again, ends at the
    uninterrupted run's last point: the same iteration, loss and AP, and its recorded points
    are kept, not retrained. A session killed after a checkpoint but before its test is the
    same command again too."""
    base = ["--config", str(REPO / "experiments" / "scrfd_0.5g.yaml"), "--budget", "smoke",
            "--data", str(tiny_data), "--points", "2", "--threads", "1",
            "--set", "recipe.schedule.total=4", "--label", "resumed"]

    def last_curve(argv):
        assert learning_curve.main(argv) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["curve"]

    whole = last_curve(base + ["--out", str(tmp_path / "whole")])
    run = tmp_path / "run"
    first = last_curve(base + ["--out", str(run), "--minutes", "1e-9"])  # stops after point 1
    assert [p["iteration"] for p in first] == [2]
    same = lambda a, b: all(a[k] == pytest.approx(b[k], nan_ok=True)  # noqa: E731
                            for k in ("iteration", "loss", "easy", "medium", "hard"))
    assert same(first[0], whole[0])
    resumed = last_curve(base + ["--out", str(run)])
    assert [p["iteration"] for p in resumed] == [2, 4]
    assert resumed[0] == first[0]  # the recorded point is kept as it was
    assert same(resumed[1], whole[1])
    assert resumed[1]["train_minutes"] >= resumed[0]["train_minutes"]
    # killed during the last test: its checkpoint is at iteration 4, its point not recorded
    saved = json.loads((run / learning_curve.CURVE).read_text())
    (run / learning_curve.CURVE).write_text(json.dumps({**saved, "points": saved["points"][:1]}))
    again = last_curve(base + ["--out", str(run)])
    assert [p["iteration"] for p in again] == [2, 4]
    assert same(again[1], whole[1])
    # the logged times of iterations 3 and 4 (from metrics.jsonl), not a fresh stopwatch
    logged = learning_curve._logged_seconds(run / "metrics.jsonl", 2, 4)
    assert logged > 0
    assert again[1]["train_minutes"] == round(again[0]["train_minutes"] + logged / 60, 2)
    # another curve into the same directory is one line, exit 2, and changes nothing
    before = (run / learning_curve.CURVE).read_text()
    assert learning_curve.main(base[:-1] + ["other", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'resumed'" in err and "--out" in err
    assert (run / learning_curve.CURVE).read_text() == before
