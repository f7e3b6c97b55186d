"""benchmarks/holdout.py: the held-out test block is the last frames by number, contiguous,
apart from training by the gap, and the written data.yaml loads with those splits."""

import argparse
import json
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


def test_score_evaluates_each_confirmation_run_and_weighs_the_gain(tmp_path: Path) -> None:
    """Two tiny runs filed as a confirmation (the default, and a config 'best' on two seeds
    that share one checkpoint): each run's val and test figures are those `evaluate` gives
    its best.pt, and the summary's means, sds and verdict follow from them."""
    import torch

    from cattle_yolo import stats as S
    from cattle_yolo.checkpoint import load_trained
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.data import load_datasets, make_loader
    from cattle_yolo.evaluate import evaluate
    from cattle_yolo.loss import DetectionLoss
    from cattle_yolo.train import train

    paths = {}
    for name, lr in (("default", 1e-3), ("best", 3e-3)):
        cfg = TrainConfig(
            imgsz=64,
            neck_channels=16,
            synthetic_images=8,
            batch=4,
            accumulate=1,
            epochs=1,
            warmup_epochs=1.0,
            amp="off",
            lr=lr,
            out=str(tmp_path / name / "run"),
        )
        train(cfg)
        paths[name] = tmp_path / name
    table = tmp_path / "confirm.csv"
    rows = [
        ("default", 1, paths["default"]),
        ("best", 1, paths["best"]),
        ("best", 2, paths["best"]),
        ("best", 3, tmp_path / "errored"),  # not completed: no data point, no weights needed
    ]
    with table.open("w") as f:
        f.write("config,lr,seed,objective,status,path\n")
        for i, (config, seed, path) in enumerate(rows):
            status = "errored" if i == 3 else "completed"
            f.write(f"{config},0.001,{seed},0.5,{status},{path}\n")

    args = argparse.Namespace(confirm=str(table), data=None, json=str(tmp_path / "s.json"))
    doc = holdout.score_command(args)
    assert [(r["config"], r["seed"]) for r in doc["runs"]] == [
        ("default", 1),
        ("best", 1),
        ("best", 2),
    ]
    for r in doc["runs"]:
        model, cfg, names = load_trained(r["weights"], torch.device("cpu"))
        datasets = load_datasets(cfg, verbose=False)
        for split in ("val", "test"):
            loader = make_loader(getattr(datasets, split), cfg, train=False)
            want = evaluate(model, loader, DetectionLoss(cfg, 2), cfg, torch.device("cpu"), 1)
            assert r[split] == pytest.approx(want[S.MAP50_95])
    best, default = doc["configs"]["best"], doc["configs"]["default"]
    assert best["seeds"] == [1, 2]
    assert best["test_sd"] == pytest.approx(0.0)  # one checkpoint twice
    assert default["val_sd"] == 0.0  # one seed: no spread
    gain = best["test_mean"] - default["test_mean"]
    v = doc["verdict"]
    assert v["config"] == "best"
    assert v["test_gain"] == pytest.approx(gain)
    assert v["word"] == ("beats" if gain > 0 else "loses to" if gain < 0 else "ties")
    assert json.loads((tmp_path / "s.json").read_text())["verdict"]["word"] == v["word"]

    (paths["best"] / "run" / "models" / "best.pt").unlink()
    with pytest.raises(SystemExit):
        holdout.score_command(args)
