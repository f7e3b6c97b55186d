"""The training driver: builds everything from a ``TrainConfig``, runs the epochs, writes outputs.

Each epoch: ``train_one_epoch`` then ``evaluate`` on the EMA weights, one stats dict appended to
``<out>/metrics/training_metrics.csv`` and ``<out>/metrics/training_metrics.jsonl``, one summary
line in ``<out>/logs/train.log``, ``last.pt`` (and ``best.pt`` by val mAP50-95) in
``<out>/models/`` (best.pt holds the EMA weights, config and metrics only, no optimizer: last.pt
resumes) with best.pt's val detections in ``<out>/metrics/best_val_detections.npz``,
and the stats handed to every callback. The search plugs in as a callback;
this module never imports Ray.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cattle_yolo.checkpoint import (
    inference_checkpoint,
    load_checkpoint,
    save_checkpoint,
    training_state,
)
from cattle_yolo.config import ConfigError, TrainConfig, coerce
from cattle_yolo.data import Datasets, load_datasets, make_loader
from cattle_yolo.device import DTYPES, model_layout, precision_name, resolve_amp, resolve_device
from cattle_yolo.engine import ModelEMA, Trainer, train_one_epoch
from cattle_yolo.evaluate import evaluate_with_detections, save_detections
from cattle_yolo.files import remove_stale_temps
from cattle_yolo.loss import DetectionLoss
from cattle_yolo.model import CattleYOLO
from cattle_yolo.stats import (
    AMP,
    BEST_EPOCH,
    BEST_F1,
    BEST_F1_THRESHOLD,
    BEST_MAP50_95,
    EPOCH,
    EPOCH_TIME,
    IMAGES_PER_SEC,
    LR,
    MAP50,
    MAP50_95,
    PEAK_CUDA_MB,
    PRECISION,
    RECALL,
    SKIPPED_STEPS,
    TRAIN_BATCHES,
    TRAIN_BOX,
    TRAIN_CLS,
    TRAIN_DFL,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_NONFINITE_BATCHES,
    EpochStats,
)

Callback = Callable[[EpochStats], None]  # called after every epoch
log = logging.getLogger("cattle_yolo")

# Keys of a checkpoint's config that may differ on resume: they do not change the result.
RESUME_MUTABLE = ("device", "workers", "out", "data", "threads", "compile")
BEST_DETECTIONS = "best_val_detections.npz"  # in <out>/metrics/: best.pt's val detections


class DivergedError(RuntimeError):
    """Training diverged: an epoch's mean loss was non-finite or too many steps were skipped."""

    def __init__(self, reason: str, epoch: int) -> None:
        super().__init__(f"training diverged at epoch {epoch}: {reason}")
        self.reason, self.epoch = reason, epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir(cfg: TrainConfig, dataset_name: str) -> Path:
    """``cfg.out`` or ``outputs/<dataset name>/yolov8``, with logs/, metrics/ and models/."""
    out = Path(cfg.out) if cfg.out else Path("outputs") / dataset_name / "yolov8"
    for sub in ("logs", "metrics", "models"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on conv/linear weights only, not on biases and norm parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _attach_file_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "logs" / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        for h in log.handlers
    ):
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(stream)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _append_metrics(out: Path, stats: EpochStats | dict[str, Any]) -> None:
    row = {k: v for k, v in stats.items() if not isinstance(v, str)}
    csv_path = out / "metrics" / "training_metrics.csv"
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    fields = list(row)
    if not new:  # a resumed run keeps its file's columns (a newer version may log more keys)
        with csv_path.open(newline="") as f:
            fields = next(csv.reader(f))
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
    with (out / "metrics" / "training_metrics.jsonl").open("a") as f:
        f.write(json.dumps(stats, allow_nan=True) + "\n")


def _summary_line(s: EpochStats, epochs: int) -> str:
    return (
        f"epoch {s[EPOCH]}/{epochs} loss={s[TRAIN_LOSS]:.4f} "
        f"(box={s[TRAIN_BOX]:.4f} cls={s[TRAIN_CLS]:.4f} dfl={s[TRAIN_DFL]:.4f}) "
        f"val_loss={s[VAL_LOSS]:.4f} mAP50={s[MAP50]:.4f} "
        f"mAP50-95={s[MAP50_95]:.4f} P={s[PRECISION]:.3f} R={s[RECALL]:.3f} "
        f"F1={s[BEST_F1]:.3f}@{s[BEST_F1_THRESHOLD]:.3f} "
        f"lr={s[LR]:.2e} {s[EPOCH_TIME]:.1f}s {s[IMAGES_PER_SEC]:.1f} img/s"
        + (f" skipped={s[SKIPPED_STEPS]}" if s[SKIPPED_STEPS] else "")
    )


