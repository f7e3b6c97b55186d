"""Bounded disk: what a search keeps on its storage, estimated before it starts.

A running trial holds one resumable checkpoint (``run/models/last.pt``: weights, EMA weights,
optimizer state) and one inference checkpoint (``best.pt``: EMA weights, config and metrics, a
quarter of the size; written by the training loop). When a trial ends (completed, stopped by
ASHA or diverged) its ``last.pt`` goes (once Tune's saved state records the end, see
``DiskKeeper``), and only the best ``keep`` ended trials keep their
``best.pt`` (completed trials first, then by objective, as the export picks). Every trial keeps
its config, metrics, val detections and logs. An errored trial is left alone: resuming the
search retries it from its ``last.pt``.

So at any time a search holds at most ``concurrent`` resumable checkpoints (plus one being
written per trial) and ``concurrent + keep`` inference ones, whatever its trial count.
``DiskKeeper`` applies this as trials end (a Tune callback on the driver; it reads the trials'
folders each time, so it works after a resume), and ``enforce`` once more at the end. On cloud
storage the same rule holds;
there a trial's ``last.pt`` lives in its Tune checkpoints (``checkpoint_*/last.pt``, the latest
two), which go when it ends.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from cattle_yolo.config import TrainConfig
from tune.results import DIVERGED, ENDED, EPOCH, OBJECTIVE, Status
from tune.storage import delete_files, file_sizes, uri

MARGIN = 1.1  # on top of the estimate: logs, Tune's files, allocator slack
MARGIN_BYTES = 100 * 2**20


class DiskError(RuntimeError):
    """The search would not fit on the storage's free space."""


@dataclass(frozen=True)
class Ended:
    """An ended trial: its folder (a path, or a URI on cloud storage) and what ranks it
    (higher is better)."""

    path: str
    rank: tuple[int, float]


RESUMABLE = ["run/models/last.pt", "checkpoint_*/last.pt"]  # the latter on cloud storage
INFERENCE = ["run/models/best.pt"]


def checkpoint_bytes(cfg: TrainConfig, num_classes: int) -> tuple[int, int]:
    """(resumable, inference) checkpoint sizes in bytes for ``cfg``'s model.

    Resumable: weights + EMA weights + AdamW's two moments = 4 copies of the parameters (and
    the buffers twice); inference: one copy of the weights and buffers.
    """
    from cattle_yolo.model import CattleYOLO

    model = CattleYOLO(num_classes, cfg.replace(pretrained=False))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 4 * params + 2 * buffers, params + buffers


def peak_bytes(resumable: int, inference: int, concurrent: int, keep: int) -> int:
    """The most a search holds: per running trial its last.pt, the next one being written and
    its best.pt; plus ``keep`` best.pt of ended trials; with a margin."""
    need = concurrent * (2 * resumable + inference) + keep * inference
    return int(need * MARGIN) + MARGIN_BYTES


