"""Training throughput: images per second, peak memory, step-time shares and achieved FLOP/s.

Each case (image size, device, precision, channels_last, compile, threads, workers) runs in its
own subprocess so that its peak memory is its own. One warm-up epoch is run first (it pays for
allocator growth, oneDNN's kernel choice and, with ``--compile``, the compilation, whose time is
reported); the measured epoch follows, synchronised between phases so that the shares of data,
forward, loss and backward add up to the step time. Achieved GFLOP/s is the training step's FLOPs
per image (torch's ``FlopCounterMode`` over one forward and backward: the count does not depend on
the precision) times images/s, and its share is of the matmul peak of the *same* precision,
measured in the same process with the same threads (the best of a matmul and two oneDNN
convolutions, see ``gemm_peak_gflops``). The model's layout is the trainer's (channels_last on
CUDA and for bf16 on a CPU, NCHW for fp32 on a CPU); ``--channels-last`` runs both.

    python benchmarks/train_throughput.py                      # 320 and 384 px, fp32, cpu (+ cuda)
    python benchmarks/train_throughput.py --imgsz 320 --precision fp32,bf16 --json out.json
    python benchmarks/train_throughput.py --imgsz 256 --precision bf16 --channels-last --compile
    python benchmarks/train_throughput.py --smoke-test         # seconds: 8 images at 64 px
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Amp = Literal["auto", "bf16", "fp16", "off"]  # TrainConfig.amp's values
# --precision name -> amp
PRECISIONS: dict[str, Amp] = {"fp32": "off", "bf16": "bf16", "fp16": "fp16", "auto": "auto"}


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """GFLOP/s of dense products in ``dtype`` on ``device`` with torch's current threads, best
    of 5: a 2048 x 2048 matmul, and a 1x1 and a 3x3 convolution (512 and 256 channels, 32 x 32,
    batch 8, channels_last) through oneDNN; ``peak`` is the largest. On AMD CPUs torch's fp32
    matmul goes through MKL's slower AMD path, so the convolutions are the honest fp32 peak."""
    import torch.nn.functional as F

    cl = torch.channels_last
    a, b = (torch.randn(2048, 2048, device=device).to(dtype) for _ in range(2))
    x1 = torch.randn(8, 512, 32, 32, device=device).to(dtype).contiguous(memory_format=cl)
    w1 = torch.randn(512, 512, 1, 1, device=device).to(dtype)
    x3 = torch.randn(8, 256, 32, 32, device=device).to(dtype).contiguous(memory_format=cl)
    w3 = torch.randn(256, 256, 3, 3, device=device).to(dtype)
    cases: dict[str, tuple[Callable[[], torch.Tensor], int]] = {
        "matmul": (lambda: a @ b, 2 * 2048**3),
        "conv1x1": (lambda: F.conv2d(x1, w1), 2 * 8 * 32 * 32 * 512 * 512),
        "conv3x3": (lambda: F.conv2d(x3, w3, padding=1), 2 * 8 * 32 * 32 * 256 * 256 * 9),
    }
    out = {}
    for name, (fn, flops) in cases.items():
        times = []
        for i in range(7):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(1 if device.type == "cpu" else 20):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:  # two warm-ups
                times.append((time.perf_counter() - t0) / (1 if device.type == "cpu" else 20))
        out[name] = flops / min(times) / 1e9
    out["peak"] = max(out.values())
    return out


def training_flops(model: Any, imgsz: int, loss_fn: Any = None) -> float:
    """FLOPs of one training image, forward and backward (batch 2 on the model's device,
    halved; the count does not depend on the precision). With ``loss_fn`` (``DetectionLoss``'s
    call) the loss is counted too; without, the backward starts from the sum of the outputs."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    device = next(model.parameters()).device
    x = torch.rand(2, 3, imgsz, imgsz, device=device)
    targets = torch.tensor(
        [[0, 0, 8, 8, imgsz / 2, imgsz / 2], [1, 1, imgsz / 4, imgsz / 4, imgsz - 8, imgsz - 8]],
        device=device,
    )
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        total = (
            loss_fn(out, targets, 0.0)["total"]
            if loss_fn is not None
            else sum(o.float().sum() for o in _leaves(out))
        )
        total.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) / 2


def _leaves(out: Any) -> list[Any]:
    """The tensors of a model's output (a dict, list or tuple, nested) that need a gradient."""
    if isinstance(out, dict):
        return [v for o in out.values() for v in _leaves(o)]
    if isinstance(out, list | tuple):
        return [v for o in out for v in _leaves(o)]
    return [out] if getattr(out, "requires_grad", False) else []


