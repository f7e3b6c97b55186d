"""The divergence rules on crafted loss sequences, and the Stopper's rewrite of the last result."""

import math
from typing import Any

import pytest

from cattle_yolo.stats import FIRST_STEP_LOSS, TRAIN_LOSS, VAL_LOSS
from tune.results import DIVERGED, DIVERGED_RULE, EPOCH, OBJECTIVE, WARMUP_EPOCHS
from tune.stoppers import DivergenceStopper, divergence_rule

NAN, INF = math.nan, math.inf


def _fired(rule: str | None) -> str:
    """The rule ``divergence_rule`` named (failing the test if none fired)."""
    assert rule is not None
    return rule


@pytest.mark.parametrize(
    ("losses", "rule"),
    [
        ([10.0, NAN], "non-finite"),
        ([NAN], "non-finite"),
        ([10.0, 9.0, INF], "non-finite"),
        ([10.0, 9.0, 9.5, 9.8, 10.2], "rising"),  # three rises in a row, +7% in all
        ([10.0, 4.0, 13.0], "spike"),  # 13 > 3 x its best 4
        ([10.0, 2.0, 1.0, 3.5], "spike"),
    ],
)
def test_rules_fire(losses: list[float], rule: str) -> None:
    assert _fired(divergence_rule(losses, patience=3, spike_ratio=3.0)).startswith(rule)


def test_non_finite_validation_loss_is_divergence() -> None:
    # lr=10 on the tiny synthetic set: training loss 1446 (finite), validation loss NaN
    assert _fired(divergence_rule([1445.8], 3, 3.0, val_loss=NAN)).startswith(
        "non-finite validation"
    )
    assert _fired(divergence_rule([10.0, 9.0], 3, 3.0, val_loss=INF)).startswith(
        "non-finite validation"
    )
    assert divergence_rule([10.0, 9.0], 3, 3.0, val_loss=1e10) is None


@pytest.mark.parametrize(
    "losses",
    [
        [],
        [10.0],
        [10.0, 8.0, 8.5, 7.0, 7.2, 6.0, 6.1, 5.0],  # noisy but falling
        [10.0, 9.0, 9.5, 9.8],  # two rises only
        [10.0, 4.0, 11.9],  # below 3 x its best
        [10.0, 9.0, 9.1, 9.2, 9.3],  # three rises, but +3% in all: a noisy plateau
        [10.18, 9.83, 10.19, 9.79, 9.84, 10.08],  # measured on a healthy tiny trial
        [12.0, 11.0, 10.0, 9.0],
    ],
)
def test_healthy_runs_go_on(losses: list[float]) -> None:
    assert divergence_rule(losses, patience=3, spike_ratio=3.0) is None


def test_stopper_marks_the_last_result_with_the_worst_objective() -> None:
    stopper = DivergenceStopper(patience=2, spike_ratio=3.0, worst=0.0, objective=OBJECTIVE)
    results = [{EPOCH: e, TRAIN_LOSS: x, OBJECTIVE: 0.3} for e, x in [(1, 10.0), (2, 9.0)]]
    assert not any(stopper("a", r) for r in results)
    last: dict[str, Any] = {EPOCH: 3, TRAIN_LOSS: NAN, OBJECTIVE: 0.31}
    assert stopper("a", last)
    assert last[OBJECTIVE] == 0.0
    assert last[DIVERGED] is True
    assert last[DIVERGED_RULE].startswith("non-finite")
    # another trial's history is its own
    assert not stopper("b", {EPOCH: 1, TRAIN_LOSS: 50.0, OBJECTIVE: 0.0})


def test_stopper_counts_a_retried_epoch_once() -> None:
    stopper = DivergenceStopper(patience=2, spike_ratio=10.0, worst=0.0, objective=OBJECTIVE)
    for epoch, loss in [(1, 5.0), (2, 6.0), (2, 4.0), (3, 4.5)]:  # epoch 2 redone after a retry
        assert not stopper("a", {EPOCH: epoch, TRAIN_LOSS: loss, OBJECTIVE: 0.1})


def test_stopper_ends_a_trial_that_reported_divergence_itself() -> None:
    stopper = DivergenceStopper(patience=3, spike_ratio=3.0, worst=0.0, objective=OBJECTIVE)
    result: dict[str, Any] = {
        EPOCH: 2,
        TRAIN_LOSS: NAN,
        OBJECTIVE: 0.0,
        DIVERGED: True,
        DIVERGED_RULE: "training loop: mean training loss is not finite",
    }
    assert stopper("a", result)
    assert result[DIVERGED_RULE].startswith("training loop")


