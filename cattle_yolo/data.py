"""Datasets: find images and YOLO labels, validate them, decode once into a letterboxed uint8 cache.

Input is an Ultralytics ``data.yaml`` (``path``, ``train``, ``val``, optional ``test``: each a
folder, a ``.txt`` list of images or a list of those; ``names`` as a list or dict, or ``nc``), or a
folder with ``train/`` and ``val/`` (optional ``test/``), or ``images/train`` and ``images/val``.
An image's label is ``.../labels/...txt`` for ``.../images/...`` (Ultralytics) or the ``.txt``
beside it (labelImg). Class names come from the yaml, else ``classes.txt`` (in a split folder or
the dataset root), else they are numbered.

Labels are YOLO lines ``class cx cy w h``, normalized to [0, 1] in the original image. Inside the
cache and everything downstream, boxes are pixel ``x1 y1 x2 y2`` in the letterboxed ``imgsz`` x
``imgsz`` image (``boxes.py`` holds the conversions).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from cattle_yolo import synthetic
from cattle_yolo.boxes import cxcywh_to_xyxy, letterbox_params, to_letterbox
from cattle_yolo.config import TrainConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PAD_VALUE = 114  # letterbox fill, as in YOLOv5/v8
COORD_TOLERANCE = 0.01  # box edges may stray this far outside [0, 1]; they are clipped
DECODE_THREADS = 2  # PIL releases the GIL while decoding and resizing
REASONS_SHOWN = 5  # skip reasons printed per split; all are kept in the report


class DataError(Exception):
    """The data cannot be used; the message names the file (and line) at fault. CLI exit code 2."""


@dataclass
class SplitReport:
    """What loading one split found; ``reasons`` are ``file:line: reason`` for each skipped image."""

    split: str
    found: int = 0  # image files found
    backgrounds: int = 0  # usable images without boxes (no label file, or an empty one)
    skipped: int = 0  # images left out: a bad label line or an unreadable image
    duplicates: int = 0  # duplicate boxes dropped
    clipped: int = 0  # boxes clipped to [0, 1] within COORD_TOLERANCE
    reasons: list[str] = field(default_factory=list)

    def summary(self, used: int, cache_bytes: int) -> str:
        text = (
            f"{self.split}: {self.found} images found, {used} used ({self.backgrounds} backgrounds),"
            f" {self.skipped} skipped; {self.duplicates} duplicate boxes dropped,"
            f" {self.clipped} clipped; cache {cache_bytes / 2**20:.1f} MB"
        )
        lines = [text, *(f"  skipped {r}" for r in self.reasons[:REASONS_SHOWN])]
        if len(self.reasons) > REASONS_SHOWN:
            lines.append(f"  ... and {len(self.reasons) - REASONS_SHOWN} more")
        return "\n".join(lines)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """Fit an (H, W, 3) uint8 image into ``size`` x ``size``, centred, padded with 114.

    Returns the (size, size, 3) uint8 image, ``ratio``, ``pad_x`` and ``pad_y``: a pixel ``x1 y1
    x2 y2`` box maps with ``boxes.to_letterbox(box, ratio, pad_x, pad_y)``. The pads are the whole
    pixels actually used (``boxes.letterbox_params``'s, rounded down).
    """
    out, ratio, pad_x, pad_y = _letterbox_pil(Image.fromarray(image), size)
    return np.array(out), ratio, pad_x, pad_y


def _letterbox_pil(
    im: Image.Image, size: int, orig: tuple[int, int] | None = None
) -> tuple[Image.Image, float, float, float]:
    width, height = orig or im.size
    ratio, pad_x, pad_y = letterbox_params(width, height, size)
    new_w, new_h = round(width * ratio), round(height * ratio)
    if im.size != (new_w, new_h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    out.paste(im, (int(pad_x), int(pad_y)))
    return out, ratio, float(int(pad_x)), float(int(pad_y))


# --- augmentation (train only): one scale-and-translate, an HSV colour matrix, a flip ---
MIN_BOX_PIXELS = 2.0  # an augmented box narrower or lower than this is dropped
MIN_VISIBLE = 0.2  # an augmented box with less than this share of its area in view is dropped
_LUMA = np.array([0.213, 0.715, 0.072])  # Rec. 709 weights, as SVG's hue and saturation filters
_HUE_SIN = np.array([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283], [-0.787, 0.715, 0.072]])


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation strengths; see ``TrainConfig`` for each field's meaning."""

    fliplr: float
    hsv_h: float
    hsv_s: float
    hsv_v: float
    scale: float
    translate: float

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Augment:
        return cls(cfg.fliplr, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v, cfg.scale, cfg.translate)


def augment(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, aug: Augment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one letterboxed image (S, S, 3) uint8 with pixel ``x1 y1 x2 y2`` boxes (M, 4).

    Draws the same 7 numbers from ``rng`` whatever is enabled. Boxes that end up mostly outside
    the image or under ``MIN_BOX_PIXELS`` are dropped with their labels; the rest are clipped.
    """
    size = image.shape[0]
    u = rng.uniform(-1.0, 1.0, 6)
    flip = rng.random() < aug.fliplr
    im = Image.fromarray(image)
    s = 1.0 + aug.scale * u[0]
    offset = size / 2 * (1 - s) + aug.translate * size * u[1:3]  # x' = s * x + offset
    if aug.scale or aug.translate:
        im = _scale_translate(im, s, offset)
        moved = boxes * s + np.tile(offset, 2).astype(np.float32)
        clipped = moved.clip(0, size)
        w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        keep = (w > MIN_BOX_PIXELS) & (h > MIN_BOX_PIXELS) & (w * h > MIN_VISIBLE * area)
        boxes, labels = clipped[keep], labels[keep]
    if aug.hsv_h or aug.hsv_s or aug.hsv_v:
        matrix = _colour_matrix(aug.hsv_h * u[3], 1 + aug.hsv_s * u[4], 1 + aug.hsv_v * u[5])
        im = im.convert("RGB", matrix)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    return np.asarray(im), boxes.astype(np.float32), labels


def _scale_translate(im: Image.Image, s: float, offset: np.ndarray) -> Image.Image:
    """Resample ``im`` so that a point x maps to ``s * x + offset``; the rest is padding."""
    size = im.size[0]
    x0, y0 = (max(0, round(v)) for v in offset)
    x1, y1 = (min(size, round(v + s * size)) for v in offset)
    out = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    if x1 > x0 and y1 > y0:  # resize only the part that stays in view
        src = np.clip((np.array([x0, y0, x1, y1]) - np.tile(offset, 2)) / s, 0, size)
        part = im.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=tuple(src))
        out.paste(part, (x0, y0))
    return out


def _colour_matrix(hue: float, sat: float, val: float) -> tuple[float, ...]:
    """HSV jitter as one RGB matrix for ``Image.convert``: a hue rotation by ``hue`` of the
    circle about the grey axis, a saturation gain blending towards grey, a value gain. PIL
    applies it in C (~0.6 ms at 384 px, against ~6 ms for an HSV round trip with lookup tables)."""
    grey = np.tile(_LUMA, (3, 1))
    angle = 2 * math.pi * hue
    rotate = grey + math.cos(angle) * (np.eye(3) - grey) + math.sin(angle) * _HUE_SIN
    saturate = grey + sat * (np.eye(3) - grey)
    m = val * rotate @ saturate
    return tuple(np.concatenate([m, np.zeros((3, 1))], axis=1).ravel().tolist())


class DetectionDataset(Dataset):
    """Decoded, letterboxed images and their boxes, all in memory.

    ``images`` uint8 (N, S, S, 3) RGB; ``boxes[i]`` float32 (M_i, 4) pixel ``x1 y1 x2 y2`` in the
    letterboxed image; ``labels[i]`` int64 (M_i,); ``letterbox`` float32 (N, 3) ``ratio, pad_x,
    pad_y`` (original -> letterboxed); ``orig_sizes`` int32 (N, 2) original ``width, height``.
    An item is ``(image uint8 (3, S, S), target float32 (M, 5) [cls, x1, y1, x2, y2], i)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        boxes: list[np.ndarray],
        labels: list[np.ndarray],
        letterbox: np.ndarray,
        orig_sizes: np.ndarray,
        files: list[str],
        names: list[str],
        report: SplitReport | None = None,
    ) -> None:
        if not len(images) == len(boxes) == len(labels) == len(letterbox) == len(files):
            raise ValueError("images, boxes, labels, letterbox and files differ in length")
        self.images, self.boxes, self.labels = images, boxes, labels
        self.letterbox, self.orig_sizes = letterbox, orig_sizes
        self.files, self.names, self.report = files, names, report
        self.aug: Augment | None = None  # set by with_augment
        self.seed = 0
        self.epoch = 0

    @property
    def imgsz(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i = range(len(self))[i]  # bounds check; a negative index becomes its positive twin
        image, boxes, labels = self.images[i], self.boxes[i], self.labels[i]
        if self.aug is not None:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch, i])
            image, boxes, labels = augment(image, boxes, labels, self.aug, rng)
        target = np.concatenate([labels[:, None].astype(np.float32), boxes], axis=1)
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(target),
            i,
        )

    def with_augment(self, cfg: TrainConfig) -> DetectionDataset:
        """A view sharing the arrays whose items are augmented with ``cfg``'s flip, HSV, scale
        and translate; item ``i`` in epoch ``e`` is seeded by ``(cfg.seed, e, i)``."""
        view = copy.copy(self)
        view.aug, view.seed = Augment.from_config(cfg), cfg.seed
        return view

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (``make_loader`` calls it)."""
        self.epoch = int(epoch)

    def subset(self, indices: Sequence[int]) -> DetectionDataset:
        """A new dataset of the given items (copies their images)."""
        idx = list(indices)
        view = copy.copy(self)
        view.images = self.images[idx]
        view.boxes, view.labels = [self.boxes[k] for k in idx], [self.labels[k] for k in idx]
        view.letterbox, view.orig_sizes = self.letterbox[idx], self.orig_sizes[idx]
        view.files = [self.files[k] for k in idx]
        return view

    def __getstate__(self) -> dict:
        # One array for all boxes instead of N small ones: a pickle is the image bytes plus ~1%.
        state = self.__dict__.copy()
        state["counts"] = np.array([len(b) for b in self.boxes], np.int64)
        state["boxes"] = np.concatenate([np.zeros((0, 4), np.float32), *self.boxes])
        state["labels"] = np.concatenate([np.zeros(0, np.int64), *self.labels])
        return state

    def __setstate__(self, state: dict) -> None:
        ends = np.cumsum(state.pop("counts"))
        starts = ends - np.diff(ends, prepend=0)
        state["boxes"] = [state["boxes"][a:b] for a, b in zip(starts, ends, strict=True)]
        state["labels"] = [state["labels"][a:b] for a, b in zip(starts, ends, strict=True)]
        self.__dict__.update(state)


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items -> images uint8 (B, 3, S, S), targets float32 (N, 6) ``[img_idx, cls, x1, y1, x2,
    y2]`` (pixel, letterboxed), dataset indices long (B,)."""
    images = torch.stack([item[0] for item in batch])
    targets = [
        torch.cat([torch.full((len(t), 1), float(k)), t], dim=1)
        for k, (_, t, _) in enumerate(batch)
    ]
    indices = torch.tensor([item[2] for item in batch], dtype=torch.long)
    return images, torch.cat([torch.zeros((0, 6)), *targets]), indices


