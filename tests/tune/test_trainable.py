"""A trial's objective (best epoch or the mean of the last epochs), ASHA's rung score with its
tie-break, and what EpochReporter reports; no Ray cluster needed."""

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import WriteSpace
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from tune.results import (
    EPOCH,
    OBJECTIVE,
    OBJECTIVE_EPOCH,
    RESUMED_FROM_EPOCH,
    RUNG_SCORE,
    THRESHOLD,
    THRESHOLD_F1,
)
from tune.space import SearchSettings
from tune.trainable import EpochReporter


def _settings(
    metric: str = S.MAP50_95, mode: str = "max", objective: str = "best", window: int = 3
) -> SearchSettings:
    return SearchSettings(metric=metric, mode=mode, objective=objective, objective_window=window)


def _reporter(
    objective: str = "best",
    window: int = 3,
    mode: str = "max",
    threshold_range: tuple[float, float] | None = None,
) -> EpochReporter:
    settings = _settings(mode=mode, objective=objective, window=window)
    return EpochReporter(settings, threshold_range=threshold_range)


def _feed(
    reporter: EpochReporter, curve: list[float], val_loss: float = 1.0
) -> list[dict[str, Any]]:
    out = []
    for epoch, value in enumerate(curve, 1):
        stats = {S.EPOCH: epoch, S.MAP50_95: value, S.VAL_LOSS: val_loss, S.BEST_EPOCH: 0}
        out.append(reporter.metrics(stats))
    return out


# A lucky config: one high epoch in a noisy curve. A steady one: better on every other epoch.
LUCKY = [0.10, 0.30, 0.08, 0.12, 0.09, 0.11]
STEADY = [0.15, 0.18, 0.20, 0.21, 0.21, 0.22]


def test_best_epoch_objective_rewards_the_lucky_epoch() -> None:
    lucky, steady = _feed(_reporter(), LUCKY)[-1], _feed(_reporter(), STEADY)[-1]
    assert lucky[OBJECTIVE] == 0.30
    assert lucky[OBJECTIVE_EPOCH] == 2
    assert steady[OBJECTIVE] == 0.22
    assert lucky[OBJECTIVE] > steady[OBJECTIVE]


def test_last_mean_objective_ranks_the_steady_curve_first() -> None:
    lucky = _feed(_reporter("last_mean", 3), LUCKY)
    steady = _feed(_reporter("last_mean", 3), STEADY)
    assert lucky[-1][OBJECTIVE] == pytest.approx((0.12 + 0.09 + 0.11) / 3)
    assert steady[-1][OBJECTIVE] == pytest.approx((0.21 + 0.21 + 0.22) / 3)
    assert steady[-1][OBJECTIVE] > lucky[-1][OBJECTIVE]
    assert lucky[0][OBJECTIVE] == pytest.approx(0.10)  # fewer epochs than the window: their mean
    assert lucky[1][OBJECTIVE] == pytest.approx(0.20)
    assert lucky[-1][OBJECTIVE_EPOCH] == 6


def test_last_mean_counts_a_non_finite_epoch_as_worst() -> None:
    out = _feed(_reporter("last_mean", 2), [0.2, math.nan])
    assert out[-1][OBJECTIVE] == pytest.approx(0.1)


def test_rung_score_only_breaks_ties() -> None:
    r = _reporter()
    assert r.rung_score(0.0, 1.0) > r.rung_score(0.0, 2.0)  # tie: lower val loss ranks first
    assert r.rung_score(0.0, 1.0) > r.rung_score(0.0, math.nan)
    assert r.rung_score(0.001, 100.0) > r.rung_score(0.0, 0.0)  # a real difference wins
    assert abs(r.rung_score(0.5, 3.0) - 0.5) < 1e-6
    low = _reporter(mode="min")
    assert low.rung_score(1.0, 1.0) < low.rung_score(1.0, 2.0)  # mode min: lower is better


