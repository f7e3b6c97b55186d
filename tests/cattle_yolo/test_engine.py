import math

import pytest
import torch

from cattle_yolo.config import TrainConfig
from cattle_yolo.engine import (
    CheckpointError,
    ModelEMA,
    load_checkpoint,
    lr_multiplier,
    save_checkpoint,
)


def test_warmup_first_and_last_iteration():
    cfg = TrainConfig(epochs=20, warmup_epochs=10, warmup_start_fraction=0.5)
    steps_per_epoch = 7
    warmup_steps = 70
    assert lr_multiplier(0, steps_per_epoch, cfg) == pytest.approx(0.5)
    assert lr_multiplier(warmup_steps - 1, steps_per_epoch, cfg) == pytest.approx(1.0)
    # linear in between
    assert lr_multiplier(warmup_steps // 2, steps_per_epoch, cfg) == pytest.approx(
        0.5 + 0.5 * 35 / 69
    )


def test_cosine_decay_ends_at_final_fraction():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, final_lr_fraction=0.05)
    spe = 5
    assert lr_multiplier(10, spe, cfg) == pytest.approx(1.0)  # first step after warmup
    values = [lr_multiplier(s, spe, cfg) for s in range(10, 50)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert lr_multiplier(50, spe, cfg) == pytest.approx(0.05)
    mid = lr_multiplier(30, spe, cfg)
    assert mid == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_no_warmup():
    cfg = TrainConfig(epochs=3, warmup_epochs=0)
    assert lr_multiplier(0, 4, cfg) == pytest.approx(1.0)


def test_ema_follows_then_lags():
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.9, tau=1e-9)  # ramp finished at once: decay 0.9
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)
    expected = 0.9 * before + 0.1 * model.weight
    assert torch.allclose(ema.module.weight, expected)


def test_checkpoint_round_trip_and_torn_file(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "config": {"lr": 0.1}}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert not list(tmp_path.glob("*.tmp"))
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="torn.pt"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_inference_checkpoint_keeps_the_ema_weights_and_drops_the_optimizer(tmp_path):
    from cattle_yolo.engine import inference_checkpoint

    model = torch.nn.Linear(3, 2)
    ema = {"module": {k: v + 1 for k, v in model.state_dict().items()}, "updates": 5}
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
        "metrics": {"mAP50_95": 0.5},
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
    assert best["ema"] is None and best["epoch"] == 3 and best["names"] == ["cow"]
    for k, v in ema["module"].items():  # the EMA weights, not the raw model's
        assert torch.equal(best["model"][k], v)
    size = (tmp_path / "best.pt").stat().st_size
    assert size < 0.6 * (tmp_path / "last.pt").stat().st_size