@dataclass
class Datasets:
    train: DetectionDataset
    val: DetectionDataset
    test: DetectionDataset | None
    names: list[str]  # class names
    name: str  # dataset name, for outputs/<name>/yolov8


def make_loader(ds: DetectionDataset, cfg: TrainConfig, train: bool, epoch: int = 0) -> DataLoader:
    """Batches of ``cfg.batch`` through ``collate`` with ``cfg.workers`` worker processes.

    ``train``: shuffled by a generator seeded with ``(cfg.seed, epoch)`` and ``ds.set_epoch(epoch)``
    called; augmentation is the dataset's, so pass ``ds.with_augment(cfg)`` to augment. Otherwise in
    order. Either way the loader has its own generator and never draws from torch's global RNG.
    """
    if train:
        ds.set_epoch(epoch)
    state = np.random.SeedSequence([cfg.seed % 2**63, epoch, int(train)]).generate_state(1)
    generator = torch.Generator().manual_seed(int(state[0]))
    return DataLoader(
        ds,
        batch_size=cfg.batch,
        shuffle=train,
        num_workers=cfg.workers,
        collate_fn=collate,
        generator=generator,
        drop_last=False,
    )


def load_datasets(cfg: TrainConfig, verbose: bool = True) -> Datasets:
    """Find, validate, decode and letterbox ``cfg.data`` (None: the embedded synthetic set).

    Prints one summary per split unless ``verbose`` is false. Raises ``DataError`` for a missing
    or malformed source, a split without a usable image, or (``cfg.strict``) any skipped image.
    """
    if cfg.data is None:
        splits, names, name, class_dirs = _resolve(synthetic.default_dataset(cfg))
        name = "synthetic"
    else:
        splits, names, name, class_dirs = _resolve(Path(cfg.data))
    files = {split: _image_files(sources) for split, sources in splits.items()}
    parsed = {split: [_parse_labels(_label_path(f)) for f in fs] for split, fs in files.items()}
    names = names or _classes_txt(class_dirs)
    if names is None:  # numbered: as many as the largest class id needs
        top = max((int(p.classes.max()) for ps in parsed.values() for p in ps if len(p.classes)),
                  default=0)  # fmt: skip
        names = [str(k) for k in range(top + 1)]
    built = {}
    for split in splits:
        built[split] = _build_split(split, files[split], parsed[split], names, cfg, splits[split])
        if verbose:
            ds = built[split]
            print(ds.report.summary(len(ds), ds.images.nbytes), flush=True)
    return Datasets(built["train"], built["val"], built.get("test"), names, name)