def test_asha_keeps_the_tied_trial_with_the_lower_val_loss() -> None:
    """Four trials all at mAP 0.000 at the first rung: ASHA (reduction 2) stops by rung score,
    so the two with the higher val loss are the ones cut."""
    asha = ASHAScheduler(
        metric=RUNG_SCORE,
        mode="max",
        time_attr=EPOCH,
        max_t=8,
        grace_period=1,
        reduction_factor=2,
    )
    reporters = [_reporter() for _ in range(4)]
    val_losses = [3.0, 1.0, 4.0, 2.0]  # trial 1 best, then 3
    trials = [Trial("__fake", trial_id=f"t{i}", stub=True) for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)  # type: ignore[arg-type]  # no controller: ASHA ignores it
    decisions = {}
    for t, rep, vl in zip(trials, reporters, val_losses, strict=True):
        result = _feed(rep, [0.0], val_loss=vl)[-1]
        decisions[t.trial_id] = asha.on_trial_result(None, t, result)  # type: ignore[arg-type]
    # ASHA judges each trial against those recorded before it at the rung (cut below the
    # median with reduction 2): t2 arrives after t0 and t1, both with lower val losses.
    stopped = {k for k, d in decisions.items() if d == TrialScheduler.STOP}
    assert stopped == {"t2"}
    # On the objective alone the four are equal and ASHA cannot rank them.
    assert len({_feed(_reporter(), [0.0], val_loss=v)[-1][OBJECTIVE] for v in val_losses}) == 1


def test_f1_over_thresholds_is_an_objective(write_space: WriteSpace) -> None:
    from tune.space import load_space

    space = load_space(
        write_space("search: {metric: best_f1}\nspace:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    )
    assert space.settings.mode == "max"
    reporter = EpochReporter(space.settings)
    out = [
        reporter.metrics({S.EPOCH: e, S.BEST_F1: v, S.MAP50_95: 0.1})
        for e, v in enumerate([0.4, 0.6, 0.5], 1)
    ]
    assert [o[OBJECTIVE] for o in out] == [0.4, 0.6, 0.6]


def test_the_threshold_of_best_pt_is_reported_and_kept() -> None:
    """The threshold follows best.pt's epoch (the training loop's best_epoch), not the last."""
    reporter = EpochReporter(_settings())
    epochs = [(0.2, 1, 0.31), (0.3, 2, 0.42), (0.25, 2, 0.55)]  # mAP, best_epoch, F1_threshold
    for e, (m, best, thr) in enumerate(epochs, 1):
        out = reporter.metrics(
            {
                S.EPOCH: e,
                S.MAP50_95: m,
                S.BEST_EPOCH: best,
                S.BEST_F1: 0.5,
                S.BEST_F1_THRESHOLD: thr,
                S.BEST_F1_PRECISION: 0.6,
                S.BEST_F1_RECALL: 0.4,
            }
        )
    assert out[THRESHOLD] == 0.42
    assert out[THRESHOLD_F1] == 0.5
    blind = EpochReporter(_settings(), TrainConfig(score_threshold=0.25))
    out = blind.metrics(
        {
            S.EPOCH: 1,
            S.MAP50_95: 0.0,
            S.BEST_EPOCH: 1,
            S.BEST_F1: 0.0,
            S.BEST_F1_THRESHOLD: 1.0,
            S.BEST_F1_PRECISION: 0.0,
            S.BEST_F1_RECALL: 0.0,
        }
    )
    assert out[THRESHOLD] == 0.25  # no true positive at any threshold: the config's own


def test_reporter_state_restores_from_new_and_older_checkpoints(tmp_path: Path) -> None:
    import json

    from tune.trainable import STATE_FILE

    (tmp_path / "new").mkdir()
    # the state file's own fields; the threshold it holds is keyed as Tune's results are
    state = {"epoch": 3, "values": {"1": 0.1, "2": 0.3, "3": 0.2}, "threshold": {THRESHOLD: 0.4}}
    (tmp_path / "new" / STATE_FILE).write_text(json.dumps(state))
    r = _reporter()
    assert r.resume_point(tmp_path / "new", tmp_path / "run") is None  # no weights to load
    assert r.epoch == 3
    assert r.objective_value() == (0.3, 2)
    assert r.threshold == {THRESHOLD: 0.4}
    (tmp_path / "old").mkdir()  # written before per-epoch values were kept: best only
    (tmp_path / "old" / STATE_FILE).write_text(
        json.dumps({"best": 0.3, "best_epoch": 2, "epoch": 3})
    )
    r = _reporter()
    r.resume_point(tmp_path / "old", tmp_path / "run")
    assert r.epoch == 3
    assert r.objective_value() == (0.3, 2)


def test_a_corrupt_last_pt_is_set_aside_and_the_trial_starts_again(tmp_path: Path) -> None:
    """A torn last.pt would fail every retry of the trial; it is renamed .corrupt and the trial
    trains again from epoch 1 (its reporter state from the Tune checkpoint dropped with it)."""
    import json

    from tune.trainable import STATE_FILE

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / STATE_FILE).write_text(
        json.dumps({"epoch": 2, "values": {"1": 0.1, "2": 0.3}, "threshold": {}})
    )
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "last.pt").write_bytes(b"PK\x03\x04 torn")
    r = _reporter()
    assert r.resume_point(tmp_path / "ckpt", tmp_path / "run") is None
    assert r.epoch == 0
    assert r.values == {}
    assert sorted(p.name for p in models.iterdir()) == ["last.pt.corrupt"]
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "last.pt: not a readable cattle_yolo checkpoint" in log
    assert "moved to last.pt.corrupt" in log


