"""The fix audit: which of the changes between two configs helped, each with a 95% interval.

``run_search.py --audit BEFORE.yaml AFTER.yaml`` reads both configs as the trainer does
(defaults, the file, then ``--set``/``--data``/``--epochs`` on both), lists the keys that
differ, makes each one (or each ``--group`` of coupled keys) a two-level factor and trains a
designed experiment (``tune.design``) over them: every design row on the same seeds, as one
Ray Tune grid on the project's trainable (parallel, resumable, divergence rules, disk keeper).

A diverged run is a data point: the worst objective (and F1 0), marked. ``score_threshold``
cannot move an mAP or a loss by construction (it is applied after training), so it is not a
column of the design: every run is scored at both its values on best.pt's val detections and
its effect is reported on F1 at the threshold only (paired over every run).

The report is ``tune.audit_report``'s: each change's main effect with a 95% interval and a
verdict, the interactions the design resolves, BEFORE, AFTER and the best row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cattle_yolo import stats as S
from cattle_yolo.config import FIELD_NAMES, ConfigError, TrainConfig, check_key
from cattle_yolo.files import atomic_write_text
from tune import design as doe
from tune.results import (
    DIVERGED,
    EPOCH,
    OBJECTIVE,
    OBJECTIVE_EPOCH,
    THRESHOLD_F1,
    VAL_LOSS,
    Status,
)
from tune.space import AUDIT_ROW, THRESHOLD_METRICS, SearchSettings

if TYPE_CHECKING:
    from tune.search import Experiment

PLAN_FILE = "audit_plan.yaml"
# Keys of where and how a run executes, not of what it trains: a difference is noted, not audited.
RUN_KEYS = ("out", "seed", "device", "threads", "workers", "compile", "amp")
# Keys every row must share (the dataset is decoded once; the grid has one length).
SHARED_KEYS = {
    "data": "--data",
    "imgsz": "--set imgsz=N",
    "synthetic_images": "--set synthetic_images=N",
    "strict": "--set strict=...",
    "epochs": "--epochs N",
}
POST_HOC_KEY = "score_threshold"  # applied after training: changes no weight, no mAP, no loss
# Keys that define the loss itself: a change in them changes what "val loss" measures.
LOSS_KEYS = ("box_loss", "box_loss_weight", "cls_loss_weight", "dfl_loss_weight", "focal_gamma")


@dataclass(frozen=True)
class Factor:
    """One audited change: ``keys`` moved together from ``before`` to ``after``."""

    keys: tuple[str, ...]
    before: tuple[Any, ...]
    after: tuple[Any, ...]
    post_hoc: bool = False  # score_threshold: scored on every run, not a design column

    @property
    def name(self) -> str:
        return "+".join(self.keys)

    def values(self, level: int) -> dict[str, Any]:
        """The keys' values at level -1 (BEFORE) or +1 (AFTER)."""
        return dict(zip(self.keys, self.after if level > 0 else self.before, strict=True))

    def change(self) -> str:
        return ", ".join(
            f"{k} {_show(b)} -> {_show(a)}"
            for k, b, a in zip(self.keys, self.before, self.after, strict=True)
        )


