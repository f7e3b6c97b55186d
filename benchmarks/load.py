"""Load: many tiny trials, several at once on fractional CPUs. Does the driver's memory or each
trial's overhead grow with the trial count, and is the summary still right at the end?

The search is the project's own (``tune.search.build_tuner``: TPE, ASHA, the divergence
stopper, the disk keeper, the journal) over ``--smoke-test``'s tiny trials, with a Tune callback
that records, at every trial's start and end, the driver's resident memory and the times. The
report compares the first ``--concurrent`` trials with the last ones: the driver's RSS, each
trial's overhead (its wall time from start to end minus the time its own function ran), the
interval between trial ends, and the search's non-training time per trial slot.

    python benchmarks/load.py --trials 64 --concurrent 8 --json docs/data/load_64.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")

from ray import tune  # noqa: E402


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Recorder(tune.Callback):
    """Per trial: start and end wall time, its own run time, and the driver's RSS at its end."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: list[dict[str, Any]] = []

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        now = time.time()
        own = float((trial.last_result or {}).get("time_total_s") or 0.0)
        self.ended.append(
            {
                "n": len(self.ended) + 1,
                "trial": trial.trial_id,
                "wall_s": now - self.started.get(trial.trial_id, now),
                "own_s": own,
                "overhead_s": now - self.started.get(trial.trial_id, now) - own,
                "driver_rss_mb": rss_mb(),
                "at": now,
            }
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=64, help="trials in the search")
    p.add_argument("--concurrent", type=int, default=8, help="trials at once")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--cpus", type=float, default=2.0, help="CPUs Ray may use")
    p.add_argument("--storage", default=str(REPO / "outputs" / "load"), help="Tune's folder")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    import ray

    from cattle_yolo import stats as S
    from cattle_yolo.data import load_datasets
    from tune import cluster, report, search
    from tune.plan import SearchRequest, base_config
    from tune.space import for_metric, load_space

    space, _ = for_metric(load_space(REPO / "search_spaces" / "smoke.yaml"), S.MAP50_95)
    settings = space.settings.replace(
        {"trials": args.trials, "epochs": args.epochs, "grace_period": 1}, "load"
    )
    base = base_config(SearchRequest(smoke_test=True, overrides=["threads=1"]), space, settings)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    name = f"load-{args.trials}"
    storage = str(Path(args.storage).resolve())
    try:
        per_trial = args.cpus / args.concurrent
        resources = cluster.Resources(0, 0, per_trial, args.concurrent)
        datasets = load_datasets(base, verbose=False)
        trainable = search.make_trainable(
            base, datasets, settings, resources, threshold_range=space.threshold_range()
        )
        recorder = Recorder()
        experiment = search.Experiment(
            name, storage, max_failures=0, keep_weights=3, verbose=0, callbacks=(recorder,)
        )
        tuner, _ = search.build_tuner(trainable, space, base, settings, resources, experiment)
        rss_start = rss_mb()
        t0 = time.time()
        results = tuner.fit()
        wall = time.time() - t0
        rows = report.trial_rows(results, settings)
        folder = Path(storage) / name
        lines = report.write_report(rows, space, settings, base, folder, name)
    finally:
        ray.shutdown()
    with (folder / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    ended = recorder.ended
    k = min(args.concurrent, len(ended))

    def window(part: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(e[key] for e in part))

    doc = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs",
        "trials": args.trials,
        "concurrent": args.concurrent,
        "cpus_per_trial": args.cpus / args.concurrent,
        "epochs": args.epochs,
        "wall_s": wall,
        "driver_rss_mb": {
            "start": rss_start,
            f"at_trial_{k}": ended[k - 1]["driver_rss_mb"],
            f"at_trial_{len(ended)}": ended[-1]["driver_rss_mb"],
        },
        "overhead_s": {
            f"first_{k}_median": window(ended[:k], "overhead_s"),
            f"last_{k}_median": window(ended[-k:], "overhead_s"),
        },
        # the whole search's non-training time per trial slot (actor start-up, scheduling,
        # reporting, idle), and how often trials end at the start against the end
        "slot_overhead_s": (wall * args.concurrent - sum(e["own_s"] for e in ended))
        / max(1, len(ended)),
        "end_interval_s": {
            f"first_{k}_median": statistics.median(
                b["at"] - a["at"] for a, b in zip(ended[:k], ended[1 : k + 1], strict=False)
            ),
            f"last_{k}_median": statistics.median(
                b["at"] - a["at"] for a, b in zip(ended[-k - 1 :], ended[-k:], strict=False)
            ),
        },
        "own_s": {
            f"first_{k}_median": window(ended[:k], "own_s"),
            f"last_{k}_median": window(ended[-k:], "own_s"),
        },
        "summary": {
            "results_csv_rows": len(csv_rows),
            "statuses": {
                s: sum(r["status"] == s for r in csv_rows) for s in {r["status"] for r in csv_rows}
            },
            "plots": sorted(p.name for p in (folder / "plots").glob("*.png")),
            "lines": [line for line in lines if line.startswith(("epochs trained", "best trial"))],
        },
        "per_trial": ended,
    }
    print(json.dumps({k: v for k, v in doc.items() if k != "per_trial"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
