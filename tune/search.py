"""The Tuner: the trainable, searcher, scheduler, stopper and run config of a search.

Ray itself (start-up, dashboard, resources, shared-storage check) is ``tune.cluster``.

- ``build_tuner`` and ``restore_tuner`` wire Optuna (seeded TPE, the hand-fixed default as
  the first point, a ConcurrencyLimiter), ASHA on ``epoch``, the divergence stopper, per-epoch
  checkpoints and retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from cattle_yolo.config import TrainConfig
from cattle_yolo.stats import EpochStats
from tune import storage
from tune.cluster import Resources, SearchSetupError
from tune.disk import DiskKeeper
from tune.results import EPOCH, OBJECTIVE, RUNG_SCORE, TRAIN_LOSS
from tune.space import SearchSettings, SearchSpace
from tune.stoppers import DivergenceStopper
from tune.storage import is_uri, list_names, read_bytes, write_bytes
from tune.study import DefineByRun, StudySearch, first_points, journal_storage, make_sampler
from tune.trainable import train_trial

# Tune checkpoints to keep per trial. On a filesystem path they hold a few bytes (the weights
# are the run folder's last.pt), so all are kept: Tune's experiment state lags its deletions,
# and a kill in between would leave a trial pointing at a deleted checkpoint. With cloud
# storage they carry last.pt, so only the latest two are kept (see tune/trainable.py).
CHECKPOINTS_TO_KEEP_CLOUD = 2


def trial_name(trial: Any) -> str:
    """``trial_003_1a2b3c4d``: the trial's number in the search, then its unique id."""
    number = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    prefix = f"trial_{int(number):03d}_" if number.isdigit() else "trial_"
    return prefix + str(trial.trial_id)


def make_trainable(
    base: TrainConfig,
    datasets: Any,
    settings: SearchSettings,
    resources: Resources,
    extra_callbacks: tuple[Callable[[EpochStats], None], ...] = (),
    threshold_range: tuple[float, float] | None = (0.0, 1.0),
) -> Any:
    """The trial function with the shared data in the object store and its resources.
    ``threshold_range``: see ``SearchSpace.threshold_range``."""
    with_data = tune.with_parameters(
        train_trial,
        base=base,
        settings=settings,
        datasets=datasets,
        threshold_range=threshold_range,
        extra_callbacks=extra_callbacks,
    )
    return tune.with_resources(named_trainable(with_data), resources.per_trial())


def named_trainable(function: Any) -> type:
    """The trial function as Tune's function-trainable class, with a ``repr`` naming the trial
    (``trial trial_003_1a2b3c4d``): Ray shows it on the dashboard's Actors page, where every
    trial was ``train_trial`` before."""
    from ray.tune.trainable.function_trainable import wrap_function

    base: type = wrap_function(function, name="train_trial")

    def __repr__(self: Any) -> str:
        return f"trial {self.trial_name}"

    return type("TrialActor", (base,), {"__repr__": __repr__})


@dataclass(frozen=True)
class Experiment:
    """One Tune experiment (the search, its confirmation, an audit, a benchmark's run): where it
    is written and how it runs."""

    name: str
    storage: str  # a path or URI (``tune.storage``)
    max_failures: int = 2  # retries of a trial that raises, each from its last checkpoint
    keep_weights: int | None = None  # ended trials that keep best.pt (``tune.disk``; None: all)
    verbose: int = 1
    asha: bool = True  # False: FIFO, every trial runs to the end (benchmarks' plain strategies)
    divergence: bool = True  # False: no divergence stopper (the same)
    callbacks: tuple[tune.Callback, ...] = ()  # more Tune callbacks


@dataclass(frozen=True)
class Study:
    """The Optuna side of a search: the sampler, where the study lives and what it starts with."""

    sampler: str = "tpe"  # tpe; random and gp for comparisons (``study.make_sampler``)
    journal: Path | None = None  # the study's journal file (None: in memory)
    warm_trials: list[Any] | None = None  # an earlier study's finished trials
    start_points: bool = True  # False: no default or file points first (benchmarks' from-scratch)


def make_searcher(
    space: SearchSpace,
    base: TrainConfig,
    settings: SearchSettings,
    concurrent: int,
    study: Study = Study(),  # noqa: B008 (frozen: shared safely)
    study_name: str = "search",
) -> tuple[RetryingLimiter, list[str]]:
    """Optuna over the define-by-run space, the default config first, the study persisted in
    ``study.journal`` (in memory when None) and seeded with ``study.warm_trials``; returns
    notes too."""
    points, notes = first_points(space, base) if study.start_points else ([], [])
    searcher = StudySearch(
        space=DefineByRun(space.knobs),
        metric=OBJECTIVE,
        mode=settings.mode,
        points_to_evaluate=points,
        sampler=make_sampler(settings, concurrent, study.sampler),
        storage=journal_storage(study.journal) if study.journal is not None else None,
        study_name=study_name,
        max_epochs=settings.epochs,
        warm_trials=study.warm_trials,
    )
    return RetryingLimiter(searcher, max_concurrent=concurrent), notes


class RetryingLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter``, but the end of a trial it no longer counts as live still
    reaches the searcher: a resumed search retries trials that errored past their retries, and
    the limiter, which let them go when they errored, would drop their end (the fault campaign
    found the study left with FAIL for trials Tune then finished). ``StudySearch`` ignores an
    end it has no use for."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self.live_trials:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def progress_reporter(space: SearchSpace, settings: SearchSettings) -> tune.CLIReporter:
    """The terminal table: running and finished trials, knob values, epoch, loss and metric."""
    return tune.CLIReporter(
        metric=OBJECTIVE,
        mode=settings.mode,
        parameter_columns=list(space.knobs),
        metric_columns={
            EPOCH: "epoch",
            TRAIN_LOSS: "loss",
            settings.metric: settings.metric,
            OBJECTIVE: f"best {settings.metric}",
        },
        max_report_frequency=15,
        max_progress_rows=40,
        sort_by_metric=True,
    )


def build_tuner(
    trainable: Any,
    space: SearchSpace,
    base: TrainConfig,
    settings: SearchSettings,
    resources: Resources,
    experiment: Experiment,
    study: Study = Study(),  # noqa: B008 (frozen: shared safely)
) -> tuple[tune.Tuner, list[str]]:
    """A new Tuner for the whole search; returns notes about the first point too.

    Optuna optimises ``objective``; ASHA compares ``rung_score`` (the objective with ties
    broken by val loss), so the Tuner itself has no metric.
    """
    searcher, notes = make_searcher(
        space, base, settings, resources.concurrent, study, experiment.name
    )
    scheduler = (
        ASHAScheduler(
            metric=RUNG_SCORE,
            mode=settings.mode,
            time_attr=EPOCH,
            max_t=settings.epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
        if experiment.asha
        else FIFOScheduler()
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.trials,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    run_config = make_run_config(experiment, settings, progress_reporter(space, settings))
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), notes


def make_run_config(
    experiment: Experiment, settings: SearchSettings, reporter: Any
) -> tune.RunConfig:
    """What every experiment of a search shares (the search and its confirmation): the
    divergence stopper (unless ``experiment.divergence`` is off), per-epoch Tune checkpoints
    (only the latest two with cloud storage, see ``CHECKPOINTS_TO_KEEP_CLOUD``), retries and
    the ``DiskKeeper``. Ray's artifact sync stays off: on cloud storage the trial uploads its
    run folder's files itself (see ``tune/trainable.py``)."""
    stopper = DivergenceStopper(
        settings.patience, settings.spike_ratio, settings.worst, OBJECTIVE, settings.min_rise
    )
    cloud = is_uri(experiment.storage)
    keeper = DiskKeeper(experiment.keep_weights, settings.epochs, settings.mode)
    return tune.RunConfig(
        name=experiment.name,
        storage_path=experiment.storage,
        stop=stopper if experiment.divergence else None,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=CHECKPOINTS_TO_KEEP_CLOUD if cloud else None
        ),
        failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=False),
        progress_reporter=reporter,
        verbose=experiment.verbose,
        callbacks=[keeper, *experiment.callbacks],
    )


def grid_tuner(
    trainable: Any,
    runs: list[dict[str, Any]],
    run_config: tune.RunConfig,
    concurrent: int,
) -> tune.Tuner:
    """A Tuner that trains exactly ``runs`` (each a Tune config: knob values, ``seed`` and an
    id key), ``concurrent`` at once, in order: the confirmation, the fix audit and the
    recorded curves are such grids."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tune_config = tune.TuneConfig(
        search_alg=BasicVariantGenerator(points_to_evaluate=runs, max_concurrent=concurrent),
        num_samples=len(runs),
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    # Tune takes preset points only for keys its param space names; None leaves them unchecked.
    keys = {key: None for run in runs for key in run}
    return tune.Tuner(trainable, param_space=keys, tune_config=tune_config, run_config=run_config)


def can_restore(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def restore_tuner(path: str, trainable: Any) -> tune.Tuner:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume from
    their last checkpoint, errored ones are retried from their last checkpoint too."""
    return tune.Tuner.restore(
        path, trainable=trainable, resume_unfinished=True, resume_errored=True
    )


def extend_trials(path: str, trials: int) -> None:
    """Raise a saved search's trial count so that a restored Tuner samples more trials.

    Tune keeps the count in its search state (``search_gen_state-*.json``, a cloudpickle; the
    last name wins); ``Tuner.restore`` cannot change it, so it is rewritten here (atomically
    on a filesystem path; an object store's put is atomic) before restoring.
    """
    from ray import cloudpickle

    states = list_names(path, "search_gen_state-")
    if not states:
        raise SearchSetupError(f"--trials: no search state in {path} to extend")
    newest = f"{path.rstrip('/')}/{states[-1]}"
    state = cloudpickle.loads(read_bytes(newest))
    state["total_samples"], state["finished"] = trials, False
    write_bytes(newest, cloudpickle.dumps(state))


class UploadOnTrialEnd(tune.Callback):
    """Uploads ``names`` of a local ``folder`` to ``uri`` each time a trial ends and when the
    experiment ends (the Optuna journal of a search on cloud storage)."""

    def __init__(self, folder: Path, uri: str, names: list[str]) -> None:
        self.folder, self.uri, self.names = folder, uri, names

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        storage.upload(self.folder, self.uri, self.names)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        storage.upload(self.folder, self.uri, self.names)
