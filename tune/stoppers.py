"""Divergence: the rules that end a trial whose training loss has blown up, and the Tune Stopper.

ASHA cannot do this: its cutoff comparison is false for NaN, so a NaN trial runs to the end.
The ``DivergenceStopper`` watches each trial's per-epoch training loss and stops the trial when

- the loss is not finite (NaN or inf), or the validation loss is not finite (the model's
  outputs overflow: an absurd learning rate can keep the training loss finite but huge), or
  the validation loss is exactly 0 (the class scores collapsed: nothing is left to learn),
- the loss has risen ``patience`` epochs in a row, by ``min_rise`` (a fraction) or more in all
  (a plateau's noise rises a little for a few epochs now and then: that is not divergence),
  counting only epochs from the end of the learning-rate warmup on (the loss of a healthy run
  may rise while the learning rate climbs: 5.96, 6.66, 6.84, then down to 4.1), or
- the loss is more than ``spike_ratio`` times the trial's own best (lowest) earlier loss, where
  the loss of the trial's very first step counts as earlier: a learning rate that blows the
  model up within the first epoch (mean loss 5894 from a first step of 11, then "falling")
  is caught at epoch 1 instead of never.

When a rule fires, the stopper rewrites that last result in place so that the searcher and the
summary see a finite, worst-possible objective with ``diverged: True`` and the rule that fired:
Ray hands the same dict to the searcher's ``on_trial_complete`` (Optuna rejects NaN and would
leave the trial RUNNING otherwise) and to the result loggers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ray.tune import Stopper

from cattle_yolo.stats import FIRST_STEP_LOSS, TRAIN_LOSS, VAL_LOSS
from tune.results import DIVERGED, DIVERGED_RULE, EPOCH, WARMUP_EPOCHS


def divergence_rule(
    losses: Sequence[float],
    patience: int,
    spike_ratio: float,
    val_loss: float | None = None,
    min_rise: float = 0.05,
    start_loss: float | None = None,
    warmup_epochs: float = 0.0,
) -> str | None:
    """Which rule the last epoch of ``losses`` (training loss per epoch from epoch 1, oldest
    first) breaks; ``val_loss`` is that epoch's validation loss (None: unknown), ``start_loss``
    the loss of the
    trial's first training step (``None`` when unknown). The rising rule's window starts no
    earlier than the last warmup epoch (``ceil(warmup_epochs)``).

    Returns a short description of the rule, or ``None`` while the run looks healthy.
    """
    if not losses:
        return None
    last = losses[-1]
    if not math.isfinite(last):
        return f"non-finite training loss ({last})"
    if val_loss is not None and not math.isfinite(val_loss):
        return f"non-finite validation loss ({val_loss}) with training loss {last:.4g}"
    if val_loss == 0.0:
        # Every class score underflowed to 0 on every val batch: no object gets a target, the
        # loss is exactly 0 and nothing is left to learn (lr 0.3: mAP 0 while the training
        # loss still falls). A model that detects anything has a positive loss.
        return f"collapsed: validation loss is exactly 0 with training loss {last:.4g}"
    earlier = [x for x in [start_loss, *losses[:-1]] if x is not None and math.isfinite(x)]
    if earlier:
        best = min(earlier)
        if best > 0 and last > spike_ratio * best:
            return f"spike: training loss {last:.4g} > {spike_ratio:g} x its best {best:.4g}"
    first = len(losses) - patience  # epoch of the window's first loss (epochs count from 1)
    if len(losses) > patience and first >= math.ceil(warmup_epochs):
        window = losses[-patience - 1 :]
        rising = all(b > a for a, b in zip(window, window[1:], strict=False))
        if rising and last > (1 + min_rise) * window[0]:
            return (
                f"rising: training loss rose {patience} epochs in a row, "
                f"{window[0]:.4g} -> {last:.4g}"
            )
    return None


class DivergenceStopper(Stopper):
    """Stops diverging trials and marks their last result (see the module docstring).

    Args:
        patience: epochs of strictly rising training loss that count as divergence (>= 1).
        spike_ratio: a loss above ``spike_ratio`` times the trial's best is divergence (> 1).
        min_rise: the least total rise, as a fraction, that the rising rule counts (>= 0).
        worst: the objective written into a diverged trial's last result.
        objective: the result key the searcher and scheduler optimise.
    """

    def __init__(
        self,
        patience: int,
        spike_ratio: float,
        worst: float,
        objective: str,
        min_rise: float = 0.05,
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if not spike_ratio > 1:
            raise ValueError(f"spike_ratio must be > 1, got {spike_ratio}")
        if min_rise < 0:
            raise ValueError(f"min_rise must be >= 0, got {min_rise}")
        self.patience, self.spike_ratio, self.min_rise = patience, spike_ratio, min_rise
        self.worst, self.objective = worst, objective
        self._losses: dict[str, dict[int, float]] = {}  # trial id -> epoch -> training loss
        self._start: dict[str, float] = {}  # trial id -> loss of its first training step

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get(DIVERGED):  # the trial itself reported a DivergedError
            return True
        if TRAIN_LOSS not in result:
            return False
        history = self._losses.setdefault(trial_id, {})
        epoch = int(result.get(EPOCH, len(history) + 1))
        history[epoch] = float(result[TRAIN_LOSS])  # a retried epoch replaces its earlier value
        if epoch == 1 and FIRST_STEP_LOSS in result:
            self._start[trial_id] = float(result[FIRST_STEP_LOSS])
        losses = [history[e] for e in sorted(history) if e <= epoch]
        val_loss = float(result[VAL_LOSS]) if VAL_LOSS in result else None
        rule = divergence_rule(
            losses,
            self.patience,
            self.spike_ratio,
            val_loss,
            self.min_rise,
            self._start.get(trial_id),
            float(result.get(WARMUP_EPOCHS, 0.0)),
        )
        if rule is None:
            return False
        result.update({self.objective: self.worst, DIVERGED: True, DIVERGED_RULE: rule})
        return True

    def stop_all(self) -> bool:
        return False
