"""`facenas evaluate`: APs on stdout, --json, --plot, and one-line errors with exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from detectors.data.widerface import load_eval_ground_truth
from detectors.evaluate import write_predictions
from nas.cli import main
from _cli import facenas


@pytest.fixture(scope="module")
def mini_preds(widerface_mini, tmp_path_factory):
    """Predictions = the val ground truth, minus every box of one image (file still written)."""
    gt = load_eval_ground_truth(widerface_mini)
    out = tmp_path_factory.mktemp("preds")
    rng = np.random.default_rng(0)
    for image_id, boxes in gt.boxes.items():
        keep = boxes if image_id != gt.image_ids[0] else boxes[:0]
        write_predictions(out, image_id, keep, rng.uniform(0.1, 1.0, len(keep)))
    # the AP each setting must then reach: the faces of the other images, at precision 1
    first = gt.image_ids[0]
    expected = {s: 1 - len(gt.keep[s][first]) / gt.faces(s) for s in ("easy", "medium", "hard")}
    # precision is 1 at every threshold, so raising the threshold to precision >= 98% cuts
    # nothing: AP at precision >= 98% equals AP
    expected.update({f"ap_at_p98_{s}": ap for s, ap in list(expected.items())})
    return out, expected


def test_json_and_plot(widerface_mini, mini_preds, tmp_path):
    preds, expected = mini_preds
    result = facenas("evaluate", str(preds), "--gt", str(widerface_mini), "--json", "--plot", str(tmp_path / "pr.png"))
    assert result.returncode == 0, result.stderr
    aps = json.loads(result.stdout)
    assert aps == pytest.approx(expected, abs=1e-12) and aps["hard"] < 1.0
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["pr.png"]  # no temporary left behind


def test_text_output_and_gt_dir_forms(widerface_mini, mini_preds, capsys):
    preds, expected = mini_preds
    gt_dir = widerface_mini / "eval_tools" / "ground_truth"
    assert main(["evaluate", str(preds), "--gt", str(gt_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["easy", "medium", "hard"]
    assert float(lines[2].split()[2]) == pytest.approx(expected["hard"], abs=1e-4)
    assert float(lines[2].split()[-1]) == pytest.approx(expected["ap_at_p98_hard"], abs=1e-4)
    assert main(["evaluate", str(preds), "--gt", str(gt_dir), "--protocol", "python", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected, abs=1e-12)


def test_missing_prediction_files_warn_and_score_zero(widerface_mini, mini_preds, tmp_path, capsys):
    preds, _ = mini_preds
    partial = tmp_path / "partial"
    shutil.copytree(preds, partial)
    gone = sorted(partial.glob("*/*.txt"))[:3]
    for path in gone:
        path.unlink()
    assert main(["evaluate", str(partial), "--gt", str(widerface_mini), "--json"]) == 0
    captured = capsys.readouterr()
    assert "3 of 250 images have no prediction file" in captured.err
    assert json.loads(captured.out)["hard"] < 1.0  # every mini val image has hard faces


def _fails_with_one_line(args, *words, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facenas evaluate: error:"), captured.err
    assert all(w in lines[0] for w in words), lines[0]
    assert captured.out == ""


def test_non_numeric_score_exit_2_one_line_nothing_written(widerface_mini, mini_preds, tmp_path, capsys):
    preds, _ = mini_preds
    bad = tmp_path / "bad"
    shutil.copytree(preds, bad)
    victim = sorted(bad.glob("*/*.txt"))[5]
    lines = victim.read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:4] + ["0.9x"])
    victim.write_text("\n".join(lines) + "\n")
    plot = tmp_path / "pr.png"
    _fails_with_one_line(["evaluate", str(bad), "--gt", str(widerface_mini), "--plot", str(plot)],
                         f"{victim}:3:", "non-numeric score", capsys=capsys)
    assert not plot.exists() and not list(tmp_path.glob(".pr.png*"))


def test_user_mistakes_exit_2(widerface_mini, mini_preds, tmp_path, capsys):
    preds, _ = mini_preds
    _fails_with_one_line(["evaluate", str(tmp_path / "nope"), "--gt", str(widerface_mini)],
                         "prediction directory not found", capsys=capsys)
    _fails_with_one_line(["evaluate", str(preds), "--gt", str(tmp_path)], "wider_face_val.mat", capsys=capsys)
    _fails_with_one_line(["evaluate", str(preds), "--gt", str(widerface_mini), "--plot", str(tmp_path / "x" / "p.png")],
                         "does not exist", capsys=capsys)
    (tmp_path / "wider_face_val.mat").write_bytes(b"\0not a mat file")
    _fails_with_one_line(["evaluate", str(preds), "--gt", str(tmp_path)], "not a readable MATLAB file", capsys=capsys)


def test_missing_gt_option_is_usage_error():
    result = facenas("evaluate", "somewhere")
    assert result.returncode == 2 and "--gt" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # argparse usage + one error line
