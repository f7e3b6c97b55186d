"""Datasets: decode images once into a letterboxed uint8 cache, then batch them for training.

``sources.py`` finds the images and parses and checks their YOLO labels; this module decodes the
usable ones in threads (EXIF-rotated, letterboxed to ``imgsz`` x ``imgsz``), keeps them in memory
as a ``DetectionDataset`` and batches them with ``make_loader``. Inside the cache and everything
downstream, boxes are pixel ``x1 y1 x2 y2`` in the letterboxed image (``boxes.py`` holds the
conversions); ``augment.py`` holds the train-time augmentation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from cattle_yolo import synthetic
from cattle_yolo.augment import Augment, augment, mosaic
from cattle_yolo.boxes import letterbox_params, letterbox_pil, to_letterbox, to_pixels
from cattle_yolo.config import TrainConfig
from cattle_yolo.sources import (
    DataError,
    Labels,
    classes_txt,
    image_files,
    label_path,
    parse_labels,
    resolve,
)

__all__ = [  # the public API; Augment, augment and DataError are re-exported from their modules
    "Augment",
    "DataError",
    "Datasets",
    "DetectionDataset",
    "SplitReport",
    "augment",
    "collate",
    "load_datasets",
    "make_loader",
]

Item = tuple[torch.Tensor, torch.Tensor, int]  # DetectionDataset's: image, target, index
DECODE_THREADS = 2  # PIL releases the GIL while decoding and resizing
REASONS_SHOWN = 5  # skip reasons printed per split; all are kept in the report


@dataclass
class SplitReport:
    """What loading one split found; ``reasons`` are ``file:line: reason`` for each skipped
    image."""

    split: str
    found: int = 0  # image files found
    backgrounds: int = 0  # usable images without boxes (no label file, or an empty one)
    skipped: int = 0  # images left out: a bad label line or an unreadable image
    duplicates: int = 0  # duplicate boxes dropped
    clipped: int = 0  # boxes clipped to [0, 1] (an edge past the border; see sources.parse_labels)
    reasons: list[str] = field(default_factory=list)

    def summary(self, used: int, cache_bytes: int) -> str:
        text = (
            f"{self.split}: {self.found} images found, {used} used "
            f"({self.backgrounds} backgrounds),"
            f" {self.skipped} skipped; {self.duplicates} duplicate boxes dropped,"
            f" {self.clipped} clipped; cache {cache_bytes / 2**20:.1f} MB"
        )
        lines = [text, *(f"  skipped {r}" for r in self.reasons[:REASONS_SHOWN])]
        if len(self.reasons) > REASONS_SHOWN:
            lines.append(f"  ... and {len(self.reasons) - REASONS_SHOWN} more")
        return "\n".join(lines)


class DetectionDataset(Dataset[Item]):
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
    ) -> None:
        if not len(images) == len(boxes) == len(labels) == len(letterbox) == len(files):
            raise ValueError("images, boxes, labels, letterbox and files differ in length")
        self.images, self.boxes, self.labels = images, boxes, labels
        self.letterbox, self.orig_sizes = letterbox, orig_sizes
        self.files, self.names = files, names
        self.report: SplitReport | None = None  # what loading found; set by load_datasets
        self.aug: Augment | None = None  # set by with_augment
        self.seed = 0
        self.epoch = 0

    @property
    def imgsz(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Item:
        i = range(len(self))[i]  # bounds check; a negative index becomes its positive twin
        image, boxes, labels = self.images[i], self.boxes[i], self.labels[i]
        if self.aug is not None:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch, i])
            # the same draws whether or not this item is a mosaic: reproducible either way
            use_mosaic = rng.random() < self.aug.mosaic and self.epoch < self.aug.mosaic_epochs
            others = rng.integers(0, len(self), 3)
            centre = rng.uniform(0.5, 1.5, 2) * self.imgsz
            if use_mosaic:
                idx = [i, *others.tolist()]
                image, boxes, labels = mosaic(
                    [self.images[k] for k in idx],
                    [self.boxes[k] for k in idx],
                    [self.labels[k] for k in idx],
                    (round(centre[0]), round(centre[1])),
                )
            image, boxes, labels = augment(image, boxes, labels, self.aug, rng, self.imgsz)
        target = np.concatenate([labels[:, None].astype(np.float32), boxes], axis=1)
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(target),
            i,
        )

    def with_augment(self, cfg: TrainConfig) -> DetectionDataset:
        """A view sharing the arrays whose items are augmented with ``cfg``'s mosaic (until the
        last ``close_mosaic`` epochs), scale and translate, HSV and flip; item ``i`` in epoch
        ``e`` is seeded by ``(cfg.seed, e, i)``."""
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

    def __getstate__(self) -> dict[str, Any]:
        # One array for all boxes instead of N small ones: a pickle is the image bytes plus ~1%.
        state = self.__dict__.copy()
        state["counts"] = np.array([len(b) for b in self.boxes], np.int64)
        state["boxes"] = np.concatenate([np.zeros((0, 4), np.float32), *self.boxes])
        state["labels"] = np.concatenate([np.zeros(0, np.int64), *self.labels])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        ends = np.cumsum(state.pop("counts"))
        starts = ends - np.diff(ends, prepend=0)
        state["boxes"] = [state["boxes"][a:b] for a, b in zip(starts, ends, strict=True)]
        state["labels"] = [state["labels"][a:b] for a, b in zip(starts, ends, strict=True)]
        self.__dict__.update(state)


def collate(
    batch: Sequence[Item],
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

    def val_coverage(self) -> str | None:
        """A warning when val images were skipped (non-strict loading), so that the val metrics
        cover only part of the val split; None when every val image is scored."""
        report = self.val.report
        if report is None or not report.skipped:
            return None
        first = f" (first: {report.reasons[0]})" if report.reasons else ""
        return (
            f"val metrics cover {len(self.val)} of {len(self.val) + report.skipped} val images: "
            f"{report.skipped} skipped for a bad label line or an unreadable image{first}; "
            "fix them, or set strict: true to refuse such data"
        )


def make_loader(
    ds: DetectionDataset, cfg: TrainConfig, train: bool, epoch: int = 0
) -> DataLoader[Item]:
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
        splits, names, name, class_dirs = resolve(synthetic.default_dataset(cfg))
        name = "synthetic"
    else:
        splits, names, name, class_dirs = resolve(Path(cfg.data))
    files = {split: image_files(sources) for split, sources in splits.items()}
    parsed = {split: [parse_labels(label_path(f)) for f in fs] for split, fs in files.items()}
    names = names or classes_txt(class_dirs)
    if names is None:  # numbered: as many as the largest class id needs
        top = max(
            (int(p.classes.max()) for ps in parsed.values() for p in ps if len(p.classes)),
            default=0,
        )
        names = [str(k) for k in range(top + 1)]
    built = {}
    for split in splits:
        built[split] = _build_split(split, files[split], parsed[split], names, cfg, splits[split])
        if verbose:
            ds = built[split]
            assert ds.report is not None  # _build_split always gives one
            print(ds.report.summary(len(ds), ds.images.nbytes), flush=True)
    return Datasets(built["train"], built["val"], built.get("test"), names, name)


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
        rgb = ImageOps.exif_transpose(im).convert("RGB")
        out, ratio, pad_x, pad_y = letterbox_pil(rgb, size, (width, height))
    return np.asarray(out), (width, height), (ratio, pad_x, pad_y)


def _build_split(
    split: str,
    files: list[Path],
    parsed: list[Labels],
    names: list[str],
    cfg: TrainConfig,
    sources: list[Path],
) -> DetectionDataset:
    """Skip bad labels, decode the rest in threads, drop unreadable images, map boxes."""
    report = SplitReport(split, found=len(files))
    if not files:
        raise DataError(f"{split}: no images found in {', '.join(map(str, sources))}")
    kept = []
    for image, labels in zip(files, parsed, strict=True):
        _check_class_ids(labels, names)
        if labels.error is not None:
            _skip(report, labels.error, cfg.strict)
        else:
            kept.append((image, labels))
    images, sizes, meta, errors = _decode_all([image for image, _ in kept], cfg.imgsz)
    ok = np.array([e is None for e in errors], bool)
    for e in errors:
        if e is not None:
            _skip(report, e, cfg.strict)
    if not ok.any():
        first = f" (first: {report.reasons[0]})" if report.reasons else ""
        raise DataError(
            f"{split}: no usable image among {len(files)} found in"
            f" {', '.join(map(str, sources))}{first}"
        )
    if not ok.all():
        images, meta, sizes = images[ok], meta[ok], sizes[ok]
    used = [item for item, readable in zip(kept, ok, strict=True) if readable]
    boxes = []
    for (_, labels), (w, h), params in zip(used, sizes, meta, strict=True):
        pixel = to_pixels(labels.xyxy, w, h)
        boxes.append(np.clip(to_letterbox(pixel, *params), 0, cfg.imgsz).astype(np.float32))
        report.duplicates += labels.duplicates
        report.clipped += labels.clipped
        report.backgrounds += len(labels.classes) == 0
    classes = [labels.classes for _, labels in used]
    ds = DetectionDataset(
        images, boxes, classes, meta, sizes, [str(image) for image, _ in used], list(names)
    )
    ds.report = report
    return ds


def _check_class_ids(labels: Labels, names: list[str]) -> None:
    """Set ``labels.error`` (unless it has one) at the first class id without a name."""
    if labels.error is None and (labels.classes >= len(names)).any():
        k = int(np.argmax(labels.classes >= len(names)))
        plural = "class" if len(names) == 1 else "classes"
        labels.error = (
            f"{labels.path}:{labels.lines[k]}: class id {labels.classes[k]} but"
            f" only {len(names)} {plural} named"
        )


def _skip(report: SplitReport, reason: str, strict: bool) -> None:
    """Leave an image out and say why in ``report``; with ``strict`` refuse the data instead."""
    if strict:
        raise DataError(reason)
    report.skipped += 1
    report.reasons.append(reason)


def _decode_all(
    paths: list[Path], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """``_decode`` every image in threads -> images uint8 (N, S, S, 3), original sizes int32
    (N, 2) ``width, height``, letterbox params float32 (N, 3), and per image None or why it
    cannot be read (its rows are then left unset)."""
    images = np.empty((len(paths), size, size, 3), np.uint8)
    meta = np.zeros((len(paths), 3), np.float32)
    sizes = np.zeros((len(paths), 2), np.int32)

    def work(k: int) -> str | None:
        try:
            images[k], sizes[k], meta[k] = _decode(paths[k], size)
        except Exception as e:  # PIL raises many kinds for broken files
            return f"{paths[k]}: cannot read image: {type(e).__name__}: {e}"
        return None

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        errors = list(pool.map(work, range(len(paths))))
    return images, sizes, meta, errors
