"""The confirmation's decisions on known rows: which configs are retrained, on which seeds,
how runs are scored, who wins and whether the win is more than the seed spread."""

import math
from pathlib import Path

import pytest
import yaml
from helpers import WriteSpace

from cattle_yolo.config import TrainConfig
from tune.confirm import (
    Candidate,
    fresh_seeds,
    pick_candidates,
    report,
    run_configs,
    verdict,
    winner,
)
from tune.results import Status, TrialRow
from tune.space import CONFIRM_ID, SearchSettings, SearchSpace, load_space

SPACE = "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"


def _row(
    name: str,
    lr: float,
    best: float | None,
    status: Status = Status.COMPLETED,
    seed: int | None = None,
) -> TrialRow:
    return TrialRow(
        name=name,
        params={"lr": lr},
        objective=best,
        best_epoch=1,
        epochs_run=3,
        status=str(status),
        detail="",
        path=f"/x/{name}",
        config={"lr": lr, **({"seed": seed} if seed is not None else {})},
    )


@pytest.fixture
def space(write_space: WriteSpace) -> SearchSpace:
    return load_space(write_space(SPACE))


def test_the_default_comes_first_then_completed_trials_then_stopped_ones(
    space: SearchSpace,
) -> None:
    base = TrainConfig()  # lr 1e-3 is the hand-fixed default
    rows = [
        _row("t1", base.lr, 0.30),  # the default's own trial
        _row("t2", 2e-3, 0.20),
        _row("t3", 3e-3, 0.50, Status.STOPPED),  # best value, but ASHA stopped it
        _row("t4", 4e-3, 0.40),
        _row("t5", 5e-3, 0.90, Status.DIVERGED),
        _row("t6", 6e-3, None, Status.ERRORED),
    ]
    picked = pick_candidates(rows, space, SearchSettings(), base, k=3)
    assert [c.label for c in picked] == ["default", "t4", "t2", "t3"]
    assert picked[0].params == {"lr": base.lr}
    assert picked[0].search_value == 0.30
    assert [c.confirm_id for c in picked] == [0, 1, 2, 3]
    assert [c.label for c in pick_candidates(rows, space, SearchSettings(mode="min"), base, 1)] == [
        "default",
        "t2",
    ]


def test_fresh_seeds_are_not_the_search_seed_and_every_config_gets_each() -> None:
    seeds = fresh_seeds(SearchSettings(seed=7), 3)
    assert seeds == [8, 9, 10]
    configs = run_configs(
        [Candidate(0, "default", {"lr": 1e-3}, None), Candidate(1, "t4", {"lr": 4e-3}, 0.4)], seeds
    )
    assert len(configs) == 6
    assert {(c[CONFIRM_ID], c["seed"]) for c in configs} == {(i, s) for i in (0, 1) for s in seeds}


def test_runs_are_scored_with_diverged_as_worst_and_errors_left_out() -> None:
    c = Candidate(1, "t4", {"lr": 4e-3}, 0.4)
    c.runs = [
        _row("a", 4e-3, 0.4),
        _row("b", 4e-3, 0.6),
        _row("c", 4e-3, 0.9, Status.DIVERGED),
        _row("d", 4e-3, None, Status.ERRORED),
    ]
    assert c.values(worst=0.0) == [0.4, 0.6, 0.0]
    mean, sd = c.mean_sd(0.0)
    assert mean == pytest.approx(1.0 / 3)
    assert sd == pytest.approx(0.3055, abs=1e-4)
    assert all(math.isnan(v) for v in Candidate(2, "e", {}, None).mean_sd(0.0))


def test_the_verdict_weighs_the_gain_against_the_seed_spread() -> None:
    settings = SearchSettings(confirm_seeds=2)
    default, found = Candidate(0, "default", {}, 0.4), Candidate(1, "t4", {}, 0.5)
    default.runs = [_row("d1", 0, 0.40), _row("d2", 0, 0.42)]
    found.runs = [_row("f1", 0, 0.50), _row("f2", 0, 0.52)]  # gain 0.1, spread 0.014
    assert winner([default, found], settings) is found
    assert "t4 beats the default" in verdict([default, found], settings)
    found.runs = [_row("f1", 0, 0.30), _row("f2", 0, 0.64)]  # same mean 0.47, spread 0.24
    assert "t4 does not beat the default" in verdict([default, found], settings)
    found.runs = [_row("f1", 0, 0.30), _row("f2", 0, 0.32)]
    assert winner([default, found], settings) is default
    assert "the hand-fixed default has the best mean" in verdict([default, found], settings)
    assert "not enough finished runs" in verdict([Candidate(0, "default", {}, None)], settings)


