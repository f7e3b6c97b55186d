"""Ray and the Tuner: starting or attaching to Ray, resources, the searcher, scheduler and stopper.

- ``init_ray`` is the one place that calls ``ray.init`` (dashboard bound to 127.0.0.1 by
  default, token auth as Ray 2.60 sets it up); ``dashboard_lines`` says how to reach it.
- ``plan_resources`` turns ``--gpus``/``--gpus-per-trial``/``--cpus-per-trial`` into per-trial
  resources and the number of trials that run at once.
- ``check_shared_storage`` refuses a storage path that some node of a cluster cannot see.
- ``build_tuner`` and ``restore_tuner`` wire Optuna (seeded TPE, the hand-fixed default as
  the first point, a ConcurrencyLimiter), ASHA on ``epoch``, the divergence stopper, per-epoch
  checkpoints and retries.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from cattle_yolo.config import TrainConfig
from tune.disk import DiskKeeper
from tune.space import DefineByRun, SearchSettings, SearchSpace, first_points
from tune.stoppers import DivergenceStopper
from tune.storage import is_uri, list_names, read_bytes, write_bytes
from tune.study import StudySearch, journal_storage, make_sampler
from tune.trainable import OBJECTIVE, RUNG_SCORE, train_trial

# Tune checkpoints to keep per trial. On a filesystem path they hold a few bytes (the weights
# are the run folder's last.pt), so all are kept: Tune's experiment state lags its deletions,
# and a kill in between would leave a trial pointing at a deleted checkpoint. With cloud
# storage they carry last.pt, so only the latest two are kept (see tune/trainable.py).
CHECKPOINTS_TO_KEEP_CLOUD = 2


class SearchSetupError(RuntimeError):
    """Resources, cluster or storage do not allow the search as asked (exit code 2)."""


def init_ray(
    address: str | None,
    dashboard: bool,
    dashboard_host: str,
    dashboard_port: int,
    trial_logs: bool = True,
) -> Any:
    """Start a local Ray (or attach to ``address``); returns Ray's context.

    Attaching to a cluster leaves its dashboard as the cluster was started. ``trial_logs``
    forwards the trials' output (one line per epoch) to this terminal.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # use the CLIReporter table below
    # Per-epoch checkpoints with num_to_keep force frequent state snapshots: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        return ray.init(address=address, log_to_driver=trial_logs)
    return ray.init(
        include_dashboard=dashboard,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
        log_to_driver=trial_logs,
    )


def token_auth_enabled() -> bool:
    """Ray 2.60 turns token auth on for a new local cluster by setting RAY_AUTH_MODE=token."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def token_location() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")


def dashboard_lines(context: Any, dashboard_host: str, attached: bool) -> list[str]:
    """What to print at start: the URL, how to authenticate, and a warning if exposed."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return ["Ray dashboard: off"]
    lines = [f"Ray dashboard: http://{url}"]
    if token_auth_enabled():
        lines.append(
            f"  token auth is on: paste the token from {token_location()} (or the output of "
            "`ray get-auth-token`) when the page asks; API clients send the header "
            "'Authorization: Bearer <token>'"
        )
    else:
        lines.append(
            "  WARNING: token auth is off (RAY_AUTH_MODE); anyone who reaches this port "
            "can submit jobs and run code on this machine"
        )
    if not attached and dashboard_host not in ("127.0.0.1", "localhost"):
        lines.append(
            f"  WARNING: the dashboard listens on {dashboard_host}, not only on this machine. "
            "Anyone who reaches an unauthenticated Ray dashboard can run code on it; keep token "
            "auth on and the port behind a firewall, or use an SSH tunnel to 127.0.0.1 instead"
        )
    return lines


