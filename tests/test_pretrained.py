"""recipe.pretrained: torchvision state dicts written here (weights=None, no download) load
into our backbones; the loaded backbone's outputs equal torchvision's own forward (a second
method), and bad files are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from _cli import one_line_error
from detectors.config import TrainConfig, recipe_from_dict
from detectors.errors import UserError
from detectors.model import build
from detectors.pretrained import VGG16_TABLE, load_pretrained_backbone
from detectors.spec import DetectorSpec

REPO = Path(__file__).resolve().parents[1]


def _tv_resnet_spec(block: str, depths: tuple[int, ...], widths: tuple[int, ...], extra: bool) -> DetectorSpec:
    stages = [{"block": block, "depth": d, "width": w} for d, w in zip(depths, widths)]
    if extra:  # ASFD's C6: not in the file, must be reported missing and stay as initialised
        stages.append({"block": "ssd_extra_bn", "depth": 1, "width": 64})
    d = yaml.safe_load((REPO / "experiments/models/scrfd_0.5g.yaml").read_text())
    d["backbone"] = {"stem": "tv_resnet", "stem_width": 64, "stages": stages}
    d["neck"]["in_levels"] = [2, 3]
    d["anchors"].update(strides=[4, 8], base_sizes=[16, 32])
    d["head"]["channels"] = 16
    return DetectorSpec.from_dict(d)


def _randomise_bn(net: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial statistics, so a mismapped BN cannot hide
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def _save(net: nn.Module, path: Path) -> Path:
    torch.save(net.state_dict(), path)
    return path


def _tv_resnet_forward(tv: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    outs = [x]
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("block", ["tv_basic", "basic"])
def test_torchvision_resnet18_loads_and_reproduces_its_stages(tmp_path, block, one_torch_thread):
    tv = torchvision.models.resnet18(weights=None).eval()
    _randomise_bn(tv)
    path = _save(tv, tmp_path / "resnet18.pth")
    spec = _tv_resnet_spec(block, (2, 2, 2, 2), (64, 128, 256, 512), extra=True)
    torch.manual_seed(1)
    model = build(spec).eval()
    extra_before = {k: v.clone() for k, v in model.backbone.stages[4].state_dict().items()}
    lines = load_pretrained_backbone(model, spec, path)
    n_tv = len(tv.state_dict())
    assert len(lines) == 3
    assert lines[0].endswith(f"{n_tv - 2} tensors loaded, 2 unused, classifier")  # fc.weight, fc.bias
    assert lines[1].startswith(f"pretrained backbone: {len(extra_before)} missing") and "stages.4." in lines[1]
    assert lines[2].startswith("pretrained backbone: 0 unexpected")
    for k, v in model.backbone.stages[4].state_dict().items():
        assert torch.equal(v, extra_before[k])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = _tv_resnet_forward(tv, x)
        got = [model.backbone.stem(x)]
        for stage in model.backbone.stages[:4]:
            got.append(stage(got[-1]))
    if block == "tv_basic":  # the same modules: equal outputs at the stem and every stage
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-5)
    else:  # RSA's ConvNormAct blocks: same weights; the strided shortcut averages 2x2 first,
        # so the stem and stage 1 (stride 1, no shortcut conv) are equal, later stages are not
        for g, w in zip(got[:2], want[:2]):
            assert torch.allclose(g, w, atol=1e-5)
        assert torch.equal(model.backbone.stages[1][0].shortcut[1].conv.weight, tv.layer2[0].downsample[0].weight)


def test_torchvision_bottleneck_resnet_reproduces_layer4(tmp_path, one_torch_thread):
    # torchvision's ResNet class with its Bottleneck (resnet50's layout and key names), at
    # depths 1, 1, 2, 1 to keep the test small
    from torchvision.models.resnet import Bottleneck, ResNet

    tv = ResNet(Bottleneck, [1, 1, 2, 1]).eval()
    _randomise_bn(tv)
    spec = _tv_resnet_spec("tv_bottleneck", (1, 1, 2, 1), (64, 128, 256, 512), extra=False)
    model = build(spec).eval()
    lines = load_pretrained_backbone(model, spec, _save(tv, tmp_path / "bottleneck.pth"))
    assert "0 missing" in lines[1] and "0 unexpected" in lines[2]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone(x)[3], _tv_resnet_forward(tv, x)[4], atol=1e-4)


def _vgg16_file(path: Path) -> tuple[nn.Module, Path]:
    """torchvision's vgg16 state dict: its `features` (torchvision's own make_layers, config D)
    and its six classifier keys, whose 120 M parameters are shrunk to one value each (they are
    dropped by name, never read), so the file is 59 MB, not 553."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"]).eval()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state |= {f"classifier.{i}.{p}": torch.zeros(1) for i in (0, 3, 6) for p in ("weight", "bias")}
    torch.save(state, path)
    return features, path


