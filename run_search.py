"""Search the cattle_yolo training knobs with Ray Tune, Optuna (TPE) and ASHA.

    python run_search.py --space search_spaces/fixes.yaml --gpus 2
    python run_search.py --smoke-test                  # a tiny search in about a minute

The space file is checked before Ray starts (a bad one exits with code 2 in well under two
seconds). The dataset is decoded once here and shared with every trial. At the end: a summary
table, results.csv, best_config.yaml (for ``python -m cattle_yolo train --config``) and plots
in the experiment folder ``<storage>/<name>``. Running the same command again, or ``--resume``,
continues an interrupted search. Exit codes: 0 done, 1 no trial finished, 2 bad input or
resources, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cattle_yolo.config import ConfigError, TrainConfig, parse_overrides
from tune.design import DESIGNS
from tune.results import Status
from tune.space import (
    SearchSettings,
    SearchSpace,
    check_base,
    for_metric,
    load_space,
    settings_from_dict,
)

if TYPE_CHECKING:  # Ray is imported only after the space and config are checked
    from tune.audit import AuditPlan
    from tune.cluster import Resources
    from tune.report import TrialRow

HERE = Path(__file__).resolve().parent
EXIT_NO_RESULT, EXIT_BAD_INPUT = 1, 2
SAVED_SPACE, SAVED_SETTINGS = "space.yaml", "search_settings.yaml"

# --smoke-test: tiny images, model and data, 2 trials of 2 epochs.
SMOKE_CONFIG = {
    # fp32 on every machine, so the smoke search repeats the same trials everywhere: with two
    # optimizer steps an epoch BatchNorm's running statistics stay cold, the eval-mode class
    # scores of a high-lr trial can underflow (val loss exactly 0: the collapse rule), and
    # whether they do hangs on rounding.
    "amp": "off",
    "imgsz": 64,
    "neck_channels": 16,
    "synthetic_images": 8,
    "batch": 4,
    "accumulate": 1,
    "warmup_epochs": 1.0,
}
SMOKE_SETTINGS = {"trials": 2, "epochs": 2, "grace_period": 1}
# Flags that override a setting of the space file's `search:` section.
SETTING_FLAGS = (
    "metric",
    "mode",
    "trials",
    "epochs",
    "grace_period",
    "reduction_factor",
    "patience",
    "min_rise",
    "spike_ratio",
    "seed",
    "objective",
    "objective_window",
    "confirm",
    "confirm_seeds",
)
# Settings a resumed search may change: more trials extend it; confirmation runs after it.
RESUME_CHANGEABLE = ("trials", "confirm", "confirm_seeds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_search.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = p.add_argument_group("search space and budget")
    s.add_argument(
        "--space",
        help="search-space YAML (default search_spaces/fixes.yaml; "
        "search_spaces/smoke.yaml with --smoke-test)",
    )
    s.add_argument("--trials", type=int, help="number of trials (space file: search.trials)")
    s.add_argument("--epochs", type=int, help="epochs per trial, ASHA's max_t (search.epochs)")
    s.add_argument("--metric", help="per-epoch stat to optimise, e.g. mAP50_95 (search.metric)")
    s.add_argument("--mode", choices=("max", "min"), help="maximise or minimise the metric")
    s.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial may be stopped")
    s.add_argument("--reduction-factor", type=float, help="ASHA: keep the top 1/N at each rung")
    s.add_argument(
        "--patience",
        type=int,
        help="divergence: stop a trial whose training loss rose this many epochs in a row",
    )
    s.add_argument(
        "--min-rise",
        type=float,
        help="divergence: the least total rise (a fraction, default 0.05) that counts as rising",
    )
    s.add_argument(
        "--spike-ratio",
        type=float,
        help="divergence: stop a trial whose training loss exceeds this multiple of its best",
    )
    s.add_argument("--seed", type=int, help="seeds the TPE sampler and every trial's training")
    s.add_argument(
        "--objective",
        choices=("best", "last_mean"),
        help="a trial's objective from its per-epoch metric: best (best epoch) or "
        "last_mean (mean of the last --objective-window epochs) (search.objective)",
    )
    s.add_argument("--objective-window", type=int, help="last_mean: epochs averaged (default 3)")
    s.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="after the search, retrain the top K configs and the default on fresh "
        "seeds, and export the best by mean (search.confirm; 0 = off)",
    )
    s.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="S",
        help="fresh seeds per confirmed config (search.confirm_seeds, default 3)",
    )
    s.add_argument(
        "--warm-start",
        metavar="EXPERIMENT",
        help="seed a new search's Optuna study with the finished trials of an "
        "earlier experiment on the same space (its folder, or its name in --storage)",
    )
    s.add_argument(
        "--smoke-test",
        action="store_true",
        help="a tiny search (64 px images, 2 trials of 2 epochs) to try things in a minute",
    )

    c = p.add_argument_group("training config shared by every trial")
    c.add_argument(
        "--data",
        help="data.yaml or a folder with train/ and val/, as `cattle_yolo "
        "train --data` takes; default: the embedded synthetic dataset",
    )
    c.add_argument("--config", help="base TrainConfig YAML (defaults: the hand-fixed values)")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key, e.g. --set imgsz=320 (repeatable)",
    )

    a = p.add_argument_group(
        "fix audit: which of the changes between two configs helped (instead of a search)"
    )
    a.add_argument(
        "--audit",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="two configs the trainer reads (a run's config.yaml, an export, a YAML of a few "
        "keys): train a designed experiment over the keys that differ and report each "
        "change's effect with a 95%% interval",
    )
    a.add_argument(
        "--audit-seeds",
        type=int,
        default=3,
        metavar="S",
        help="seeds every design row trains on, paired (default 3; at least 2)",
    )
    a.add_argument(
        "--design",
        choices=DESIGNS,
        default="auto",
        help="auto: full factorial up to 4 changes, a resolution IV fraction for 5-8; "
        "factorial; fractional; oat: each change on BEFORE and each left out of AFTER",
    )
    a.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="KEY,KEY,...",
        help="keys that change together count as one change, e.g. "
        "--group iou_start,iou_end,iou_ramp_epochs (repeatable)",
    )

    r = p.add_argument_group("resources and cluster")
    r.add_argument(
        "--gpus", type=float, help="GPUs the search may use (default: all Ray sees; 0 = CPU)"
    )
    r.add_argument(
        "--gpus-per-trial",
        type=float,
        default=1.0,
        help="GPUs per trial; 0.5 packs two trials on a GPU (default 1)",
    )
    r.add_argument(
        "--cpus-per-trial",
        type=float,
        help="CPUs per trial (default 1 on CPU; with GPUs the CPUs are shared evenly)",
    )
    r.add_argument(
        "--keep-weights",
        type=int,
        default=3,
        metavar="K",
        help="only the best K ended trials keep their best.pt; every trial keeps its "
        "config, metrics and logs (default 3)",
    )
    r.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a trial that raises, each from its last checkpoint (default 2)",
    )
    r.add_argument(
        "--address",
        help="attach to a running Ray cluster: auto or HOST:PORT (default: start a local Ray)",
    )

    o = p.add_argument_group("experiment folder and monitoring")
    o.add_argument(
        "--name",
        help="experiment name (default: the space file's name); an existing "
        "experiment of that name is resumed",
    )
    o.add_argument(
        "--storage",
        default="ray_results",
        help="folder or cloud URI holding experiments; with several nodes it must be "
        "shared storage (default ./ray_results)",
    )
    o.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted search (it must exist); finished trials are kept; "
        "a larger --trials extends a finished one",
    )
    o.add_argument("--export", help="also write the best config to this YAML file")
    o.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="address the Ray dashboard binds to (default 127.0.0.1; 0.0.0.0 exposes "
        "it to the network, and is refused while token auth is off)",
    )
    o.add_argument(
        "--allow-unauthenticated-dashboard",
        action="store_true",
        help="expose the dashboard on --dashboard-host even with token auth off "
        "(RAY_AUTH_MODE=disabled): anyone who reaches it can run code here",
    )
    o.add_argument(
        "--dashboard-port", type=int, default=8265, help="Ray dashboard port (default 8265)"
    )
    o.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    o.add_argument(
        "--quiet",
        action="store_true",
        help="no progress table and no trial output while the search runs",
    )
    return p


@dataclass
class Plan:
    """Everything decided before Ray starts."""

    space: SearchSpace
    settings: SearchSettings
    base: TrainConfig
    storage: str
    name: str
    path: str  # experiment folder or URI
    report_dir: Path  # where results.csv, best_config.yaml and plots go (always local)
    resume: bool
    notes: list[str]  # said once before the search starts
    warm_start: Path | None = None  # the earlier study's journal file
    extend_to: int = 0  # resume: the new trial count of a search that is extended

    @property
    def journal(self) -> Path:
        from tune.study import JOURNAL_FILE

        return self.report_dir / JOURNAL_FILE


def _base_config(
    args: argparse.Namespace, space: SearchSpace, settings: SearchSettings
) -> TrainConfig:
    """Defaults, --config, the space's fixed values, --smoke-test sizes, --set, --data; then the
    search's epochs and seed. The data path is made absolute: trials run in other folders."""
    values = TrainConfig.load(args.config).to_dict()
    values.update(space.fixed)
    if args.smoke_test:
        values.update(SMOKE_CONFIG)
    values = TrainConfig.load(None, values).to_dict()
    values.update(parse_overrides(args.overrides))
    if args.data:
        values["data"] = args.data
    if values.get("data") and "://" not in values["data"]:
        data = Path(values["data"]).expanduser().resolve()
        if not data.exists():
            raise ConfigError(f"--data {values['data']}: no such file or folder")
        values["data"] = str(data)
    values.update(epochs=settings.epochs, seed=settings.seed, out=None)
    return TrainConfig.from_dict(values, source="base config")


