"""Planning a search: everything decided before Ray starts, from a ``SearchRequest``.

``plan_search`` reads and checks the space file, the search settings (the space file's
``search:`` section, then the command line's changes) and the base ``TrainConfig`` (defaults,
``--config``, the space's fixed values, ``--set``, ``--data``; ``base_config``, which the
benchmarks use too), and decides between a fresh start and a resume: a resume reads the saved
space, settings and base config back, and ``refuse_changes`` refuses a command line that would
change them (only more trials and the confirmation, with its ``--confirm-set``, may change).
``warm_start_journal`` finds the earlier study a new search starts from; ``save_plan`` writes
what a resume reads;
``disk_plan`` refuses a search that will not fit. Nothing here starts Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cattle_yolo.config import ConfigError, TrainConfig, parse_overrides
from tune.space import (
    SearchSettings,
    SearchSpace,
    check_base,
    for_metric,
    load_space,
    settings_from_dict,
)

REPO = Path(__file__).resolve().parents[1]
SAVED_SPACE, SAVED_SETTINGS = "space.yaml", "search_settings.yaml"

# --smoke-test: tiny images, model and data, 2 trials of 2 epochs.
SMOKE_CONFIG = {
    # fp32 on every machine, so the smoke search repeats the same trials everywhere: with two
    # optimizer steps an epoch BatchNorm's running statistics stay cold, the eval-mode class
    # scores of a high-lr trial can underflow (val loss exactly 0: the collapse rule), and
    # whether they do hangs on rounding.
    "amp": "off",
    "imgsz": 64,
    "neck_channels": 16,
    "synthetic_images": 8,
    "batch": 4,
    "accumulate": 1,
    "warmup_epochs": 1.0,
}
SMOKE_SETTINGS = {"trials": 2, "epochs": 2, "grace_period": 1}
# Flags that override a setting of the space file's `search:` section.
SETTING_FLAGS = (
    "metric",
    "mode",
    "trials",
    "epochs",
    "grace_period",
    "reduction_factor",
    "patience",
    "min_rise",
    "spike_ratio",
    "seed",
    "objective",
    "objective_window",
    "confirm",
    "confirm_seeds",
)
# Settings a resumed search may change: more trials extend it; confirmation runs after it.
RESUME_CHANGEABLE = ("trials", "confirm", "confirm_seeds")


@dataclass(frozen=True)
class SearchRequest:
    """What the command line asks for, as ``plan_search`` reads it (``run_search.py`` builds it
    from its flags; ``None`` is a flag not given)."""

    space: str | None = None  # the space file (default: fixes.yaml, smoke.yaml with smoke_test)
    settings: dict[str, Any] = field(default_factory=dict)  # SETTING_FLAGS given, by name
    config: str | None = None  # a base TrainConfig YAML
    overrides: list[str] = field(default_factory=list)  # --set key=value
    data: str | None = None
    smoke_test: bool = False
    name: str | None = None  # the experiment (default: the space file's name)
    storage: str = "ray_results"
    resume: bool = False  # it must exist
    warm_start: str | None = None  # an earlier experiment (folder or name in storage)
    confirm_overrides: list[str] = field(default_factory=list)  # --confirm-set key=value


@dataclass
class Plan:
    """Everything decided before Ray starts."""

    space: SearchSpace
    settings: SearchSettings
    base: TrainConfig
    storage: str
    name: str
    path: str  # experiment folder or URI
    report_dir: Path  # where results.csv, best_config.yaml and plots go (always local)
    resume: bool
    notes: list[str]  # said once before the search starts
    warm_start: Path | None = None  # the earlier study's journal file
    extend_to: int = 0  # resume: the new trial count of a search that is extended
    confirm_base: TrainConfig | None = None  # the confirmation's config (None: the search's)

    @property
    def journal(self) -> Path:
        from tune.study import JOURNAL_FILE

        return self.report_dir / JOURNAL_FILE

    def confirmation(self) -> tuple[TrainConfig, SearchSettings]:
        """The base config and settings the confirmation runs with: the search's, or those of
        ``--confirm-set`` (e.g. ``imgsz=256``: search cheap, confirm at the size that counts),
        whose ``epochs`` also becomes the confirmation's settings' epochs."""
        if self.confirm_base is None:
            return self.base, self.settings
        epochs = {"epochs": self.confirm_base.epochs}
        return self.confirm_base, self.settings.replace(epochs, "--confirm-set")


def base_config(
    request: SearchRequest, space: SearchSpace, settings: SearchSettings
) -> TrainConfig:
    """Defaults, --config, the space's fixed values, --smoke-test sizes, --set, --data; then the
    search's epochs and seed. The data path is made absolute: trials run in other folders."""
    cfg = TrainConfig.load(request.config).with_overrides(space.fixed, f"{space.path}: fixed")
    if request.smoke_test:
        cfg = cfg.with_overrides(SMOKE_CONFIG, "--smoke-test")
    changes = parse_overrides(request.overrides)
    if request.data:
        changes["data"] = request.data
    data = changes.get("data", cfg.data)
    if data and "://" not in data:
        path = Path(data).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"--data {data}: no such file or folder")
        changes["data"] = str(path)
    changes.update(epochs=settings.epochs, seed=settings.seed, out=None)
    return cfg.with_overrides(changes, "base config")


