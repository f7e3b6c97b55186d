"""Device choice and the precision ``amp`` resolves to on each kind of machine (mocked where the
hardware is absent)."""

import pytest
import torch

from cattle_yolo import device as device_mod
from cattle_yolo.config import ConfigError, TrainConfig
from cattle_yolo.device import autocast, autocast_dtype, resolve_amp, resolve_device

CPU = torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_auto_is_cpu_and_cuda_is_refused_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected", "why"),
    [
        (True, False, "bf16", "AMX"),
        (False, True, "bf16", "AVX512-BF16"),
        (True, True, "bf16", "AMX"),
        (False, False, "off", "no bf16 units"),
    ],
)
def test_auto_on_a_cpu_is_bf16_only_with_bf16_units(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: str, why: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: avx512_bf16)
    amp, reason = resolve_amp("auto", CPU)
    assert amp == expected
    assert why in reason
    assert autocast_dtype(TrainConfig(amp="auto"), CPU) == (
        torch.bfloat16 if expected == "bf16" else None
    )


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_supported_else_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_amp("auto", torch.device("cuda"))[0] == expected
    assert resolve_amp("off", torch.device("cuda"))[0] == "off"
    if not bf16:
        with pytest.raises(ConfigError, match="does not support bf16"):
            resolve_amp("bf16", torch.device("cuda"))


def test_explicit_precisions_on_a_cpu() -> None:
    assert resolve_amp("off", CPU)[0] == "off"
    assert autocast_dtype(TrainConfig(amp="off"), CPU) is None
    assert resolve_amp("bf16", CPU)[0] == "bf16"
    with pytest.raises(ConfigError, match="'fp16' needs CUDA"):
        resolve_amp("fp16", CPU)
    with autocast(CPU, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(CPU, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_units_reported_as_this_machine_has_them() -> None:
    """No mock: whatever this CPU has, auto agrees with it (bf16 iff units are present)."""
    units = device_mod.cpu_bf16_units()
    assert resolve_amp("auto", CPU)[0] == ("bf16" if units else "off")