def _refuse_changes(args: argparse.Namespace, plan: Plan, fresh: Plan) -> None:
    """On resume the saved space, settings and base config hold; a flag that would change one
    of them is refused rather than ignored (only ``RESUME_CHANGEABLE`` settings may change)."""
    where = f"--resume of {plan.path}"
    given = {k for k in SETTING_FLAGS if getattr(args, k) is not None}
    for key in sorted(given - set(RESUME_CHANGEABLE)):
        old, new = getattr(plan.settings, key), getattr(fresh.settings, key)
        if old != new:
            raise ConfigError(
                f"{where}: --{key.replace('_', '-')} {new} differs from the saved "
                f"{old}; a search keeps its settings (start a new --name instead)"
            )
    if args.space and (fresh.space.knobs, fresh.space.fixed, fresh.space.points) != (
        plan.space.knobs,
        plan.space.fixed,
        plan.space.points,
    ):
        raise ConfigError(
            f"{where}: --space {args.space} differs from the saved space.yaml; "
            "a search keeps its space (start a new --name instead)"
        )
    if args.config or args.overrides or args.data:
        old, new = plan.base.to_dict(), fresh.base.to_dict()
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise ConfigError(
                f"{where}: --config/--set/--data change {', '.join(changed)} from "
                "the saved base config; a search keeps its base config"
            )
    if args.warm_start:
        raise ConfigError(f"{where}: --warm-start only seeds a new search")
    if args.trials is not None and fresh.settings.trials < plan.settings.trials:
        raise ConfigError(
            f"{where}: --trials {fresh.settings.trials} is below the saved "
            f"{plan.settings.trials}; a search can be extended, not shortened"
        )


