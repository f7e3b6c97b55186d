"""A test split no choice was made on: the last frames of a video dataset's train/, held out.

Consecutive frames of one video are near-duplicates, so a random split leaks: a test frame's
neighbour is in training. This writes an Ultralytics ``data.yaml`` (and two image lists) that
train on the first frames of ``train/`` by frame number, hold out the last ``--fraction`` of
them as ``test`` as one contiguous block, and drop ``--gap`` frames between the two so that
the boundary frames are not near-duplicates across the split. ``val/`` stays the dataset's own.
No image is copied: the lists name the dataset's files.

    python benchmarks/holdout.py --data ../shared/data/cattle-chute --out outputs/holdout
    python -m cattle_yolo train --data outputs/holdout/data.yaml ...
    python -m cattle_yolo evaluate --weights best.pt --data outputs/holdout/data.yaml --split test
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from cattle_yolo.sources import IMAGE_SUFFIXES, classes_txt  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cattle-chute"


def frame_number(path: Path) -> int:
    """The last number in a file's stem (``frame_000490.jpg`` -> 490)."""
    found = re.findall(r"\d+", path.stem)
    if not found:
        raise ValueError(f"{path}: no frame number in the file name")
    return int(found[-1])


def split_frames(
    images: list[Path], fraction: float, gap: int
) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, dropped, test) by frame number: test is the last ``fraction`` of the frames,
    the ``gap`` frames before it are dropped, the rest train."""
    if not 0 < fraction < 1:
        raise ValueError(f"--fraction {fraction}: must be in (0, 1)")
    ordered = sorted(images, key=frame_number)
    n_test = max(1, round(fraction * len(ordered)))
    cut = len(ordered) - n_test
    start = max(0, cut - gap)
    if start < 1:
        raise ValueError(f"{len(ordered)} frames leave none to train on")
    return ordered[:start], ordered[start:cut], ordered[cut:]


def write_holdout(data: Path, out: Path, fraction: float = 0.15, gap: int = 10) -> dict[str, Any]:
    """Write ``out/data.yaml``, ``out/train.txt`` and ``out/test.txt``; returns a summary."""
    train_dir, val_dir = data / "train", data / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise ValueError(f"{data}: expected train/ and val/ folders")
    images = [p for p in train_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    train, dropped, test = split_frames(images, fraction, gap)
    out.mkdir(parents=True, exist_ok=True)
    for name, files in (("train.txt", train), ("test.txt", test)):
        (out / name).write_text("".join(f"{p.resolve()}\n" for p in files))
    names = classes_txt([train_dir, val_dir, data])
    doc = {
        "path": str(out.resolve()),
        "train": "train.txt",
        "val": str(val_dir.resolve()),
        "test": "test.txt",
        **({"names": names} if names else {}),
    }
    (out / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return {
        "train": len(train),
        "dropped": len(dropped),
        "test": len(test),
        "train_frames": [frame_number(train[0]), frame_number(train[-1])],
        "test_frames": [frame_number(test[0]), frame_number(test[-1])],
        "data_yaml": str(out / "data.yaml"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a folder with train/ and val/")
    p.add_argument("--out", default=str(REPO / "outputs" / "holdout"), help="where to write")
    p.add_argument("--fraction", type=float, default=0.15, help="share of train/ held out")
    p.add_argument("--gap", type=int, default=10, help="frames dropped between train and test")
    args = p.parse_args(argv)
    try:
        summary = write_holdout(Path(args.data), Path(args.out), args.fraction, args.gap)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"train {summary['train']} frames ({summary['train_frames'][0]}-"
        f"{summary['train_frames'][1]}), {summary['dropped']} dropped, test {summary['test']} "
        f"frames ({summary['test_frames'][0]}-{summary['test_frames'][1]}): "
        f"{summary['data_yaml']}"
    )


if __name__ == "__main__":
    main()
