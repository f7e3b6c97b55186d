"""Search spaces: a YAML file naming the TrainConfig knobs to search, checked before Ray starts.

A space file has a ``search`` section (settings that flags override: metric, mode, trials,
epochs, ASHA and divergence settings, seed), a ``space`` section (config key: a distribution
``{loguniform|uniform|int: [low, high]}`` or ``{choice: [...]}``, or a plain value fixed for
every trial) and optional ``points`` (configs tried right after the hand-fixed default).
``search_spaces/fixes.yaml`` and ``docs/search.md`` show the format.

``iou_end >= iou_start`` always holds by construction: when both are searched, Optuna samples
``iou_start`` and a fraction ``iou_end_fraction`` in [0, 1] that places ``iou_end`` between
``max(iou_start, low)`` and ``high`` (a reparameterization, never rejection; see
``tune.study.DefineByRun``).

Every problem is a ``SpaceError`` naming the file, the key and what is wrong. Only ``yaml`` and
``cattle_yolo.config`` are imported here, so checking a bad file takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cattle_yolo import stats
from cattle_yolo.config import (
    ALIASES,
    FIELD_NAMES,
    ConfigError,
    TrainConfig,
    closest_key,
    coerce,
    read_yaml_mapping,
)

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SECTIONS = ("search", "space", "points")

# Per-epoch stats a search may optimise, with their natural direction.
METRICS = {
    stats.MAP50_95: "max",
    stats.MAP50: "max",
    stats.MAP75: "max",
    stats.PRECISION: "max",
    stats.RECALL: "max",
    stats.F1_AT_THRESHOLD: "max",
    stats.BEST_F1: "max",
    stats.VAL_LOSS: "min",
    stats.TRAIN_LOSS: "min",
}
# Metrics read at cfg.score_threshold: only under these is score_threshold a training knob.
THRESHOLD_METRICS = (stats.PRECISION, stats.RECALL, stats.F1_AT_THRESHOLD)
# A trial's objective, from its per-epoch metric (the value ASHA's rungs, Optuna and the export
# all see): ``best`` is the best single epoch so far; ``last_mean`` is the mean of the last
# ``objective_window`` epochs (fewer at the start), which one lucky epoch cannot win.
OBJECTIVES = ("best", "last_mean")

# Keys fixed for the whole search: the dataset is decoded once at these settings and shared.
FIXED_ONLY = {
    "data": "the dataset is decoded once and shared by every trial",
    "imgsz": "the dataset is decoded once, at one image size, and shared by every trial",
    "synthetic_images": "the dataset is decoded once and shared by every trial",
    "strict": "the dataset is decoded once and shared by every trial",
}
# Keys the search itself sets.
NOT_IN_SPACE = {
    "epochs": "the epochs per trial are search.epochs (--epochs)",
    "device": "Ray assigns each trial its device",
    "out": "each trial writes to its own trial folder",
    "seed": "the seed is search.seed (--seed)",
}
IOU_END_FRACTION = "iou_end_fraction"  # the Optuna parameter behind a searched iou_end
CONFIRM_ID = "confirm_id"  # which confirmed config a confirmation run retrains
CURVE_ID = "curve_id"  # which config of benchmarks/curves.py's table a recording run trains
AUDIT_ROW = "audit_row"  # which design row of a fix audit (tune/audit.py) a run trains
# trial-config keys that are not TrainConfig fields
DERIVED_KEYS = (IOU_END_FRACTION, CONFIRM_ID, CURVE_ID, AUDIT_ROW)


class SpaceError(ConfigError):
    """A search-space file or search setting is wrong; the message names file, key and problem."""


@dataclass(frozen=True)
class Distribution:
    """One searched knob: ``kind`` is loguniform, uniform, int or choice."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        return f"{self.kind} [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class SearchSettings:
    metric: str = stats.MAP50_95  # per-epoch stat to optimise
    mode: str = "max"  # max or min
    trials: int = 16  # trials to run
    epochs: int = 30  # epochs per trial, ASHA's max_t
    grace_period: int = 3  # ASHA: epochs before a trial may be stopped
    reduction_factor: float = 3.0  # ASHA: keep the top 1/reduction_factor at each rung
    patience: int = 3  # divergence: training loss rising this many epochs in a row
    min_rise: float = 0.05  # divergence: ... by at least this fraction over those epochs
    spike_ratio: float = 3.0  # divergence: training loss above this multiple of its own best
    seed: int = 0  # TPE sampler and every trial's training seed
    objective: str = "best"  # best | last_mean: a trial's objective from its per-epoch metric
    objective_window: int = 3  # last_mean: epochs averaged
    confirm: int = 0  # after the search: retrain the top `confirm` configs and the default ...
    confirm_seeds: int = 3  # ... on this many fresh seeds each

    @property
    def worst(self) -> float:
        """The objective a diverged trial reports: finite, and no better than any real result."""
        return 0.0 if self.mode == "max" else 1e6  # every allowed metric is >= 0

    def replace(self, changes: dict[str, Any], source: str) -> SearchSettings:
        """Apply changes (``None`` values ignored), checked; errors are prefixed with ``source``."""
        values = {**dataclasses.asdict(self), **{k: v for k, v in changes.items() if v is not None}}
        if "metric" in changes and changes["metric"] and "mode" not in changes:
            values["mode"] = METRICS.get(_metric_name(changes["metric"]), self.mode)
        return settings_from_dict(values, source)


@dataclass(frozen=True)
class SearchSpace:
    path: str
    knobs: dict[str, Distribution]  # searched knobs by config key
    fixed: dict[str, Any]  # config values fixed for every trial
    points: tuple[dict[str, Any], ...] = ()  # extra configs to try after the default
    settings: SearchSettings = field(default_factory=SearchSettings)
    # Knobs chosen after training instead of sampled (score_threshold under an mAP metric).
    post_hoc: dict[str, Distribution] = field(default_factory=dict)

    def threshold_range(self) -> tuple[float, float] | None:
        """The range the F1-best threshold is chosen in; None when score_threshold is a
        sampled knob or fixed by the space (then the trial keeps its own value)."""
        from tune.threshold import post_hoc_range

        return post_hoc_range(
            "score_threshold" in self.knobs,
            "score_threshold" in self.fixed,
            self.post_hoc.get("score_threshold"),
        )


def for_metric(space: SearchSpace, metric: str) -> tuple[SearchSpace, list[str]]:
    """The space as the search runs it under ``metric``: a searched ``score_threshold`` is not
    sampled unless the metric is read at that threshold (precision, recall, f1); it is chosen
    after training instead, the F1-best on the best epoch's val detections within its range.
    Returns the space and the note to print once."""
    dist = space.knobs.get("score_threshold")
    if dist is None or metric in THRESHOLD_METRICS:
        return space, []
    knobs = {k: v for k, v in space.knobs.items() if k != "score_threshold"}
    points = tuple({k: v for k, v in p.items() if k != "score_threshold"} for p in space.points)
    note = (
        f"{space.path}: score_threshold {dist.describe()} is not sampled: it cannot change "
        f"{metric}, so it is chosen after training: each trial takes the F1-best threshold "
        "within that range on its best epoch's val detections, and the export carries it"
    )
    if not knobs:
        raise SpaceError(
            f"{space.path}: space searches only score_threshold, which {metric} "
            "does not depend on; search a training knob too"
        )
    return dataclasses.replace(
        space, knobs=knobs, points=points, post_hoc={"score_threshold": dist}
    ), [note]


def _suggest_name(key: str, options: tuple[str, ...] | list[str]) -> str:
    """The closest of ``options`` (config keys also by alias: ``learning_rate`` -> ``lr``)."""
    return closest_key(key, tuple(options), ALIASES if options is FIELD_NAMES else {})


def _metric_name(name: Any) -> Any:
    return stats.current_name(name) if isinstance(name, str) else name


def settings_from_dict(values: dict[str, Any], source: str) -> SearchSettings:
    """Build checked settings; ``source`` names where they came from (file section or flags)."""
    s = SearchSettings(**_settings_values(values, source))
    _check_names(s, source)
    _check_counts(s, source)
    _check_ratios(s, source)
    if s.grace_period > s.epochs:
        raise SpaceError(
            f"{source}: grace_period {s.grace_period} is above epochs {s.epochs} "
            "(ASHA needs grace_period <= epochs per trial)"
        )
    return dataclasses.replace(
        s,
        reduction_factor=float(s.reduction_factor),
        spike_ratio=float(s.spike_ratio),
        min_rise=float(s.min_rise),
    )


def _settings_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with only known setting names, an earlier metric name read as today's, the
    metric's own mode unless one is given, and numeric strings of the ratios as numbers."""
    names = [f.name for f in dataclasses.fields(SearchSettings)]
    for key in values:
        if key not in names:
            raise SpaceError(f"{source}: unknown setting {key!r}{_suggest_name(key, names)}")
    if "metric" in values:  # an earlier version's name (F1, f1) is read as today's
        values = {**values, "metric": _metric_name(values["metric"])}
    if "metric" in values and "mode" not in values:
        values = {**values, "mode": METRICS.get(values["metric"], "max")}
    for key in ("reduction_factor", "min_rise", "spike_ratio"):  # 5e-2 is a string to YAML 1.1
        if isinstance(values.get(key), str):
            with contextlib.suppress(ValueError):  # not a number: reported by _check_ratios
                values = {**values, key: float(values[key])}
    return values


def _bad(s: SearchSettings, source: str, key: str, need: str) -> SpaceError:
    return SpaceError(f"{source}: {key} must be {need}, got {getattr(s, key)!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_names(s: SearchSettings, source: str) -> None:
    """metric, mode and objective: one of the known names."""
    if not isinstance(s.metric, str) or s.metric not in METRICS:
        raise SpaceError(
            f"{source}: metric {s.metric!r} is not a per-epoch stat"
            f"{_suggest_name(str(s.metric), list(METRICS))}; "
            f"choose one of {', '.join(METRICS)}"
        )
    if s.mode not in ("max", "min"):
        raise _bad(s, source, "mode", "max or min")
    if s.objective not in OBJECTIVES:
        raise SpaceError(
            f"{source}: objective {s.objective!r} is not one of {', '.join(OBJECTIVES)}"
            f"{_suggest_name(str(s.objective), OBJECTIVES)}"
        )


def _check_counts(s: SearchSettings, source: str) -> None:
    """The integer settings: trials, epochs, periods, windows, seeds."""
    for key in (
        "trials",
        "epochs",
        "grace_period",
        "patience",
        "objective_window",
        "confirm_seeds",
    ):
        if not _is_int(getattr(s, key)) or getattr(s, key) < 1:
            raise _bad(s, source, key, "an integer >= 1")
    if not _is_int(s.seed):
        raise _bad(s, source, "seed", "an integer")
    if not _is_int(s.confirm) or s.confirm < 0:
        raise _bad(s, source, "confirm", "an integer >= 0 (0: no confirmation)")


def _check_ratios(s: SearchSettings, source: str) -> None:
    """ASHA's reduction factor and the divergence rule's rise and spike ratio."""
    if not _is_num(s.reduction_factor) or s.reduction_factor <= 1:
        raise _bad(s, source, "reduction_factor", "a number > 1")
    if not _is_num(s.min_rise) or s.min_rise < 0:
        raise _bad(s, source, "min_rise", "a number >= 0")
    if not _is_num(s.spike_ratio) or s.spike_ratio <= 1:
        raise _bad(s, source, "spike_ratio", "a number > 1")


def _number(value: Any, where: str) -> float:
    # PyYAML reads 1e-4 (no dot) as a string: accept numeric strings for bounds.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpaceError(f"{where}: bound {value!r} is not a number")
    return value


def _check_value(key: str, value: Any, where: str) -> None:
    """A value must be a valid config value on its own: type and range, by TrainConfig's rules."""
    values = {key: value}
    if key in ("iou_start", "iou_end"):  # the pair's own constraint is checked separately
        values = {"iou_start": value, "iou_end": value}
    try:
        coerce(key, value, where)
        TrainConfig.from_dict(values, source=where)
    except ConfigError as e:
        raise SpaceError(str(e)) from None


def parse_distribution(key: str, spec: dict[str, Any], where: str) -> Distribution:
    kind = _distribution_kind(spec, where)
    args = spec[kind]
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: choice needs a non-empty list of values, got {args!r}")
        for value in args:
            _check_value(key, value, f"{where}: choice {value!r}")
        return Distribution("choice", choices=tuple(coerce(key, v, where) for v in args))
    low, high = _range_bounds(kind, args, where)
    field_type = type(getattr(TrainConfig(), key))
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise SpaceError(f"{where}: int bounds must be whole numbers, got [{low!r}, {high!r}]")
        low, high = int(low), int(high)
    elif field_type is int:
        raise SpaceError(f"{where}: {key!r} is an integer field; use int: [low, high], not {kind}")
    if field_type not in (int, float):
        raise SpaceError(f"{where}: {key!r} is not numeric; use choice: [...] or a plain value")
    for bound in (low, high):
        _check_value(key, bound, f"{where}: bound {bound!r}")
    return Distribution(kind, low, high)


def _distribution_kind(spec: dict[str, Any], where: str) -> str:
    """The one distribution a ``{kind: args}`` mapping names."""
    names = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS]
    if unknown:
        k = str(unknown[0])
        raise SpaceError(
            f"{where}: unknown distribution {k!r}{_suggest_name(k, DISTRIBUTIONS)}; "
            f"use one of {', '.join(DISTRIBUTIONS)} or a plain value"
        )
    if len(names) != 1:
        raise SpaceError(f"{where}: give exactly one distribution, got {names or 'none'}")
    return names[0]


def _range_bounds(kind: str, args: Any, where: str) -> tuple[float, float]:
    """A range's ``[low, high]``: two numbers, low below high, above zero for a log range."""
    if not isinstance(args, list) or len(args) != 2:
        raise SpaceError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = (_number(v, where) for v in args)
    if low > high:
        raise SpaceError(f"{where}: low {low:g} is above high {high:g}")
    if low == high:
        raise SpaceError(f"{where}: low equals high ({low:g}); write a plain value to fix it")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(
            f"{where}: a log range must stay above zero, got [{low:g}, {high:g}]; "
            "use uniform or a positive low"
        )
    return low, high


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a space file. Raises ``SpaceError`` naming file, key and problem."""
    path = Path(path)
    doc = _read_space_file(path)
    settings = settings_from_dict(dict(doc.get("search") or {}), f"{path}: search")
    knobs, fixed = _parse_space(path, doc["space"])
    if not knobs:
        raise SpaceError(f"{path}: space fixes every key and searches none")
    _check_iou_pair(path, knobs)
    points = _parse_points(path, doc.get("points") or [], knobs)
    return SearchSpace(str(path), knobs, fixed, tuple(points), settings)


def _read_space_file(path: Path) -> dict[str, Any]:
    """The file's mapping: known sections only, ``search`` a mapping, ``space`` a non-empty
    one."""
    try:
        doc = read_yaml_mapping(path)
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    for key in doc:
        if key not in SECTIONS:
            raise SpaceError(
                f"{path}: unknown section {key!r}{_suggest_name(str(key), SECTIONS)}; "
                f"expected {', '.join(SECTIONS)}"
            )
    search = doc.get("search") or {}
    space = doc.get("space")
    if not isinstance(search, dict):
        raise SpaceError(f"{path}: search must be a mapping of setting: value")
    if not isinstance(space, dict) or not space:
        raise SpaceError(f"{path}: space must be a non-empty mapping of config key: distribution")
    return doc


def _parse_space(
    path: Path, space: dict[Any, Any]
) -> tuple[dict[str, Distribution], dict[str, Any]]:
    """The ``space`` section -> (searched knobs, fixed values), each key checked."""
    knobs: dict[str, Distribution] = {}
    fixed: dict[str, Any] = {}
    for key, spec in space.items():
        where = f"{path}: space.{key}"
        if not isinstance(key, str) or key not in FIELD_NAMES:
            raise SpaceError(f"{where}: unknown config key{_suggest_name(str(key), FIELD_NAMES)}")
        if key in NOT_IN_SPACE:
            raise SpaceError(f"{where}: cannot be set in a space: {NOT_IN_SPACE[key]}")
        if isinstance(spec, dict):
            if key in FIXED_ONLY:
                raise SpaceError(f"{where}: cannot be searched: {FIXED_ONLY[key]}; fix it instead")
            knobs[key] = parse_distribution(key, spec, where)
        elif isinstance(spec, list):
            raise SpaceError(
                f"{where}: a list is not a value; write {{choice: {spec}}} to search it"
            )
        else:
            _check_value(key, spec, where)
            fixed[key] = coerce(key, spec, where)
    return knobs, fixed


def _check_iou_pair(path: Path, knobs: dict[str, Distribution]) -> None:
    """``iou_start`` and ``iou_end`` searched together: ranges, so that ``iou_end >= iou_start``
    can always hold by construction."""
    if "iou_start" in knobs and "iou_end" in knobs:
        start, end = knobs["iou_start"], knobs["iou_end"]
        if "choice" in (start.kind, end.kind):
            raise SpaceError(
                f"{path}: space.iou_start/iou_end: searched together they must be "
                "ranges (uniform or loguniform), not choice"
            )
        if start.high > end.high:
            raise SpaceError(
                f"{path}: space.iou_start: high {start.high:g} is above iou_end's high "
                f"{end.high:g}, so iou_end >= iou_start could not always hold"
            )


def _parse_points(path: Path, points: Any, knobs: dict[str, Distribution]) -> list[dict[str, Any]]:
    """The ``points`` section: mappings of searched knob: a value inside its distribution."""
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise SpaceError(f"{path}: points must be a list of mappings of knob: value")
    for i, point in enumerate(points):
        for key, value in point.items():
            where = f"{path}: points[{i}].{key}"
            if key not in knobs:
                raise SpaceError(
                    f"{where}: not a searched knob{_suggest_name(str(key), list(knobs))}"
                )
            if not knobs[key].contains(value):
                raise SpaceError(f"{where}: {value!r} is outside {knobs[key].describe()}")
    return points


def check_base(space: SearchSpace, base: TrainConfig) -> None:
    """Checks that need the base config: a searched IoU bound against its fixed partner."""
    knobs = space.knobs
    if ("iou_start" in knobs) == ("iou_end" in knobs):
        return  # both searched (checked by load_space) or both fixed (checked by TrainConfig)
    key = "iou_start" if "iou_start" in knobs else "iou_end"
    dist = knobs[key]
    values = dist.choices if dist.kind == "choice" else (dist.low, dist.high)
    if key == "iou_start" and max(values) > base.iou_end:
        raise SpaceError(
            f"{space.path}: space.iou_start: {max(values):g} is above the fixed "
            f"iou_end {base.iou_end:g}; lower it or search iou_end too"
        )
    if key == "iou_end" and min(values) < base.iou_start:
        raise SpaceError(
            f"{space.path}: space.iou_end: {min(values):g} is below the fixed "
            f"iou_start {base.iou_start:g}; raise it or search iou_start too"
        )


def trial_values(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's config minus the Optuna-only keys: what goes into its TrainConfig."""
    return {k: v for k, v in params.items() if k not in DERIVED_KEYS}


def resolve_trial_config(base: TrainConfig, params: dict[str, Any], **run: Any) -> TrainConfig:
    """The base config with a trial's sampled values and run settings (out, device) applied."""
    return base.with_overrides({**trial_values(params), **run}, "trial config")
