"""The Optuna study: journal file, warm start from an earlier study, what StudySearch tells it."""

from pathlib import Path

import optuna
import pytest
from helpers import WriteSpace

from cattle_yolo.config import TrainConfig
from tune.results import DIVERGED, EPOCH, OBJECTIVE
from tune.space import SearchSpace, SpaceError, load_space
from tune.study import JOURNAL_FILE, StudySearch, distributions, finished_trials, journal_storage

SPACE = (
    "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  iou_start: {uniform: [0.1, 0.3]}\n"
    "  iou_end: {uniform: [0.3, 0.6]}\n"
)


def _old_study(path: Path, space: SearchSpace, n: int = 5) -> optuna.Study:
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


def _searcher(
    space: SearchSpace,
    tmp_path: Path,
    warm: list[optuna.trial.FrozenTrial] | None = None,
    max_epochs: int = 4,
) -> StudySearch:
    from tune.search import Study, make_searcher

    settings = space.settings.replace({"epochs": max_epochs, "trials": 8}, "test")
    study = Study(journal=tmp_path / JOURNAL_FILE, warm_trials=warm)
    limiter, _ = make_searcher(space, TrainConfig(), settings, 2, study, study_name="new")
    searcher = limiter.searcher
    assert isinstance(searcher, StudySearch)
    return searcher


def test_warm_started_study_begins_with_the_old_trials(
    tmp_path: Path, write_space: WriteSpace
) -> None:
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
    assert first is not None
    assert first["lr"] == 1e-3
    assert first["iou_start"] == 0.25


def test_warm_start_refuses_another_space(tmp_path: Path, write_space: WriteSpace) -> None:
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


