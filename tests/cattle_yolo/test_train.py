"""End-to-end behaviour of the training driver on tiny synthetic data."""

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import nan_loss, tiny_config

from cattle_yolo import stats as S
from cattle_yolo.checkpoint import load_checkpoint
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import Datasets, load_datasets
from cattle_yolo.loss import DetectionLoss
from cattle_yolo.model import CattleYOLO
from cattle_yolo.stats import EpochStats
from cattle_yolo.train import DivergedError, train


class Interrupt(Exception):
    pass


def test_outputs_layout_and_metrics(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=2)
    seen: list[EpochStats] = []
    result = train(cfg, callbacks=[seen.append])
    out = tmp_path / "run"
    assert [s[S.EPOCH] for s in seen] == [1, 2]
    for key in (
        S.TRAIN_LOSS,
        S.TRAIN_BOX,
        S.TRAIN_CLS,
        S.TRAIN_DFL,
        S.LR,
        S.VAL_LOSS,
        S.MAP50,
        S.MAP50_95,
        S.PRECISION,
        S.RECALL,
        S.F1_AT_THRESHOLD,
        S.BEST_F1,
        S.EPOCH_TIME,
        S.IMAGES_PER_SEC,
    ):
        assert key in seen[-1], key
    assert (out / "models" / "last.pt").is_file()
    assert (out / "models" / "best.pt").is_file()
    assert TrainConfig.load(out / "config.yaml") == cfg
    rows = list(csv.DictReader((out / "metrics" / "training_metrics.csv").open()))
    assert [int(r[S.EPOCH]) for r in rows] == [1, 2]
    lines = (out / "metrics" / "training_metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])[S.EPOCH] == 2
    log = (out / "logs" / "train.log").read_text()
    assert log.count("mAP50=") == 2
    assert result["epochs_run"] == 2
    assert result["out"] == str(out)


def test_seeded_cpu_runs_repeat_exactly(tmp_path: Path) -> None:
    a = train(tiny_config(tmp_path / "a", epochs=1))["last"]
    b = train(tiny_config(tmp_path / "b", epochs=1))["last"]
    assert a[S.TRAIN_LOSS] == b[S.TRAIN_LOSS]
    assert a[S.MAP50_95] == b[S.MAP50_95]


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = train(tiny_config(tmp_path / "full"))

    cfg = tiny_config(tmp_path / "cut")

    def stop_after_two(stats: EpochStats) -> None:
        if stats[S.EPOCH] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, callbacks=[stop_after_two])
    resumed = train(cfg, resume_from=tmp_path / "cut" / "run" / "models" / "last.pt")
    assert resumed["epochs_run"] == 1
    for key in (S.TRAIN_LOSS, S.VAL_LOSS, S.MAP50_95):
        assert resumed["last"][key] == full["last"][key], key
    a = load_checkpoint(tmp_path / "full" / "run" / "models" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "run" / "models" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg)
    with pytest.raises(ValueError, match="different 'lr'"):
        train(cfg.replace(lr=0.5), resume_from=tmp_path / "run" / "models" / "last.pt")


def test_non_finite_loss_raises_diverged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DetectionLoss, "forward", nan_loss)
    with pytest.raises(DivergedError, match="epoch 1"):
        train(tiny_config(tmp_path))


