"""Recorded learning curves: train a fixed set of configs once, then replay any search over them.

``record`` trains the hand-fixed default and ``--configs M`` configs from a scrambled Sobol
sequence over the space's knobs, each on ``--seeds K`` seeds, through the project's own Ray Tune
stack (its trainable, divergence stopper and disk keeper; a grid of (config, seed) runs, as many
at once as the resources allow). Every epoch of every run is appended, as soon as the run ends, to
a gzip CSV (config id, seed, epoch, knob values, val mAP50-95, mAP50, val and train loss, F1,
wall time, diverged): killed, or started again days later, the same command trains only the
(config, seed) pairs the table lacks. A diverged run is recorded up to the epoch it was stopped.

    python benchmarks/curves.py record --space search_spaces/fixes.yaml --configs 48 --seeds 2 \\
        --imgsz 128 --epochs 15 --table docs/data/curves_fixes_128px.csv.gz

``replay`` runs the project's real search stack (the same Optuna searcher and journal-less
study, ASHA with its tie-break, the divergence stopper) with a trainable that trains nothing: a
trial reports the recorded curve of the config nearest to its sampled one (in the space's
normalised coordinates: each knob mapped to [0, 1], log-scaled when log-uniform, as Syne Tune's
nearest-neighbour surrogate does), for a seed drawn per trial, sleeping each epoch's recorded
wall time times ``--time-scale`` so that results arrive, and ASHA decides with concurrent trials,
in the recorded order. Every strategy gets the same epoch budget (``--budget``, default: trials x
epochs, what random search run to the end spends) over ``--seeds N`` search seeds; or, with
``--fixed-trials``, the same trial count, as ``run_search.py`` gives it (a scheduler's stops then
spend fewer epochs).

    python benchmarks/curves.py replay --table docs/data/curves_fixes_128px.csv.gz --seeds 30 \\
        --json docs/data/replay_fixes_128px.json

``importance`` measures the space on the table: each knob's PED-ANOVA importance over the
recorded configs (a Sobol design, so unbiased, unlike TPE's samples) and where in its range
the best configs lie (a range whose good configs all press on one bound may be cut too short).

    python benchmarks/curves.py importance --table docs/data/curves_fixes_128px.csv.gz

``fidelity`` checks a cheap recording against a dear one: Spearman's rho of the two tables'
rankings of the configs both hold (record the first configs again at, say, 256 px).

    python benchmarks/curves.py record --configs 8 --seeds 1 --imgsz 256 \\
        --table docs/data/curves_fixes_256px.csv.gz
    python benchmarks/curves.py fidelity --low docs/data/curves_fixes_128px.csv.gz \\
        --high docs/data/curves_fixes_256px.csv.gz
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.stopper import Stopper

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")

from cattle_yolo import stats as S  # noqa: E402
from cattle_yolo.files import atomic_write_text  # noqa: E402
from tune.results import (  # noqa: E402
    DIVERGED,
    DIVERGED_RULE,
    EPOCH,
    OBJECTIVE,
    OBJECTIVE_EPOCH,
    RUNG_SCORE,
    TRAIN_LOSS,
    VAL_LOSS,
    WARMUP_EPOCHS,
)
from tune.space import CURVE_ID, Distribution, SearchSpace, for_metric, load_space  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cattle-chute"
METRICS = (S.MAP50_95, S.MAP50, S.VAL_LOSS, S.TRAIN_LOSS, S.BEST_F1, S.EPOCH_TIME)  # columns
BASE_COLUMNS = ("config_id", "seed", "epoch")
TAIL_COLUMNS = (*METRICS, "diverged", "rule")

# name -> (sampler, scheduler): every one also has the divergence stopper, as run_search does
STRATEGIES: dict[str, tuple[str, str]] = {
    "random_fifo": ("random", "fifo"),
    "random_asha": ("random", "asha"),
    "tpe_fifo": ("tpe", "fifo"),
    "tpe_asha": ("tpe", "asha"),  # today's default
    "gp_asha": ("gp", "asha"),
    "tpe_hyperband": ("tpe", "hyperband"),  # BOHB-style: model-based proposals, HB brackets
    # the same brackets run asynchronously (Ray's ASHA with 3 brackets): synchronous HyperBand
    # waits for a bracket's trials, which 2 trials at once never fill
    "tpe_async_hb": ("tpe", "asha_brackets"),
}


def init_ray(num_cpus: float) -> None:
    """A local Ray whose workers import this file's trainable (benchmarks/ is no package)."""
    import ray

    paths = [str(HERE), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    os.environ["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
    ray.init(num_cpus=int(num_cpus), include_dashboard=False, log_to_driver=False)


# --- the space's normalised coordinates --------------------------------------------------------


def to_unit(dist: Distribution, value: float) -> float:
    """A knob value -> [0, 1] (log scale for log-uniform; a choice by its index)."""
    if dist.kind == "choice":
        return dist.choices.index(value) / max(1, len(dist.choices) - 1)
    if dist.high == dist.low:
        return 0.0
    if dist.kind == "loguniform":
        return (math.log(value) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low))
    return (float(value) - dist.low) / (dist.high - dist.low)


def from_unit(dist: Distribution, u: float) -> Any:
    """[0, 1] -> a knob value; the inverse of ``to_unit``."""
    if dist.kind == "choice":
        return dist.choices[min(len(dist.choices) - 1, int(u * len(dist.choices)))]
    if dist.kind == "loguniform":
        return float(math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low))))
    if dist.kind == "int":
        return int(min(dist.high, math.floor(dist.low + u * (dist.high - dist.low + 1))))
    return float(dist.low + u * (dist.high - dist.low))


def unit_vector(space: SearchSpace, values: dict[str, Any]) -> np.ndarray:
    return np.array([to_unit(d, values[k]) for k, d in space.knobs.items()], dtype=np.float64)


