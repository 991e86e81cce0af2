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
