"""One-shot GPU check: training throughput per precision, and trials packed on one GPU.

A GPU is lent only now and then and briefly, so this is one command that finishes in under
8 minutes on one GPU and writes everything it measured to one JSON file:

1. Training images/s in fp32 and bf16 (``train_throughput.py``'s cases on ``cuda``, 320 px,
   batch 4 x accumulate 4), with achieved TFLOP/s against the GPU's measured bf16 GEMM peak.
2. ``run_search.py --space search_spaces/fixes.yaml`` on cattle-chute with 1, 2, 4 and 8 trials
   on the one GPU (``--gpus 1 --gpus-per-trial 1 | 0.5 | 0.25 | 0.125``; the machine's CPUs
   shared evenly, each trial's torch threads = its CPUs, DataLoader workers = its CPUs - 1, at
   most 4), ``--trials N`` so that all N run at once, no ASHA stop (grace = epochs), no
   confirmation. From every trial's own metrics log: the trials per hour, the aggregate
   training images/s (the sum of the trials' own rates after their first epoch), the aggregate
   achieved FLOP/s as a share of the bf16 GEMM peak, each trial's peak GPU memory, and the
   GPU's utilisation sampled by ``nvidia-smi`` once a second.

The goals: two trials per GPU give at least 1.6x one trial's aggregate images/s, eight at
least 5x. Where scaling stops, the bottleneck is named from what was measured: GPU memory
(used near the card's total), CPU threads (a trial has fewer than 2 CPUs), the GPU itself
(utilisation >= 90%), or, with the GPU mostly idle and CPUs to spare, the host side (data
loading and kernel launches of small-batch steps).

    python benchmarks/gpu_check.py                     # on a GPU machine: < 8 minutes
    python benchmarks/gpu_check.py --smoke-test        # the same steps CPU-sized: < 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cattle-chute"
GOALS = {2: 1.6, 8: 5.0}  # trials per GPU -> least speed-up of aggregate images/s over one


class GpuSampler:
    """``nvidia-smi`` utilisation and memory once a second in a thread (nothing on a CPU)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # util %, used MB, total MB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        query = "--query-gpu=utilization.gpu,memory.used,memory.total"
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(
                    ["nvidia-smi", query, "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                util, used, total = (float(v) for v in out.strip().split(","))
                self.samples.append((util, used, total))
            except (OSError, ValueError, subprocess.SubprocessError):
                continue

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_mem_used_max_mb": None, "gpu_mem_total_mb": None}
        busy = [s for s in self.samples if s[0] > 0] or self.samples  # skip start-up
        return {
            "gpu_util_mean": sum(s[0] for s in busy) / len(busy),
            "gpu_mem_used_max_mb": max(s[1] for s in self.samples),
            "gpu_mem_total_mb": self.samples[0][2],
        }


def throughput(args: argparse.Namespace, device: str, json_path: Path) -> list[dict[str, Any]]:
    """``train_throughput.py``'s fp32 and bf16 cases on ``device``."""
    cmd = [
        sys.executable,
        str(HERE / "train_throughput.py"),
        "--devices",
        device,
        "--imgsz",
        str(args.imgsz),
        "--images",
        str(args.images),
        "--precision",
        "fp32,bf16",
        "--json",
        str(json_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"train_throughput.py failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    print(proc.stdout.strip(), flush=True)
    return list(json.loads(json_path.read_text())["rows"])


def trial_logs(experiment: Path) -> list[list[dict[str, Any]]]:
    """Every trial's per-epoch stats, from its run folder's metrics log."""
    logs = []
    for path in sorted(experiment.glob("trial_*/run/metrics/training_metrics.jsonl")):
        logs.append([json.loads(line) for line in path.read_text().splitlines() if line])
    return logs


def packed_search(
    args: argparse.Namespace, n: int, cpus: int, storage: Path, flops_per_image: float
) -> dict[str, Any]:
    """One search with ``n`` trials at once on one GPU (or, smoke-sized, on the CPU)."""
    from cattle_yolo import stats as S  # main put the repository on the path

    cpus_per_trial = max(1, cpus // n)
    workers = min(4, cpus_per_trial - 1) if args.gpu else 0
    name = f"pack-{n}"
    cmd = [
        sys.executable,
        str(REPO / "run_search.py"),
        "--space",
        str(REPO / "search_spaces" / "fixes.yaml"),
        "--trials",
        str(n),
        "--epochs",
        str(args.epochs),
        "--grace-period",
        str(args.epochs),
        "--confirm",
        "0",
        "--cpus-per-trial",
        str(cpus_per_trial),
        "--storage",
        str(storage),
        "--name",
        name,
        "--no-dashboard",
        "--quiet",
        "--set",
        f"imgsz={args.imgsz}",
        "--set",
        f"workers={workers}",
        *sum((["--set", kv] for kv in args.set), []),
    ]
    if args.gpu:
        cmd += ["--gpus", "1", "--gpus-per-trial", f"{1 / n:g}"]
    else:
        cmd += ["--gpus", "0"]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    env = {**os.environ, "CATTLE_YOLO_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    with GpuSampler() as sampler:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: no trial finished (all diverged): still measured
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    logs = trial_logs(storage / name)
    steady = [log[1:] or log for log in logs]  # the first epoch pays for start-up
    per_trial = [sum(e[S.IMAGES_PER_SEC] for e in log) / len(log) for log in steady if log]
    aggregate = sum(per_trial)  # the trials train at once: their rates add up
    row: dict[str, Any] = {
        "trials_per_gpu": n,
        "cpus_per_trial": cpus_per_trial,
        "workers": workers,
        "trials": len(logs),
        "epochs": args.epochs,
        "wall_s": wall,
        "trials_per_hour": len(logs) / wall * 3600,
        "aggregate_images_per_sec": aggregate,
        "per_trial_images_per_sec": per_trial,
        "aggregate_tflops": aggregate * flops_per_image / 1e12,
        "peak_cuda_mb_per_trial": [
            max((e.get(S.PEAK_CUDA_MB, 0.0) for e in log), default=0.0) for log in logs
        ],
        S.AMP: sorted({e.get(S.AMP) for log in logs for e in log if e.get(S.AMP)}),
        **sampler.summary(),
    }
    return row


def bottleneck(row: dict[str, Any]) -> str:
    """What stopped the scaling at ``row``, from what was measured."""
    total, used = row.get("gpu_mem_total_mb"), row.get("gpu_mem_used_max_mb")
    if total and used and used > 0.9 * total:
        return f"GPU memory ({used:.0f} of {total:.0f} MB used)"
    if row["cpus_per_trial"] < 2:
        return f"CPU threads ({row['cpus_per_trial']} CPU per trial: data and launches starve)"
    util = row.get("gpu_util_mean")
    if util is not None and util >= 90:
        return f"the GPU itself ({util:.0f}% busy)"
    if util is not None:
        return (
            f"the host side: the GPU is {util:.0f}% busy with {row['cpus_per_trial']} CPUs per "
            "trial, so data loading and the kernel launches of small-batch steps set the pace"
        )
    return "unknown (no GPU utilisation sampled)"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with train/ and val/")
    p.add_argument("--imgsz", type=int, default=320, help="image size of every step")
    p.add_argument("--epochs", type=int, default=3, help="epochs per packed trial")
    p.add_argument("--images", type=int, default=128, help="images per throughput epoch")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU")
    p.add_argument("--set", nargs="*", default=[], help="key=value for every packed trial")
    p.add_argument(
        "--json",
        type=Path,
        default=REPO / "docs" / "data" / "gpu_check.json",
        help="write the measurements here",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="the same steps CPU-sized (64 px, synthetic data, 1 and 2 trials of 1 epoch)",
    )
    args = p.parse_args()
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from train_throughput import gemm_peak_gflops, machine, training_flops

    from cattle_yolo.config import TrainConfig
    from cattle_yolo.loss import DetectionLoss
    from cattle_yolo.model import CattleYOLO

    args.gpu = torch.cuda.is_available() and not args.smoke_test
    if args.smoke_test:
        args.imgsz, args.epochs, args.images, args.packs = 64, 1, 8, [1, 2]
        args.data = None  # the embedded synthetic set
        args.set = ["neck_channels=16", "synthetic_images=8", "batch=4", "accumulate=1", *args.set]
    elif not args.gpu:
        sys.exit("error: no CUDA device here; run with --smoke-test for the CPU-sized check")
    elif not (args.data / "train").is_dir():
        sys.exit(f"error: no dataset at {args.data} (a folder with train/ and val/)")
    device = torch.device("cuda" if args.gpu else "cpu")
    cpus = os.cpu_count() or 1
    t_start = time.perf_counter()
    print(f"machine: {machine()}, {cpus} CPUs", flush=True)

    cfg = TrainConfig(imgsz=args.imgsz)
    model = CattleYOLO(2, cfg).to(device)
    flops = training_flops(model, args.imgsz, DetectionLoss(cfg, 2))
    del model
    peak = gemm_peak_gflops(torch.bfloat16, device)["peak"] * 1e9  # FLOP/s
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        rows = throughput(args, device.type, Path(tmp) / "throughput.json")
        packs = []
        for n in args.packs:
            row = packed_search(args, n, cpus, Path(tmp) / "searches", flops)
            row["share_of_bf16_peak"] = row["aggregate_tflops"] * 1e12 / peak
            packs.append(row)
            print(
                f"{n} trial(s) per {'GPU' if args.gpu else 'CPU machine'}: "
                f"{row['trials_per_hour']:.0f} trials/h ({row['epochs']} epochs each), "
                f"{row['aggregate_images_per_sec']:.1f} training images/s in all, "
                f"{row['aggregate_tflops']:.2f} TFLOP/s = {row['share_of_bf16_peak']:.1%} of the "
                f"bf16 peak, peak GPU memory per trial "
                f"{max(row['peak_cuda_mb_per_trial'], default=0):.0f} MB",
                flush=True,
            )
    one = packs[0]["aggregate_images_per_sec"] or float("nan")
    verdicts = []
    for row in packs:
        row["speedup"] = row["aggregate_images_per_sec"] / one
        goal = GOALS.get(row["trials_per_gpu"])
        if goal is not None:
            met = row["speedup"] >= goal
            row["goal"], row["goal_met"] = goal, met
            verdicts.append(
                f"{row['trials_per_gpu']} trials: {row['speedup']:.2f}x one trial "
                f"(goal {goal}x): {'met' if met else 'missed'}"
            )
    stalls = [
        b
        for a, b in zip(packs, packs[1:], strict=False)
        if b["speedup"] < 1.25 * a["speedup"]  # doubling the trials gave < 25% more
    ]
    where = None
    if stalls:
        where = f"stops scaling at {stalls[0]['trials_per_gpu']} trials: {bottleneck(stalls[0])}"
    print("\n".join(verdicts + ([where] if where else [])), flush=True)
    doc = {
        "machine": machine(),
        "cpus": cpus,
        "smoke_test": args.smoke_test,
        "imgsz": args.imgsz,
        "train_gflop_per_image": flops / 1e9,
        "bf16_peak_tflops": peak / 1e12,
        "throughput": rows,
        "packing": packs,
        "verdicts": verdicts,
        "bottleneck": where,
        "wall_s": time.perf_counter() - t_start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"{args.json} ({doc['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
