"""Real searches beside their replays: does the replay rank the strategies as training does?

``curves.py replay`` scores search strategies on recorded curves. This runs the same strategies
for real, with the same code: the same sampler, scheduler, divergence stopper, concurrency and
epoch budget (``curves.strategy_tuner``), on the same search seeds, but every trial trains (the
project's trainable, on the table's data at the table's fidelity) instead of reporting a
recorded curve. Each real search is summarised as a replayed one is (its anytime curve, its
trials' nearest recorded configs, its recommendation scored by the table's seed means), and is
then placed in its replay's distribution: where its best falls among the replay's searches of
that strategy, and whether the real searches order the strategies as the replay's medians do.

    python benchmarks/real_search.py --table docs/data/curves_fixes_128px.csv.gz \\
        --strategies random_fifo tpe_asha --seeds 0 --imgsz 128 --epochs 15 \\
        --replay docs/data/replay_fixes_128px.json --json docs/data/real_searches_128px.json

A search is the unit of work: the JSON is written after each, and the same command skips
what it holds (a search killed part-way is run again from its start). Each search's weights
are deleted once its metrics are read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")

import curves  # noqa: E402 (benchmarks/ on the path first)

from cattle_yolo.files import atomic_write_text  # noqa: E402
from tune.space import for_metric, load_space  # noqa: E402

# the replay settings a real search must share with the replay it is compared with
SHARED = ("trials", "epochs", "grace_period", "reduction_factor", "concurrent", "budget")


def real_search(
    table: curves.Curves,
    strategy: str,
    seed: int,
    args: argparse.Namespace,
    datasets: Any,
) -> dict[str, Any]:
    """One real search of ``strategy``: every trial trains on ``datasets`` at the table's
    fidelity (``args.imgsz``, ``args.epochs``), on the search's seed."""
    import dataclasses

    import ray

    from tune import search

    settings = curves.search_settings(table, seed, args)
    base = curves.record_base(table.space, args).replace(seed=seed)
    # each trial's share as record plans it; as many at once as the replay ran
    share = curves.trial_resources(ray.cluster_resources(), args, args.concurrent)
    resources = dataclasses.replace(share, concurrent=args.concurrent)
    trainable = search.make_trainable(
        base, datasets, settings, resources, threshold_range=table.space.threshold_range()
    )
    storage = Path(args.storage).resolve()
    tuner = curves.strategy_tuner(table, strategy, settings, args, trainable, storage)
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    for weights in (storage / f"{strategy}-{seed}").glob("*/run/models/*.pt"):
        weights.unlink()  # ~170 MB a checkpoint; only the metrics count here
    budget = curves.epoch_budget(vars(args))
    run = curves.search_run(grid, table, strategy, settings, budget, args.fixed_trials)
    return {**run, "wall_s": wall}


def percentile(value: float, sample: list[float]) -> float:
    """Share of ``sample`` below ``value``, ties counting half (0.5: the median)."""
    below = sum(v < value for v in sample) + 0.5 * sum(v == value for v in sample)
    return below / len(sample)


def compare(runs: list[dict[str, Any]], replay: dict[str, Any]) -> dict[str, Any]:
    """Each real search placed among the replay's searches of its strategy, and the two orders
    of the strategies: the real searches' bests (mean over their seeds) against the replay's
    median bests."""
    budget = curves.epoch_budget(replay["settings"])
    target = replay["target"]
    rows = []
    for run in runs:
        theirs = [r for r in replay["runs"] if r["strategy"] == run["strategy"]]
        if not theirs:
            continue
        reach = curves.epochs_to_reach(run["curve"], target) if target is not None else None
        rows.append(
            {
                "strategy": run["strategy"],
                "seed": run["seed"],
                "best": run["best"],
                "replay_best": curves.quartiles([r["best"] for r in theirs]),
                "percentile": percentile(run["best"], [r["best"] for r in theirs]),
                "picked_score": run["picked_score"],
                "replay_picked_score": curves.quartiles([r["picked_score"] for r in theirs]),
                "epochs_to_target": reach or budget + 1,
                "replay_epochs_to_target": replay["summary"][run["strategy"]].get(
                    "epochs_to_target"
                ),
                "trials": run["trials"],
                "replay_trials": statistics.median(r["trials"] for r in theirs),
                "epochs_spent": len(run["curve"]),
                "replay_epochs_spent": statistics.median(len(r["curve"]) for r in theirs),
                "same_seed_replay_best": next(
                    (r["best"] for r in theirs if r["seed"] == run["seed"]), None
                ),
            }
        )
    strategies = sorted({r["strategy"] for r in rows})
    real_mean = {
        s: statistics.fmean(r["best"] for r in rows if r["strategy"] == s) for s in strategies
    }
    replay_median = {s: replay["summary"][s]["best"][1] for s in strategies}
    return {
        "target": target,
        "rows": rows,
        "real_order": sorted(strategies, key=lambda s: -real_mean[s]),
        "replay_order": sorted(strategies, key=lambda s: -replay_median[s]),
        "real_best": real_mean,
        "replay_median_best": replay_median,
    }


