"""cattle_yolo against Ultralytics YOLOv8n: throughput, FLOPs and accuracy on the same data.

Ultralytics is a peer, never a dependency: it lives in its own environment (``--peer-python``,
default ``.venv-peer/bin/python``; make it with
``python3.11 -m venv .venv-peer && .venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1
ultralytics``). Both train from random init on the CPU with the same data, imgsz, batch and
epochs, each with its own defaults otherwise (both accumulate gradients to an effective batch of
64: Ultralytics through its nominal batch ``nbs=64``, cattle_yolo through ``accumulate=4``).

The two trainings run as two processes that take turns, one epoch each, passing a baton through
a file in the work folder: the one whose turn it is trains and validates one epoch while the
other waits in its epoch-end callback (a 0.2 s sleep loop, no CPU). So the machine's noise hits
both alike, and each side's epoch times are its own. Ultralytics reads the data through a folder
of symbolic links under the work folder, so that its label caches are written there and not
into the shared dataset.

Both are scored with the same ruler as well as Ultralytics' own: after every epoch YOLOv8n's
EMA weights (its saved ``last.pt``) detect on the val images at conf 0.001, NMS IoU 0.7, at most
300 per image, and ``cattle_yolo.evaluate.coco_metrics`` (pycocotools) scores those detections
against the same ground truth cattle_yolo's own validation uses.

    python benchmarks/peer_ultralytics.py                          # 20 epochs each, cattle-chute
    python benchmarks/peer_ultralytics.py --epochs 30 --device cuda --imgsz 640
    python benchmarks/peer_ultralytics.py --ours-batch 16 --ours-accumulate 4   # YOLOv8n's batch
    python benchmarks/peer_ultralytics.py --smoke-test --data DIR  # 2 epochs each
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # cattle_yolo.stats: plain names, importable in either venv

from cattle_yolo import stats as S  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cattle-chute"
SIDES = ("ours", "peer")


# --------------------------------------------------------------------------- measured in-process
def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate with torch (its default threads), the FLOP/s ceiling."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


# --------------------------------------------------------------------------- the baton
class Baton:
    """Turn-taking between the two side processes through ``<dir>/turn``."""

    def __init__(self, folder: Path, me: str) -> None:
        self.folder, self.me = folder, me
        self.other = SIDES[1 - SIDES.index(me)]

    def wait(self) -> None:
        """Block until it is my turn or the other side has finished."""
        while (self.folder / "turn").read_text() != self.me:
            if (self.folder / f"done-{self.other}").exists():
                return
            time.sleep(0.2)

    def give(self) -> None:
        tmp = self.folder / f"turn.{self.me}.tmp"
        tmp.write_text(self.other)
        tmp.replace(self.folder / "turn")

    def finish(self) -> None:
        (self.folder / f"done-{self.me}").write_text("")
        self.give()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the two sides
def side_ours(args: argparse.Namespace, baton: Baton) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from train_throughput import training_flops

    from cattle_yolo.config import TrainConfig
    from cattle_yolo.model import CattleYOLO
    from cattle_yolo.stats import EpochStats
    from cattle_yolo.train import train

    cfg = TrainConfig(
        data=str(args.data),
        imgsz=args.imgsz,
        epochs=args.epochs,
        device=args.device,
        out=str(args.out),
        seed=0,
        workers=args.workers,
    )
    if args.ours_batch:  # else the project's defaults (batch 4 x accumulate 4)
        cfg = cfg.replace(batch=args.ours_batch, accumulate=args.ours_accumulate)
    flops = training_flops(CattleYOLO(1, cfg), args.imgsz)
    epochs: list[dict[str, Any]] = []

    def callback(stats: EpochStats) -> None:
        epochs.append(
            {
                S.EPOCH: stats[S.EPOCH],
                S.MAP50: stats[S.MAP50],
                S.MAP50_95: stats[S.MAP50_95],
                S.TRAIN_LOSS: stats[S.TRAIN_LOSS],
                S.VAL_LOSS: stats[S.VAL_LOSS],
                "train_s": stats[S.TRAIN_TIME],
                "epoch_s": stats[S.EPOCH_TIME],
                "images": round(stats[S.TRAIN_TIME] * stats[S.IMAGES_PER_SEC]),
            }
        )
        if stats[S.EPOCH] < args.epochs:
            baton.give()
            baton.wait()

    baton.wait()
    train(cfg, callbacks=[callback])
    for f in Path(args.out, "models").glob("*.pt"):  # metrics are read; weights are not kept
        f.unlink()
    return {
        "flops_per_image": flops,
        "epochs": epochs,
        "peak_rss_mb": peak_rss_mb(),
        "config": cfg.to_dict(),
    }


def side_peer(args: argparse.Namespace, baton: Baton) -> dict[str, Any]:
    import csv

    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    sys.path.insert(0, str(REPO))  # torch, PIL and yaml are Ultralytics' dependencies too
    sys.path.insert(0, str(HERE))
    from train_throughput import training_flops

    from cattle_yolo.sources import IMAGE_SUFFIXES

    names = (Path(args.data) / "classes.txt").read_text().split()
    data_dir = Path(args.out).parent / "peer-data"
    for split in ("train", "val"):  # links, not copies: Ultralytics writes its caches beside
        (data_dir / split).mkdir(parents=True, exist_ok=True)
        for f in (Path(args.data) / split).iterdir():
            link = data_dir / split / f.name
            if f.suffix.lower() in (*IMAGE_SUFFIXES, ".txt") and not link.exists():
                link.symlink_to(f.resolve())
    data_yaml = data_dir / "data.yaml"
    data_yaml.write_text(
        json.dumps({"path": str(data_dir), "train": "train", "val": "val", "names": names})
    )
    flops = training_flops(DetectionModel("yolov8n.yaml", nc=len(names), verbose=False), args.imgsz)

    times: dict[int, dict[str, Any]] = {}
    t: dict[str, float] = {}

    def on_train_epoch_start(trainer: Any) -> None:
        t["start"] = time.perf_counter()

    def on_train_epoch_end(trainer: Any) -> None:
        t["train_end"] = time.perf_counter()

    val_files = sorted(
        str(f) for f in (data_dir / "val").iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
    )
    detections_dir = Path(args.workdir) / "peer-detections"
    detections_dir.mkdir(parents=True, exist_ok=True)

    def on_fit_epoch_end(trainer: Any) -> None:  # after validation and saving
        epoch = trainer.epoch + 1
        times[epoch] = {
            "train_s": t["train_end"] - t["start"],
            "epoch_s": time.perf_counter() - t["start"],
            "images": len(trainer.train_loader.dataset),
        }
        export_detections(trainer.last, val_files, detections_dir / f"epoch{epoch}.json", args)
        if epoch < args.epochs:
            baton.give()
            baton.wait()

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", on_train_epoch_start)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    run = Path(args.out)
    baton.wait()
    model.train(
        data=str(data_yaml),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device if args.device != "cuda" else 0,
        pretrained=False,
        amp=args.device != "cpu",
        plots=False,
        val=True,
        seed=0,
        workers=args.workers,
        project=str(run.parent),
        name=run.name,
        exist_ok=True,
        verbose=False,
    )
    rows = list(csv.DictReader((run / "results.csv").open()))
    epochs = [
        {
            S.EPOCH: int(r["epoch"]),  # Ultralytics' results.csv columns
            S.MAP50: float(r["metrics/mAP50(B)"]),
            S.MAP50_95: float(r["metrics/mAP50-95(B)"]),
            **times[int(r["epoch"])],
        }
        for r in rows
    ]
    return {"flops_per_image": flops, "epochs": epochs, "peak_rss_mb": peak_rss_mb()}


def export_detections(weights: Path, files: list[str], out: Path, args: argparse.Namespace) -> None:
    """YOLOv8n's detections on ``files`` at conf 0.001 (pixel xyxy in the original images),
    as JSON: one ``{"file", "boxes", "scores", "labels"}`` per image."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    device = args.device if args.device != "cuda" else 0
    rows = []
    for r in model.predict(
        files,
        conf=0.001,
        iou=0.7,
        max_det=300,
        imgsz=args.imgsz,
        device=device,
        verbose=False,
        stream=True,
        batch=16,
    ):
        b = r.boxes
        rows.append(
            {
                "file": r.path,
                "boxes": b.xyxy.tolist(),
                "scores": b.conf.tolist(),
                "labels": b.cls.long().tolist(),
            }
        )
    out.write_text(json.dumps(rows))


