"""`facenas detect`: the published weights draw boxes, scores and keypoints on real images.

Where the boxes must be drawn comes from a second path: onnxruntime running the published
file (detectors.onnx_run), not from the model under test.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

from detectors.checkpoint import save_checkpoint
from detectors.data.widerface import load_split, read_image
from detectors.draw import BOX_COLOUR
from detectors.model import build
from detectors.onnx_io import import_onnx_weights
from detectors.onnx_run import OnnxDetector
from detectors.spec import DetectorSpec
from nas.cli import main

SPEC = "experiments/models/scrfd_2.5g_bnkps.yaml"


def _checkpoint(onnx_path, repo_root, tmp_path):
    spec = DetectorSpec.from_yaml(repo_root / SPEC)
    model = build(spec)
    import_onnx_weights(model, onnx_path)
    return save_checkpoint(tmp_path / "w.pt", {"spec": spec.to_dict(), "model": model.state_dict()})


def test_detect_draws_boxes_where_faces_are(scrfd_onnx, widerface_mini, repo_root, tmp_path, capsys):
    torch.set_num_threads(1)
    record = load_split(widerface_mini, "val").records[0]
    pixels = read_image(record.path)
    png = tmp_path / "in" / "photo.png"  # lossless, so untouched pixels must stay identical
    png.parent.mkdir()
    Image.fromarray(pixels).save(png)
    ckpt = _checkpoint(scrfd_onnx, repo_root, tmp_path)
    out = tmp_path / "out"
    code = main(["detect", str(png), str(record.path), "--config", str(repo_root / SPEC),
                 "--weights", str(ckpt), "-o", str(out), "--score", "0.5"])
    assert code == 0
    counts = [int(n) for n in re.findall(r": (\d+) faces ->", capsys.readouterr().out)]
    reference = OnnxDetector(scrfd_onnx, threads=1).detect(pixels, score_thresh=0.5)
    assert counts == [len(reference.boxes)] * 2 and counts[0] >= 3

    drawn = np.asarray(Image.open(out / "photo.png").convert("RGB"))
    assert drawn.shape == pixels.shape
    assert Image.open(out / record.path.name).format == "JPEG"  # JPEG in, JPEG out
    changed = (drawn != pixels).any(axis=2)
    is_box = (drawn == BOX_COLOUR).all(axis=2) & changed
    near_any = np.zeros_like(changed)
    for x1, y1, x2, y2 in reference.boxes:
        # the outline of every face found by the reference is drawn (within 2 px of its edges;
        # the 9-px keypoint dots may cover part of it, much of it on small faces)
        xa, ya, xb, yb = (int(round(v)) for v in (x1, y1, x2, y2))
        xa, ya = max(xa, 2), max(ya, 2)
        edges = [is_box[ya:yb, xa - 2:xa + 3].any(1), is_box[ya:yb, xb - 2:xb + 3].any(1),
                 is_box[ya - 2:ya + 3, xa:xb].any(0), is_box[yb - 2:yb + 3, xa:xb].any(0)]
        small = min(xb - xa, yb - ya) < 24
        assert np.concatenate(edges).mean() > (0.3 if small else 0.8), (x1, y1, x2, y2)
        # and something changed inside the box (the keypoints)
        assert changed[ya + 3:yb - 2, xa + 3:xb - 2].any()
        near_any[max(ya - 25, 0):yb + 5, max(xa - 5, 0):max(xb, xa + 30) + 5] = True  # box, label
    for point in reference.keypoints.reshape(-1, 2):  # keypoints may lie outside their box
        px, py = (int(round(v)) for v in point)
        near_any[max(py - 6, 0):py + 7, max(px - 6, 0):px + 7] = True
    assert changed.any() and not changed[~near_any].any()  # nothing drawn away from faces


def test_missing_image_is_one_line_error(tmp_path, repo_root, capsys):
    code = main(["detect", str(tmp_path / "nope.jpg"), "--config", str(repo_root / SPEC),
                 "--weights", str(tmp_path / "w.pt"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope.jpg does not exist" in err, err
