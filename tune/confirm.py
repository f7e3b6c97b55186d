"""Confirmation: retrain the search's top configs and the hand-fixed default on fresh seeds.

A search ranks configs by one training run each, on one seed; a curve that jumps by a few
points from epoch to epoch can crown a lucky config. ``--confirm K --confirm-seeds S`` retrains
the top ``K`` configs (completed trials first, by objective; the default is never one of the K)
and the default, each for the full epochs on ``S`` seeds the search did not use, as Ray trials
of a second experiment ``<name>-confirm`` beside the search (same resources, retries, divergence
rules; it resumes like the search). That is ``K x S + S`` runs.

The summary gives each config's mean and sample sd over its seeds (a diverged run counts with
the worst value; an errored or unfinished one is no data point, and a config missing any seed
cannot win, so every mean compared covers the same seeds) and says whether the winner by mean
beats the default by more than the seed spread (the larger of the two sds; with one seed there
is no spread and no verdict). The export is the winner by mean, with the checkpoint and
threshold of its best seed; an interrupted confirmation exports nothing.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from cattle_yolo.config import TrainConfig
from tune.disk import ended_rows, enforce
from tune.report import export_best, objective_label, trial_rows
from tune.results import EPOCH, OBJECTIVE, TRAIN_LOSS, Status, TrialRow
from tune.space import CONFIRM_ID, SearchSettings, SearchSpace

if TYPE_CHECKING:
    from tune.search import Experiment

CONFIRM_SUFFIX = "-confirm"
CONFIRM_CSV = "confirm.csv"


@dataclass
class Candidate:
    confirm_id: int  # 0 is the hand-fixed default
    label: str  # "default" or the search trial's name
    params: dict[str, Any]  # knob values
    search_value: float | None  # its objective in the search (None: the default did not run)
    runs: list[TrialRow] = field(default_factory=list)

    def values(self, worst: float) -> list[float]:
        """The confirmed objective of each run that ended: completed, or diverged (``worst``).
        Errored and unfinished runs are no data point."""
        out = []
        for r in self.runs:
            if r.status == Status.DIVERGED:
                out.append(worst)
            elif r.status == Status.COMPLETED and r.objective is not None:
                out.append(r.objective)
        return out

    def complete(self, worst: float, seeds: int) -> bool:
        """Every seed gave a data point: only such configs' means are compared."""
        return len(self.values(worst)) == seeds

    def mean_sd(self, worst: float) -> tuple[float, float]:
        v = self.values(worst)
        if not v:
            return math.nan, math.nan
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def fresh_seeds(settings: SearchSettings, count: int) -> list[int]:
    """``count`` training seeds the search did not use (it trained every trial on its seed)."""
    return [settings.seed + 1 + i for i in range(count)]


def pick_candidates(
    rows: list[TrialRow], space: SearchSpace, settings: SearchSettings, base: TrainConfig, k: int
) -> list[Candidate]:
    """The default first, then the top ``k`` other configs: completed trials by objective, then
    ASHA-stopped ones if fewer than ``k`` completed."""
    default = {key: getattr(base, key) for key in space.knobs}

    def is_default(r: TrialRow) -> bool:
        return all(r.params.get(key) == value for key, value in default.items())

    default_row = next((r for r in rows if is_default(r)), None)
    sign = 1.0 if settings.mode == "max" else -1.0
    ranked = []
    for status in (Status.COMPLETED, Status.STOPPED):
        pool = [
            r for r in rows if r.status == status and r.objective is not None and not is_default(r)
        ]
        ranked += sorted(pool, key=lambda r: -sign * (r.objective or 0.0))  # best is set: filtered
    out = [Candidate(0, "default", default, default_row.objective if default_row else None)]
    for i, r in enumerate(ranked[:k]):
        out.append(Candidate(i + 1, r.name, dict(r.params), r.objective))
    return out


