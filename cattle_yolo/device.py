"""Where a run computes: the device from a config's ``device`` and mixed precision on it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from cattle_yolo.config import ConfigError, TrainConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a name torch does not know, or CUDA where there is none,
    is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device {name!r} is not a device name torch knows; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    return device


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16 on CUDA, None (fp32) on CPU or with amp off."""
    if device.type != "cuda" or not cfg.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
