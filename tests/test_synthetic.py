"""The embedded synthetic dataset: deterministic, official layout, consistent labels."""

from __future__ import annotations

import filecmp
import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from detectors.data import synthetic
from detectors.errors import UserError

SMALL = dict(num_train=6, num_val=4, image_size=320)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "root", seed=3, progress=False, **SMALL)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _parse_bbx(path: Path) -> dict[str, np.ndarray]:
    """Independent minimal reader of the official text format: path -> (K, 10) ints."""
    lines = path.read_text().splitlines()
    out, i = {}, 0
    while i < len(lines):
        name, n = lines[i], int(lines[i + 1])
        rows = [list(map(int, line.split())) for line in lines[i + 2:i + 2 + max(n, 1)]]
        out[name] = np.array(rows[:n], dtype=int).reshape(-1, 10)
        i += 2 + max(n, 1)
    return out


def test_same_seed_gives_identical_bytes_and_other_seed_differs(root, tmp_path):
    again = synthetic.generate(tmp_path / "again", seed=3, progress=False, **SMALL)
    assert _files(root) == _files(again)
    assert len(_files(root)) == 10 + 4 + 4 + 1 + 1  # images, txt+mat x2, 4 eval mats, label.txt, marker
    for rel in _files(root):
        assert filecmp.cmp(root / rel, again / rel, shallow=False), rel
    other = synthetic.generate(tmp_path / "other", seed=4, progress=False, **SMALL)
    jpgs = [r for r in _files(root) if r.suffix == ".jpg"]
    assert all(not filecmp.cmp(root / r, other / r, shallow=False) for r in jpgs)


