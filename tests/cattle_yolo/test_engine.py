import math
from typing import cast

import pytest
import torch
from torch.utils.data import DataLoader

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import Item
from cattle_yolo.engine import ModelEMA, Trainer, lr_multiplier, train_one_epoch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, targets, indices


def loader(*batches: Batch) -> DataLoader[Item]:
    """Ready batches as ``train_one_epoch``'s loader (it only iterates it and takes its len)."""
    return cast(DataLoader[Item], list(batches))


def test_warmup_first_and_last_iteration() -> None:
    cfg = TrainConfig(epochs=20, warmup_epochs=10, warmup_start_fraction=0.5)
    steps_per_epoch = 7
    warmup_steps = 70
    assert lr_multiplier(0, steps_per_epoch, cfg) == pytest.approx(0.5)
    assert lr_multiplier(warmup_steps - 1, steps_per_epoch, cfg) == pytest.approx(1.0)
    # linear in between
    assert lr_multiplier(warmup_steps // 2, steps_per_epoch, cfg) == pytest.approx(
        0.5 + 0.5 * 35 / 69
    )


def test_cosine_decay_ends_at_final_fraction() -> None:
    cfg = TrainConfig(epochs=10, warmup_epochs=2, final_lr_fraction=0.05)
    spe = 5
    assert lr_multiplier(10, spe, cfg) == pytest.approx(1.0)  # first step after warmup
    values = [lr_multiplier(s, spe, cfg) for s in range(10, 50)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert lr_multiplier(50, spe, cfg) == pytest.approx(0.05)
    mid = lr_multiplier(30, spe, cfg)
    assert mid == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_no_warmup() -> None:
    cfg = TrainConfig(epochs=3, warmup_epochs=0)
    assert lr_multiplier(0, 4, cfg) == pytest.approx(1.0)


def test_ema_follows_then_lags() -> None:
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.9, tau=1e-9)  # ramp finished at once: decay 0.9
    with torch.no_grad():
        model.weight.add_(1.0)
    averaged = ema.module
    assert isinstance(averaged, torch.nn.Linear)  # a copy of the model
    before = averaged.weight.clone()
    ema.update(model)
    expected = 0.9 * before + 0.1 * model.weight
    assert torch.allclose(averaged.weight, expected)


def test_first_step_loss_skips_batches_without_objects() -> None:
    """The spike rule's reference: the first batch *with objects*. A first batch of empty frames
    has no box terms and a loss several times lower, which made a healthy epoch look like a
    spike (``divergence_rule([8.0], start_loss=1.17)``)."""

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"w": self.w * images.mean() * 0 + self.w}

    class Loss(torch.nn.Module):
        def forward(
            self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, epoch: float
        ) -> dict[str, torch.Tensor]:
            total = outputs["w"] * (1.0 + 8.0 * len(targets))  # 1 without objects, 9 with one
            z = total * 0
            return {"total": total, "box": z, "cls": total, "dfl": z}

    empty = (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, 6), torch.tensor([0]))
    one = (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.ones(1, 6), torch.tensor([1]))
    model = Scale()
    cfg = TrainConfig(epochs=1, accumulate=1, lr=1e-9, ema_decay=0.0, device="cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)
    trainer = Trainer(model, Loss(), optimizer, scaler, None, cfg, torch.device("cpu"))
    stats = train_one_epoch(trainer, loader(empty, empty, one), 0)
    assert stats[S.FIRST_STEP_LOSS] == pytest.approx(9.0, rel=1e-6)
    # no batch with objects at all: no reference
    stats = train_one_epoch(trainer, loader(empty), 0)
    assert math.isnan(stats[S.FIRST_STEP_LOSS])
