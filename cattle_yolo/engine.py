"""The training engine: one epoch of optimisation, the LR schedule and the EMA.

``train_one_epoch`` returns a stats dict; the driver in ``train.py`` calls it and ``evaluate``.
Batches come from ``data.collate``: images uint8 (B, 3, S, S), targets float32 (N, 6)
``[img_idx, cls, x1, y1, x2, y2]`` in letterboxed pixels.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from cattle_yolo.device import autocast, autocast_dtype, model_input

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from cattle_yolo.data import Item


def lr_multiplier(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """LR multiplier at optimizer step ``step`` (0-based) of the whole run."""
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    # 1) linear warmup from warmup_start_fraction at the first step to 1 at the last warmup step
    if step < warmup_steps:
        if warmup_steps == 1:
            return 1.0
        return cfg.warmup_start_fraction + (1 - cfg.warmup_start_fraction) * step / (
            warmup_steps - 1
        )
    # 2) past the end (resumed with fewer epochs, say): hold the final value
    if step >= total_steps:
        return cfg.final_lr_fraction
    # 3) cosine decay from 1 to final_lr_fraction over the remaining steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )


class ModelEMA:
    """Exponential moving average of a model's weights, used for evaluation and export.

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so that the average follows the
    model closely early in training, when the weights move fast.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        ema_state, model_state = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema_state.items() if v.dtype.is_floating_point]
        torch._foreach_lerp_(
            [ema_state[k] for k in floats], [model_state[k] for k in floats], 1 - d
        )
        for k, v in ema_state.items():
            if not v.dtype.is_floating_point:
                v.copy_(model_state[k])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


