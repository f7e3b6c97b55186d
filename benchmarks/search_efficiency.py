"""Search efficiency: the project's default strategy against plain ones, all run by Ray Tune.

Four strategies with the same space, trial count, epochs per trial and seeds, so that only the
strategy differs:

- ``random_fifo``: random search, every trial to the end
- ``tpe_fifo``: Optuna TPE, every trial to the end
- ``random_asha``: random search with ASHA
- ``default``: TPE + ASHA + the divergence stopper (what ``run_search.py`` does)

For each run: the best val mAP50-95 found, the epochs trained, the anytime curve (best so far
against cumulative epochs, in the order the epochs finished) and the epochs spent on trials that
ended diverged. Then the default strategy's best config and the hand-fixed default are retrained
with the same epochs and evaluated on the test split, which no search saw.

    python benchmarks/search_efficiency.py        # 5 seeds, 12 trials x 27 epochs, rungs 3/9/27
    python benchmarks/search_efficiency.py --smoke-test           # 1 seed, 3 trials x 2 epochs

At 27 epochs per trial ASHA's rungs (3, 9, 27) are a small share of a trial, as in a real
search. The 5-seed run takes about 5 hours on a 2-core CPU (7.5 s per epoch per trial): run it
on a bigger machine or a cluster (``--concurrent``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")

from cattle_yolo import stats as S  # noqa: E402
from tune.results import DIVERGED, EPOCH, OBJECTIVE, Status  # noqa: E402 (after the path)

if TYPE_CHECKING:
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.data import Datasets
    from tune.space import SearchSettings, SearchSpace

STRATEGIES = {
    "random_fifo": {"sampler": "random", "asha": False, "divergence": False},
    "tpe_fifo": {"sampler": "tpe", "asha": False, "divergence": False},
    "random_asha": {"sampler": "random", "asha": True, "divergence": False},
    "default": {"sampler": "tpe", "asha": True, "divergence": True},
}


def anytime(results: Any, metric: str) -> list[tuple[int, float]]:
    """[(cumulative epochs, best metric so far)] over every reported epoch of every trial."""
    events: list[tuple[float, float | None]] = []  # (timestamp, metric)
    for result in results:
        df = result.metrics_dataframe
        if df is None or EPOCH not in df:
            continue
        for rec in df.to_dict("records"):
            value = rec.get(metric)
            if rec.get(EPOCH) is not None and not rec.get(DIVERGED):
                events.append((rec["timestamp"], value))
            elif rec.get(EPOCH) is not None:
                events.append((rec["timestamp"], math.nan))
    events.sort(key=lambda e: e[0])
    best = -math.inf
    curve: list[tuple[int, float]] = []  # (cumulative epochs, best so far)
    for i, (_, value) in enumerate(events, 1):
        if value is not None and math.isfinite(value):
            best = max(best, value)
        curve.append((i, best if math.isfinite(best) else 0.0))
    return curve


def blowups(results: Any, settings: SearchSettings) -> list[int]:
    """Epochs trained by each trial whose history breaks a divergence rule at some epoch,
    whether or not the strategy has the stopper: the same yardstick for all four, replayed
    through the search's own ``DivergenceStopper``."""
    from tune.stoppers import DivergenceStopper

    stopper = DivergenceStopper(
        settings.patience, settings.spike_ratio, 0.0, OBJECTIVE, settings.min_rise
    )
    spent = []
    for i, result in enumerate(results):
        df = result.metrics_dataframe
        if df is None or EPOCH not in df:
            continue
        recs = [r for r in df.to_dict("records") if r.get(EPOCH) is not None]
        if any(stopper(str(i), dict(rec)) for rec in recs):  # stops at the first rule that fires
            spent.append(max(int(r[EPOCH]) for r in recs))
    return spent


