"""The trainer: memorisation (proof of learning), exact resume, divergence, atomic checkpoints,
the LR schedule."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.checkpoint import load_checkpoint, save_checkpoint
from detectors.config import TrainConfig, recipe_from_dict
from detectors.data.widerface import load_split
from detectors.spec import DetectorSpec
from detectors.train import TrainingDiverged, lr_factor, train

TINY = {
    "name": "tiny",
    "backbone": {"stem_width": 16, "stem": "deep", "stages": [
        {"block": "basic", "depth": 1, "width": w} for w in (16, 32, 48, 64)]},
    "neck": {"type": "pafpn", "channels": 16},
    "head": {"channels": 32, "num_convs": 1, "norm": "gn", "gn_groups": 8},
}


def _subset_root(src: Path, dst: Path, image_ids: list[str], long_side: int | None = None) -> Path:
    """A WIDER-layout root holding only `image_ids` of src's train split, annotations rewritten
    from the parsed records in the official text format. long_side=None symlinks the images;
    otherwise each is stored downscaled (bilinear, JPEG q95) so its long side is `long_side`,
    boxes scaled alike -- decoding then costs nothing next to training."""
    records = {r.image_id: r for r in load_split(src, "train").records}
    lines = []
    for image_id in image_ids:
        r = records[image_id]
        target = dst / "WIDER_train" / "images" / f"{image_id}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        scale = 1.0
        if long_side is None:
            target.symlink_to(r.path)
        else:
            with Image.open(r.path) as im:
                scale = long_side / max(im.size)
                size = (round(im.size[0] * scale), round(im.size[1] * scale))
                im.convert("RGB").resize(size, Image.BILINEAR).save(target, quality=95)
        lines += [f"{image_id}.jpg", str(len(r.boxes))]
        for box, attrs in zip(r.boxes * scale, r.attributes):
            lines.append(" ".join(f"{v:.3f}" for v in box) + " " + " ".join(str(int(a)) for a in attrs))
    split_dir = dst / "wider_face_split"
    split_dir.mkdir(parents=True)
    (split_dir / "wider_face_train_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    return dst


def _config(spec: dict, **recipe) -> TrainConfig:
    return TrainConfig(DetectorSpec.from_dict(spec), recipe_from_dict(recipe))


def test_lr_schedule_warmup_and_steps():
    # mmdet linear warm-up: lr(i) = base * (1 - (1 - i / W) * (1 - ratio)); x0.1 per milestone.
    f = lambda i: lr_factor(i, warmup_iters=10, warmup_ratio=0.001, milestones=(20, 30), gamma=0.1)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(1 - 0.5 * 0.999)
    assert [f(10), f(19), f(20), f(29), f(30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


MEMO_SIZE, MEMO_IMAGES = 160, 32


def _memorisation_ids(root: Path) -> list[str]:
    """32 train images whose faces a tiny detector at 160 px can represent: at most 12
    annotated faces, every valid face >= 16 px tall once the long side is 160 px (the smallest
    anchor is 16 px); taken evenly spaced from the candidates in the official order (all 9
    events contribute)."""
    candidates = []
    for r in load_split(root, "train").records:
        valid = ~r.invalid & ~r.zero_size
        if not valid.any() or len(r.boxes) > 12:
            continue
        with Image.open(r.path) as im:
            scale = MEMO_SIZE / max(im.size)
        if (r.boxes[valid, 3] * scale).min() >= 16:
            candidates.append(r.image_id)
    step = len(candidates) / MEMO_IMAGES
    return [candidates[int(i * step)] for i in range(MEMO_IMAGES)]


@pytest.mark.slow
def test_memorisation_ap_rises_from_zero_to_half(widerface_mini, tmp_path):
    """Proof of learning: loss, assignment, decoding and evaluation agree.

    A tiny spec (0.15 M params) trains on 32 widerface-mini train images (chosen by the rule
    in _memorisation_ids, without looking at results; stored downscaled to a 160 px long side)
    with the test geometry (long side 160, padded; no crop, flip or colour jitter) and is
    evaluated on the same images, every valid annotated face kept in all settings (invalid
    faces are ignore regions). AP starts near 0 and must reach >= 0.5.
    """
    from detectors.checkpoint import load_model_weights
    from detectors.model import build
    from detectors.test import evaluate_predictions, predict_split, split_ground_truth

    ids = _memorisation_ids(widerface_mini)
    root = _subset_root(widerface_mini, tmp_path / "root", ids, long_side=MEMO_SIZE)
    config = _config(TINY, train_size=MEMO_SIZE, batch_size=8, workers=0, seed=0,
                     schedule={"lr": 0.02, "unit": "iterations", "total": MEMO_ITERS,
                               "milestones": [int(MEMO_ITERS * 0.8)], "warmup_iters": 20},
                     augmentation={"crop_choices": [], "flip": False, "photometric": False})
    gt = split_ground_truth(root, "train")
    assert sum(len(k) for k in gt.keep["hard"].values()) >= 40  # enough faces for a real AP
    model = build(config.spec)
    predict = lambda: predict_split(model, root, "train", MEMO_SIZE, score_thresh=0.005, progress=False)
    before = evaluate_predictions(predict(), gt, progress=False)["hard"]
    result = train(config, root, tmp_path / "run", progress=False, num_threads=MEMO_THREADS)
    load_model_weights(model, result.checkpoint)
    after = evaluate_predictions(predict(), gt, progress=False)["hard"]
    losses = [json.loads(l)["total"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"AP before {before:.3f} after {after:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert before < 0.05
    assert after >= 0.5
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


# With SCRFD's zero-init residual blocks this depth-1 net starts from its shortcuts and needs
# more steps than with BN weights at 1: 300 iterations reached AP 0.96 before, 0.40-0.48 after;
# 450 reach 0.65.
MEMO_ITERS = 450
MEMO_THREADS = 1


def test_resume_is_exact(widerface_mini, tmp_path):
    """Losses of a run interrupted after 3 iterations and resumed equal those of an
    uninterrupted run over the same 6 iterations (augmentation on, 1 loader worker)."""
    config = _config(TINY, train_size=128, batch_size=2, workers=1, seed=3,
                     schedule={"unit": "iterations", "total": 6, "milestones": [4], "warmup_iters": 2})
    train(config, widerface_mini, tmp_path / "a", progress=False, num_threads=1)
    first = train(config, widerface_mini, tmp_path / "b", progress=False, num_threads=1, max_iterations=3)
    assert first.iterations == 3 and load_checkpoint(first.checkpoint)["iteration"] == 3
    train(config, widerface_mini, tmp_path / "b", progress=False, num_threads=1, resume=True)
    read = lambda run: [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    a, b = read("a"), read("b")
    assert [m["iteration"] for m in b] == list(range(1, 7))
    for key in ("total", "cls", "box", "num_pos", "lr"):
        assert [m[key] for m in a] == [m[key] for m in b], key
    wa, wb = (load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_another_recipe_and_fresh_run_refuses_old_dir(widerface_mini, tmp_path):
    from detectors.errors import UserError

    config = _config(TINY, train_size=64, batch_size=1, workers=0,
                     schedule={"unit": "iterations", "total": 2, "milestones": [], "warmup_iters": 0})
    train(config, widerface_mini, tmp_path / "run", progress=False, max_iterations=1)
    with pytest.raises(UserError, match="--resume"):
        train(config, widerface_mini, tmp_path / "run", progress=False)
    other = _config(TINY, train_size=64, batch_size=1, workers=0, seed=9,
                    schedule={"unit": "iterations", "total": 2, "milestones": [], "warmup_iters": 0})
    with pytest.raises(UserError, match="different spec or recipe"):
        train(other, widerface_mini, tmp_path / "run", progress=False, resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        train(config, widerface_mini, tmp_path / "empty", progress=False, resume=True)
    # box_init only shapes iteration 0: a checkpoint from before the key existed resumes, under
    # either init
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["recipe"].pop("box_init") == "anchor"
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    point = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, box_init="point"))
    assert train(point, widerface_mini, tmp_path / "run", progress=False, resume=True).iterations == 2


def test_diverging_loss_stops_with_status(widerface_mini, tmp_path):
    """An absurd learning rate blows the weights up. A non-finite step is skipped (no update);
    NONFINITE_LIMIT consecutive ones stop the run with status 'diverged'. Every line before
    the skipped run is finite, each skipped line is non-finite, and the last checkpoint holds
    finite weights (a checkpoint is written only when they are)."""
    from detectors.train import NONFINITE_LIMIT

    config = _config(TINY, train_size=64, batch_size=2, workers=0,
                     schedule={"lr": 1e12, "unit": "iterations", "total": 20, "milestones": [],
                               "warmup_iters": 0})
    with pytest.raises(TrainingDiverged) as err:
        train(config, widerface_mini, tmp_path / "run", progress=False, checkpoint_every=1)
    result = err.value.result
    assert err.value.status == result.status == "diverged"
    assert "diverged at iteration" in str(err.value)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == list(range(1, len(lines) + 1)) and len(lines) < 20
    tail = lines[-NONFINITE_LIMIT:]
    assert all(m["skipped"] and not math.isfinite(m["total"]) for m in tail)
    assert not any(m["skipped"] for m in lines[:-NONFINITE_LIMIT] if math.isfinite(m["total"]))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert 1 <= state["iteration"] < len(lines)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"iteration": 1, "model": {"w": torch.ones(3)}})

    def broken_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"iteration": 2, "model": {"w": torch.zeros(3)}})
    assert load_checkpoint(path)["iteration"] == 1  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind


def test_device_mode_and_threads(monkeypatch):
    import detectors.device as dev

    monkeypatch.delenv("FACENAS_THREADS", raising=False)
    assert dev.set_threads(1) == 1 and torch.get_num_threads() == 1
    assert dev.set_threads() == len(os.sched_getaffinity(0)) == torch.get_num_threads()
    cpu = torch.device("cpu")
    assert dev.training_mode(cpu).describe() == "cpu fp32 channels_last"
    assert dev.training_mode(cpu, fp32=True).describe() == "cpu fp32 NCHW"
    with pytest.raises(dev.UserError, match="unknown device"):
        dev.select_device("tpu")
    monkeypatch.setenv("FACENAS_THREADS", "1")
    assert dev.set_threads() == 1


@pytest.mark.parametrize("weight_format, grad_format", [
    (torch.channels_last, torch.contiguous_format), (torch.contiguous_format, torch.channels_last)])
def test_fused_step_equals_plain_sgd_when_gradient_and_weight_layouts_differ(weight_format, grad_format):
    """The loop's fused SGD step against torch's plain SGD on the same gradients. Without
    align_grads fused SGD (CPU) stepped such weights wrongly (max error ~2 here) and left NaN
    in an ASFD extra stage's weights."""
    from detectors.config import Recipe
    from detectors.train import _optimiser, fused_step

    torch.manual_seed(0)
    start = torch.randn(16, 8, 3, 3)
    weight = torch.nn.Parameter(start.clone().contiguous(memory_format=weight_format))
    reference = torch.nn.Parameter(start.clone())
    recipe = Recipe()
    opt, _ = _optimiser([weight], recipe, ())  # the recipe's SGD settings (plain SGD on a CPU)
    group = opt.param_groups[0]
    # CUDA's optimiser: fused, as _optimiser makes it there, on this CPU
    opt = torch.optim.SGD([weight], lr=group["lr"], momentum=group["momentum"],
                          weight_decay=group["weight_decay"], fused=True)
    opt.state[weight]["momentum_buffer"] = torch.zeros_like(weight)
    plain = torch.optim.SGD([reference], lr=group["lr"], momentum=group["momentum"],
                            weight_decay=group["weight_decay"])
    for step in range(3):
        grad = torch.randn(16, 8, 3, 3)
        weight.grad = grad.clone().contiguous(memory_format=grad_format)
        reference.grad = grad.clone()
        skip = torch.tensor(1.0 if step == 1 else 0.0)  # the middle step is skipped
        fused_step(opt, skip)
        if step != 1:
            plain.step()
    torch.testing.assert_close(weight.detach(), reference.detach(), rtol=1e-6, atol=1e-6)


def test_cpu_step_skips_a_non_finite_step_and_takes_a_finite_one():
    """The CPU optimiser is plain SGD; fused_step skips it on the flag."""
    from detectors.config import Recipe
    from detectors.train import _optimiser, fused_step

    weight = torch.nn.Parameter(torch.ones(3))
    opt, _ = _optimiser([weight], Recipe(), ())
    assert not opt.defaults["fused"]
    weight.grad = torch.ones(3)
    fused_step(opt, torch.tensor(1.0))
    assert torch.equal(weight.detach(), torch.ones(3))
    fused_step(opt, torch.tensor(0.0))
    assert (weight.detach() < 1).all()
