"""Results of a search: the summary table, results.csv, the best config, plots and importance.

Each trial ends with one status, derived here from what Ray kept (Ray marks ASHA and stopper
stops alike as TERMINATED):

- ``errored``: the trial raised more often than ``--max-failures`` allowed (the error is shown);
- ``diverged``: the divergence stopper or the training loop's ``DivergedError`` ended it (the
  last result carries ``diverged: True`` and the rule);
- ``completed``: it reached the epochs per trial (ASHA's ``max_t``);
- ``stopped by ASHA``: it ended earlier without diverging;
- ``unfinished``: the search was interrupted before it ended (resume to finish it).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from cattle_yolo.device import precision_name
from cattle_yolo.files import atomic_write_text
from tune import storage, threshold
from tune.plots import plot_curves, plot_importance, plot_knobs
from tune.results import (
    AMP,
    DIVERGED,
    DIVERGED_RULE,
    DONE,
    EPOCH,
    OBJECTIVE,
    OBJECTIVE_EPOCH,
    THREADS,
    THRESHOLD_KEYS,
    TRAIN_LOSS,
    Status,
    TrialRow,
)
from tune.space import SearchSettings, SearchSpace, resolve_trial_config, trial_values


def trial_status(
    metrics: dict[str, Any], error: BaseException | None, max_t: int
) -> tuple[str, str]:
    """(status, detail) of a trial from its last result and error."""
    epoch = int(metrics.get(EPOCH) or 0)
    if error is not None:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        return Status.ERRORED.value, (lines[-1] if lines else type(error).__name__)[:160]
    if metrics.get(DIVERGED):
        return Status.DIVERGED.value, f"{metrics.get(DIVERGED_RULE, '')} (epoch {epoch})"
    if epoch >= max_t:
        return Status.COMPLETED.value, ""
    if metrics.get(DONE):
        return Status.STOPPED.value, f"at epoch {epoch} of {max_t}"
    return Status.UNFINISHED.value, f"at epoch {epoch} of {max_t}"


def _history(result: Any, metric: str) -> list[dict[str, float]]:
    df = result.metrics_dataframe
    if df is None or S.EPOCH not in df:
        return []
    by_epoch: dict[int, dict[str, float]] = {}
    for rec in df.to_dict("records"):  # a retried epoch appears twice: keep the later one
        if rec.get(EPOCH) is None or (isinstance(rec[EPOCH], float) and math.isnan(rec[EPOCH])):
            continue
        by_epoch[int(rec[EPOCH])] = {
            EPOCH: int(rec[EPOCH]),
            TRAIN_LOSS: float(rec.get(TRAIN_LOSS, math.nan)),
            metric: float(rec.get(metric, math.nan)),
        }
    return [by_epoch[e] for e in sorted(by_epoch)]


def _params(result: Any) -> dict[str, Any]:
    if result.config:
        return trial_values(result.config)
    params_file = Path(result.path) / "params.json"  # a trial that never reported
    return trial_values(json.loads(params_file.read_text())) if params_file.is_file() else {}


def result_uri(result: Any) -> str:
    """A trial's folder: a filesystem path, or a URI with its scheme on cloud storage."""
    return storage.uri(getattr(result, "filesystem", None), result.path)


def trial_rows(results: Any, settings: SearchSettings) -> list[TrialRow]:
    """One row per trial of a ``ResultGrid``, in trial order."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        status, detail = trial_status(metrics, result.error, settings.epochs)
        history = _history(result, settings.metric)
        best = metrics.get(OBJECTIVE)
        finite = isinstance(best, int | float) and math.isfinite(best)
        rows.append(
            TrialRow(
                name=Path(result.path).name,
                params=_params(result),
                objective=float(best) if finite and best is not None else None,
                best_epoch=int(metrics.get(OBJECTIVE_EPOCH) or 0),
                epochs_run=int(
                    max([h[EPOCH] for h in history], default=int(metrics.get(EPOCH) or 0))
                ),
                status=status,
                detail=detail,
                path=result_uri(result),
                threads=int(metrics.get(THREADS) or 0),
                history=history,
                threshold={k: float(metrics[k]) for k in THRESHOLD_KEYS if k in metrics},
                config=dict(result.config or {}),
                checkpoint_epoch=int(metrics.get(S.BEST_EPOCH) or 0),
                amp=str(metrics.get(AMP) or ""),
            )
        )
    return sorted(rows, key=lambda r: r.name)


def pick_best(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best completed trial (ASHA's survivors); if none completed, the best ASHA-stopped."""
    for statuses in ((Status.COMPLETED,), (Status.STOPPED,)):
        pool = [r for r in rows if r.status in statuses and r.objective is not None]
        if pool:
            key = (lambda r: r.objective) if mode == "max" else (lambda r: -r.objective)
            return max(pool, key=key)
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def objective_label(settings: SearchSettings) -> str:
    """How the summary names a trial's objective, e.g. ``best mAP50_95`` or
    ``mean last 3 mAP50_95``."""
    if settings.objective == "last_mean":
        return f"mean last {settings.objective_window} {settings.metric}"
    return f"best {settings.metric}"


