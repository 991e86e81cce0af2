"""DetectorSpec: validation messages, YAML round trip, id stability, from_yaml errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from detectors import catalog
from detectors.errors import UserError
from detectors.spec import (AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec,
                            StageSpec)

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((REPO / "experiments" / "models").glob("scrfd_*.yaml"))


def _spec(**head) -> DetectorSpec:
    stages = tuple(StageSpec("basic", d, w) for d, w in zip((3, 5, 3, 2), (24, 48, 48, 80)))
    return DetectorSpec(
        name="t", backbone=BackboneSpec(stem_width=24, stages=stages),
        neck=NeckSpec("pafpn", 24), head=HeadSpec(**{"channels": 64, "num_convs": 2, **head}))


def test_published_files_exist():
    names = {p.stem for p in PUBLISHED}
    assert {"scrfd_0.5g", "scrfd_2.5g", "scrfd_10g", "scrfd_34g", "scrfd_2.5g_bnkps"} <= names


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_yaml_round_trip_is_exact(path):
    spec = DetectorSpec.from_yaml(path)
    text = spec.to_yaml()
    again = DetectorSpec.from_yaml(text)
    assert again == spec
    assert again.to_yaml() == text
    assert DetectorSpec.from_dict(spec.to_dict()) == spec
    # the file's content (comments aside) is the canonical form
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(text)


def test_id_is_stable_and_content_addressed():
    a, b = _spec(), _spec()
    assert a.id == b.id and len(a.id) == 12
    # a golden value: the id must not change between versions for the same spec text
    assert DetectorSpec.from_yaml(REPO / "experiments/models/scrfd_2.5g.yaml").id == \
        __import__("hashlib").sha256(
            DetectorSpec.from_yaml(REPO / "experiments/models/scrfd_2.5g.yaml").to_yaml().encode()
        ).hexdigest()[:12]
    c = dataclasses.replace(a, head=dataclasses.replace(a.head, num_convs=3))
    assert c.id != a.id
    assert dataclasses.replace(a, name="other").id != a.id


def test_defaults_are_scrfd():
    s = _spec()
    assert s.anchors == AnchorSpec((8, 16, 32), (16, 64, 256), (1.0, 2.0), (1.0,))
    assert s.anchors.num_anchors == 2 and s.input_size == (640, 640)
    assert s.backbone.stem == "deep" and s.neck.in_levels == (3, 4, 5)


@pytest.mark.parametrize("make, message", [
    (lambda: StageSpec("basic", 2, 20), "stage 3 width 20 is not divisible by 8"),
    (lambda: StageSpec("basic", -1, 24), "stage 3 depth must be >= 1, got -1"),
    # the valid names are the catalogue's blocks (families add entries after these three)
    (lambda: StageSpec("resnext", 2, 24),
     "stage 3 block 'resnext' is not one of basic, bottleneck, depthwise" + "".join(
         f", {b}" for b in list(catalog.BLOCKS)[3:])),
])
def test_stage_validation_messages(make, message):
    stages = [StageSpec("basic", 1, 8)] * 4
    stages[2] = make()
    with pytest.raises(UserError) as err:
        BackboneSpec(stem_width=16, stages=tuple(stages))
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 60}, "head channels 60 is not divisible by 8"),
    ({"channels": 40, "gn_groups": 16}, "head channels 40 is not divisible by gn_groups 16"),
    ({"norm": "ln"}, "head norm 'ln' is not one of gn, bn"),
    ({"num_convs": -2}, "head num_convs must be >= 0, got -2"),
    ({"keypoints": "yes"}, "head keypoints must be true or false, got 'yes'"),
])
def test_head_validation_messages(kwargs, message):
    with pytest.raises(UserError) as err:
        HeadSpec(**{"channels": 64, "num_convs": 2, **kwargs})
    assert str(err.value) == message


def test_cross_field_validation():
    s = _spec()
    with pytest.raises(UserError, match=r"anchors strides \[8, 16, 32\] must match the neck levels \[2, 3, 4\]"):
        dataclasses.replace(s, neck=NeckSpec("pafpn", 24, (2, 3, 4)))
    with pytest.raises(UserError, match="must be consecutive levels within 2..7"):
        NeckSpec("fpn", 24, (3, 5))
    with pytest.raises(UserError, match="needs 1 to 6 stages, got 7"):
        BackboneSpec(stem_width=16, stages=(s.backbone.stages * 2)[:7])
    three = BackboneSpec(stem_width=16, stages=s.backbone.stages[:3])  # C2..C4: valid alone
    with pytest.raises(UserError, match=r"reach beyond the backbone's levels \[2, 3, 4\]"):
        dataclasses.replace(s, backbone=three)
    with pytest.raises(UserError, match="has 3 strides but 2 base_sizes"):
        AnchorSpec(base_sizes=(16, 64))
    with pytest.raises(UserError, match="input_size"):
        dataclasses.replace(s, input_size=(640,))


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def _canonical() -> str:
    return (REPO / "experiments/models/scrfd_2.5g.yaml").read_text()


def test_from_yaml_typo_key_names_key_line_file_and_valid_keys(tmp_path):
    p = _write(tmp_path, _canonical().replace("  num_convs:", "  num_conv:"))
    with pytest.raises(UserError) as err:
        DetectorSpec.from_yaml(p)
    msg = str(err.value)
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "num_conv:" in t)
    assert msg.startswith(f"{p}:{line}: unknown key 'head.num_conv'")
    assert "channels, num_convs, norm" in msg and "\n" not in msg


def test_from_yaml_negative_depth(tmp_path):
    p = _write(tmp_path, _canonical().replace("depth: 5", "depth: -5"))
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "depth: -5" in t)
    with pytest.raises(UserError) as err:
        DetectorSpec.from_yaml(p)
    assert str(err.value) == f"{p}:{line}: backbone: stage 2 depth must be >= 1, got -5"


def test_from_yaml_width_not_divisible(tmp_path):
    p = _write(tmp_path, _canonical().replace("width: 80", "width: 20"))
    with pytest.raises(UserError, match="stage 4 width 20 is not divisible by 8"):
        DetectorSpec.from_yaml(p)


@pytest.mark.parametrize("text, message", [
    ("", "empty spec"),
    ("# only a comment\n", "empty spec"),
    ("name: [unclosed\n", "invalid YAML"),
    ("- a\n- b\n", "the spec must be a mapping"),
    ("name: x\n", "missing key 'backbone'"),
])
def test_from_yaml_bad_files(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as err:
        DetectorSpec.from_yaml(_write(tmp_path, text))
    assert str(tmp_path) in str(err.value)


def test_from_yaml_wrong_types(tmp_path):
    p = _write(tmp_path, _canonical().replace("channels: 64", "channels: sixty-four"))
    with pytest.raises(UserError, match="head channels must be an integer, got 'sixty-four'"):
        DetectorSpec.from_yaml(p)
    p = _write(tmp_path, _canonical().replace("scales: [1.0, 2.0]", "scales: [1.0, big]"))
    with pytest.raises(UserError, match=r"anchors.scales\[1\] must be a number"):
        DetectorSpec.from_yaml(p)


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(UserError, match="spec file not found: .*nope.yaml"):
        DetectorSpec.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="spec file not found"):
        DetectorSpec.from_yaml(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="spec file not found: .*nope$"):
        DetectorSpec.from_yaml(str(tmp_path / "nope"))
    # an existing file without a YAML suffix is still read as a file
    other = tmp_path / "spec.txt"
    other.write_text((REPO / "experiments/models/scrfd_2.5g.yaml").read_text())
    assert DetectorSpec.from_yaml(str(other)).name == "scrfd_2.5g"


def test_construct_and_replace_is_cheap():
    import time

    s = _spec()
    t = time.perf_counter()
    for w in range(1000):
        dataclasses.replace(s, head=dataclasses.replace(s.head, channels=16 * (1 + w % 16)))
    # thousands per second even on a loaded machine (generous bound, not a benchmark)
    assert time.perf_counter() - t < 2.0