def test_non_finite_outputs_on_validation_raise_diverged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation of a blown-up model ends the run as diverged, with the reason, instead
    of crashing (an lr of 3-10 errored 3 of 3 search trials in evaluate's val loss)."""
    forward = CattleYOLO.forward

    def nan_in_eval(self: CattleYOLO, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = forward(self, images)
        if not self.training:
            out = {k: v * float("nan") if k in ("boxes", "dist") else v for k, v in out.items()}
        return out

    monkeypatch.setattr(CattleYOLO, "forward", nan_in_eval)
    with pytest.raises(DivergedError, match="epoch 1: non-finite model outputs on validation"):
        train(tiny_config(tmp_path))
    assert not (tmp_path / "run" / "models" / "best.pt").exists()


@pytest.mark.slow
def test_overfit_a_few_images(tmp_path: Path) -> None:
    """A few images, a hundred steps: val mAP50 ends above 0.5 from about 0 at the first epoch.
    (The loss is no measure under task-aligned targets: it grows with the target scores, which
    are the IoUs of the predicted boxes.)"""
    cfg = tiny_config(
        tmp_path,
        imgsz=128,
        neck_channels=32,
        epochs=100,
        warmup_epochs=3,
        fliplr=0.0,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.0,
        scale=0.0,
        translate=0.0,
        mosaic=0.0,
        lr=6e-3,
        iou_start=0.1,
        iou_end=0.3,
        iou_ramp_epochs=30,
        ema_decay=0.0,
    )
    full = load_datasets(cfg)
    few = full.train.subset(range(4))  # one batch: 100 epochs are 100 optimizer steps
    data = Datasets(train=few, val=few, test=None, names=full.names, name="overfit")
    history: list[EpochStats] = []
    train(cfg, datasets=data, callbacks=[history.append])
    assert all(math.isfinite(h[S.TRAIN_LOSS]) for h in history)
    # one batch per epoch: the epoch's first step is the whole epoch
    assert all(h[S.FIRST_STEP_LOSS] == h[S.TRAIN_LOSS] for h in history)
    assert history[0][S.MAP50] < 0.2
    assert history[-1][S.MAP50] > 0.6, [round(h[S.MAP50], 3) for h in history[::10]]


def test_metrics_csv_keeps_its_columns_when_a_resumed_run_logs_more_keys(tmp_path: Path) -> None:
    from cattle_yolo.train import _append_metrics

    (tmp_path / "metrics").mkdir()
    _append_metrics(tmp_path, {S.EPOCH: 1, S.TRAIN_LOSS: 2.0, "out": "x"})
    _append_metrics(tmp_path, {S.EPOCH: 2, S.TRAIN_LOSS: 1.5, S.FIRST_STEP_LOSS: 3.0})
    rows = (tmp_path / "metrics" / "training_metrics.csv").read_text().splitlines()
    assert rows == ["epoch,train_loss", "1,2.0", "2,1.5"]


def test_best_pt_follows_best_by(tmp_path: Path) -> None:
    """The search passes its metric: best.pt is the best epoch by it, so the export's epoch and
    checkpoint agree (they disagreed under --metric F1 or val_loss: best.pt was by mAP50-95)."""
    result = train(tiny_config(tmp_path), best_by=(S.VAL_LOSS, "min"))
    rows = [json.loads(line) for line in (tmp_path / "run/metrics/training_metrics.jsonl").open()]
    want = min(rows, key=lambda r: (r[S.VAL_LOSS], r[S.EPOCH]))[S.EPOCH]
    assert result["best_epoch"] == want == rows[-1][S.BEST_EPOCH]
    assert load_checkpoint(tmp_path / "run/models/best.pt")["epoch"] == want


def test_a_bf16_run_records_its_precision_and_its_checkpoint_evaluates_in_fp32(
    tmp_path: Path,
) -> None:
    """amp=bf16 trains the model's forward in bf16 (on any CPU); config.yaml and every epoch's
    stats say so, and best.pt loads and evaluates in fp32 (amp=off) to nearly the same loss."""
    import yaml

    from cattle_yolo.checkpoint import load_trained
    from cattle_yolo.data import make_loader
    from cattle_yolo.evaluate import evaluate

    cfg = tiny_config(tmp_path, amp="bf16", epochs=2)
    train(cfg)
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["amp"] == "bf16"
    rows = [json.loads(line) for line in (run / "metrics/training_metrics.jsonl").open()]
    assert [r[S.AMP] for r in rows] == ["bf16", "bf16"]
    assert "in bf16" in (run / "logs/train.log").read_text()

    cpu = torch.device("cpu")
    datasets = load_datasets(cfg)
    loader = make_loader(datasets.val, cfg, train=False)
    results: dict[str, dict[str, float]] = {}
    for amp in ("bf16", "off"):
        model, loaded, names = load_trained(run / "models/best.pt", cpu, [f"amp={amp}"])
        assert loaded.amp == amp
        loss_fn = DetectionLoss(loaded, len(names))
        results[amp] = evaluate(model, loader, loss_fn, loaded, cpu, 2.0)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert math.isfinite(results["off"][S.VAL_LOSS])
    assert results["off"][S.VAL_LOSS] == pytest.approx(results["bf16"][S.VAL_LOSS], rel=0.05)
    best = rows[rows[-1][S.BEST_EPOCH] - 1]  # best.pt's epoch, evaluated as training did
    assert best[S.VAL_LOSS] == pytest.approx(results["bf16"][S.VAL_LOSS], rel=1e-4)


def test_a_disk_that_fills_mid_checkpoint_keeps_the_last_one_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills while epoch 2's last.pt is written: the CLI exits 2 naming the file and
    the full disk, epoch 1's last.pt is intact, and once there is room the run resumes from it."""
    import shutil

    from builders import TINY

    from cattle_yolo import cli

    saves: list[Path] = []  # the files torch.save was asked to write (save_checkpoint's temps)
    save = torch.save
    usage = shutil.disk_usage(tmp_path)

    def fill_on_third(obj: object, f: Path, *args: Any, **kwargs: Any) -> None:
        saves.append(f)
        if len(saves) == 3:  # epoch 1 wrote last.pt and best.pt; epoch 2's last.pt fails
            monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=0))
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_on_third)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *(f"{k}={v}" for k, v in TINY.items())]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    # the error line, not a traceback of the failure (in-process, a logging handler an earlier
    # test left on a closed capture stream may print its own)
    assert err.splitlines()[-1].startswith("error: [Errno 28]")
    assert "last.pt: the disk filled while writing it" in err
    assert "RuntimeError" not in err
    assert "DiskFullError" not in err
    assert load_checkpoint(out / "models" / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in (out / "models").iterdir()) == ["best.pt", "last.pt"]

    monkeypatch.setattr(torch, "save", save)  # space was freed
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage)
    assert cli.main([*argv, "--resume"]) == 0
    assert load_checkpoint(out / "models" / "last.pt")["epoch"] == TINY["epochs"]


def test_the_f1_sweep_stays_in_the_range_it_is_told(tmp_path: Path) -> None:
    """A search's post-hoc threshold range reaches the evaluation: every epoch's F1-best
    threshold lies inside it (and the trial reads it from there, re-scoring nothing)."""
    train(tiny_config(tmp_path, epochs=2, lr=0.01), threshold_range=(0.3, 0.4))
    rows = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics" / "training_metrics.jsonl").open()
    ]
    assert len(rows) == 2
    thresholds = [r[S.BEST_F1_THRESHOLD] for r in rows]
    assert all(0.3 <= t <= 0.4 for t in thresholds), thresholds
