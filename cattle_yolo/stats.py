"""The per-epoch stats the training loop reports: every key named once.

``train.train`` hands each callback an ``EpochStats`` after every epoch: numbers only (and the
precision's name), no paths; a caller that needs the run's files knows its run folder (the
``out`` it gave the config). The search (``tune/``) and the benchmarks read the stats by the
names below. ``AP50/<class name>`` keys (per class) come on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypedDict

EPOCH: Final = "epoch"  # epochs trained, 1-based

# train_one_epoch (cattle_yolo/engine.py)
TRAIN_LOSS: Final = "train_loss"  # mean total loss over the epoch's finite batches
TRAIN_BOX: Final = "train_box"  # its terms
TRAIN_CLS: Final = "train_cls"
TRAIN_DFL: Final = "train_dfl"
FIRST_STEP_LOSS: Final = "first_step_loss"  # the first finite loss of a batch with objects
LR: Final = "lr"  # the learning rate at the epoch's end
SKIPPED_STEPS: Final = "skipped_steps"  # micro-batches and steps skipped for non-finite values
TRAIN_BATCHES: Final = "train_batches"
TRAIN_TIME: Final = "train_time"  # seconds in train_one_epoch
IMAGES_PER_SEC: Final = "images_per_sec"

# evaluate (cattle_yolo/evaluate.py): the val loss, then COCO metrics of the EMA weights
VAL_LOSS: Final = "val_loss"
VAL_BOX: Final = "val_box"
VAL_CLS: Final = "val_cls"
VAL_DFL: Final = "val_dfl"
VAL_NONFINITE_BATCHES: Final = "val_nonfinite_batches"  # batches with NaN/inf boxes or scores
MAP50_95: Final = "mAP50_95"
MAP50: Final = "mAP50"
MAP75: Final = "mAP75"
# at the config's score_threshold
PRECISION: Final = "precision"
RECALL: Final = "recall"
F1_AT_THRESHOLD: Final = "f1_at_threshold"
# at the F1-best score threshold of the epoch (within the range the run was told)
BEST_F1: Final = "best_f1"
BEST_F1_THRESHOLD: Final = "best_f1_threshold"
BEST_F1_PRECISION: Final = "best_f1_precision"
BEST_F1_RECALL: Final = "best_f1_recall"

# the training loop (cattle_yolo/train.py)
EPOCH_TIME: Final = "epoch_time"  # seconds for the epoch, evaluation included
PEAK_CUDA_MB: Final = "peak_cuda_mb"  # on a GPU: peak memory allocated so far
BEST_MAP50_95: Final = "best_mAP50_95"  # mAP50-95 of best.pt's epoch
BEST_EPOCH: Final = "best_epoch"  # best.pt's epoch (best by the run's best_by stat)
AMP: Final = "amp"  # the precision trained in: bf16, fp16 or off (fp32)


class EpochStats(TypedDict, total=False):
    """One epoch's stats (see the module's names); every value a number but ``amp``."""

    epoch: int
    train_loss: float
    train_box: float
    train_cls: float
    train_dfl: float
    first_step_loss: float
    lr: float
    skipped_steps: int
    train_batches: int
    train_time: float
    images_per_sec: float
    val_loss: float
    val_box: float
    val_cls: float
    val_dfl: float
    val_nonfinite_batches: float
    mAP50_95: float
    mAP50: float
    mAP75: float
    precision: float
    recall: float
    f1_at_threshold: float
    best_f1: float
    best_f1_threshold: float
    best_f1_precision: float
    best_f1_recall: float
    epoch_time: float
    peak_cuda_mb: float
    best_mAP50_95: float
    best_epoch: int
    amp: str


# Names of earlier versions (results, checkpoints, space files and curve tables written before
# the F1 keys were renamed: "f1" and "F1" differed only by case).
LEGACY: dict[str, str] = {
    "f1": F1_AT_THRESHOLD,
    "F1": BEST_F1,
    "F1_threshold": BEST_F1_THRESHOLD,
    "F1_precision": BEST_F1_PRECISION,
    "F1_recall": BEST_F1_RECALL,
}


def current_name(key: str) -> str:
    """A stat's name today (an earlier version's name is translated)."""
    return LEGACY.get(key, key)


def current(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Stats read back from a file of any version, under today's names."""
    return {current_name(k): v for k, v in stats.items()}