@dataclass
class AuditPlan:
    """Everything decided before Ray starts."""

    before: str  # the BEFORE file
    after: str  # the AFTER file
    base: TrainConfig  # BEFORE as the rows start from (epochs, data and --set applied)
    factors: list[Factor]  # the design's columns first, then the post-hoc factor (if any)
    design: str  # the design's name
    x: np.ndarray  # (rows, training factors) of -1/+1
    seeds: list[int]
    settings: SearchSettings
    notes: list[str] = field(default_factory=list)

    @property
    def training(self) -> list[Factor]:
        return [f for f in self.factors if not f.post_hoc]

    @property
    def post_hoc(self) -> Factor | None:
        return next((f for f in self.factors if f.post_hoc), None)

    def row_values(self, row: int) -> dict[str, Any]:
        """The config keys a design row sets."""
        out: dict[str, Any] = {}
        for factor, level in zip(self.training, self.x[row], strict=True):
            out.update(factor.values(int(level)))
        return out

    def row_label(self, row: int) -> str:
        levels = self.x[row]
        if len(levels) and (levels < 0).all():
            return "BEFORE"
        if len(levels) and (levels > 0).all():
            return "AFTER"
        if not len(levels):
            return "BEFORE = AFTER (training)"
        return f"row {row}"

    def runs(self) -> list[dict[str, Any]]:
        """Every run's Tune config: the row's keys, ``seed`` and ``audit_row``."""
        return [
            {**self.row_values(r), "seed": s, AUDIT_ROW: r}
            for r in range(len(self.x))
            for s in self.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        """What a resumed audit must agree with (saved as ``audit_plan.yaml``)."""
        return {
            "before": self.before,
            "after": self.after,
            "factors": [
                {"keys": list(f.keys), "before": list(f.before), "after": list(f.after)}
                | ({"post_hoc": True} if f.post_hoc else {})
                for f in self.factors
            ],
            "design": self.design,
            "rows": self.x.tolist(),
            "seeds": self.seeds,
            "settings": asdict(self.settings),
            "base": self.base.to_dict(),
        }


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- planning (no Ray) ---------------------------------------------------------------------


def load_pair(
    before: str, after: str, overrides: dict[str, Any]
) -> tuple[TrainConfig, TrainConfig]:
    """Both configs as the trainer reads them, ``overrides`` applied to each; errors name the
    file and the key (``ConfigError``)."""
    return TrainConfig.load(before, overrides), TrainConfig.load(after, overrides)


def changed_keys(b: TrainConfig, a: TrainConfig) -> tuple[list[str], list[str]]:
    """(the keys to audit, notes on run keys that differ). A shared key that differs is a
    ``ConfigError`` naming the flag that sets it for both."""
    keys, notes = [], []
    for key in FIELD_NAMES:
        old, new = getattr(b, key), getattr(a, key)
        if old == new:
            continue
        if key in RUN_KEYS:
            notes.append(
                f"{key} differs ({_show(old)} in BEFORE, {_show(new)} in AFTER) but says how a "
                "run executes, not what it trains: every row uses BEFORE's"
            )
        elif key in SHARED_KEYS:
            raise ConfigError(
                f"--audit: {key} differs ({_show(old)} in BEFORE, {_show(new)} in AFTER); every "
                f"row of an audit shares it: set it for both with {SHARED_KEYS[key]}"
            )
        else:
            keys.append(key)
    return keys, notes


def make_factors(
    keys: list[str], b: TrainConfig, a: TrainConfig, groups: list[str], metric: str
) -> list[Factor]:
    """One factor per changed key, or per ``--group k1,k2,...``; the post-hoc threshold last."""
    grouped: list[tuple[str, ...]] = []
    taken: set[str] = set()
    for spec in groups:
        members = tuple(k.strip() for k in spec.split(",") if k.strip())
        if len(members) < 2:
            raise ConfigError(f"--group {spec!r}: name two or more keys, comma-separated")
        for key in members:
            check_key(key, f"--group {spec}")
            if key not in keys:
                raise ConfigError(
                    f"--group {spec}: {key!r} is the same in BEFORE and AFTER; group only "
                    f"changed keys ({', '.join(keys)})"
                )
            if key in taken:
                raise ConfigError(f"--group {spec}: {key!r} is already in another group")
            taken.add(key)
        grouped.append(members)
    singles = [(k,) for k in keys if k not in taken]
    factors = []
    for members in sorted([*grouped, *singles], key=lambda m: keys.index(m[0])):
        post_hoc = members == (POST_HOC_KEY,) and metric not in THRESHOLD_METRICS
        factors.append(
            Factor(
                members,
                tuple(getattr(b, k) for k in members),
                tuple(getattr(a, k) for k in members),
                post_hoc,
            )
        )
    return [*[f for f in factors if not f.post_hoc], *[f for f in factors if f.post_hoc]]


def plan_audit(
    before: str,
    after: str,
    *,
    overrides: dict[str, Any],
    groups: list[str],
    design: str,
    seeds: int,
    settings: dict[str, Any],
) -> AuditPlan:
    """Read, diff and check everything; build the design and check every row's config.
    ``settings``: changes to the default ``SearchSettings`` (metric, objective, divergence
    rules, seed); the epochs are the configs' own (``overrides`` may set them)."""
    if seeds < 2:
        raise ConfigError(
            f"--audit-seeds {seeds}: an interval needs replicates; give 2 or more seeds"
        )
    b, a = load_pair(before, after, overrides)
    if b.data and "://" not in b.data:  # runs train in their own folders: an absolute path
        data = Path(b.data).expanduser().resolve()
        if not data.exists():
            raise ConfigError(f"--audit: data {b.data}: no such file or folder")
        b, a = b.replace(data=str(data)), a.replace(data=str(data))
    keys, notes = changed_keys(b, a)
    if not keys:
        raise ConfigError(
            f"--audit: {before} and {after} train the same config (no key differs"
            + (" but run keys" if notes else "")
            + "): nothing to audit"
        )
    checked = SearchSettings().replace(
        {**settings, "epochs": b.epochs, "grace_period": 1}, "command line"
    )
    factors = make_factors(keys, b, a, groups, checked.metric)
    training = [f for f in factors if not f.post_hoc]
    if training:
        try:
            name, x = doe.build(design, len(training))
        except doe.DesignError as e:
            raise ConfigError(f"--design {design}: {e}") from None
    else:
        name, x = "one row (only the post-hoc score_threshold changed)", np.zeros((1, 0), np.int8)
    base = b.replace(seed=checked.seed, out=None)
    seed_list = [checked.seed + i for i in range(seeds)]
    plan = AuditPlan(before, after, base, factors, name, x, seed_list, checked)
    plan.notes = notes
    for r in range(len(x)):
        try:
            base.with_overrides(plan.row_values(r), f"row {r}")
        except ConfigError as e:
            raise ConfigError(
                f"--audit: design row {r} ({levels(plan, r)}) is not a valid config: {e}; "
                "--group the keys that must change together"
            ) from None
    return plan


def levels(plan: AuditPlan, row: int) -> str:
    return ", ".join(
        f"{f.name} {'AFTER' if level > 0 else 'BEFORE'}"
        for f, level in zip(plan.training, plan.x[row], strict=True)
    )


def describe(plan: AuditPlan) -> list[str]:
    """The lines said before the runs start: the changes and the design."""
    lines = [f"audit: {plan.before} -> {plan.after}: {len(plan.factors)} change(s)"]
    for i, f in enumerate(plan.factors):
        tag = " (applied after training: scored on F1 only)" if f.post_hoc else ""
        lines.append(f"  {chr(65 + i)}  {f.change()}{tag}")
    lines.append(
        f"design: {plan.design}, {len(plan.x)} rows x {len(plan.seeds)} seeds "
        f"({', '.join(map(str, plan.seeds))}) = {len(plan.x) * len(plan.seeds)} runs of "
        f"{plan.settings.epochs} epochs"
    )
    return lines + [f"note: {n}" for n in plan.notes]


def check_resume(plan: AuditPlan, folder: Path) -> None:
    """A resumed audit keeps its plan: a command that changes it is refused."""
    import yaml

    saved_file = folder / PLAN_FILE
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text())
    fresh = yaml.safe_load(yaml.safe_dump(plan.to_dict(), sort_keys=False))
    changed = [k for k in fresh if saved.get(k) != fresh[k]]
    if changed:
        raise ConfigError(
            f"--resume of {folder}: this command changes the audit's {', '.join(changed)} "
            f"(saved in {saved_file}); an audit keeps its plan: start a new --name"
        )


