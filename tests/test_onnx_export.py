"""`facenas export-onnx`: raw and decoded layouts, dynamic sizes, parity with PyTorch.

Models here have random weights and random BatchNorm statistics (so nothing is an identity
by accident) and need no shared data. Parity: onnxruntime vs PyTorch within 1e-4 (pixel
outputs of the decoded layout are compared in units of the largest stride, since they are
stride-unit numbers multiplied by up to 32); the decoded layout is also checked against the
separate numpy decoder of detectors.onnx_run applied to the raw layout.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from detectors.checkpoint import save_checkpoint
from detectors.model import build
from detectors.onnx_io import DecodedExport, RawExport
from detectors.onnx_run import decode_raw
from detectors.spec import DetectorSpec
from nas.cli import main

from _weights import randomise  # tests/_weights.py
from _cli import one_line_error

BNKPS = "experiments/models/scrfd_2.5g_bnkps.yaml"
SMALL = "experiments/models/scrfd_0.5g.yaml"  # depthwise, GN head shared across strides, no kps


@pytest.fixture(scope="module")
def bnkps(tmp_path_factory, repo_root):
    """(model, checkpoint path) of the bnkps spec with random weights."""
    torch.set_num_threads(1)
    spec = DetectorSpec.from_yaml(repo_root / BNKPS)
    model = randomise(build(spec))
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "bnkps.pt",
                           {"spec": spec.to_dict(), "model": model.state_dict()})
    return model, ckpt


@pytest.fixture(scope="module")
def exported(bnkps, tmp_path_factory, repo_root):
    """The CLI's raw and decoded exports of the bnkps model."""
    out = tmp_path_factory.mktemp("export")
    paths = {}
    for layout in ("raw", "decoded"):
        paths[layout] = out / f"{layout}.onnx"
        assert main(["export-onnx", str(repo_root / BNKPS), "--weights", str(bnkps[1]),
                     "-o", str(paths[layout]), f"--{layout}", "--size", "320"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoded.onnx", "raw.onnx"]  # no temp files
    return paths


def _run(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x.numpy()})))


SIZES = [(1, 640, 640), (2, 352, 480)]


@pytest.mark.parametrize("n,h,w", SIZES)
def test_raw_export_matches_torch(bnkps, exported, n, h, w):
    model = bnkps[0]
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h))
    got = _run(exported["raw"], x)
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    assert list(got) == names  # the published output order
    with torch.no_grad():
        want = dict(zip(names, RawExport(model, (8, 16, 32))(x)))
    for name in names:
        s = int(name.split("_")[1])
        width = {"score": 1, "bbox": 4, "kps": 10}[name.split("_")[0]]
        assert got[name].shape == (n, (h // s) * (w // s) * 2, width)
        assert np.abs(got[name] - want[name].numpy()).max() <= 1e-4, name
    assert ((got["score_8"] > 0) & (got["score_8"] < 1)).all()  # sigmoid applied


@pytest.mark.parametrize("n,h,w", SIZES)
def test_decoded_export_matches_torch_and_reference_decoder(bnkps, exported, n, h, w):
    model = bnkps[0]
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(w))
    got = _run(exported["decoded"], x)
    assert list(got) == ["boxes", "scores", "keypoints"]
    k = sum((h // s) * (w // s) * 2 for s in (8, 16, 32))
    assert got["boxes"].shape == (n, k, 4) and got["scores"].shape == (n, k)
    assert got["keypoints"].shape == (n, k, 5, 2)
    with torch.no_grad():
        want = DecodedExport(model, (8, 16, 32))(x)
    for (name, g), wt in zip(got.items(), want):
        unit = 1 if name == "scores" else 32
        assert np.abs(g - wt.numpy()).max() / unit <= 1e-4, name
    # Second method: numpy decoding of the raw export's outputs, image by image.
    raw = _run(exported["raw"], x)
    for i in range(n):
        parts = [decode_raw(raw[f"score_{s}"][i], raw[f"bbox_{s}"][i], raw[f"kps_{s}"][i], s,
                            h // s, w // s) for s in (8, 16, 32)]
        for j, name in enumerate(("boxes", "scores", "keypoints")):
            ref = np.concatenate([p[j] for p in parts])
            assert np.abs(got[name][i] - ref).max() <= 1e-4 * (1 if name == "scores" else 32), name


def test_gn_spec_without_keypoints_exports_raw(tmp_path, repo_root):
    spec = DetectorSpec.from_yaml(repo_root / SMALL)
    model = randomise(build(spec), seed=1)
    ckpt = save_checkpoint(tmp_path / "small.pt", {"spec": spec.to_dict(), "model": model.state_dict()})
    out = tmp_path / "small.onnx"
    assert main(["export-onnx", str(repo_root / SMALL), "--weights", str(ckpt), "-o", str(out),
                 "--size", "256"]) == 0
    x = torch.randn(1, 3, 320, 256, generator=torch.Generator().manual_seed(3))
    got = _run(out, x)
    assert list(got) == [f"{k}_{s}" for k in ("score", "bbox") for s in (8, 16, 32)]
    with torch.no_grad():
        want = RawExport(model, (8, 16, 32))(x)
    for g, wt in zip(got.values(), want):
        assert np.abs(g - wt.numpy()).max() <= 1e-4


def test_weights_of_another_spec_areone_line_error(bnkps, tmp_path, repo_root, capsys):
    out = tmp_path / "m.onnx"
    code = main(["export-onnx", str(repo_root / SMALL), "--weights", str(bnkps[1]), "-o", str(out)])
    err = one_line_error(capsys)
    assert code == 2 and "do not fit this spec" in err
    assert list(tmp_path.iterdir()) == []


def test_size_not_multiple_of_stride_isone_line_error(bnkps, tmp_path, repo_root, capsys):
    code = main(["export-onnx", str(repo_root / BNKPS), "--weights", str(bnkps[1]),
                 "-o", str(tmp_path / "m.onnx"), "--size", "500"])
    assert code == 2 and "multiple of the largest stride 32" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []
