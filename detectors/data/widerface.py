"""WIDER FACE in its official layout: box annotations, RetinaFace landmarks, eval ground truth.

Layout under a dataset root::

    WIDER_{train,val}/images/<event>/<file>.jpg
    wider_face_split/wider_face_{train,val}_bbx_gt.txt
    retinaface_gt/<split>/label.txt                 (optional landmarks, RetinaFace format)
    eval_tools/ground_truth/wider_face_val.mat + wider_{easy,medium,hard}_val.mat

Boxes stay as in the files: (x, y, w, h) in pixels, x/y the top-left corner. Boxes with
w <= 0 or h <= 0 exist in the official files; they are kept, counted and flagged, never dropped.
Every malformed input raises `UserError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from detectors.errors import UserError

__all__ = [
    "ATTRIBUTE_NAMES",
    "SETTINGS",
    "ImageRecord",
    "WiderSplit",
    "EvalGroundTruth",
    "load_split",
    "parse_bbx_gt",
    "load_retinaface_labels",
    "check_images",
    "read_image",
    "load_eval_ground_truth",
    "resolve_gt_dir",
]

# Column order of the six integer labels after x y w h in *_bbx_gt.txt.
ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
SETTINGS = ("easy", "medium", "hard")
_INVALID = ATTRIBUTE_NAMES.index("invalid")
_SPLITS = ("train", "val")


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image and its faces.

    image_id: "event/file" without extension. path: absolute image path.
    boxes: float32 (K, 4) x, y, w, h as in the file. attributes: int64 (K, 6) in ATTRIBUTE_NAMES
    order. keypoints: float32 (K, 5, 2) (x, y) pixels, -1 where absent, or None when no landmark
    file was loaded. keypoints_valid: bool (K,) or None. line: 1-based line of the image's path
    in `source` (the annotation file), for error messages.
    """

    image_id: str
    path: Path
    boxes: np.ndarray
    attributes: np.ndarray
    keypoints: np.ndarray | None = None
    keypoints_valid: np.ndarray | None = None
    source: str = ""
    line: int = 0

    @property
    def invalid(self) -> np.ndarray:
        """bool (K,): faces the annotators flagged invalid."""
        return self.attributes[:, _INVALID].astype(bool)

    @property
    def zero_size(self) -> np.ndarray:
        """bool (K,): boxes with w <= 0 or h <= 0 (present in the official files)."""
        return (self.boxes[:, 2] <= 0) | (self.boxes[:, 3] <= 0)

    def boxes_xyxy(self) -> np.ndarray:
        """float32 (K, 4) x1, y1, x2 = x + w, y2 = y + h."""
        out = self.boxes.copy()
        out[:, 2:] += out[:, :2]
        return out


@dataclass(frozen=True, eq=False)
class WiderSplit:
    """A parsed split: records in file order plus the counts a user should see."""

    root: Path
    split: str
    annotation_file: Path
    records: list[ImageRecord]
    landmarks_file: Path | None = None
    # label.txt faces whose box matched no official box of their image (reported, not used)
    unmatched_landmark_faces: int = 0

    @property
    def images(self) -> int:
        return len(self.records)

    @property
    def faces(self) -> int:
        return sum(len(r.boxes) for r in self.records)

    @property
    def invalid_faces(self) -> int:
        return int(sum(r.invalid.sum() for r in self.records))

    @property
    def zero_size_boxes(self) -> int:
        return int(sum(r.zero_size.sum() for r in self.records))

    @property
    def empty_images(self) -> int:
        return sum(1 for r in self.records if len(r.boxes) == 0)

    @property
    def faces_with_keypoints(self) -> int:
        return int(sum(r.keypoints_valid.sum() for r in self.records if r.keypoints_valid is not None))

    def summary(self) -> dict[str, int]:
        """Counts for reports: images, faces, invalid, zero-size, empty images, landmarks."""
        return {
            "images": self.images,
            "faces": self.faces,
            "invalid_faces": self.invalid_faces,
            "zero_size_boxes": self.zero_size_boxes,
            "empty_images": self.empty_images,
            "faces_with_keypoints": self.faces_with_keypoints,
            "unmatched_landmark_faces": self.unmatched_landmark_faces,
        }


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a text file."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, start=1):
                text = text.strip()
                if text:
                    yield number, text
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file ({err.reason})") from None