def check_free_space(path: Path, need: int, what: str) -> int:
    """Raise ``DiskError`` when ``need`` bytes do not fit at ``path``; returns the free bytes."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DiskError(
            f"{what} needs about {need / 2**30:.2f} GiB at {path} at its peak, but only "
            f"{free / 2**30:.2f} GiB is free there: free some space, lower --keep-weights or "
            "run fewer trials at once"
        )
    return free


def folder_bytes(path: Path) -> int:
    """Bytes the files under ``path`` use (hard links counted once)."""
    seen, total = set(), 0
    for f in path.rglob("*"):
        try:
            st = f.lstat()
        except FileNotFoundError:
            continue
        if f.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def rank(result: dict[str, Any], max_epochs: int, mode: str) -> tuple[int, float]:
    """Completed trials first, then by objective (the order ``report.pick_best`` uses)."""
    objective = result.get(OBJECTIVE)
    value = float(objective) if isinstance(objective, int | float) else math.nan
    if not math.isfinite(value) or result.get(DIVERGED):
        return (-1, -math.inf)
    completed = int(result.get(EPOCH) or 0) >= max_epochs
    return (1 if completed else 0, value if mode == "max" else -value)


def enforce(
    ended: Iterable[Ended],
    keep: int | None,
    protect: Iterable[str | Path] = (),
    cleared: set[str] | None = None,
    hold: Iterable[str] = (),
) -> int:
    """Drop ended trials' last.pt, and best.pt beyond the top ``keep`` (None: keep every
    best.pt) and ``protect``; returns the bytes freed. ``cleared`` (updated) names trials
    known to hold no weights, which are not listed again (a listing is a request on cloud
    storage). Trials in ``hold`` keep their last.pt for now."""
    ended = sorted(ended, key=lambda e: e.rank, reverse=True)
    kept = ended[:keep] if keep is not None else ended
    keep_set = {str(e.path) for e in kept} | {str(p) for p in protect}
    held = set(hold)
    cleared = set() if cleared is None else cleared
    freed = 0
    for e in ended:
        where = str(e.path)
        if where in cleared:
            continue
        patterns = ([] if where in held else RESUMABLE) + ([] if where in keep_set else INFERENCE)
        doomed = file_sizes(where, patterns)
        delete_files(where, list(doomed))
        freed += sum(doomed.values())
        if where not in keep_set and where not in held:
            cleared.add(where)
    return freed


class DiskKeeper(tune.Callback):
    """Applies ``enforce`` on the driver each time a trial ends.

    A trial that just ended keeps its last.pt until Tune has saved an experiment state that
    records the end: Tune saves its state every so often, and a driver killed before that save
    resumes the trial as unfinished; without its last.pt it would train again from epoch 1
    (the fault campaign, benchmarks/chaos.py, measured a whole confirmation run trained twice).
    Tune asks callbacks for their state (``get_state``) while it saves; at the next save, that
    one is on storage, and the last.pt of the trials it covers go.
    """

    def __init__(self, keep: int | None, max_epochs: int, mode: str) -> None:
        self.keep, self.max_epochs, self.mode = keep, max_epochs, mode
        self.cleared: set[str] = set()  # trials left with no weights (relisted after a resume)
        self.unsaved: set[str] = set()  # ended since the last state save: last.pt kept
        self.saving: set[str] = set()  # ended before the save in progress: last.pt kept

    def get_state(self) -> dict[str, Any] | None:
        """Tune is saving its experiment state; the previous save is complete by now."""
        self._release(self.saving)
        self.saving, self.unsaved = self.unsaved, set()
        return None  # nothing to restore: a resumed search relists its trials

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._release(self.saving | self.unsaved)
        self.saving, self.unsaved = set(), set()

    def _release(self, paths: Iterable[str]) -> None:
        for where in paths:
            delete_files(where, list(file_sizes(where, RESUMABLE)))

    def _ended(self, trial: Any) -> Ended:
        where = uri(trial.storage.storage_filesystem, trial.path)
        return Ended(where, rank(trial.last_result or {}, self.max_epochs, self.mode))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        ended = [self._ended(t) for t in trials if t.status == "TERMINATED" and t.path]
        this = self._ended(trial) if trial.path else None
        if this is not None and all(e.path != this.path for e in ended):
            ended.append(this)  # not yet TERMINATED
        if this is not None:
            self.unsaved.add(this.path)
        enforce(ended, self.keep, cleared=self.cleared, hold=self.unsaved | self.saving)


def ended_rows(rows: Iterable[Any], max_epochs: int, mode: str) -> list[Ended]:
    """``Ended`` entries for the summary's rows (``tune.report.TrialRow``) that ended for good:
    completed, stopped by ASHA or diverged (errored and unfinished ones may still resume)."""
    return [
        Ended(
            r.path,
            rank(
                {
                    OBJECTIVE: r.objective,
                    EPOCH: r.epochs_run,
                    DIVERGED: r.status == Status.DIVERGED,
                },
                max_epochs,
                mode,
            ),
        )
        for r in rows
        if r.status in ENDED
    ]
