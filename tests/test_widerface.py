"""WIDER FACE official-layout parsing: exact counts on real data, and every bad input named."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors.data.widerface import (
    SETTINGS,
    check_images,
    load_eval_ground_truth,
    load_retinaface_labels,
    load_split,
    read_image,
    resolve_gt_dir,
)
from detectors.errors import UserError

GOOD = """\
ev/a.jpg
2
10 20 30 40 1 0 0 0 2 0 
5 5 0 7 0 0 0 1 0 0 
ev/empty.jpg
0
0 0 0 0 0 0 0 0 0 0 
other/b.jpg
1
1 2 3 4 0 1 0 0 0 1
"""


def _root(tmp_path: Path, text: str, split: str = "train", images: bool = True) -> Path:
    """A tiny dataset root with the given annotation text and (optionally) real JPEGs."""
    (tmp_path / "wider_face_split").mkdir(parents=True, exist_ok=True)
    (tmp_path / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text(text)
    if images:
        for name in re.findall(r"^(\S+\.jpg)$", text, flags=re.M):
            path = tmp_path / f"WIDER_{split}" / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (120, 30, 200)).save(path, quality=90)
    return tmp_path


def test_parses_boxes_attributes_empty_and_zero_size(tmp_path):
    split = load_split(_root(tmp_path, GOOD))
    assert [r.image_id for r in split.records] == ["ev/a", "ev/empty", "other/b"]
    a, empty, b = split.records
    assert a.boxes.dtype == np.float32 and a.boxes.shape == (2, 4)
    np.testing.assert_array_equal(a.boxes, [[10, 20, 30, 40], [5, 5, 0, 7]])
    np.testing.assert_array_equal(a.attributes, [[1, 0, 0, 0, 2, 0], [0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(a.boxes_xyxy()[0], [10, 20, 40, 60])
    assert a.path == tmp_path.resolve() / "WIDER_train" / "images" / "ev" / "a.jpg"
    assert (a.line, empty.line, b.line) == (1, 5, 8)
    assert empty.boxes.shape == (0, 4) and empty.attributes.shape == (0, 6)
    assert a.keypoints is None and a.keypoints_valid is None
    assert split.summary() == {
        "images": 3, "faces": 3, "invalid_faces": 1, "zero_size_boxes": 1, "empty_images": 1,
        "faces_with_keypoints": 0, "unmatched_landmark_faces": 0,
    }
    check_images(split, progress=False)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("ev/a.jpg\n", 1, "face-count line is missing"),  # truncated after the path
        ("ev/a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n", 4, "after face 2 of 3"),  # truncated
        ("ev/a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\nev/b.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n",
         5, "declares 3 faces but only 2"),
        ("ev/a.jpg\n1\n1 2 x 4 0 0 0 0 0 0\n", 3, "non-numeric"),
        ("ev/a.jpg\n1\n1 2 nan 4 0 0 0 0 0 0\n", 3, "non-finite"),
        ("ev/a.jpg\ntwo\n", 2, "face count"),
        ("ev/a.jpg\n1\n1 2 3 4 0 0\n", 3, "10 numbers"),
        ("ev/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n", 4, "expected an image path"),
        ("ev/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0\nev/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n", 4, "listed twice"),
    ],
)
def test_malformed_annotation_names_file_and_line(tmp_path, text, line, words):
    root = _root(tmp_path, text, images=False)
    with pytest.raises(UserError) as err:
        load_split(root)
    message = str(err.value)
    assert "wider_face_train_bbx_gt.txt" in message and words in message
    assert f"bbx_gt.txt:{line}:" in message


def test_missing_and_corrupt_images_are_named(tmp_path):
    root = _root(tmp_path, GOOD)
    split = load_split(root)
    jpeg = root / "WIDER_train" / "images" / "other" / "b.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # cut short: header intact, scan truncated
    with pytest.raises(UserError, match=r"corrupt image .*b\.jpg \(listed at .*bbx_gt\.txt:8\)"):
        check_images(split, progress=False)
    with pytest.raises(UserError, match=r"corrupt image .*b\.jpg"):
        read_image(jpeg)
    jpeg.write_bytes(b"this is not an image")
    with pytest.raises(UserError, match=r"corrupt image .*b\.jpg"):
        check_images(split, progress=False)
    jpeg.unlink()
    with pytest.raises(UserError, match=r"image not found: .*other/b\.jpg \(listed at .*bbx_gt\.txt:8\)"):
        check_images(split, progress=False)


def test_not_a_root_and_bad_split(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_split(tmp_path / "nope")
    with pytest.raises(UserError, match="not a WIDER FACE root"):
        load_split(tmp_path)
    with pytest.raises(UserError, match="valid: train, val"):
        load_split(tmp_path, "test")


def test_retinaface_labels_match_official_boxes(tmp_path):
    root = _root(tmp_path, GOOD)
    lm = "1 2 0.0 3 4 0.0 5 6 0.0 7 8 0.0 9 10 0.0 0.9"
    absent = " ".join(["-1.0"] * 15) + " -1.0"
    # image a lists its faces in a different order; other/b has a box that is not official.
    (root / "label.txt").write_text(
        f"# ev/a.jpg\n5 5 0 7 {absent}\n10 20 30 40 {lm}\n# ev/empty.jpg\n# other/b.jpg\n9 9 9 9 {lm}\n"
    )
    labels = load_retinaface_labels(root / "label.txt")
    assert set(labels) == {"ev/a", "ev/empty", "other/b"}
    assert labels["ev/empty"][0].shape == (0, 4)
    split = load_split(root, landmarks=root / "label.txt")
    a, empty, b = split.records
    np.testing.assert_array_equal(a.keypoints[0], [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    np.testing.assert_array_equal(a.keypoints_valid, [True, False])
    assert (a.keypoints[1] == -1).all() and empty.keypoints.shape == (0, 5, 2)
    assert not b.keypoints_valid.any() and split.unmatched_landmark_faces == 1
    assert split.faces_with_keypoints == 1


def test_retinaface_label_errors_name_line(tmp_path):
    path = tmp_path / "label.txt"
    path.write_text("1 2 3 4\n")
    with pytest.raises(UserError, match=r"label\.txt:1: face line before"):
        load_retinaface_labels(path)
    path.write_text("# a/b.jpg\n1 2 3 4 5 6\n")
    with pytest.raises(UserError, match=r"label\.txt:2: expected 20 numbers"):
        load_retinaface_labels(path)


def test_widerface_mini_counts_match_readme(widerface_mini):
    train = load_split(widerface_mini, "train", landmarks="auto")
    assert train.summary() == {
        "images": 600, "faces": 7614, "invalid_faces": 120, "zero_size_boxes": 0, "empty_images": 1,
        "faces_with_keypoints": 4838, "unmatched_landmark_faces": 0,  # README landmark table
    }
    empty = [r.image_id for r in train.records if len(r.boxes) == 0]
    assert empty == ["0--Parade/0_Parade_Parade_0_452"]
    first = next(r for r in train.records if r.image_id == "0--Parade/0_Parade_Parade_0_904")
    np.testing.assert_allclose(first.keypoints[0, 0], [424.374, 257.551], atol=1e-3)
    val = load_split(widerface_mini, "val")
    assert (val.images, val.faces, val.invalid_faces, val.empty_images) == (250, 2228, 63, 0)
    assert len({r.image_id.split("/")[0] for r in val.records}) == 61
    check_images(val, progress=False)


def test_widerface_mini_eval_ground_truth(widerface_mini):
    gt = load_eval_ground_truth(widerface_mini)
    assert resolve_gt_dir(widerface_mini) == widerface_mini / "eval_tools" / "ground_truth"
    assert gt.gt_dir == resolve_gt_dir(gt.gt_dir)
    assert len(gt.image_ids) == 250 and sum(len(b) for b in gt.boxes.values()) == 2228
    assert [gt.faces(s) for s in SETTINGS] == [520, 968, 2006]
    # the .mat boxes are the text annotation's boxes
    val = {r.image_id: r.boxes for r in load_split(widerface_mini, "val").records}
    assert set(val) == set(gt.image_ids)
    assert all(np.array_equal(val[i], gt.boxes[i]) for i in gt.image_ids)
    hard = gt.keep["hard"]["0--Parade/0_Parade_marchingband_1_379"]
    assert hard.dtype == np.int64 and hard[:3].tolist() == [1, 2, 3]
    assert gt.integer_boxes  # int32 in the official files: the evaluator's arithmetic depends on it
    sub = gt.subset(gt.image_ids[10:2:-3])
    assert sub.image_ids == gt.image_ids[4:11:3] and sub.integer_boxes
    assert sub.faces("hard") == sum(len(gt.keep["hard"][i]) for i in sub.image_ids)
    with pytest.raises(UserError, match="not in the ground truth"):
        gt.subset(["nope/nope"])


def test_eval_ground_truth_errors(tmp_path, widerface_mini):
    with pytest.raises(UserError, match="wider_face_val.mat"):
        load_eval_ground_truth(tmp_path)
    shutil.copy(widerface_mini / "eval_tools" / "ground_truth" / "wider_face_val.mat", tmp_path)
    with pytest.raises(UserError, match=r"not found: .*wider_easy_val\.mat"):
        load_eval_ground_truth(tmp_path)
    (tmp_path / "wider_easy_val.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"wider_easy_val\.mat: not a readable MATLAB file"):
        load_eval_ground_truth(tmp_path)