def same_ruler(workdir: Path, data: Path, imgsz: int) -> dict[int, dict[str, float]]:
    """Score each epoch's exported YOLOv8n detections with ``cattle_yolo.evaluate.coco_metrics``
    against the val ground truth cattle_yolo's own validation uses (boxes mapped into the same
    letterboxed space; a letterbox is a uniform scale and shift, so every IoU is unchanged)."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from cattle_yolo.boxes import to_letterbox
    from cattle_yolo.config import TrainConfig
    from cattle_yolo.data import load_datasets
    from cattle_yolo.evaluate import coco_metrics

    val = load_datasets(TrainConfig(data=str(data), imgsz=imgsz), verbose=False).val
    index = {Path(f).name: k for k, f in enumerate(val.files)}
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(val.boxes, val.labels, strict=True)]
    scored = {}
    for path in sorted((workdir / "peer-detections").glob("epoch*.json")):
        detections = [{"boxes": np.zeros((0, 4)), "scores": [], "labels": []} for _ in targets]
        for row in json.loads(path.read_text()):
            k = index[Path(row["file"]).name]
            boxes = np.asarray(row["boxes"], np.float64).reshape(-1, 4)
            detections[k] = {
                "boxes": to_letterbox(boxes, *val.letterbox[k]),
                "scores": row["scores"],
                "labels": row["labels"],
            }
        m = coco_metrics(detections, targets, val.names, max_dets=300)
        scored[int(path.stem[5:])] = {S.MAP50: m[S.MAP50], S.MAP50_95: m[S.MAP50_95]}
    return scored


# --------------------------------------------------------------------------- the driver
def summarize(result: dict[str, Any], peak_gflops: float) -> dict[str, Any]:
    """Throughput over every epoch but the first (start-up), accuracy of the last epoch."""
    steady = result["epochs"][1:] or result["epochs"]
    images = sum(e["images"] for e in steady)
    train_s = sum(e["train_s"] for e in steady)
    ips = images / train_s
    last = result["epochs"][-1]
    return {
        "images_per_sec": ips,
        "train_s_per_epoch": train_s / len(steady),
        "epoch_s_with_val": sum(e["epoch_s"] for e in steady) / len(steady),
        "gflops_per_image": result["flops_per_image"] / 1e9,
        "achieved_gflops": ips * result["flops_per_image"] / 1e9,
        "share_of_peak": ips * result["flops_per_image"] / 1e9 / peak_gflops,
        "peak_rss_mb": result["peak_rss_mb"],
        "last_mAP50": last[S.MAP50],
        "last_mAP50_95": last[S.MAP50_95],
        "best_mAP50_95": max(e[S.MAP50_95] for e in result["epochs"]),
        "mAP50_95_at": {
            e[S.EPOCH]: e[S.MAP50_95] for e in result["epochs"] if e[S.EPOCH] in (10, 20, 30)
        },
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with train/ and val/")
    p.add_argument("--epochs", type=int, default=20, help="epochs for both")
    p.add_argument("--imgsz", type=int, default=320, help="image size for both")
    p.add_argument("--batch", type=int, default=16, help="Ultralytics' batch (it steps every 64)")
    p.add_argument(
        "--ours-batch",
        type=int,
        default=0,
        help="cattle_yolo's batch; 0 = the project's default (4, accumulate 4)",
    )
    p.add_argument("--ours-accumulate", type=int, default=4, help="with --ours-batch")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for both")
    p.add_argument("--workers", type=int, default=0, help="data loader workers, for both")
    p.add_argument(
        "--peer-python",
        default=str(REPO / ".venv-peer" / "bin" / "python"),
        help="python with ultralytics",
    )
    p.add_argument("--workdir", default=str(REPO / "outputs" / "peer"), help="runs go here")
    p.add_argument("--json", help="write the results here (default <workdir>/results.json)")
    p.add_argument("--smoke-test", action="store_true", help="2 epochs each")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args()


def run_side(args: argparse.Namespace, workdir: Path) -> None:
    """One side's training (a child process of ``main``), its result written to
    ``<workdir>/result-<side>.json``."""
    baton = Baton(workdir, args.side)
    try:
        result = (side_ours if args.side == "ours" else side_peer)(args, baton)
    finally:
        baton.finish()
    (workdir / f"result-{args.side}.json").write_text(json.dumps(result, indent=2))


def side_command(args: argparse.Namespace, workdir: Path, side: str, python: str) -> list[str]:
    """The command line that runs ``side`` with ``python`` on the same settings."""
    return [
        python,
        __file__,
        "--side",
        side,
        "--epochs",
        str(args.epochs),
        "--imgsz",
        str(args.imgsz),
        "--batch",
        str(args.batch),
        "--data",
        str(args.data),
        "--ours-batch",
        str(args.ours_batch),
        "--ours-accumulate",
        str(args.ours_accumulate),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
        "--workdir",
        str(workdir),
        "--out",
        str(workdir / side),
    ]


def wait_for_sides(procs: dict[str, subprocess.Popen[bytes]], workdir: Path) -> None:
    """Wait for both sides; when one fails, stop the other and exit naming its log."""
    for side, proc in procs.items():
        if proc.wait():
            for other in procs.values():
                other.kill()
            sys.exit(f"error: the {side} side failed; see {workdir / f'{side}.log'}")


def main() -> None:
    args = parse_args()
    workdir = Path(args.workdir)
    if args.side:
        run_side(args, workdir)
        return
    if not (args.data / "train").is_dir():
        sys.exit(f"error: no dataset at {args.data} (a folder with train/ and val/)")
    if not (Path(args.peer_python).exists() or shutil.which(args.peer_python)):
        sys.exit(f"error: no peer environment at {args.peer_python} (see --help)")
    if args.smoke_test:
        args.epochs = 2
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("turn", "done-ours", "done-peer", "result-ours.json", "result-peer.json"):
        (workdir / stale).unlink(missing_ok=True)
    shutil.rmtree(workdir / "peer-detections", ignore_errors=True)
    peak = matmul_peak_gflops() if args.device == "cpu" else float("nan")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    (workdir / "turn").write_text("ours")
    env = {**os.environ, "CATTLE_YOLO_NO_PROGRESS": "1", "YOLO_OFFLINE": "1"}
    procs = {}
    for side, python in (("ours", sys.executable), ("peer", args.peer_python)):
        cmd = side_command(args, workdir, side, python)
        log = (workdir / f"{side}.log").open("w")
        procs[side] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    t0 = time.perf_counter()
    wait_for_sides(procs, workdir)
    results = {s: json.loads((workdir / f"result-{s}.json").read_text()) for s in SIDES}
    ruler = same_ruler(workdir, args.data, args.imgsz)
    for e in results["peer"]["epochs"]:  # Ultralytics' own figure stays beside ours
        e["own_mAP50"], e["own_mAP50_95"] = e[S.MAP50], e[S.MAP50_95]
        e.update(ruler[e[S.EPOCH]])
    summary = {s: summarize(results[s], peak) for s in SIDES}
    for side, r in summary.items():
        print(
            f"{side}: {r['images_per_sec']:.2f} img/s, {r['train_s_per_epoch']:.1f} s/epoch "
            f"training ({r['epoch_s_with_val']:.1f} with val), {r['gflops_per_image']:.2f} "
            f"GFLOP/img, {r['achieved_gflops']:.1f} GFLOP/s ({r['share_of_peak']:.0%} of peak), "
            f"last mAP50 {r['last_mAP50']:.3f} mAP50-95 {r['last_mAP50_95']:.3f}, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    o, q = summary["ours"], summary["peer"]
    ratios = {
        key: o[key] / q[key]
        for key in ("images_per_sec", "achieved_gflops", "last_mAP50", "last_mAP50_95")
        if q[key]
    }
    print("ratios ours/peer:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    out = Path(args.json) if args.json else workdir / "results.json"
    print("val mAP50-95 by epoch (same ruler), ours / YOLOv8n (Ultralytics' own):")
    for o_e, p_e in zip(results["ours"]["epochs"], results["peer"]["epochs"], strict=True):
        print(
            f"  {o_e[S.EPOCH]:3d}  {o_e[S.MAP50_95]:.4f} / {p_e[S.MAP50_95]:.4f} "
            f"({p_e['own_mAP50_95']:.4f})"
        )
    out.write_text(
        json.dumps(
            {
                "matmul_peak_gflops": peak,
                "epochs": args.epochs,
                "imgsz": args.imgsz,
                "batch": args.batch,
                "ours_batch": args.ours_batch,
                "device": args.device,
                "wall_s": time.perf_counter() - t0,
                "summary": summary,
                "ratios": ratios,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
