"""BN recalibration (BFBox's candidate step) on a real fixture: the published SCRFD-2.5GF-bnkps
weights, with true BatchNorm statistics, then mis-calibrated the way an inherited path is.

The published export has BN folded into the convs, so the import gives BN layers that are an
identity plus a shift. `_with_true_statistics` re-expresses each one, without changing the
function, as a BN whose running statistics are the real per-channel mean and variance of its
input over calibration images (and whose affine part undoes them): a model as training would
leave it. Resetting those statistics (what a candidate inheriting statistics accumulated under
other paths resembles) must wreck its AP on real mini-val faces, and `recalibrate_bn` on
training images must (a) set each BN's statistics to the average of its batch statistics,
computed here independently by hooks, and (b) bring the AP back.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detectors.data.widerface import load_eval_ground_truth, load_split
from detectors.evaluate import evaluate
from detectors.model import build
from detectors.onnx_io import import_onnx_weights
from detectors.spec import DetectorSpec
from detectors.test import predict_split
from nas.strategies.candidates import image_batches, recalibrate_bn

SPEC = "experiments/models/scrfd_2.5g_bnkps.yaml"
SIZE = 640
VAL_STEP, TRAIN_STEP = 8, 24  # 32 of mini-val's 250 images (32 events), 25 of mini-train's 600


def _norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def _input_moments(model: nn.Module, batches: list[torch.Tensor], train_mode: bool):
    """Per BN: the mean over batches of its input's per-channel batch mean and unbiased batch
    variance (hooks; the model in train or eval mode)."""
    norms, sums = _norms(model), {}

    def hook(module, inputs, _out):
        x = inputs[0].transpose(0, 1).flatten(1)  # (C, N*H*W)
        m, v = sums.get(module, (0.0, 0.0))
        sums[module] = (m + x.mean(1), v + x.var(1, unbiased=True))

    handles = [n.register_forward_hook(hook) for n in norms]
    model.train(train_mode)
    try:
        for images in batches:
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.eval()
    return [(sums[n][0] / len(batches), sums[n][1] / len(batches)) for n in norms]


@torch.no_grad()
def _with_true_statistics(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Identity BNs y = x + b become BNs with running stats (mu, var) of their input and
    weight sqrt(var + eps), bias b + mu: the same function, honest statistics."""
    for bn, (mu, var) in zip(_norms(model), _input_moments(model, batches, train_mode=False)):
        assert torch.allclose(bn.running_mean, torch.zeros_like(mu))  # the import's identity
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale  # the layer is x * scale + shift
        bn.running_mean.copy_(mu)
        bn.running_var.copy_(var)
        bn.weight.copy_(scale * torch.sqrt(var + bn.eps))
        bn.bias.copy_(shift + mu * scale)
    return model


def _ap(model: nn.Module, root, ids, gt) -> dict[str, float]:
    preds = predict_split(model, root, "val", SIZE, image_ids=ids, progress=False)
    return evaluate(preds, gt, progress=False).as_dict()


@pytest.mark.slow
def test_recalibration_restores_a_miscalibrated_models_ap(widerface_mini, scrfd_onnx, repo_root):
    torch.set_num_threads(1)
    train_ids = [r.image_id for r in load_split(widerface_mini, "train").records][::TRAIN_STEP]
    val_ids = [r.image_id for r in load_split(widerface_mini, "val").records][::VAL_STEP]
    gt = load_eval_ground_truth(widerface_mini).subset(val_ids)
    calibration = list(image_batches(widerface_mini, "train", train_ids, SIZE, batch_size=5))

    model = build(DetectorSpec.from_yaml(repo_root / SPEC))
    import_onnx_weights(model, scrfd_onnx)
    model.eval()
    probe = calibration[0][:2]
    before = model(probe)
    _with_true_statistics(model, calibration)
    after = model(probe)
    for a, b in zip(before.cls_logits + before.box_dists, after.cls_logits + after.box_dists):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)  # re-expressed, not changed
    calibrated = _ap(model, widerface_mini, val_ids, gt)

    for bn in _norms(model):  # statistics that do not belong to these weights
        bn.reset_running_stats()
    miscalibrated = _ap(model, widerface_mini, val_ids, gt)

    expected = _input_moments(model, calibration, train_mode=True)  # independent of recalibrate_bn
    assert recalibrate_bn(model, calibration) == len(expected) > 30
    assert not model.training
    for bn, (mu, var) in zip(_norms(model), expected):
        assert bn.momentum == 0.1  # restored after the cumulative average
        assert torch.allclose(bn.running_mean, mu, rtol=1e-4, atol=1e-4)
        assert torch.allclose(bn.running_var, var, rtol=1e-3, atol=1e-4)
    recalibrated = _ap(model, widerface_mini, val_ids, gt)

    print(f"hard AP: calibrated {calibrated['hard']:.3f}, mis-calibrated {miscalibrated['hard']:.3f}, "
          f"recalibrated {recalibrated['hard']:.3f}")
    assert calibrated["easy"] > 0.8  # the published model's quality: a real fixture
    for setting in ("easy", "medium", "hard"):
        assert miscalibrated[setting] < calibrated[setting] - 0.3
        assert recalibrated[setting] > miscalibrated[setting] + 0.3
        # batch statistics in train mode differ slightly from the eval-mode ones
        assert recalibrated[setting] > calibrated[setting] - 0.05