@pytest.mark.parametrize(
    ("patience", "ratio", "rise", "message"),
    [(0, 3.0, 0.05, "patience"), (2, 1.0, 0.05, "spike_ratio"), (2, 3.0, -0.1, "min_rise")],
)
def test_stopper_checks_its_arguments(
    patience: int, ratio: float, rise: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DivergenceStopper(patience, ratio, 0.0, OBJECTIVE, rise)


def test_noise_on_a_healthy_trial_is_not_rising_even_with_patience_2() -> None:
    # the training losses of a healthy tiny trial that a strict "rose 2 epochs" rule had cut
    assert divergence_rule([10.18, 9.83, 10.19, 9.79, 9.84, 10.08], 2, 3.0) is None
    assert divergence_rule([10.18, 9.83, 10.19, 9.79, 9.84, 10.08], 2, 3.0, min_rise=0.0)


def test_a_blow_up_inside_the_first_epoch_is_caught_at_epoch_1() -> None:
    # measured: lr 7.6 took the loss from 11 at the first step to an epoch-1 mean of 5894,
    # then it "fell" (531, 261, 108, ...): without the first step as a reference, never caught
    assert _fired(divergence_rule([5894.0], 3, 3.0, start_loss=11.0)).startswith("spike")
    assert divergence_rule([5894.0, 531.0], 3, 3.0) is None
    assert divergence_rule([9.8], 3, 3.0, start_loss=11.0) is None  # a healthy first epoch
    stopper = DivergenceStopper(patience=3, spike_ratio=3.0, worst=0.0, objective=OBJECTIVE)
    healthy = {EPOCH: 1, TRAIN_LOSS: 9.8, FIRST_STEP_LOSS: 11.0, OBJECTIVE: 0.0}
    blown = {EPOCH: 1, TRAIN_LOSS: 133.4, FIRST_STEP_LOSS: 11.2, OBJECTIVE: 0.0}
    assert not stopper("a", healthy)
    assert stopper("b", blown)
    assert blown[DIVERGED] is True
    # the first step stays the reference on later epochs
    assert stopper("a", {EPOCH: 2, TRAIN_LOSS: 40.0, OBJECTIVE: 0.0})


def test_rising_rule_waits_for_the_end_of_warmup() -> None:
    # A healthy run on another cattle dataset: the loss rose while the LR warmed up, then fell.
    warmup_rise = [5.5, 5.96, 6.66, 6.84, 7.0]
    # the old rule stopped it
    assert _fired(divergence_rule(warmup_rise, 3, 3.0)).startswith("rising")
    assert divergence_rule(warmup_rise, 3, 3.0, warmup_epochs=3.0) is None
    # After warmup the same rise is divergence, and a blow-up is still caught at once.
    late_rise = [8.0, 6.0, 5.0, 4.0, 4.2, 4.4, 4.6]
    assert _fired(divergence_rule(late_rise, 3, 3.0, warmup_epochs=3.0)).startswith("rising")
    assert _fired(divergence_rule([10.0, 40.0], 3, 3.0, warmup_epochs=3.0)).startswith("spike")
    assert _fired(divergence_rule([10.0, NAN], 3, 3.0, warmup_epochs=3.0)).startswith("non-finite")


def test_stopper_reads_the_warmup_from_the_result() -> None:
    stopper = DivergenceStopper(patience=3, spike_ratio=3.0, worst=0.0, objective=OBJECTIVE)
    losses = [5.5, 5.96, 6.66, 6.84, 7.0]
    stops = [
        stopper("t", {EPOCH: e, TRAIN_LOSS: x, WARMUP_EPOCHS: 3.0}) for e, x in enumerate(losses, 1)
    ]
    assert not any(stops)
    stopper = DivergenceStopper(patience=3, spike_ratio=3.0, worst=0.0, objective=OBJECTIVE)
    stops = [stopper("u", {EPOCH: e, TRAIN_LOSS: x}) for e, x in enumerate(losses, 1)]
    assert stops[-1]


def test_a_collapsed_model_is_stopped_at_once() -> None:
    # lr 0.3 on the small synthetic set: training loss 10.3, 7.5, 7.0 (falling), val loss
    # exactly 0 and mAP 0 every epoch: the class scores underflowed, nothing is left to learn.
    assert _fired(divergence_rule([10.29], 3, 3.0, val_loss=0.0)).startswith("collapsed")
    assert divergence_rule([10.29], 3, 3.0, val_loss=1e-9) is None
    assert divergence_rule([10.29], 3, 3.0) is None  # unknown val loss: no verdict
    stopper = DivergenceStopper(patience=3, spike_ratio=3.0, worst=0.0, objective=OBJECTIVE)
    result: dict[str, Any] = {EPOCH: 1, TRAIN_LOSS: 10.29, VAL_LOSS: 0.0, OBJECTIVE: 0.0}
    assert stopper("t", result)
    assert result[DIVERGED_RULE].startswith("collapsed")