def save_plan(plan: AuditPlan, folder: Path) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / PLAN_FILE, yaml.safe_dump(plan.to_dict(), sort_keys=False))


# --- the runs ------------------------------------------------------------------------------


def build_tuner(trainable: Any, plan: AuditPlan, experiment: Experiment, concurrent: int) -> Any:
    """The grid of design rows x seeds as one Tune experiment."""
    from ray import tune

    from tune.search import grid_tuner, make_run_config

    reporter = tune.CLIReporter(
        metric=OBJECTIVE,
        mode=plan.settings.mode,
        parameter_columns=[AUDIT_ROW, "seed"],
        metric_columns={EPOCH: "epoch", OBJECTIVE: plan.settings.metric},
        max_report_frequency=30,
    )
    run_config = make_run_config(experiment, plan.settings, reporter)
    return grid_tuner(trainable, plan.runs(), run_config, concurrent)


@dataclass
class Run:
    """One (row, seed) run's numbers; a diverged run holds the worst values."""

    row: int
    seed: int
    status: str
    detail: str
    path: str
    epochs: int
    objective: float  # the settings' objective (diverged: worst)
    objective_epoch: int
    mAP50: float  # at the objective's epoch (diverged: 0)
    val_loss: float  # at the last epoch (diverged: NaN)
    f1: dict[str, float] = field(default_factory=dict)  # F1 by threshold level: "own" or -1/+1


