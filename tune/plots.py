"""The search's plots (matplotlib, Agg): metric and loss curves per trial, each knob against the
objective, and the knobs' importance. Written by ``tune.report.write_report`` into ``plots/``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.results import EPOCH, TRAIN_LOSS, Status
from tune.space import SearchSettings, SearchSpace

if TYPE_CHECKING:
    from tune.results import TrialRow

STATUS_COLORS: dict[str, str] = {
    Status.COMPLETED: "tab:green",
    Status.STOPPED: "tab:orange",
    Status.DIVERGED: "tab:red",
    Status.ERRORED: "black",
    Status.UNFINISHED: "tab:blue",
}


def _plt() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[TrialRow], settings: SearchSettings, path: Path) -> None:
    """The metric and the training loss per epoch for every trial, coloured by status."""
    plt = _plt()
    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    seen = set()
    for r in rows:
        if not r.history:
            continue
        epochs = [h[EPOCH] for h in r.history]
        color = STATUS_COLORS.get(r.status, "grey")
        label = r.status if r.status not in seen else None
        seen.add(r.status)
        ax_m.plot(
            epochs,
            [h[settings.metric] for h in r.history],
            color=color,
            alpha=0.8,
            marker=".",
            label=label,
        )
        losses = [h[TRAIN_LOSS] if math.isfinite(h[TRAIN_LOSS]) else math.nan for h in r.history]
        ax_l.plot(epochs, losses, color=color, alpha=0.8, marker=".")
        if r.status == Status.DIVERGED:
            ax_l.plot(
                epochs[-1],
                next((x for x in reversed(losses) if math.isfinite(x)), 0) or 1,
                "x",
                color=color,
                markersize=10,
            )
    ax_m.set(xlabel="epoch", ylabel=f"val {settings.metric}", title="metric per epoch")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="training loss per epoch (x: diverged)")
    ax_l.set_yscale("log")
    ax_m.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_knobs(
    rows: list[TrialRow], space: SearchSpace, settings: SearchSettings, path: Path
) -> None:
    """Each knob's sampled values against the trial's best metric, coloured by status."""
    plt = _plt()
    n = len(space.knobs)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    for ax, (key, dist) in zip(axes.flat, space.knobs.items(), strict=False):
        for r in rows:
            if r.objective is None or key not in r.params:
                continue
            x = r.params[key]
            if dist.kind == "choice":
                x = list(dist.choices).index(x) if x in dist.choices else math.nan
            ax.scatter([x], [r.objective], color=STATUS_COLORS.get(r.status, "grey"), s=22)
        if dist.kind == "loguniform":
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        if dist.kind == "choice":
            ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
        ax.set(xlabel=key, ylabel=f"best {settings.metric}")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=c, label=s) for s, c in STATUS_COLORS.items()
    ]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9 if nrows == 1 else 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importance(values: dict[str, float], path: Path) -> None:
    plt = _plt()
    keys = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(keys) + 1.2))
    ax.barh(keys, [values[k] for k in keys], color="tab:blue")
    ax.set(xlabel="importance (Optuna, normalised)", title="parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


VERDICT_COLORS = {"helped": "tab:green", "hurt": "tab:red", "within noise": "tab:gray"}


def plot_forest(doc: dict[str, Any], path: Path) -> None:
    """The fix audit's forest plot: per response (objective and F1), each change's effect with
    its interval, coloured by verdict; a change that cannot move a response is written so."""
    plt = _plt()
    panels = [k for k in ("objective", "F1") if k in doc["metrics"]]
    names = list(doc["metrics"][panels[0]]["effects"]) if panels else []
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 1.2 + 0.5 * len(names)), squeeze=False
    )
    for ax, key in zip(axes[0], panels, strict=True):
        entry = doc["metrics"][key]
        for y, name in enumerate(names):
            e = entry["effects"].get(name, {})
            if "effect" not in e:
                ax.text(0, y, e.get("verdict", "n/a"), ha="center", va="center", fontsize=8)
                continue
            color = VERDICT_COLORS.get(e["verdict"], "black")
            ax.errorbar(
                e["effect"],
                y,
                xerr=[[e["effect"] - e["low"]], [e["high"] - e["effect"]]],
                fmt="o",
                color=color,
                capsize=4,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_xlabel(f"effect on {entry['label']} (AFTER - BEFORE, 95% CI)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
