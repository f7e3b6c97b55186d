"""Builders shared by the search tests (imported by name: conftest modules are not)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tune.plan import SMOKE_CONFIG

if TYPE_CHECKING:
    from ray.tune import Tuner

    from cattle_yolo.config import TrainConfig
    from cattle_yolo.stats import EpochStats
    from tune.cluster import Resources
    from tune.space import SearchSpace

REPO = Path(__file__).resolve().parents[2]

# Tiny trials, the sizes of `run_search.py --smoke-test`: 64 px, a thin neck, 8 synthetic
# images, batch 4 without accumulation.
TINY = dict(SMOKE_CONFIG)


class WriteSpace(Protocol):
    """The ``write_space`` fixture: writes a space file from text and returns its path."""

    def __call__(self, text: str, name: str = ...) -> Path: ...


def run_search(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python run_search.py --smoke-test ARGS`` in ``cwd``, the repository importable and
    ``env`` added to this process's environment."""
    return subprocess.run(
        [sys.executable, str(REPO / "run_search.py"), "--smoke-test", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_tuner(  # noqa: PLR0913 (build_tuner's inputs; each test passes the few it varies)
    space: SearchSpace,
    base: TrainConfig,
    resources: Resources,
    name: str,
    storage: str,
    extra_callbacks: tuple[Callable[[EpochStats], None], ...] = (),
    max_failures: int = 1,
    journal: Path | None = None,
) -> Tuner:
    """A quiet Tuner for ``space`` on the tiny synthetic data, as run_search.py builds one."""
    from cattle_yolo.data import load_datasets
    from tune import search

    trainable = search.make_trainable(
        base,
        load_datasets(base, verbose=False),
        space.settings,
        resources,
        extra_callbacks,
        threshold_range=space.threshold_range(),
    )
    experiment = search.Experiment(name, storage, max_failures=max_failures, verbose=0)
    tuner, _ = search.build_tuner(
        trainable, space, base, space.settings, resources, experiment, search.Study(journal=journal)
    )
    return tuner


def read_events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """The TensorBoard event files in ``folder``: ({tag: [(step, value)]}, hparams summaries).

    Read with tensorboardX's protobufs (TensorBoard itself need not be installed): each record
    is a little-endian u64 length, a u32 CRC, the Event bytes and a u32 CRC.
    """
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    hparams = 0
    for path in sorted(folder.glob("events.out.tfevents*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.metadata.plugin_data.plugin_name == "hparams":
                    hparams += 1
    return scalars, hparams