def test_the_study_hears_every_epoch_and_asha_stops_as_pruned(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    space = load_space(write_space(SPACE))
    searcher = _searcher(space, tmp_path, max_epochs=4)
    assert isinstance(searcher, StudySearch)
    for tid in ("done", "cut", "blew", "err"):
        searcher.suggest(tid)
    for e in (1, 2, 3):
        searcher.on_trial_result("done", {OBJECTIVE: 0.1 * e, EPOCH: e})
    searcher.on_trial_complete("done", {OBJECTIVE: 0.4, EPOCH: 4})
    searcher.on_trial_result("cut", {OBJECTIVE: 0.05, EPOCH: 1})
    searcher.on_trial_complete("cut", {OBJECTIVE: 0.07, EPOCH: 2})  # ASHA stopped it at 2
    searcher.on_trial_complete("blew", {OBJECTIVE: 0.0, EPOCH: 1, DIVERGED: True})
    searcher.on_trial_complete("err", None, error=True)
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    by_state = {t.number: t for t in study.trials}
    done, cut, blew, err = (by_state[i] for i in range(4))
    S = optuna.trial.TrialState
    assert done.state == S.COMPLETE
    assert done.value == 0.4
    assert done.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert cut.state == S.PRUNED
    assert cut.intermediate_values == pytest.approx({1: 0.05, 2: 0.07})
    assert cut.value == pytest.approx(0.07)  # Optuna gives a pruned trial its last value
    assert blew.state == S.COMPLETE
    assert blew.value == 0.0
    assert err.state == S.FAIL


def test_tpe_is_multivariate_and_lies_constantly_only_in_parallel(write_space: WriteSpace) -> None:
    from tune.study import make_sampler

    space = load_space(write_space(SPACE))
    assert make_sampler(space.settings, 2)._constant_liar
    assert not make_sampler(space.settings, 1)._constant_liar
    assert make_sampler(space.settings, 1)._multivariate


def _study_with_trials(path: Path, n: int = 2) -> optuna.Study:
    study = optuna.create_study(storage=journal_storage(path), study_name="s")
    for i in range(n):
        study.enqueue_trial({"x": float(i)})
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
        study.tell(t, float(i))
    return study


def test_a_torn_last_journal_record_is_cut_off_so_the_study_lives_on(tmp_path: Path) -> None:
    """A kill mid-append leaves a torn last line. Optuna reads past it, but its next append
    lands on the same line and the study can no longer be read; repaired, it can."""
    from tune.study import repair_journal

    journal = tmp_path / JOURNAL_FILE
    _study_with_trials(journal)
    whole = journal.read_bytes()
    assert repair_journal(journal) is None
    assert journal.read_bytes() == whole

    broken = tmp_path / "broken.log"  # unrepaired: the next trial breaks the study
    broken.write_bytes(whole + b'{"op_code":5,"worker_id":"a","trial_id":1,"valu')
    study = optuna.load_study(study_name="s", storage=journal_storage(broken))
    with pytest.raises(AttributeError):  # its own new trial lands on the torn line: unread
        study.enqueue_trial({"x": 5.0})
    with pytest.raises(ValueError, match="Expecting"):  # once more written after it: unreadable
        _study_with_trials(broken, 1)

    for torn in (b'{"op_code":5,"worker_id":"a","trial_id":1,"valu', b"not json\n"):
        journal.write_bytes(whole + torn)
        note = repair_journal(journal)
        assert note
        assert f"its last record ({len(torn)} bytes) was torn" in note
        assert journal.read_bytes() == whole
        study = optuna.load_study(study_name="s", storage=journal_storage(journal))
        study.enqueue_trial({"x": 5.0})
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
        study.tell(t, 5.0)
        again = optuna.load_study(study_name="s", storage=journal_storage(journal))
        assert [t.value for t in again.trials] == [0.0, 1.0, 5.0]
    kept = (tmp_path / (JOURNAL_FILE + ".torn")).read_bytes()
    assert b"valu\n" in kept
    assert b"not json\n" in kept


def test_a_restored_searcher_fails_the_trials_tune_never_saved(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    """A driver killed after asking the study for a trial but before Tune saved its state:
    the resumed searcher tells that orphan FAIL (else TPE's constant liar avoids it for ever),
    and a start point it had taken is asked again."""
    space = load_space(write_space(SPACE))
    searcher = _searcher(space, tmp_path)
    searcher.suggest("kept")  # the default config, the first start point
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's state snapshot
    searcher.suggest("lost")  # asked after the snapshot: then the driver is killed
    default = searcher._ot_trials["kept"].params

    restored = _searcher(space, tmp_path / "other")
    restored.restore(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    S = optuna.trial.TrialState
    assert [t.state for t in study.trials] == [S.RUNNING, S.FAIL]
    assert study.trials[0].user_attrs == {"tune_trial_id": "kept"}
    assert study.trials[1].user_attrs == {"tune_trial_id": "lost"}

    restored.suggest("kept")  # Tune resumes it: the same study trial
    restored.suggest("next")
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    assert len(study.trials) == 3
    assert study.trials[2].user_attrs == {"tune_trial_id": "next"}
    restored.on_trial_complete("kept", {OBJECTIVE: 0.3, EPOCH: 4})
    assert (
        optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
        .trials[0]
        .value
        == 0.3
    )
    assert default  # the first trial was the default, not an orphan


def test_results_for_a_trial_the_journal_already_finished_are_ignored(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    """Tune's state can predate the study's: a trial told COMPLETE just before a driver kill
    comes back RUNNING in Tune and reports again; the study keeps its value, nothing raises."""
    space = load_space(write_space(SPACE))
    searcher = _searcher(space, tmp_path)
    searcher.suggest("t")
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.on_trial_complete("t", {OBJECTIVE: 0.5, EPOCH: 4})
    restored = _searcher(space, tmp_path / "other")
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("t", {OBJECTIVE: 0.1, EPOCH: 3})
    restored.on_trial_complete("t", {OBJECTIVE: 0.2, EPOCH: 2})  # as if ASHA stopped it
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 0.5)]


def test_a_trial_retried_after_it_failed_is_added_again_when_it_ends(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    """Tune gives up on a trial after its retries (the study hears FAIL); a resumed search
    retries it. FAIL is final in Optuna, so its end is a new study trial with the same values,
    naming the Tune trial and the attempt it repeats; Tune and the study then agree."""
    space = load_space(write_space(SPACE))
    searcher = _searcher(space, tmp_path, max_epochs=4)
    for tid in ("ok", "flaky", "cut"):
        searcher.suggest(tid)
    searcher.on_trial_result("flaky", {OBJECTIVE: 0.1, EPOCH: 1})
    searcher.on_trial_complete("flaky", None, error=True)
    searcher.on_trial_result("cut", {OBJECTIVE: 0.05, EPOCH: 1})
    searcher.on_trial_complete("cut", None, error=True)
    searcher.save(str(tmp_path / "searcher.pkl"))

    restored = _searcher(space, tmp_path / "other")
    restored.restore(str(tmp_path / "searcher.pkl"))
    for e in (1, 2, 3):
        restored.on_trial_result("flaky", {OBJECTIVE: 0.1 * e, EPOCH: e})
    restored.on_trial_complete("flaky", {OBJECTIVE: 0.35, EPOCH: 4})
    restored.on_trial_result("cut", {OBJECTIVE: 0.06, EPOCH: 2})
    restored.on_trial_complete("cut", {OBJECTIVE: 0.07, EPOCH: 2})  # ASHA stopped it
    restored.on_trial_complete("ok", {OBJECTIVE: 0.2, EPOCH: 4})
    restored.on_trial_complete("flaky", {OBJECTIVE: 0.9, EPOCH: 4})  # a late duplicate

    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    rows = [(t.number, t.state.name, t.value, t.user_attrs) for t in study.trials]
    flaky, cut = study.trials[1], study.trials[2]
    assert rows[:3] == [
        (0, "COMPLETE", 0.2, {"tune_trial_id": "ok"}),
        (1, "FAIL", None, {"tune_trial_id": "flaky"}),
        (2, "FAIL", None, {"tune_trial_id": "cut"}),
    ]
    retry_flaky, retry_cut = study.trials[3], study.trials[4]
    assert len(study.trials) == 5
    assert retry_flaky.state.name == "COMPLETE"
    assert retry_flaky.value == 0.35
    assert retry_flaky.params == flaky.params
    assert retry_flaky.user_attrs == {"tune_trial_id": "flaky", "retry_of": 1}
    assert retry_flaky.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.35})
    assert retry_cut.state.name == "PRUNED"
    assert retry_cut.value == pytest.approx(0.07)
    assert retry_cut.params == cut.params
    assert retry_cut.user_attrs["retry_of"] == 2


def test_the_limiter_passes_on_the_end_of_a_retried_trial(
    tmp_path: Path, write_space: WriteSpace
) -> None:
    """The ConcurrencyLimiter lets an errored trial go; when a resume retries it, its end must
    still reach the study (Ray's own limiter drops it: the study kept FAIL for ever)."""
    from tune.search import Study, make_searcher

    space = load_space(write_space(SPACE))
    settings = space.settings.replace({"epochs": 4, "trials": 8}, "test")
    search_study = Study(journal=tmp_path / JOURNAL_FILE)
    limiter, _ = make_searcher(space, TrainConfig(), settings, 2, search_study, study_name="new")
    limiter.suggest("flaky")
    limiter.on_trial_complete("flaky", None, error=True)  # past its retries: FAIL
    limiter.on_trial_result("flaky", {OBJECTIVE: 0.2, EPOCH: 4})  # retried on resume
    limiter.on_trial_complete("flaky", {OBJECTIVE: 0.3, EPOCH: 4})
    study = optuna.load_study(study_name="new", storage=journal_storage(tmp_path / JOURNAL_FILE))
    assert [(t.state.name, t.value) for t in study.trials] == [("FAIL", None), ("COMPLETE", 0.3)]