def _warm_start_journal(args: argparse.Namespace, storage: str) -> Path | None:
    """The journal file of ``--warm-start``: a folder, a journal file, or an experiment name
    in ``--storage`` (on cloud storage its journal is downloaded to ``./ray_results/<name>``)."""
    if not args.warm_start:
        return None
    from tune import storage as store
    from tune.study import JOURNAL_FILE

    folder = Path(args.warm_start).expanduser()
    if not folder.exists() and not store.is_uri(storage):
        folder = Path(storage) / args.warm_start
    elif not folder.exists():
        folder = store.local_copy(args.warm_start)
        remote = store.experiment_path(storage, args.warm_start)
        store.download(remote, folder, [JOURNAL_FILE])
    journal = folder / JOURNAL_FILE if folder.is_dir() else folder
    if not journal.is_file():
        raise ConfigError(
            f"--warm-start {args.warm_start}: no {JOURNAL_FILE} there (nor in "
            f"{storage}); give an experiment folder of an earlier search"
        )
    return journal.resolve()


def plan_search(args: argparse.Namespace) -> Plan:
    """Parse and check the space, settings and base config; decide fresh start or resume."""
    space_path = args.space or str(
        HERE / "search_spaces" / ("smoke.yaml" if args.smoke_test else "fixes.yaml")
    )
    space = load_space(space_path)
    changes = {k: getattr(args, k) for k in SETTING_FLAGS}
    if args.smoke_test:
        changes = {**SMOKE_SETTINGS, **{k: v for k, v in changes.items() if v is not None}}
    settings = space.settings.replace(changes, "command line")
    base = _base_config(args, space, settings)
    check_base(space, base)

    from tune import storage as store
    from tune.search import can_restore  # imports Ray: after the checks
    from tune.study import JOURNAL_FILE

    name = args.name or Path(space_path).stem
    storage = store.resolve(args.storage)
    path = store.experiment_path(storage, name)
    report_dir = store.local_copy(name) if store.is_uri(storage) else Path(path)
    resume = can_restore(path)
    if args.resume and not resume:
        raise ConfigError(f"--resume: no search to resume at {path}")
    if resume and store.is_uri(storage):  # the saved plan and the study, e.g. on a new machine
        saved = (SAVED_SPACE, SAVED_SETTINGS, JOURNAL_FILE)  # what a resume reads
        missing = [n for n in saved if not (report_dir / n).is_file()]
        store.download(path, report_dir, missing)
    plan = Plan(space, settings, base, storage, name, path, report_dir, resume, [])
    if resume and (report_dir / SAVED_SETTINGS).is_file():
        # The searcher and scheduler come back from the experiment; so must their settings.
        saved = yaml.safe_load((report_dir / SAVED_SETTINGS).read_text())
        fresh = plan
        plan = Plan(
            load_space(report_dir / SAVED_SPACE),
            settings_from_dict(saved["settings"], str(report_dir / SAVED_SETTINGS)),
            TrainConfig.from_dict(saved["base"], source=str(report_dir / SAVED_SETTINGS)),
            storage,
            name,
            path,
            report_dir,
            resume,
            [],
        )
        _refuse_changes(args, plan, fresh)
        # Only what this command line says changes; the space file's values do not count.
        keep = {
            k: getattr(fresh.settings, k) for k in RESUME_CHANGEABLE if getattr(args, k) is not None
        }
        if "trials" in keep and fresh.settings.trials > plan.settings.trials:
            plan.extend_to = fresh.settings.trials
        plan.settings = plan.settings.replace(keep, "command line")
    else:
        plan.warm_start = _warm_start_journal(args, storage)
    plan.space, plan.notes = for_metric(plan.space, plan.settings.metric)
    return plan


