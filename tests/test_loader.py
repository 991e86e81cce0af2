"""Dataset samples, collate and the reproducible training loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detectors.data import synthetic
from detectors.batches import SeededBatches
from detectors.config import recipe_from_dict
from detectors.data.device_transforms import device_images
from detectors.data.loader import WiderFaceDataset, collate
from detectors.data.transforms import build_test_transform, build_train_transform
from detectors.data.widerface import load_split


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("loader") / "root", num_train=8, num_val=2,
                              image_size=256, seed=5, progress=False)


def _check_batch(batch: dict, size: int, n: int) -> None:
    assert batch["image"].shape == (n, 3, size, size) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    for key, dtype, tail in (("boxes", torch.float32, (4,)), ("ignore", torch.bool, ()),
                             ("keypoints", torch.float32, (5, 2)), ("keypoints_valid", torch.bool, ())):
        assert len(batch[key]) == n
        for t, boxes in zip(batch[key], batch["boxes"]):
            assert t.dtype == dtype and t.shape == (len(boxes),) + tail
    assert all(isinstance(i, str) and i.count("/") == 1 and not i.endswith(".jpg") for i in batch["image_id"])


def test_collate_shapes_and_dtypes_on_mini_and_synthetic(widerface_mini, syn_root):
    for root in (widerface_mini, syn_root):
        ds = WiderFaceDataset(root, "train", build_train_transform(320), landmarks="auto")
        batch = collate([ds[(i, i)] for i in range(3)])
        _check_batch(batch, 320, 3)
    test = WiderFaceDataset(widerface_mini, "val", build_test_transform(640))
    batch = collate([test[0], test[1]])
    assert batch["image"].shape == (2, 3, 640, 640) and len(batch["scale"]) == 2


def test_invalid_and_zero_size_faces_become_ignore_regions(widerface_mini, syn_root, tmp_path):
    ds = WiderFaceDataset(widerface_mini, "train", None)
    ignored = sum(int(ds[i]["ignore"].sum()) for i in range(len(ds)) if ds.records[i].invalid.any())
    assert ignored == 120  # the README's invalid-face count, all of them ignore regions
    # a zero-width box (as in the official files) loads as an ignore region, not a positive
    text = (syn_root / "wider_face_split" / "wider_face_train_bbx_gt.txt").read_text().splitlines()
    count = int(text[1])
    j = next(j for j in range(count) if text[2 + j].split()[7] == "0")  # first valid face of image 0
    x, y, w, h, *labels = text[2 + j].split()
    text[2 + j] = " ".join([x, y, "0", h] + labels) + " "
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in ("WIDER_train", "retinaface_gt"):
        (copy / p).symlink_to(syn_root / p)
    (copy / "wider_face_split").mkdir()
    (copy / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text("\n".join(text) + "\n")
    sample = WiderFaceDataset(copy, "train", None)[0]
    assert sample["ignore"][j] and sample["boxes"][j, 2] == sample["boxes"][j, 0]
    assert not WiderFaceDataset(syn_root, "train", None)[0]["ignore"][j]


def test_landmarks_come_through_from_label_txt(syn_root):
    raw = WiderFaceDataset(syn_root, "train", None, landmarks="auto")
    split = load_split(syn_root, "train", landmarks="auto")
    assert split.faces_with_keypoints > 0
    k = next(i for i, r in enumerate(split.records) if r.keypoints_valid.any())
    s = raw[k]
    np.testing.assert_allclose(s["keypoints"][s["keypoints_valid"]], split.records[k].keypoints[split.records[k].keypoints_valid])
    assert not WiderFaceDataset(syn_root, "train", None)[k]["keypoints_valid"].any()


def _batches(root, n: int, start: int = 0, **recipe) -> list[dict]:
    """n batches of the trainer's pipeline from iteration `start`."""
    loader = SeededBatches(root, recipe_from_dict(recipe))
    it = loader.iterate(start)
    out = [next(it) for _ in range(n)]
    loader.close()
    return out


def test_loader_reproducible_across_worker_counts_and_resume(syn_root):
    kw = dict(batch_size=3, train_size=128, seed=11)
    serial = _batches(syn_root, 4, workers=0, **kw)  # crosses an epoch (8 images)
    parallel = _batches(syn_root, 4, workers=2, **kw)
    for a, b in zip(serial, parallel):
        assert a["image_id"] == b["image_id"]
        assert torch.equal(a["image"], b["image"])
        assert all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"]))
    resumed = _batches(syn_root, 2, start=2, workers=0, **kw)
    assert torch.equal(resumed[0]["image"], serial[2]["image"]) and resumed[1]["image_id"] == serial[3]["image_id"]
    # epoch 1 is a permutation of all images: positions 0..7 cover the 8 images once
    ids = [i for b in serial for i in b["image_id"]]
    assert len(set(ids[:8])) == 8
    other = _batches(syn_root, 1, workers=0, batch_size=3, train_size=128, seed=12)
    assert not torch.equal(other[0]["image"], serial[0]["image"])
    # the loader hands over uint8; the trainer's device step gives the float contract
    assert serial[0]["image"].dtype == torch.uint8
    _check_batch({**serial[0], "image": device_images(serial[0], "cpu")}, 128, 3)