def test_torchvision_vgg16_loads_into_fanet_and_reproduces_conv5_3(tmp_path, one_torch_thread):
    features, path = _vgg16_file(tmp_path / "vgg16.pth")
    spec = DetectorSpec.from_yaml(REPO / "experiments/models/fanet.yaml")
    model = build(spec).eval()
    lines = load_pretrained_backbone(model, spec, path)
    assert lines[0].endswith("26 tensors loaded, 6 unused, classifier")  # 13 convs; 3 linear layers
    # fc6/fc7 (stage 4) and the two SSD extra layers are not in torchvision's VGG16
    assert lines[1].startswith("pretrained backbone: 12 missing") and "stages.3." in lines[1]
    assert lines[2].startswith("pretrained backbone: 0 unexpected")
    assert len(VGG16_TABLE) == 13
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        # torchvision features[:30] ends at conv5_3 + ReLU (stride 16), our stage 3's output
        assert torch.allclose(feats[2], features[:30](x), atol=1e-5)
        assert torch.allclose(feats[0], features[:16](x), atol=1e-5)  # conv3_3 + ReLU


def test_shape_mismatch_names_the_key(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    spec = _tv_resnet_spec("tv_bottleneck", (2, 2, 2, 2), (64, 128, 256, 512), extra=False)
    with pytest.raises(UserError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\).*"
                                        r"stages\.0\.0\.conv1\.weight has \(64, 64, 1, 1\)"):
        load_pretrained_backbone(build(spec), spec, _save(tv, tmp_path / "r18.pth"))


def test_another_network_or_stem_is_refused(tmp_path):
    mbv2 = _save(torchvision.models.mobilenet_v2(weights=None), tmp_path / "mbv2.pth")
    spec = _tv_resnet_spec("tv_basic", (1, 1), (64, 128), extra=False)
    with pytest.raises(UserError, match="none of its .* keys is a torchvision resnet backbone key"):
        load_pretrained_backbone(build(spec), spec, mbv2)
    d0 = DetectorSpec.from_yaml(REPO / "experiments/models/asfd_d0.yaml")
    with pytest.raises(UserError, match="stem 'mobilenet_v1' has no torchvision-format table"):
        load_pretrained_backbone(build(d0), d0, mbv2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "root", num_train=2, num_val=1,
                    image_size=128, seed=0, progress=False)


@pytest.mark.parametrize("content, words", [
    ("garbage", ["not a PyTorch state dict"]),
    ({"epoch": 3}, ["is not a state dict"]),
    (None, ["does not exist"]),
])
def test_bad_files_one_line_exit_2_from_facenas_train(tmp_path, capsys, tiny_data, content, words):
    from nas.cli import main

    path = tmp_path / "weights.pth"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        torch.save(content, path)
    spec = _tv_resnet_spec("tv_basic", (1, 1), (64, 128), extra=False)
    config = TrainConfig(spec=spec, recipe=recipe_from_dict({"train_size": 64, "batch_size": 1, "workers": 0}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config.to_yaml())
    code = main(["train", str(cfg), "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--quiet",
                 "--budget", "paper", "--set", f"recipe.pretrained.backbone={path}"])
    assert code == 2
    line = one_line_error(capsys)
    assert str(path) in line and all(w in line for w in words), line


def test_recipe_key_round_trips_and_is_omitted_at_default():
    recipe = recipe_from_dict({"pretrained": {"backbone": "w/resnet50.pth"}})
    assert recipe.pretrained.backbone == "w/resnet50.pth"
    assert recipe_from_dict(recipe.to_dict()) == recipe
    assert "pretrained" not in recipe_from_dict({}).to_dict()  # older recipes/checkpoints stay equal
    with pytest.raises(UserError, match="recipe.pretrained.backbone must be a string"):
        recipe_from_dict({"pretrained": {"backbone": 3}})


@pytest.mark.parametrize("space", ["asfd", "scrfd"])
def test_a_search_reads_a_relative_backbone_file_from_where_it_runs(tmp_path, monkeypatch, space):
    """Trials run in Ray workers in another directory: the driver makes a relative
    recipe.pretrained.backbone absolute against its own working directory (as facenas train
    reads it), and a missing file is one line before anything runs."""
    from nas.options import SearchOptions
    from nas.search_config import resolve_config

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.pth").write_bytes(b"")  # only its path matters here
    monkeypatch.chdir(tmp_path)
    search = resolve_config(SearchOptions(space=space, budget="smoke",
                                          overrides=["recipe.pretrained.backbone=weights/backbone.pth"]))
    assert search["recipe"]["pretrained"]["backbone"] == str(tmp_path / "weights" / "backbone.pth")
    with pytest.raises(UserError, match=r"recipe.pretrained.backbone: weights/missing.pth does not "
                                        r"exist \(a relative path is read from the directory"):
        resolve_config(SearchOptions(space=space, budget="smoke",
                                     overrides=["recipe.pretrained.backbone=weights/missing.pth"]))
