"""Zero-cost proxies (nas/proxies): each against a hand-computed case, deterministic given the
seed, and runnable on a sampled SCRFD spec, a BFBox export and an ASFD family member."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.errors import UserError
from nas.proxies import PROXIES, check_proxy, proxy_batch, score_spec, score_specs
from nas.proxies.grad_norm import grad_norm
from nas.proxies.naswot import activation_kernel, naswot
from nas.proxies.synflow import synflow
from nas.proxies.zico import zico


def _linear(weight) -> nn.Linear:
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def test_naswot_kernel_and_logdet_by_hand():
    # pre-activations W1 x: x1 (1, 2) -> (1, 2, -1): code 110; x2 (-1, 1) -> (-1, 1, -2): 010;
    # x3 (2, -1) -> (2, -1, 3): 101. K = 3 - Hamming distance:
    #   [[3, 2, 1], [2, 3, 0], [1, 0, 3]], det = 3*9 - 2*6 + 1*(-3) = 12
    net = nn.Sequential(_linear([[1, 0], [0, 1], [1, -1]]), nn.ReLU(), _linear([[1, 1, 1]]))
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [2.0, -1.0]])
    kernel = activation_kernel(net, x)
    assert kernel.tolist() == [[3, 2, 1], [2, 3, 0], [1, 0, 3]]
    assert naswot(net, x) == pytest.approx(math.log(12), rel=1e-12)


def test_naswot_counts_each_call_of_a_shared_relu_and_a_repeated_input_is_singular():
    relu = nn.ReLU()
    # the same ReLU module called twice: first codes 110 (x1) and 010 (x2), agreeing on 2 units
    net = nn.Sequential(_linear([[1, 0], [0, 1], [1, -1]]), relu, _linear(-np.eye(3)), relu)
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])
    # the second call sees -relu(.) <= 0: both codes 000, agreeing on all 3 units;
    # K = [[3 + 3, 2 + 3], [2 + 3, 3 + 3]], det 36 - 25 = 11
    assert activation_kernel(net, x).tolist() == [[6, 5], [5, 6]]
    assert naswot(net, x) == pytest.approx(math.log(11))
    assert naswot(net, torch.tensor([[1.0, 2.0], [1.0, 2.0]])) == float("-inf")


def test_synflow_of_a_linear_chain_is_depth_times_the_product_of_abs_weights():
    torch.manual_seed(0)
    w1, w2, w3 = torch.randn(4, 3), torch.randn(5, 4), torch.randn(2, 5)
    net = nn.Sequential(_linear(w1), nn.ReLU(), nn.BatchNorm1d(4), _linear(w2), nn.ReLU(),
                        _linear(w3))
    before = [p.detach().clone() for p in net.parameters()]
    r = (w3.abs().double() @ w2.abs().double() @ w1.abs().double() @ torch.ones(3, dtype=torch.float64)).sum()
    assert synflow(net, (3,)) == pytest.approx(3 * float(r), rel=1e-12)
    # the caller's model is untouched (signs, dtype)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert next(net.parameters()).dtype == torch.float32


def test_grad_norm_equals_autograd_and_the_closed_form():
    torch.manual_seed(1)
    layer = nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.randn(5, 2)

    def loss(m):
        return ((m(x) - y) ** 2).sum()

    got = grad_norm(layer, loss)
    grads = torch.autograd.grad(loss(layer), list(layer.parameters()))
    assert got == pytest.approx(float(torch.sqrt(sum((g ** 2).sum() for g in grads))), rel=1e-6)
    # by hand: residuals r = W x + b - y; dL/dW = 2 r^T x, dL/db = 2 sum r
    W, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    r = x.numpy() @ W.T + b - y.numpy()
    hand = np.sqrt(((2 * r.T @ x.numpy()) ** 2).sum() + ((2 * r.sum(0)) ** 2).sum())
    assert got == pytest.approx(float(hand), rel=1e-5)
    assert all(p.grad is None for p in layer.parameters())


def test_zico_by_hand():
    # loss_b = a . x_b + b . z: dL/da = x_b varies over the batches, dL/db = z does not (its
    # layer adds nothing). x = (1, 2), (3, 2), (5, -2):
    #   a1: |g| mean 3, std sqrt((4 + 0 + 4) / 3) -> 3 / sqrt(8/3)
    #   a2: |g| mean 2, g mean 2/3, std sqrt(4 - 4/9) = 4 sqrt(2) / 3 -> 3 / (2 sqrt(2))
    net = nn.ModuleDict({"a": nn.Linear(2, 1, bias=False), "b": nn.Linear(2, 1, bias=False)})
    xs = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0]), torch.tensor([5.0, -2.0])]
    z = torch.tensor([1.0, -1.0])
    losses = [lambda m, x=x: m["a"](x).sum() + m["b"](z).sum() for x in xs]
    want = math.log(3 / math.sqrt(8 / 3) + 3 / (2 * math.sqrt(2)))
    assert zico(net, losses) == pytest.approx(want, rel=1e-12)
    assert zico(net, losses[:2]) == pytest.approx(math.log(2.0))  # a1: mean 2 / std 1; a2 constant
    assert all(p.grad is None for p in net.parameters())


def test_unknown_proxy_is_a_user_error_listing_the_valid_ones():
    with pytest.raises(UserError, match="unknown zero-cost proxy; valid: naswot, synflow, grad_norm, zico"):
        check_proxy("zen")


@pytest.fixture(scope="module")
def detector_specs():
    """A sampled SCRFD step-1 spec (smoke), BFBox's default path exported as a spec, ASFD D0."""
    import yaml

    from detectors.spec import DetectorSpec
    from experiments import MODELS_DIR, SEARCH_DIR
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.scrfd import build_space, trial_recipe
    from search_spaces.bfbox.space import BFBoxSpace

    search = resolve_config(SearchOptions(budget="smoke"))
    scrfd = build_space(search).sample(1, seed=0, step=1)[0]
    frame = yaml.safe_load((SEARCH_DIR / "bfbox.yaml").read_text())["frame"]
    bfbox = BFBoxSpace.from_dict(frame, "frame")
    specs = [scrfd, bfbox.template(bfbox.default_path()),
             DetectorSpec.from_yaml(MODELS_DIR / "asfd_d0.yaml")]
    return specs, trial_recipe(search)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("proxies") / "root", num_train=4, num_val=2,
                    image_size=128, seed=0, progress=False)


