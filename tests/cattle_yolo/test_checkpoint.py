"""The checkpoint format: atomic save, load errors, the inference checkpoint, load_trained."""

from pathlib import Path

import pytest
import torch

from cattle_yolo import stats as S
from cattle_yolo.checkpoint import (
    CheckpointError,
    inference_checkpoint,
    load_checkpoint,
    load_trained,
    save_checkpoint,
    training_state,
)
from cattle_yolo.config import TrainConfig
from cattle_yolo.engine import ModelEMA, Trainer
from cattle_yolo.model import CattleYOLO


def test_checkpoint_round_trip_and_torn_file(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "config": {"lr": 0.1}}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 4
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="torn.pt"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_inference_checkpoint_keeps_the_ema_weights_and_drops_the_optimizer(
    tmp_path: Path,
) -> None:
    model = torch.nn.Linear(3, 2)
    ema_weights = {k: v + 1 for k, v in model.state_dict().items()}
    ema = {"module": ema_weights, "updates": 5}
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "ema": ema,
        "optimizer": opt.state_dict(),
        "scaler": {},
        "rng": {"torch": torch.get_rng_state()},
        "epoch": 3,
        "best_fitness": 0.5,
        "best_epoch": 3,
        "config": {"lr": 0.001},
        "names": ["cow"],
        "metrics": {S.MAP50_95: 0.5},
    }
    save_checkpoint(state, tmp_path / "last.pt")
    save_checkpoint(inference_checkpoint(state), tmp_path / "best.pt")
    best = load_checkpoint(tmp_path / "best.pt")
    assert set(best) == {
        "model",
        "ema",
        "config",
        "names",
        "epoch",
        "best_fitness",
        "best_epoch",
        "metrics",
    }
    assert best["ema"] is None
    assert best["epoch"] == 3
    assert best["names"] == ["cow"]
    for k, v in ema_weights.items():  # the EMA weights, not the raw model's
        assert torch.equal(best["model"][k], v)
    size = (tmp_path / "best.pt").stat().st_size
    assert size < 0.6 * (tmp_path / "last.pt").stat().st_size


def test_load_trained_builds_the_model_with_the_ema_weights_from_either_kind(
    tmp_path: Path,
) -> None:
    cfg = TrainConfig(imgsz=64, neck_channels=16, pretrained=False, score_threshold=0.4)
    model = CattleYOLO(2, cfg)
    ema = ModelEMA(model, decay=0.9999, tau=2000)
    with torch.no_grad():  # the EMA's weights differ from the model's
        for p in ema.module.parameters():
            p.add_(0.01)
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = Trainer(model, torch.nn.Identity(), opt, scaler, ema, cfg, torch.device("cpu"))
    state = training_state(
        trainer,
        epoch=2,
        best=0.1,
        best_epoch=2,
        names=["cow", "calf"],
        stats={S.MAP50_95: 0.1, "out": "x"},
    )
    assert state["metrics"] == {S.MAP50_95: 0.1}
    assert state["epoch"] == 2
    save_checkpoint(state, tmp_path / "last.pt")
    save_checkpoint(inference_checkpoint(state), tmp_path / "best.pt")
    want = ema.module.state_dict()
    for name in ("last.pt", "best.pt"):
        loaded, loaded_cfg, names = load_trained(
            tmp_path / name, torch.device("cpu"), ["score_threshold=0.6"]
        )
        assert not loaded.training
        assert names == ["cow", "calf"]
        assert loaded_cfg.score_threshold == 0.6
        assert loaded_cfg.neck_channels == 16
        got = loaded.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)  # the EMA's, not the model's
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_trained(tmp_path / "missing.pt", torch.device("cpu"))