def save_plan(plan: Plan) -> None:
    plan.report_dir.mkdir(parents=True, exist_ok=True)
    (plan.report_dir / SAVED_SPACE).write_text(Path(plan.space.path).read_text())
    doc = {"settings": asdict(plan.settings), "base": plan.base.to_dict()}
    (plan.report_dir / SAVED_SETTINGS).write_text(yaml.safe_dump(doc, sort_keys=False))
    publish(plan, [SAVED_SPACE, SAVED_SETTINGS])


def publish(plan: Plan, names: list[str] | None = None) -> None:
    """On cloud storage, upload the report folder's files (``names``, or all) to the
    experiment folder; the local folder stays as the driver's copy."""
    from tune import storage

    if storage.is_uri(plan.storage):
        storage.upload(plan.report_dir, plan.path, names)


def start_ray(args: argparse.Namespace) -> Any:
    """Start (or attach to) Ray and print where its dashboard is."""
    from tune import cluster

    ctx = cluster.init_ray(
        args.address,
        not args.no_dashboard,
        args.dashboard_host,
        args.dashboard_port,
        trial_logs=not args.quiet,
    )
    for line in cluster.dashboard_lines(ctx, args.dashboard_host, attached=bool(args.address)):
        print(line, flush=True)
    return ctx


