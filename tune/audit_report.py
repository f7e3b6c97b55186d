"""The fix audit's analysis and report (see ``tune.audit`` for the plan and the runs).

For every response (the objective, mAP50 at the objective's epoch, F1 at the score threshold
and the last epoch's val loss): each change's main effect with its 95% interval and verdict
(``tune.design``), the two-factor interactions the design resolves, and BEFORE, AFTER and the
best design row as mean ± sd over the seeds. Written as ``audit.md`` (also printed),
``audit_runs.csv``, ``audit.json`` and the forest plot ``audit_forest.png``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cattle_yolo import stats as S
from cattle_yolo.files import atomic_write_text
from tune import design as doe
from tune.audit import LOSS_KEYS, AuditPlan, Run, describe, levels
from tune.report import objective_label
from tune.results import OBJECTIVE, Status

REPORT_MD, RUNS_CSV, REPORT_JSON, FOREST_PNG = (
    "audit.md",
    "audit_runs.csv",
    "audit.json",
    "audit_forest.png",
)

# --- analysis ------------------------------------------------------------------------------

# (key, label, mode): the responses every audit reports besides the objective
SECONDARY = (
    (S.MAP50, "mAP50 (at the objective's epoch)", "max"),
    ("F1", "F1 at the score threshold (best.pt)", "max"),  # the audit's own: at both thresholds
    (S.VAL_LOSS, "val loss (last epoch)", "min"),
)


def response(plan: AuditPlan, runs: list[Run], key: str) -> np.ndarray | None:
    """The ``(rows, seeds)`` table of one response; None if a run is missing or non-finite.
    F1 with a post-hoc threshold: each run's mean over the threshold's two values."""
    y = np.full((len(plan.x), len(plan.seeds)), math.nan)
    for run in runs:
        if run.status not in (Status.COMPLETED, Status.DIVERGED) or run.seed not in plan.seeds:
            continue
        if key == "F1":
            value = statistics.fmean(run.f1.values()) if run.f1 else math.nan
        else:
            value = getattr(run, key)
        y[run.row, plan.seeds.index(run.seed)] = value
    return y if np.isfinite(y).all() else None


def threshold_differences(plan: AuditPlan, runs: list[Run]) -> np.ndarray | None:
    """F1 at AFTER's threshold minus at BEFORE's, per run: ``(rows, seeds)``."""
    d = np.full((len(plan.x), len(plan.seeds)), math.nan)
    for run in runs:
        if "1" in run.f1 and "-1" in run.f1 and run.seed in plan.seeds:
            d[run.row, plan.seeds.index(run.seed)] = run.f1["1"] - run.f1["-1"]
    return d if np.isfinite(d).all() else None


def row_value(plan: AuditPlan, runs: list[Run], row: int, key: str, level: int) -> list[float]:
    """One row's values over its seeds; F1 at the post-hoc threshold's ``level``."""
    out = []
    for run in runs:
        if run.row != row or run.status not in (Status.COMPLETED, Status.DIVERGED):
            continue
        if key == "F1":
            out.append(run.f1.get(str(level), run.f1.get("own", math.nan)))
        else:
            out.append(getattr(run, key))
    return out


def _estimate_doc(est: doe.Estimate, mode: str) -> dict[str, Any]:
    return {
        "effect": est.value,
        "low": est.low,
        "high": est.high,
        "se": est.se,
        "df": est.df,
        "verdict": est.verdict(mode),
    }


def analyse(plan: AuditPlan, runs: list[Run]) -> dict[str, Any]:
    """Effects, interactions and the rows' summaries of every response."""
    oat = plan.design.startswith("one at a time")
    contrasts = doe.main_contrasts(plan.x, oat) if plan.training else []
    chains = doe.interaction_chains(plan.x) if plan.training and not oat else []
    metrics = [(OBJECTIVE, objective_label(plan.settings), plan.settings.mode), *SECONDARY]
    if plan.settings.metric == "mAP50":
        metrics = [m for m in metrics if m[0] != "mAP50"]
    doc: dict[str, Any] = {"metrics": {}}
    for key, label, mode in metrics:
        y = response(plan, runs, key)
        entry: dict[str, Any] = {"label": label, "mode": mode, "effects": {}, "interactions": []}
        if y is None:
            missing = sum(
                r.status not in (Status.COMPLETED, Status.DIVERGED)
                or (key == S.VAL_LOSS and not math.isfinite(r.val_loss))
                for r in runs
            )
            entry["unavailable"] = f"{missing} run(s) without a finite value"
        else:
            for factor, c in zip(plan.training, contrasts, strict=True):
                effect = _estimate_doc(doe.estimate(y, c["effect"]), mode)
                for part in ("from_before", "from_after"):
                    if part in c:
                        effect[part] = _estimate_doc(doe.estimate(y, c[part]), mode)
                entry["effects"][factor.name] = effect
            for pairs, chain in chains:
                names = [f"{plan.training[i].name} x {plan.training[j].name}" for i, j in pairs]
                entry["interactions"].append(
                    {"pairs": names, **_estimate_doc(doe.estimate(y, chain), mode)}
                )
        if plan.post_hoc is not None:
            d = threshold_differences(plan, runs) if key == "F1" else None
            entry["effects"][plan.post_hoc.name] = (
                {**_estimate_doc(doe.mean_difference(d), mode), "post_hoc": True}
                if d is not None
                else {
                    "post_hoc": True,
                    "verdict": "cannot change it (applied after training)"
                    if key != "F1"
                    else "unavailable",
                }
            )
        entry["rows"] = _rows_summary(plan, runs, key)
        doc["metrics"][key] = entry
    return doc