def comparison_table(doc: dict[str, Any]) -> list[str]:
    """The comparison as Markdown: one row per real search."""
    lines = [
        "| strategy | seed | real best | replay best, median [IQR] | real's percentile "
        f"| epochs to {doc['target']:.4f}: real | replay | picked config's mean: real | replay "
        "| trials: real | replay | epochs spent: real | replay |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lo, mid, hi = r["replay_best"]
        e = r["replay_epochs_to_target"]
        p = r["replay_picked_score"]
        lines.append(
            f"| {r['strategy']} | {r['seed']} | {r['best']:.4f} | {mid:.4f} [{lo:.4f}, {hi:.4f}] "
            f"| {r['percentile']:.2f} | {r['epochs_to_target']} "
            f"| {f'{e[1]:.0f} [{e[0]:.0f}, {e[2]:.0f}]' if e else ''} | {r['picked_score']:.4f} "
            f"| {p[1]:.4f} [{p[0]:.4f}, {p[2]:.4f}] | {r['trials']} | {r['replay_trials']:.0f} "
            f"| {r['epochs_spent']} | {r['replay_epochs_spent']:.0f} |"
        )
    return lines


def matching_replay(
    args: argparse.Namespace, settings: dict[str, Any], configs: int
) -> dict[str, Any] | None:
    """The ``--replay`` JSON, refused (exit) when replayed with other settings or table."""
    if not args.replay:
        return None
    replay: dict[str, Any] = json.loads(Path(args.replay).read_text())
    theirs = replay["settings"]
    # fixed_trials is keyed only when set, on both sides
    differ = [k for k in (*SHARED, "fixed_trials") if theirs.get(k) != settings.get(k)]
    if replay.get("configs") != configs:
        differ.append(f"table ({replay.get('configs')} configs, not {configs})")
    if differ:
        sys.exit(f"error: {args.replay} was replayed with other {', '.join(differ)}")
    return replay


def run_command(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cattle_yolo.data import load_datasets

    full = load_space(args.space)
    space, _ = for_metric(full, full.settings.metric)
    table = curves.Curves(curves.read_table(Path(args.table)), space)
    settings = curves.settings_key(args, (*SHARED, "from_scratch"))
    replay = matching_replay(args, settings, len(table.ids))
    key = {
        "table": str(args.table),
        "configs": len(table.ids),  # a grown table gives other nearest configs and scores
        "curves": sum(len(seeds) for seeds in table.curves.values()),
        "settings": settings,
        "fidelity": {"imgsz": args.imgsz, "epochs": args.epochs, "data": str(args.data)},
    }
    json_path = Path(args.json) if args.json else None
    runs = curves.previous_runs(json_path, key, curves.whole_search(settings))
    done = {(r["strategy"], r["seed"]) for r in runs}
    todo = [(st, s) for s in args.seeds for st in args.strategies if (st, s) not in done]
    print(f"{len(done)} real searches run before, {len(todo)} to go", flush=True)

    def document() -> dict[str, Any]:
        return {**key, "runs": runs, **({"comparison": compare(runs, replay)} if replay else {})}

    if todo:
        curves.init_ray(args.cpus)
        try:
            datasets = load_datasets(curves.record_base(space, args))
            for strategy, seed in todo:
                run = real_search(table, strategy, seed, args, datasets)
                runs.append(run)
                print(
                    f"{strategy} seed {seed}: best {run['best']:.4f} after {len(run['curve'])} "
                    f"epochs, {run['trials']} trials ({run['wall_s']:.0f} s)",
                    flush=True,
                )
                if json_path is not None:
                    atomic_write_text(json_path, json.dumps(document(), indent=1))
        finally:
            ray.shutdown()
    doc = document()
    if replay is not None:
        print("\n".join(comparison_table(doc["comparison"])))
        c = doc["comparison"]
        print(f"order by best: real {c['real_order']}, replay medians {c['replay_order']}")
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(doc, indent=1))
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", default=str(REPO / "search_spaces" / "fixes.yaml"), help="space file")
    p.add_argument("--table", required=True, help="the recorded table (nearest configs, scores)")
    p.add_argument("--replay", help="a curves.py replay JSON to compare with (same settings)")
    p.add_argument(
        "--strategies",
        nargs="+",
        default=["random_fifo", "tpe_asha"],
        choices=list(curves.STRATEGIES),
        help="strategies to run for real (default: random FIFO and today's default)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds")
    p.add_argument("--trials", type=int, default=16, help="trials of a full-budget FIFO search")
    p.add_argument("--epochs", type=int, default=15, help="epochs per trial (the table's)")
    p.add_argument("--imgsz", type=int, default=128, help="image size (the table's)")
    p.add_argument("--data", default=str(curves.DEFAULT_DATA), help="dataset (the table's)")
    p.add_argument("--set", nargs="*", default=[], help="key=value for every trial")
    p.add_argument("--grace-period", type=int, default=3, help="ASHA's grace period")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA's reduction factor")
    p.add_argument("--budget", type=int, default=0, help="epochs per search (0: trials x epochs)")
    p.add_argument(
        "--fixed-trials",
        action="store_true",
        help="every search runs exactly --trials trials, as run_search does (the replay's too)",
    )
    p.add_argument("--concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--from-scratch", action="store_true", help="no default config first")
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="CPUs for Ray")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs (threads) per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.25, help="with GPUs, a trial's share")
    p.add_argument("--storage", default=str(REPO / "outputs" / "real-search"), help="Tune's folder")
    p.add_argument("--json", help="write the searches (and the comparison) here")
    return p


def main(argv: list[str] | None = None) -> None:
    run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
