"""The RSA baseline: scale bins and targets, GMM scale selection, roll-out shapes, the RSA
unit's L2 on real pyramids, LRN score revision, the pipeline's pixel frame, cost = hook count,
training through the one trainer (smoke, memorisation) and one-line errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _cli import one_line_error
from _cost_check import assert_cost_matches, measure_module
from detectors.rsa.detector import TARGET_FACE, plan_scales
from detectors.rsa.forecast import (NUM_BINS, bin_to_size, forecast_loss,
                                              gaussian_targets, scale_bin, select_scales)
from detectors.rsa.lrn import retrace_scores
from detectors.rsa.unit import RSANeck, RSAOptions, RSAUnit, rollout, rsa_loss
from detectors.config import load_config
from detectors.errors import UserError
from detectors.model import HeadOutputs, build
from detectors.spec import DetectorSpec
from nas.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "rsa.yaml"
SPEC = DetectorSpec.from_yaml(ROOT / "experiments" / "models" / "rsa.yaml")


def _spec(**options) -> DetectorSpec:
    """The published RSA spec with other neck options (anchors follow the roll-out depth)."""
    d = SPEC.to_dict()
    d["neck"]["options"].update(options)
    m = d["neck"]["options"]["rollouts"] + 1
    d["anchors"]["strides"] = d["anchors"]["strides"][:m]
    d["anchors"]["base_sizes"] = d["anchors"]["base_sizes"][:m]
    return DetectorSpec.from_dict(d)


# ---- scale-forecast network -------------------------------------------------------------
def test_scale_bins_hand_values():
    # b = 10 (log2 x - 5): 32 -> 0, 64 -> 10 (the paper's example), 64 sqrt 2 -> 15, 2048 -> 60
    got = scale_bin(torch.tensor([32.0, 64.0, 64 * math.sqrt(2), 2048.0]))
    assert torch.allclose(got, torch.tensor([0.0, 10.0, 15.0, 60.0]), atol=1e-4)
    assert bin_to_size(np.array([0.0, 10.0, 15.0])) == pytest.approx([32, 64, 64 * 2**0.5])


def test_gaussian_targets_hand_values():
    e1, e2 = math.exp(-math.pi), math.exp(-4 * math.pi)  # sigma = 1/sqrt(2 pi): peak 1
    t = gaussian_targets(torch.tensor([64.0]))
    expected = np.zeros(NUM_BINS)
    expected[[8, 9, 10, 11, 12]] = [e2, e1, 1.0, e1, e2]
    assert t.numpy() == pytest.approx(expected, abs=1e-7)
    two = gaussian_targets(torch.tensor([64.0, 128.0 * 2**0.1]))  # bins 10 and 21: max of both
    assert two[10] == 1.0 and two[21] == 1.0 and two[20] == pytest.approx(e1)
    small = gaussian_targets(torch.tensor([8.0]))  # bin -20 clipped to 0
    assert small[:3].numpy() == pytest.approx([1.0, e1, e2], abs=1e-7) and small[3:].sum() == 0
    assert gaussian_targets(torch.zeros(0)).sum() == 0


def test_forecast_loss_uses_the_2048_frame():
    # a 32 px face in a 512 px image is 128 px at long side 2048: bin 20
    logits = torch.linspace(-3, 3, NUM_BINS)[None]
    loss = forecast_loss(logits, [torch.tensor([[10.0, 10.0, 42.0, 42.0]])],
                         [torch.tensor([False])], long_side=512.0)
    p = np.zeros(NUM_BINS)
    p[[18, 19, 20, 21, 22]] = [math.exp(-4 * math.pi), math.exp(-math.pi), 1,
                               math.exp(-math.pi), math.exp(-4 * math.pi)]
    s = 1 / (1 + np.exp(-logits[0].numpy().astype(np.float64)))
    expected = -np.mean(p * np.log(s) + (1 - p) * np.log(1 - s))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_gmm_selects_the_modes():
    probs = np.full(NUM_BINS, 0.01)
    probs[[9, 10, 11]] = [0.6, 0.95, 0.6]
    probs[[39, 40, 41]] = [0.5, 0.9, 0.5]
    got = select_scales(probs)
    assert len(got) == 2 and got == pytest.approx([10.0, 40.0], abs=0.3)
    assert select_scales(np.full(NUM_BINS, 0.1)).size == 0  # nothing above threshold: no face


def test_plan_scales_hand_values():
    # no cap: smallest 40 -> 64 sqrt 2 (x 2.2627); largest 100 -> 226 px: scale 1 ([128, 256))
    factor, depth = plan_scales(np.array([40.0, 100.0]), 320, 2048, 5)
    assert factor == pytest.approx(TARGET_FACE / 40) and depth == 1
    # capped: 640 * 4.53 > 2048 -> factor 3.2; 200 * 3.2 = 640 px -> scale 3 ([512, 1024))
    factor, depth = plan_scales(np.array([20.0, 200.0]), 640, 2048, 5)
    assert factor == pytest.approx(3.2) and depth == 3
    assert plan_scales(np.array([50.0, 5000.0]), 640, 2048, 2)[1] == 2  # within 0..M


# ---- RSA unit ---------------------------------------------------------------------------
def test_rollout_shapes():
    neck = RSANeck(32, 64, 5)
    maps = neck.approximate(torch.zeros(2, 32, 40, 40))
    assert [tuple(m.shape) for m in maps] == [(2, 32, s, s) for s in (40, 20, 10, 5, 3, 2)]
    out = neck([torch.zeros(2, 32, 40, 40)], depth=2)
    assert [tuple(m.shape) for m in out] == [(2, 64, 20, 20), (2, 64, 10, 10), (2, 64, 5, 5)]
    model = build(SPEC).eval()
    res = model(torch.zeros(1, 3, 192, 256))
    assert res.strides == (8, 16, 32, 64, 128, 256)
    assert res.feature_sizes == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    assert len(model(torch.zeros(1, 3, 192, 256), depth=0).cls_logits) == 1


@pytest.mark.parametrize("rollouts", [0, 2, 5])
def test_cost_equals_hook_count(rollouts):
    model = build(_spec(rollouts=rollouts))
    for hw in ((480, 640), (97, 131)):
        assert_cost_matches(model, hw)


@pytest.mark.parametrize("bad", [6, -1, True, 2.0])
def test_rollout_depth_outside_0_5_is_a_user_error(bad):
    with pytest.raises(UserError, match="rollouts must be an integer in 0..5"):
        RSAOptions(rollouts=bad)


def _images(root: Path, n: int, size: int) -> torch.Tensor:
    from detectors.data.widerface import load_split, read_image
    from detectors.test import preprocess

    records = load_split(root, "train").records[:: 600 // n][:n]
    return torch.stack([preprocess(read_image(r.path), size)[0] for r in records])


def test_rsa_unit_l2_falls_on_real_image_pyramids(widerface_mini):
    """A fixed (randomly initialised) trunk gives G^m = res2b(image / 2^m) of 4 real images;
    the RSA unit, trained on them alone, approximates G^1..G^3 far better than at the start
    and better than 2x average pooling (the naive approximation)."""
    torch.manual_seed(0)
    trunk = build(_spec(rollouts=3)).backbone.eval()
    images = _images(widerface_mini, 4, 128)
    with torch.no_grad():
        g = [trunk(torch.nn.functional.avg_pool2d(images, 2**m) if m else images)[0]
             for m in range(4)]
    unit = RSAUnit(32)
    opt = torch.optim.Adam(unit.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = rsa_loss(rollout(unit, g[0], 3), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    pooled = [g[0]]
    for _ in range(3):
        pooled.append(torch.nn.functional.avg_pool2d(pooled[-1], 2, ceil_mode=True))
    naive = float(rsa_loss(pooled, g))
    print(f"L_RSA {losses[0]:.4f} -> {losses[-1]:.4f} (2x avg-pool: {naive:.4f})")
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < naive


# ---- landmark retracing -----------------------------------------------------------------
def test_retrace_scores_hand_built():
    """4x4 map, anchor score 0.2 everywhere; landmark map 0 is 0.9 at cell (y 1, x 2) only
    (others ~0). Cell (0, 0)'s landmark 0 points at (2, 1): score max(0.2, 0.9) = 0.9; cell
    (0, 1) points at (2.5, 1): bilinear over logits of 0.9 and ~0 -> sigmoid of the mean
    logit; cell (3, 3) points outside the map: the anchor's 0.2 stays."""
    low = -20.0
    anchor = torch.full((1, 1, 4, 4), math.log(0.2 / 0.8))
    lmk = torch.full((1, 5, 4, 4), low)
    lmk[0, 0, 1, 2] = math.log(0.9 / 0.1)
    offsets = torch.full((1, 10, 4, 4), 0.0)  # landmarks 1..4 at their own cell (all ~0)
    offsets[0, 0:2, 0, 0] = torch.tensor([2.0, 1.0])
    offsets[0, 0:2, 0, 1] = torch.tensor([1.5, 1.0])
    offsets[0, 0:2, 3, 3] = torch.tensor([5.0, 0.0])
    p = retrace_scores(anchor, lmk, offsets).sigmoid()[0, 0]
    assert float(p[0, 0]) == pytest.approx(0.9, abs=1e-5)
    mid = 1 / (1 + math.exp(-(math.log(9.0) + low) / 2))
    assert float(p[0, 1]) == pytest.approx(max(0.2, mid), abs=1e-5)
    assert float(p[3, 3]) == pytest.approx(0.2, abs=1e-5)
    assert float(p[2, 2]) == pytest.approx(0.2, abs=1e-5)