@dataclass(frozen=True)
class Resources:
    gpus: float  # GPUs the search may use
    gpus_per_trial: float  # 0 on CPU
    cpus_per_trial: float
    concurrent: int  # trials that run at once

    def per_trial(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def plan_resources(
    cluster: dict[str, float],
    gpus: float | None,
    gpus_per_trial: float,
    cpus_per_trial: float | None,
    trials: int,
) -> Resources:
    """Check the asked resources against what Ray sees and size the concurrency.

    ``gpus=None`` uses every GPU Ray sees. With GPUs, ``cpus_per_trial=None`` shares the CPUs
    evenly between the trials that run at once; on CPU it is 1.
    """
    seen_gpus, seen_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    gpus = seen_gpus if gpus is None else gpus
    if gpus < 0 or gpus > seen_gpus:
        raise SearchSetupError(
            f"--gpus {gpus:g}: Ray sees {seen_gpus:g} GPU(s) in this cluster; ask for at most that"
        )
    if gpus > 0:
        if not 0 < gpus_per_trial <= gpus:
            raise SearchSetupError(f"--gpus-per-trial {gpus_per_trial:g} must be in (0, {gpus:g}]")
        concurrent = math.floor(gpus / gpus_per_trial + 1e-9)
        if cpus_per_trial is None:
            cpus_per_trial = max(1.0, math.floor(seen_cpus / concurrent))
    else:
        gpus_per_trial = 0.0
        cpus_per_trial = 1.0 if cpus_per_trial is None else cpus_per_trial
    if cpus_per_trial <= 0:
        raise SearchSetupError(f"--cpus-per-trial {cpus_per_trial:g} must be > 0")
    if cpus_per_trial > seen_cpus:
        raise SearchSetupError(
            f"--cpus-per-trial {cpus_per_trial:g}: Ray sees {seen_cpus:g} CPU(s) in this cluster"
        )
    by_cpu = math.floor(seen_cpus / cpus_per_trial + 1e-9)
    concurrent = min(concurrent, by_cpu) if gpus > 0 else by_cpu
    return Resources(gpus, gpus_per_trial, float(cpus_per_trial), max(1, min(concurrent, trials)))


@ray.remote(num_cpus=0)
def _sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(storage: str) -> int:
    """With more than one node, every node must see ``storage`` (a URI is taken as shared).

    A marker file is written at ``storage`` and each node is asked whether it sees it.
    Returns the number of alive nodes; raises ``SearchSetupError`` naming the nodes that do not.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or is_uri(storage):
        return len(nodes)
    root = Path(storage.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".shared-storage-check-{uuid.uuid4().hex}"
    marker.write_text("written by the search driver\n")
    try:
        refs = [
            _sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        ]
        seen = ray.get(refs, timeout=120)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise SearchSetupError(
            f"--storage {storage}: a local path that node(s) {', '.join(blind)} cannot see. "
            f"With {len(nodes)} nodes every trial must write to shared storage: give a path on "
            "a filesystem all nodes mount (NFS, Lustre...) or a cloud URI such as s3://bucket/dir"
        )
    return len(nodes)


def trial_name(trial: Any) -> str:
    """``trial_003_1a2b3c4d``: the trial's number in the search, then its unique id."""
    number = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    prefix = f"trial_{int(number):03d}_" if number.isdigit() else "trial_"
    return prefix + trial.trial_id


def make_trainable(
    base: TrainConfig,
    datasets: Any,
    settings: SearchSettings,
    resources: Resources,
    extra_callbacks: tuple = (),
    threshold_range: tuple[float, float] | None = (0.0, 1.0),
) -> Any:
    """The trial function with the shared data in the object store and its resources.
    ``threshold_range``: see ``SearchSpace.threshold_range``."""
    with_data = tune.with_parameters(
        train_trial,
        base=base.to_dict(),
        datasets=datasets,
        metric=settings.metric,
        mode=settings.mode,
        worst=settings.worst,
        objective=settings.objective,
        window=settings.objective_window,
        threshold_range=threshold_range,
        extra_callbacks=extra_callbacks,
    )
    return tune.with_resources(named_trainable(with_data), resources.per_trial())


def named_trainable(function: Any) -> type:
    """The trial function as Tune's function-trainable class, with a ``repr`` naming the trial
    (``trial trial_003_1a2b3c4d``): Ray shows it on the dashboard's Actors page, where every
    trial was ``train_trial`` before."""
    from ray.tune.trainable.function_trainable import wrap_function

    class TrialActor(wrap_function(function, name="train_trial")):
        def __repr__(self) -> str:
            return f"trial {self.trial_name}"

    return TrialActor


def make_searcher(
    space: SearchSpace,
    base: TrainConfig,
    settings: SearchSettings,
    concurrent: int,
    sampler: str = "tpe",
    journal: Path | None = None,
    study_name: str = "search",
    warm_trials: list | None = None,
) -> tuple[ConcurrencyLimiter, list[str]]:
    """Optuna over the define-by-run space, the default config first, the study persisted in
    ``journal`` (in memory when None) and seeded with ``warm_trials``; returns notes too."""
    points, notes = first_points(space, base)
    searcher = StudySearch(
        space=DefineByRun(space.knobs),
        metric=OBJECTIVE,
        mode=settings.mode,
        points_to_evaluate=points,
        sampler=make_sampler(settings, concurrent, sampler),
        storage=journal_storage(journal) if journal is not None else None,
        study_name=study_name,
        max_epochs=settings.epochs,
        warm_trials=warm_trials,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrent), notes


def progress_reporter(space: SearchSpace, settings: SearchSettings) -> tune.CLIReporter:
    """The terminal table: running and finished trials, knob values, epoch, loss and metric."""
    return tune.CLIReporter(
        metric=OBJECTIVE,
        mode=settings.mode,
        parameter_columns=list(space.knobs),
        metric_columns={
            "epoch": "epoch",
            "train_loss": "loss",
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
    name: str,
    storage: str,
    max_failures: int,
    verbose: int = 1,
    sampler: str = "tpe",
    asha: bool = True,
    divergence: bool = True,
    journal: Path | None = None,
    warm_trials: list | None = None,
    keep_weights: int | None = None,
    callbacks: Sequence[tune.Callback] = (),
) -> tuple[tune.Tuner, list[str]]:
    """A new Tuner for the whole search; returns notes about the first point too.

    Optuna optimises ``objective``; ASHA compares ``rung_score`` (the objective with ties
    broken by val loss), so the Tuner itself has no metric. ``journal`` is the Optuna study's
    file and ``warm_trials`` an earlier study's finished trials; ``keep_weights`` bounds the
    trials that keep a best.pt once ended (``tune.disk``; None keeps all); ``callbacks`` are
    more Tune callbacks. ``sampler="random"``,
    ``asha=False`` (FIFO: every trial runs to the end) and ``divergence=False`` exist for the
    plain strategies of benchmarks/search_efficiency.py.
    """
    searcher, notes = make_searcher(
        space, base, settings, resources.concurrent, sampler, journal, name, warm_trials
    )
    scheduler = (
        ASHAScheduler(
            metric=RUNG_SCORE,
            mode=settings.mode,
            time_attr="epoch",
            max_t=settings.epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
        if asha
        else FIFOScheduler()
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.trials,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    run_config = make_run_config(
        name,
        storage,
        settings,
        max_failures,
        divergence,
        progress_reporter(space, settings),
        verbose,
        keep_weights,
        callbacks,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), notes


def make_run_config(
    name: str,
    storage: str,
    settings: SearchSettings,
    max_failures: int,
    divergence: bool,
    reporter: Any,
    verbose: int,
    keep_weights: int | None,
    callbacks: Sequence[tune.Callback] = (),
) -> tune.RunConfig:
    """What every experiment of a search shares (the search and its confirmation): the
    divergence stopper (unless ``divergence=False``), per-epoch Tune checkpoints (only the
    latest two with cloud storage, see ``CHECKPOINTS_TO_KEEP_CLOUD``), retries
    and the ``DiskKeeper`` with ``keep_weights``. Ray's artifact sync stays off: on cloud
    storage the trial uploads its run folder's files itself (see ``tune/trainable.py``)."""
    stopper = DivergenceStopper(
        settings.patience, settings.spike_ratio, settings.worst, OBJECTIVE, settings.min_rise
    )
    cloud = is_uri(storage)
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        stop=stopper if divergence else None,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=CHECKPOINTS_TO_KEEP_CLOUD if cloud else None
        ),
        failure_config=tune.FailureConfig(max_failures=max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=False),
        progress_reporter=reporter,
        verbose=verbose,
        callbacks=[DiskKeeper(keep_weights, settings.epochs, settings.mode), *callbacks],
    )


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
