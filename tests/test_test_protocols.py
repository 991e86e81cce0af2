"""AP at precision >= 98% (hand-computed curves) and the test protocols of recipe.test: flip and
multi-scale passes mapped back and merged (hand-made detections), config keys, CLI bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detectors.config import Recipe, TestConfig as _TestConfig, apply_budget, load_config, recipe_from_dict
from detectors.data.widerface import SETTINGS, EvalGroundTruth
from detectors.errors import UserError
from detectors.evaluate import ap_at_precision, evaluate, voc_ap
from detectors.model import Detections
from detectors.postprocess import box_vote, merge_detections, mirror_boxes
from detectors.test import predict_split

# ---- AP at precision >= 98% ------------------------------------------------------------------


@pytest.mark.parametrize("recall, precision, expected", [
    # cut after the third point (0.98 counts): envelope 1, .99, .98 over recall steps of .1
    ([.1, .2, .3, .4], [1.0, .99, .98, .90], .1 * 1 + .1 * .99 + .1 * .98),
    # a dip below 98% before the cut is lifted by the envelope; the cut is the last point >= 98%
    ([.1, .2, .3, .4], [.95, 1.0, .985, .97], .1 + .1 + .1 * .985),
    # no proposals at the highest thresholds (NaN precision) are skipped
    ([0.0, 0.0, .5, .6], [np.nan, np.nan, 1.0, .5], .5),
    ([.5, .6], [.9, .8], 0.0),  # never precise enough
])
def test_ap_at_precision_hand_curves(recall, precision, expected):
    r, p = np.array(recall), np.array(precision)
    assert ap_at_precision(r, p) == pytest.approx(expected, abs=1e-15)
    assert ap_at_precision(r, p) <= voc_ap(r, p) + 1e-15


def test_ap_at_p98_of_a_hand_made_ranking():
    """100 faces; ranked predictions: 10 hits, 1 miss, 70 hits, 4 misses, 20 hits. Precision
    falls below 98% after the first miss (10/11), is back at 80/81 = 0.988 after hit 80, and
    never again reaches 98% (t/(t + 5) < 0.98 for t <= 100)."""
    grid = [[30 * (i % 10), 30 * (i // 10), 20, 20] for i in range(100)]  # x y w h, apart
    gt = EvalGroundTruth(None, ["e/1"], {"e/1": np.array(grid, float)},
                         {s: {"e/1": np.arange(1, 101)} for s in SETTINGS})
    miss = lambda k: [1000 + 30 * k, 1000, 20, 20]  # noqa: E731
    ranked = grid[:10] + [miss(0)] + grid[10:80] + [miss(k) for k in range(1, 5)] + grid[80:]
    scores = 1.0 - np.arange(len(ranked)) * 0.009  # 105 predictions, one threshold bin each
    result = evaluate({"e/1": np.c_[np.array(ranked, float), scores]}, gt, progress=False)
    p98 = 0.1 * 1.0 + 0.7 * 80 / 81  # envelope: 1 up to recall .1, then 80/81 up to the cut at .8
    ap = p98 + 0.2 * 100 / 105  # the rest of the curve: envelope 100/105 from .8 to 1
    for s in SETTINGS:
        assert result.ap[s] == pytest.approx(ap, abs=1e-12)
        assert result.ap_at_p98[s] == pytest.approx(p98, abs=1e-12)
    assert result.metrics()["ap_at_p98_hard"] == result.ap_at_p98["hard"]


# ---- merges ------------------------------------------------------------------------------------


def test_mirror_boxes_maps_pixel_edges():
    boxes = torch.tensor([[0.0, 1, 10, 5], [70, 0, 90, 3]])
    assert mirror_boxes(boxes, 100).tolist() == [[90, 1, 100, 5], [10, 0, 30, 3]]
    assert torch.equal(mirror_boxes(mirror_boxes(boxes, 100), 100), boxes)


def test_merge_by_nms_and_by_vote_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.6, 0.9, 0.5])  # the first two overlap 90/110 = 0.82
    b, s = merge_detections(boxes, scores, "nms", 0.45)
    assert b.tolist() == [[1, 0, 11, 10], [50, 50, 60, 60]] and s.tolist() == pytest.approx([0.9, 0.5])
    b, s = merge_detections(boxes, scores, "vote", 0.45)
    voted = [(0.9 * 1 + 0.6 * 0) / 1.5, 0, (0.9 * 11 + 0.6 * 10) / 1.5, 10]
    assert b.tolist() == [pytest.approx(voted), [50, 50, 60, 60]] and s.tolist() == pytest.approx([0.9, 0.5])
    b, s = merge_detections(boxes, scores, "vote", 0.45, max_det=1)
    assert len(b) == 1 and s.tolist() == pytest.approx([0.9])


def test_box_vote_groups_around_the_best_box_left():
    # B overlaps A (IoU 1/3 >= 0.3); C overlaps B (1/3) but not A (0): groups {A, B}, {C}
    a, b, c = [0.0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]
    boxes, scores = box_vote(torch.tensor([c, b, a]), torch.tensor([0.5, 0.7, 0.8]), 0.3)
    ab = [(0.8 * a[i] + 0.7 * b[i]) / 1.5 for i in range(4)]
    assert boxes.tolist() == [pytest.approx(ab), c] and scores.tolist() == pytest.approx([0.8, 0.5])


# ---- the passes of predict_split ------------------------------------------------------------


def _root(tmp_path: Path, image: np.ndarray) -> Path:
    """A one-image val split in the official layout (PNG: no compression loss)."""
    (tmp_path / "WIDER_val" / "images" / "0--e").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "WIDER_val" / "images" / "0--e" / "a.png")
    (tmp_path / "wider_face_split").mkdir()
    (tmp_path / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text(
        "0--e/a.png\n1\n10 5 20 20 0 0 0 0 0 0\n")
    return tmp_path


class _BrightBox(torch.nn.Module):
    """Detects the bounding box of the bright pixels of its input (mirror-equivariant by
    construction), so a flipped pass mapped back must give the unflipped box."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.inputs: list[tuple] = []

    def predict(self, images, score_thresh, iou_thresh, max_det):
        self.inputs.append(tuple(images.shape))
        out = []
        for x in images:
            # brighter than mid-grey (padding is exactly 0): at 2x the bilinear edge pixels are
            # 191.25 inside and 63.75 outside, so the box is the upscaled square exactly
            ys, xs = torch.nonzero(x[0] > 0, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append(Detections(box, torch.tensor([0.9]), None))
        return out


@pytest.fixture
def off_centre(tmp_path) -> Path:
    image = np.zeros((60, 100, 3), np.uint8)  # a bright square at x 10-30, y 5-25: not symmetric
    image[5:25, 10:30] = 255
    return _root(tmp_path, image)


@pytest.mark.parametrize("sizes, resize, flip, shapes", [
    ((100,), "long", False, [(1, 3, 100, 100)]),
    ((100,), "long", True, [(1, 3, 100, 100)] * 2),
    ((100, 200), "long", True, [(1, 3, 100, 100)] * 2 + [(1, 3, 200, 200)] * 2),
    ((60, 120), "short", True, [(1, 3, 64, 128)] * 2 + [(1, 3, 128, 224)] * 2),  # padded to 32
])
def test_flipped_and_rescaled_passes_map_back_to_the_same_box(off_centre, sizes, resize, flip, shapes):
    model = _BrightBox()
    for merge in ("nms", "vote"):
        model.inputs.clear()
        preds = predict_split(model, off_centre, "val", sizes, resize=resize, flip=flip, merge=merge,
                              progress=False)
        assert model.inputs == shapes
        assert preds["0--e/a"].tolist() == [pytest.approx([10, 5, 20, 20, 0.9])]


def test_symmetric_image_flip_pass_equals_unflipped(tmp_path):
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:30, 30:50] = 255  # centred: the mirrored image is the image
    root = _root(tmp_path, image)
    plain = predict_split(_BrightBox(), root, "val", 80, progress=False)["0--e/a"]
    flipped = predict_split(_BrightBox(), root, "val", 80, flip=True, progress=False)["0--e/a"]
    assert plain.tolist() == flipped.tolist() == [[30, 10, 20, 20, pytest.approx(0.9)]]