def _check_resume_config(
    saved: dict[str, Any], cfg: TrainConfig, path: Path, device: torch.device
) -> None:
    saved = dict(saved)
    if "amp" in saved:  # a checkpoint of the bool days, or one that recorded what auto chose
        saved["amp"] = resolve_amp(coerce("amp", saved["amp"]), device)[0]
    for key, value in cfg.to_dict().items():
        if key not in RESUME_MUTABLE and saved.get(key) != value:
            raise ConfigError(
                f"{path}: cannot resume with a different {key!r} "
                f"(checkpoint has {saved.get(key)!r}, config has {value!r})"
            )


def train(
    cfg: TrainConfig,
    datasets: Datasets | None = None,
    callbacks: Sequence[Callback] = (),
    resume_from: str | Path | None = None,
    best_by: tuple[str, str] = (MAP50_95, "max"),
    threshold_range: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; returns the best and last epoch's figures.

    ``datasets`` lets a caller (the search) pass data decoded once; ``resume_from`` is a
    ``last.pt`` to continue from, with the same result as an uninterrupted run. ``best_by``
    is the per-epoch stat and direction that pick ``best.pt`` (the search passes its metric, so
    its export's epoch and checkpoint agree); a non-finite value never improves.
    ``threshold_range`` bounds the F1-best score threshold each epoch's evaluation reports (a
    search's post-hoc range, ``tune.threshold``). Raises ``DivergedError`` when training
    diverges.
    """
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    if datasets is None:
        datasets = load_datasets(cfg)
    out = run_dir(cfg, datasets.name)
    handler = _attach_file_log(out)
    for tmp in remove_stale_temps(out):
        log.info(f"removed {tmp.relative_to(out)}, left by a process killed mid-write")
    try:
        trainer, start = _set_up(cfg, datasets, device, out, resume_from)
        return _train(
            trainer,
            datasets,
            callbacks,
            out,
            start,
            best_by=best_by,
            threshold_range=threshold_range,
        )
    finally:
        log.removeHandler(handler)
        handler.close()


@dataclass(frozen=True)
class _Start:
    """Where a run starts: its first epoch and, on a resume, best.pt's so far."""

    epoch: int = 0
    best: float = -math.inf  # best.pt's fitness: its best_by stat, signed so that higher wins
    best_epoch: int = 0
    best_map: float = 0.0  # best.pt's mAP50-95


def _set_up(
    cfg: TrainConfig,
    datasets: Datasets,
    device: torch.device,
    out: Path,
    resume_from: str | Path | None,
) -> tuple[Trainer, _Start]:
    """Resolve the precision and write ``config.yaml``, build the model, loss, optimizer and
    EMA, and load ``resume_from`` into them."""
    # The precision auto resolves to on this device is what config.yaml and the checkpoints
    # record: the run repeats with it, and results name it.
    amp, why = resolve_amp(cfg.amp, device)
    cfg = cfg.replace(amp=amp)
    cfg.to_yaml(out / "config.yaml")
    names = datasets.names
    model = model_layout(CattleYOLO(len(names), cfg).to(device), device, DTYPES[amp])
    loss_fn = DetectionLoss(cfg, len(names))
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema_decay > 0 else None
    trainer = Trainer(model, loss_fn, optimizer, scaler, ema, cfg, device)
    start = _resume(trainer, resume_from) if resume_from is not None else _Start()
    # The compiled module shares the model's parameters; checkpoints and the EMA use the model.
    trainer.step_model = cast(torch.nn.Module, torch.compile(model)) if cfg.compile else None
    log.info(
        f"training {cfg.epochs} epochs on {device} in {precision_name(amp)} ({why}) | "
        f"{len(datasets.train)} train, "
        f"{len(datasets.val)} val images | classes {names} | out {out}"
    )
    return trainer, start


def _resume(trainer: Trainer, resume_from: str | Path) -> _Start:
    """Load ``last.pt``'s weights, optimizer, scaler, EMA and RNG state into ``trainer``."""
    cfg, device, ema = trainer.cfg, trainer.device, trainer.ema
    ckpt = load_checkpoint(resume_from, map_location=device)
    _check_resume_config(ckpt["config"], cfg, Path(resume_from), device)
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])
    best = ckpt["best_fitness"]
    best_map = ckpt["metrics"].get("best_mAP50_95", best) if ckpt.get("metrics") else best
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
    log.info(f"resumed from {resume_from} at epoch {ckpt['epoch']}/{cfg.epochs}")
    return _Start(ckpt["epoch"], best, ckpt["best_epoch"], best_map)


