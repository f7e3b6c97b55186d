"""End-of-search reporting from crafted trial rows: statuses, best pick, CSV, export, plots."""

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import REPO, WriteSpace
from PIL import Image

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from tune.report import importance, pick_best, trial_status, write_report
from tune.results import (
    DIVERGED,
    DIVERGED_RULE,
    DONE,
    EPOCH,
    THRESHOLD,
    THRESHOLD_F1,
    THRESHOLD_P,
    THRESHOLD_R,
    TrialRow,
)
from tune.space import load_space


@pytest.mark.parametrize(
    ("metrics", "error", "status"),
    [
        ({EPOCH: 4, DONE: True}, None, "completed"),
        ({EPOCH: 2, DONE: True}, None, "stopped by ASHA"),
        (
            {EPOCH: 1, DONE: True, DIVERGED: True, DIVERGED_RULE: "spike: ..."},
            None,
            "diverged",
        ),
        ({EPOCH: 2}, RuntimeError("Traceback...\nValueError: boom"), "errored"),
        ({EPOCH: 2, DONE: False}, None, "unfinished"),
        ({}, None, "unfinished"),
    ],
)
def test_trial_status(metrics: dict[str, Any], error: BaseException | None, status: str) -> None:
    got, detail = trial_status(metrics, error, max_t=4)
    assert got == status
    if status == "errored":
        assert detail == "ValueError: boom"
    if status == "diverged":
        assert detail.startswith("spike")


def _rows() -> list[TrialRow]:
    def row(name: str, lr: float, best: float | None, status: str, epochs: int) -> TrialRow:
        history = [
            {S.EPOCH: e, S.TRAIN_LOSS: 10.0 - e, S.MAP50_95: (best or 0) * e / epochs}
            for e in range(1, epochs + 1)
        ]
        return TrialRow(
            name,
            {"lr": lr, "box_loss_weight": min(12.0, 5.0 + lr * 1000)},
            best,
            epochs,
            epochs,
            status,
            "",
            f"/x/{name}",
            1,
            history,
        )

    return [
        row("trial_001", 1e-3, 0.30, "completed", 4),
        row("trial_002", 2e-3, 0.50, "stopped by ASHA", 2),
        row("trial_003", 3e-3, 0.40, "completed", 4),
        row("trial_004", 10.0, 0.0, "diverged", 1),
        row("trial_005", 5e-4, None, "errored", 1),
        row("trial_006", 7e-4, 0.2, "completed", 4),
    ]


def test_best_is_the_best_completed_trial() -> None:
    rows = _rows()
    best, lowest = pick_best(rows, "max"), pick_best(rows, "min")
    best_stopped = pick_best([r for r in rows if r.status != "completed"], "max")
    assert best is not None
    assert best.name == "trial_003"  # not the ASHA-stopped 0.50
    assert lowest is not None
    assert lowest.name == "trial_006"
    assert best_stopped is not None
    assert best_stopped.name == "trial_002"
    assert pick_best([r for r in rows if r.status in ("diverged", "errored")], "max") is None


def test_write_report_files(tmp_path: Path, write_space: WriteSpace) -> None:
    space = load_space(
        write_space(
            "search: {epochs: 4}\nspace:\n  lr: {loguniform: [1.0e-4, 10]}\n"
            "  box_loss_weight: {uniform: [2, 12]}\n"
        )
    )
    base = TrainConfig(epochs=4, out="/somewhere", device="cpu")
    lines = write_report(_rows(), space, space.settings, base, tmp_path, "exp", tmp_path / "b.yaml")
    text = "\n".join(lines)
    assert "best trial: trial_003" in text
    assert "3 completed" in text
    assert "1 diverged" in text
    # 6 trials x 4 epochs = 24; ran 4+2+4+1+1+4 = 16; ASHA saved 2, divergence 3, errors 3
    assert "epochs trained: 16 of 24 (67%); saved by ASHA 2, by the divergence rules 3" in text
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows][:4] == [
        "completed",
        "stopped by ASHA",
        "completed",
        "diverged",
    ]
    for path in (tmp_path / "best_config.yaml", tmp_path / "b.yaml"):
        cfg = TrainConfig.load(path)
        assert cfg.lr == 3e-3
        assert cfg.box_loss_weight == pytest.approx(8.0)
        assert cfg.out is None
        assert cfg.device == "auto"
        assert cfg.epochs == 4
    for plot in ("curves.png", "knobs.png", "importance.png"):
        with Image.open(tmp_path / "plots" / plot) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.shape[0] > 200
        assert pixels.shape[1] > 300
        # drawn on: more than the background and a few greys (axes, text) in it
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_importance_needs_enough_trials(write_space: WriteSpace) -> None:
    space = load_space(
        write_space(
            "space:\n  lr: {loguniform: [1.0e-4, 10]}\n  box_loss_weight: {uniform: [2, 12]}\n"
        )
    )
    values, _ = importance(_rows(), space, space.settings)
    assert values is not None
    assert set(values) == {"lr", "box_loss_weight"}
    assert math.isclose(sum(values.values()), 1.0)
    values, why = importance(_rows()[:2], space, space.settings)
    assert values is None
    assert "at least 4" in why


