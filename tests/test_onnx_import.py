"""Published SCRFD-2.5GF-bnkps weights imported from ONNX reproduce the ONNX model.

The reference is onnxruntime running the published file itself, decoded, suppressed and
mapped back by detectors.onnx_run (numpy decoding + torchvision NMS, written separately from
the model's predict()). Agreement of raw outputs (<= 1e-4) and of WIDER AP on real
mini-val images (<= 0.002) shows that spec, build, decoding, NMS and evaluation are right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detectors.checkpoint import load_checkpoint, load_model_weights
from detectors.data.widerface import load_eval_ground_truth, load_split, read_image
from detectors.evaluate import evaluate
from detectors.model import build
from detectors.onnx_io import export_onnx, import_onnx_weights
from detectors.spec import DetectorSpec
from nas.cli import main
from _cli import one_line_error

SPEC = "experiments/models/scrfd_2.5g_bnkps.yaml"
# Every 8th mini-val image (32 of 250, 32 different events): the full 250 at 640 take
# minutes on a shared 2-core CPU; the report gives the full-set figures.
SUBSET_STEP = 8


@pytest.fixture(scope="module")
def imported_ckpt(tmp_path_factory, scrfd_onnx, repo_root) -> Path:
    """The CLI's checkpoint of the published weights (written once per module)."""
    out = tmp_path_factory.mktemp("import") / "scrfd_2.5g_bnkps.pt"
    assert main(["import-weights", str(scrfd_onnx), str(repo_root / SPEC), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def imported_model(imported_ckpt, repo_root):
    """A fresh build of the spec with the checkpoint loaded the way `facenas test` does."""
    torch.set_num_threads(1)  # other tests share the 2 cores; threads only add contention
    model = build(DetectorSpec.from_yaml(repo_root / SPEC))
    load_model_weights(model, imported_ckpt)
    return model.eval()


def _val_image(root: Path, index: int = 0) -> np.ndarray:
    record = load_split(root, "val").records[index]
    return read_image(record.path)


def test_checkpoint_holds_spec_and_weights(imported_ckpt, repo_root):
    state = load_checkpoint(imported_ckpt)
    assert DetectorSpec.from_dict(state["spec"]) == DetectorSpec.from_yaml(repo_root / SPEC)
    # BN set to identity + shift: running_var = 1 - eps, running_mean 0, weight 1
    bn = state["model"]["backbone.stem.0.norm.running_var"]
    assert torch.allclose(bn, torch.full_like(bn, 1 - 1e-5))
    assert not state["model"]["backbone.stem.0.norm.bias"].eq(0).all()


def test_raw_outputs_match_onnxruntime(imported_model, scrfd_onnx, widerface_mini):
    from detectors.onnx_run import OnnxDetector
    from detectors.test import preprocess

    blob, _ = preprocess(_val_image(widerface_mini), 640)
    ref = OnnxDetector(scrfd_onnx, threads=1).run(blob[None].numpy())
    with torch.no_grad():
        out = imported_model(blob[None])
    ours = {}
    for s, c, b, k in zip((8, 16, 32), out.cls_logits, out.box_dists, out.kps_offsets):
        ours.update({f"score_{s}": torch.sigmoid(c), f"bbox_{s}": b, f"kps_{s}": k})
    assert sorted(ours) == sorted(ref)  # all 9 published outputs
    diffs = {n: float((torch.from_numpy(ref[n]) - v).abs().max()) for n, v in ours.items()}
    assert max(diffs.values()) <= 1e-4, diffs
    # A real image: some faces are found with high confidence (the comparison is not of zeros)
    assert float(ref["score_8"].max()) > 0.5


def test_ap_matches_onnx_model_on_mini_val_subset(imported_model, scrfd_onnx, widerface_mini):
    from detectors.onnx_run import OnnxDetector, predict_split_onnx
    from detectors.test import predict_split

    ids = [r.image_id for r in load_split(widerface_mini, "val").records][::SUBSET_STEP]
    gt = load_eval_ground_truth(widerface_mini).subset(ids)  # keeps the official int32 arithmetic
    ours = predict_split(imported_model, widerface_mini, "val", image_ids=ids, progress=False)
    onnx = predict_split_onnx(OnnxDetector(scrfd_onnx, threads=1), widerface_mini, "val",
                              image_ids=ids, progress=False)
    ap_ours = evaluate(ours, gt, progress=False).as_dict()
    ap_onnx = evaluate(onnx, gt, progress=False).as_dict()
    for setting in ("easy", "medium", "hard"):
        assert abs(ap_ours[setting] - ap_onnx[setting]) <= 0.002, (ap_ours, ap_onnx)
    # The published model is good: on real images its easy AP is high (not a 0 == 0 match)
    assert ap_onnx["easy"] > 0.8 and ap_onnx["hard"] > 0.4, ap_onnx


def test_spec_that_does_not_fit_isone_line_error(scrfd_onnx, repo_root, tmp_path, capsys):
    out = tmp_path / "x.pt"
    code = main(["import-weights", str(scrfd_onnx), str(repo_root / "experiments/models/scrfd_0.5g.yaml"),
                 "-o", str(out)])
    err = one_line_error(capsys)
    assert code == 2 and "conv 1 of 57" in err and "(12, 3, 3, 3)" in err and "(16, 3, 3, 3)" in err
    assert not out.exists()


def test_onnx_of_another_model_isone_line_error(repo_root, tmp_path, capsys):
    """An ONNX export of another spec (scrfd_2.5g without keypoints, GN head) into bnkps."""
    other = build(DetectorSpec.from_yaml(repo_root / "experiments/models/scrfd_2.5g.yaml")).eval()
    path = export_onnx(other, tmp_path / "other.onnx", size=64)
    code = main(["import-weights", str(path), str(repo_root / SPEC), "-o", str(tmp_path / "x.pt")])
    err = one_line_error(capsys)
    # Backbones agree; the first difference is in the head, which the message must name.
    assert code == 2 and "does not fit" in err and "head." in err, err
    assert not (tmp_path / "x.pt").exists()


def test_file_that_is_not_onnx_isone_line_error(repo_root, tmp_path, capsys):
    bogus = tmp_path / "weights.onnx"
    bogus.write_text("not a model\n")
    code = main(["import-weights", str(bogus), str(repo_root / SPEC), "-o", str(tmp_path / "x.pt")])
    assert code == 2 and "is not an ONNX model" in one_line_error(capsys)


def test_round_trip_through_our_own_bn_folded_export(tmp_path, repo_root):
    """No shared data needed: random weights and BN statistics, exported (the exporter folds
    each BN into its conv, as the published file), imported into a fresh build: the same
    function. Proves the identity-BN + shift mapping and the structural matching."""
    import onnx

    from _weights import randomise  # tests/_weights.py

    spec = DetectorSpec.from_yaml(repo_root / SPEC)
    original = randomise(build(spec), seed=2)
    path = export_onnx(original, tmp_path / "folded.onnx", size=64)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    fresh = build(spec)
    counts = import_onnx_weights(fresh, path)
    assert counts == {"convs": 57, "batchnorms": 38, "scales": 3}
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(x), fresh.eval()(x)
    for want, got in zip(a.cls_logits + a.box_dists + a.kps_offsets,
                         b.cls_logits + b.box_dists + b.kps_offsets):
        assert (want - got).abs().max() <= 1e-4
