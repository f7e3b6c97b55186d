"""Driving a planned search or audit on Ray: start-up, the shared data, the Tuner, the report.

``run_search`` starts (or attaches to) Ray, decodes the dataset once, builds or restores the
Tuner (``tune.search``), runs it, writes the report (``tune.report``), applies the disk rule
and runs the confirmation; ``run_audit`` does the same for a fix audit (``tune.audit``). Both
return the command's exit code: 0 done, 1 no result, 2 bad input or resources, 130 interrupted.
The plan comes from ``tune.plan`` (or ``tune.audit.plan_audit``); the options are the command
line's resource, cluster and output flags.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cattle_yolo.config import ConfigError, TrainConfig
from tune.plan import Plan, disk_plan, publish, save_plan
from tune.results import Status

if TYPE_CHECKING:
    from ray.tune import Tuner

    from tune.audit import AuditPlan
    from tune.cluster import Resources
    from tune.results import TrialRow
    from tune.search import Experiment

EXIT_NO_RESULT, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


@dataclass(frozen=True)
class DriverOptions:
    """The command line's resource, cluster and output flags (see ``run_search.py --help``)."""

    address: str | None = None  # attach to this Ray cluster (None: start a local one)
    gpus: float | None = None
    gpus_per_trial: float = 1.0
    cpus_per_trial: float | None = None
    keep_weights: int = 3
    max_failures: int = 2
    storage: str = "ray_results"  # the audit's (a search's is in its plan)
    resume: bool = False  # the audit's
    export: str | None = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    quiet: bool = False


def experiment(
    options: DriverOptions, name: str, storage: str, callbacks: tuple[Any, ...] = ()
) -> Experiment:
    """The Tune experiment ``name`` in ``storage`` as the options run it."""
    from tune.search import Experiment

    return Experiment(
        name,
        storage,
        max_failures=options.max_failures,
        keep_weights=options.keep_weights,
        verbose=0 if options.quiet else 1,
        callbacks=callbacks,
    )


def start_ray(options: DriverOptions) -> Any:
    """Start (or attach to) Ray and print where its dashboard is."""
    from tune import cluster

    ctx = cluster.init_ray(
        options.address,
        options.dashboard,
        options.dashboard_host,
        options.dashboard_port,
        trial_logs=not options.quiet,
    )
    for line in cluster.dashboard_lines(
        ctx, options.dashboard_host, attached=bool(options.address)
    ):
        print(line, flush=True)
    return ctx


def resources_and_data(
    options: DriverOptions, storage: str, trials: int, base: TrainConfig
) -> tuple[Resources, Any]:
    """Each trial's resources on the running Ray, and the dataset decoded once (shared with
    every trial through the object store)."""
    import ray

    from cattle_yolo.data import load_datasets
    from tune import cluster

    nodes = cluster.check_shared_storage(storage)
    resources = cluster.plan_resources(
        ray.cluster_resources(),
        options.gpus,
        options.gpus_per_trial,
        options.cpus_per_trial,
        trials,
    )
    print(
        f"{nodes} node(s); each trial gets {resources.cpus_per_trial:g} CPU and "
        f"{resources.gpus_per_trial:g} GPU; {resources.concurrent} trial(s) at once",
        flush=True,
    )
    t0 = time.perf_counter()
    datasets = load_datasets(base)
    print(f"dataset decoded once in {time.perf_counter() - t0:.1f}s", flush=True)
    return resources, datasets


