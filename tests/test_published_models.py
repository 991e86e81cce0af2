"""The published SCRFD specs reproduce the published complexity figures and the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detectors.cost import cost, level_sizes, vga_gflops
from detectors.model import build
from detectors.spec import DetectorSpec

MODELS = Path(__file__).resolve().parents[1] / "experiments" / "models"

# SCRFD paper, Table 4 (params in M, VGA GFLOPs as counted by mmcv) and the model zoo (bnkps)
PUBLISHED = {
    "scrfd_0.5g": (0.57, 0.508),
    "scrfd_2.5g": (0.67, 2.53),
    "scrfd_10g": (3.86, 9.98),
    "scrfd_34g": (9.80, 34.13),
    "scrfd_2.5g_bnkps": (0.82, None),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(name: str) -> DetectorSpec:
    return DetectorSpec.from_yaml(MODELS / f"{name}.yaml")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_within_2_percent(name):
    params = cost(_spec(name)).params
    assert params / 1e6 == pytest.approx(PUBLISHED[name][0], rel=0.02)


@pytest.mark.parametrize("name", ["scrfd_2.5g", "scrfd_10g", "scrfd_34g"])
def test_vga_gflops_within_2_percent(name):
    assert vga_gflops(_spec(name)) == pytest.approx(PUBLISHED[name][1], rel=0.02)


@pytest.mark.parametrize("name", ["scrfd_0.5g", "scrfd_2.5g", "scrfd_10g", "scrfd_34g"])
def test_mmcv_convention_count_within_1_percent(name):
    """The published figures are mmcv's count (MACs + bias + norm + ReLU + pool ops)."""
    assert cost(_spec(name), (640, 640)).mmcv_flops * 0.75 / 1e9 == pytest.approx(
        PUBLISHED[name][1], rel=0.01)


def test_depthwise_0_5g_macs_gap_is_the_non_conv_ops():
    """For the depthwise model conv MACs alone are ~6% under the published 0.508: norms and
    ReLUs are a large share of so cheap a network. Documented, not hidden."""
    r = cost(_spec("scrfd_0.5g"), (640, 640))
    assert 0.93 < r.macs * 0.75 / 1e9 / 0.508 < 0.95
    assert r.mmcv_flops * 0.75 / 1e9 == pytest.approx(0.508, rel=0.01)


def _onnx_convs(path):
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}

    def attr(node, key):
        return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == key)

    convs = [(inits[n.input[1]], tuple(attr(n, "strides")), attr(n, "group"))
             for n in graph.node if n.op_type == "Conv"]
    scales = [n for n in graph.node if n.op_type == "Mul"]
    used = {x for n in graph.node if n.op_type in ("Conv", "Mul") for x in n.input[1:] if x in inits}
    n_params = sum(int(torch.tensor(inits[x]).prod()) if inits[x] else 1 for x in used)
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    return convs, len(scales), n_params, outputs


def test_bnkps_matches_published_onnx_layer_by_layer(scrfd_onnx):
    spec = _spec("scrfd_2.5g_bnkps")
    model = build(spec).eval()
    order = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, i, o: order.append(
                (tuple(mod.weight.shape), tuple(mod.stride), mod.groups)))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    convs, n_scales, onnx_params, outputs = _onnx_convs(scrfd_onnx)
    # every conv, in execution order: weight shape, stride, groups
    assert order == convs
    assert n_scales == len(model.head.scales) == 3
    # BN folded: each normalised conv gains a bias (C) and loses BN's 2C. The export also merged
    # one 24-channel PAFPN downsample bias into another conv's bias (see shared/models/README).
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    ours = sum(p.numel() for p in model.parameters())
    assert ours - bn_channels == onnx_params + 24
    assert onnx_params + 17 == 817_962  # + shape constants of Resize/Reshape
    # output shapes at 640x640
    for (h, w), s in zip(level_sizes(spec, (640, 640)), spec.anchors.strides):
        rows = h * w * spec.anchors.num_anchors
        assert outputs[f"score_{s}"] == [1, rows, 1]
        assert outputs[f"bbox_{s}"] == [1, rows, 4]
        assert outputs[f"kps_{s}"] == [1, rows, 10]