def _image_id(name: str) -> str:
    """'event/file.jpg' (or './event/file.jpg') -> 'event/file'."""
    name = name.replace("\\", "/")
    if name.startswith("./"):
        name = name[2:]
    return os.path.splitext(name)[0]


def _face_row(path: Path, number: int, text: str, what: str) -> list[float]:
    fields = text.split()
    if len(fields) != 10:
        raise UserError(
            f"{path}:{number}: expected {what} as 10 numbers "
            f"(x y w h {' '.join(ATTRIBUTE_NAMES)}), got {len(fields)} fields: {text[:80]!r}"
        )
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise UserError(f"{path}:{number}: non-numeric value in {what}: {text[:80]!r}") from None
    if not all(np.isfinite(values)):
        raise UserError(f"{path}:{number}: non-finite value in {what}: {text[:80]!r}")
    return values


def _looks_numeric(text: str) -> bool:
    try:
        float(text.split()[0])
        return True
    except ValueError:
        return False


def parse_bbx_gt(path: str | os.PathLike) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """Parse a wider_face_*_bbx_gt.txt file.

    Returns, in file order, (image name as written e.g. "0--Parade/x.jpg", line of the name,
    boxes float32 (K, 4) xywh, attributes int64 (K, 6)). A 0-face image has count 0 and one
    all-zero line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    lines = _lines(path)
    out: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    seen: dict[str, int] = {}
    pending: tuple[int, str] | None = None
    while True:
        item = pending if pending is not None else next(lines, None)
        pending = None
        if item is None:
            break
        number, name = item
        if _looks_numeric(name):
            raise UserError(
                f"{path}:{number}: expected an image path (event/file.jpg), got {name[:80]!r} "
                "(is the previous image's face count too small?)"
            )
        image_id = _image_id(name)
        if image_id in seen:
            raise UserError(f"{path}:{number}: image {name} listed twice (first at line {seen[image_id]})")
        seen[image_id] = number
        count, count_line = _read_count(path, lines, number, name)
        rows, pending = _read_faces(path, lines, (number, count_line), name, count)
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 10)
        out.append((name, number, arr[:, :4].astype(np.float32), arr[:, 4:].astype(np.int64)))
    return out


def _read_count(path: Path, lines: Iterator[tuple[int, str]], at: int, name: str) -> tuple[int, int]:
    """(face count, its line number) after the image name at line `at`."""
    item = next(lines, None)
    if item is None:
        raise UserError(f"{path}:{at}: file ends after image {name}: its face-count line is missing")
    number, text = item
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"{path}:{number}: expected the face count of {name}, got {text[:80]!r}") from None
    if count < 0:
        raise UserError(f"{path}:{number}: negative face count {count} for {name}")
    return count, number


def _read_faces(path: Path, lines: Iterator[tuple[int, str]], where: tuple[int, int], name: str, count: int):
    """The count face lines of one image; returns (rows, a look-ahead line to re-read or None).

    where: (line of the image name, line of its count).
    """
    at, last = where
    rows: list[list[float]] = []
    if count == 0:
        # Official files follow a count of 0 with one all-zero line; tolerate its absence.
        item = next(lines, None)
        if item is None or not _looks_numeric(item[1]):
            return rows, item
        values = _face_row(path, item[0], item[1], f"the placeholder line of 0-face image {name}")
        if any(values):
            raise UserError(f"{path}:{item[0]}: image {name} has count 0 but a non-zero face line")
        return rows, None
    for k in range(count):
        item = next(lines, None)
        if item is None:
            raise UserError(
                f"{path}:{last}: file ends after face {k} of {count} of image {name} (line {at}); "
                "the file is truncated or the count is wrong"
            )
        number, text = item
        last = number
        if not _looks_numeric(text):
            raise UserError(
                f"{path}:{number}: image {name} (line {at}) declares {count} faces but only {k} "
                f"face lines follow before {text[:80]!r}"
            )
        rows.append(_face_row(path, number, text, f"face {k + 1} of {count} of {name}"))
    return rows, None


def load_retinaface_labels(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Parse a RetinaFace-style label.txt.

    `# event/file.jpg` starts an image; each face line is `x y w h` followed by 5 landmarks as
    (x, y, flag) and a score (20 numbers), or `x y w h` alone. -1 in all landmark fields means
    absent. Returns image_id -> (boxes float32 (K, 4) xywh, keypoints float32 (K, 5, 2),
    keypoints_valid bool (K,)).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"landmark file not found: {path}")
    rows: dict[str, list[list[float]]] = {}
    current: str | None = None
    for number, text in _lines(path):
        if text.startswith("#"):
            current = _image_id(text[1:].strip())
            if current in rows:
                raise UserError(f"{path}:{number}: image {text[1:].strip()} listed twice")
            rows[current] = []
            continue
        if current is None:
            raise UserError(f"{path}:{number}: face line before the first '# event/file.jpg' line")
        fields = text.split()
        if len(fields) not in (4, 19, 20):
            raise UserError(
                f"{path}:{number}: expected 20 numbers (x y w h, 5 x (lx ly flag), score) "
                f"or 4 (x y w h), got {len(fields)}"
            )
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise UserError(f"{path}:{number}: non-numeric value in {text[:80]!r}") from None
        rows[current].append(values[:19] + [-1.0] * (19 - len(values[:19])))
    out = {}
    for image_id, faces in rows.items():
        arr = np.asarray(faces, dtype=np.float64).reshape(-1, 19)
        kps = arr[:, 4:19].reshape(-1, 5, 3)[:, :, :2]
        valid = ~np.all(kps == -1.0, axis=(1, 2))
        out[image_id] = (arr[:, :4].astype(np.float32), kps.astype(np.float32), valid)
    return out


def _attach_landmarks(boxes: np.ndarray, label) -> tuple[np.ndarray, np.ndarray, int]:
    """Keypoints for the official boxes from one image's label.txt entry.

    Returns keypoints (K, 5, 2), valid (K,), and the number of label faces that matched no box.
    Label files list the official boxes in order; when they do not, faces are matched by
    identical box, and the rest are counted, not guessed.
    """
    kps = np.full((len(boxes), 5, 2), -1.0, dtype=np.float32)
    valid = np.zeros(len(boxes), dtype=bool)
    if label is None:
        return kps, valid, 0
    lboxes, lkps, lvalid = label
    if lboxes.shape == boxes.shape and np.array_equal(lboxes, boxes):
        return lkps.copy(), lvalid.copy(), 0
    used = np.zeros(len(boxes), dtype=bool)
    unmatched = 0
    for box, kp, ok in zip(lboxes, lkps, lvalid):
        hits = np.flatnonzero(~used & np.all(boxes == box, axis=1)) if len(boxes) else []
        if len(hits) == 0:
            unmatched += 1
            continue
        used[hits[0]] = True
        kps[hits[0]], valid[hits[0]] = kp, ok
    return kps, valid, unmatched


def check_root(root: str | os.PathLike, split: str = "train") -> Path:
    """The split's annotation file under `root`; UserError (one line) when `root` is not a
    dataset root in the official layout."""
    if split not in _SPLITS:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(_SPLITS)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root}")
    annotation = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    if not annotation.is_file():
        raise UserError(f"{root} is not a WIDER FACE root: {annotation.relative_to(root)} not found")
    return annotation


def load_split(
    root: str | os.PathLike, split: str = "train", landmarks: str | os.PathLike | None = None
) -> WiderSplit:
    """Parse one split of a dataset root in the official layout (images are not opened).

    landmarks: None (no keypoints), a label.txt path, or 'auto' (root/retinaface_gt/<split>/
    label.txt when it exists). With landmarks, every record has keypoints; faces without a
    label get -1 and keypoints_valid False.
    """
    root = Path(root).expanduser().resolve()
    annotation = check_root(root, split)
    label_path = _landmark_path(root, split, landmarks)
    labels = load_retinaface_labels(label_path) if label_path is not None else None
    images_dir = root / f"WIDER_{split}" / "images"
    records, unmatched, matched_ids = [], 0, set()
    for name, line, boxes, attributes in parse_bbx_gt(annotation):
        image_id = _image_id(name)
        kps = valid = None
        if labels is not None:
            kps, valid, missed = _attach_landmarks(boxes, labels.get(image_id))
            unmatched += missed
            matched_ids.add(image_id)
        records.append(
            ImageRecord(image_id, images_dir / name, boxes, attributes, kps, valid, str(annotation), line)
        )
    if labels is not None:
        # faces of label images that are not in this split are also reported, not dropped silently
        unmatched += sum(len(v[0]) for k, v in labels.items() if k not in matched_ids)
    return WiderSplit(root, split, annotation, records, label_path, unmatched)


def _landmark_path(root: Path, split: str, landmarks) -> Path | None:
    if landmarks is None:
        return None
    if str(landmarks) == "auto":
        candidate = root / "retinaface_gt" / split / "label.txt"
        return candidate if candidate.is_file() else None
    return Path(landmarks).expanduser().resolve()


def read_image(path: str | os.PathLike, listed_at: str = "") -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); missing or corrupt files raise UserError."""
    from PIL import Image

    where = f" (listed at {listed_at})" if listed_at else ""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}{where}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"corrupt image {path}{where}: {err}") from None