def resources_and_data(
    args: argparse.Namespace, storage: str, trials: int, base: TrainConfig
) -> tuple[Resources, Any]:
    """Each trial's resources on the running Ray, and the dataset decoded once (shared with
    every trial through the object store)."""
    import ray

    from cattle_yolo.data import load_datasets
    from tune import cluster

    nodes = cluster.check_shared_storage(storage)
    resources = cluster.plan_resources(
        ray.cluster_resources(), args.gpus, args.gpus_per_trial, args.cpus_per_trial, trials
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


def run(args: argparse.Namespace, plan: Plan) -> int:
    import ray

    from cattle_yolo.data import DataError
    from tune import cluster, disk, report, search, storage
    from tune.study import JOURNAL_FILE, finished_trials, repair_journal

    try:
        start_ray(args)
        resources, datasets = resources_and_data(
            args, plan.storage, plan.settings.trials, plan.base
        )
        trainable = search.make_trainable(
            plan.base,
            datasets,
            plan.settings,
            resources,
            threshold_range=plan.space.threshold_range(),
        )
        cloud = storage.is_uri(plan.storage)
        uploads = [search.UploadOnTrialEnd(plan.report_dir, plan.path, [JOURNAL_FILE])]
        if not cloud:
            print(
                _disk_plan(plan, len(datasets.names), resources.concurrent, args.keep_weights),
                flush=True,
            )
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
            tuner = search.restore_tuner(plan.path, trainable)
        else:
            save_plan(plan)
            warm = finished_trials(plan.warm_start, plan.space) if plan.warm_start else None
            if warm is not None:
                print(
                    f"warm start: the study begins with {len(warm)} finished trial(s) of "
                    f"{plan.warm_start}",
                    flush=True,
                )
            tuner, notes = search.build_tuner(
                trainable,
                plan.space,
                plan.base,
                plan.settings,
                resources,
                plan.name,
                plan.storage,
                args.max_failures,
                verbose=0 if args.quiet else 1,
                journal=plan.journal,
                warm_trials=warm,
                keep_weights=args.keep_weights,
                callbacks=uploads if cloud else [],
            )
            for note in notes:
                print(f"note: {note}", flush=True)
        print(f"Optuna study: {plan.journal} (optuna-dashboard {plan.journal})", flush=True)
        results = tuner.fit()
        rows = report.trial_rows(results, plan.settings)
        export = Path(args.export) if args.export else None
        lines = report.write_report(
            rows, plan.space, plan.settings, plan.base, plan.report_dir, plan.name, export
        )
        best = report.pick_best(rows, plan.settings.mode)
        ended = disk.ended_rows(rows, plan.settings.epochs, plan.settings.mode)
        disk.enforce(ended, args.keep_weights, protect=[best.path] if best else [])
        publish(plan)
        if not cloud:
            used = disk.folder_bytes(Path(plan.path))
            lines.append(
                f"disk: {used / 2**20:.0f} MB in {plan.path} (best.pt kept for the "
                f"best {args.keep_weights} ended trials; no last.pt of an ended trial)"
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
            return _confirm(args, plan, rows, trainable, resources, export)
        return 0
    except (cluster.SearchSetupError, ConfigError, DataError, disk.DiskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        ray.shutdown()  # stops a Ray this driver started; only disconnects from a cluster


def _disk_plan(plan: Plan, num_classes: int, concurrent: int, keep: int) -> str:
    """Estimate the search's peak disk use; refuse (DiskError) when it will not fit."""
    from tune import disk

    resumable, inference = disk.checkpoint_bytes(plan.base, num_classes)
    s = plan.settings
    confirm_runs = (s.confirm + 1) * s.confirm_seeds if s.confirm else 0  # best.pt until the end
    need = disk.peak_bytes(resumable, inference, concurrent, keep + confirm_runs)
    free = disk.check_free_space(Path(plan.path), need, f"the search {plan.name!r}")
    return (
        f"disk: checkpoints of {resumable / 2**20:.0f} MB (last.pt) and {inference / 2**20:.0f}"
        f" MB (best.pt); peak about {need / 2**30:.2f} GiB for {concurrent} trial(s) at once "
        f"and {keep} kept; {free / 2**30:.1f} GiB free"
    )


def _confirm(
    args: argparse.Namespace,
    plan: Plan,
    rows: list[TrialRow],
    trainable: Any,
    resources: Resources,
    export: Path | None,
) -> int:
    """Retrain the top configs and the default on fresh seeds; export the best by mean."""
    from tune import confirm, search, storage

    settings = plan.settings
    candidates = confirm.pick_candidates(rows, plan.space, settings, plan.base, settings.confirm)
    seeds = confirm.fresh_seeds(settings, settings.confirm_seeds)
    path = storage.experiment_path(plan.storage, plan.name + confirm.CONFIRM_SUFFIX)
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
            plan.name,
            plan.storage,
            args.max_failures,
            verbose=0 if args.quiet else 1,
        )
    results = tuner.fit()
    confirm.attach_runs(candidates, results, settings)
    lines = confirm.report(
        candidates,
        seeds,
        plan.space,
        settings,
        plan.base,
        plan.report_dir,
        plan.name,
        export,
        keep=args.keep_weights,
    )
    publish(plan)
    print("\n".join(lines), flush=True)
    if confirm.unfinished(candidates):
        print("the confirmation was interrupted; the same command continues it", flush=True)
        return 130
    return 0


# Flags of a search that an audit has no use for: refused rather than ignored.
NOT_FOR_AUDIT = (
    "space",
    "trials",
    "grace_period",
    "reduction_factor",
    "confirm",
    "confirm_seeds",
    "warm_start",
    "config",
    "export",
)


def plan_audit(args: argparse.Namespace) -> AuditPlan:
    """The audit's plan from the command line; every check before Ray starts."""
    from tune.audit import plan_audit as make_plan

    given = [k for k in NOT_FOR_AUDIT if getattr(args, k) not in (None, False)]
    if args.smoke_test:
        given.append("smoke_test")
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"--audit takes no {flags}: it trains the design over BEFORE -> AFTER")
    overrides = parse_overrides(args.overrides)
    if args.data:
        overrides["data"] = args.data
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    changes = {k: getattr(args, k) for k in SETTING_FLAGS if k not in NOT_FOR_AUDIT}
    return make_plan(
        args.audit[0],
        args.audit[1],
        overrides=overrides,
        groups=args.group,
        design=args.design,
        seeds=args.audit_seeds,
        settings=changes,
    )


def run_audit(args: argparse.Namespace, plan: AuditPlan) -> int:
    """Train the audit's grid (or continue it) and write its report."""
    import ray

    from cattle_yolo.data import DataError
    from tune import audit, audit_report, cluster, disk, search, storage

    name = args.name or f"audit-{Path(plan.before).stem}-{Path(plan.after).stem}"
    where = storage.resolve(args.storage)
    path = storage.experiment_path(where, name)
    folder = storage.local_copy(name) if storage.is_uri(where) else Path(path)
    try:
        lock = storage.lock_experiment(folder, "audit")  # noqa: F841 (held until exit)
        resume = search.can_restore(path)
        if args.resume and not resume:
            raise ConfigError(f"--resume: no audit to resume at {path}")
        if resume and storage.is_uri(where):
            storage.download(path, folder, [audit.PLAN_FILE])
        if resume:
            audit.check_resume(plan, folder)
        print("\n".join(audit.describe(plan)), flush=True)
        start_ray(args)
        resources, datasets = resources_and_data(args, where, len(plan.runs()), plan.base)
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
                trainable,
                plan,
                name=name,
                storage=where,
                concurrent=resources.concurrent,
                max_failures=args.max_failures,
                verbose=0 if args.quiet else 1,
                keep_weights=args.keep_weights,
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


def main(argv: list[str] | None = None) -> int:
    from tune import cluster, storage

    args = build_parser().parse_args(argv)
    try:
        cluster.check_exposure(
            args.address,
            not args.no_dashboard,
            args.dashboard_host,
            args.allow_unauthenticated_dashboard,
        )
        if args.audit:
            return run_audit(args, plan_audit(args))
        plan = plan_search(args)
        lock = storage.lock_experiment(plan.report_dir)  # noqa: F841 (held until exit)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in plan.notes:
        print(f"note: {note}", flush=True)
    return run(args, plan)


if __name__ == "__main__":
    sys.exit(main())