def _rows_summary(plan: AuditPlan, runs: list[Run], key: str) -> dict[str, Any]:
    """BEFORE, AFTER and the best design row by objective: mean, sd, values."""

    def stat(row: int, level: int) -> dict[str, Any]:
        v = [x for x in row_value(plan, runs, row, key, level) if math.isfinite(x)]
        return {
            "row": row,
            "label": plan.row_label(row),
            "mean": statistics.fmean(v) if v else math.nan,
            "sd": statistics.stdev(v) if len(v) > 1 else math.nan,
            "values": v,
        }

    k = len(plan.training)
    before = doe.row_index(plan.x, np.full(k, -1)) if k else 0
    after = doe.row_index(plan.x, np.full(k, 1)) if k else 0
    sign = 1.0 if plan.settings.mode == "max" else -1.0
    means = [
        statistics.fmean(v) if (v := row_value(plan, runs, r, OBJECTIVE, 1)) else -math.inf
        for r in range(len(plan.x))
    ]
    best = max(range(len(plan.x)), key=lambda r: sign * means[r])
    out = {"BEFORE": stat(before, -1), "AFTER": stat(after, 1), "best row": stat(best, 1)}
    out["best row"]["levels"] = levels(plan, best)
    return out


# --- the report ----------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:+.{digits}f}" if isinstance(x, float) and math.isfinite(x) else "-"