def test_unfinished_runs_are_no_data_point_and_an_interrupted_confirmation_exports_nothing(
    space: SearchSpace, tmp_path: Path
) -> None:
    """An interrupted confirmation: its unfinished runs (their objective so far) counted in the
    mean, and report() overwrote best_config.yaml and --export before run_search saw it."""
    settings = SearchSettings(confirm_seeds=2)
    default, found = (
        Candidate(0, "default", {"lr": 1e-3}, 0.4),
        Candidate(1, "t4", {"lr": 4e-3}, 0.5),
    )
    default.runs = [_row("d1", 1e-3, 0.40, seed=1), _row("d2", 1e-3, 0.42, seed=2)]
    found.runs = [_row("f1", 4e-3, 0.60, seed=1), _row("f2", 4e-3, 0.9, Status.UNFINISHED, seed=2)]
    assert found.values(0.0) == [0.60]
    assert not found.complete(0.0, 2)
    assert winner([default, found], settings) is default  # t4 lacks a seed: it cannot win yet
    assert "interrupted (1 runs unfinished); no verdict" in verdict([default, found], settings)
    export = tmp_path / "best.yaml"
    export.write_text("earlier export\n")
    lines = report([default, found], [1, 2], space, settings, TrainConfig(), tmp_path, "x", export)
    assert export.read_text() == "earlier export\n"
    assert not (tmp_path / "best_config.yaml").exists()
    assert any("interrupted" in line for line in lines)


def test_a_config_with_an_errored_seed_cannot_win_on_fewer_runs() -> None:
    settings = SearchSettings(confirm_seeds=2)
    default, found = Candidate(0, "default", {}, 0.4), Candidate(1, "t4", {}, 0.5)
    default.runs = [_row("d1", 0, 0.40), _row("d2", 0, 0.42)]
    found.runs = [_row("f1", 0, 0.90), _row("f2", 0, None, Status.ERRORED)]  # one lucky seed
    assert winner([default, found], settings) is default
    default.runs = [_row("d1", 0, 0.40), _row("d2", 0, None, Status.ERRORED)]
    assert winner([default, found], settings) is None
    assert "missing seeds: default, t4" in verdict([default, found], settings)


def test_one_seed_gives_no_verdict() -> None:
    """With one seed the sd is 0, so any gain "beat the seed spread"."""
    settings = SearchSettings(confirm_seeds=1)
    default, found = Candidate(0, "default", {}, 0.4), Candidate(1, "t4", {}, 0.5)
    default.runs, found.runs = [_row("d1", 0, 0.40)], [_row("f1", 0, 0.41)]
    text = verdict([default, found], settings)
    assert "one seed: no spread, so no verdict" in text
    assert "beats" not in text


def test_the_export_states_the_confirmed_mean_not_the_best_seed(
    space: SearchSpace, tmp_path: Path
) -> None:
    settings = SearchSettings(confirm_seeds=2)
    default, found = (
        Candidate(0, "default", {"lr": 1e-3}, 0.4),
        Candidate(1, "t4", {"lr": 4e-3}, 0.5),
    )
    default.runs = [_row("d1", 1e-3, 0.40, seed=1), _row("d2", 1e-3, 0.42, seed=2)]
    found.runs = [_row("f1", 4e-3, 0.50, seed=1), _row("f2", 4e-3, 0.70, seed=2)]
    report([default, found], [1, 2], space, settings, TrainConfig(), tmp_path, "x", None)
    text = (tmp_path / "best_config.yaml").read_text()
    header = text.splitlines()[0]
    assert "confirmed mean 0.6 ± 0.1414 over 2 seeds (checkpoint: seed 2, 0.7" in header, header
    doc = yaml.safe_load(text)
    assert doc["value"] == pytest.approx(0.6)
    assert doc["checkpoint_value"] == pytest.approx(0.7)
    assert doc["checkpoint"] == "/x/f2/run/models/best.pt"
