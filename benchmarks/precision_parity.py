"""Accuracy parity of bf16 against fp32: the same runs in both precisions, several seeds.

Each run is ``python -m cattle_yolo train`` on cattle-chute (by default 256 px, 10 epochs, with
3 warmup epochs and the last 3 without mosaic so that a 10-epoch run has the default schedule's
shape), ``amp=off`` or ``amp=bf16``, seeds 0-2; runs go ``--parallel`` at a time with
``--threads`` each, fp32 and bf16 of a seed side by side. Reported: mean ± sd of val mAP50-95 at
the given epochs per precision, and whether the divergence rules of a search (the stopper's
rising, spike and collapse rules with ``search_spaces/fixes.yaml``'s settings) or the training
loop's dead-step rule would have stopped any run. A run already recorded in ``--workdir``
(its ``result.json``) is read, not rerun: the same command continues a cut-off set.

    python benchmarks/precision_parity.py --json docs/data/precision_parity.json
    python benchmarks/precision_parity.py --smoke-test --data DIR   # 1 seed, 1 epoch, 64 px
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from ablations import add_run_arguments, run_all  # noqa: E402

from cattle_yolo import stats as S  # noqa: E402
from cattle_yolo.config import TrainConfig  # noqa: E402
from tune.stoppers import divergence_rule  # noqa: E402

PRECISIONS = {"fp32": ["amp=off"], "bf16": ["amp=bf16"]}
WARMUP = 3  # epochs: with close_mosaic 3, a short run with the default schedule's shape
SCHEDULE = [f"warmup_epochs={WARMUP}", "close_mosaic=3"]
MAX_SKIPPED = TrainConfig().max_skipped_fraction  # the training loop's dead-step rule


def stopped_by(run: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """The first divergence rule that would have stopped ``run`` in a search, or None."""
    losses = run[S.TRAIN_LOSS]
    for epoch in range(1, len(losses) + 1):
        rule = divergence_rule(
            losses[:epoch],
            settings["patience"],
            settings["spike_ratio"],
            run[S.VAL_LOSS][epoch - 1],
            settings["min_rise"],
            run[S.FIRST_STEP_LOSS],
            float(WARMUP),
        )
        if rule:
            return f"epoch {epoch}: {rule}"
        skipped = run[S.SKIPPED_STEPS][epoch - 1]
        if skipped > MAX_SKIPPED * run[S.TRAIN_BATCHES]:
            return f"epoch {epoch}: {skipped} steps skipped (the dead-step rule)"
    return None


def summarize(runs: list[dict[str, Any]], at: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in PRECISIONS:
        mine = [r for r in runs if r["name"] == name]
        row: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for epoch in at:
            values = [r[S.MAP50_95][epoch - 1] for r in mine if len(r[S.MAP50_95]) >= epoch]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"epoch_{epoch}"] = {
                    "mean": statistics.fmean(values),
                    "sd": sd,
                    "values": values,
                }
        row["epoch_s"] = (
            statistics.fmean(t for r in mine for t in r[S.EPOCH_TIME]) if mine else None
        )
        table[name] = row
    return table


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(
        p, epochs=10, seeds=[0, 1, 2], parallel=2, threads=1, workdir="precision_parity"
    )
    p.add_argument("--at", type=int, nargs="+", default=[5, 10], help="epochs to compare at")
    p.add_argument("--smoke-test", action="store_true", help="1 seed, 1 epoch, 64 px")
    args = p.parse_args()
    args.resume = True
    if not (args.data / "train").is_dir():
        sys.exit(f"error: no dataset at {args.data} (a folder with train/ and val/)")
    if args.smoke_test:
        args.epochs, args.imgsz, args.seeds, args.at = 1, 64, args.seeds[:1], [1]
    args.set = [*SCHEDULE, *args.set]
    fixes = REPO / "search_spaces" / "fixes.yaml"
    import yaml

    settings = yaml.safe_load(fixes.read_text())["search"]
    jobs = [(name, o, s) for s in args.seeds for name, o in PRECISIONS.items()]
    t0 = time.perf_counter()
    runs = run_all(jobs, args)
    failed = [r for r in runs if "error" in r]
    for r in failed:
        print(f"FAILED {r['name']} seed {r['seed']}:\n{r['error']}", file=sys.stderr)
    runs = [r for r in runs if "error" not in r]
    for r in runs:
        r["stopped_by"] = stopped_by(r, settings)
    table = summarize(runs, args.at)
    for name, row in table.items():
        cells = [
            f"epoch {e}: {row[f'epoch_{e}']['mean']:.4f} ± {row[f'epoch_{e}']['sd']:.4f}"
            for e in args.at
            if f"epoch_{e}" in row
        ]
        print(f"{name}: {', '.join(cells)}; {row['epoch_s'] or 0:.0f} s an epoch")
    for r in runs:
        print(f"{r['name']} seed {r['seed']}: stopped by {r['stopped_by'] or 'no rule'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "imgsz": args.imgsz,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "threads": args.threads,
            "set": args.set,
            "wall_s": time.perf_counter() - t0,
            "table": table,
            "runs": runs,
        }
        args.json.write_text(json.dumps(doc, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
