"""Builders the tests of several modules share: label files and labelImg datasets on disk, a tiny
in-memory ``DetectionDataset``, the tiny training config and a loss that diverges.

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from cattle_yolo.config import TrainConfig
from cattle_yolo.data import Datasets, DetectionDataset, load_datasets
from cattle_yolo.loss import DetectionLoss

# --- datasets on disk -------------------------------------------------------------------------

GOOD = "0 0.5 0.5 0.25 0.5\n"


def save_image(
    path: Path, w: int = 64, h: int = 48, colour: tuple[int, int, int] = (90, 140, 60)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)
    return path


def labelimg(root: Path, split: str, labels: dict[str, str | None]) -> dict[str, Path]:
    """labelImg layout: ``root/split/name.jpg`` with ``name.txt`` beside it (None: no label)."""
    paths: dict[str, Path] = {}
    for name, text in labels.items():
        paths[name] = save_image(root / split / f"{name}.jpg")
        if text is not None:
            (root / split / f"{name}.txt").write_text(text)
    return paths


def dataset(
    tmp_path: Path, train: dict[str, str | None], names: tuple[str, ...] = ("cow", "calf")
) -> Path:
    root = tmp_path / "ds"
    labelimg(root, "train", train)
    labelimg(root, "val", {"v": GOOD})
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def load(root: Path, **overrides: Any) -> Datasets:
    return load_datasets(TrainConfig(data=str(root), imgsz=64, **overrides))


# --- a dataset in memory ----------------------------------------------------------------------


def tiny_dataset(n: int = 6, size: int = 64) -> DetectionDataset:
    """Gray images, each with a white square and its box (pixel xyxy), classes alternating."""
    images = np.full((n, size, size, 3), 40, np.uint8)
    boxes = []
    for i in range(n):
        x, y = 8 + 3 * i, 12 + 2 * i
        images[i, y : y + 24, x : x + 16] = 255
        boxes.append(np.array([[x, y, x + 16, y + 24]], np.float32))
    labels = [np.array([i % 2]) for i in range(n)]
    lb = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (n, 1))
    sizes = np.full((n, 2), size, np.int32)
    return DetectionDataset(
        images, boxes, labels, lb, sizes, [f"{i}.png" for i in range(n)], ["a", "b"]
    )


# --- training ---------------------------------------------------------------------------------

TINY: dict[str, Any] = {
    "amp": "off",  # fp32 whatever the CPU has: the same trajectories on every machine
    "imgsz": 64,
    "neck_channels": 16,
    "synthetic_images": 8,
    "batch": 4,
    "accumulate": 1,
    "epochs": 3,
    "warmup_epochs": 1.0,
    "device": "cpu",
}


def tiny_config(tmp_path: Path, **changes: Any) -> TrainConfig:
    """The ``TINY`` config writing its run to ``tmp_path / "run"``."""
    return TrainConfig.load(None, {**TINY, "out": str(tmp_path / "run"), **changes})


def nan_loss(
    self: DetectionLoss, outputs: dict[str, Tensor], targets: Tensor, epoch: float
) -> dict[str, Tensor]:
    """A ``DetectionLoss.forward`` whose every term is NaN (monkeypatch it in to diverge)."""
    nan = outputs["cls"].sum() * float("nan")
    return {"box": nan, "cls": nan, "dfl": nan, "total": nan, "num_pos": nan}