def _resolve(source: Path) -> tuple[dict[str, list[Path]], list[str] | None, str, list[Path]]:
    """-> split sources {split: [folder or list file]}, yaml names, dataset name, classes.txt dirs."""
    if source.is_dir() and (source / "data.yaml").is_file():
        source = source / "data.yaml"
    if source.is_file():
        return _resolve_yaml(source)
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    splits = {}
    for split in ("train", "val", "test"):
        for candidate in (source / split, source / "images" / split):
            if candidate.is_dir():
                splits[split] = [candidate]
                break
    if "train" not in splits or "val" not in splits:
        raise DataError(f"{source}: expected train/ and val/ folders (or images/train, images/val)"
                        " or a data.yaml")  # fmt: skip
    dirs = [*splits["train"], *splits["val"]]
    return splits, None, source.name, [*dirs, *map(_labels_dir, dirs), source]


def _resolve_yaml(path: Path) -> tuple[dict[str, list[Path]], list[str] | None, str, list[Path]]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with train, val and names")
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else path.parent / root
    splits = {}
    for split in ("train", "val", "test"):
        entry = data.get(split)
        if entry in (None, "", []):
            if split != "test":
                raise DataError(f"{path}: no '{split}' entry")
            continue
        entries = entry if isinstance(entry, list) else [entry]
        splits[split] = [root / str(e) for e in entries]  # an absolute entry stays absolute
    names, nc = data.get("names"), data.get("nc")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: names keys must be 0..{len(names) - 1}, got {list(names)}")
        names = [names[k] for k in range(len(names))]
    if names is not None and not isinstance(names, list):
        raise DataError(f"{path}: names must be a list or a dict, got {names!r}")
    if nc is not None and (not isinstance(nc, int) or nc < 1):
        raise DataError(f"{path}: nc must be a positive integer, got {nc!r}")
    if names is not None and nc is not None and len(names) != nc:
        raise DataError(f"{path}: nc is {nc} but names has {len(names)} entries")
    if names is None and nc is not None:
        names = [str(k) for k in range(nc)]
    name = path.parent.name if path.stem == "data" else path.stem
    dirs = [d for split in ("train", "val") for d in splits[split] if d.is_dir()]
    dirs += [_labels_dir(d) for d in dirs]
    return splits, None if names is None else [str(n) for n in names], name, [*dirs, root]


