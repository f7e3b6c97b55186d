"""Sources: find a dataset's splits, images and YOLO label files, and parse and check the labels.

Input is an Ultralytics ``data.yaml`` (``path``, ``train``, ``val``, optional ``test``: each a
folder, a ``.txt`` list of images or a list of those; ``names`` as a list or dict, or ``nc``), or a
folder with ``train/`` and ``val/`` (optional ``test/``), or ``images/train`` and ``images/val``.
An image's label is ``.../labels/...txt`` for ``.../images/...`` (Ultralytics) or the ``.txt``
beside it (labelImg). Class names come from the yaml, else ``classes.txt`` (in a split folder or
the dataset root), else they are numbered.

Labels are YOLO lines ``class cx cy w h``, normalized to [0, 1] in the original image; a parsed
file holds normalized ``x1 y1 x2 y2`` boxes (``boxes.py`` holds the conversions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cattle_yolo.boxes import cxcywh_to_xyxy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# A box whose centre or size lies outside [0, 1] may still have its edges this far outside
# [0, 1] (rounding); they are clipped. One with centre and size inside is always clipped.
COORD_TOLERANCE = 0.01
# The largest class id a label may carry: ids above it are typos or corruption (1e30 would
# wrap to a negative int64, and numbered class names would need that many entries).
MAX_CLASS_ID = 100_000
MIN_BOX_SIZE = 1e-6  # narrower normalized boxes collapse to no area in float32


class DataError(Exception):
    """The data cannot be used; the message names the file (and line) at fault. CLI exit code 2."""


def resolve(source: Path) -> tuple[dict[str, list[Path]], list[str] | None, str, list[Path]]:
    """-> split sources {split: [folder or list file]}, yaml names, dataset name, classes.txt
    dirs."""
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
        raise DataError(
            f"{source}: expected train/ and val/ folders (or images/train, images/val)"
            " or a data.yaml"
        )
    dirs = [*splits["train"], *splits["val"]]
    return splits, None, source.name, [*dirs, *map(_labels_dir, dirs), source]


def _resolve_yaml(path: Path) -> tuple[dict[str, list[Path]], list[str] | None, str, list[Path]]:
    data = _read_yaml(path)
    base = data.get("path") or "."
    if not isinstance(base, str):
        raise DataError(f"{path}: path must be a folder, got {base!r}")
    root = Path(base)
    root = root if root.is_absolute() else path.parent / root
    splits = _yaml_splits(path, data, root)
    names = _yaml_names(path, data.get("names"), data.get("nc"))
    name = path.parent.name if path.stem == "data" else path.stem
    dirs = [d for split in ("train", "val") for d in splits[split] if d.is_dir()]
    dirs += [_labels_dir(d) for d in dirs]
    return splits, names, name, [*dirs, root]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with train, val and names")
    return data


def _yaml_splits(path: Path, data: dict[str, Any], root: Path) -> dict[str, list[Path]]:
    """A data.yaml's ``train``, ``val`` and optional ``test``: each a folder or image list
    relative to ``root`` (an absolute entry stays absolute), or a list of those."""
    splits = {}
    for split in ("train", "val", "test"):
        entry = data.get(split)
        if entry in (None, "", []):
            if split != "test":
                raise DataError(f"{path}: no '{split}' entry")
            continue
        entries = entry if isinstance(entry, list) else [entry]
        for item in entries:
            if not isinstance(item, str):
                raise DataError(f"{path}: {split} must name folders or image lists, got {item!r}")
            if not (root / item).exists():  # an absolute entry stays absolute
                raise DataError(f"{path}: {split}: {root / item} does not exist")
        splits[split] = [root / item for item in entries]
    return splits


def _yaml_names(path: Path, names: Any, nc: Any) -> list[str] | None:
    """A data.yaml's class names from ``names`` (a list, or a dict keyed 0..n-1) and ``nc``
    (numbered names when alone); None when it gives neither."""
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
    return None if names is None else [str(n) for n in names]


def image_files(sources: list[Path]) -> list[Path]:
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


def label_path(image: Path) -> Path | None:
    """An image's label file, or None (a background image). Something that exists there but is
    no file (a folder, a dangling link) is returned too, so that reading it fails by name
    instead of the image silently becoming a background."""
    for candidate in (_labels_dir(image).with_suffix(".txt"), image.with_suffix(".txt")):
        if candidate.is_file() or candidate.is_symlink() or candidate.exists():
            return candidate
    return None


def classes_txt(dirs: list[Path]) -> list[str] | None:
    for d in dirs:
        if (d / "classes.txt").is_file():
            text = (d / "classes.txt").read_text(encoding="utf-8-sig")
            names = [n.strip() for n in text.splitlines() if n.strip()]
            if names:
                return names
    return None


@dataclass
class Labels:
    """One parsed label file: ``classes`` int64 (M,), ``xyxy`` float32 (M, 4) normalized and
    clipped, ``lines`` (M,) 1-based line numbers; or ``error`` (``file:line: reason``)."""

    path: Path | None
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    duplicates: int = 0
    clipped: int = 0
    error: str | None = None


class _BadLine(Exception):
    """A label line that cannot be used; the message says why (``parse_labels`` adds where)."""


def parse_labels(path: Path | None) -> Labels:
    """Parse and check a YOLO label file; the first bad line makes ``error``. None: background."""
    if path is None:
        return Labels(None)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return Labels(path, error=f"{path}: cannot read label file: {e}")
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            rows.append(_parse_line(fields))
        except _BadLine as e:
            return Labels(path, error=f"{path}:{n}: {e}")
        lines.append(n)
    if not rows:
        return Labels(path)
    table = np.array(rows, np.float64)
    _, first = np.unique(table, axis=0, return_index=True)
    keep = np.sort(first)  # first occurrences, in file order
    boxes = table[keep, 1:]
    clipped = int(((boxes < -1e-5) | (boxes > 1 + 1e-5)).any(axis=1).sum())  # not rounding
    return Labels(
        path,
        table[keep, 0].astype(np.int64),
        np.clip(boxes, 0, 1).astype(np.float32),
        np.array(lines)[keep],
        len(table) - len(keep),
        clipped,
    )


def _parse_line(fields: list[str]) -> list[float]:
    """One label line's fields ``class cx cy w h`` -> ``[class, x1, y1, x2, y2]`` normalized;
    raises ``_BadLine``."""
    if len(fields) != 5:
        raise _BadLine(f"expected 5 fields (class cx cy w h), got {len(fields)}")
    bad = [v for v in fields if not _is_number(v)]
    if bad:
        raise _BadLine(f"{bad[0]!r} is not a number")
    values = [float(v) for v in fields]
    if not all(math.isfinite(v) for v in values):
        raise _BadLine("not a finite number")
    cls, cx, cy, w, h = values
    if cls != int(cls) or cls < 0:
        raise _BadLine(f"class id {fields[0]} is not a non-negative integer")
    if cls > MAX_CLASS_ID:
        raise _BadLine(f"class id {fields[0]} is above {MAX_CLASS_ID}")
    return [cls, *_check_box(cx, cy, w, h)]


def _check_box(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """A normalized ``cx cy w h`` box -> ``x1 y1 x2 y2`` (float64, edges not yet clipped);
    raises ``_BadLine`` for one that is empty, too small or outside the image."""
    if w <= 0 or h <= 0:
        raise _BadLine(f"non-positive width or height (w={w:g}, h={h:g})")
    if min(w, h) < MIN_BOX_SIZE:  # below float32's resolution of an edge near 1
        raise _BadLine(f"box too small to be seen (w={w:g}, h={h:g})")
    box = cxcywh_to_xyxy(np.array([cx, cy, w, h]))
    # As Ultralytics reads labels: a centre and size inside [0, 1] make a valid box even
    # when an edge runs past the border (y2 = 1.05); it is clipped and counted as clipped.
    inside = 0 <= cx <= 1 and 0 <= cy <= 1 and w <= 1 and h <= 1
    for edge, v in zip(("x1", "y1", "x2", "y2"), box, strict=True):
        if not inside and not -COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE:
            raise _BadLine(
                f"box edge {edge} = {v:.4f} is outside [0, 1]"
                f" beyond the {COORD_TOLERANCE:.0%} tolerance"
            )
    if box[0] >= 1 or box[1] >= 1 or box[2] <= 0 or box[3] <= 0:
        raise _BadLine("box lies outside the image")
    return box


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
