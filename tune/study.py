"""The Optuna side of a search: the persisted study, the sampler, and what the study is told.

Ray's ``OptunaSearch`` asks Optuna for each trial's values and tells it the result. It is
subclassed (``StudySearch``) only where the study would otherwise learn something false:

- every epoch's objective is reported as an intermediate value at ``step = epoch`` (Ray uses
  the training iteration, which a retried trial repeats);
- a trial that ASHA stopped early is told as PRUNED, as Optuna's own pruners record it, not
  COMPLETE with its partial value; a diverged trial stays COMPLETE with the worst value;
- a warm start adds an earlier study's finished trials before the first suggestion;
- faults (measured by benchmarks/chaos.py): each study trial names its Tune trial
  (``tune_trial_id``); a trial that errored past its retries is FAIL, and when a resumed search
  retries it and it ends, the end is added as a new study trial (``retry_of``); a study trial
  that a killed driver asked for but Tune never saved is told FAIL on resume; results the
  journal already has (Tune's saved state lags it) are ignored, never an error.

It also holds the glue between a space file and Optuna: ``DefineByRun`` (the define-by-run
space Ray's ``OptunaSearch`` samples), ``first_points`` (the hand-fixed default and the file's
points as Optuna parameters) and the IoU reparameterisation (when both IoU bounds are searched,
Optuna samples ``iou_end`` as a fraction of the room above the sampled ``iou_start``, so every
sample is valid).

The study lives in the experiment folder as a journal file (``optuna_journal.log``, Optuna's
``JournalStorage`` with a file backend and an open-lock, which works on NFS), so
``optuna-dashboard <folder>/optuna_journal.log`` shows it while the search runs and after.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from cattle_yolo.config import TrainConfig
from tune.results import DIVERGED, EPOCH
from tune.space import IOU_END_FRACTION, Distribution, SearchSettings, SearchSpace, SpaceError

JOURNAL_FILE = "optuna_journal.log"
TUNE_TRIAL_ID = "tune_trial_id"  # user attribute: the Tune trial a study trial belongs to
RETRY_OF = "retry_of"  # user attribute: the number of the FAILed study trial a retry repeats


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """A journal storage in ``path``, safe for several processes on a shared filesystem."""
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend)


def repair_journal(path: Path) -> str | None:
    """Cut a torn last record off the journal at ``path``; returns what was done, or None.

    A kill or a full disk in the middle of Optuna's append leaves the last line without its
    newline (or not JSON). Optuna skips such a line when reading, but its next append would
    follow it on the same line and make the whole study unreadable. The torn bytes are moved
    to ``<journal>.torn`` (appended, so nothing is lost) and the file ends at its last whole
    record. A bad line before the last is not a kill's doing; it is left for Optuna to report.
    """
    data = path.read_bytes() if path.is_file() else b""
    if not data:
        return None
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1 if data.endswith(b"\n") else None
    if cut is None:  # no newline at the end: the tail after the last one is torn
        cut = data.rfind(b"\n") + 1
    else:  # a whole last line: torn only when it is not a JSON record
        try:
            json.loads(data[cut:])
            return None
        except ValueError:
            pass
    torn = data[cut:]
    with open(path.with_name(path.name + ".torn"), "ab") as f:
        f.write(torn + b"\n")
    with open(path, "r+b") as f:
        f.truncate(cut)
    return (
        f"{path}: its last record ({len(torn)} bytes) was torn, likely by a kill mid-write; "
        f"cut off (kept in {path.name}.torn). The study continues from the record before it"
    )


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna parameters a trial of ``space`` has (``iou_end`` as its fraction when both IoU
    bounds are searched, as ``DefineByRun`` samples it)."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, dist in space.knobs.items():
        if key == "iou_end" and "iou_start" in space.knobs:
            out[IOU_END_FRACTION] = optuna.distributions.FloatDistribution(0.0, 1.0)
        else:
            out[key] = optuna_distribution(dist)
    return out


def optuna_distribution(dist: Distribution) -> optuna.distributions.BaseDistribution:
    """One knob's range as Optuna's distribution."""
    if dist.kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(dist.choices))
    if dist.kind == "int":
        return optuna.distributions.IntDistribution(int(dist.low), int(dist.high))
    return optuna.distributions.FloatDistribution(
        dist.low, dist.high, log=dist.kind == "loguniform"
    )


def suggest(trial: Any, name: str, dist: Distribution) -> Any:
    """Ask an Optuna trial for a knob's value (define-by-run)."""
    if dist.kind == "choice":
        return trial.suggest_categorical(name, list(dist.choices))
    if dist.kind == "int":
        return trial.suggest_int(name, int(dist.low), int(dist.high))
    return trial.suggest_float(name, dist.low, dist.high, log=dist.kind == "loguniform")


def _end_bounds(end: Distribution, start: float) -> tuple[float, float]:
    return max(end.low, start), end.high


