"""The test path and the train/test CLIs: geometry of preprocessing and mapping back,
`facenas train` -> `facenas test` end to end, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from detectors.model import Detections
from detectors.test import predict_split, preprocess

TINY_CONFIG = {
    "spec": {"name": "tiny", "backbone": {"stem_width": 16, "stem": "deep", "stages": [
        {"block": "basic", "depth": 1, "width": w} for w in (16, 32, 48, 64)]},
        "neck": {"type": "pafpn", "channels": 16},
        "head": {"channels": 32, "num_convs": 1, "norm": "gn", "gn_groups": 8}},
    "recipe": {"workers": 0, "test": {"size": 128}},
}


def _facenas(*args: str) -> subprocess.CompletedProcess:
    # One thread: tests run beside others (pytest -n 2); see detectors.device.set_threads.
    env = {**os.environ, "FACENAS_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def test_preprocess_resizes_long_side_and_pads():
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, :, 0] = 255  # pure red
    x, (sx, sy) = preprocess(image, 64)
    assert x.shape == (3, 64, 64) and (sx, sy) == (0.64, 0.64)
    # 100x50 -> 64x32 of normalised red, then zero padding below
    assert torch.allclose(x[0, :32], torch.full((32, 64), 127.5 / 128))
    assert torch.allclose(x[1, :32], torch.full((32, 64), -127.5 / 128))
    assert (x[:, 32:] == 0).all()
    # upscaling too: the long side always becomes the test size (SCRFD's keep-ratio resize)
    assert preprocess(np.zeros((10, 20, 3), np.uint8), 64)[1] == (3.2, 3.2)


class _OneBoxModel(torch.nn.Module):
    """Predicts one box at fixed network pixels, to check the mapping back to the image."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.sizes = []

    def predict(self, images, score_thresh, iou_thresh, max_det):
        self.sizes.append(tuple(images.shape))
        box = torch.tensor([[16.0, 8.0, 48.0, 40.0]])
        return [Detections(box, torch.tensor([0.9]), None) for _ in images]


def test_predictions_map_back_to_original_pixels(widerface_mini):
    from PIL import Image
    from detectors.data.widerface import load_split

    record = load_split(widerface_mini, "val").records[0]
    with Image.open(record.path) as im:
        w, h = im.size
    model = _OneBoxModel()
    preds = predict_split(model, widerface_mini, "val", 128, image_ids=[record.image_id], progress=False)
    assert model.sizes == [(1, 3, 128, 128)]
    sx, sy = round(w * 128 / max(w, h)) / w, round(h * 128 / max(w, h)) / h
    expected = [16 / sx, 8 / sy, 32 / sx, 32 / sy, 0.9]  # x, y, w, h (original pixels), score
    assert preds[record.image_id].tolist() == [pytest.approx(expected, rel=1e-5)]


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


@pytest.mark.slow
def test_train_then_test_cli_on_embedded_data(repo_root, tmp_path):
    """A fresh user's flow: only the config (plus a fast budget and a chosen run dir)."""
    config = repo_root / "experiments" / "scrfd_0.5g.yaml"
    run = tmp_path / "run"
    trained = _facenas("train", str(config), "--budget", "smoke", "--out", str(run), "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4  # smoke: 4 iterations
    tested = _facenas("test", str(run / "config.yaml"), "--weights", str(run / "checkpoint.pt"),
                      "--json", "--quiet", "--out", str(tmp_path / "preds"))
    assert tested.returncode == 0, tested.stderr
    ap = json.loads(tested.stdout)
    assert set(ap) == {"easy", "medium", "hard", "ap_at_p98_easy", "ap_at_p98_medium", "ap_at_p98_hard"}
    assert all(0.0 <= v <= 1.0 for v in ap.values()) and all(ap[f"ap_at_p98_{s}"] <= ap[s] for s in ("easy", "hard"))
    assert len(list((tmp_path / "preds").rglob("*.txt"))) == 100  # every synthetic val image


def test_bad_inputs_are_one_line_exit_2(tiny_config, tmp_path, repo_root, widerface_mini, capsys, monkeypatch):
    from nas.cli import main

    monkeypatch.setenv("FACENAS_THREADS", "1")
    run = tmp_path / "run"
    assert main(["train", str(tiny_config), "--data", str(widerface_mini), "--budget", "smoke",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    other = repo_root / "experiments" / "scrfd_0.5g.yaml"
    cases = [
        (("test", str(other), "--weights", str(run / "checkpoint.pt"), "--data", str(widerface_mini)),
         "do not fit"),
        (("test", str(tiny_config), "--weights", str(tiny_config), "--data", str(widerface_mini)),
         "not a facenas checkpoint"),
        (("test", str(tiny_config), "--weights", str(run / "checkpoint.pt"), "--data", str(tmp_path / "nowhere")),
         "not found"),
        (("train", str(tiny_config), "--budget", "nonsense"), "nonsense"),
        (("train", str(tmp_path / "missing.yaml")), "does not exist"),
        (("train", str(tiny_config), "--data", str(widerface_mini), "--budget", "smoke", "--out", str(run)),
         "--resume"),
    ]
    for args, words in cases:
        code = main(list(args))
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (args, err)
