"""Seeded fuzz of the trial: learning rates from 1e-7 to 10 (the config refuses more, before any
trial starts: tests/test_fuzz_inputs.py), both box heads, 64/96/128 px,
mostly-empty and crowded images, each trained through the real trainable, the divergence
stopper and Tune (no retries). Every run ends completed or diverged, none errors, and a
diverged one costs at most 2 epochs."""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from helpers import TINY

from cattle_yolo.config import TrainConfig
from cattle_yolo.data import load_datasets
from cattle_yolo.synthetic import generate
from tune import cluster, search
from tune.report import trial_rows
from tune.space import SearchSettings

EPOCHS = 3


def _dataset(root: Path, kind: str) -> Path:
    """8 synthetic train and 4 val images; ``empty``: every train label but one emptied;
    ``crowded``: 40 small boxes per train image."""
    generate(root, 8, 4, 0, imgsz=160, seed=0)
    rng = random.Random(0)
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    for i, label in enumerate(labels):
        if kind == "empty" and i:
            label.write_text("")
        elif kind == "crowded":
            rows = [
                f"{rng.randrange(2)} {rng.uniform(0.05, 0.95):.4f} {rng.uniform(0.05, 0.95):.4f} "
                f"{rng.uniform(0.02, 0.1):.4f} {rng.uniform(0.02, 0.1):.4f}"
                for _ in range(40)
            ]
            label.write_text("\n".join(rows) + "\n")
    return root


def _cases() -> list[tuple[int, str, list[dict[str, Any]]]]:
    """(imgsz, data kind, runs): the dataset is decoded once per grid, so one grid per size
    and kind; lr log-uniform in [1e-7, 10] plus both extremes, heads alternating."""
    rng = random.Random(0)
    cases = []
    for imgsz in (64, 96, 128):
        for kind in ("empty", "crowded"):
            lrs = [10 ** rng.uniform(-7, 1), 10 ** rng.uniform(-7, 1)]
            if imgsz == 64:
                lrs += [1e-7, 10.0]
            runs = [
                {"lr": lr, "box_head": ("dfl", "exp")[i % 2], "seed": i} for i, lr in enumerate(lrs)
            ]
            cases.append((imgsz, kind, runs))
    return cases


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_every_trial_ends_completed_or_diverged_and_blow_ups_are_cheap(
    tmp_path: Path, ray_local: None
) -> None:
    settings = SearchSettings(epochs=EPOCHS, grace_period=1)
    resources = cluster.plan_resources(ray.cluster_resources(), 0, 1.0, 1.0, 4)
    seen = []
    for imgsz, kind, runs in _cases():
        data = _dataset(tmp_path / f"{kind}{imgsz}", kind)
        base = TrainConfig.load(
            None, {**TINY, "imgsz": imgsz, "data": str(data), "epochs": EPOCHS, "warmup_epochs": 0}
        )
        datasets = load_datasets(base, verbose=False)
        trainable = search.make_trainable(base, datasets, settings, resources, threshold_range=None)
        experiment = search.Experiment(
            f"fuzz-{kind}-{imgsz}",
            str(tmp_path / "runs"),
            max_failures=0,
            keep_weights=0,
            verbose=0,
        )
        run_config = search.make_run_config(experiment, settings, None)
        results = search.grid_tuner(trainable, runs, run_config, resources.concurrent).fit()
        for row in trial_rows(results, settings):
            where = (imgsz, kind, row.params.get("lr"), row.params.get("box_head"), row.detail)
            assert row.status in ("completed", "diverged"), where
            if row.status == "diverged":
                assert row.epochs_run <= 2, where
            seen.append((row.params["lr"], row.status))
        shutil.rmtree(tmp_path / "runs")  # weights of ended trials: none needed
    assert len(seen) == 16
    # both outcomes occurred: lr 10 blows up, lr 1e-7 trains on
    assert dict(seen)[10.0] == "diverged"
    assert dict(seen)[1e-7] == "completed"
    assert all(math.isfinite(lr) for lr, _ in seen)
