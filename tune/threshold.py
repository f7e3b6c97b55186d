"""The score threshold chosen after training: the one home of that rule.

Under a metric that a score threshold cannot change (mAP, the best F1 over thresholds, the
losses) a search does not sample ``score_threshold``: each trial takes the F1-best threshold of
its best.pt on val, within a range (``post_hoc_range``: the space's ``score_threshold`` range,
(0, 1) when it names none, ``None`` when the space samples or fixes it and the trial keeps its
own). The training loop is told the range up front (``train(threshold_range=...)``), so the
F1 sweep of its evaluation already stays inside it; ``chosen`` only reads the epoch's numbers.
The export applies the choice (``apply``) and the summary says it (``describe``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cattle_yolo import stats as S
from tune.results import THRESHOLD, THRESHOLD_F1, THRESHOLD_P, THRESHOLD_R

if TYPE_CHECKING:
    from cattle_yolo.config import TrainConfig
    from tune.space import Distribution

FULL_RANGE = (0.0, 1.0)


def post_hoc_range(
    searched: bool, fixed: bool, dist: Distribution | None
) -> tuple[float, float] | None:
    """The range the threshold is chosen in: ``None`` when ``score_threshold`` is ``searched``
    (a knob) or ``fixed`` by the space; else ``dist``'s range, or (0, 1) without one."""
    if searched or fixed:
        return None
    if dist is None:
        return FULL_RANGE
    if dist.kind == "choice":
        return (float(min(dist.choices)), float(max(dist.choices)))
    return (float(dist.low), float(dist.high))


def chosen(
    stats: dict[str, Any], threshold_range: tuple[float, float] | None, own: float
) -> dict[str, float]:
    """best.pt's threshold with its P, R and F1, from the stats of best.pt's epoch (whose F1
    sweep ran in ``threshold_range``). No range: the config's ``own`` threshold, with the P, R
    and F1 measured at it. No threshold with a true positive: nothing to choose, ``own``."""
    if threshold_range is None:
        return {
            THRESHOLD: own,
            THRESHOLD_P: stats.get(S.PRECISION, 0.0),
            THRESHOLD_R: stats.get(S.RECALL, 0.0),
            THRESHOLD_F1: stats.get(S.F1_AT_THRESHOLD, 0.0),
        }
    return {
        THRESHOLD: stats[S.BEST_F1_THRESHOLD] if stats[S.BEST_F1] > 0 else own,
        THRESHOLD_P: stats[S.BEST_F1_PRECISION],
        THRESHOLD_R: stats[S.BEST_F1_RECALL],
        THRESHOLD_F1: stats[S.BEST_F1],
    }


def apply(cfg: TrainConfig, threshold: dict[str, float]) -> TrainConfig:
    """``cfg`` with the trial's chosen threshold (when it chose one)."""
    if THRESHOLD not in threshold:
        return cfg
    return cfg.with_overrides({"score_threshold": threshold[THRESHOLD]}, "chosen threshold")


def describe(threshold: dict[str, float], fmt: Any = "{:.4g}".format) -> str | None:
    """One summary line about the chosen threshold, or None when there is none."""
    if not threshold:
        return None
    value = fmt(threshold.get(THRESHOLD))
    if threshold.get(THRESHOLD_F1, 0) > 0:
        p, r, f1 = (fmt(threshold.get(k)) for k in (THRESHOLD_P, THRESHOLD_R, THRESHOLD_F1))
        return (
            f"  score threshold {value} (P {p}, R {r}, F1 {f1} on val), chosen after training "
            "on best.pt's val detections"
        )
    return (
        f"  score threshold {value}: the config's own, as no threshold gives a true positive on val"
    )
