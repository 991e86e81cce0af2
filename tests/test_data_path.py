"""The data path (docs/data.md): workers hand over uint8 with the photometric numbers and the
flip drawn from the sample's seed; the training device mirrors, distorts and normalises.
The former worker-side float32 path's geometry exactly, its pixels within a stated PSNR;
loader workers resolved flag > recipe > CPUs; each run records how long it waited for data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _cli import one_line_error
from detectors.batches import SeededBatches, resolve_workers
from detectors.config import TrainConfig, recipe_from_dict
from detectors.data import synthetic
from detectors.data.device_transforms import device_images, photometric
from detectors.data.transforms import PHOTOMETRIC_PARAMS, PhotoMetricDistortion
from detectors.errors import UserError
from detectors.spec import DetectorSpec

REPO = Path(__file__).resolve().parents[1]
SMOKE = {"train_size": 64, "batch_size": 2, "seed": 1,
         "schedule": {"unit": "iterations", "total": 3, "milestones": [2], "warmup_iters": 1}}


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("datapath") / "root", num_train=6, num_val=2,
                              image_size=128, seed=2, progress=False)


def _params(brightness=0.0, c1=1.0, matrix=None, c2=1.0) -> np.ndarray:
    p = np.zeros(PHOTOMETRIC_PARAMS, np.float32)
    p[0], p[1], p[12] = brightness, c1, c2
    p[2] = matrix is not None
    p[3:12] = (np.eye(3) if matrix is None else np.asarray(matrix)).ravel()
    return p


def test_device_photometric_on_hand_computed_pixels():
    """Pixel (R, G, B) = (100, 200, 50). Image 0: +10 then x2 -> (220, 420, 120), unclipped
    (no colour step), then x0.5 -> (110, 210, 60). Image 1: +60 -> (160, 260, 110), colour
    flag: clipped to (160, 255, 110) first, the matrix swaps channels to (G, B, R) = (255,
    110, 160), x0.5 -> (127.5, 55, 80) -> 128 (half to even); without that clip R would be 130.
    Image 2: -1 then x0.5 -> (49.5, 99.5, 24.5) -> (50, 100, 24), halves to even."""
    img = torch.tensor([100.0, 200.0, 50.0]).view(1, 3, 1, 1).repeat(3, 1, 1, 1)
    swap = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    params = torch.from_numpy(np.stack([_params(10, 2, None, 0.5), _params(60, 1, swap, 0.5),
                                        _params(-1, 0.5)]))
    out = photometric(img.clone(), params)
    assert out[0].flatten().tolist() == [110, 210, 60]
    assert out[1].flatten().tolist() == [128, 55, 80]
    assert out[2].flatten().tolist() == [50, 100, 24]
    # the worker-side reference gives the same numbers
    for i in range(3):
        ref = PhotoMetricDistortion.apply(np.array([[[100, 200, 50]]], np.uint8), params[i].numpy())
        assert ref.ravel().tolist() == out[i].flatten().tolist()


def _pairs(root: Path, recipe: dict, iterations: int):
    r = recipe_from_dict({**recipe, "workers": 0})
    old = SeededBatches(root, r, device_side=False).iterate(0)
    new = SeededBatches(root, r).iterate(0)
    for _ in range(iterations):
        yield next(old), next(new)


def _psnr(levels: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of differences in uint8 levels (B, 3, H, W)."""
    return 10 * torch.log10(255.0**2 / (levels**2).mean((1, 2, 3)).clamp_min(1e-12))


# The new path resamples the crop with torch's kernel, the old with PIL's (the same
# antialiased bilinear filter at the same positions; they differ next to the square's edges
# and by a rounding level elsewhere). Measured on these batches: per-image PSNR >= 52.7 dB,
# mean |difference| <= 0.14 levels; the old batch shifted by one pixel scores <= 37 dB.
MIN_PSNR_DB, MAX_MEAN_LEVELS = 45.0, 0.25


@pytest.mark.parametrize("augmentation", [{}, {"photometric": False}, {"crop_choices": []}],
                         ids=["paper", "no-photometric", "no-crop-padded"])