def test_a_resume_replays_the_checkpoints_epoch_with_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after last.pt was saved but before the epoch was logged, a trial replays that
    epoch from the checkpoint's numbers, threshold included (the fault campaign hit a KeyError
    here when the threshold was re-scored from the run folder's detections)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cattle_yolo"))
    from builders import tiny_config
    from ray import tune

    from cattle_yolo.train import train

    train(tiny_config(tmp_path, epochs=1), threshold_range=(0.05, 0.5))
    run = tmp_path / "run"
    (run / "metrics" / "training_metrics.jsonl").unlink()  # the kill came before the log line
    (run / "metrics" / "best_val_detections.npz").unlink()  # not needed: nothing is re-scored
    reported: list[dict[str, Any]] = []
    # tune.trainable calls ray.tune.report: record what it would report
    monkeypatch.setattr(tune, "report", lambda m, checkpoint=None: reported.append(m))
    r = EpochReporter(_settings(), names=["cow", "calf"], threshold_range=(0.05, 0.5))
    assert r.resume_point(None, run) == run / "models" / "last.pt"
    (epoch1,) = reported
    assert epoch1[EPOCH] == 1
    assert epoch1[RESUMED_FROM_EPOCH] == 1
    assert 0.05 <= epoch1[THRESHOLD] <= 0.5


def test_names_of_earlier_versions_are_read_as_todays(
    write_space: WriteSpace, tmp_path: Path
) -> None:
    """ "f1" and "F1" differed only by case; they are f1_at_threshold and best_f1 now. A space
    file, a saved search, a run's log or a checkpoint written with the old names still reads."""
    import json

    from tune.space import load_space, settings_from_dict
    from tune.trainable import _logged_epochs

    old = load_space(write_space("search: {metric: F1}\nspace:\n  lr: {uniform: [0.1, 0.2]}\n"))
    assert old.settings.metric == S.BEST_F1
    assert old.settings.mode == "max"
    saved = settings_from_dict({"metric": "f1", "mode": "max"}, "search_settings.yaml")
    assert saved.metric == S.F1_AT_THRESHOLD
    assert old.settings.replace({"metric": "F1"}, "--metric").metric == S.BEST_F1
    log = tmp_path / "metrics" / "training_metrics.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps({S.EPOCH: 1, "F1": 0.5, "F1_threshold": 0.3, "f1": 0.4}) + "\n")
    assert _logged_epochs(tmp_path) == {
        1: {S.EPOCH: 1, S.BEST_F1: 0.5, S.BEST_F1_THRESHOLD: 0.3, S.F1_AT_THRESHOLD: 0.4}
    }
