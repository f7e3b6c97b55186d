"""The contract between a trial and everything that reads its results: the result keys, the
trial statuses and ``TrialRow`` (a trial as the summary reads it), named once.

A trial reports, every epoch, the training loop's numeric epoch stats (``EPOCH``,
``TRAIN_LOSS``, ``VAL_LOSS``, the metrics such as ``mAP50_95``: see ``cattle_yolo.stats``) plus
the search's own keys below. The stoppers, the Optuna study, the disk keeper, the report, the
confirmation and the benchmarks read them by these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# the training loop's epoch stats the search reads, declared in cattle_yolo.stats
from cattle_yolo.stats import EPOCH, TRAIN_LOSS, VAL_LOSS

__all__ = ["EPOCH", "TRAIN_LOSS", "VAL_LOSS"]  # and the names below

# --- the search's own keys, added by tune.trainable.EpochReporter ---
OBJECTIVE = "objective"  # what Optuna optimises and the export ranks by (always finite)
RUNG_SCORE = "rung_score"  # what ASHA compares: the objective with ties broken by val loss
OBJECTIVE_EPOCH = "objective_epoch"  # the epoch the objective is read at
DIVERGED = "diverged"  # True in the last result of a trial the divergence rules stopped
DIVERGED_RULE = "diverged_rule"  # which rule, with its numbers
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # the epoch a resumed or retried trial continued from
WARMUP_EPOCHS = "warmup_epochs"  # the trial's warmup, for the rising-loss rule
THREADS = "threads"  # torch CPU threads the trial trained with
AMP = "amp"  # the precision the trial trained in, as auto resolved it: bf16, fp16 or off (fp32)
THRESHOLD = "threshold"  # best.pt's score threshold, chosen after training
THRESHOLD_P, THRESHOLD_R, THRESHOLD_F1 = "threshold_P", "threshold_R", "threshold_F1"
THRESHOLD_KEYS = (THRESHOLD, THRESHOLD_P, THRESHOLD_R, THRESHOLD_F1)
DONE = "done"  # Tune's own: the trial has ended


class Status(StrEnum):
    """How a trial ended, as the summary, ``results.csv`` and the confirmation name it."""

    COMPLETED = "completed"
    STOPPED = "stopped by ASHA"
    DIVERGED = "diverged"
    ERRORED = "errored"
    UNFINISHED = "unfinished"


ENDED = (Status.COMPLETED, Status.STOPPED, Status.DIVERGED)  # ended for good: never resumed


@dataclass
class TrialRow:
    """One trial as the summary, results.csv, the plots, the disk keeper and the confirmation
    read it (``tune.report.trial_rows`` builds them from Tune's results)."""

    name: str
    params: dict[str, Any]  # the knob values the trial trained with
    objective: float | None  # the trial's objective (its best epoch's metric, or a mean)
    best_epoch: int
    epochs_run: int
    status: str
    detail: str  # the divergence rule, the error, or where it stopped
    path: str  # the trial's folder
    threads: int = 0  # torch CPU threads the trial trained with (exact CPU repeats need the same)
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch epoch/loss/metric
    # best.pt's score threshold chosen after training, with its P, R and F1 (threshold_P ...)
    threshold: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the trial's Tune config as sampled
    checkpoint_epoch: int = 0  # the epoch best.pt holds: the best by the search metric
    amp: str = ""  # the precision it trained in (bf16, fp16, off = fp32); "" if never reported
