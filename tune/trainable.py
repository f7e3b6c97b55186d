"""One trial: the cattle_yolo training loop run as a Ray Tune function trainable.

``train_trial(config, ...)`` builds the trial's ``TrainConfig`` (base config + sampled values,
``out`` = the trial's run folder, ``device`` = what Ray assigned), resumes where the trial
stopped if it ran before, and trains with a callback that reports every epoch to Tune:

- metrics: the epoch's numeric stats (NaN passes through for the divergence stopper) plus
  ``objective`` (best epoch so far or mean of the last epochs, always finite; what Optuna and
  the export see), ``rung_score`` (the objective with ties broken by val loss; what ASHA
  compares), ``objective_epoch``, best.pt's score threshold chosen after training
  (``threshold``, ``threshold_P``, ``threshold_R``, ``threshold_F1``), ``diverged``,
  ``diverged_rule``, ``resumed_from_epoch``, ``warmup_epochs`` and ``threads``;
- checkpoint: a Tune checkpoint per epoch holding the reporter's state.

Where the weights live. With storage on a filesystem path (local or shared), the run folder is
inside the trial's persistent folder, and its ``models/last.pt`` (written atomically by the
training loop every epoch) is what a retried or resumed trial continues from; the Tune
checkpoints stay a few bytes, and all of them are kept. That matters: Tune snapshots its
experiment state asynchronously, so a driver killed right after Tune deleted an old checkpoint
leaves the state pointing at a checkpoint that is gone, and the trial could not be restored
(we measured it with ``num_to_keep=1``).

With cloud storage each weight file is uploaded once. The run folder is the trial's local
working folder, which Ray does not sync (``sync_artifacts`` is off: Ray would upload the whole
folder again at every checkpoint, best.pt included, and it listed our checkpoint's temp files
mid-write). Each Tune checkpoint carries its epoch's ``last.pt`` (moved there); every other file the
run writes (config, metrics, logs, ``best.pt`` and its val detections) is uploaded to
``<trial>/run`` on the storage when it is new or changed, between epochs (``FolderUploader``).
A trial restored on a fresh working folder downloads its ``run`` files first, so its metrics log
continues; its weights come from the checkpoint. The local folder keeps no weights: last.pt
moves into the checkpoint and best.pt is deleted once uploaded.

A ``DivergedError`` from the training loop ends the trial with one final result carrying the
worst objective, ``diverged: True`` and the reason; the trial then returns normally.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

from ray import tune

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from cattle_yolo.stats import EpochStats
from tune import threshold
from tune.results import (
    AMP,
    DIVERGED,
    DIVERGED_RULE,
    EPOCH,
    OBJECTIVE,
    OBJECTIVE_EPOCH,
    RESUMED_FROM_EPOCH,
    RUNG_SCORE,
    THREADS,
    TRAIN_LOSS,
    VAL_LOSS,
    WARMUP_EPOCHS,
)
from tune.space import SearchSettings, resolve_trial_config
from tune.storage import FolderUploader
from tune.threshold import FULL_RANGE

log = logging.getLogger(__name__)

STATE_FILE = "search_state.json"  # reporter state stored in each Tune checkpoint
CHECKPOINT_FILE = "last.pt"
LAST_IN_RUN = Path("models") / CHECKPOINT_FILE  # the run folder's resumable checkpoint
BEST_IN_RUN = Path("models") / "best.pt"  # its inference checkpoint


def trial_objective(
    values: dict[int, float], kind: str, window: int, mode: str, worst: float
) -> tuple[float, int]:
    """(objective, the epoch it is read at) from a trial's per-epoch metric ``values``.

    ``best``: the best finite value (the earliest epoch among equals; ``worst`` at epoch 0
    while none is finite); ``last_mean``: the mean of the last ``window`` epochs (fewer at the
    start), a non-finite epoch counting as ``worst``.
    """
    epochs = sorted(values)
    if kind == "last_mean" and epochs:
        last = epochs[-window:]
        vals = [values[e] if math.isfinite(values[e]) else worst for e in last]
        return sum(vals) / len(vals), last[-1]
    finite = [e for e in epochs if math.isfinite(values[e])]
    if not finite:
        return worst, 0
    best = (max if mode == "max" else min)(finite, key=lambda e: values[e])
    return values[best], best


class EpochReporter:
    """Training callback: one ``tune.report`` with a checkpoint per epoch.

    Args:
        settings: the search's metric and mode, its objective (``best``: the best epoch so
            far; ``last_mean``: the mean of the last ``objective_window`` epochs, a non-finite
            epoch counting as ``worst``, see ``tune.space.OBJECTIVES``) and ``worst`` (the
            objective of a trial with no finite value yet, and of a diverged one).
        cfg: the trial's config: its ``max_det`` (to score saved detections), its own
            ``score_threshold`` (reported when ``threshold_range`` is None) and its
            ``warmup_epochs`` (passed on in every result for the divergence rules).
        names: class names, to score saved detections.
        threshold_range: where the trial's score threshold is chosen after training (the
            F1-best on best.pt's val detections); ``None`` keeps the config's own threshold.
        uploader: cloud storage: uploads the run folder's changed files but ``last.pt``, which
            goes in each Tune checkpoint instead.
    """

    def __init__(
        self,
        settings: SearchSettings,
        cfg: TrainConfig | None = None,
        names: Sequence[str] = (),
        *,
        threshold_range: tuple[float, float] | None = (0.0, 1.0),
        uploader: FolderUploader | None = None,
    ) -> None:
        cfg = cfg or TrainConfig()
        self.metric, self.mode, self.worst = settings.metric, settings.mode, settings.worst
        self.objective, self.window = settings.objective, settings.objective_window
        self.threshold_range, self.names, self.max_det = threshold_range, list(names), cfg.max_det
        self.own_threshold, self.warmup_epochs = cfg.score_threshold, cfg.warmup_epochs
        self.uploader = uploader
        self.values: dict[int, float] = {}  # epoch -> the metric's value
        self.threshold: dict[str, float] = {}  # best.pt's chosen threshold and its P, R, F1
        self.epoch = 0  # last epoch reported
        self.resumed_from_epoch = 0
        self.gauges: TrialGauges | None = None  # set by train_trial inside a Ray trial

    def objective_value(self, kind: str | None = None) -> tuple[float, int]:
        """(objective, the epoch it is read at) from the values reported so far; ``kind``
        overrides the reporter's objective (``best`` gives the best epoch)."""
        return trial_objective(
            self.values, kind or self.objective, self.window, self.mode, self.worst
        )

    def rung_score(self, objective: float, val_loss: float) -> float:
        """What ASHA compares at a rung: the objective, with ties broken by val loss.

        ``objective -/+ 1e-6 * v / (1 + v)`` for mode max/min, ``v`` the epoch's val loss
        (non-finite counts as infinite): the term lies in [0, 1e-6), so it only orders trials
        whose objectives are equal to within 1e-6 (all 0.000 early on), and the lower val loss
        ranks first.
        """
        v = val_loss if math.isfinite(val_loss) and val_loss >= 0 else math.inf
        tie = 1.0 if math.isinf(v) else v / (1.0 + v)
        return objective - 1e-6 * tie if self.mode == "max" else objective + 1e-6 * tie

    def metrics(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The numbers of an epoch's stats plus the search's own keys."""
        out: dict[str, Any] = {}
        for key, value in stats.items():
            if isinstance(value, bool):
                out[key] = float(value)
            elif isinstance(value, int | float):
                out[key] = value if isinstance(value, int) else float(value)
        if isinstance(stats.get(AMP), str):
            out[AMP] = stats[AMP]  # the one string result: the precision trained in
        epoch = int(stats[EPOCH])
        value = float(out.get(self.metric, math.nan))
        self.values[epoch] = value
        if S.BEST_F1_THRESHOLD in stats and stats.get(S.BEST_EPOCH) == epoch:
            self.threshold = threshold.chosen(stats, self.threshold_range, self.own_threshold)
        objective, objective_epoch = self.objective_value()
        out[OBJECTIVE] = objective
        out[RUNG_SCORE] = self.rung_score(objective, float(out.get(VAL_LOSS, math.nan)))
        out[OBJECTIVE_EPOCH] = objective_epoch
        out.update(self.threshold)
        out[DIVERGED] = False
        out[DIVERGED_RULE] = ""
        out[RESUMED_FROM_EPOCH] = self.resumed_from_epoch
        out[WARMUP_EPOCHS] = self.warmup_epochs
        out[THREADS] = _torch_threads()
        return out

    def __call__(self, stats: EpochStats) -> None:
        self.report(cast(dict[str, Any], stats))

    def report(self, stats: dict[str, Any], replay_from: Path | None = None) -> None:
        """One ``tune.report`` of an epoch's stats with a checkpoint. With cloud storage the
        checkpoint takes the run's ``last.pt`` (moved: no local copy stays), or on a resume's
        replay of an epoch a copy of the weights it continues from (``replay_from``)."""
        metrics = self.metrics(stats)
        self.epoch = int(stats[EPOCH])
        if self.gauges is not None:
            self.gauges.set(metrics)
        if self.uploader is not None:
            self.uploader.upload()
        with tempfile.TemporaryDirectory(prefix="cattle-ckpt-") as tmp:
            if self.uploader is not None:  # the checkpoint takes last.pt: no local copy stays
                if replay_from is not None:
                    shutil.copy2(replay_from, Path(tmp) / CHECKPOINT_FILE)
                else:
                    shutil.move(self.uploader.folder / LAST_IN_RUN, Path(tmp) / CHECKPOINT_FILE)
            state = {"epoch": self.epoch, "values": self.values, "threshold": self.threshold}
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def resume_point(self, folder: Path | None, run: Path) -> Path | None:
        """Restore from a Tune checkpoint folder (or none) and pick the weights to continue from.

        The run folder's ``models/last.pt`` wins when it exists: it is never behind the Tune
        checkpoint. Epochs it is ahead by (trained, but their results never reached Tune's
        stored state because the driver or the worker died first), and the Tune checkpoint's
        own epoch, are reported again from the run's ``metrics/training_metrics.jsonl``, so the
        trial's history has no gap.
        """
        if folder is not None and (folder / STATE_FILE).is_file():
            state = json.loads((folder / STATE_FILE).read_text())
            self.epoch = state["epoch"]
            self.values = {int(e): float(v) for e, v in state.get("values", {}).items()}
            if not self.values and state.get("best") is not None:  # a checkpoint before values
                self.values = {int(state["best_epoch"]): float(state["best"])}
            self.threshold = state.get("threshold", {})
        saved, weights, set_aside = _readable_weights(
            [run / "models" / CHECKPOINT_FILE]
            + ([folder / CHECKPOINT_FILE] if folder is not None else []),
            note_in=run / "logs" / "train.log",
        )
        if weights is None:
            if set_aside:  # training starts again from epoch 1: so does the trial's history
                self.epoch, self.values, self.threshold = 0, {}, {}
            return None
        self.resumed_from_epoch = int(saved[EPOCH])
        # The Tune checkpoint's own epoch is reported again too: a trial that raised right
        # after reporting it can leave Tune with the checkpoint but without the result row
        # (measured under load: checkpoint_000001 of epoch 2 restored, no epoch 2 in
        # result.json). Readers keep the later of two rows of an epoch.
        first = max(1, self.epoch)
        missed = {
            e: s for e, s in _logged_epochs(run).items() if first <= e <= self.resumed_from_epoch
        }
        missed.setdefault(
            self.resumed_from_epoch, {**S.current(saved["metrics"]), EPOCH: self.resumed_from_epoch}
        )
        for epoch in sorted(e for e in missed if e >= first):
            self.report(missed[epoch], replay_from=weights)
        return weights

    def report_diverged(self, reason: str, epoch: int) -> None:
        """The final result of a trial the training loop declared diverged."""
        if self.uploader is not None:
            self.uploader.upload()
        tune.report(
            {
                EPOCH: epoch,
                TRAIN_LOSS: math.nan,
                OBJECTIVE: self.worst,
                RUNG_SCORE: self.worst,
                OBJECTIVE_EPOCH: self.objective_value("best")[1],
                DIVERGED: True,
                DIVERGED_RULE: f"training loop: {reason}",
                RESUMED_FROM_EPOCH: self.resumed_from_epoch,
            }
        )


class TrialGauges:
    """Ray custom metrics of one trial (``ray.util.metrics``), labelled by trial id and
    experiment: Ray exports them on each node's Prometheus endpoint as ``ray_cattle_trial_*``,
    so the dashboard's Metrics view shows them wherever Prometheus and Grafana run."""

    KEYS = {  # gauge name -> (result key, description)
        "epoch": (EPOCH, "epochs the trial has trained"),
        "train_loss": (TRAIN_LOSS, "mean training loss of the last epoch"),
        "val_loss": (VAL_LOSS, "validation loss of the last epoch"),
        "map50_95": (S.MAP50_95, "val mAP50-95 of the last epoch"),
        "objective": (OBJECTIVE, "the trial's objective so far (what Optuna and ASHA rank)"),
        "best_map50_95": (
            S.BEST_MAP50_95,
            "val mAP50-95 of best.pt (its best epoch by the search metric)",
        ),
    }

    def __init__(self, trial_id: str, experiment: str) -> None:
        from ray.util.metrics import Gauge

        self.tags = {"trial_id": trial_id, "experiment": experiment}
        self.gauges = {
            name: (
                key,
                Gauge(f"cattle_trial_{name}", description, tag_keys=("trial_id", "experiment")),
            )
            for name, (key, description) in self.KEYS.items()
        }

    def set(self, metrics: dict[str, Any]) -> None:
        for key, gauge in self.gauges.values():
            value = metrics.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                gauge.set(float(value), tags=self.tags)


def _readable_weights(
    paths: list[Path], note_in: Path | None = None
) -> tuple[dict[str, Any], Path | None, bool]:
    """(checkpoint, path, whether one was set aside) of the first of ``paths`` that loads.

    An unreadable one (torn by a failing disk, overwritten by hand) is renamed
    ``<name>.corrupt`` with a warning (also appended to ``note_in``), so the trial continues
    from the next, or starts again from epoch 1, instead of failing the same way on every
    retry."""
    from cattle_yolo.checkpoint import CheckpointError, load_checkpoint

    set_aside = False
    for path in paths:
        if not path.is_file():
            continue
        try:
            return load_checkpoint(path), path, set_aside
        except CheckpointError as e:
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            set_aside = True
            message = f"warning: {e}; moved to {aside.name}, the trial does not resume from it"
            log.warning(message)
            if note_in is not None:  # the trial's own log, where its user looks
                note_in.parent.mkdir(parents=True, exist_ok=True)
                with note_in.open("a") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    return {}, None, set_aside


def _logged_epochs(run: Path) -> dict[int, dict[str, Any]]:
    """epoch -> stats from the run's JSON-lines log (the later line wins for a repeated epoch)."""
    log = run / "metrics" / "training_metrics.jsonl"
    epochs = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            stats = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        epochs[int(stats[EPOCH])] = S.current(stats)  # a log of an earlier version too
    return epochs


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def trial_out_dir() -> tuple[Path, FolderUploader | None]:
    """(the trial's run folder, the uploader of its files or None).

    Filesystem storage (local or shared): the run folder is ``<trial>/run`` on the storage.
    Cloud storage: ``run`` in the trial's local working folder, uploaded to ``<trial>/run``
    file by file; a fresh working folder first gets the trial's ``run`` files back.
    """
    import pyarrow.fs

    ctx = tune.get_context()
    storage = ctx.get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return Path(storage.trial_fs_path) / "run", None
    # Not ctx.get_trial_dir(): that is the driver's staging folder on the driver's node, which
    # Ray uploads whole with the experiment state.
    run = Path(storage.trial_working_directory) / "run"
    uploader = FolderUploader(
        run,
        storage.storage_filesystem,
        f"{storage.trial_fs_path}/run",
        skip=[LAST_IN_RUN],
        drop=[BEST_IN_RUN],
    )
    if not run.is_dir():
        uploader.download()
    run.mkdir(parents=True, exist_ok=True)
    return run, uploader


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
    base: TrainConfig,
    settings: SearchSettings,
    datasets: Any,
    threshold_range: tuple[float, float] | None = (0.0, 1.0),
    extra_callbacks: Sequence[Callable[[EpochStats], None]] = (),
) -> None:
    """Ray Tune function trainable: ``config`` holds the sampled knob values.

    ``base`` is the search's resolved base config and ``settings`` its settings (metric, mode,
    objective), both as the driver built them; ``datasets`` the ``Datasets`` the driver decoded
    once (shared through the object store by ``tune.with_parameters``). A confirmation run's
    ``config`` also holds its ``seed`` and ``confirm_id``. ``threshold_range`` is
    ``EpochReporter``'s.
    """
    from cattle_yolo.train import DivergedError, train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not one line per checkpoint
    device = trial_device_and_threads()
    out, uploader = trial_out_dir()
    cfg = resolve_trial_config(base, config, out=str(out), device=device)
    reporter = EpochReporter(
        settings, cfg, datasets.names, threshold_range=threshold_range, uploader=uploader
    )
    ctx = tune.get_context()
    reporter.gauges = TrialGauges(ctx.get_trial_id(), ctx.get_experiment_name())
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
        resume = reporter.resume_point(Path(folder) if folder else None, out)
        try:
            train(
                cfg,
                datasets,
                callbacks=[reporter, *extra_callbacks],
                resume_from=resume,
                best_by=(settings.metric, settings.mode),  # best.pt: the export's checkpoint
                threshold_range=threshold_range or FULL_RANGE,  # the F1 sweep stays inside
            )
        except DivergedError as e:
            reporter.report_diverged(e.reason, e.epoch)
    if uploader is not None:  # the run's last lines (a trial stopped by Tune never gets here)
        uploader.upload()
