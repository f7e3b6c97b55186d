"""benchmarks/holdout.py: the held-out test block is the last frames by number, contiguous,
apart from training by the gap, and the written data.yaml loads with those splits."""

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from benchmark_modules import load_benchmark
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


holdout = load_benchmark("holdout")


def _frames(folder: Path, numbers: Iterable[int]) -> None:
    folder.mkdir(parents=True)
    for n in numbers:
        Image.fromarray(np.full((40, 60, 3), n % 255, np.uint8)).save(folder / f"frame_{n:06d}.jpg")
        (folder / f"frame_{n:06d}.txt").write_text("0 0.5 0.5 0.4 0.4\n")


def test_split_is_the_last_block_by_frame_number() -> None:
    # out of order on disk, with numbers of different widths
    images = [Path(f"frame_{n}.jpg") for n in (7, 100, 3, 12, 45, 9, 60, 2, 80, 31)]
    train, dropped, test = holdout.split_frames(images, 0.3, gap=2)
    assert [holdout.frame_number(p) for p in test] == [60, 80, 100]
    assert [holdout.frame_number(p) for p in dropped] == [31, 45]
    assert [holdout.frame_number(p) for p in train] == [2, 3, 7, 9, 12]
    with pytest.raises(ValueError, match="none to train on"):
        holdout.split_frames(images, 0.9, gap=2)
    with pytest.raises(ValueError, match="no frame number"):
        holdout.frame_number(Path("cow.jpg"))


def test_written_data_yaml_trains_without_the_held_out_frames(tmp_path: Path) -> None:
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.data import load_datasets

    data = tmp_path / "video"
    _frames(data / "train", range(1, 21))
    _frames(data / "val", (5, 15))
    (data / "classes.txt").write_text("Cow\n")
    summary = holdout.write_holdout(data, tmp_path / "out", fraction=0.2, gap=1)
    assert (summary["train"], summary["dropped"], summary["test"]) == (15, 1, 4)
    assert summary["test_frames"] == [17, 20]
    ds = load_datasets(TrainConfig(data=summary["data_yaml"], imgsz=64), verbose=False)
    assert ds.test is not None
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 2, 4)
    assert ds.names == ["Cow"]
    assert not list((tmp_path / "out").glob("*.jpg"))  # nothing copied
