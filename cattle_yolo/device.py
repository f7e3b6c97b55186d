"""Where a run computes: the device from a config's ``device``, and the precision on it.

``amp`` (``TrainConfig.amp``) names the autocast precision of the model's forward pass:

- ``auto``: on CUDA, bf16 where the GPU supports it, else fp16 with a GradScaler; on a CPU
  with bf16 matrix units (Intel AMX or AVX512-BF16), bf16; elsewhere fp32.
- ``bf16``, ``fp16``: that precision (fp16 only on CUDA; bf16 on a CPU without the units runs,
  slowly); ``off``: fp32.

The assigner, the loss terms, NMS and the metrics run in fp32 whatever ``amp`` says.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from cattle_yolo.config import ConfigError, TrainConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


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


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix units as torch sees them (``AMX``, ``AVX512-BF16``), or None."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():  # type: ignore[no-untyped-call]
        return "AVX512-BF16"
    return None


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """(the precision ``amp`` means on ``device``: ``bf16``, ``fp16`` or ``off``, and why).

    Raises ConfigError for fp16 on a CPU, or bf16 on a GPU without it.
    """
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if amp == "auto":
            return (
                ("bf16", "auto: the GPU supports bf16")
                if bf16
                else (
                    "fp16",
                    "auto: the GPU has no bf16; fp16 with a GradScaler",
                )
            )
        if amp == "bf16" and not bf16:
            raise ConfigError("key 'amp' = 'bf16' but this GPU does not support bf16; use fp16")
        return amp, "as configured"
    if amp == "fp16":
        raise ConfigError("key 'amp' = 'fp16' needs CUDA; on a CPU use bf16, auto or off")
    if amp == "auto":
        units = cpu_bf16_units()
        if units:
            return "bf16", f"auto: the CPU has {units}"
        return "off", "auto: the CPU has no bf16 units (AMX or AVX512-BF16); fp32"
    return amp, "as configured"


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``cfg.amp`` on ``device`` (None: fp32)."""
    return DTYPES[resolve_amp(cfg.amp, device)[0]]


def precision_name(amp: str) -> str:
    """A resolved ``amp`` (``bf16``, ``fp16``, ``off``) as logs name it: ``off`` is fp32."""
    return "fp32" if amp == "off" else amp


# channels_last: on CUDA always; on a CPU in bf16 only. There it is 1.04-1.16x faster in bf16
# (1.14-1.31x in fp32; docs/benchmarks.md, "Precision and layout"), but oneDNN's channels_last
# gradients are further from fp64's (worst relative error 2.1e-2 against NCHW's 3.5e-3 on one
# batch): well below bf16's own rounding, not below fp32's, so fp32 on a CPU stays NCHW.
# Benchmarks set CPU_CHANNELS_LAST to force a layout.
CPU_CHANNELS_LAST: bool | None = None


def channels_last(device: torch.device, dtype: torch.dtype | None) -> bool:
    """Whether the model and its inputs are channels_last on ``device`` at autocast ``dtype``."""
    if device.type == "cuda":
        return True
    if CPU_CHANNELS_LAST is not None:
        return CPU_CHANNELS_LAST
    return dtype == torch.bfloat16


def model_layout(
    model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
) -> torch.nn.Module:
    """``model`` in the layout the training loop uses (see ``channels_last``)."""
    return model.to(memory_format=torch.channels_last) if channels_last(device, dtype) else model


def model_input(
    images: torch.Tensor, device: torch.device, dtype: torch.dtype | None
) -> torch.Tensor:
    """uint8 images (B, 3, S, S) -> float32 in [0, 1] on ``device``, in the model's layout."""
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last(device, dtype) else x


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