def run_configs(candidates: list[Candidate], seeds: list[int]) -> list[dict[str, Any]]:
    """The Tune config of every confirmation run: knob values, ``seed`` and ``confirm_id``."""
    return [{**c.params, "seed": s, CONFIRM_ID: c.confirm_id} for c in candidates for s in seeds]


def build_confirm_tuner(
    trainable: Any,
    candidates: list[Candidate],
    seeds: list[int],
    settings: SearchSettings,
    concurrent: int,
    experiment: Experiment,
) -> tune.Tuner:
    """A Tuner running every (config, seed) pair to the full epochs, ``concurrent`` at once,
    as the experiment ``<search name>-confirm``; every run keeps its best.pt until the export
    is known (``report``)."""
    from tune.search import grid_tuner, make_run_config

    runs = run_configs(candidates, seeds)
    reporter = tune.CLIReporter(
        metric=OBJECTIVE,
        mode=settings.mode,
        parameter_columns=[CONFIRM_ID, "seed"],
        metric_columns={
            EPOCH: "epoch",
            TRAIN_LOSS: "loss",
            OBJECTIVE: objective_label(settings),
        },
        max_report_frequency=30,
    )
    confirming = replace(experiment, name=experiment.name + CONFIRM_SUFFIX, keep_weights=None)
    run_config = make_run_config(confirming, settings, reporter)
    return grid_tuner(trainable, runs, run_config, concurrent)


def attach_runs(candidates: list[Candidate], results: Any, settings: SearchSettings) -> None:
    """File each finished confirmation run under its candidate."""
    by_id = {c.confirm_id: c for c in candidates}
    for row in trial_rows(results, settings):
        cid = row.config.get(CONFIRM_ID)
        if cid in by_id:
            by_id[cid].runs.append(row)


def unfinished(candidates: list[Candidate]) -> int:
    """Runs not ended yet: an interrupted confirmation, which the same command continues."""
    return sum(r.status == Status.UNFINISHED for c in candidates for r in c.runs)


def winner(
    candidates: list[Candidate], settings: SearchSettings, seeds: int | None = None
) -> Candidate | None:
    """The config with the best mean over all its ``seeds`` seeds (default: the settings'
    ``confirm_seeds``); None if no config has every seed."""
    seeds = settings.confirm_seeds if seeds is None else seeds
    scored = [c for c in candidates if c.complete(settings.worst, seeds)]
    if not scored:
        return None
    sign = 1.0 if settings.mode == "max" else -1.0
    return max(scored, key=lambda c: sign * c.mean_sd(settings.worst)[0])


def verdict(candidates: list[Candidate], settings: SearchSettings, seeds: int | None = None) -> str:
    """Whether the winner beats the default by more than the seed spread (``seeds``: the fresh
    seeds each config ran on, default the settings' ``confirm_seeds``)."""
    seeds = settings.confirm_seeds if seeds is None else seeds
    running = unfinished(candidates)
    if running:
        return f"confirmation: interrupted ({running} runs unfinished); no verdict"
    best = winner(candidates, settings, seeds)
    default = candidates[0]
    if best is None or not default.complete(settings.worst, seeds):
        missing = [c.label for c in candidates if not c.complete(settings.worst, seeds)]
        return (
            "confirmation: not enough finished runs to compare with the default "
            f"(missing seeds: {', '.join(missing)})"
        )
    if best is default:
        return "confirmation: the hand-fixed default has the best mean; no searched config beats it"
    (m_w, sd_w), (m_d, sd_d) = best.mean_sd(settings.worst), default.mean_sd(settings.worst)
    gain = (m_w - m_d) if settings.mode == "max" else (m_d - m_w)
    if seeds == 1:
        return (
            f"confirmation: one seed: no spread, so no verdict ({best.label} {m_w:.4g} against "
            f"the default's {m_d:.4g}: a gain of {gain:.3g}; use --confirm-seeds 2 or more)"
        )
    spread = max(sd_w, sd_d)
    beats = "beats" if gain > spread else "does not beat"
    return (
        f"confirmation: {best.label} {beats} the default by more than the seed spread "
        f"({m_w:.4g} ± {sd_w:.2g} against {m_d:.4g} ± {sd_d:.2g}: a gain of {gain:.3g}, "
        f"spread {spread:.2g})"
    )