def test_device_path_matches_the_worker_float_path(widerface_mini, augmentation):
    """Same (seed, iteration): boxes, keypoints and ignore flags identical (so the same crops
    and flips were drawn). Pixels: with crops (resampled by torch in the new path, PIL in the old), every
    image within MIN_PSNR_DB / MAX_MEAN_LEVELS of the old one, while the old one shifted by
    a pixel is not (the bound can see a misplaced crop); without crops (the same PIL resize
    in both) equal within one uint8 level (1/128) where float sums round differently, on at
    most 1e-4 of the values, and padding exactly 0."""
    recipe = {"train_size": 160, "batch_size": 4, "seed": 7, "augmentation": augmentation}
    cropped = augmentation.get("crop_choices", True)
    flips = 0
    for old, new in _pairs(widerface_mini, recipe, 3):
        assert new["image"].dtype == torch.uint8 and old["image"].dtype == torch.float32
        assert new["image"].shape == old["image"].shape == (4, 3, 160, 160)
        x = device_images(new, "cpu")
        for key in ("boxes", "keypoints", "ignore", "keypoints_valid"):
            assert all(torch.equal(a, b) for a, b in zip(old[key], new[key])), key
        levels = ((x - old["image"]) * 128).round().abs()
        if cropped:
            assert torch.all(_psnr(levels) >= MIN_PSNR_DB), _psnr(levels)
            assert torch.all(levels.mean((1, 2, 3)) <= MAX_MEAN_LEVELS), levels.mean((1, 2, 3))
            shifted = ((x[..., 1:] - old["image"][..., :-1]) * 128).round().abs()
            assert torch.all(_psnr(shifted) < MIN_PSNR_DB - 5), _psnr(shifted)
        else:
            assert float(levels.max()) <= 1
            assert int((levels > 0).sum()) <= 1e-4 * levels.numel()
            hw = new["image_hw"]
            assert (hw < 160).any()  # WIDER images are not square: something is padded
            for i, (h, w) in enumerate(hw.tolist()):
                assert torch.all(x[i, :, h:] == 0) and torch.all(x[i, :, :, w:] == 0)
        if "flip" in new:
            flips += int(new["flip"].sum())
    if augmentation == {}:
        assert 0 < flips < 12  # mirrored on the device, some images and not others
        assert "photometric" in new and new["photometric"].shape == (4, PHOTOMETRIC_PARAMS)


def test_uint8_batches_are_a_function_of_seed_and_iteration(syn_root):
    """Worker count does not change the uint8 batches nor their drawn numbers."""
    a = SeededBatches(syn_root, recipe_from_dict({**SMOKE, "workers": 0})).iterate(1)
    b = SeededBatches(syn_root, recipe_from_dict({**SMOKE, "workers": 2}))
    batch_a, batch_b = next(a), next(b.iterate(1))
    b.close()
    for key in ("image", "photometric", "flip", "image_hw"):
        assert torch.equal(batch_a[key], batch_b[key]), key


def test_workers_precedence_and_bad_values(syn_root):
    assert resolve_workers(3, 1, 8) == 3  # --workers beats the recipe
    assert resolve_workers(0, 4, 8) == 0
    assert resolve_workers(None, 1, 8) == 1  # a recipe key beats the CPUs
    assert resolve_workers(None, None, 8) == 8  # else one per CPU thread
    assert resolve_workers(None, None, 0) == 1
    with pytest.raises(UserError, match="--workers must be >= 0"):
        resolve_workers(-1, 2, 8)
    with pytest.raises(UserError, match="recipe.workers must be >= 0"):
        recipe_from_dict({"workers": -1})
    recipe = recipe_from_dict(SMOKE)
    assert recipe.workers is None
    torch_threads = torch.get_num_threads()
    assert SeededBatches(syn_root, recipe).workers == torch_threads
    assert SeededBatches(syn_root, recipe_from_dict({**SMOKE, "workers": 1})).workers == 1
    assert SeededBatches(syn_root, recipe_from_dict({**SMOKE, "workers": 1}), workers=0).workers == 0


def test_budget_presets_keep_smoke_without_workers():
    from detectors.config import budget_recipe

    assert budget_recipe(recipe_from_dict({}), "smoke").workers == 0
    assert budget_recipe(recipe_from_dict({}), "quick").workers is None  # follows the CPUs
    assert budget_recipe(recipe_from_dict({"workers": 3}), "paper").workers == 3