def _place(end: Distribution, start: float, fraction: float) -> float:
    low, high = _end_bounds(end, start)
    if end.kind == "loguniform":
        value = math.exp(math.log(low) + fraction * (math.log(high) - math.log(low)))
    else:
        value = low + fraction * (high - low)
    return max(start, min(high, round(value, 10)))  # rounding keeps the default's 0.45 exact


def _fraction(end: Distribution, start: float, value: float) -> float:
    low, high = _end_bounds(end, start)
    if high <= low:
        return 0.0
    if end.kind == "loguniform":
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


class DefineByRun:
    """Optuna define-by-run space: ``trial -> {derived key: value}``; a picklable callable."""

    def __init__(self, knobs: dict[str, Distribution]) -> None:
        self.knobs = dict(knobs)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        values = {}
        for key, dist in self.knobs.items():
            if key == "iou_end" and "iou_start" in self.knobs:
                continue
            values[key] = suggest(trial, key, dist)
        if "iou_end" in self.knobs and "iou_start" in self.knobs:
            fraction = trial.suggest_float(IOU_END_FRACTION, 0.0, 1.0)
            return {"iou_end": _place(self.knobs["iou_end"], values["iou_start"], fraction)}
        return None


def optuna_params(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """Knob values as Optuna parameters (``iou_end`` becomes its fraction when reparameterized)."""
    params = dict(values)
    if "iou_end" in space.knobs and "iou_start" in space.knobs and "iou_end" in params:
        end = params.pop("iou_end")
        params[IOU_END_FRACTION] = _fraction(space.knobs["iou_end"], params["iou_start"], end)
    return params


def first_points(space: SearchSpace, base: TrainConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """The hand-fixed default (the base config's values) first, then the file's ``points``.

    Returns Optuna parameter dicts and notes for knobs whose default lies outside the range
    (those are left to the sampler).
    """
    notes, points = [], []
    default = {}
    for key, dist in space.knobs.items():
        value = getattr(base, key)
        if dist.contains(value):
            default[key] = value
        else:
            notes.append(f"default {key}={value!r} is outside {dist.describe()}; Optuna samples it")
    paired = "iou_start" in space.knobs and "iou_end" in space.knobs
    for candidate in (default, *space.points):
        point = {**default, **candidate}
        if paired and "iou_start" not in point:
            point.pop("iou_end", None)  # its fraction needs a start value
        if paired and "iou_end" in point and point["iou_end"] < point["iou_start"]:
            notes.append(f"skipped start point {candidate}: iou_end < iou_start")
            continue
        points.append(optuna_params(space, point))
    return points, notes


def make_sampler(settings: SearchSettings, concurrent: int, kind: str = "tpe") -> Any:
    """Seeded multivariate TPE (``constant_liar`` when trials run in parallel, so running
    trials count as tried), or for comparisons a seeded random or Gaussian-process sampler."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(
            seed=settings.seed, n_startup_trials=min(10, max(3, settings.trials // 4))
        )
    # TPE's default of 10 random start-up trials is most of a 12-16 trial search.
    startup = min(10, max(3, settings.trials // 4))
    return optuna.samplers.TPESampler(
        seed=settings.seed,
        n_startup_trials=startup,
        multivariate=True,
        constant_liar=concurrent > 1,
    )


def finished_trials(journal: Path, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE and PRUNED trials of the study in ``journal``, checked against ``space``.

    Raises ``SpaceError`` when the file holds no study or the old trials were sampled over
    other knobs or ranges than ``space`` (a warm start must search the same space).
    """
    if not journal.is_file():
        raise SpaceError(f"--warm-start: no Optuna study at {journal}")
    storage = journal_storage(journal)
    names = optuna.get_all_study_names(storage)
    if len(names) != 1:
        raise SpaceError(f"--warm-start: {journal} holds {len(names)} studies, expected one")
    study = optuna.load_study(study_name=names[0], storage=storage)
    want = distributions(space)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=states)
    for t in trials:
        if t.distributions != want:
            theirs, ours = sorted(t.distributions), sorted(want)
            what = (
                f"knobs {theirs} against {ours}"
                if theirs != ours
                else "; ".join(
                    f"{k}: {t.distributions[k]} against {want[k]}"
                    for k in ours
                    if t.distributions[k] != want[k]
                )
            )
            raise SpaceError(
                f"--warm-start: trial {t.number} of {journal} was sampled over another space "
                f"({what}); a warm start needs the same knobs and ranges"
            )
    return list(trials)


class StudySearch(OptunaSearch):
    """``OptunaSearch`` that tells the study the truth (see the module docstring).

    Args:
        max_epochs: a trial that ended before this epoch without diverging was stopped by ASHA.
        warm_trials: finished trials of an earlier study to add before the first suggestion.
        The rest are ``OptunaSearch``'s.
    """

    def __init__(
        self,
        *args: Any,
        max_epochs: int,
        warm_trials: list[optuna.trial.FrozenTrial] | None = None,
        **kwargs: Any,
    ) -> None:
        self._max_epochs = max_epochs
        self._warm_trials = list(warm_trials or [])
        self._reported: dict[str, set[int]] = {}  # trial id -> epochs told to the study
        # trial id -> (its FAILed study trial, the retry's values by epoch): see _finish_retry
        self._revived: dict[str, tuple[optuna.trial.FrozenTrial, dict[int, float]]] = {}
        self._retried: set[str] = set()  # their retry is in the study
        # not FAIL in the study when this driver last looked: the study is read once per trial
        # per driver, not at every result
        self._running: set[str] = set()
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)  # creates the study, enqueues the first points
        assert self._ot_study is not None
        self._ot_study.add_trials(self._warm_trials)  # only ever called on a new search
        self._warm_trials = []

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:  # the study names Tune's trial, for audits
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return params

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_revived", {})  # saved before retries were tracked
        self.__dict__.setdefault("_retried", set())
        self._running = set()  # a killed driver's view of the study is not this one's
        self.fail_orphans()

    def fail_orphans(self) -> list[int]:
        """Tell FAIL to the study's running trials that no Tune trial owns; returns their numbers.

        A driver killed between asking the study for a trial and saving Tune's state comes back
        without that trial, but the journal has it, RUNNING for ever (under ``constant_liar`` a
        phantom that TPE keeps avoiding). A start point it had taken is enqueued again.
        """
        assert self._ot_study is not None
        owned = {t.number for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        orphans = [t for t in running if t.number not in owned]
        for t in orphans:
            self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            if "fixed_params" in t.system_attrs:
                self._ot_study.enqueue_trial(t.system_attrs["fixed_params"])
        return [t.number for t in orphans]

    def _failed_before(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        """The study trial of ``trial_id`` when it was told FAIL (the Tune trial errored past
        its retries) but the Tune trial runs again: a resumed search retries errored trials."""
        if trial_id in self._revived:
            return self._revived[trial_id][0]
        if trial_id not in self._ot_trials or trial_id in self._retried:
            return None
        if trial_id in self._running and trial_id not in self._completed_trials:
            return None  # seen running in the study since this driver started, not told since
        assert self._ot_study is not None
        number = self._ot_trials[trial_id].number
        frozen = self._ot_study.get_trials(deepcopy=False)[number]
        if frozen.state != optuna.trial.TrialState.FAIL:
            self._running.add(trial_id)
            return None
        self._revived[trial_id] = (frozen, dict(frozen.intermediate_values))
        self._completed_trials.discard(trial_id)
        return frozen

    def _remember(self, trial_id: str, result: dict[str, Any]) -> None:
        value, epoch = result.get(self.metric), result.get(EPOCH)
        if value is not None and epoch is not None and not result.get(DIVERGED):
            self._revived[trial_id][1][int(epoch)] = float(value)

    def _finish_retry(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """FAIL is final in Optuna, so a retried trial that ends is added to the study as a new
        trial with its values (as Optuna's ``RetryFailedTrialCallback`` repeats a failed
        trial), naming the Tune trial and the study trial it retries. Errored again, it waits
        for the next resume."""
        assert self._ot_study is not None
        if result is not None:
            self._remember(trial_id, result)
        if result is None or error:
            return
        failed, values = self._revived.pop(trial_id)
        self._completed_trials.add(trial_id)
        self._retried.add(trial_id)
        epoch = int(result.get(EPOCH) or 0)
        pruned = not result.get(DIVERGED) and 0 < epoch < self._max_epochs and bool(values)
        state = optuna.trial.TrialState
        self._ot_study.add_trial(
            optuna.trial.create_trial(
                params=failed.params,
                distributions=failed.distributions,
                value=values[max(values)] if pruned else float(result[self.metric]),
                intermediate_values=values,
                state=state.PRUNED if pruned else state.COMPLETE,
                user_attrs={**failed.user_attrs, RETRY_OF: failed.number},
            )
        )

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._failed_before(trial_id) is not None:
            self._remember(trial_id, result)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, epoch = result.get(self.metric), result.get(EPOCH)
        if value is None or epoch is None or result.get(DIVERGED):
            return
        reported = self._reported.setdefault(trial_id, set())
        if int(epoch) not in reported:  # a retried epoch, or the last one seen twice
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                # finished in the journal before a driver kill that Tune's state predates
                self._ot_trials[trial_id].report(float(value), int(epoch))
            reported.add(int(epoch))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if self._failed_before(trial_id) is not None:
            self._finish_retry(trial_id, result, error)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result is not None:  # Tune hands the last result only to on_trial_complete
            self.on_trial_result(trial_id, result)
        epoch = int((result or {}).get(EPOCH) or 0)
        stopped_early = (
            result is not None
            and not error
            and not result.get(DIVERGED)
            and 0 < epoch < self._max_epochs
        )
        if not stopped_early:
            super().on_trial_complete(trial_id, result, error)
            return
        assert self._ot_study is not None
        self._ot_study.tell(
            self._ot_trials[trial_id],
            state=optuna.trial.TrialState.PRUNED,
            skip_if_finished=True,
        )
        self._completed_trials.add(trial_id)
