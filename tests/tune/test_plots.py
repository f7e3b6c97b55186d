"""The plots draw every trial in its status's colour, diverged losses included."""

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import WriteSpace
from PIL import Image

from cattle_yolo import stats as S
from tune.plots import STATUS_COLORS, plot_curves, plot_importance, plot_knobs
from tune.results import Status, TrialRow
from tune.space import SearchSettings, load_space

RGB = {"tab:green": (44, 160, 44), "tab:red": (214, 39, 40), "tab:orange": (255, 127, 14)}


def _row(name: str, status: Status, losses: list[float], lr: float, box: str) -> TrialRow:
    history = [
        {S.EPOCH: e + 1, S.TRAIN_LOSS: loss, S.MAP50_95: 0.1 * (e + 1)}
        for e, loss in enumerate(losses)
    ]
    best = None if status == Status.DIVERGED else 0.1 * len(losses)
    return TrialRow(
        name=name,
        params={"lr": lr, "box_loss": box},
        objective=best,
        best_epoch=1,
        epochs_run=len(losses),
        status=str(status),
        detail="",
        path="",
        history=history,
    )


def _colours(path: Path) -> np.ndarray:
    return np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0)


def _drawn(colours: np.ndarray, name: str, alpha: float = 1.0) -> bool:
    """Some pixel has colour ``name`` laid with ``alpha`` over white (within 2 per channel)."""
    want = alpha * np.array(RGB[name]) + (1 - alpha) * 255
    return bool((np.abs(colours.astype(float) - want).max(axis=1) <= 2).any())


def test_curves_and_knobs_colour_each_trial_by_status(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    rows = [
        _row("t1", Status.COMPLETED, [3.0, 2.0, 1.5], 1e-3, "ciou"),
        _row("t2", Status.STOPPED, [3.0], 3e-3, "giou"),
        _row("t3", Status.DIVERGED, [3.0, math.inf], 9.0, "ciou"),  # a non-finite loss
    ]
    settings = SearchSettings(epochs=3)
    plot_curves(rows, settings, tmp_path / "curves.png")
    colours = _colours(tmp_path / "curves.png")
    for status in (Status.COMPLETED, Status.STOPPED, Status.DIVERGED):
        assert _drawn(colours, STATUS_COLORS[status], alpha=0.8), status  # lines at alpha 0.8

    space = load_space(
        write_space(
            "space:\n  lr: {loguniform: [1.0e-4, 10]}\n  box_loss: {choice: [giou, ciou]}\n"
        )
    )
    plot_knobs(rows, space, settings, tmp_path / "knobs.png")
    colours = _colours(tmp_path / "knobs.png")
    assert _drawn(colours, "tab:green")
    assert _drawn(colours, "tab:orange")


def test_importance_is_one_bar_per_knob(tmp_path: Path) -> None:
    plot_importance({"lr": 0.7, "box_loss_weight": 0.3}, tmp_path / "importance.png")
    with Image.open(tmp_path / "importance.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    bars = np.abs(pixels.astype(int) - (31, 119, 180)).max(axis=2) <= 2  # tab:blue
    rows_with_bar = np.flatnonzero(bars.any(axis=1))
    # two bars: two separate bands of rows, the longer (lr, 0.7) about 7/3 the shorter
    bands = np.split(rows_with_bar, np.flatnonzero(np.diff(rows_with_bar) > 1) + 1)
    assert len(bands) == 2
    lengths = sorted(int(bars[band].sum(axis=1).max()) for band in bands)
    assert lengths[1] / lengths[0] == pytest.approx(7 / 3, rel=0.05)
