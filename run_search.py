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
from typing import TYPE_CHECKING

from cattle_yolo.config import ConfigError, parse_overrides
from tune.design import DESIGNS
from tune.driver import EXIT_BAD_INPUT, DriverOptions
from tune.plan import SETTING_FLAGS, Plan, SearchRequest
from tune.plan import plan_search as plan_request

if TYPE_CHECKING:  # Ray is imported only after the space and config are checked
    from tune.audit import AuditPlan


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
        "--confirm-set",
        dest="confirm_overrides",
        action="append",
        metavar="KEY=VALUE",
        help="the confirmation's config differs from the search's by this, e.g. "
        "--confirm-set imgsz=256 (search at a cheap fidelity, confirm at the one that "
        "counts; epochs=N also sets its length; repeatable; the export carries it)",
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


def search_request(args: argparse.Namespace) -> SearchRequest:
    """What the flags ask of the planning (``tune.plan``)."""
    return SearchRequest(
        space=args.space,
        settings={k: getattr(args, k) for k in SETTING_FLAGS},
        config=args.config,
        overrides=list(args.overrides),
        data=args.data,
        smoke_test=args.smoke_test,
        name=args.name,
        storage=args.storage,
        resume=args.resume,
        warm_start=args.warm_start,
        confirm_overrides=list(args.confirm_overrides or []),
    )


def driver_options(args: argparse.Namespace) -> DriverOptions:
    """The resource, cluster and output flags, for ``tune.driver``."""
    return DriverOptions(
        address=args.address,
        gpus=args.gpus,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        keep_weights=args.keep_weights,
        max_failures=args.max_failures,
        storage=args.storage,
        resume=args.resume,
        export=args.export,
        dashboard=not args.no_dashboard,
        dashboard_host=args.dashboard_host,
        dashboard_port=args.dashboard_port,
        quiet=args.quiet,
    )


def plan_search(args: argparse.Namespace) -> Plan:
    """Check the space, settings and base config; decide fresh start or resume."""
    return plan_request(search_request(args))


# Flags of a search that an audit has no use for: refused rather than ignored.
NOT_FOR_AUDIT = (
    "space",
    "trials",
    "grace_period",
    "reduction_factor",
    "confirm",
    "confirm_seeds",
    "confirm_overrides",
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


def main(argv: list[str] | None = None) -> int:
    from tune import cluster, driver, storage

    args = build_parser().parse_args(argv)
    try:
        cluster.check_exposure(
            args.address,
            not args.no_dashboard,
            args.dashboard_host,
            args.allow_unauthenticated_dashboard,
        )
        if args.audit:
            return driver.run_audit(plan_audit(args), driver_options(args), args.name)
        plan = plan_search(args)
        lock = storage.lock_experiment(plan.report_dir)  # noqa: F841 (held until exit)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in plan.notes:
        print(f"note: {note}", flush=True)
    return driver.run_search(plan, driver_options(args))


if __name__ == "__main__":
    sys.exit(main())