# Keys --confirm-set may not change: the confirmation sets the seeds, trials write their own
# folders, and the searched knobs are what it confirms.
NOT_FOR_CONFIRM = ("seed", "out")


def confirm_config(
    overrides: list[str], space: SearchSpace, base: TrainConfig
) -> TrainConfig | None:
    """The search's base config with ``--confirm-set`` applied (a data path made absolute);
    None when that changes nothing, so the confirmation reuses the search's decoded data."""
    changes = parse_overrides(overrides)
    refused = sorted(k for k in changes if k in space.knobs or k in NOT_FOR_CONFIRM)
    if refused:
        raise ConfigError(
            f"--confirm-set {', '.join(refused)}: the confirmation retrains the searched "
            "knobs' values on its own seeds; it may change the rest of the config "
            "(e.g. imgsz, epochs, data)"
        )
    data = changes.get("data")
    if isinstance(data, str) and "://" not in data:
        path = Path(data).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"--confirm-set data={data}: no such file or folder")
        changes["data"] = str(path)
    confirm = base.with_overrides(changes, "--confirm-set")
    return None if confirm == base else confirm


def refuse_changes(request: SearchRequest, plan: Plan, fresh: Plan) -> None:
    """On resume the saved space, settings and base config hold; a flag that would change one
    of them is refused rather than ignored (only ``RESUME_CHANGEABLE`` settings may change)."""
    where = f"--resume of {plan.path}"
    given = {k for k, v in request.settings.items() if v is not None}
    for key in sorted(given - set(RESUME_CHANGEABLE)):
        old, new = getattr(plan.settings, key), getattr(fresh.settings, key)
        if old != new:
            raise ConfigError(
                f"{where}: --{key.replace('_', '-')} {new} differs from the saved "
                f"{old}; a search keeps its settings (start a new --name instead)"
            )
    if request.space and (fresh.space.knobs, fresh.space.fixed, fresh.space.points) != (
        plan.space.knobs,
        plan.space.fixed,
        plan.space.points,
    ):
        raise ConfigError(
            f"{where}: --space {request.space} differs from the saved space.yaml; "
            "a search keeps its space (start a new --name instead)"
        )
    if request.config or request.overrides or request.data:
        old, new = plan.base.to_dict(), fresh.base.to_dict()
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise ConfigError(
                f"{where}: --config/--set/--data change {', '.join(changed)} from "
                "the saved base config; a search keeps its base config"
            )
    if request.warm_start:
        raise ConfigError(f"{where}: --warm-start only seeds a new search")
    if request.settings.get("trials") is not None and fresh.settings.trials < plan.settings.trials:
        raise ConfigError(
            f"{where}: --trials {fresh.settings.trials} is below the saved "
            f"{plan.settings.trials}; a search can be extended, not shortened"
        )


def warm_start_journal(request: SearchRequest, storage: str) -> Path | None:
    """The journal file of ``--warm-start``: a folder, a journal file, or an experiment name
    in ``--storage`` (on cloud storage its journal is downloaded to ``./ray_results/<name>``)."""
    if not request.warm_start:
        return None
    from tune import storage as store
    from tune.study import JOURNAL_FILE

    folder = Path(request.warm_start).expanduser()
    if not folder.exists() and not store.is_uri(storage):
        folder = Path(storage) / request.warm_start
    elif not folder.exists():
        folder = store.local_copy(request.warm_start)
        remote = store.experiment_path(storage, request.warm_start)
        store.download(remote, folder, [JOURNAL_FILE])
    journal = folder / JOURNAL_FILE if folder.is_dir() else folder
    if not journal.is_file():
        raise ConfigError(
            f"--warm-start {request.warm_start}: no {JOURNAL_FILE} there (nor in "
            f"{storage}); give an experiment folder of an earlier search"
        )
    return journal.resolve()


