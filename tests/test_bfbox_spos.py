"""SPOS supernet training through the one trainer: uniform per-iteration paths, exact resume,
checkpoints refused for another space; BN recalibration of an inherited candidate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detectors.checkpoint import load_checkpoint
from detectors.config import TrainConfig, recipe_from_dict
from detectors.errors import UserError
from detectors.model import build
from detectors.train import train
from nas.strategies.candidates import fixed_subsets, image_batches, recalibrate_bn
from nas.strategies.spos import load_supernet, path_of_iteration, train_supernet
from search_spaces.bfbox.space import BFBoxSpace

SPACE = BFBoxSpace(widths=(16, 16, 32, 32, 32, 16), stem_width=16, neck_channels=16,
                   head_channels=16, depths=(1, 1, 1, 1, 1, 1))
RECIPE = recipe_from_dict({
    "train_size": 128, "batch_size": 2, "workers": 0, "seed": 3,
    "schedule": {"unit": "iterations", "total": 4, "milestones": [3], "warmup_iters": 2,
                 "lr": 0.001, "weight_decay": 5e-5},
    "assigner": {"type": "iou", "pos_iou": 0.35}, "augmentation": {"min_face": 8.0}})


def test_paths_are_uniform_and_a_function_of_seed_and_iteration():
    a = [path_of_iteration(SPACE, 0, i) for i in range(3)]
    assert a == [path_of_iteration(SPACE, 0, i) for i in range(3)]
    assert a != [path_of_iteration(SPACE, 1, i) for i in range(3)]
    n = 3000
    genes = np.stack([SPACE.encode(path_of_iteration(SPACE, 7, i)) for i in range(n)])
    for g, size in enumerate(SPACE.gene_sizes()):
        counts = np.bincount(genes[:, g], minlength=size)
        # each value's count ~ Binomial(n, 1/size): within 5 standard deviations
        sd = np.sqrt(n * (1 / size) * (1 - 1 / size))
        assert np.all(np.abs(counts - n / size) < 5 * sd), (g, counts)


def test_supernet_resume_is_exact(widerface_mini, tmp_path):
    """A supernet run stopped after 2 iterations and resumed logs the losses, path costs and
    ends with the weights of an uninterrupted run; another path seed is refused on resume."""
    train_supernet(SPACE, RECIPE, widerface_mini, tmp_path / "a", seed=5, num_threads=1)
    first = train_supernet(SPACE, RECIPE, widerface_mini, tmp_path / "b", seed=5, num_threads=1,
                           max_iterations=2)
    assert first.iterations == 2
    with pytest.raises(UserError, match="another"):
        train_supernet(SPACE, RECIPE, widerface_mini, tmp_path / "b", seed=6, resume=True)
    train_supernet(SPACE, RECIPE, widerface_mini, tmp_path / "b", seed=5, num_threads=1, resume=True)
    read = lambda run: [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    a, b = read("a"), read("b")
    assert [m["iteration"] for m in b] == list(range(1, 5))
    for key in ("total", "cls", "box", "num_pos", "lr", "path_gflops"):
        assert [m[key] for m in a] == [m[key] for m in b], key
    # the logged path costs are those of the paths drawn for iterations 0..3
    assert [m["path_gflops"] for m in a] == [
        float(SPACE.vga_gflops(SPACE.encode(path_of_iteration(SPACE, 5, i)))[0]) for i in range(4)]
    wa, wb = (load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the weights off every sampled path never moved (SGD skips parameters without gradient)
    init = build_supernet_like(wa)
    touched = {n for i in range(4) for n in _path_params(path_of_iteration(SPACE, 5, i))}
    moved = {k for k in wa if "backbone.stages" in k and "running" not in k
             and "num_batches" not in k and not torch.equal(wa[k], init[k])}
    assert moved and moved <= touched


def build_supernet_like(state):
    from search_spaces.bfbox.supernet import build_supernet

    torch.manual_seed(RECIPE.seed)  # the trainer seeds torch before building the model
    return build_supernet(SPACE).state_dict()


def _path_params(path):
    from search_spaces.bfbox.supernet import BFBoxSupernet, _standalone_name

    return {k for k in BFBoxSupernet(SPACE).state_dict() if _standalone_name(k, path) is not None}


def test_load_supernet_refuses_another_space_or_a_plain_checkpoint(widerface_mini, tmp_path):
    from dataclasses import replace

    train_supernet(SPACE, RECIPE, widerface_mini, tmp_path / "a", num_threads=1, max_iterations=1)
    net = load_supernet(tmp_path / "a", SPACE)
    saved = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    with pytest.raises(UserError, match="another bfbox space.*fdb"):
        load_supernet(tmp_path / "a", replace(SPACE, fdb=3))
    plain = TrainConfig(SPACE.template(SPACE.default_path()), RECIPE)
    train(plain, widerface_mini, tmp_path / "plain", progress=False, num_threads=1, max_iterations=1)
    with pytest.raises(UserError, match="not a bfbox supernet"):
        load_supernet(tmp_path / "plain", SPACE)
    with pytest.raises(UserError, match="no such checkpoint"):
        load_supernet(tmp_path / "nothing", SPACE)


def test_recalibration_computes_the_batch_average_statistics(widerface_mini, one_torch_thread):
    """After recalibration the stem's first BN holds the mean over the recalibration batches
    of its input's per-channel mean (computed here directly from the stem conv)."""
    torch.manual_seed(0)
    model = build(SPACE.template(SPACE.default_path()))
    bn = model.backbone.stem[0].norm
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    subsets = fixed_subsets(widerface_mini, num_recalibration=6, num_validation=2, seed=0)
    assert subsets == fixed_subsets(widerface_mini, 6, 2, 0) and len(subsets.recalibration) == 6
    batches = list(image_batches(widerface_mini, "train", subsets.recalibration, 128, 3))
    assert recalibrate_bn(model, batches) == sum(isinstance(m, torch.nn.BatchNorm2d)
                                                 for m in model.modules())
    assert not model.training
    with torch.no_grad():
        means = [model.backbone.stem[0].conv(b).mean(dim=(0, 2, 3)) for b in batches]
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert bn.momentum == 0.1  # restored