def test_every_proxy_scores_scrfd_bfbox_and_asfd_deterministically(detector_specs, tiny_root,
                                                                   one_torch_thread):
    import dataclasses

    specs, recipe = detector_specs
    # zico: two halves of 2 (MIN_BATCH); 64 px keeps the 12 builds and scores cheap
    recipe = dataclasses.replace(recipe, batch_size=4, train_size=64)
    batch = proxy_batch(tiny_root, recipe)
    assert torch.equal(batch["image"], proxy_batch(tiny_root, recipe)["image"])
    rows = score_specs(list(PROXIES), specs, batch, recipe, seed=0)
    assert [(r["spec_id"], r["proxy"]) for r in rows] == [
        (s.id, p) for s in specs for p in PROXIES]
    assert all(math.isfinite(r["value"]) and r["cost_s"] > 0 for r in rows), rows
    assert all(r["value"] > 0 for r in rows if r["proxy"] != "naswot"), rows
    # the same seed gives the same score; another seed initialises (and scores) differently
    for proxy in PROXIES:
        again, _ = score_spec(proxy, specs[0], batch, recipe, seed=0)
        first = next(r["value"] for r in rows if r["proxy"] == proxy and r["spec_id"] == specs[0].id)
        assert again == first
    other, _ = score_spec("grad_norm", specs[0], batch, recipe, seed=1)
    assert other != next(r["value"] for r in rows if r["proxy"] == "grad_norm")