def report_lines(plan: AuditPlan, runs: list[Run], doc: dict[str, Any]) -> list[str]:
    """The markdown report (also printed)."""
    lines = ["# Fix audit", "", *[f"    {x}" for x in describe(plan)], ""]
    counts = {s: sum(r.status == s for r in runs) for s in Status}
    lines.append("Runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".")
    for r in runs:
        if r.status == Status.DIVERGED:
            lines.append(f"- diverged (worst value): {plan.row_label(r.row)} seed {r.seed}")
    level = int(doe.LEVEL * 100)
    for key, entry in doc["metrics"].items():
        lines += ["", f"## {entry['label']}", ""]
        lines += _effect_lines(entry, level)
        if key == OBJECTIVE and entry["interactions"]:
            lines += _interaction_lines(entry["interactions"])
        if key == S.VAL_LOSS:
            lines += _loss_scale_note(plan)
        lines += ["", *_row_lines(entry["rows"])]
    lines += [
        "",
        f"Effects: AFTER's level minus BEFORE's, averaged over the design; {level}% intervals "
        "from the row x seed residual (seeds paired); per change, not adjusted for the number "
        "of changes. Diverged runs count with the worst value (F1 0).",
    ]
    return lines


def _effect_lines(entry: dict[str, Any], level: int) -> list[str]:
    """One response's table of main effects, or why it has none."""
    if "unavailable" in entry:
        return [f"No effects: {entry['unavailable']}."]
    lines = [
        f"| change | effect (AFTER - BEFORE) | {level}% CI | verdict |",
        "|---|---|---|---|",
    ]
    for name, e in entry["effects"].items():
        if "effect" not in e:
            lines.append(f"| {name} | - | - | {e['verdict']} |")
            continue
        cell = f"{_fmt(e['effect'])}"
        if "from_before" in e:
            cell += (
                f" (on BEFORE {_fmt(e['from_before']['effect'])}, "
                f"off AFTER {_fmt(e['from_after']['effect'])})"
            )
        tag = " (applied after training)" if e.get("post_hoc") else ""
        lines.append(
            f"| {name}{tag} | {cell} | [{_fmt(e['low'])}, {_fmt(e['high'])}] | {e['verdict']} |"
        )
    return lines


def _interaction_lines(interactions: list[dict[str, Any]]) -> list[str]:
    return [
        "",
        "Two-factor interactions (a chain: the design cannot tell them apart):",
        *(
            f"- {' = '.join(i['pairs'])}: {_fmt(i['effect'])} "
            f"[{_fmt(i['low'])}, {_fmt(i['high'])}], {i['verdict']}"
            for i in interactions
        ),
    ]


def _loss_scale_note(plan: AuditPlan) -> list[str]:
    """A note under the val loss when a change alters the loss itself."""
    loss = [f.name for f in plan.training if set(f.keys) & set(LOSS_KEYS)]
    if not loss:
        return []
    return [
        "",
        f"{', '.join(loss)} change the loss itself, so their effect on the val "
        "loss is a change of scale, not of fit.",
    ]


def _row_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """BEFORE, AFTER and the best row as mean ± sd over the seeds."""
    lines = []
    for name, r in rows.items():
        where = f" ({r['label']}: {rows['best row']['levels']})" if name == "best row" else ""
        lines.append(
            f"- {name}{where}: {r['mean']:.4f} ± {r['sd']:.4f} over {len(r['values'])} seeds"
        )
    return lines


def write_report(plan: AuditPlan, runs: list[Run], folder: Path) -> list[str]:
    """``audit.md``, ``audit_runs.csv``, ``audit.json`` and the forest plot; returns the lines."""
    from tune.plots import plot_forest

    doc = analyse(plan, runs)
    folder.mkdir(parents=True, exist_ok=True)
    lines = report_lines(plan, runs, doc)
    atomic_write_text(folder / REPORT_MD, "\n".join(lines) + "\n")
    atomic_write_text(
        folder / REPORT_JSON,
        json.dumps({"plan": plan.to_dict(), **doc, "runs": [asdict(r) for r in runs]}, indent=1),
    )
    with (folder / RUNS_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        names = [fa.name for fa in plan.training]
        w.writerow(
            ["row", "label", *names, "seed", OBJECTIVE, "mAP50", "F1", "val_loss", "status", "path"]
        )
        for r in runs:
            w.writerow(
                [
                    r.row,
                    plan.row_label(r.row),
                    *(int(v) for v in plan.x[r.row]),
                    r.seed,
                    r.objective,
                    r.mAP50,
                    json.dumps(r.f1),
                    r.val_loss,
                    r.status + (f": {r.detail}" if r.detail else ""),
                    r.path,
                ]
            )
    plot_forest(doc, folder / FOREST_PNG)
    return [
        *lines,
        "",
        f"report: {folder / REPORT_MD} (and {RUNS_CSV}, {REPORT_JSON}, {FOREST_PNG})",
    ]
