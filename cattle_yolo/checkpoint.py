"""The checkpoint format: what training writes, what evaluation, prediction and a resume read.

Two kinds, both ``torch.save`` dicts read with ``weights_only=True``:

- resumable (``models/last.pt``, ``training_state``): ``model`` and ``ema`` state dicts,
  ``optimizer``, ``scaler``, ``epoch``, ``best_fitness``, ``best_epoch``, ``config`` (the
  resolved ``TrainConfig`` as a dict), ``names``, ``metrics`` (the epoch's numbers) and ``rng``;
- inference (``models/best.pt``, ``inference_checkpoint``): the EMA weights as ``model``,
  ``ema: None`` and the config, names, epoch and metrics; no optimizer, about a quarter of the
  size, as Ultralytics strips its final weights.

Both are written atomically (``save_checkpoint``), so a kill mid-save never leaves a torn file.
``load_trained`` builds the model in eval mode from either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cattle_yolo.config import ConfigError, TrainConfig, parse_overrides
from cattle_yolo.device import autocast_dtype, model_layout, resolve_amp
from cattle_yolo.files import atomic_write

if TYPE_CHECKING:
    from cattle_yolo.engine import Trainer

INFERENCE_KEYS = ("config", "names", "epoch", "best_fitness", "best_epoch", "metrics")


class CheckpointError(ValueError):
    """A checkpoint file is missing, torn or not ours; the message names the file."""


def training_state(
    trainer: Trainer,
    *,
    epoch: int,
    best: float,
    best_epoch: int,
    names: list[str],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """The resumable checkpoint of ``trainer`` after ``epoch`` epochs; ``best`` is the best
    fitness so far, reached at ``best_epoch``, and ``stats`` the epoch's numbers."""
    device, ema = trainer.device, trainer.ema
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": epoch,
        "best_fitness": best,
        "best_epoch": best_epoch,
        "config": trainer.cfg.to_dict(),
        "names": list(names),
        "metrics": {k: v for k, v in stats.items() if isinstance(v, int | float)},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
    }


def inference_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """What inference, evaluation and a new training run need from a training checkpoint: the
    EMA weights (or the model's, without EMA) as ``model``, the config, class names, epoch and
    metrics; no optimizer, scaler, RNG or second copy of the weights."""
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    return {"model": weights, "ema": None, **{k: state[k] for k in INFERENCE_KEYS if k in state}}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write one checkpoint dict atomically (temp file, then rename): never a torn file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or torn file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated zip, a pickle of code objects, ...
        raise CheckpointError(f"{path}: not a readable cattle_yolo checkpoint ({e})") from None
    return ckpt


def load_trained(
    weights: str | Path, device: torch.device, overrides: list[str] | None = None
) -> tuple[torch.nn.Module, TrainConfig, list[str]]:
    """(model in eval mode with the EMA weights, config, class names) from a checkpoint of
    either kind; ``overrides`` are ``key=value`` changes to its config."""
    from cattle_yolo.model import CattleYOLO

    ckpt = load_checkpoint(weights, map_location="cpu")
    cfg = TrainConfig.from_dict(ckpt["config"], source=str(weights))
    if overrides:
        cfg = cfg.with_overrides(parse_overrides(overrides))
    cfg = cfg.replace(pretrained=False)  # the checkpoint has the weights; never download
    try:
        resolve_amp(cfg.amp, device)
    except ConfigError:  # trained in fp16 on a GPU, used on a CPU: its own auto instead
        cfg = cfg.replace(amp="auto")
    model = CattleYOLO(len(ckpt["names"]), cfg)
    model.load_state_dict(inference_checkpoint(ckpt)["model"])
    dtype = autocast_dtype(cfg, device)
    return model_layout(model.to(device), device, dtype).eval(), cfg, list(ckpt["names"])
