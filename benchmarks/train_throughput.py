"""Training throughput: images per second, peak memory and the step-time shares.

Each (imgsz, device) case runs in its own subprocess so that peak memory is its own. One warm-up
epoch is run first (it pays for allocator growth and, on CUDA, kernel selection); the measured
epoch follows, synchronised between phases so the shares of data, forward, loss and backward add
up to the step time.

    python benchmarks/train_throughput.py                 # imgsz 320 and 384 on cpu (+ cuda)
    python benchmarks/train_throughput.py --imgsz 320 --images 32 --smoke-test
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_case(imgsz: int, device_name: str, images: int, batch: int, data: str | None) -> dict:
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.data import load_datasets, make_loader
    from cattle_yolo.device import resolve_device
    from cattle_yolo.engine import ModelEMA, train_one_epoch
    from cattle_yolo.loss import DetectionLoss
    from cattle_yolo.model import CattleYOLO
    from cattle_yolo.train import build_optimizer

    cfg = TrainConfig(
        imgsz=imgsz,
        batch=batch,
        accumulate=1,
        epochs=2,
        device=device_name,
        synthetic_images=images,
        data=data,
        close_mosaic=0,  # both epochs with mosaic
    )
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    datasets = load_datasets(cfg)
    train_set = datasets.train.with_augment(cfg)
    model = CattleYOLO(len(datasets.names), cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    loss_fn = DetectionLoss(cfg, len(datasets.names))
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    results = []
    for epoch in range(2):
        loader = make_loader(train_set, cfg, train=True, epoch=epoch)
        results.append(
            train_one_epoch(
                model, loss_fn, loader, optimizer, scaler, ema, cfg, device, epoch, profile=True
            )
        )
    stats = results[-1]  # after the first epoch
    out = {
        "imgsz": imgsz,
        "device": str(device),
        "batch": batch,
        "images": len(train_set),
        "images_per_sec": stats["images_per_sec"],
        "first_epoch_images_per_sec": results[0]["images_per_sec"],
        **{k: v for k, v in stats.items() if k.startswith("share_")},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--imgsz", type=int, nargs="+", default=[320, 384], help="image sizes")
    p.add_argument("--images", type=int, default=64, help="synthetic training images per epoch")
    p.add_argument("--batch", type=int, default=4, help="images per step")
    p.add_argument("--data", help="dataset instead of the synthetic default")
    p.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when present")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke-test", action="store_true", help="tiny run: 8 images at imgsz 64")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args()
    if args.case:
        imgsz, device = args.case.split(",")
        print(json.dumps(run_case(int(imgsz), device, args.images, args.batch, args.data)))
        return
    if args.smoke_test:
        args.imgsz, args.images = [64], 8
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"machine: {machine()}")
    rows = []
    for device in devices:
        for imgsz in args.imgsz:
            cmd = [
                sys.executable,
                __file__,
                "--case",
                f"{imgsz},{device}",
                "--images",
                str(args.images),
                "--batch",
                str(args.batch),
            ]
            if args.data:
                cmd += ["--data", args.data]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(
                f"{device:>6s} imgsz {imgsz}: {row['images_per_sec']:.1f} img/s "
                f"(first epoch {row['first_epoch_images_per_sec']:.1f}), "
                f"data {row['share_data']:.1%} forward {row['share_forward']:.1%} "
                f"loss {row['share_loss']:.1%} backward {row['share_backward']:.1%}, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB"
                + (f", peak CUDA {row['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in row else "")
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
