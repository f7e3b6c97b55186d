"""The contract between a trial and everything that reads its results: the result keys and the
trial statuses, named once.

A trial reports, every epoch, the training loop's numeric epoch stats (``EPOCH``,
``TRAIN_LOSS``, ``VAL_LOSS``, the metrics such as ``mAP50_95``: see ``cattle_yolo.train``) plus
the search's own keys below. The stoppers, the Optuna study, the disk keeper, the report, the
confirmation and the benchmarks read them by these names.
"""

from __future__ import annotations

from enum import StrEnum

# --- the training loop's epoch stats the search reads ---
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"

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