class _PerScale(torch.nn.Module):
    """Hand-made detections that depend on the input size (network pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def predict(self, images, score_thresh, iou_thresh, max_det):
        if images.shape[-1] == 100:  # scale 1: the face, and a false box
            return [Detections(torch.tensor([[10.0, 5, 30, 25], [70, 40, 90, 58]]), torch.tensor([0.8, 0.3]), None)]
        return [Detections(torch.tensor([[22.0, 10, 60, 50]]), torch.tensor([0.9]), None)]  # scale 2


def test_multi_scale_merge_of_hand_made_detections(off_centre):
    nms = predict_split(_PerScale(), off_centre, "val", (100, 200), iou_thresh=0.45, progress=False)
    # scale 2's box is [11, 5, 30, 25] in the image: IoU .95 with scale 1's, which it suppresses
    assert nms["0--e/a"].tolist() == [pytest.approx([11, 5, 19, 20, 0.9]), pytest.approx([70, 40, 20, 18, 0.3])]
    vote = predict_split(_PerScale(), off_centre, "val", (100, 200), iou_thresh=0.45, merge="vote",
                         progress=False)
    x1 = (0.9 * 11 + 0.8 * 10) / 1.7
    assert vote["0--e/a"].tolist() == [pytest.approx([x1, 5, 30 - x1, 20, 0.9]),
                                       pytest.approx([70, 40, 20, 18, 0.3])]
    capped = predict_split(_PerScale(), off_centre, "val", (100, 200), max_det=1, progress=False)
    assert len(capped["0--e/a"]) == 1


def test_pre_nms_top_k_caps_a_real_detector_before_nms(off_centre, one_torch_thread):
    from detectors.model import build
    from detectors.spec import DetectorSpec

    spec = DetectorSpec.from_dict({"name": "tiny", "backbone": {"stem_width": 8, "stem": "deep", "stages": [
        {"block": "basic", "depth": 1, "width": w} for w in (8, 16, 16, 16)]},
        "neck": {"type": "pafpn", "channels": 8}, "head": {"channels": 8, "num_convs": 1, "norm": "gn",
                                                           "gn_groups": 4}})
    torch.manual_seed(0)
    model = build(spec)
    kw = dict(score_thresh=0.0, iou_thresh=1.0, progress=False)  # NMS keeps all but exact duplicates
    many = predict_split(model, off_centre, "val", 64, **kw)["0--e/a"]
    few = predict_split(model, off_centre, "val", 64, pre_nms_top_k=7, **kw)["0--e/a"]
    assert len(many) > 7 and len(few) == 7
    assert few[:, 4].tolist() == pytest.approx(np.sort(many[:, 4])[::-1][:7].tolist())


# ---- config keys -------------------------------------------------------------------------------


def test_test_keys_round_trip_and_default_recipes_stay_as_written(tmp_path, repo_root):
    assert set(Recipe().to_dict()["test"]) == {"size", "score_thresh", "iou_thresh", "max_det"}
    test = {"size": 640, "score_thresh": 0.05, "iou_thresh": 0.3, "max_det": 750, "sizes": [480, 640, 960],
            "resize": "short", "flip": True, "pre_nms_top_k": 5000, "merge": "vote"}
    recipe = recipe_from_dict({"test": test})
    assert recipe.test.scales == (480, 640, 960) and not recipe.test.single_pass
    assert recipe.to_dict()["test"] == test
    config = load_config(repo_root / "experiments" / "scrfd_2.5g.yaml")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"spec": config.spec.to_dict(), "recipe": recipe.to_dict()}))
    assert load_config(path).recipe == recipe
    # the CPU budgets test one pass; the protocol's caps stay
    smoke = apply_budget(load_config(path), "smoke").recipe.test
    assert (smoke.scales, smoke.resize, smoke.flip, smoke.merge, smoke.pre_nms_top_k) == ((256,), "long", False, "nms", 5000)


def test_papers_protocols_in_their_configs(repo_root):
    fanet = load_config(repo_root / "experiments" / "fanet.yaml").recipe.test
    assert (fanet.scales, fanet.resize, fanet.merge) == ((640, 768), "short", "vote")
    asfd = load_config(repo_root / "experiments" / "asfd.yaml")
    t = asfd.recipe.test
    assert (t.pre_nms_top_k, t.max_det, t.iou_thresh, t.flip, t.merge) == (5000, 750, 0.3, True, "vote")
    assert len(t.scales) > 1
    # the family's retraining recipe is the search preset's, test protocol aside
    preset = yaml.safe_load((repo_root / "experiments" / "search" / "asfd.yaml").read_text())["recipe"]
    ours, theirs = asfd.recipe.to_dict(), recipe_from_dict(preset).to_dict()
    assert {k: v for k, v in ours.items() if k != "test"} == {k: v for k, v in theirs.items() if k != "test"}
    # the README's quick commands stay one pass
    for name in ("scrfd_0.5g", "scrfd_2.5g", "scrfd_2.5g_bnkps"):
        assert load_config(repo_root / "experiments" / f"{name}.yaml").recipe.test.single_pass


# ---- bad inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("test, words", [
    ({"sizes": []}, "recipe.test.sizes is empty"),
    ({"sizes": [640, 0]}, "recipe.test.sizes must be positive"),
    ({"resize": "diagonal"}, "recipe.test.resize must be one of long, short"),
    ({"merge": "mean"}, "recipe.test.merge"),
    ({"pre_nms_top_k": 0}, "recipe.test.pre_nms_top_k"),
])
def test_bad_test_keys_name_file_and_key(tmp_path, repo_root, test, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"spec": str(repo_root / "experiments" / "models" / "scrfd_0.5g.yaml"),
                                    "recipe": {"test": test}}))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("flags, words", [
    (["--sizes", "640", "0"], "--sizes: recipe.test.sizes must be positive"),
    (["--sizes", "-5"], "--sizes"),
    (["--sizes"], "--sizes"),
    (["--resize", "diagonal"], "--resize"),
    (["--max-det", "0"], "--max-det"),
])
def test_bad_protocol_flags_are_one_line_exit_2(repo_root, tmp_path, capsys, flags, words):
    from nas.cli import main

    args = ["test", str(repo_root / "experiments" / "scrfd_0.5g.yaml"), "--weights", str(tmp_path / "none.pt")]
    try:
        status = main(args + flags)
    except SystemExit as exit_:  # argparse's own usage errors (nas.cli makes them one line)
        status = exit_.code
    assert status == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facenas test: error:") and words in lines[0], captured.err
    assert captured.out == ""


def test_set_reaches_keys_left_out_at_their_default(repo_root):
    from detectors.overrides import override_config

    config = override_config(load_config(repo_root / "experiments" / "scrfd_0.5g.yaml"),
                             ["recipe.test.sizes=[320, 640]", "recipe.test.flip=true"])
    assert config.recipe.test.scales == (320, 640) and config.recipe.test.flip


def test_test_config_defaults_are_scrfd_single_pass():
    t = _TestConfig()
    assert (t.scales, t.resize, t.flip, t.pre_nms_top_k, t.max_det, t.single_pass) == ((640,), "long", False, None,
                                                                                       None, True)
