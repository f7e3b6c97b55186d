"""One trial: the cattle_yolo training loop run as a Ray Tune function trainable.

``train_trial(config, ...)`` builds the trial's ``TrainConfig`` (base config + sampled values,
``out`` = the trial's run folder, ``device`` = what Ray assigned), resumes where the trial
stopped if it ran before, and trains with a callback that reports every epoch to Tune:

- metrics: the epoch's numeric stats (NaN passes through for the divergence stopper) plus
  ``objective`` (the best value of the search metric so far, always finite), ``diverged``,
  ``diverged_rule``, ``resumed_from_epoch`` and ``threads``;
- checkpoint: a Tune checkpoint per epoch holding the reporter's state.

Where the weights live. With storage on a filesystem path (local or shared), the run folder is
inside the trial's persistent folder, and its ``models/last.pt`` (written atomically by the
training loop every epoch) is what a retried or resumed trial continues from; the Tune
checkpoints stay a few bytes, and all of them are kept. That matters: Tune snapshots its
experiment state asynchronously, so a driver killed right after Tune deleted an old checkpoint
leaves the state pointing at a checkpoint that is gone, and the trial could not be restored
(we measured it with ``num_to_keep=1``). With cloud storage the run folder is a local working
folder, so each Tune checkpoint also carries a hard link (or copy) of ``last.pt``.

A ``DivergedError`` from the training loop ends the trial with one final result carrying the
worst objective, ``diverged: True`` and the reason; the trial then returns normally.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ray import tune

from cattle_yolo.config import TrainConfig
from tune.space import resolve_trial_config

OBJECTIVE = "objective"  # the result key Tune, ASHA and Optuna optimise
STATE_FILE = "search_state.json"  # reporter state stored in each Tune checkpoint
CHECKPOINT_FILE = "last.pt"


class EpochReporter:
    """Training callback: one ``tune.report`` with a checkpoint per epoch.

    ``weights_in_checkpoint``: also put ``last.pt`` in the Tune checkpoint (cloud storage).
    """

    def __init__(self, metric: str, mode: str, worst: float, weights_in_checkpoint: bool) -> None:
        self.metric, self.mode, self.worst = metric, mode, worst
        self.weights_in_checkpoint = weights_in_checkpoint
        self.best: float | None = None
        self.best_epoch = 0
        self.epoch = 0  # last epoch reported
        self.resumed_from_epoch = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def metrics(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The numbers of an epoch's stats plus the search's own keys."""
        out: dict[str, Any] = {}
        for key, value in stats.items():
            if isinstance(value, bool):
                out[key] = float(value)
            elif isinstance(value, int | float):
                out[key] = value if isinstance(value, int) else float(value)
        value = out.get(self.metric, math.nan)
        if math.isfinite(value) and self._better(value):
            self.best, self.best_epoch = float(value), int(stats["epoch"])
        out[OBJECTIVE] = self.best if self.best is not None else self.worst
        out["objective_epoch"] = self.best_epoch
        out["diverged"] = False
        out["diverged_rule"] = ""
        out["resumed_from_epoch"] = self.resumed_from_epoch
        out["threads"] = _torch_threads()
        return out

    def __call__(self, stats: dict[str, Any]) -> None:
        metrics = self.metrics(stats)
        self.epoch = int(stats["epoch"])
        with tempfile.TemporaryDirectory(prefix="cattle-ckpt-") as tmp:
            if self.weights_in_checkpoint:
                _link_or_copy(Path(stats["checkpoint"]), Path(tmp) / CHECKPOINT_FILE)
            state = {"best": self.best, "best_epoch": self.best_epoch, "epoch": self.epoch}
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def resume_point(self, folder: Path | None, run: Path) -> Path | None:
        """Restore from a Tune checkpoint folder (or none) and pick the weights to continue from.

        The run folder's ``models/last.pt`` wins when it exists: it is never behind the Tune
        checkpoint. Epochs it is ahead by (trained, but their results never reached Tune's
        stored state because the driver or the worker died first) are reported again from the
        run's ``metrics/training_metrics.jsonl``, so the trial's history has no gap.
        """
        if folder is not None and (folder / STATE_FILE).is_file():
            state = json.loads((folder / STATE_FILE).read_text())
            self.best, self.best_epoch, self.epoch = (
                state["best"],
                state["best_epoch"],
                state["epoch"],
            )
        weights = run / "models" / CHECKPOINT_FILE
        if not weights.is_file():
            weights = folder / CHECKPOINT_FILE if folder is not None else weights
        if not weights.is_file():
            return None
        from cattle_yolo.engine import load_checkpoint

        saved = load_checkpoint(weights)
        self.resumed_from_epoch = int(saved["epoch"])
        missed = {
            e: s
            for e, s in _logged_epochs(run).items()
            if self.epoch < e <= self.resumed_from_epoch
        }
        missed.setdefault(
            self.resumed_from_epoch, {**saved["metrics"], "epoch": self.resumed_from_epoch}
        )
        for epoch in sorted(e for e in missed if e > self.epoch):
            self({**missed[epoch], "checkpoint": str(weights)})
        return weights

    def report_diverged(self, reason: str, epoch: int) -> None:
        """The final result of a trial the training loop declared diverged."""
        tune.report({
            "epoch": epoch, "train_loss": math.nan, OBJECTIVE: self.worst,
            "objective_epoch": self.best_epoch, "diverged": True,
            "diverged_rule": f"training loop: {reason}", "resumed_from_epoch": self.resumed_from_epoch,
        })  # fmt: skip


def _logged_epochs(run: Path) -> dict[int, dict[str, Any]]:
    """epoch -> stats from the run's JSON-lines log (the later line wins for a repeated epoch)."""
    log = run / "metrics" / "training_metrics.jsonl"
    epochs = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            stats = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        epochs[int(stats["epoch"])] = stats
    return epochs


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no copy: Tune persists (copies) the checkpoint right away
    except OSError:
        shutil.copy2(src, dst)


def trial_out_dir() -> tuple[Path, bool]:
    """(the trial's run folder, whether it is persistent): inside the trial's storage folder
    when storage is a filesystem path (local or shared), else in its local working folder."""
    import pyarrow.fs

    ctx = tune.get_context()
    storage = ctx.get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return Path(storage.trial_fs_path) / "run", True
    return Path(ctx.get_trial_dir()) / "run", False


def trial_device_and_threads() -> str:
    """``cuda`` when Ray assigned this trial a GPU (it is then the only visible one), else cpu;
    torch uses as many threads as the trial has CPUs."""
    import ray
    import torch

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return "cuda" if ray.get_gpu_ids() else "cpu"


def train_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    datasets: Any,
    metric: str,
    mode: str,
    worst: float,
    extra_callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
) -> None:
    """Ray Tune function trainable: ``config`` holds the sampled knob values.

    ``base`` is the resolved base config as a dict, ``datasets`` the ``Datasets`` the driver
    decoded once (shared through the object store by ``tune.with_parameters``).
    """
    from cattle_yolo.train import DivergedError, train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not one line per checkpoint
    device = trial_device_and_threads()
    out, persistent = trial_out_dir()
    cfg = resolve_trial_config(TrainConfig.from_dict(base), config, out=str(out), device=device)
    reporter = EpochReporter(metric, mode, worst, weights_in_checkpoint=not persistent)
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
        resume = reporter.resume_point(Path(folder) if folder else None, out)
        try:
            train(cfg, datasets, callbacks=[reporter, *extra_callbacks], resume_from=resume)
        except DivergedError as e:
            reporter.report_diverged(e.reason, e.epoch)