def summary_lines(
    candidates: list[Candidate], seeds: list[int], settings: SearchSettings
) -> list[str]:
    label = objective_label(settings)
    lines = [
        f"confirmation: {len(candidates) - 1} searched config(s) and the default, "
        f"{len(seeds)} fresh seed(s) each ({', '.join(map(str, seeds))}), "
        f"{settings.epochs} epochs",
        "",
    ]
    header = ["config", f"search {label}", "confirmed mean", "sd", "runs", "per seed"]
    body = []
    for c in candidates:
        mean, sd = c.mean_sd(settings.worst)
        per_seed = ", ".join(f"{v:.4g}" for v in c.values(settings.worst))
        diverged = sum(r.status == Status.DIVERGED for r in c.runs)
        body.append(
            [
                c.label,
                "-" if c.search_value is None else f"{c.search_value:.4g}",
                f"{mean:.4g}",
                f"{sd:.2g}",
                f"{len(c.values(settings.worst))}"
                + (f" ({diverged} diverged)" if diverged else ""),
                per_seed,
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    for line in [header, ["-" * w for w in widths], *body]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    lines += ["", verdict(candidates, settings, len(seeds))]
    return lines


def write_csv(candidates: list[Candidate], space: SearchSpace, path: Path, worst: float) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", *space.knobs, "seed", OBJECTIVE, "status", "path"])
        for c in candidates:
            for r in c.runs:
                w.writerow(
                    [
                        c.label,
                        *(c.params.get(k) for k in space.knobs),
                        r.config.get("seed"),
                        r.objective,
                        r.status,
                        r.path,
                    ]
                )


def report(  # noqa: PLR0913 (what ran, what was searched, where to write: tests pass each)
    candidates: list[Candidate],
    seeds: list[int],
    space: SearchSpace,
    settings: SearchSettings,
    base: TrainConfig,
    folder: Path,
    experiment: str,
    export: Path | None,
    keep: int | None = None,
) -> list[str]:
    """Summary lines, ``confirm.csv``, and the export of the winner by mean; then only the
    best ``keep`` runs and the exported one keep a best.pt (None: all do)."""
    lines = summary_lines(candidates, seeds, settings)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(candidates, space, folder / CONFIRM_CSV, settings.worst)
    lines.append(f"confirmation runs: {folder / CONFIRM_CSV}")
    best = winner(candidates, settings, len(seeds))
    if best is None or unfinished(candidates):
        return (
            lines  # nothing to export, or not yet: best_config.yaml and --export stay as they are
        )
    sign = 1.0 if settings.mode == "max" else -1.0
    runs = [r for r in best.runs if r.objective is not None and r.status == Status.COMPLETED]
    if not runs:  # every seed of the best config diverged: no checkpoint worth exporting
        return lines
    run = max(runs, key=lambda r: sign * (r.objective or 0.0))  # best is set: filtered
    mean, sd = best.mean_sd(settings.worst)
    confirmed = {
        "config": best.label,
        "mean": mean,
        "sd": sd,
        "seeds": seeds,
        "values": best.values(settings.worst),
    }
    for target in [folder / "best_config.yaml", *([export] if export else [])]:
        export_best(run, base, settings, target, experiment + CONFIRM_SUFFIX, confirmed)
        lines.append(
            f"best config (by confirmed mean: {best.label}, its best seed "
            f"{run.config.get('seed')}): {target}"
        )
    runs_ = [r for c in candidates for r in c.runs]
    enforce(ended_rows(runs_, settings.epochs, settings.mode), keep, protect=[run.path])
    return lines