def test_official_layout_and_mat_nesting(root):
    assert (root / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file()
    gt = root / "eval_tools" / "ground_truth"
    full = scipy.io.loadmat(gt / "wider_face_val.mat")
    text = _parse_bbx(root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    assert full["event_list"].shape == (len(synthetic.EVENTS), 1)
    seen = 0
    for e in range(len(synthetic.EVENTS)):
        event = str(full["event_list"][e, 0][0])
        files, boxes = full["file_list"][e, 0], full["face_bbx_list"][e, 0]
        for j in range(files.shape[0]):
            name = f"{event}/{files[j, 0][0]}.jpg"
            assert (root / "WIDER_val" / "images" / name).is_file()
            np.testing.assert_array_equal(boxes[j, 0], text[name][:, :4])
            invalid = full["invalid_label_list"][e, 0][j, 0][:, 0]
            np.testing.assert_array_equal(invalid, text[name][:, 7])
            seen += 1
    assert seen == SMALL["num_val"] == len(text)


def test_easy_medium_hard_are_nested_and_follow_documented_rules(root):
    gt = root / "eval_tools" / "ground_truth"
    sets = {s: scipy.io.loadmat(gt / f"wider_{s}_val.mat") for s in ("easy", "medium", "hard")}
    text = _parse_bbx(root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    scale = SMALL["image_size"] / 640
    counts = dict.fromkeys(sets, 0)
    for e in range(len(synthetic.EVENTS)):
        event = str(sets["hard"]["event_list"][e, 0][0])
        for j in range(sets["hard"]["file_list"][e, 0].shape[0]):
            name = f"{event}/{sets['hard']['file_list'][e, 0][j, 0][0]}.jpg"
            keep = {s: set(sets[s]["gt_list"][e, 0][j, 0].astype(int).ravel()) for s in sets}
            assert keep["easy"] <= keep["medium"] <= keep["hard"]
            rows = text[name]
            # hard: every valid face of height >= 8 px (scaled), recomputed from the text labels
            expect_hard = {i + 1 for i, r in enumerate(rows) if r[7] == 0 and r[3] >= 8 * scale}
            assert keep["hard"] == expect_hard
            for s in sets:
                counts[s] += len(keep[s])
    assert 0 < counts["easy"] < counts["medium"] < counts["hard"]
    info = json.loads((root / synthetic.MARKER).read_text())
    assert {s: info["val"][s] for s in sets} == counts


def test_faces_are_mostly_small_and_keypoints_sit_on_drawn_features(tmp_path):
    r = synthetic.generate(tmp_path / "kp", num_train=24, num_val=1, image_size=640, seed=0, progress=False)
    text = _parse_bbx(r / "wider_face_split" / "wider_face_train_bbx_gt.txt")
    heights = np.concatenate([v[:, 3] for v in text.values()])
    assert (heights < 32).mean() > 0.6 and heights.max() >= 60  # WIDER-like: many tiny, some large
    darker, total = 0, 0
    for line in (r / "retinaface_gt" / "train" / "label.txt").read_text().splitlines():
        if line.startswith("#"):
            name, k = line[2:], 0
            img = np.asarray(Image.open(r / "WIDER_train" / "images" / name).convert("L"), float)
            continue
        v = np.array(line.split(), float)
        labels, k = text[name][k], k + 1
        np.testing.assert_array_equal(v[:4], labels[:4])  # same faces, same order as the txt
        kps, flags = v[4:19].reshape(5, 3)[:, :2], v[4:19].reshape(5, 3)[:, 2]
        if v[3] < 40 or kps[0, 0] < 0 or flags.any() or labels[4] > 0 or labels[6]:  # big, sharp, lit, visible
            continue
        x, y, w, h = v[:4]
        assert np.all((kps >= [x - 1, y - 1]) & (kps <= [x + w + 1, y + h + 1]))
        # eye pupils are dark; halfway between an eye and its mouth corner is skin
        cheek = (kps[0] + kps[3]) / 2
        eye = img[int(kps[0, 1]), int(kps[0, 0])]
        skin = img[int(cheek[1]), int(cheek[0])]
        darker += eye < skin - 20
        total += 1
    assert total >= 10 and darker / total > 0.8


def test_face_scale_keeps_face_pixel_sizes_on_a_smaller_canvas(tmp_path):
    """320-px images with face_scale 2 (the quick search's proxy set) hold faces of the 640-px
    set's pixel sizes, and the hard threshold stays at 8 px (8 x 320/640 x 2)."""
    kw = dict(num_train=40, num_val=12, seed=5, progress=False)
    big = synthetic.generate(tmp_path / "big", image_size=640, **kw)
    proxy = synthetic.generate(tmp_path / "proxy", image_size=320, face_scale=2, **kw)
    default_half = synthetic.generate(tmp_path / "half", image_size=320, **kw)

    def heights(root: Path) -> np.ndarray:
        text = _parse_bbx(root / "wider_face_split" / "wider_face_train_bbx_gt.txt")
        return np.concatenate([v[:, 3] for v in text.values()])

    widths = {Image.open(p).size[0] for p in (proxy / "WIDER_train" / "images").rglob("*.jpg")}
    assert widths == {320}
    h_big, h_proxy, h_half = heights(big), heights(proxy), heights(default_half)
    # same scene draws, faces sized alike: medians within 15 %, half-size set ~2x smaller
    assert abs(np.median(h_proxy) / np.median(h_big) - 1) < 0.15
    assert 1.7 < np.median(h_big) / np.median(h_half) < 2.3
    info = json.loads((proxy / synthetic.MARKER).read_text())
    assert info["face_scale"] == 2 and "face_scale" not in json.loads((big / synthetic.MARKER).read_text())
    gt = scipy.io.loadmat(proxy / "eval_tools" / "ground_truth" / "wider_hard_val.mat")
    text = _parse_bbx(proxy / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    kept = []
    for e in range(len(synthetic.EVENTS)):
        event = str(gt["event_list"][e, 0][0])
        for j in range(gt["file_list"][e, 0].shape[0]):
            rows = text[f"{event}/{gt['file_list'][e, 0][j, 0][0]}.jpg"]
            idx = gt["gt_list"][e, 0][j, 0].astype(int).ravel() - 1
            kept.append(rows[idx, 3])
            assert {i for i, r in enumerate(rows) if r[7] == 0 and r[3] >= 8} == set(idx)
    assert min(np.concatenate(kept)) >= 8
    with pytest.raises(UserError, match="face scale"):
        synthetic.generate(tmp_path / "bad", num_train=2, face_scale=0, progress=False)


def test_generate_refuses_existing_dir_and_bad_sizes(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        synthetic.generate(tmp_path / "full", progress=False, **SMALL)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(UserError, match="image size"):
        synthetic.generate(tmp_path / "bad", num_train=2, image_size=10, progress=False)
    assert not (tmp_path / "bad").exists() and [p.name for p in tmp_path.iterdir()] == ["full"]
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write"):  # parent is a file: no traceback
        synthetic.generate(tmp_path / "file" / "root", progress=False, **SMALL)


def _default_root_worker(cache: str) -> str:
    import os

    os.environ["FACENAS_CACHE"] = cache
    return str(synthetic.default_root(num_train=3, num_val=2, image_size=256, seed=1, progress=False))


def test_default_root_concurrent_callers_share_one_complete_root(tmp_path):
    with mp.get_context("spawn").Pool(2) as pool:
        roots = pool.map(_default_root_worker, [str(tmp_path)] * 2)
    assert roots[0] == roots[1]
    root = Path(roots[0])
    assert root.parent == tmp_path and f"v{synthetic.GENERATOR_VERSION}-n3-v2-s256-seed1" in root.name
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # the loser's copy is gone
    assert (root / synthetic.MARKER).is_file()
    ref = synthetic.generate(tmp_path.parent / "ref_default", num_train=3, num_val=2, image_size=256,
                             seed=1, progress=False)
    assert all(filecmp.cmp(root / r, ref / r, shallow=False) for r in _files(ref))


def test_cli_synth_writes_root_and_reports_user_errors(tmp_path):
    cmd = [sys.executable, "-m", "nas.cli", "data", "synth", str(tmp_path / "d"), "--images", "3",
           "--val-images", "2", "--image-size", "256", "--seed", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train 3 images" in done.stdout and (tmp_path / "d" / synthetic.MARKER).is_file()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_root_loads_with_the_official_layout_readers(root):
    from detectors.data.widerface import load_eval_ground_truth, load_split

    info = json.loads((root / synthetic.MARKER).read_text())
    for split in ("train", "val"):
        s = load_split(root, split, landmarks="auto")
        assert (s.images, s.faces, s.invalid_faces) == tuple(info[split][k] for k in ("images", "faces", "invalid"))
        assert all(r.path.is_file() for r in s.records)
    train = load_split(root, "train", landmarks="auto")
    assert train.faces_with_keypoints > 0 and train.unmatched_landmark_faces == 0
    gt = load_eval_ground_truth(root)
    assert {k: gt.faces(k) for k in ("easy", "medium", "hard")} == {k: info["val"][k] for k in ("easy", "medium", "hard")}


def test_trivial_detectors_score_low_and_ground_truth_scores_one(tmp_path):
    """A real detection task: dense multi-scale grid boxes or random boxes (random scores) get
    near-zero AP, skin colour alone stays low (measured ~0.02/0.05/0.13 on 40 images), while
    the ground truth itself gets AP 1 through the official protocol."""
    from detectors.data.widerface import load_eval_ground_truth
    from detectors.evaluate import evaluate

    r = synthetic.generate(tmp_path / "task", num_train=1, num_val=12, image_size=640, seed=9, progress=False)
    gt = load_eval_ground_truth(r)
    rng = np.random.default_rng(0)

    def grid(image_id: str) -> np.ndarray:
        w, h = Image.open(r / "WIDER_val" / "images" / f"{image_id}.jpg").size
        b = np.array([[x, y, s, 1.25 * s] for s in (8, 16, 32, 64, 128)
                      for y in range(0, h - s + 1, s) for x in range(0, w - s + 1, s)], float)
        return np.c_[b, rng.random(len(b))]

    def random_boxes(image_id: str) -> np.ndarray:
        w, h = Image.open(r / "WIDER_val" / "images" / f"{image_id}.jpg").size
        s = np.exp(rng.uniform(np.log(6), np.log(200), 1000))
        return np.c_[rng.uniform(0, w - s), rng.uniform(0, h - s), s, 1.25 * s, rng.random(1000)]

    def truth(image_id: str) -> np.ndarray:
        return np.c_[gt.boxes[image_id], rng.uniform(0.5, 1.0, len(gt.boxes[image_id]))]

    def skin_blobs(image_id: str) -> np.ndarray:
        """Colour-only detector: boxes of connected skin-chroma regions (faces, necks, hands and
        skin-toned distractors alike), scored by fill and face-like aspect."""
        from scipy import ndimage

        img = np.asarray(Image.open(r / "WIDER_val" / "images" / f"{image_id}.jpg"), np.float32)
        chroma = img / (img.sum(-1, keepdims=True) + 1)
        tones = synthetic._SKIN / synthetic._SKIN.sum(-1, keepdims=True)
        mask = np.min(np.linalg.norm(chroma[:, :, None] - tones[None, None], axis=-1), -1) < 0.04
        out = []
        for ys, xs in ndimage.find_objects(ndimage.label(mask)[0]):
            h, w = ys.stop - ys.start, xs.stop - xs.start
            if min(h, w) >= 4:
                out.append([xs.start, ys.start, w, h, mask[ys, xs].mean() * np.exp(-abs(np.log(h / w / 1.25)))])
        return np.array(out, float).reshape(-1, 5)

    for baseline, limit in ((grid, 0.02), (random_boxes, 0.02), (skin_blobs, 0.3)):
        ap = evaluate({i: baseline(i) for i in gt.image_ids}, gt, progress=False).as_dict()
        assert max(ap.values()) < limit, (baseline.__name__, ap)
    ap = evaluate({i: truth(i) for i in gt.image_ids}, gt, progress=False).as_dict()
    assert all(v > 0.999 for v in ap.values()), ap