def plan_search(request: SearchRequest) -> Plan:
    """Parse and check the space, settings and base config; decide fresh start or resume."""
    space_path = request.space or str(
        REPO / "search_spaces" / ("smoke.yaml" if request.smoke_test else "fixes.yaml")
    )
    space = load_space(space_path)
    changes = {k: request.settings.get(k) for k in SETTING_FLAGS}
    if request.smoke_test:
        changes = {**SMOKE_SETTINGS, **{k: v for k, v in changes.items() if v is not None}}
    settings = space.settings.replace(changes, "command line")
    base = base_config(request, space, settings)
    check_base(space, base)

    from tune import storage as store
    from tune.search import can_restore  # imports Ray: after the checks
    from tune.study import JOURNAL_FILE

    name = request.name or Path(space_path).stem
    storage = store.resolve(request.storage)
    path = store.experiment_path(storage, name)
    report_dir = store.local_copy(name) if store.is_uri(storage) else Path(path)
    resume = can_restore(path)
    if request.resume and not resume:
        raise ConfigError(f"--resume: no search to resume at {path}")
    if resume and store.is_uri(storage):  # the saved plan and the study, e.g. on a new machine
        saved = (SAVED_SPACE, SAVED_SETTINGS, JOURNAL_FILE)  # what a resume reads
        missing = [n for n in saved if not (report_dir / n).is_file()]
        store.download(path, report_dir, missing)
    plan = Plan(space, settings, base, storage, name, path, report_dir, resume, [])
    if resume and (report_dir / SAVED_SETTINGS).is_file():
        # The searcher and scheduler come back from the experiment; so must their settings.
        saved = yaml.safe_load((report_dir / SAVED_SETTINGS).read_text())
        fresh = plan
        plan = Plan(
            load_space(report_dir / SAVED_SPACE),
            settings_from_dict(saved["settings"], str(report_dir / SAVED_SETTINGS)),
            TrainConfig.from_dict(saved["base"], source=str(report_dir / SAVED_SETTINGS)),
            storage,
            name,
            path,
            report_dir,
            resume,
            [],
        )
        refuse_changes(request, plan, fresh)
        # Only what this command line says changes; the space file's values do not count.
        keep = {
            k: getattr(fresh.settings, k)
            for k in RESUME_CHANGEABLE
            if request.settings.get(k) is not None
        }
        if "trials" in keep and fresh.settings.trials > plan.settings.trials:
            plan.extend_to = fresh.settings.trials
        plan.settings = plan.settings.replace(keep, "command line")
        if saved.get("confirm_base"):  # a later --confirm-set replaces it
            where = str(report_dir / SAVED_SETTINGS)
            plan.confirm_base = TrainConfig.from_dict(saved["confirm_base"], source=where)
    else:
        plan.warm_start = warm_start_journal(request, storage)
    if request.confirm_overrides:
        if not plan.settings.confirm:
            raise ConfigError(
                "--confirm-set sets the confirmation's config, but this search confirms "
                "nothing (confirm: 0); add --confirm N"
            )
        plan.confirm_base = confirm_config(request.confirm_overrides, plan.space, plan.base)
    plan.confirmation()  # its settings checked now (e.g. epochs against the grace period)
    plan.space, plan.notes = for_metric(plan.space, plan.settings.metric)
    return plan


def save_plan(plan: Plan) -> None:
    plan.report_dir.mkdir(parents=True, exist_ok=True)
    (plan.report_dir / SAVED_SPACE).write_text(Path(plan.space.path).read_text())
    doc: dict[str, Any] = {"settings": asdict(plan.settings), "base": plan.base.to_dict()}
    if plan.confirm_base is not None:
        doc["confirm_base"] = plan.confirm_base.to_dict()
    (plan.report_dir / SAVED_SETTINGS).write_text(yaml.safe_dump(doc, sort_keys=False))
    publish(plan, [SAVED_SPACE, SAVED_SETTINGS])


def publish(plan: Plan, names: list[str] | None = None) -> None:
    """On cloud storage, upload the report folder's files (``names``, or all) to the
    experiment folder; the local folder stays as the driver's copy."""
    from tune import storage

    if storage.is_uri(plan.storage):
        storage.upload(plan.report_dir, plan.path, names)


def disk_plan(plan: Plan, num_classes: int, concurrent: int, keep: int) -> str:
    """Estimate the search's peak disk use; refuse (DiskError) when it will not fit."""
    from tune import disk

    resumable, inference = disk.checkpoint_bytes(plan.base, num_classes)
    s = plan.settings
    confirm_runs = (s.confirm + 1) * s.confirm_seeds if s.confirm else 0  # best.pt until the end
    need = disk.peak_bytes(resumable, inference, concurrent, keep + confirm_runs)
    free = disk.check_free_space(Path(plan.path), need, f"the search {plan.name!r}")
    return (
        f"disk: checkpoints of {resumable / 2**20:.0f} MB (last.pt) and {inference / 2**20:.0f}"
        f" MB (best.pt); peak about {need / 2**30:.2f} GiB for {concurrent} trial(s) at once "
        f"and {keep} kept; {free / 2**30:.1f} GiB free"
    )
