"""Ablations of the training loop's structural defaults, each against the same baseline.

Every variant is the project's defaults plus one change (``key=value`` overrides), trained on
cattle-chute on a cheap budget (256 px, 15 epochs by default) with each of ``--seeds``; the runs
go ``--parallel`` at a time, each ``python -m cattle_yolo train`` in its own process. Per run the
val mAP50-95 of every epoch is kept; a variant's score is the mean over its seeds of the mean of
its last 3 epochs (single epochs jump by several points). Weights are deleted once read.

    python benchmarks/ablations.py --device cuda --parallel 8 --json docs/data/ablations.json
    python benchmarks/ablations.py --smoke-test --data DIR        # 2 variants, 1 epoch, 64 px
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cattle_yolo import stats as S

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cattle-chute"

# name -> overrides on top of the defaults; "baseline" is the defaults themselves.
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "dropout 0.3 (seed)": ["dropout=0.3"],
    "no mosaic": ["mosaic=0.0"],
    "close_mosaic 0": ["close_mosaic=0"],
    "exp head (seed)": ["box_head=exp"],
    "dfl weight 0.5": ["dfl_loss_weight=0.5"],
    "dfl weight 3.0": ["dfl_loss_weight=3.0"],
    "tal_topk 5": ["tal_topk=5"],
    "tal_topk 13": ["tal_topk=13"],
    "tal_beta 4": ["tal_beta=4.0"],
    "ema_tau 2000": ["ema_tau=2000.0"],
    "nms_iou 0.6 (seed)": ["nms_iou=0.6"],
    "no IoU gate (knob)": ["iou_start=0.001", "iou_end=0.001"],
    "focal_gamma 0 (knob)": ["focal_gamma=0.0"],
}
LAST = 3  # epochs averaged at the end of each run


def run_one(
    name: str, overrides: list[str], seed: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    out = workdir / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}-s{seed}"
    done = out / "result.json"
    if getattr(args, "resume", False) and done.is_file():  # recorded by an earlier invocation
        return dict(json.loads(done.read_text()))
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "cattle_yolo",
        "train",
        "--data",
        str(args.data),
        "--imgsz",
        str(args.imgsz),
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
        f"out={out}",
        f"seed={seed}",
        f"threads={args.threads}",
        f"workers={args.workers}",
        *args.set,
        *overrides,
    ]
    env = {**os.environ, "CATTLE_YOLO_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"name": name, "seed": seed, "error": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (out / "metrics" / "training_metrics.jsonl").open()]
    shutil.rmtree(out / "models", ignore_errors=True)
    curve = [r[S.MAP50_95] for r in rows]
    print(
        f"{name:24s} seed {seed}: last {curve[-1]:.4f} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    result = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        S.MAP50_95: curve,
        S.MAP50: [r[S.MAP50] for r in rows],
        S.TRAIN_LOSS: [r[S.TRAIN_LOSS] for r in rows],
        S.VAL_LOSS: [r[S.VAL_LOSS] for r in rows],
        S.FIRST_STEP_LOSS: rows[0][S.FIRST_STEP_LOSS],
        S.SKIPPED_STEPS: [r[S.SKIPPED_STEPS] for r in rows],
        S.TRAIN_BATCHES: rows[0][S.TRAIN_BATCHES],
        S.AMP: rows[0].get(S.AMP),
        S.EPOCH_TIME: [r[S.EPOCH_TIME] for r in rows],
        "wall_s": time.perf_counter() - t0,
    }
    (out / "result.json").write_text(json.dumps(result))  # kept if the whole set is cut off
    return result


def run_all(
    jobs: list[tuple[str, list[str], int]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``run_one`` of every (name, overrides, seed), ``args.parallel`` at a time, in order."""

    def run(job: tuple[str, list[str], int]) -> dict[str, Any]:
        return run_one(*job, args, args.workdir)

    with ThreadPoolExecutor(args.parallel) as pool:
        return list(pool.map(run, jobs))


def add_run_arguments(
    p: argparse.ArgumentParser,
    *,
    epochs: int,
    seeds: list[int],
    parallel: int,
    threads: int,
    workdir: str,
) -> None:
    """The flags of a set of ``run_one`` runs (ablations.py, precision_parity.py)."""
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with train/ and val/")
    p.add_argument("--imgsz", type=int, default=256, help="image size")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per run")
    p.add_argument("--seeds", type=int, nargs="+", default=seeds, help="seeds of every run")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--parallel", type=int, default=parallel, help="runs at a time")
    p.add_argument("--threads", type=int, default=threads, help="torch CPU threads per run")
    p.add_argument("--workers", type=int, default=0, help="data loader workers per run")
    p.add_argument("--set", nargs="*", default=[], help="key=value for every run")
    p.add_argument(
        "--workdir", type=Path, default=REPO / "outputs" / workdir, help="the runs' folders"
    )
    p.add_argument("--json", type=Path, help="write the results here")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(p, epochs=15, seeds=[0, 1], parallel=1, threads=2, workdir="ablations")
    p.add_argument("--only", nargs="+", help="run only these variants (and the baseline)")
    p.add_argument("--smoke-test", action="store_true", help="2 variants, 1 epoch, 64 px")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"error: no dataset at {args.data} (a folder with train/ and val/)")
    variants = dict(VARIANTS)
    if args.only:
        unknown = [v for v in args.only if v not in VARIANTS]
        if unknown:
            sys.exit(f"error: unknown variant(s) {unknown}; known: {list(VARIANTS)}")
        variants = {k: v for k, v in VARIANTS.items() if k == "baseline" or k in args.only}
    if args.smoke_test:
        variants = dict(list(variants.items())[:2])
        args.epochs, args.imgsz, args.seeds = 1, 64, args.seeds[:1]
    jobs = [(n, o, s) for s in args.seeds for n, o in variants.items()]
    t0 = time.perf_counter()
    runs = run_all(jobs, args)
    failed = [r for r in runs if "error" in r]
    for r in failed:
        print(f"FAILED {r['name']} seed {r['seed']}:\n{r['error']}", file=sys.stderr)
    table = summarize([r for r in runs if "error" not in r])
    for name, row in table.items():
        print(f"{name:24s} {row['score']:.4f}  {row['delta']:+.4f}  seeds {row['per_seed']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "imgsz": args.imgsz,
                    "epochs": args.epochs,
                    "seeds": args.seeds,
                    "device": args.device,
                    "set": args.set,
                    "wall_s": time.perf_counter() - t0,
                    "table": table,
                    "runs": runs,
                },
                indent=1,
            )
        )
    sys.exit(1 if failed else 0)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: the mean over seeds of the last-``LAST``-epoch mean mAP50-95, each seed's
    value, and the difference to the baseline."""
    by_name: dict[str, list[float]] = {}
    for r in runs:
        tail = r[S.MAP50_95][-LAST:]
        by_name.setdefault(r["name"], []).append(sum(tail) / len(tail))
    base = by_name.get("baseline", [float("nan")])
    base_score = sum(base) / len(base)
    return {
        name: {
            "score": sum(v) / len(v),
            "delta": sum(v) / len(v) - base_score,
            "per_seed": [round(x, 4) for x in v],
        }
        for name, v in by_name.items()
    }


if __name__ == "__main__":
    main()
