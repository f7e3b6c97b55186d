"""The Optuna study: journal file, warm start from an earlier study, what StudySearch tells it."""

import optuna
import pytest

from cattle_yolo.config import TrainConfig
from tune.space import SpaceError, load_space
from tune.study import JOURNAL_FILE, StudySearch, distributions, finished_trials, journal_storage

SPACE = (
    "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  iou_start: {uniform: [0.1, 0.3]}\n"
    "  iou_end: {uniform: [0.3, 0.6]}\n"
)


def _old_study(path, space, n=5):
    """An earlier search's journal: n finished trials (one pruned) over ``space``."""
    study = optuna.create_study(
        storage=journal_storage(path), study_name="old", direction="maximize"
    )
    dists = distributions(space)
    for i in range(n):
        params = {"lr": 1e-3 * (i + 1), "iou_start": 0.2, "iou_end_fraction": 0.1 * i}
        state = optuna.trial.TrialState.PRUNED if i == 0 else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                state=state,
                value=None if i == 0 else 0.1 * i,
                intermediate_values={1: 0.01 * i, 2: 0.02 * i},
            )
        )
    return study


def _searcher(space, tmp_path, warm=None, max_epochs=4):
    from tune.search import make_searcher

    settings = space.settings.replace({"epochs": max_epochs, "trials": 8}, "test")
    limiter, _ = make_searcher(
        space,
        TrainConfig(),
        settings,
        2,
        journal=tmp_path / JOURNAL_FILE,
        study_name="new",
        warm_trials=warm,
    )
    return limiter.searcher


def test_warm_started_study_begins_with_the_old_trials(tmp_path, write_space):
    space = load_space(write_space(SPACE))
    _old_study(tmp_path / "old" / JOURNAL_FILE, space)
    warm = finished_trials(tmp_path / "old" / JOURNAL_FILE, space)
    assert len(warm) == 5
    searcher = _searcher(space, tmp_path, warm)
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    done = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    assert sorted(t.value or 0 for t in done) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in done) == 1
    first = searcher.suggest("a")  # the hand-fixed default is still the first trial
    assert first["lr"] == 1e-3 and first["iou_start"] == 0.25


def test_warm_start_refuses_another_space(tmp_path, write_space):
    space = load_space(write_space(SPACE))
    _old_study(tmp_path / JOURNAL_FILE, space)
    wider = load_space(write_space(SPACE.replace("1.0e-2", "3.0e-2"), "wider.yaml"))
    with pytest.raises(SpaceError, match="another space"):
        finished_trials(tmp_path / JOURNAL_FILE, wider)
    other = load_space(write_space("space:\n  box_loss_weight: {uniform: [2, 12]}\n", "o.yaml"))
    with pytest.raises(SpaceError, match="knobs"):
        finished_trials(tmp_path / JOURNAL_FILE, other)
    with pytest.raises(SpaceError, match="no Optuna study"):
        finished_trials(tmp_path / "missing.log", space)


def test_the_study_hears_every_epoch_and_asha_stops_as_pruned(tmp_path, write_space):
    space = load_space(write_space(SPACE))
    searcher = _searcher(space, tmp_path, max_epochs=4)
    assert isinstance(searcher, StudySearch)
    for tid in ("done", "cut", "blew", "err"):
        searcher.suggest(tid)
    for e in (1, 2, 3):
        searcher.on_trial_result("done", {"objective": 0.1 * e, "epoch": e})
    searcher.on_trial_complete("done", {"objective": 0.4, "epoch": 4})
    searcher.on_trial_result("cut", {"objective": 0.05, "epoch": 1})
    searcher.on_trial_complete("cut", {"objective": 0.07, "epoch": 2})  # ASHA stopped it at 2
    searcher.on_trial_complete("blew", {"objective": 0.0, "epoch": 1, "diverged": True})
    searcher.on_trial_complete("err", None, error=True)
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    by_state = {t.number: t for t in study.trials}
    done, cut, blew, err = (by_state[i] for i in range(4))
    S = optuna.trial.TrialState
    assert done.state == S.COMPLETE and done.value == 0.4
    assert done.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert cut.state == S.PRUNED and cut.intermediate_values == pytest.approx({1: 0.05, 2: 0.07})
    assert cut.value == pytest.approx(0.07)  # Optuna gives a pruned trial its last value
    assert blew.state == S.COMPLETE and blew.value == 0.0  # diverged: the worst value
    assert err.state == S.FAIL


def test_tpe_is_multivariate_and_lies_constantly_only_in_parallel(write_space):
    from tune.study import make_sampler

    space = load_space(write_space(SPACE))
    assert make_sampler(space.settings, 2)._constant_liar
    assert not make_sampler(space.settings, 1)._constant_liar
    assert make_sampler(space.settings, 1)._multivariate