def sobol_configs(space: SearchSpace, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` configs from a scrambled Sobol sequence over the knobs (the first ``count``
    points of the same sequence for every count). ``iou_end`` is placed at its fraction of the
    room above ``iou_start``, as the search's own reparameterisation does, so it is >= it."""
    import torch

    from tune.study import _place

    knobs = space.knobs
    engine = torch.quasirandom.SobolEngine(len(knobs), scramble=True, seed=seed)  # type: ignore[no-untyped-call]  # torch leaves its __init__ unannotated
    points = engine.draw(count, dtype=torch.float64).numpy()
    configs = []
    for u in points:
        values = {k: from_unit(d, float(x)) for (k, d), x in zip(knobs.items(), u, strict=True)}
        if "iou_end" in knobs and "iou_start" in knobs:
            i = list(knobs).index("iou_end")
            values["iou_end"] = _place(knobs["iou_end"], values["iou_start"], float(u[i]))
        configs.append(values)
    return configs


# --- the table ---------------------------------------------------------------------------------


def read_table(path: Path) -> list[dict[str, Any]]:
    """Every recorded row, numbers as floats (config_id, seed, epoch, diverged as ints)."""
    if not path.is_file():
        return []
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for key, value in S.current(row).items():  # a table of an earlier version too
            if key == "rule":
                parsed[key] = value
            elif key in ("config_id", "seed", "epoch", "diverged"):
                parsed[key] = int(value)
            else:
                parsed[key] = float(value) if value not in ("", None) else math.nan
        out.append(parsed)
    return out


def append_rows(path: Path, knobs: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the gzip CSV (a new gzip member: readers see one stream), with the
    header when the file is new."""
    columns = [*BASE_COLUMNS, *knobs, *TAIL_COLUMNS]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    if not path.is_file() or path.stat().st_size == 0:
        writer.writeheader()
    for row in rows:
        writer.writerow(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "at", newline="") as f:
        f.write(text.getvalue())


def changed_configs(rows: list[dict[str, Any]], configs: list[dict[str, Any]]) -> list[str]:
    """How the table's configs differ from ``configs`` (the ones the space and base give now):
    one line per config id whose recorded knob values are not those; empty when they agree."""
    lines, seen = [], set()
    for r in rows:
        cid = r["config_id"]
        if cid in seen:
            continue
        seen.add(cid)
        if cid >= len(configs):
            lines.append(f"config {cid} is recorded but the space now gives {len(configs)}")
            continue
        for key, value in configs[cid].items():
            old = r.get(key, math.nan)
            numeric = isinstance(value, (int, float)) and isinstance(old, (int, float))
            if not (math.isclose(old, value, rel_tol=1e-9) if numeric else old == value):
                lines.append(f"config {cid}: {key} was {old!r}, now {value!r}")
    return lines


def recorded_pairs(rows: list[dict[str, Any]], epochs: int) -> set[tuple[int, int]]:
    """(config, seed) pairs whose curve is complete: every epoch, or up to a divergence."""
    by_pair: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_pair.setdefault((r["config_id"], r["seed"]), []).append(r)
    done = set()
    for pair, curve in by_pair.items():
        if max(r["epoch"] for r in curve) >= epochs or any(r["diverged"] for r in curve):
            done.add(pair)
    return done


class Curves:
    """The recorded table by config: knob values, unit coordinates and each seed's curve."""

    def __init__(self, rows: list[dict[str, Any]], space: SearchSpace) -> None:
        self.space = space
        by_config: dict[int, dict[int, list[dict[str, Any]]]] = {}
        for r in rows:
            by_config.setdefault(r["config_id"], {}).setdefault(r["seed"], []).append(r)
        self.ids = sorted(by_config)
        if not self.ids:
            raise ValueError("the table holds no curves")
        self.curves = {
            c: {s: sorted(rs, key=lambda r: r["epoch"]) for s, rs in seeds.items()}
            for c, seeds in by_config.items()
        }
        first = {c: next(iter(self.curves[c].values()))[0] for c in self.ids}
        self.values = {c: {k: first[c][k] for k in space.knobs} for c in self.ids}
        self.units = np.stack([unit_vector(space, self.values[c]) for c in self.ids])

    def nearest(self, values: dict[str, Any]) -> int:
        """The recorded config nearest to ``values`` (Euclidean in unit coordinates; ties: the
        lowest id)."""
        d = np.linalg.norm(self.units - unit_vector(self.space, values), axis=1)
        return self.ids[int(np.argmin(d))]

    def curve(self, config_id: int, draw: int) -> list[dict[str, Any]]:
        """One recorded seed's curve of a config: the ``draw``-th seed modulo their count."""
        seeds = sorted(self.curves[config_id])
        return self.curves[config_id][seeds[draw % len(seeds)]]


# --- record ------------------------------------------------------------------------------------


def run_rows(
    log: Path, config_id: int, seed: int, values: dict[str, Any], result: dict[str, Any]
) -> list[dict[str, Any]]:
    """A finished run's rows from its metrics log, the last one marked if it diverged."""
    epochs = [json.loads(x) for x in log.read_text().splitlines() if x] if log.is_file() else []
    rows = [
        {
            "config_id": config_id,
            "seed": seed,
            "epoch": e["epoch"],
            **values,
            "diverged": 0,
            "rule": "",
            **{m: e.get(m, math.nan) for m in METRICS},
        }
        for e in epochs
    ]
    if result.get(DIVERGED):
        rule = str(result.get(DIVERGED_RULE, ""))
        epoch = int(result.get(EPOCH) or len(rows))
        rows = [r for r in rows if r["epoch"] <= epoch]
        if rows and rows[-1]["epoch"] == epoch:
            rows[-1].update(diverged=1, rule=rule)
        else:  # the training loop stopped it before the epoch's stats
            rows.append(
                {
                    "config_id": config_id,
                    "seed": seed,
                    "epoch": epoch,
                    **values,
                    **{m: math.nan for m in METRICS},
                    "diverged": 1,
                    "rule": rule,
                }
            )
    return rows


def record_base(space: SearchSpace, args: argparse.Namespace) -> Any:
    """The config every recorded run starts from: the defaults, the space's fixed values, the
    fidelity (``args.imgsz``, ``args.epochs``, ``args.data``) and ``args.set``."""
    from cattle_yolo.config import TrainConfig, parse_overrides

    return TrainConfig.load(
        None,
        {
            **space.fixed,
            "data": None if str(args.data) == "synthetic" else str(args.data),
            "imgsz": args.imgsz,
            "epochs": args.epochs,
            **parse_overrides(args.set),
        },
    )


def trial_resources(seen: dict[str, float], args: argparse.Namespace, runs: int) -> Any:
    """Each run's share of what Ray ``seen``, as a search plans it (``cluster.plan_resources``):
    on CPU ``--cpus-per-trial`` each (default 1); with GPUs, ``--gpus-per-trial`` of one each,
    so that several small runs pack on a GPU, and the CPUs shared between them."""
    from tune import cluster

    return cluster.plan_resources(seen, None, args.gpus_per_trial, args.cpus_per_trial, runs)


def record(args: argparse.Namespace) -> None:
    import ray
    from ray import tune

    from cattle_yolo.data import load_datasets
    from tune import search

    space = load_space(args.space)
    base = record_base(space, args)
    configs = [{k: getattr(base, k) for k in space.knobs}, *sobol_configs(space, args.configs)]
    seeds = list(range(args.seeds))
    table = Path(args.table)
    recorded = read_table(table)
    changed = changed_configs(recorded, configs)
    if changed:  # the same ids would name other configs: the table would mix two designs
        sys.exit(
            f"error: {table}: its configs are not the ones {args.space} gives now (a range, the "
            f"default or --set changed?); record into a new table. {'; '.join(changed[:3])}"
        )
    done = recorded_pairs(recorded, args.epochs)
    # seed-major: every config's first seed before any second one, so a partial table covers
    # the space (a replay and the importance need configs more than repeats)
    todo = [(c, s) for s in seeds for c in range(len(configs)) if (c, s) not in done]
    print(f"{len(configs)} configs x {len(seeds)} seeds: {len(done)} recorded, {len(todo)} to go")
    if not todo:
        return
    knobs = list(space.knobs)

    class AppendOnEnd(tune.Callback):
        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            cid, seed = int(trial.config[CURVE_ID]), int(trial.config["seed"])
            log = Path(trial.path) / "run" / "metrics" / "training_metrics.jsonl"
            rows = run_rows(log, cid, seed, configs[cid], trial.last_result or {})
            append_rows(table, knobs, rows)
            print(f"recorded config {cid} seed {seed}: {len(rows)} epochs", flush=True)

    init_ray(args.cpus)
    try:
        settings = space.settings.replace({"epochs": args.epochs, "trials": len(todo)}, "record")
        resources = trial_resources(ray.cluster_resources(), args, len(todo))
        concurrent = resources.concurrent
        print(
            f"{concurrent} run(s) at once, each with {resources.cpus_per_trial:g} CPU and "
            f"{resources.gpus_per_trial:g} GPU",
            flush=True,
        )
        datasets = load_datasets(base)
        trainable = search.make_trainable(base, datasets, settings, resources)
        points = [{**configs[c], "seed": s, CURVE_ID: c} for c, s in todo]
        experiment = search.Experiment(
            f"curves-{table.stem.split('.')[0]}",
            str(Path(args.storage).resolve()),
            max_failures=1,
            keep_weights=0,
            verbose=0,
            callbacks=(AppendOnEnd(),),
        )
        run_config = search.make_run_config(experiment, settings, None)
        tuner = search.grid_tuner(trainable, points, run_config, concurrent)
        tuner.fit()
    finally:
        ray.shutdown()


# --- replay ------------------------------------------------------------------------------------


def replay_trial(config: dict[str, Any], *, curves: Curves, settings: Any, scale: float) -> None:
    """A Tune function trainable that reports a recorded curve instead of training."""
    from ray import tune

    from tune.trainable import EpochReporter, trial_objective

    values = {k: config[k] for k in curves.space.knobs}
    cid = curves.nearest(values)
    draw = random.Random(json.dumps([settings.seed, sorted(values.items())])).randrange(1 << 30)
    reporter = EpochReporter(settings)
    history: dict[int, float] = {}
    for row in curves.curve(cid, draw):
        time.sleep(max(0.0, row[S.EPOCH_TIME] * scale) if math.isfinite(row[S.EPOCH_TIME]) else 0)
        epoch = int(row["epoch"])
        if row["diverged"] and not math.isfinite(row[settings.metric]):
            tune.report(
                {
                    EPOCH: epoch,
                    TRAIN_LOSS: math.nan,
                    OBJECTIVE: settings.worst,
                    RUNG_SCORE: settings.worst,
                    DIVERGED: True,
                    "curve_id": cid,
                    DIVERGED_RULE: f"recorded: {row['rule']}",
                    "reported_at": time.time(),
                }
            )
            return
        history[epoch] = row[settings.metric]
        objective, at = trial_objective(
            history, settings.objective, settings.objective_window, settings.mode, settings.worst
        )
        tune.report(
            {
                EPOCH: epoch,
                settings.metric: row[settings.metric],
                TRAIN_LOSS: row[S.TRAIN_LOSS],
                VAL_LOSS: row[S.VAL_LOSS],
                OBJECTIVE: objective,
                OBJECTIVE_EPOCH: at,
                RUNG_SCORE: reporter.rung_score(objective, row[S.VAL_LOSS]),
                WARMUP_EPOCHS: 0.0,
                DIVERGED: False,
                "curve_id": cid,
                "reported_at": time.time(),  # Tune's own timestamp is whole seconds
            }
        )


def epoch_budget(settings: dict[str, Any]) -> int:
    """Epochs a replayed search may spend: ``budget``, or by default what random search run to
    the end spends (``trials`` x ``epochs``; with ``fixed_trials``, the most a search can)."""
    return int(settings["budget"] or settings["trials"] * settings["epochs"])


def settings_key(args: argparse.Namespace, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The settings a replay's (or real searches') JSON is keyed by: ``keys`` (default: the
    replay's). ``fixed_trials`` appears only when set, so the JSON files written before it
    existed continue; with it no ``budget`` may be given."""
    key = {k: getattr(args, k) for k in (SETTINGS if keys is None else keys)}
    if args.fixed_trials:
        if args.budget:
            sys.exit("error: --fixed-trials gives every search --trials trials; no --budget")
        key["fixed_trials"] = True
    return key


def whole_search(settings: dict[str, Any]) -> int | None:
    """The epochs below which a search was cut short (the budget); None with fixed trials,
    whose searches legitimately spend less (their cut-short check is on trials ended)."""
    return None if settings.get("fixed_trials") else epoch_budget(settings)


class BudgetStopper(Stopper):
    """Stops the whole search once its trials have reported ``budget`` epochs in all."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.seen: set[tuple[str, int]] = set()  # Tune passes a trial's last result twice

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if EPOCH in result:
            self.seen.add((trial_id, int(result[EPOCH])))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) >= self.budget


def search_settings(curves: Curves, seed: int, args: argparse.Namespace) -> Any:
    """The search settings of one replayed (or real, ``real_search.py``) search."""
    return curves.space.settings.replace(
        {
            "seed": seed,
            "trials": args.trials,
            "epochs": args.epochs,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
        },
        "replay",
    )


def strategy_tuner(  # noqa: PLR0913 (the strategy, its settings and what it runs, all varied)
    curves: Curves,
    strategy: str,
    settings: Any,
    args: argparse.Namespace,
    trainable: Any,
    storage: Path,
) -> Any:
    """A Tuner running ``strategy`` (sampler, scheduler, the divergence stopper, ``args``'s
    concurrency and epoch budget) over ``trainable``: the recorded curves or real training."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler
    from ray.tune.stopper import CombinedStopper

    from cattle_yolo.config import TrainConfig
    from tune.search import Study, make_searcher
    from tune.stoppers import DivergenceStopper

    sampler, scheduler_name = STRATEGIES[strategy]
    base = TrainConfig().with_overrides(
        {**curves.space.fixed, **curves.values[curves.ids[0]]}, "the table's default"
    )
    budget = epoch_budget(vars(args))
    # an equal epoch budget (trials enough to spend it), or exactly --trials as run_search gives
    enough = max(args.trials, 4 * budget // max(1, args.grace_period))
    samples = args.trials if args.fixed_trials else enough
    study = Study(sampler, start_points=not args.from_scratch)
    searcher, _ = make_searcher(curves.space, base, settings, args.concurrent, study)
    if scheduler_name in ("asha", "asha_brackets"):
        scheduler: Any = ASHAScheduler(
            metric=RUNG_SCORE,
            mode=settings.mode,
            time_attr=EPOCH,
            max_t=settings.epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
            brackets=3 if scheduler_name == "asha_brackets" else 1,
        )
    elif scheduler_name == "hyperband":
        scheduler = HyperBandScheduler(
            metric=RUNG_SCORE,
            mode=settings.mode,
            time_attr=EPOCH,
            max_t=settings.epochs,
            reduction_factor=settings.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    divergence = DivergenceStopper(
        settings.patience, settings.spike_ratio, settings.worst, OBJECTIVE, settings.min_rise
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{strategy}-{settings.seed}",
            storage_path=str(storage),
            verbose=0,
            stop=CombinedStopper(divergence, BudgetStopper(budget)),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(fail_fast=True),  # an error is a bug here
        ),
    )


def search_run(  # noqa: PLR0913
    grid: Any,
    curves: Curves,
    strategy: str,
    settings: Any,
    budget: int,
    fixed_trials: bool = False,
) -> dict[str, Any]:
    """A finished search's anytime curve (best so far after each of the first ``budget``
    epochs, in the order they were reported), its trials (the recorded config nearest to each
    trial's, and its epochs) and its recommendation: the incumbent's nearest recorded config,
    scored by its mean over the recorded seeds (each curve's last epoch). A search cut short
    (an interrupt) is no data point and exits: one that spent fewer than ``budget`` epochs or,
    with ``fixed_trials``, one that ended fewer than ``settings.trials`` trials."""
    events, per_trial = [], []
    for result in (grid[i] for i in range(len(grid))):
        df = result.metrics_dataframe
        if df is None or EPOCH not in df:
            continue
        recs = df.to_dict("records")
        cid = curves.nearest({k: result.config[k] for k in curves.space.knobs})
        per_trial.append(
            {
                "curve_id": cid,
                "epochs": int(max(r[EPOCH] for r in recs)),
                "started": recs[0].get("reported_at", recs[0]["timestamp"]),
            }
        )
        for rec in recs:
            value = rec.get(settings.metric)
            ok = not rec.get(DIVERGED) and value is not None and math.isfinite(value)
            events.append((rec.get("reported_at", rec["timestamp"]), value if ok else None, cid))
    events.sort(key=lambda e: e[0])
    scores = config_scores(curves, settings.metric, None)
    best, curve, picked = -math.inf, [], None
    incumbents = []  # [epoch, config, its seed mean] each time the recommendation changes
    for epoch, (_, value, cid) in enumerate(events[:budget], 1):
        if value is not None and value > best:
            if cid != picked:
                incumbents.append([epoch, cid, scores[cid]])
            best, picked = value, cid
        curve.append(best if math.isfinite(best) else 0.0)
    if fixed_trials:
        if grid.num_terminated < settings.trials:
            sys.exit(
                f"error: {strategy} seed {settings.seed} was cut short: {grid.num_terminated} "
                f"of {settings.trials} trials ended; not recorded"
            )
    elif len(curve) < budget:
        sys.exit(
            f"error: {strategy} seed {settings.seed} was cut short after {len(curve)} of "
            f"{budget} epochs; not recorded"
        )
    per_trial.sort(key=lambda t: t["started"])
    return {
        "strategy": strategy,
        "seed": settings.seed,
        "curve": curve,
        "trials": len(grid),
        "per_trial": [{k: t[k] for k in ("curve_id", "epochs")} for t in per_trial],
        "best": curve[-1] if curve else 0.0,
        "picked": picked,
        "picked_score": scores[picked] if picked is not None else 0.0,
        "incumbents": incumbents,
    }


def replay_search(
    curves: Curves, strategy: str, seed: int, args: argparse.Namespace, storage: Path
) -> dict[str, Any]:
    """One search of ``strategy`` over the recorded curves: its anytime curve in epochs."""
    from ray import tune

    settings = search_settings(curves, seed, args)
    trainable = tune.with_resources(
        tune.with_parameters(replay_trial, curves=curves, settings=settings, scale=args.time_scale),
        {"cpu": 0.01},
    )
    tuner = strategy_tuner(curves, strategy, settings, args, trainable, storage)
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    run = search_run(grid, curves, strategy, settings, epoch_budget(vars(args)), args.fixed_trials)
    return {**run, "wall_s": wall}


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """The first epoch count at which the best-so-far reaches ``target``; None if never."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target - 1e-12), None)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q[0], statistics.median(values), q[2]


SETTINGS = (
    "trials",
    "epochs",
    "grace_period",
    "reduction_factor",
    "concurrent",
    "budget",
    "time_scale",
    "from_scratch",
)


def previous_runs(
    path: Path | None, key: dict[str, Any], budget: int | None = None
) -> list[dict[str, Any]]:
    """The runs an earlier replay wrote to ``path`` with the same table and settings (a killed
    or extended replay continues); none when there is no such file. With ``budget``, a run
    that spent fewer epochs (a search cut short by an interrupt) is dropped, to be run again."""
    if path is None or not path.is_file():
        return []
    doc = json.loads(path.read_text())
    theirs = {k: doc.get(k) for k in key}
    if theirs != key:
        changed = [k for k in key if theirs[k] != key[k]]
        sys.exit(
            f"error: {path} holds a replay of another table or settings ({changed}); "
            "write to another --json"
        )
    runs = list(doc["runs"])
    if budget is not None:
        short = [r for r in runs if len(r["curve"]) < budget]
        for r in short:
            print(
                f"{path}: {r['strategy']} seed {r['seed']} spent {len(r['curve'])} of {budget} "
                "epochs (cut short): it runs again",
                flush=True,
            )
        runs = [r for r in runs if len(r["curve"]) >= budget]
    return runs


def summarise(runs: list[dict[str, Any]], budget: int) -> tuple[float | None, dict[str, Any]]:
    """The target (random FIFO's median best) and each strategy's quartiles of its best and of
    the epochs it took to reach the target (never: ``budget + 1``)."""
    target_runs = [r["best"] for r in runs if r["strategy"] == "random_fifo"]
    target = statistics.median(target_runs) if target_runs else None
    summary = {}
    for strategy in [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]:
        mine = [r for r in runs if r["strategy"] == strategy]
        row: dict[str, Any] = {
            "best": quartiles([r["best"] for r in mine]),
            "epochs_spent": quartiles([float(len(r["curve"])) for r in mine]),
        }
        if all("picked_score" in r for r in mine):
            row["picked_score"] = quartiles([r["picked_score"] for r in mine])
        if target is not None:
            reach = [epochs_to_reach(r["curve"], target) for r in mine]
            row["epochs_to_target"] = quartiles([float(x or budget + 1) for x in reach])
            row["reached"] = sum(x is not None for x in reach)
        summary[strategy] = row
    return target, summary


def pick_summary(runs: list[dict[str, Any]], budget: int) -> tuple[float | None, dict[str, Any]]:
    """P1 measured on what a search recommends rather than on the best value it happened to
    see: the target is random FIFO's median final pick (its config's mean over the recorded
    seeds), and each strategy's epochs until its pick scores that much (never: ``budget + 1``).
    None while a run lacks the incumbents' record (replays before it was kept)."""
    if not runs or not all("incumbents" in r for r in runs):
        return None, {}
    fifo = [r["picked_score"] for r in runs if r["strategy"] == "random_fifo"]
    if not fifo:
        return None, {}
    target = statistics.median(fifo)
    out = {}
    for strategy in [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]:
        reach = [
            next((e for e, _, score in r["incumbents"] if score >= target - 1e-12), None)
            for r in runs
            if r["strategy"] == strategy
        ]
        out[strategy] = {
            "epochs_to_pick": quartiles([float(x or budget + 1) for x in reach]),
            "pick_reached": sum(x is not None for x in reach),
        }
    return target, out


def replay(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    # the space as the real search runs it: score_threshold, which cannot change mAP, is neither
    # sampled nor a coordinate of the nearest-neighbour lookup
    full = load_space(args.space)
    space, _ = for_metric(full, full.settings.metric)
    curves = Curves(read_table(Path(args.table)), space)
    storage = Path(args.storage).resolve()
    budget = epoch_budget(vars(args))
    settings = settings_key(args)
    key = {
        "metric": space.settings.metric,
        "configs": len(curves.ids),
        "curves": sum(len(seeds) for seeds in curves.curves.values()),
        "settings": settings,
    }
    json_path = Path(args.json) if args.json else None
    runs = previous_runs(json_path, key, whole_search(settings))
    done = {(r["strategy"], r["seed"]) for r in runs}
    # seed-major: a replay cut short has compared every strategy on the seeds it reached
    todo = [(st, seed) for seed in range(args.seeds) for st in args.strategies]
    todo = [pair for pair in todo if pair not in done]
    print(f"{len(done)} searches replayed before, {len(todo)} to go", flush=True)

    def document() -> dict[str, Any]:
        target, summary = summarise(runs, budget)
        pick_target, picks = pick_summary(runs, budget)
        for strategy, row in picks.items():
            summary[strategy].update(row)
        return {
            "table": str(args.table),
            **key,
            "target": target,
            "pick_target": pick_target,
            "summary": summary,
            "runs": runs,
        }

    if todo:
        init_ray(max(2, args.concurrent))
    try:
        for strategy, seed in todo:
            run = replay_search(curves, strategy, seed, args, storage)
            runs.append(run)
            print(
                f"{strategy} seed {seed}: best {run['best']:.4f} after "
                f"{len(run['curve'])} epochs, {run['trials']} trials ({run['wall_s']:.0f} s)",
                flush=True,
            )
            if json_path is not None:  # after every search: a killed replay loses one
                atomic_write_text(json_path, json.dumps(document(), indent=1))
    finally:
        if todo:
            ray.shutdown()
    doc = document()
    print("\n".join(markdown_table(doc)))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(doc, indent=1))
    if args.plot:
        plot_replay(doc, Path(args.plot))
    return doc


def markdown_table(doc: dict[str, Any]) -> list[str]:
    """The replay's summary as a Markdown table: median [IQR] over the search seeds."""
    budget = epoch_budget(doc["settings"])
    target = doc["target"]
    pick_target = doc.get("pick_target")
    picks = f" epochs until the pick's mean >= {pick_target:.4f} | reached |" if pick_target else ""
    fixed = bool(doc["settings"].get("fixed_trials"))  # then the epochs spent vary by search
    lines = [
        f"| strategy | best {doc['metric']} | picked config's mean | epochs to {target:.4f} "
        f"| share of the budget | reached | trials |{' epochs spent |' if fixed else ''}{picks}",
        "|---|---|---|---|---|---|---|"
        + ("---|" if fixed else "")
        + ("---|---|" if pick_target else ""),
    ]
    for strategy, row in doc["summary"].items():
        lo, mid, hi = row["best"]
        mine = [r for r in doc["runs"] if r["strategy"] == strategy]
        trials = statistics.median(r["trials"] for r in mine)
        picked = row.get("picked_score")
        cells = [
            strategy,
            f"{mid:.4f} [{lo:.4f}, {hi:.4f}]",
            f"{picked[1]:.4f} [{picked[0]:.4f}, {picked[2]:.4f}]" if picked else "",
        ]
        if "epochs_to_target" in row:
            q = row["epochs_to_target"]
            cells += [
                f"{q[1]:.0f} [{q[0]:.0f}, {q[2]:.0f}]",
                f"{q[1] / budget:.2f}",
                f"{row['reached']}/{len(mine)}",
            ]
        else:
            cells += ["", "", ""]
        cells.append(f"{trials:.0f}")
        if fixed:
            q = row["epochs_spent"]
            cells.append(f"{q[1]:.0f} [{q[0]:.0f}, {q[2]:.0f}]")
        if pick_target:
            q = row["epochs_to_pick"]
            cells += [f"{q[1]:.0f} [{q[0]:.0f}, {q[2]:.0f}]", f"{row['pick_reached']}/{len(mine)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pick_curve(run: dict[str, Any], length: int) -> list[float]:
    """The recommendation's seed mean after each epoch (nan before the first report)."""
    out, score, changes = [], math.nan, iter(run["incumbents"])
    change = next(changes, None)
    for epoch in range(1, length + 1):
        while change is not None and change[0] <= epoch:
            score, change = change[2], next(changes, None)
        out.append(score)
    return out


def plot_replay(doc: dict[str, Any], path: Path) -> None:
    """Best-so-far against epochs spent: each strategy's median over the search seeds, its
    interquartile band, and the target (random FIFO's median full-budget best) as a line. When
    the runs kept their incumbents, a second panel shows what each strategy recommends after
    each epoch, scored by the config's mean over the recorded seeds, with its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = doc.get("pick_target") is not None
    fig, axes = plt.subplots(1, 2 if picks else 1, figsize=(13 if picks else 7, 4.5), squeeze=False)
    ax, ax2 = axes[0][0], axes[0][-1]
    for strategy in doc["summary"]:
        runs = [r for r in doc["runs"] if r["strategy"] == strategy and r["curve"]]
        if not runs:
            continue
        width = max(len(r["curve"]) for r in runs)
        x = np.arange(1, width + 1)
        # a stopped search holds its last value
        grid = np.array([r["curve"] + [r["curve"][-1]] * (width - len(r["curve"])) for r in runs])
        lo, mid, hi = np.percentile(grid, [25, 50, 75], axis=0)
        (line,) = ax.plot(x, mid, label=f"{strategy} ({len(runs)} seeds)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
        if picks:
            chosen = np.array([pick_curve(r, width) for r in runs])
            lo, mid, hi = np.nanpercentile(chosen, [25, 50, 75], axis=0)
            ax2.plot(x, mid, color=line.get_color(), label=strategy)
            ax2.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    if doc["target"] is not None:
        ax.axhline(doc["target"], color="grey", ls="--", lw=1, label="random FIFO's median best")
    ax.set_xlabel("epochs spent by the search")
    ax.set_ylabel(f"best {doc['metric']} so far")
    ax.set_title("Replayed searches: median and interquartile band")
    lows = [r["curve"][len(r["curve"]) // 10] for r in doc["runs"] if r["curve"]]
    if lows:
        ax.set_ylim(bottom=float(np.percentile(lows, 10)))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    if picks:
        ax2.axhline(doc["pick_target"], color="grey", ls="--", lw=1, label="random FIFO's pick")
        ax2.set_xlabel("epochs spent by the search")
        ax2.set_ylabel(f"recommended config's mean {doc['metric']} over its seeds")
        ax2.set_title("What the search recommends, scored by its seed mean")
        ax2.set_ylim(bottom=doc["pick_target"] - 0.05)
        ax2.legend(fontsize=8, loc="lower right")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the space, measured on the table ---------------------------------------------------------

# A knob "presses on a bound" when the best config lies this close to it (unit coordinates) and
# the good configs are on that side of the middle: better values may lie outside the range.
EDGE = 0.1


def config_scores(curves: Curves, metric: str, epoch: int | None) -> dict[int, float]:
    """Each config's score: the mean over its seeds of ``metric`` at ``epoch`` (default: each
    curve's last), a diverged curve counting 0."""
    scores = {}
    for cid in curves.ids:
        values = []
        for curve in curves.curves[cid].values():
            row = next((r for r in curve if r["epoch"] == epoch), curve[-1]) if epoch else curve[-1]
            v = row[metric]
            values.append(v if math.isfinite(v) and not row["diverged"] else 0.0)
        scores[cid] = statistics.fmean(values)
    return scores


def measure_space(curves: Curves, metric: str, epoch: int | None, top: float) -> dict[str, Any]:
    """Each knob's PED-ANOVA importance over the recorded configs (uniformly spread by the
    Sobol design, so not biased the way TPE's samples are) and where in its range the best
    ``top`` fraction of configs lies (unit coordinates; an edge means the range may cut off
    better values: the best config within ``EDGE`` of a bound, the good ones on its side)."""
    import optuna

    from tune.study import optuna_distribution

    scores = config_scores(curves, metric, epoch)
    knobs = curves.space.knobs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {k: optuna_distribution(d) for k, d in knobs.items()}
    for cid in curves.ids:
        params = {k: curves.values[cid][k] for k in knobs}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=scores[cid])
        )
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=top)
    importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
    ranked = sorted(curves.ids, key=lambda c: -scores[c])
    best = ranked[: max(2, math.ceil(top * len(ranked)))]
    ranges = {}
    for i, key in enumerate(knobs):
        u = [float(curves.units[curves.ids.index(c)][i]) for c in best]
        low, high, centre = min(u), max(u), statistics.fmean(u)
        edge = ""
        if u[0] <= EDGE and centre < 0.5:
            edge = "low"
        elif u[0] >= 1 - EDGE and centre > 0.5:
            edge = "high"
        ranges[key] = {
            "best_unit_range": [low, high],
            "best_values": [from_unit(knobs[key], low), from_unit(knobs[key], high)],
            "edge": edge,
        }
    return {
        "configs": len(curves.ids),
        "metric": metric,
        "epoch": epoch,
        "top": top,
        "importance": dict(importance),
        "ranges": ranges,
        "best_configs": {c: scores[c] for c in best},
    }


def importance_command(args: argparse.Namespace) -> dict[str, Any]:
    curves = Curves(read_table(Path(args.table)), load_space(args.space))
    if len(curves.ids) < args.min_configs:
        print(
            f"error: {len(curves.ids)} recorded configs; the importance needs at least "
            f"{args.min_configs} (record more, or lower --min-configs)",
            file=sys.stderr,
        )
        sys.exit(2)
    doc = measure_space(curves, args.metric, args.epoch, args.top)
    print(f"{doc['configs']} configs, {args.metric} at epoch {args.epoch or 'last'}:")
    for key, value in doc["importance"].items():
        r = doc["ranges"][key]
        lo, hi = r["best_values"]
        where = f"best {args.top:.0%} of configs between {lo:.4g} and {hi:.4g}"
        edge = f"; they press on the {r['edge']} bound" if r["edge"] else ""
        print(f"  {key:24s} PED-ANOVA {value:.3f}  ({where}{edge})")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return doc


# --- fidelity: does a cheaper recording rank the configs as a dearer one does? -------------------


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as Spearman's coefficient needs)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two paired samples."""
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_interval(rho: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """An approximate 95% interval for Spearman's rho over ``n`` pairs: Fisher's z with Bonett
    and Wright's (2000) standard error, sqrt((1 + rho^2 / 2) / (n - 3))."""
    if n <= 3:
        return -1.0, 1.0
    centre = math.atanh(max(-0.999999, min(0.999999, rho)))
    half = z * math.sqrt((1 + rho * rho / 2) / (n - 3))
    return math.tanh(centre - half), math.tanh(centre + half)


def fidelity_command(args: argparse.Namespace) -> dict[str, Any]:
    """Spearman's rho between two tables' scores of the configs both hold (the same ids are the
    same configs: both tables come from one space's Sobol sequence), each config scored as
    ``importance`` scores it: the mean over its seeds at ``--epoch`` (default: the last), or
    at ``--epoch-low`` and ``--epoch-high``. One table at two epochs is the same question for
    ASHA's rungs: does epoch 3 rank the configs as epoch 15 does? ``top_kept``: how many of the
    dearer ranking's best third the cheaper one also puts in its best third (what a top-third
    cut keeps)."""
    space = load_space(args.space)
    low = Curves(read_table(Path(args.low)), space)
    high = Curves(read_table(Path(args.high)), space)
    shared = [c for c in low.ids if c in high.ids]
    for cid in shared:
        if not np.allclose(low.units[low.ids.index(cid)], high.units[high.ids.index(cid)]):
            sys.exit(f"error: config {cid} has other values in {args.low} than in {args.high}")
    if len(shared) < args.min_configs:
        sys.exit(
            f"error: {len(shared)} configs are in both tables; the check needs at least "
            f"{args.min_configs} (record more at the dearer fidelity, or lower --min-configs)"
        )
    epoch_low = args.epoch if args.epoch_low is None else args.epoch_low
    epoch_high = args.epoch if args.epoch_high is None else args.epoch_high
    a = config_scores(low, args.metric, epoch_low)
    b = config_scores(high, args.metric, epoch_high)
    rho = spearman([a[c] for c in shared], [b[c] for c in shared])
    best_low, best_high = max(shared, key=lambda c: a[c]), max(shared, key=lambda c: b[c])
    third = max(1, math.ceil(len(shared) / 3))
    top_low = set(sorted(shared, key=lambda c: -a[c])[:third])
    top_high = sorted(shared, key=lambda c: -b[c])[:third]
    kept = sum(c in top_low for c in top_high)
    doc = {
        "low": str(args.low),
        "high": str(args.high),
        "metric": args.metric,
        "epoch_low": epoch_low,
        "epoch_high": epoch_high,
        "configs": shared,
        "scores_low": [a[c] for c in shared],
        "scores_high": [b[c] for c in shared],
        "spearman": rho,
        "spearman_95": spearman_interval(rho, len(shared)),
        "best_low": best_low,
        "best_high": best_high,
        "top_third": third,
        "top_kept": kept,
    }
    print(
        f"{len(shared)} configs in both tables, {args.metric} at epoch "
        f"{epoch_low or 'last'} (low) and {epoch_high or 'last'} (high):"
    )
    for c in shared:
        print(f"  config {c:3d}: {a[c]:.4f} (low)  {b[c]:.4f} (high)")
    lo, hi = doc["spearman_95"]
    print(
        f"Spearman rho {rho:.3f} (95% interval {lo:.2f} to {hi:.2f}); best config: {best_low} "
        f"(low), {best_high} (high); "
        f"the low's best third holds {kept} of the high's best {third}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return doc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="train the configs x seeds the table lacks")
    r.add_argument("--space", default=str(REPO / "search_spaces" / "fixes.yaml"), help="space file")
    r.add_argument("--configs", type=int, default=48, help="Sobol configs besides the default")
    r.add_argument("--seeds", type=int, default=2, help="seeds per config (0..K-1)")
    r.add_argument("--imgsz", type=int, default=128, help="the fidelity: image size")
    r.add_argument("--epochs", type=int, default=15, help="epochs per run")
    r.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help="dataset (default cattle-chute; synthetic: the embedded one)",
    )
    r.add_argument("--set", nargs="*", default=[], help="key=value for every run")
    r.add_argument("--table", required=True, help="the gzip CSV to append to")
    r.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="CPUs for Ray")
    r.add_argument(
        "--cpus-per-trial",
        type=float,
        help="CPUs (threads) per run (default: 1 on CPU; the CPUs shared out with GPUs)",
    )
    r.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.25,
        help="with GPUs, each run's share of one: 0.25 packs 4 runs on a GPU (default)",
    )
    r.add_argument("--storage", default=str(REPO / "outputs" / "curves"), help="Tune's folder")
    q = sub.add_parser("replay", help="replay search strategies over a recorded table")
    q.add_argument("--space", default=str(REPO / "search_spaces" / "fixes.yaml"), help="space file")
    q.add_argument("--table", required=True, help="a table written by record")
    q.add_argument(
        "--strategies",
        nargs="+",
        default=list(STRATEGIES),
        choices=list(STRATEGIES),
        help="strategies to compare (default: all)",
    )
    q.add_argument("--seeds", type=int, default=30, help="search seeds per strategy")
    q.add_argument("--trials", type=int, default=16, help="trials of a full-budget FIFO search")
    q.add_argument("--epochs", type=int, default=15, help="epochs per trial (max_t)")
    q.add_argument("--grace-period", type=int, default=3, help="ASHA's grace period")
    q.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA's reduction factor")
    q.add_argument("--budget", type=int, default=0, help="epochs per search (0: trials x epochs)")
    q.add_argument(
        "--fixed-trials",
        action="store_true",
        help="every search runs exactly --trials trials, as run_search does (not an equal budget)",
    )
    q.add_argument("--concurrent", type=int, default=2, help="trials at once, as the real search")
    q.add_argument("--time-scale", type=float, default=1e-3, help="recorded wall time factor")
    q.add_argument("--storage", default=str(REPO / "outputs" / "replay"), help="Tune's folder")
    q.add_argument(
        "--from-scratch",
        action="store_true",
        help="no default config as the first trial (each strategy on its own merit)",
    )
    q.add_argument("--json", help="write the results here")
    q.add_argument("--plot", help="write best-so-far against epochs spent, with bands, here")
    m = sub.add_parser("importance", help="each knob's importance and good range, measured")
    m.add_argument("--space", default=str(REPO / "search_spaces" / "fixes.yaml"), help="space file")
    m.add_argument("--table", required=True, help="a table written by record")
    m.add_argument("--metric", default=S.MAP50_95, help="the recorded metric to score by")
    m.add_argument("--epoch", type=int, help="score at this epoch (default: each curve's last)")
    m.add_argument("--top", type=float, default=0.25, help="the share of configs that is good")
    m.add_argument("--min-configs", type=int, default=8, help="refuse below this many configs")
    m.add_argument("--json", help="write the results here")
    f = sub.add_parser("fidelity", help="Spearman of two tables' config rankings")
    f.add_argument("--space", default=str(REPO / "search_spaces" / "fixes.yaml"), help="space file")
    f.add_argument("--low", required=True, help="the cheaper table (e.g. 128 px)")
    f.add_argument("--high", required=True, help="the dearer table (e.g. 256 px)")
    f.add_argument("--metric", default=S.MAP50_95, help="the recorded metric to score by")
    f.add_argument("--epoch", type=int, help="score at this epoch (default: each curve's last)")
    f.add_argument("--epoch-low", type=int, help="score the cheaper table here (default --epoch)")
    f.add_argument("--epoch-high", type=int, help="score the dearer table here (default --epoch)")
    f.add_argument("--min-configs", type=int, default=8, help="refuse below this many configs")
    f.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    commands = {
        "record": record,
        "importance": importance_command,
        "replay": replay,
        "fidelity": fidelity_command,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