def run_case(
    case: dict[str, Any], images: int, batch: int, accumulate: int, data: str | None
) -> dict[str, Any]:
    from cattle_yolo import device as device_mod
    from cattle_yolo import stats as S
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.data import load_datasets, make_loader
    from cattle_yolo.device import DTYPES, resolve_amp, resolve_device
    from cattle_yolo.engine import ModelEMA, Trainer, train_one_epoch
    from cattle_yolo.loss import DetectionLoss
    from cattle_yolo.model import CattleYOLO
    from cattle_yolo.train import build_optimizer

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device_mod.CPU_CHANNELS_LAST = case["channels_last"]  # None: the trainer's rule
    cfg = TrainConfig(
        imgsz=case["imgsz"],
        batch=batch,
        accumulate=accumulate,
        epochs=2,
        device=case["device"],
        synthetic_images=images,
        data=data,
        close_mosaic=0,  # both epochs with mosaic
        amp=PRECISIONS[case["precision"]],
        workers=case["workers"],
    )
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)[0]
    cfg = cfg.replace(amp=amp)
    torch.manual_seed(0)
    datasets = load_datasets(cfg, verbose=False)
    train_set = datasets.train.with_augment(cfg)
    model: torch.nn.Module = CattleYOLO(len(datasets.names), cfg).to(device)
    loss_fn = DetectionLoss(cfg, len(datasets.names))
    flops = training_flops(model, cfg.imgsz, loss_fn)
    model = device_mod.model_layout(model, device, DTYPES[amp])  # the trainer's, or the case's
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    step_model: Any = torch.compile(model) if case["compile"] else None
    trainer = Trainer(model, loss_fn, optimizer, scaler, ema, cfg, device, step_model)
    results, walls = [], []
    for epoch in range(2):
        loader = make_loader(train_set, cfg, train=True, epoch=epoch)
        t0 = time.perf_counter()
        results.append(train_one_epoch(trainer, loader, epoch, profile=True))
        walls.append(time.perf_counter() - t0)
    stats = results[-1]  # after the first epoch
    dtype = DTYPES[amp] or torch.float32
    peaks = gemm_peak_gflops(dtype, device)
    peak = peaks["peak"]
    achieved = flops * stats[S.IMAGES_PER_SEC] / 1e9
    out = {
        **case,
        S.AMP: amp,
        "layout": "channels_last" if device_mod.channels_last(device, DTYPES[amp]) else "NCHW",
        "batch": batch,
        "accumulate": accumulate,
        "images": len(train_set),
        "threads_used": torch.get_num_threads(),
        S.IMAGES_PER_SEC: stats[S.IMAGES_PER_SEC],
        "first_epoch_images_per_sec": results[0][S.IMAGES_PER_SEC],
        "first_epoch_s": walls[0],
        "epoch_s": walls[1],
        **{k: v for k, v in stats.items() if k.startswith("share_")},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_gflop_per_image": flops / 1e9,
        "achieved_gflops": achieved,
        "gemm_peak_gflops": peaks,
        "matmul_peak_gflops": peak,
        "share_of_peak": achieved / peak,
    }
    if device.type == "cuda":
        out[S.PEAK_CUDA_MB] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def machine() -> str:
    from cattle_yolo.device import cpu_bf16_units

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    units = cpu_bf16_units() or "no bf16 units"
    threads = torch.get_num_threads()
    return f"{cpu} ({units}), {threads} torch threads, {gpu}, torch {torch.__version__}"


def label(row: dict[str, Any]) -> str:
    extras = [
        *([row["layout"]] if row.get("layout") else []),
        *(["compile"] if row["compile"] else []),
        *([f"{row['threads']} threads"] if row["threads"] else []),
        *([f"{row['workers']} workers"] if row["workers"] else []),
    ]
    return f"{row['device']} {row['imgsz']} px {row['precision']}" + (
        f" ({', '.join(extras)})" if extras else ""
    )


def cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out = []
    for device in devices:
        for imgsz in args.imgsz:
            for precision in args.precision.split(","):
                for threads in args.threads:
                    for workers in args.workers:
                        # None: the trainer's layout; --channels-last: both, forced
                        layouts: list[bool | None] = [False, True] if args.channels_last else [None]
                        variants = [(cl, False) for cl in layouts]
                        if args.compile:
                            variants.append((None, True))
                        for cl, compiled in variants:
                            out.append(
                                {
                                    "device": device,
                                    "imgsz": imgsz,
                                    "precision": precision,
                                    "channels_last": cl,
                                    "compile": compiled,
                                    "threads": threads,
                                    "workers": workers,
                                }
                            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--imgsz", type=int, nargs="+", default=[320, 384], help="image sizes")
    p.add_argument("--images", type=int, default=64, help="synthetic training images per epoch")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass")
    p.add_argument(
        "--accumulate", type=int, default=4, help="forward passes per optimizer step (trainer's: 4)"
    )
    p.add_argument("--data", help="dataset instead of the synthetic default")
    p.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when present")
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated: fp32, bf16, fp16 (CUDA), auto; each a case (default fp32)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="each CPU case in both layouts, NCHW and channels_last (default: the trainer's, "
        "channels_last on CUDA and for bf16 on a CPU, NCHW for fp32 on a CPU)",
    )
    p.add_argument("--compile", action="store_true", help="also each case torch.compile'd")
    p.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="torch threads per case (0: default)"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke-test", action="store_true", help="tiny run: 8 images at imgsz 64")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(run_case(case, args.images, args.batch, args.accumulate, args.data)))
        return
    if args.smoke_test:
        args.imgsz, args.images = [64], 8
    print(f"machine: {machine()}")
    rows = []
    for case in cases(args):
        cmd = [sys.executable, __file__, "--case", json.dumps(case)]
        cmd += ["--images", str(args.images), "--batch", str(args.batch)]
        cmd += ["--accumulate", str(args.accumulate)]
        if args.data:
            cmd += ["--data", args.data]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{label(case)} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"{label(row)}: {row['images_per_sec']:.2f} img/s "
            f"(first epoch {row['first_epoch_images_per_sec']:.2f}, {row['first_epoch_s']:.0f} s), "
            f"data {row['share_data']:.1%} forward {row['share_forward']:.1%} "
            f"loss {row['share_loss']:.1%} backward {row['share_backward']:.1%}, "
            f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['achieved_gflops']:.0f} GFLOP/s = "
            f"{row['share_of_peak']:.0%} of the {row['precision']} GEMM peak "
            f"{row['matmul_peak_gflops']:.0f}"
            + (f", peak CUDA {row['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in row else ""),
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