def _image_files(sources: list[Path]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif src.is_file() and src.suffix == ".txt":  # a list of images, relative to its folder
            lines = (line.strip() for line in src.read_text().splitlines())
            files += [src.parent / line for line in lines if line]
        elif src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
            files.append(src)
        else:
            raise DataError(f"{src}: no such folder, image list (.txt) or image")
    return files


def _labels_dir(path: Path) -> Path:
    """``.../images/...`` -> ``.../labels/...`` (the last ``images`` part); else ``path``."""
    parts = path.parts
    if "images" not in parts:
        return path
    k = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:k], "labels", *parts[k + 1 :])


def _label_path(image: Path) -> Path | None:
    for candidate in (_labels_dir(image).with_suffix(".txt"), image.with_suffix(".txt")):
        if candidate.is_file():
            return candidate
    return None


def _classes_txt(dirs: list[Path]) -> list[str] | None:
    for d in dirs:
        if (d / "classes.txt").is_file():
            text = (d / "classes.txt").read_text(encoding="utf-8-sig")
            names = [n.strip() for n in text.splitlines() if n.strip()]
            if names:
                return names
    return None


@dataclass
class _Labels:
    """One parsed label file: ``classes`` int64 (M,), ``xyxy`` float32 (M, 4) normalized and
    clipped, ``lines`` (M,) 1-based line numbers; or ``error`` (``file:line: reason``)."""

    path: Path | None
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    duplicates: int = 0
    clipped: int = 0
    error: str | None = None