def summary_table(rows: list[TrialRow], space: SearchSpace, settings: SearchSettings) -> str:
    """The end-of-search table: trial, sampled values, best metric and epoch, epochs, status."""
    header = [
        "trial",
        *space.knobs,
        objective_label(settings),
        "at epoch",
        "epochs",
        "threshold",
        "P",
        "R",
        "F1",
        "status",
    ]
    body = [
        [
            r.name,
            *(_fmt(r.params.get(k)) for k in space.knobs),
            _fmt(r.objective),
            str(r.best_epoch or "-"),
            str(r.epochs_run),
            *(_fmt(r.threshold.get(k)) for k in THRESHOLD_KEYS),
            r.status + (f": {r.detail}" if r.detail else ""),
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=False)]
    widths[-1] = len(header[-1])  # the status column is last and may run long
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(
    rows: list[TrialRow], space: SearchSpace, settings: SearchSettings, path: Path
) -> None:
    fields = [
        "trial",
        *space.knobs,
        OBJECTIVE,
        OBJECTIVE_EPOCH,
        "epochs_run",
        *THRESHOLD_KEYS,
        AMP,
        "status",
        "detail",
        "path",
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            writer.writerow(
                [
                    r.name,
                    *(r.params.get(k) for k in space.knobs),
                    r.objective,
                    r.best_epoch,
                    r.epochs_run,
                    *(r.threshold.get(k) for k in THRESHOLD_KEYS),
                    r.amp,
                    r.status,
                    r.detail,
                    r.path,
                ]
            )


def best_config(row: TrialRow, base: TrainConfig) -> TrainConfig:
    """The best trial's complete config, ready for ``cattle_yolo train --config``: its own run
    folder and device are cleared so a new run neither overwrites the trial nor pins a device,
    and ``score_threshold`` is the one the trial chose after training (its F1-best on val)."""
    cfg = resolve_trial_config(base, row.params, out=None, device="auto")
    cfg = threshold.apply(cfg, row.threshold)  # chosen after training, if it was
    # On CPU a trial repeats exactly only with its own thread count: record it in the config.
    return cfg.replace(threads=row.threads) if row.threads and not cfg.threads else cfg


def export_best(
    row: TrialRow,
    base: TrainConfig,
    settings: SearchSettings,
    path: Path,
    experiment: str,
    confirmed: dict[str, Any] | None = None,
) -> None:
    """Write ``{config: <TrainConfig>, checkpoint, trial, metric, value, epoch, ...}``:
    ``TrainConfig.load`` reads the ``config`` section and ignores the rest. ``confirmed``: the
    config's mean and sd over fresh seeds, when a confirmation ran."""
    checkpoint = f"{row.path.rstrip('/')}/run/models/best.pt"  # a path or a URI (s3://...)
    doc = {
        "config": best_config(row, base).to_dict(),
        "checkpoint": checkpoint,
        "trial": row.name,
        "experiment": experiment,
        "metric": settings.metric,
        "objective": objective_label(settings),
        "value": row.objective,
        "epoch": row.best_epoch,
        "checkpoint_epoch": row.checkpoint_epoch,
        "threads": row.threads,
        "trained_in": precision_name(row.amp) if row.amp else None,  # what amp: auto chose
        **({"confirmed": confirmed} if confirmed else {}),
        **row.threshold,
    }
    if confirmed:  # the config's value is its mean over fresh seeds; the checkpoint is one seed's
        doc["value"] = confirmed["mean"]
        doc["checkpoint_value"] = row.objective
        value = (
            f"confirmed mean {_fmt(confirmed['mean'])} ± {_fmt(confirmed['sd'])} over "
            f"{len(confirmed['values'])} seeds (checkpoint: seed {row.config.get('seed')}, "
            f"{_fmt(row.objective)} at epoch {row.best_epoch})"
        )
    else:
        value = f"{_fmt(row.objective)} at epoch {row.best_epoch}"
    held = row.checkpoint_epoch
    if held and held != row.best_epoch:
        value += f"; best.pt holds epoch {held}, the best by {settings.metric}"
    header = (
        f"# Best trial {row.name} of {experiment}: {objective_label(settings)} {value}.\n"
        f"# Train with it (config.threads is the trial's CPU thread "
        f"count, so a CPU run repeats it exactly):\n"
        f"#   python -m cattle_yolo train --config {path.name}\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))


def importance(
    rows: list[TrialRow], space: SearchSpace, settings: SearchSettings
) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importance over the finished trials (errored ones left out),
    computed on a study rebuilt from the results; (None, why) where it cannot be computed."""
    import optuna

    from tune.study import optuna_distribution

    # By knob value (iou_end itself, not its sampling fraction); a post-hoc knob is not listed.
    distributions = {key: optuna_distribution(dist) for key, dist in space.knobs.items()}
    usable = [
        r
        for r in rows
        if r.objective is not None
        and r.status != Status.ERRORED
        and all(k in r.params and d.contains(r.params[k]) for k, d in space.knobs.items())
    ]
    if len(usable) < 4:
        return None, f"needs at least 4 finished trials, have {len(usable)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if settings.mode == "max" else "minimize")
    for r in usable:
        params = {k: r.params[k] for k in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=r.objective)
        )
    try:
        with warnings.catch_warnings():  # PED-ANOVA warns when few trials make them all equal
            warnings.simplefilter("ignore")
            values = dict(optuna.importance.get_param_importances(study))
    except Exception as e:  # too few distinct values, a degenerate study...
        return None, f"{type(e).__name__}: {e}"
    if len(set(values.values())) == 1 and len(values) > 1:
        return None, f"too few trials ({len(usable)}) to tell the knobs apart"
    return values, ""


def epochs_saved(rows: list[TrialRow], settings: SearchSettings) -> str:
    """Epochs trained against running every finished trial to the end, and who saved them."""
    finished = [r for r in rows if r.status != Status.UNFINISHED]
    run = sum(r.epochs_run for r in finished)
    saved = {
        s: sum(settings.epochs - r.epochs_run for r in finished if r.status == s)
        for s in (Status.STOPPED, Status.DIVERGED, Status.ERRORED)
    }
    full = settings.epochs * len(finished)
    return (
        f"epochs trained: {run} of {full} ({run / max(1, full):.0%}); saved by ASHA "
        f"{saved[Status.STOPPED]}, by the divergence rules {saved[Status.DIVERGED]}, "
        f"lost to errors {saved[Status.ERRORED]}"
    )


def write_report(
    rows: list[TrialRow],
    space: SearchSpace,
    settings: SearchSettings,
    base: TrainConfig,
    folder: Path,
    experiment: str,
    export: Path | None = None,
) -> list[str]:
    """Everything at the end of a search; returns the lines to print."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [summary_table(rows, space, settings), ""]
    write_csv(rows, space, settings, folder / "results.csv")
    counts = {s: sum(r.status == s for r in rows) for s in Status}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    lines.append(epochs_saved(rows, settings))
    precisions = sorted({precision_name(r.amp) for r in rows if r.amp})
    if precisions:
        lines.append(
            f"precision: {', '.join(precisions)} (the model's forward; loss and metrics fp32)"
        )
    default = next(
        (r for r in rows if all(r.params.get(k) == getattr(base, k) for k in space.knobs)), None
    )
    if default is not None:
        lines.append(
            f"hand-fixed default: {default.name}, {objective_label(settings)} "
            f"{_fmt(default.objective)} at epoch {default.best_epoch} ({default.status})"
        )
    lines.append(f"results: {folder / 'results.csv'}")
    best = pick_best(rows, settings.mode)
    if best is None:
        lines.append("no trial finished without diverging or erroring: no best config to export")
    else:
        lines.append(
            f"best trial: {best.name}, {objective_label(settings)} {_fmt(best.objective)} at "
            f"epoch {best.best_epoch}: "
            + ", ".join(f"{k}={_fmt(best.params.get(k))}" for k in space.knobs)
        )
        said = threshold.describe(best.threshold, _fmt)
        if said:
            lines.append(said)
        for target in [folder / "best_config.yaml", *([export] if export else [])]:
            export_best(best, base, settings, target, experiment)
            lines.append(f"best config: {target}")
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    plot_curves(rows, settings, plots / "curves.png")
    plot_knobs(rows, space, settings, plots / "knobs.png")
    values, why = importance(rows, space, settings)
    if values is not None:
        plot_importance(values, plots / "importance.png")
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    else:
        lines.append(f"importance: not computed ({why})")
    lines.append(f"plots: {plots}")
    return lines
