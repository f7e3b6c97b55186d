"""The synthetic cattle generator: determinism, layout, class balance, box sizes and the cache."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from cattle_yolo import synthetic
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import load_datasets
from cattle_yolo.synthetic import default_dataset, generate


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def labels(root: Path, split: str = "train") -> list[np.ndarray]:
    out = []
    for path in sorted((root / "labels" / split).glob("*.txt")):
        out.append(np.loadtxt(path, ndmin=2))
    return out


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = files(generate(tmp_path / "a", 3, 2, 1, imgsz=128, seed=5))
    b = files(generate(tmp_path / "b", 3, 2, 1, imgsz=128, seed=5))
    assert a == b
    assert len(a) == 2 * (3 + 2 + 1) + 1
    c = files(generate(tmp_path / "c", 4, 1, 0, imgsz=128, seed=5))  # other split sizes
    assert all(c[k] == a[k] for k in a if k.startswith(("images/train/", "labels/train/")))
    d = files(generate(tmp_path / "d", 3, 2, 1, imgsz=128, seed=6))
    assert d["labels/train/000000.txt"] != a["labels/train/000000.txt"]


def test_layout_and_data_yaml_load_cleanly(tmp_path: Path) -> None:
    root = generate(tmp_path / "synth", 4, 2, 0, imgsz=128, seed=1)
    meta = yaml.safe_load((root / "data.yaml").read_text())
    assert meta == {"train": "images/train", "val": "images/val", "names": ["cow", "calf"]}
    assert sorted(p.name for p in (root / "images" / "train").iterdir())[0] == "000000.jpg"
    data = load_datasets(TrainConfig(data=str(root), imgsz=128, strict=True), verbose=False)
    assert data.names == ["cow", "calf"]
    assert data.name == "synth"
    assert data.test is None
    assert len(data.train) == 4
    assert len(data.val) == 2
    assert max(data.train.orig_sizes.max(axis=1)) == 128  # imgsz is the long side


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_val = 0 must be >= 1"):
        generate(tmp_path, 2, 0, 0)
    with pytest.raises(ValueError, match="imgsz = 16"):
        generate(tmp_path, 2, 1, 0, imgsz=16)


def test_class_balance_counts_and_box_sizes(tmp_path: Path) -> None:
    rows = labels(generate(tmp_path / "stats", 150, 1, 0, imgsz=192, seed=0))
    counts = np.array([len(r) for r in rows])
    assert counts.min() >= 1
    assert counts.max() <= 8
    assert counts.mean() > 3
    table = np.concatenate(rows)
    cls, w, h = table[:, 0], table[:, 3], table[:, 4]
    assert set(np.unique(cls)) == {0, 1}
    assert 0.05 < cls.mean() < 0.14  # about 10 cows to a calf
    assert 0.10 < w.mean() < 0.15
    assert 0.18 < h.mean() < 0.25
    assert (w * h)[cls == 1].mean() < 0.6 * (w * h)[cls == 0].mean()  # calves are smaller
    x1, y1 = table[:, 1] - w / 2, table[:, 2] - h / 2
    x2, y2 = table[:, 1] + w / 2, table[:, 2] + h / 2
    assert (x1 >= -1e-5).all()
    assert (y1 >= -1e-5).all()
    assert (x2 <= 1 + 1e-5).all()
    assert (y2 <= 1 + 1e-5).all()
    assert (w > 0).all()
    assert (h > 0).all()


def test_default_dataset_is_cached_and_loads_as_synthetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATTLE_YOLO_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(synthetic_images=4, imgsz=64)
    root = default_dataset(cfg)
    assert root.parent == tmp_path / "cache"
    assert root.name.endswith("-seed0-4-1-1")
    stamp = (root / "data.yaml").stat().st_mtime_ns
    assert default_dataset(cfg) == root
    assert (root / "data.yaml").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]
    data = load_datasets(cfg, verbose=False)
    assert data.name == "synthetic"
    assert data.names == ["cow", "calf"]
    assert data.test is not None
    assert (len(data.train), len(data.val), len(data.test)) == (4, 1, 1)


def test_concurrent_builders_share_one_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATTLE_YOLO_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(synthetic_images=8)
    with ThreadPoolExecutor(3) as pool:
        roots = list(pool.map(lambda _: default_dataset(cfg), range(3)))
    assert len(set(roots)) == 1
    assert (roots[0] / "data.yaml").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [roots[0].name]


def test_losing_the_rename_race_uses_the_winners_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATTLE_YOLO_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(synthetic_images=4)
    real = synthetic.generate

    def generate_then_lose(root: str | Path, *args: int, **kwargs: int) -> Path:
        out = real(root, *args, **kwargs)
        real(synthetic.cache_root() / "synthetic-v1-seed0-4-1-1", *args, **kwargs)  # the winner
        return out

    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", 1)
    monkeypatch.setattr(synthetic, "generate", generate_then_lose)
    root = default_dataset(cfg)
    assert root.name == "synthetic-v1-seed0-4-1-1"
    assert (root / "data.yaml").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]
