import math

import pytest
import torch

from cattle_yolo.config import TrainConfig
from cattle_yolo.engine import ModelEMA, lr_multiplier


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