def _parse_labels(path: Path | None) -> _Labels:
    """Parse and check a YOLO label file; the first bad line makes ``error``. None: background."""
    if path is None:
        return _Labels(None)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return _Labels(path, error=f"{path}: cannot read label file: {e}")
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != 5:
            return _Labels(
                path, error=f"{where}: expected 5 fields (class cx cy w h), got {len(fields)}"
            )
        bad = [v for v in fields if not _is_number(v)]
        if bad:
            return _Labels(path, error=f"{where}: {bad[0]!r} is not a number")
        values = [float(v) for v in fields]
        if not all(math.isfinite(v) for v in values):
            return _Labels(path, error=f"{where}: not a finite number")
        cls, cx, cy, w, h = values
        if cls != int(cls) or cls < 0:
            return _Labels(
                path, error=f"{where}: class id {fields[0]} is not a non-negative integer"
            )
        if w <= 0 or h <= 0:
            return _Labels(path, error=f"{where}: non-positive width or height (w={w:g}, h={h:g})")
        box = cxcywh_to_xyxy(np.array([cx, cy, w, h]))
        for edge, v in zip(("x1", "y1", "x2", "y2"), box, strict=True):
            if not -COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE:
                return _Labels(path, error=f"{where}: box edge {edge} = {v:.4f} is outside [0, 1]"
                               f" beyond the {COORD_TOLERANCE:.0%} tolerance")  # fmt: skip
        if box[0] >= 1 or box[1] >= 1 or box[2] <= 0 or box[3] <= 0:
            return _Labels(path, error=f"{where}: box lies outside the image")
        rows.append([cls, *box])
        lines.append(n)
    if not rows:
        return _Labels(path)
    table = np.array(rows, np.float64)
    _, first = np.unique(table, axis=0, return_index=True)
    keep = np.sort(first)  # first occurrences, in file order
    boxes = table[keep, 1:]
    clipped = int(((boxes < -1e-5) | (boxes > 1 + 1e-5)).any(axis=1).sum())  # not rounding
    return _Labels(path, table[keep, 0].astype(np.int64), np.clip(boxes, 0, 1).astype(np.float32),
                   np.array(lines)[keep], len(table) - len(keep), clipped)  # fmt: skip


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decode(
    path: Path, size: int
) -> tuple[np.ndarray, tuple[int, int], tuple[float, float, float]]:
    """Read (EXIF-rotated) and letterbox one image -> (S, S, 3) uint8, (width, height), params."""
    with Image.open(path) as im:
        width, height = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees when shown
            width, height = height, width
        ratio = letterbox_params(width, height, size)[0]
        if im.format == "JPEG" and ratio < 1:  # let libjpeg scale down while decoding
            im.draft("RGB", (round(im.size[0] * ratio), round(im.size[1] * ratio)))
        im = ImageOps.exif_transpose(im).convert("RGB")
        out, ratio, pad_x, pad_y = _letterbox_pil(im, size, (width, height))
    return np.asarray(out), (width, height), (ratio, pad_x, pad_y)


