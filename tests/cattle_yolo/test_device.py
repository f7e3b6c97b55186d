"""Device choice and mixed precision."""

import pytest
import torch

from cattle_yolo.config import ConfigError, TrainConfig
from cattle_yolo.device import autocast, autocast_dtype, resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_auto_is_cpu_and_cuda_is_refused_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_cpu_runs_in_fp32_whatever_amp_says():
    cpu = torch.device("cpu")
    assert autocast_dtype(TrainConfig(amp=True), cpu) is None
    with autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