def run_strategy(
    name: str,
    seed: int,
    args: argparse.Namespace,
    space: SearchSpace,
    base: TrainConfig,
    datasets: Datasets,
    storage: Path,
) -> dict[str, Any]:
    from tune import cluster, report, search

    settings = space.settings.replace(
        {
            "trials": args.trials,
            "epochs": args.epochs,
            "seed": seed,
            "grace_period": min(args.grace_period, args.epochs),
            "reduction_factor": args.reduction_factor,
            "objective": args.objective,  # the settings' objective kind: best or last_mean
        },
        "benchmark",
    )
    cfg = base.replace(epochs=args.epochs, seed=seed)
    resources = cluster.Resources(0, 0, 1, args.concurrent)
    trainable = search.make_trainable(cfg, datasets, settings, resources)
    strategy = STRATEGIES[name]
    experiment = search.Experiment(
        f"{name}-seed{seed}",
        str(storage),
        max_failures=0,
        verbose=0,
        asha=bool(strategy["asha"]),
        divergence=bool(strategy["divergence"]),
    )
    study = search.Study(sampler=str(strategy["sampler"]))
    tuner, _ = search.build_tuner(trainable, space, cfg, settings, resources, experiment, study)
    t0 = time.perf_counter()
    results = tuner.fit()
    for weights in (storage / f"{name}-seed{seed}").glob("*/run/models/*.pt"):
        weights.unlink()  # ~170 MB per checkpoint: 12 searches would fill 40 GB; only metrics count
    rows = report.trial_rows(results, settings)
    curve = anytime(results, settings.metric)
    best_row = report.pick_best(rows, settings.mode)
    return {
        "strategy": name,
        "seed": seed,
        "wall_s": time.perf_counter() - t0,
        "best": max((r.objective for r in rows if r.objective is not None), default=0.0),
        "epochs": sum(r.epochs_run for r in rows),
        "diverged_trials": sum(r.status == Status.DIVERGED for r in rows),
        "diverged_epochs": [r.epochs_run for r in rows if r.status == Status.DIVERGED],
        "blowup_epochs": blowups(results, settings),
        "curve": curve,
        "best_params": best_row.params if best_row else {},
    }


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((e for e, best in curve if best >= target - 1e-12), None)