@pytest.mark.parametrize("command", ["train", "search"])
def test_negative_workers_flag_is_one_line_exit_2(command, tmp_path, capsys):
    from nas.cli import main

    args = [str(REPO / "experiments" / "scrfd_0.5g.yaml")] if command == "train" else []
    assert main([command, *args, "--workers", "-1", "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert "--workers must be >= 0" in err and "-1" in err
    assert not (tmp_path / "run").exists()


def _config(**recipe) -> TrainConfig:
    spec = DetectorSpec.from_yaml(REPO / "experiments" / "models" / "scrfd_0.5g.yaml")
    return TrainConfig(spec, recipe_from_dict({**SMOKE, **recipe}))


def test_training_step_receives_uint8_and_the_run_records_data_wait(syn_root, tmp_path, monkeypatch):
    """What the trainer's step gets from the loader is uint8 (the boundary); the model gets
    normalised float32. metrics.jsonl has data_wait_s <= step_s per iteration, and the run's
    data-wait fraction is their sums' ratio (recomputed here from the lines)."""
    import detectors.train as trainer

    seen, inputs = [], []
    step = trainer._step

    def spy(model, batch, *args, **kwargs):
        seen.append(batch["image"].dtype)
        hook = model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
        try:
            return step(model, batch, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(trainer, "_step", spy)
    result = trainer.train(_config(workers=0), syn_root, tmp_path / "run", progress=False, num_threads=1)
    assert seen == [torch.uint8] * 3
    assert all(x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 for x in inputs)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert 0 <= line["data_wait_s"] <= line["step_s"]
        assert line["images_per_s"] == pytest.approx(2 / line["step_s"])
    frac = sum(l["data_wait_s"] for l in lines) / sum(l["step_s"] for l in lines)
    assert result.data_wait_frac == pytest.approx(frac)
    images_per_s, wait = trainer.data_figures(tmp_path / "run" / "metrics.jsonl")
    assert wait == pytest.approx(frac) and images_per_s == pytest.approx(6 / sum(l["step_s"] for l in lines))
    run = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run["recipe"]["workers"] == 0 and run["run"]["workers"] == 0


def test_workers_flag_overrides_the_recipe_and_resume_accepts_another_count(syn_root, tmp_path):
    from detectors.train import train

    config = _config(workers=0)
    train(config, syn_root, tmp_path / "run", progress=False, num_threads=1, max_iterations=1, workers=1)
    run = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run["recipe"]["workers"] == 1 and run["run"]["workers"] == 1
    # loader processes change the speed, not the batches: resuming under another count is fine
    done = train(config, syn_root, tmp_path / "run", progress=False, num_threads=1, resume=True)
    assert done.iterations == 3
    default = train(_config(), syn_root, tmp_path / "default", progress=False, num_threads=1,
                    max_iterations=1)
    assert default.iterations == 1
    assert yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())["run"]["workers"] == 1


def test_a_search_trial_row_carries_images_per_s_and_data_wait(syn_root, tmp_path):
    """run_trial (the driver's trial function, here without Ray) returns the two columns,
    equal to the whole run's figures from its metrics.jsonl."""
    from detectors.train import data_figures
    from nas.trial import TrialRequest, run_trial

    spec = (REPO / "experiments" / "models" / "scrfd_0.5g.yaml").read_text()
    request = TrialRequest(spec_id="x", spec_yaml=spec, step=1, seed=0, budget="smoke",
                           data_root=str(syn_root), out_dir=str(tmp_path / "trial"),
                           recipe={"train_size": 64}, num_threads=1, workers=0)
    metrics = run_trial(request)
    lines = [json.loads(l) for l in (tmp_path / "trial" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics["status"] == "ok" and len(lines) == 4  # the smoke budget's 4 iterations
    assert metrics["images_per_s"] > 0 and 0 <= metrics["data_wait_frac"] <= 1
    assert (metrics["images_per_s"], metrics["data_wait_frac"]) == data_figures(
        tmp_path / "trial" / "train" / "metrics.jsonl")
    assert metrics["data_wait_frac"] == pytest.approx(
        sum(l["data_wait_s"] for l in lines) / sum(l["step_s"] for l in lines))