def test_export_carries_the_threshold_chosen_after_training(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    space = load_space(
        write_space(
            "search: {epochs: 4}\nspace:\n  lr: {loguniform: [1.0e-4, 10]}\n"
            "  score_threshold: {uniform: [0.05, 0.5]}\n"
        )
    )
    from tune.space import for_metric

    space, notes = for_metric(space, S.MAP50_95)
    assert "score_threshold" not in space.knobs
    assert space.threshold_range() == (0.05, 0.5)
    rows = _rows()
    for r in rows:
        r.params.pop("box_loss_weight")
    rows[2].threshold = {
        THRESHOLD: 0.3712,
        THRESHOLD_P: 0.8,
        THRESHOLD_R: 0.7,
        THRESHOLD_F1: 0.7467,
    }
    base = TrainConfig(epochs=4, score_threshold=0.25)
    lines = write_report(rows, space, space.settings, base, tmp_path, "exp", tmp_path / "b.yaml")
    assert any("score threshold 0.3712" in line for line in lines)
    for path in (tmp_path / "best_config.yaml", tmp_path / "b.yaml"):
        assert TrainConfig.load(path).score_threshold == 0.3712
    row = next(
        r for r in csv.DictReader((tmp_path / "results.csv").open()) if r["trial"] == "trial_003"
    )
    assert float(row["threshold"]) == 0.3712
    assert float(row["threshold_F1"]) == 0.7467
    values, _ = importance(rows, space, space.settings)
    assert values is not None
    assert set(values) == {"lr"}  # the post-hoc threshold is not a sampled knob


def test_cloud_trial_paths_keep_their_scheme(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tune.report import export_best, result_uri

    s3 = SimpleNamespace(
        path="bucket/runs/exp/trial_001_ab", filesystem=SimpleNamespace(type_name="s3")
    )
    local = SimpleNamespace(
        path="/x/exp/trial_001_ab", filesystem=SimpleNamespace(type_name="local")
    )
    assert result_uri(s3) == "s3://bucket/runs/exp/trial_001_ab"
    assert result_uri(local) == "/x/exp/trial_001_ab"
    row = _rows()[0]
    row.path = result_uri(s3)
    export_best(
        row,
        TrainConfig(epochs=4),
        load_space(REPO / "search_spaces" / "smoke.yaml").settings,
        tmp_path / "b.yaml",
        "exp",
    )
    import yaml

    doc = yaml.safe_load((tmp_path / "b.yaml").read_text())
    assert doc["checkpoint"] == "s3://bucket/runs/exp/trial_001_ab/run/models/best.pt"


def test_the_precision_trained_in_and_best_pts_epoch_reach_the_report(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    """The summary, results.csv and the export say which precision the trials trained in (what
    amp: auto resolved to), and the export says which epoch best.pt holds when it is not the
    objective's epoch (objective: last_mean)."""
    import yaml

    space = load_space(
        write_space("search: {epochs: 4}\nspace:\n  lr: {loguniform: [1.0e-4, 10]}\n")
    )
    rows = _rows()
    for r in rows:
        r.params.pop("box_loss_weight")
        r.amp = "bf16" if r.status != "errored" else ""
    rows[2].checkpoint_epoch = 3  # best.pt: epoch 3; the objective (a window) ends at epoch 4
    lines = write_report(rows, space, space.settings, TrainConfig(epochs=4), tmp_path, "exp")
    assert "precision: bf16 (the model's forward; loss and metrics fp32)" in lines
    csv_rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["amp"] for r in csv_rows] == ["bf16"] * 4 + [""] + ["bf16"]
    text = (tmp_path / "best_config.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["trained_in"] == "bf16"
    assert doc["config"]["amp"] == "auto"
    assert doc["epoch"] == 4
    assert doc["checkpoint_epoch"] == 3
    assert "best.pt holds epoch 3, the best by mAP50_95" in text.splitlines()[0]