def holdout(cfg: TrainConfig, datasets: Datasets, out: Path) -> dict[str, Any]:
    """Train ``cfg`` and evaluate its best.pt on the test split."""
    import torch

    from cattle_yolo.checkpoint import load_trained
    from cattle_yolo.data import make_loader
    from cattle_yolo.evaluate import evaluate
    from cattle_yolo.loss import DetectionLoss
    from cattle_yolo.train import train

    if datasets.test is None:
        raise ValueError(f"{cfg.data or 'the synthetic set'}: no test split to hold out")
    torch.set_num_threads(2)
    result = train(cfg.replace(out=str(out)), datasets)
    model, cfg2, names = load_trained(str(out / "models" / "best.pt"), torch.device("cpu"))
    loader = make_loader(datasets.test, cfg2, train=False)
    test = evaluate(model, loader, DetectionLoss(cfg2, len(names)), cfg2, torch.device("cpu"), 0)
    return {
        "val_best": result[S.BEST_MAP50_95],
        "test_mAP50_95": test[S.MAP50_95],
        "test_mAP50": test[S.MAP50],
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "random_fifo": "tab:gray",
        "tpe_fifo": "tab:blue",
        "random_asha": "tab:orange",
        "default": "tab:green",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(runs):
        xs, ys = zip(*run["curve"], strict=True) if run["curve"] else ((), ())
        label = (
            run["strategy"] if not any(r["strategy"] == run["strategy"] for r in runs[:i]) else None
        )
        ax.step(xs, ys, where="post", color=colors[run["strategy"]], alpha=0.8, label=label)
    fifo = [r["epochs"] for r in runs if r["strategy"] == "random_fifo"]
    if fifo:
        ax.axvline(max(fifo) / 3, color="k", ls=":", lw=1, label="1/3 of random_fifo's epochs")
    ax.set_xlabel("cumulative epochs trained")
    ax.set_ylabel("best val mAP50-95 so far")
    ax.set_title("anytime performance (one line per seed)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", default=str(REPO / "search_spaces" / "demo.yaml"), help="space file")
    p.add_argument("--trials", type=int, default=12, help="trials per search")
    p.add_argument("--epochs", type=int, default=27, help="epochs per trial")
    p.add_argument("--grace-period", type=int, default=3, help="ASHA's first rung")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep the top 1/N")
    p.add_argument(
        "--objective",
        default="best",
        choices=("best", "last_mean"),
        help="a trial's objective: its best epoch or the mean of its last epochs",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    p.add_argument(
        "--strategies",
        nargs="+",
        default=list(STRATEGIES),
        choices=list(STRATEGIES),
        help="strategies to compare (default: all)",
    )
    p.add_argument("--storage", default=str(REPO / "outputs" / "search-efficiency"), help="runs")
    p.add_argument(
        "--plot",
        default=str(REPO / "docs" / "img" / "search_efficiency.png"),
        help="best-so-far plot",
    )
    p.add_argument(
        "--json",
        default=str(REPO / "outputs" / "search-efficiency" / "results.json"),
        help="write the runs here",
    )
    p.add_argument("--no-holdout", action="store_true", help="skip the retrain on the test split")
    p.add_argument("--smoke-test", action="store_true", help="1 seed, 3 trials x 2 epochs")
    p.add_argument("--replot", action="store_true", help="only redraw --plot from --json")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(Path(args.json).read_text())["runs"], Path(args.plot))
        return
    if args.smoke_test:
        args.trials, args.epochs, args.seeds = 3, 2, [0]

    import ray

    from cattle_yolo.config import FIELD_NAMES
    from cattle_yolo.data import load_datasets
    from tune.plan import SearchRequest, base_config
    from tune.space import for_metric, load_space

    space, _ = for_metric(load_space(args.space), S.MAP50_95)
    # the search's own base config (epochs and seed are set per search below)
    base = base_config(SearchRequest(overrides=["device=cpu"]), space, space.settings)
    datasets = load_datasets(base, verbose=False)
    storage = Path(args.storage).resolve()  # Ray takes a relative path for a URI
    ray.init(include_dashboard=False, log_to_driver=False)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for name in args.strategies:  # interleaved per seed: machine noise hits all alike
            run = run_strategy(name, seed, args, space, base, datasets, storage)
            runs.append(run)
            print(
                f"{name:12s} seed {seed}: best {run['best']:.4f}, {run['epochs']} epochs, "
                f"{run['diverged_trials']} diverged ({sum(run['diverged_epochs'])} epochs), "
                f"{len(run['blowup_epochs'])} blew up ({sum(run['blowup_epochs'])} epochs), "
                f"{run['wall_s']:.0f} s",
                flush=True,
            )
    ray.shutdown()

    summary: dict[str, Any] = {}
    for name in args.strategies:
        mine = [r for r in runs if r["strategy"] == name]
        summary[name] = {
            "best_mean": sum(r["best"] for r in mine) / len(mine),
            "epochs_mean": sum(r["epochs"] for r in mine) / len(mine),
            "diverged_epochs_per_trial": (
                sum(sum(r["diverged_epochs"]) for r in mine)
                / max(1, sum(r["diverged_trials"] for r in mine))
            ),
            "blowup_trials": sum(len(r["blowup_epochs"]) for r in mine),
            "blowup_epochs_per_trial": (
                sum(sum(r["blowup_epochs"]) for r in mine)
                / max(1, sum(len(r["blowup_epochs"]) for r in mine))
            ),
        }
    if "random_fifo" in args.strategies and "default" in args.strategies:
        ratios = []
        for seed in args.seeds:
            ref = next(r for r in runs if r["strategy"] == "random_fifo" and r["seed"] == seed)
            ours = next(r for r in runs if r["strategy"] == "default" and r["seed"] == seed)
            needed = epochs_to_reach(ours["curve"], ref["best"])
            ratios.append(needed / ref["epochs"] if needed else None)
        summary["default_epochs_to_random_fifo_best"] = ratios
    print(json.dumps(summary, indent=2))

    if not args.no_holdout and "default" in args.strategies:
        best = next(r for r in runs if r["strategy"] == "default")["best_params"]
        cfg = base.replace(epochs=args.epochs, seed=args.seeds[0])
        tuned = cfg.with_overrides(
            {k: v for k, v in best.items() if k in FIELD_NAMES}, "the best trial"
        )
        summary["holdout"] = {
            "hand_fixed_default": holdout(cfg, datasets, storage / "holdout-default"),
            "search_best": holdout(tuned, datasets, storage / "holdout-best"),
            "search_best_params": best,
        }
        print(json.dumps(summary["holdout"], indent=2))
    plot(runs, Path(args.plot))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