def _build_split(
    split: str,
    files: list[Path],
    parsed: list[_Labels],
    names: list[str],
    cfg: TrainConfig,
    sources: list[Path],
) -> DetectionDataset:
    """Skip bad labels, decode the rest in threads, drop unreadable images, map boxes."""
    report, size = SplitReport(split, found=len(files)), cfg.imgsz

    def skip(reason: str) -> None:
        if cfg.strict:
            raise DataError(reason)
        report.skipped += 1
        report.reasons.append(reason)

    if not files:
        raise DataError(f"{split}: no images found in {', '.join(map(str, sources))}")
    kept = []
    for image, labels in zip(files, parsed, strict=True):
        if labels.error is None and (labels.classes >= len(names)).any():
            k = int(np.argmax(labels.classes >= len(names)))
            plural = "class" if len(names) == 1 else "classes"
            labels.error = (f"{labels.path}:{labels.lines[k]}: class id {labels.classes[k]} but"
                            f" only {len(names)} {plural} named")  # fmt: skip
        if labels.error is not None:
            skip(labels.error)
        else:
            kept.append((image, labels))
    images = np.empty((len(kept), size, size, 3), np.uint8)
    meta = np.zeros((len(kept), 3), np.float32)
    sizes = np.zeros((len(kept), 2), np.int32)

    def work(k: int) -> str | None:
        try:
            images[k], sizes[k], meta[k] = _decode(kept[k][0], size)
        except Exception as e:  # PIL raises many kinds for broken files
            return f"{kept[k][0]}: cannot read image: {type(e).__name__}: {e}"
        return None

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        errors = list(pool.map(work, range(len(kept))))
    ok = np.array([e is None for e in errors], bool)
    for e in errors:
        if e is not None:
            skip(e)
    if not ok.any():
        first = f" (first: {report.reasons[0]})" if report.reasons else ""
        raise DataError(f"{split}: no usable image among {len(files)} found in"
                        f" {', '.join(map(str, sources))}{first}")  # fmt: skip
    boxes, labels_out, kept_files = [], [], []
    for k in np.flatnonzero(ok):
        image, labels = kept[k]
        w, h = sizes[k]
        pixel = labels.xyxy * np.array([w, h, w, h], np.float32)
        boxes.append(np.clip(to_letterbox(pixel, *meta[k]), 0, size).astype(np.float32))
        labels_out.append(labels.classes)
        kept_files.append(str(image))
        report.duplicates += labels.duplicates
        report.clipped += labels.clipped
        report.backgrounds += len(labels.classes) == 0
    if not ok.all():
        images, meta, sizes = images[ok], meta[ok], sizes[ok]
    return DetectionDataset(images, boxes, labels_out, meta, sizes, kept_files, list(names), report)