class _Progress:
    """A one-line progress bar on an interactive terminal; silent otherwise."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc = total, desc
        self.enabled = sys.stderr.isatty() and not os.environ.get("CATTLE_YOLO_NO_PROGRESS")
        self.start = time.perf_counter()

    def update(self, i: int, loss: float) -> None:
        if not self.enabled:
            return
        done = int(30 * (i + 1) / self.total)
        rate = (i + 1) / max(1e-9, time.perf_counter() - self.start)
        sys.stderr.write(
            f"\r{self.desc} [{'#' * done}{'.' * (30 - done)}] {i + 1}/{self.total}"
            f" loss={loss:.4f} {rate:.2f} it/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


@dataclass
class Trainer:
    """What a run trains with, built once by ``train.train`` (or a benchmark) and passed to
    ``train_one_epoch`` and ``checkpoint.training_state``."""

    model: nn.Module  # the parameters: checkpoints and the EMA read it
    loss_fn: nn.Module  # ``DetectionLoss``: (outputs, targets, epoch) -> named terms
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    ema: ModelEMA | None  # None when ``ema_decay`` is 0
    cfg: TrainConfig
    device: torch.device
    step_model: nn.Module | None = None  # what a step calls (a torch.compile'd model); None: model


def train_one_epoch(
    trainer: Trainer, loader: DataLoader[Item], epoch: int, profile: bool = False
) -> dict[str, float]:
    """Train one epoch with gradient accumulation, per-step LR, clipping and the EMA.

    A micro-batch whose loss is non-finite is not back-propagated, and an accumulated gradient
    whose norm is non-finite is not applied; both count as skipped steps. With ``profile`` the
    step is synchronised between phases and the time shares of data, forward, loss and backward
    are returned too (slower; for benchmarks).
    """
    model = trainer.step_model or trainer.model
    loss_fn, optimizer, scaler = trainer.loss_fn, trainer.optimizer, trainer.scaler
    cfg, device = trainer.cfg, trainer.device
    model.train()
    num_batches = len(loader)
    steps_per_epoch = math.ceil(num_batches / cfg.accumulate)
    step = epoch * steps_per_epoch
    amp_dtype = autocast_dtype(cfg, device)
    sums = {"loss": 0.0, "box": 0.0, "cls": 0.0, "dfl": 0.0}
    finite_batches, skipped, images = 0, 0, 0
    # The epoch's first finite loss of a batch with objects: where the epoch started. A batch
    # without objects has no box terms (a fresh model at 128 px: 1.17 against 9.87 with objects),
    # and would make the spike rule fire on a healthy first epoch.
    first_loss = float("nan")
    phase = {"data": 0.0, "forward": 0.0, "loss": 0.0, "backward": 0.0}
    progress = _Progress(num_batches, f"epoch {epoch + 1}/{cfg.epochs}")

    def sync() -> float:
        if profile and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    _set_lr(optimizer, cfg.lr * lr_multiplier(step, steps_per_epoch, cfg))
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    t0 = sync()
    for i, (imgs, targets, _) in enumerate(loader):
        imgs = model_input(imgs, device, amp_dtype)
        targets = targets.to(device, non_blocking=True)
        t1 = sync()
        with autocast(device, amp_dtype):
            outputs = model(imgs)
        t2 = sync()
        losses = loss_fn(outputs, targets, epoch + i / num_batches)
        total = losses["total"]
        t3 = sync()
        # One host sync per micro-batch: needed to decide whether to back-propagate at all. A
        # collapsed step (the loss's "dead": no target left to learn from) counts as skipped.
        finite = bool(
            torch.isfinite(total) & ~losses.get("dead", torch.tensor(False)).to(total.device)
        )
        if finite:
            scaler.scale(total / cfg.accumulate).backward()
            finite_batches += 1
            detached = torch.stack([total, losses["box"], losses["cls"], losses["dfl"]]).tolist()
            for key, value in zip(sums, detached, strict=True):
                sums[key] += value
            if math.isnan(first_loss) and targets.shape[0] > 0:
                first_loss = detached[0]
        else:
            skipped += 1
        images += imgs.shape[0]

        if (i + 1) % cfg.accumulate == 0 or i + 1 == num_batches:
            if not _optimizer_step(trainer, model):
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
            step += 1
            _set_lr(optimizer, cfg.lr * lr_multiplier(step, steps_per_epoch, cfg))
        t5 = sync()
        phase["data"] += t1 - t0
        phase["forward"] += t2 - t1
        phase["loss"] += t3 - t2
        phase["backward"] += t5 - t3
        t0 = t5
        progress.update(i, sums["loss"] / max(1, finite_batches))
    progress.close()

    elapsed = time.perf_counter() - start
    mean = {k: (v / finite_batches if finite_batches else float("nan")) for k, v in sums.items()}
    stats = {
        S.TRAIN_LOSS: mean["loss"],
        S.TRAIN_BOX: mean["box"],
        S.TRAIN_CLS: mean["cls"],
        S.TRAIN_DFL: mean["dfl"],
        S.FIRST_STEP_LOSS: first_loss,
        S.LR: optimizer.param_groups[0]["lr"],
        S.SKIPPED_STEPS: skipped,
        S.TRAIN_BATCHES: num_batches,
        S.TRAIN_TIME: elapsed,
        S.IMAGES_PER_SEC: images / max(elapsed, 1e-9),
    }
    if profile:
        total_time = sum(phase.values())
        stats.update({f"share_{k}": v / total_time for k, v in phase.items()})
    return stats


def _optimizer_step(trainer: Trainer, model: nn.Module) -> bool:
    """Apply the accumulated gradient of ``model`` (clipped to ``cfg.grad_clip``) and update the
    EMA; a gradient whose norm is non-finite is not applied. Returns whether it was applied."""
    optimizer, scaler, ema = trainer.optimizer, trainer.scaler, trainer.ema
    scaler.unscale_(optimizer)
    max_norm = trainer.cfg.grad_clip if trainer.cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if not torch.isfinite(norm):
        scaler.update()
        return False
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:  # a torch.compile'd model's own module holds the weights
        ema.update(getattr(model, "_orig_mod", model))
    return True


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
