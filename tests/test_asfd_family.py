"""ASFD D0-D6: Table 1's depths, the backbones (torchvision weights load, MobileNetV1's layer
list), and every family member builds, trains a step and costs exactly."""

from __future__ import annotations

import pytest
import torch
import torchvision

from detectors.blocks.tv_resnet import load_torchvision_resnet
from detectors.cost import cost
from detectors.errors import UserError
from detectors.measure import measured_cost
from detectors.model import build
from detectors.spec import DetectorSpec
from detectors.asfd.autofem import AutoFEMOptions
from search_spaces.asfd.family import TABLE1, autofem_depth, family_spec, head_depth, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUTOFEM = AutoFEMOptions(
    fpn=tuple(("conv1x1", "sep3x3" if lv < 5 else None, "dil3x3_r2" if lv > 0 else None)
              for lv in range(6)),
    cpm=tuple(((0, "sep3x3"), (1, "conv1x3_3x1"), (0, "sep5x5")) for _ in range(6)))


def test_table1_depths():
    thetas = [TABLE1[d][0] for d in range(7)]
    assert [autofem_depth(t) for t in thetas] == [0.5, 0.5, 0.5, 1, 1, 2, 2]
    assert [head_depth(t) for t in thetas] == [1, 1, 1, 2, 2, 4, 4]
    spec = family_spec(5, AUTOFEM)
    assert spec.neck.channels == spec.head.channels == 320 and spec.neck.options.repeats == 2
    assert family_spec(2, AUTOFEM).neck.options.cpm == ()


@pytest.mark.parametrize("d", range(7))
def test_family_builds_trains_and_costs_exactly(d):
    spec = family_spec(d, AUTOFEM)
    assert DetectorSpec.from_yaml(spec.to_yaml()) == spec
    torch.manual_seed(d)
    model = build(spec)
    hw = (64, 96)
    got, want = cost(spec, hw), measured_cost(model, hw)
    assert got.components == want.components
    out = model(torch.randn(2, 3, *hw))
    assert len(out.cls_logits) == 6 and len(out.aux) == 1
    loss = sum(x.mean() for x in out.cls_logits + out.box_dists + out.aux[0].cls_logits)
    loss.backward()
    assert model.neck.stages[0].lateral_convs[0].conv.weight.grad is not None


@pytest.mark.parametrize("net, d", [("resnet18", 2), ("resnet50", 4)])
def test_torchvision_weights_load_by_renaming(net, d):
    tv = getattr(torchvision.models, net)(weights=None).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial BN statistics, so a mismatch cannot hide
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = build(family_spec(d, AUTOFEM)).eval()
    untouched = load_torchvision_resnet(model, tv.state_dict())
    assert untouched and all(not k.startswith(("backbone.stem", "backbone.stages.0.",
                                                 "backbone.stages.3.")) for k in untouched)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        want = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        got = model.backbone(x)[3]
    assert torch.allclose(got, want, atol=1e-5)


def test_torchvision_weights_of_another_depth_are_refused():
    tv = torchvision.models.resnet34(weights=None)
    with pytest.raises(UserError, match="do not fit this backbone"):
        load_torchvision_resnet(build(family_spec(4, AUTOFEM)), tv.state_dict())


def test_mobilenet_v1_layers_are_the_papers():
    """Backbone params of D0 / D1 (stem..C5) equal MobileNetV1's conv layers counted from its
    layer table (Howard et al. 2017, Table 1), each conv with BN (2 params per channel)."""
    for d, a in ((0, 0.25), (1, 1.0)):
        w = lambda c: int(c * a)  # noqa: E731
        table = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
            (1024, 2), (1024, 1)]  # depthwise units: (output channels, stride)
        params, cin = 3 * 9 * w(32) + 2 * w(32), w(32)
        for cout, _ in table:
            params += 9 * cin + 2 * cin + cin * w(cout) + 2 * w(cout)
            cin = w(cout)
        got = cost(family_spec(d, AUTOFEM), (224, 224)).components
        assert sum(got[k].params for k in ("stem", "c2", "c3", "c4", "c5")) == params


def test_bad_family_index(tmp_path, capsys):
    with pytest.raises(UserError, match="ASFD-D7 does not exist: the family is D0-D6"):
        family_spec(7, AUTOFEM)
    derived = tmp_path / "derived.yaml"
    derived.write_text(family_spec(3, AUTOFEM).to_yaml())
    assert main([str(derived), "--out", str(tmp_path / "out"), "--models", "7"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
    assert main([str(derived), "--out", str(tmp_path / "out"), "--models", "0,6"]) == 0
    assert DetectorSpec.from_yaml(tmp_path / "out" / "asfd_d6.yaml") == family_spec(6, AUTOFEM)


def test_shipped_family_is_the_family_of_the_shipped_autofem(repo_root):
    models = repo_root / "experiments" / "models"
    autofem = DetectorSpec.from_yaml(models / "asfd_autofem_quick.yaml").neck.options
    for d in range(7):
        assert DetectorSpec.from_yaml(models / f"asfd_d{d}.yaml") == family_spec(d, autofem)