def _check_train_stats(train_stats: dict[str, float], cfg: TrainConfig, epoch: int) -> None:
    """Raise ``DivergedError`` for a non-finite mean training loss or too many skipped steps."""
    steps = train_stats[TRAIN_BATCHES]
    if not math.isfinite(train_stats[TRAIN_LOSS]):
        raise DivergedError("mean training loss is not finite", epoch + 1)
    if train_stats[SKIPPED_STEPS] > cfg.max_skipped_fraction * steps:
        raise DivergedError(
            f"{train_stats[SKIPPED_STEPS]} of {steps} steps skipped for non-finite "
            "loss or gradients, or class scores collapsed to 0 "
            f"(limit {cfg.max_skipped_fraction:.0%})",
            epoch + 1,
        )


def _check_val_stats(val_stats: dict[str, float], batches: int, epoch: int) -> None:
    """Raise ``DivergedError`` when the model gave non-finite outputs or loss on validation."""
    nonfinite, val_loss = val_stats[VAL_NONFINITE_BATCHES], val_stats[VAL_LOSS]
    if nonfinite or not math.isfinite(val_loss):
        raise DivergedError(
            f"non-finite model outputs on validation ({nonfinite} "
            f"of {batches} batches; val loss {val_loss:.4g})",
            epoch + 1,
        )


def _train(
    trainer: Trainer,
    datasets: Datasets,
    callbacks: Sequence[Callback],
    out: Path,
    start: _Start,
    *,
    best_by: tuple[str, str],
    threshold_range: tuple[float, float],
) -> dict[str, Any]:
    """The epochs from ``start.epoch``: train, validate, stop on divergence, save ``last.pt``
    (and ``best.pt``), log, and hand each epoch's stats to the callbacks."""
    cfg, device, ema, model = trainer.cfg, trainer.device, trainer.ema, trainer.model
    best, best_epoch, best_map = start.best, start.best_epoch, start.best_map
    metric, mode = best_by
    train_set = datasets.train.with_augment(cfg)
    val_loader = make_loader(datasets.val, cfg, train=False)
    coverage = datasets.val_coverage()
    if coverage:
        log.warning(f"warning: {coverage}")
    stats = EpochStats()
    for epoch in range(start.epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader = make_loader(train_set, cfg, train=True, epoch=epoch)
        train_stats = train_one_epoch(trainer, loader, epoch)
        _check_train_stats(train_stats, cfg, epoch)
        eval_model = ema.module if ema is not None else model
        scored = evaluate_with_detections(
            eval_model,
            val_loader,
            trainer.loss_fn,
            cfg,
            device,
            epoch + 1,
            threshold_range=threshold_range,
        )
        val_stats = scored.stats
        _check_val_stats(val_stats, len(val_loader), epoch)
        # the epoch's stats: numbers (and the precision's name), no paths; AP50/<class> on top
        stats = cast(EpochStats, {EPOCH: epoch + 1, **train_stats, **val_stats, AMP: cfg.amp})
        stats[EPOCH_TIME] = time.perf_counter() - t0
        if device.type == "cuda":  # what packing several trials on one GPU has to fit
            stats[PEAK_CUDA_MB] = torch.cuda.max_memory_allocated(device) / 2**20
        # best: the best fitness so far, fitness = the best_by stat signed so that higher wins
        fitness = float(cast(dict[str, Any], stats)[metric]) * (1.0 if mode == "max" else -1.0)
        improved = math.isfinite(fitness) and fitness > best
        if improved:
            best, best_epoch, best_map = fitness, epoch + 1, stats[MAP50_95]
        # best.pt's epoch and its mAP50-95 (by mAP50-95 itself unless best_by says otherwise)
        stats[BEST_MAP50_95], stats[BEST_EPOCH] = best_map, best_epoch

        state = training_state(
            trainer,
            epoch=epoch + 1,
            best=best,
            best_epoch=best_epoch,
            names=list(datasets.names),
            stats=dict(stats),
        )
        last = out / "models" / "last.pt"
        save_checkpoint(state, last)
        if improved:  # inference weights only: last.pt is what resumes
            save_checkpoint(inference_checkpoint(state), out / "models" / "best.pt")
            # best.pt's val detections: a score threshold can be chosen from them after training
            save_detections(out / "metrics" / BEST_DETECTIONS, scored.detections, scored.targets)
        _append_metrics(out, stats)
        log.info(_summary_line(stats, cfg.epochs))
        for callback in callbacks:
            callback(stats)

    return {
        "val_coverage": coverage,
        "best_mAP50_95": best_map,
        "best_epoch": best_epoch,
        "epochs_run": cfg.epochs - start.epoch,
        "out": str(out),
        "last": stats,
    }