# ---- the pipeline -----------------------------------------------------------------------
def test_pipeline_boxes_land_in_original_pixels():
    """Forecast says 'a 20 px face' -> the 256 px test input is resized x 90.5/20; a fake
    fixed-scale forward puts one box at cell (5, 6) of stride 8 in that frame; after
    predict() and the test path's mapping the box is in the 300 x 200 original's pixels."""
    from detectors.test import _to_xywh, preprocess

    model = build(SPEC).eval()
    original = np.zeros((200, 300, 3), dtype=np.uint8)
    blob, (sx, sy) = preprocess(original, 256)
    model.forecast = lambda image: np.array([20.0])
    seen = {}

    def fake_forward(images, depth=None):
        h, w = images.shape[-2:]
        seen["hw"], seen["depth"] = (h, w), depth
        cls = torch.full((1, (h // 8) * (w // 8), 1), -10.0)
        cls[0, 5 * (w // 8) + 6] = 10.0
        box = torch.full((1, (h // 8) * (w // 8), 4), 2.0)  # 16 px each way
        kps = torch.zeros(1, (h // 8) * (w // 8), 10)
        return HeadOutputs([cls], [box], [kps], (8,), [(h // 8, w // 8)])

    model.forward = fake_forward
    det = model.predict(blob[None], score_thresh=0.5)[0]
    factor = TARGET_FACE / 20.0
    size = round(256 * factor)
    assert seen["hw"] == (size, size) and seen["depth"] == 0
    box_resized = np.array([6 * 8 - 16, 5 * 8 - 16, 6 * 8 + 16, 5 * 8 + 16], dtype=np.float64)
    expected = box_resized * 256 / size / np.array([sx, sy, sx, sy])
    got = _to_xywh(det.boxes, det.scores, sx, sy)
    assert got.shape == (1, 5)
    assert got[0, :2] == pytest.approx(expected[:2], rel=1e-4)
    assert got[0, 2:4] == pytest.approx(expected[2:] - expected[:2], rel=1e-4)
    model.forecast = lambda image: np.zeros(0)  # no scale forecast: no faces, no LRN run
    seen.clear()
    assert len(model.predict(blob[None])[0].boxes) == 0 and not seen


# ---- training through the one trainer ---------------------------------------------------
def test_smoke_training_runs_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(CONFIG), "--budget", "smoke", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for key in ("forecast", "rsa", "cls", "box", "landmark", "total"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert (out / "checkpoint.pt").is_file()


def _subset(src: Path, dst: Path, ids: list[str], side: int, landmarks: bool = True) -> Path:
    """A WIDER-layout train split of `ids` stored at long side `side` (boxes, landmarks
    scaled alike), with a RetinaFace label.txt unless landmarks=False."""
    from detectors.data.widerface import load_split

    records = {r.image_id: r for r in load_split(src, "train", landmarks="auto").records}
    lines, labels = [], []
    for image_id in ids:
        r = records[image_id]
        target = dst / "WIDER_train" / "images" / f"{image_id}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(r.path) as im:
            s = side / max(im.size)
            im.convert("RGB").resize((round(im.size[0] * s), round(im.size[1] * s)),
                                     Image.BILINEAR).save(target, quality=95)
        lines += [f"{image_id}.jpg", str(len(r.boxes))]
        labels.append(f"# {image_id}.jpg")
        for b, a, k, ok in zip(r.boxes * s, r.attributes, r.keypoints, r.keypoints_valid):
            box = " ".join(f"{v:.3f}" for v in b)
            lines.append(box + " " + " ".join(str(int(v)) for v in a))
            kp = " ".join(f"{x * s:.3f} {y * s:.3f} 0.0" for x, y in k) if ok else " ".join(["-1.0"] * 15)
            labels.append(f"{box} {kp} {0.9 if ok else -1.0}")
    (dst / "wider_face_split").mkdir(parents=True)
    (dst / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    if landmarks:
        (dst / "retinaface_gt" / "train").mkdir(parents=True)
        (dst / "retinaface_gt" / "train" / "label.txt").write_text("\n".join(labels) + "\n")
    return dst


def _large_face_ids(root: Path, n: int, side: int, min_face: float) -> list[str]:
    """n train images (evenly spaced over the candidates, official order) with 1-3 faces,
    all valid, all with landmarks, each >= min_face px (sqrt(w h)) at long side `side`."""
    from detectors.data.widerface import load_split

    out = []
    for r in load_split(root, "train", landmarks="auto").records:
        valid = ~r.invalid & ~r.zero_size
        if not valid.any() or len(r.boxes) > 3 or not r.keypoints_valid[valid].all():
            continue
        with Image.open(r.path) as im:
            scale = side / max(im.size)
        if (np.sqrt(r.boxes[valid, 2] * r.boxes[valid, 3]) * scale).min() >= min_face:
            out.append(r.image_id)
    step = len(out) / n
    return [out[int(i * step)] for i in range(n)]


@pytest.mark.slow
def test_memorisation_ap_rises(widerface_mini, tmp_path):
    """4 widerface-mini train images (1-3 faces >= 40 px at long side 128, stored at 128 px),
    trained 120 iterations with the 'all' stage (forecast + RSA + LRN) through train(), no
    crop / flip / colour; tested with the full pipeline (forecast -> resize -> roll-out ->
    LRN -> NMS; max_side 384) on the same images. AP (hard; every face kept) starts near 0
    and rises clearly (measured 0.001 -> 1.0); losses fall."""
    from detectors.checkpoint import load_model_weights
    from detectors.config import TrainConfig, recipe_from_dict
    from detectors.test import evaluate_predictions, predict_split, split_ground_truth
    from detectors.train import train

    ids = _large_face_ids(widerface_mini, 4, 128, 40.0)
    root = _subset(widerface_mini, tmp_path / "root", ids, 128)
    base = load_config(CONFIG)
    spec = _spec(max_side=384)
    recipe = recipe_from_dict({
        **base.recipe.to_dict(), "train_size": 128, "batch_size": 4, "workers": 0,
        "schedule": {"lr": 0.02, "unit": "iterations", "total": 120, "milestones": [96],
                     "warmup_iters": 10, "warmup_ratio": 0.1},
        "augmentation": {"crop_choices": [], "flip": False, "photometric": False}})
    torch.manual_seed(0)
    model = build(spec)
    gt = split_ground_truth(root, "train")
    predict = lambda: predict_split(model, root, "train", 128, score_thresh=0.005, progress=False)
    before = evaluate_predictions(predict(), gt, progress=False)["hard"]
    result = train(TrainConfig(spec, recipe), root, tmp_path / "run", progress=False, num_threads=1)
    load_model_weights(model, result.checkpoint)
    after = evaluate_predictions(predict(), gt, progress=False)["hard"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = {k: np.mean([r[k] for r in rows[:10]]) for k in ("forecast", "rsa", "total")}
    last = {k: np.mean([r[k] for r in rows[-10:]]) for k in ("forecast", "rsa", "total")}
    print(f"AP before {before:.3f} after {after:.3f}; losses {first} -> {last}")
    assert before < 0.05
    assert after >= 0.5
    assert all(last[k] < 0.6 * first[k] for k in first)


# ---- bad input: one line, exit 2 --------------------------------------------------------
def _config_with(tmp_path: Path, **rsa) -> Path:
    text = CONFIG.read_text().replace("spec: models/rsa.yaml", f"spec: {SPEC_PATH}")
    for key, value in rsa.items():
        text = text.replace(f"{key}: {_DEFAULTS[key]}", f"{key}: {value}")
    path = tmp_path / "rsa.yaml"
    path.write_text(text)
    return path


SPEC_PATH = ROOT / "experiments" / "models" / "rsa.yaml"
_DEFAULTS = {"require_landmarks": "false", "init_weights": "null"}


def test_missing_landmarks_when_required_exits_2(widerface_mini, tmp_path, capsys):
    ids = _large_face_ids(widerface_mini, 2, 128, 40.0)
    root = _subset(widerface_mini, tmp_path / "root", ids, 128, landmarks=False)
    config = _config_with(tmp_path, require_landmarks="true")
    args = ["train", str(config), "--budget", "smoke", "--data", str(root), "--quiet",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "no landmark labels" in one_line_error(capsys)


def test_stage_checkpoint_of_another_spec_exits_2(tmp_path, capsys):
    from detectors.checkpoint import save_checkpoint

    other = _spec(rollouts=2)
    ckpt = save_checkpoint(tmp_path / "other.pt", {"spec": other.to_dict(),
                                                   "model": build(other).state_dict()})
    config = _config_with(tmp_path, init_weights=str(ckpt))
    assert main(["train", str(config), "--budget", "smoke", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2
    assert "checkpoint of another spec" in one_line_error(capsys)


def test_rollout_depth_in_a_spec_file_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC_PATH.read_text().replace("rollouts: 5", "rollouts: 6"))
    assert main(["cost", str(path)]) == 2
    assert "rollouts must be an integer in 0..5" in one_line_error(capsys)


def test_pipeline_cost_parts_equal_hook_counts():
    """Table 1's split: forecast at long side 224 and trunk + RSA + LRN at VGA (depth 2) equal
    forward-hook counts of the modules that run them."""
    from detectors.rsa.cost import pipeline_cost
    from detectors.measure import measured_cost

    spec = _spec(rollouts=2)
    model = build(spec)
    parts = pipeline_cost(spec, (480, 640), 2)
    forecast = measure_module(model.head.forecast, (168, 224))
    assert (parts["forecast"].params, parts["forecast"].macs) == (forecast.params, forecast.macs)
    fixed = measured_cost(model, (480, 640)).components
    assert parts["trunk"].macs == fixed["stem"].macs + fixed["c2"].macs
    assert parts["rsa"].macs + parts["lrn"].macs == fixed["neck"].macs + fixed["head"].macs


def test_stage_weights_load_once_at_the_first_step(tmp_path):
    """recipe.rsa.init_weights: the first training_loss call loads the earlier stage's
    checkpoint (same spec) and marks the model, so a resumed run does not load it again."""
    from detectors.checkpoint import save_checkpoint
    from detectors.config import recipe_from_dict

    spec = _spec(rollouts=1)
    torch.manual_seed(1)
    earlier = build(spec)
    path = save_checkpoint(tmp_path / "stage1.pt", {"spec": spec.to_dict(),
                                                    "model": earlier.state_dict()})
    torch.manual_seed(2)
    model = build(spec)
    recipe = recipe_from_dict({"rsa": {"stage": "forecast", "init_weights": str(path)}})
    batch = {"boxes": [torch.tensor([[8.0, 8.0, 40.0, 40.0]])], "ignore": [torch.tensor([False])],
             "keypoints": [torch.zeros(1, 5, 2)], "keypoints_valid": [torch.tensor([False])],
             "image_id": ["x/y"]}
    parts, _ = model.training_loss(torch.zeros(1, 3, 64, 64), batch, recipe)
    key = "head.forecast.fc.weight"
    assert torch.equal(model.state_dict()[key], earlier.state_dict()[key])
    assert int(model.stage_initialised) == 1 and set(parts) == {"forecast", "total"}
    with torch.no_grad():
        model.head.forecast.fc.weight.add_(1.0)
    model.training_loss(torch.zeros(1, 3, 64, 64), batch, recipe)  # not loaded again
    assert not torch.equal(model.state_dict()[key], earlier.state_dict()[key])