def collect(results: Any, plan: AuditPlan, names: list[str]) -> list[Run]:
    """Every run of the grid, in (row, seed) order."""
    from tune.report import result_uri, trial_status

    worst = plan.settings.worst
    runs = []
    for result in results:
        config, metrics = result.config or {}, result.metrics or {}
        status, detail = trial_status(metrics, result.error, plan.settings.epochs)
        df = result.metrics_dataframe
        epochs: dict[int, dict[str, Any]] = {}
        if df is not None and EPOCH in df:
            for rec in df.to_dict("records"):
                if isinstance(rec.get(EPOCH), int | float) and math.isfinite(rec[EPOCH]):
                    epochs[int(rec[EPOCH])] = rec  # a retried epoch: the later one wins
        diverged = bool(metrics.get(DIVERGED))
        at = int(metrics.get(OBJECTIVE_EPOCH) or 0)
        last = epochs[max(epochs)] if epochs else {}
        run = Run(
            row=int(config.get(AUDIT_ROW, -1)),
            seed=int(config.get("seed", -1)),
            status=status,
            detail=detail,
            path=result_uri(result),
            epochs=max(epochs, default=0),
            objective=float(metrics.get(OBJECTIVE, worst)) if not diverged else worst,
            objective_epoch=at,
            mAP50=0.0 if diverged else float(epochs.get(at, {}).get(S.MAP50, math.nan)),
            val_loss=math.nan if diverged else float(last.get(VAL_LOSS, math.nan)),
        )
        if diverged:
            run.f1 = {"own": 0.0, "-1": 0.0, "1": 0.0}
        elif plan.post_hoc is not None and status == Status.COMPLETED:
            run.f1 = f1_at_thresholds(run.path, plan.post_hoc, names, plan.base.max_det)
        else:
            run.f1 = {"own": float(metrics.get(THRESHOLD_F1, math.nan))}
        runs.append(run)
    return sorted(runs, key=lambda r: (r.row, r.seed))


def f1_at_thresholds(
    trial: str, factor: Factor, names: list[str], max_det: int
) -> dict[str, float]:
    """F1 of best.pt's saved val detections at BEFORE's and AFTER's score threshold."""
    import tempfile

    from cattle_yolo.evaluate import coco_metrics, load_detections
    from cattle_yolo.train import BEST_DETECTIONS
    from tune import storage

    folder = f"{trial.rstrip('/')}/run/metrics"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(folder) / BEST_DETECTIONS
        if storage.is_uri(trial):
            storage.download(folder, Path(tmp), [BEST_DETECTIONS])
            path = Path(tmp) / BEST_DETECTIONS
        if not path.is_file():  # no epoch scored: nothing detected
            return {"-1": 0.0, "1": 0.0}
        dets, targets = load_detections(path)
        out = {}
        for level in (-1, 1):
            threshold = float(factor.values(level)[POST_HOC_KEY])
            scored = coco_metrics(dets, targets, names, threshold, max_dets=max_det)
            out[str(level)] = float(scored[S.F1_AT_THRESHOLD])
        return out