def _verify_image(path: Path, decode: bool) -> None:
    """Raise OSError/SyntaxError if the file is not a readable image.

    PIL's verify() checks the header only; a JPEG cut short still passes it, so a JPEG whose
    tail lacks the end-of-image marker is fully decoded to decide.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        fmt = im.format
    if not decode and fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 1024))
            decode = b"\xff\xd9" not in f.read()
    if decode:
        with Image.open(path) as im:
            im.load()


def check_images(split: WiderSplit, decode: bool = False, progress: bool = True) -> None:
    """Check every image of a split exists and is a readable image.

    decode=True fully decodes each image (slow); by default header + JPEG end-marker checks.
    Raises UserError naming the image and the annotation line that lists it.
    """
    from tqdm import tqdm

    for record in tqdm(split.records, desc=f"checking {split.split} images", disable=None if progress else True, leave=False):
        where = f"{record.source}:{record.line}"
        if not record.path.is_file():
            raise UserError(f"image not found: {record.path} (listed at {where})")
        try:
            _verify_image(record.path, decode)
        except (OSError, SyntaxError, ValueError) as err:
            raise UserError(f"corrupt image {record.path} (listed at {where}): {err}") from None


@dataclass(frozen=True, eq=False)
class EvalGroundTruth:
    """The official evaluation ground truth (eval_tools/ground_truth/*.mat).

    image_ids: "event/file" in the official order. boxes: image_id -> float64 (K, 4) x, y, w, h.
    keep: setting ('easy' | 'medium' | 'hard') -> image_id -> int64 1-based indices into that
    image's boxes (the `gt_list` of the setting): the faces counted; other boxes are ignored.
    integer_boxes: the .mat stores the boxes in an integer class (int32 in the official files).
    """

    gt_dir: Path
    image_ids: list[str]
    boxes: dict[str, np.ndarray]
    keep: dict[str, dict[str, np.ndarray]]
    # The official .mat stores boxes as int32, which makes MATLAB's IoU arithmetic integer
    # (see detectors.evaluate); True when face_bbx_list holds an integer class.
    integer_boxes: bool = False

    def faces(self, setting: str) -> int:
        """Number of faces counted in a setting (sum of the gt_list lengths)."""
        return int(sum(len(v) for v in self.keep[setting].values()))

    def subset(self, image_ids) -> "EvalGroundTruth":
        """The same ground truth restricted to some images (official order kept)."""
        wanted = set(image_ids)
        unknown = wanted - set(self.boxes)
        if unknown:
            raise UserError(f"images not in the ground truth at {self.gt_dir}: {sorted(unknown)[:3]}")
        ids = [i for i in self.image_ids if i in wanted]
        keep = {s: {i: k[i] for i in ids} for s, k in self.keep.items()}
        return EvalGroundTruth(self.gt_dir, ids, {i: self.boxes[i] for i in ids}, keep, self.integer_boxes)


def resolve_gt_dir(path: str | os.PathLike) -> Path:
    """The directory holding wider_face_val.mat: `path` itself or path/eval_tools/ground_truth."""
    path = Path(path).expanduser()
    for candidate in (path, path / "eval_tools" / "ground_truth"):
        if (candidate / "wider_face_val.mat").is_file():
            return candidate
    raise UserError(
        f"no WIDER FACE evaluation ground truth at {path}: expected wider_face_val.mat there or in "
        f"{path / 'eval_tools' / 'ground_truth'}"
    )


def _loadmat(path: Path, needed: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise UserError(f"ground-truth file not found: {path}")
    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises several types for a bad file
        raise UserError(f"{path}: not a readable MATLAB file ({err})") from None
    missing = [k for k in needed if k not in mat]
    if missing:
        raise UserError(f"{path}: not a WIDER FACE ground-truth file (missing {', '.join(missing)})")
    return mat


def _cells(mat: dict, key: str) -> list:
    """A 61x1 cell of Nx1 cells -> list (events) of lists (images) of arrays."""
    return [[cell[0] for cell in np.asarray(event[0]).reshape(-1, 1)] for event in mat[key].reshape(-1, 1)]


def load_eval_ground_truth(gt_dir: str | os.PathLike) -> EvalGroundTruth:
    """Load wider_face_val.mat and wider_{easy,medium,hard}_val.mat (gt_dir or dataset root)."""
    gt_dir = resolve_gt_dir(gt_dir)
    val_file = gt_dir / "wider_face_val.mat"
    val = _loadmat(val_file, ("event_list", "file_list", "face_bbx_list"))
    try:
        events = [str(np.asarray(e[0]).reshape(-1)[0]) for e in val["event_list"].reshape(-1, 1)]
        files = [[str(np.asarray(f).reshape(-1)[0]) for f in ev] for ev in _cells(val, "file_list")]
        bbx = _cells(val, "face_bbx_list")
    except (IndexError, ValueError, TypeError) as err:
        raise UserError(f"{val_file}: unexpected layout of event_list/file_list/face_bbx_list ({err})") from None
    image_ids, boxes = [], {}
    integer = any(np.issubdtype(np.asarray(b).dtype, np.integer) for ev in bbx for b in ev)
    for event, names, event_boxes in zip(events, files, bbx):
        if len(event_boxes) != len(names):
            raise UserError(f"{val_file}: event {event} has {len(names)} files but {len(event_boxes)} box lists")
        for name, b in zip(names, event_boxes):
            image_id = f"{event}/{name}"
            image_ids.append(image_id)
            boxes[image_id] = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    keep = {s: _load_keep(gt_dir / f"wider_{s}_val.mat", events, files, boxes) for s in SETTINGS}
    return EvalGroundTruth(gt_dir, image_ids, boxes, keep, integer)


def _load_keep(path: Path, events: list[str], files: list[list[str]], boxes: dict) -> dict[str, np.ndarray]:
    mat = _loadmat(path, ("gt_list",))
    try:
        gt = _cells(mat, "gt_list")
    except (IndexError, ValueError, TypeError) as err:
        raise UserError(f"{path}: unexpected layout of gt_list ({err})") from None
    if [len(g) for g in gt] != [len(f) for f in files]:
        raise UserError(f"{path}: gt_list does not have the images of wider_face_val.mat")
    keep = {}
    for event, names, event_gt in zip(events, files, gt):
        for name, g in zip(names, event_gt):
            image_id = f"{event}/{name}"
            # gt_list is stored as uint8/uint16: widen before any arithmetic
            idx = np.asarray(g, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 1 or idx.max() > len(boxes[image_id])):
                raise UserError(
                    f"{path}: gt_list of {image_id} has index {int(idx.max())} outside 1..{len(boxes[image_id])}"
                )
            keep[image_id] = idx
    return keep
