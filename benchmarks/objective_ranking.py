"""Which trial objective ranks configs right, and do the divergence rules stop healthy runs?

1. A FIFO search (TPE, every trial to the full epochs, no stopper) over a space.
2. Every config it tried, the hand-fixed default included, retrained on ``--seeds`` fresh seeds
   (the confirmation of ``tune/confirm.py``, with K = every trial, no stopper).
3. For each objective definition (best epoch; mean of the last 2, 3, 5 epochs; final epoch):
   the Spearman rank correlation between each config's search objective (one seed) and its
   confirmed mean over the fresh seeds. The "truth" is the confirmed mean of the same
   definition, and also of one fixed yardstick (mean of the last 3 epochs).
4. The divergence rules replayed on every run of 1 and 2 (all healthy: no run here blows up),
   before (no warmup awareness) and after this change: the false-positive rate. Then a few
   absurd learning rates on a small synthetic run: the epoch each rule set stops them.

Everything is written to ``--json`` (with every run's per-epoch history); weights are deleted.

    python benchmarks/objective_ranking.py --data ../shared/data/cattle-chute --set imgsz=128
    python benchmarks/objective_ranking.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")

from cattle_yolo.stats import FIRST_STEP_LOSS, EpochStats  # noqa: E402 (after the path)
from tune.results import EPOCH, TRAIN_LOSS, VAL_LOSS, WARMUP_EPOCHS  # noqa: E402

if TYPE_CHECKING:
    from tune.space import SearchSettings

OBJECTIVES = {
    "best": ("best", 1),
    "last_mean_2": ("last_mean", 2),
    "last_mean_3": ("last_mean", 3),
    "last_mean_5": ("last_mean", 5),
    "final": ("last_mean", 1),
}
YARDSTICK = "last_mean_3"
BLOWUP_LRS = (0.3, 3.0, 10.0)


def objective(values: list[float], kind: str, window: int) -> float:
    """A trial's objective from its per-epoch metric values (oldest first), mode max, as the
    search computes it (``tune.trainable.trial_objective``; non-finite epochs count as 0)."""
    from tune.trainable import trial_objective

    return trial_objective(dict(enumerate(values, 1)), kind, window, "max", 0.0)[0]


def ranks(xs: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (sa * sb) if sa > 0 and sb > 0 else math.nan


def histories(results: Any, metric: str) -> list[dict[str, Any]]:
    """Per run: its Tune config and per-epoch metric, train/val loss and first-step loss."""
    out = []
    for result in results:
        df = result.metrics_dataframe
        if df is None or EPOCH not in df:
            continue
        by_epoch = {int(r[EPOCH]): r for r in df.to_dict("records") if r.get(EPOCH) == r.get(EPOCH)}
        epochs = sorted(by_epoch)
        first = by_epoch[epochs[0]] if epochs else {}
        out.append(
            {
                "config": {k: v for k, v in (result.config or {}).items()},
                "metric": [float(by_epoch[e].get(metric, math.nan)) for e in epochs],
                TRAIN_LOSS: [float(by_epoch[e].get(TRAIN_LOSS, math.nan)) for e in epochs],
                VAL_LOSS: [float(by_epoch[e].get(VAL_LOSS, math.nan)) for e in epochs],
                FIRST_STEP_LOSS: float(first.get(FIRST_STEP_LOSS, math.nan)),
                WARMUP_EPOCHS: float(first.get(WARMUP_EPOCHS, 0.0)),
                "error": result.error is not None,
            }
        )
    return out


def first_stop(run: dict[str, Any], settings: SearchSettings, warmup_aware: bool) -> int | None:
    """The epoch at which the divergence rules would stop ``run`` (None: never)."""
    from tune.stoppers import divergence_rule

    start = run[FIRST_STEP_LOSS] if math.isfinite(run[FIRST_STEP_LOSS]) else None
    for e in range(1, len(run[TRAIN_LOSS]) + 1):
        rule = divergence_rule(
            run[TRAIN_LOSS][:e],
            settings.patience,
            settings.spike_ratio,
            run[VAL_LOSS][e - 1],
            settings.min_rise,
            start,
            run[WARMUP_EPOCHS] if warmup_aware else 0.0,
        )
        if rule is not None:
            return e
    return None


def delete_weights(folder: Path) -> None:
    for weights in folder.glob("*/run/models/*.pt"):
        weights.unlink()


def blowup_runs(settings: SearchSettings, epochs: int) -> list[dict[str, Any]]:
    """Tiny synthetic trainings at absurd learning rates, outside Ray: their loss histories."""
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.train import DivergedError, train

    runs = []
    for lr in BLOWUP_LRS:
        out = REPO / "outputs" / "blowup" / f"lr{lr:g}"
        cfg = TrainConfig.from_dict(
            {
                "imgsz": 96,
                "neck_channels": 16,
                "synthetic_images": 16,
                "batch": 4,
                "accumulate": 1,
                "warmup_epochs": 1.0,
                "epochs": epochs,
                "lr": lr,
                "threads": 1,
                "out": str(out),
            }
        )
        run: dict[str, Any] = {
            "lr": lr,
            TRAIN_LOSS: [],
            VAL_LOSS: [],
            FIRST_STEP_LOSS: math.nan,
            WARMUP_EPOCHS: cfg.warmup_epochs,
            "loop_diverged_at": None,
        }

        def record(stats: EpochStats, run: dict[str, Any] = run) -> None:
            run[TRAIN_LOSS].append(float(stats[TRAIN_LOSS]))
            run[VAL_LOSS].append(float(stats[VAL_LOSS]))
            if stats[EPOCH] == 1:
                run[FIRST_STEP_LOSS] = float(stats.get(FIRST_STEP_LOSS, math.nan))

        try:
            train(cfg, callbacks=[record])
        except DivergedError as e:
            run["loop_diverged_at"] = e.epoch
        shutil.rmtree(out, ignore_errors=True)
        runs.append(run)
    return runs


def divergence_figures(
    healthy: list[dict[str, Any]], blowups: list[dict[str, Any]], settings: SearchSettings
) -> dict[str, Any]:
    """False positives on healthy runs and the epoch each blow-up is stopped, before (no
    warmup awareness) and after; updates ``blowups`` in place."""
    fp = {}
    for label, aware in (("before (no warmup awareness)", False), ("after", True)):
        stopped = [first_stop(r, settings, aware) for r in healthy]
        fp[label] = {
            "runs": len(healthy),
            "stopped": sum(s is not None for s in stopped),
            "stopped_at": [s for s in stopped if s is not None],
        }
        print(
            f"divergence rules {label}: {fp[label]['stopped']} of {len(healthy)} healthy runs "
            "stopped",
            flush=True,
        )
    for b in blowups:
        b["stopped_at_before"] = first_stop(b, settings, False)
        b["stopped_at_after"] = first_stop(b, settings, True)
        print(
            f"lr {b['lr']:g}: loop DivergedError at {b['loop_diverged_at']}, rules stop at "
            f"{b['stopped_at_before']} before / {b['stopped_at_after']} after",
            flush=True,
        )
    return fp


def replay(path: Path) -> None:
    """Recompute the divergence figures of a results file with the rules as they are now."""
    from tune.space import SearchSettings

    out = json.loads(path.read_text())
    settings = SearchSettings(**{k: v for k, v in out["settings"].items()})
    healthy = [r for r in out["search_runs"] + out["confirm_runs"] if not r["error"]]
    out["false_positives"] = divergence_figures(healthy, out["blowups"], settings)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"updated {path}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--space", default=str(REPO / "search_spaces" / "fixes.yaml"), help="search-space YAML"
    )
    p.add_argument("--data", help="dataset (default: the embedded synthetic data)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key (repeatable)",
    )
    p.add_argument("--trials", type=int, default=6, help="trials per search")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    p.add_argument("--seeds", type=int, default=2, help="fresh seeds per confirmed config")
    p.add_argument("--seed", type=int, default=0, help="the search's seed")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    p.add_argument(
        "--storage",
        default=str(REPO / "outputs" / "objective-ranking"),
        help="folder for the searches' experiments",
    )
    p.add_argument(
        "--json",
        default=str(REPO / "outputs" / "objective-ranking" / "results.json"),
        help="write the comparison here",
    )
    p.add_argument("--smoke-test", action="store_true", help="synthetic, 3 trials x 3 epochs")
    p.add_argument(
        "--replay",
        action="store_true",
        help="only replay the divergence rules on the histories in --json and update it",
    )
    p.add_argument(
        "--reuse-search",
        action="store_true",
        help="read the finished search in --storage instead of running it again",
    )
    args = p.parse_args()
    if args.replay:
        replay(Path(args.json))
        return
    if args.smoke_test:
        args.trials, args.epochs, args.seeds = 3, 3, 1
        args.overrides += ["imgsz=64", "neck_channels=16", "synthetic_images=8", "batch=4"]

    import ray

    from cattle_yolo.data import load_datasets
    from tune import cluster, confirm, report, search
    from tune.plan import SearchRequest, base_config
    from tune.space import for_metric, load_space

    space = load_space(args.space)
    settings = space.settings.replace(
        {"trials": args.trials, "epochs": args.epochs, "seed": args.seed, "grace_period": 1},
        "benchmark",
    )
    space, _ = for_metric(space, settings.metric)
    # the search's own base config: the space's fixed values, then these, then --set
    small = ["warmup_epochs=1.0", "accumulate=1", "batch=8", "device=cpu"]
    request = SearchRequest(overrides=[*small, *args.overrides], data=args.data)
    base = base_config(request, space, settings)
    datasets = load_datasets(base, verbose=False)
    storage = Path(args.storage).resolve()
    if not args.reuse_search:
        shutil.rmtree(storage, ignore_errors=True)
    ray.init(include_dashboard=False, log_to_driver=False)
    resources = cluster.Resources(0, 0, 1, args.concurrent)
    trainable = search.make_trainable(base, datasets, settings, resources)
    t0 = time.perf_counter()
    # every trial to the end, no divergence stopper: the rankings see whole curves
    plain = search.Experiment(
        "search", str(storage), max_failures=0, verbose=0, asha=False, divergence=False
    )
    if args.reuse_search:
        from ray import tune

        results = tune.Tuner.restore(str(storage / "search"), trainable).get_results()
    else:
        tuner, _ = search.build_tuner(trainable, space, base, settings, resources, plain)
        results = tuner.fit()
    delete_weights(storage / "search")
    rows = report.trial_rows(results, settings)
    search_runs = histories(results, settings.metric)
    print(f"search: {len(rows)} trials in {time.perf_counter() - t0:.0f} s", flush=True)

    candidates = confirm.pick_candidates(rows, space, settings, base, k=len(rows))
    seeds = confirm.fresh_seeds(settings, args.seeds)
    shutil.rmtree(storage / f"search{confirm.CONFIRM_SUFFIX}", ignore_errors=True)
    tuner = confirm.build_confirm_tuner(
        trainable, candidates, seeds, settings, args.concurrent, plain
    )
    confirm_results = tuner.fit()
    delete_weights(storage / f"search{confirm.CONFIRM_SUFFIX}")
    confirm_runs = histories(confirm_results, settings.metric)
    print(
        f"confirmation: {len(confirm_runs)} runs, {time.perf_counter() - t0:.0f} s in all",
        flush=True,
    )
    ray.shutdown()

    # Match each search trial to its candidate (by knob values) and its confirmation runs.
    from tune.space import CONFIRM_ID, trial_values

    table = []
    for c in candidates:
        mine = [r for r in search_runs if trial_values(r["config"]) == c.params]
        if not mine:
            continue  # the default, when the search did not run it (it always does here)
        runs = [r for r in confirm_runs if r["config"].get(CONFIRM_ID) == c.confirm_id]
        table.append(
            {
                "config": c.label,
                "params": c.params,
                "search": mine[0]["metric"],
                "confirmed": [r["metric"] for r in runs],
            }
        )

    correlations = {}
    for name, (kind, window) in OBJECTIVES.items():
        searched = [objective(t["search"], kind, window) for t in table]
        same = [
            sum(objective(m, kind, window) for m in t["confirmed"]) / len(t["confirmed"])
            for t in table
        ]
        yk, yw = OBJECTIVES[YARDSTICK]
        fixed = [
            sum(objective(m, yk, yw) for m in t["confirmed"]) / len(t["confirmed"]) for t in table
        ]
        correlations[name] = {
            "vs_same_definition": spearman(searched, same),
            f"vs_{YARDSTICK}": spearman(searched, fixed),
        }
        print(
            f"{name:12s} spearman vs confirmed mean: same definition "
            f"{correlations[name]['vs_same_definition']:+.3f}, vs {YARDSTICK} "
            f"{correlations[name][f'vs_{YARDSTICK}']:+.3f}",
            flush=True,
        )

    healthy = [r for r in search_runs + confirm_runs if not r["error"]]
    blowups = blowup_runs(settings, epochs=3)
    fp = divergence_figures(healthy, blowups, settings)

    out = {
        "args": vars(args),
        "settings": settings.__dict__,
        "base": base.to_dict(),
        "correlations": correlations,
        "table": table,
        "false_positives": fp,
        "blowups": blowups,
        "search_runs": search_runs,
        "confirm_runs": confirm_runs,
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