def run_search(plan: Plan, options: DriverOptions) -> int:
    """Run (or resume) the planned search and its confirmation; returns the exit code."""
    import ray

    from cattle_yolo.data import DataError
    from tune import cluster, disk, report, search, storage

    try:
        start_ray(options)
        resources, datasets = resources_and_data(
            options, plan.storage, plan.settings.trials, plan.base
        )
        trainable = search.make_trainable(
            plan.base,
            datasets,
            plan.settings,
            resources,
            threshold_range=plan.space.threshold_range(),
        )
        cloud = storage.is_uri(plan.storage)
        if not cloud:
            print(
                disk_plan(plan, len(datasets.names), resources.concurrent, options.keep_weights),
                flush=True,
            )
        tuner = _search_tuner(plan, options, trainable, resources)
        print(f"Optuna study: {plan.journal} (optuna-dashboard {plan.journal})", flush=True)
        results = tuner.fit()
        rows = report.trial_rows(results, plan.settings)
        export = Path(options.export) if options.export else None
        lines = report.write_report(
            rows, plan.space, plan.settings, plan.base, plan.report_dir, plan.name, export
        )
        best = report.pick_best(rows, plan.settings.mode)
        ended = disk.ended_rows(rows, plan.settings.epochs, plan.settings.mode)
        disk.enforce(ended, options.keep_weights, protect=[best.path] if best else [])
        publish(plan)
        if not cloud:
            used = disk.folder_bytes(Path(plan.path))
            lines.append(
                f"disk: {used / 2**20:.0f} MB in {plan.path} (best.pt kept for the "
                f"best {options.keep_weights} ended trials; no last.pt of an ended trial)"
            )
        coverage = datasets.val_coverage()
        if coverage:
            lines.append(f"warning: {coverage}")
        print("\n".join(lines), flush=True)
        if any(r.status == Status.UNFINISHED for r in rows):
            print(
                f"the search was interrupted; continue it with the same command or --resume "
                f"--name {plan.name}",
                flush=True,
            )
            return 130
        if best is None:
            return EXIT_NO_RESULT
        if plan.settings.confirm > 0:
            return _confirm(options, plan, rows, trainable, resources, export)
        return 0
    except (cluster.SearchSetupError, ConfigError, DataError, disk.DiskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        ray.shutdown()  # stops a Ray this driver started; only disconnects from a cluster


def _search_tuner(
    plan: Plan, options: DriverOptions, trainable: Any, resources: Resources
) -> Tuner:
    """The search's Tuner: restored from ``plan.path`` (its journal repaired, its trials
    extended to ``plan.extend_to``) when the plan resumes, else a new one (warm-started from
    ``plan.warm_start``). Saves the plan either way."""
    from tune import search, storage
    from tune.study import JOURNAL_FILE, finished_trials, repair_journal

    if plan.resume:
        torn = repair_journal(plan.journal)
        if torn:
            print(f"note: {torn}", flush=True)
        if plan.extend_to:
            search.extend_trials(plan.path, plan.extend_to)
            print(f"extending the search to {plan.extend_to} trials", flush=True)
        print(
            f"resuming the search at {plan.path}: finished trials are kept, unfinished "
            "and errored ones continue from their last checkpoint",
            flush=True,
        )
        save_plan(plan)  # the trial count or the confirmation may have changed
        return search.restore_tuner(plan.path, trainable)
    save_plan(plan)
    warm = finished_trials(plan.warm_start, plan.space) if plan.warm_start else None
    if warm is not None:
        print(
            f"warm start: the study begins with {len(warm)} finished trial(s) of {plan.warm_start}",
            flush=True,
        )
    # on cloud storage the Optuna journal is uploaded as each trial ends
    uploads = (
        (search.UploadOnTrialEnd(plan.report_dir, plan.path, [JOURNAL_FILE]),)
        if storage.is_uri(plan.storage)
        else ()
    )
    tuner, notes = search.build_tuner(
        trainable,
        plan.space,
        plan.base,
        plan.settings,
        resources,
        experiment(options, plan.name, plan.storage, uploads),
        search.Study(journal=plan.journal, warm_trials=warm),
    )
    for note in notes:
        print(f"note: {note}", flush=True)
    return tuner


def _confirm(
    options: DriverOptions,
    plan: Plan,
    rows: list[TrialRow],
    trainable: Any,
    resources: Resources,
    export: Path | None,
) -> int:
    """Retrain the top configs and the default on fresh seeds (with ``--confirm-set``'s
    config, its data decoded again); export the best by mean."""
    from cattle_yolo.data import load_datasets
    from tune import confirm, search, storage

    base, settings = plan.confirmation()
    candidates = confirm.pick_candidates(rows, plan.space, settings, base, settings.confirm)
    seeds = confirm.fresh_seeds(settings, settings.confirm_seeds)
    path = storage.experiment_path(plan.storage, plan.name + confirm.CONFIRM_SUFFIX)
    if base is not plan.base:  # --confirm-set: its own data size, epochs, ...
        old, new = plan.base.to_dict(), base.to_dict()
        changed = ", ".join(f"{k}={new[k]}" for k in new if old.get(k) != new[k])
        print(f"the confirmation differs from the search by {changed or 'nothing'}", flush=True)
        trainable = search.make_trainable(
            base,
            load_datasets(base),
            settings,
            resources,
            threshold_range=plan.space.threshold_range(),
        )
    print(
        f"confirming {len(candidates) - 1} config(s) and the default on seeds {seeds}: "
        f"{len(candidates) * len(seeds)} runs of {settings.epochs} epochs",
        flush=True,
    )
    if search.can_restore(path):
        tuner = search.restore_tuner(path, trainable)
    else:
        tuner = confirm.build_confirm_tuner(
            trainable,
            candidates,
            seeds,
            settings,
            resources.concurrent,
            experiment(options, plan.name, plan.storage),
        )
    results = tuner.fit()
    confirm.attach_runs(candidates, results, settings)
    lines = confirm.report(
        candidates,
        seeds,
        plan.space,
        settings,
        base,
        plan.report_dir,
        plan.name,
        export,
        keep=options.keep_weights,
    )
    publish(plan)
    print("\n".join(lines), flush=True)
    if confirm.unfinished(candidates):
        print("the confirmation was interrupted; the same command continues it", flush=True)
        return 130
    return 0


def run_audit(plan: AuditPlan, options: DriverOptions, name: str | None = None) -> int:
    """Train the audit's grid (or continue it) and write its report."""
    import ray

    from cattle_yolo.data import DataError
    from tune import audit, audit_report, cluster, disk, search, storage

    name = name or f"audit-{Path(plan.before).stem}-{Path(plan.after).stem}"
    where = storage.resolve(options.storage)
    path = storage.experiment_path(where, name)
    folder = storage.local_copy(name) if storage.is_uri(where) else Path(path)
    try:
        lock = storage.lock_experiment(folder, "audit")  # noqa: F841 (held until exit)
        resume = search.can_restore(path)
        if options.resume and not resume:
            raise ConfigError(f"--resume: no audit to resume at {path}")
        if resume and storage.is_uri(where):
            storage.download(path, folder, [audit.PLAN_FILE])
        if resume:
            audit.check_resume(plan, folder)
        print("\n".join(audit.describe(plan)), flush=True)
        start_ray(options)
        resources, datasets = resources_and_data(options, where, len(plan.runs()), plan.base)
        # the config's own threshold: score_threshold is scored after training, per level
        trainable = search.make_trainable(
            plan.base, datasets, plan.settings, resources, threshold_range=None
        )
        if resume:
            print(f"resuming the audit at {path}: finished runs are kept", flush=True)
            tuner = search.restore_tuner(path, trainable)
        else:
            audit.save_plan(plan, folder)
            if storage.is_uri(where):
                storage.upload(folder, path, [audit.PLAN_FILE])
            tuner = audit.build_tuner(
                trainable, plan, experiment(options, name, where), resources.concurrent
            )
        t0 = time.perf_counter()
        runs = audit.collect(tuner.fit(), plan, list(datasets.names))
        if any(r.status == Status.UNFINISHED for r in runs):
            print(f"the audit was interrupted; continue it with --resume --name {name}")
            return 130
        lines = audit_report.write_report(plan, runs, folder)
        if storage.is_uri(where):
            storage.upload(folder, path)
        print("\n".join(lines), flush=True)
        print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)
        return EXIT_NO_RESULT if any(r.status == Status.ERRORED for r in runs) else 0
    except (cluster.SearchSetupError, ConfigError, DataError, disk.DiskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        ray.shutdown()
