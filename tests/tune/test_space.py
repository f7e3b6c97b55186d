"""Search-space files: parsing, every bad-space case, the IoU constraint and the first point."""

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import REPO, WriteSpace

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from tune.space import (
    IOU_END_FRACTION,
    SearchSpace,
    SpaceError,
    check_base,
    load_space,
    resolve_trial_config,
)
from tune.study import DefineByRun, first_points

GOOD = """
search: {trials: 5, epochs: 4, grace_period: 2}
space:
  imgsz: 64
  lr: {loguniform: [1.0e-4, 3.0e-3]}
  box_loss_weight: {uniform: [2, 12]}
  iou_ramp_epochs: {int: [10, 40]}
  box_loss: {choice: [giou, ciou]}
  iou_start: {uniform: [0.1, 0.4]}
  iou_end: {uniform: [0.3, 0.6]}
"""


def test_parses_kinds_fixed_values_and_settings(write_space: WriteSpace) -> None:
    space = load_space(write_space(GOOD))
    assert space.fixed == {"imgsz": 64}
    assert space.knobs["lr"].kind == "loguniform"
    assert space.knobs["lr"].high == 3e-3
    assert space.knobs["box_loss_weight"].low == 2.0
    assert space.knobs["iou_ramp_epochs"].kind == "int"
    assert space.knobs["iou_ramp_epochs"].low == 10
    assert space.knobs["box_loss"].choices == ("giou", "ciou")
    s = space.settings
    assert (s.trials, s.epochs, s.grace_period, s.metric, s.mode) == (5, 4, 2, S.MAP50_95, "max")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_load(name: str) -> None:
    space = load_space(REPO / "search_spaces" / name)
    check_base(space, TrainConfig.load(None, space.fixed))
    if name == "fixes.yaml":
        assert set(space.knobs) == {
            "lr",
            "box_loss_weight",
            "warmup_start_fraction",
            "iou_start",
            "iou_end",
            "score_threshold",
            "focal_gamma",
        }
        points, notes = first_points(space, TrainConfig())
        assert notes == []
        assert points[0]["lr"] == 1e-3


def test_yaml_exponent_without_dot_is_a_number(write_space: WriteSpace) -> None:
    space = load_space(write_space("space:\n  lr: {loguniform: [1e-4, 3e-3]}\n"))
    assert space.knobs["lr"].low == 1e-4


BAD = {
    "unknown key": (
        "space:\n  learning_rate: {uniform: [0.1, 0.2]}\n",
        "space.learning_rate",
        "unknown config key",
    ),
    "suggestion": (
        "space:\n  box_los_weight: {uniform: [1, 2]}\n",
        "box_los_weight",
        "did you mean 'box_loss_weight'",
    ),
    "low above high": (
        "space:\n  lr: {uniform: [0.01, 0.001]}\n",
        "space.lr",
        "low 0.01 is above high 0.001",
    ),
    "log touches zero": (
        "space:\n  lr: {loguniform: [0, 0.001]}\n",
        "space.lr",
        "log range must stay above zero",
    ),
    "log below zero": (
        "space:\n  focal_gamma: {loguniform: [-1, 2]}\n",
        "space.focal_gamma",
        "above zero",
    ),
    "bound not a number": (
        "space:\n  lr: {uniform: [low, 0.1]}\n",
        "space.lr",
        "bound 'low' is not a number",
    ),
    "uniform on int field": (
        "space:\n  iou_ramp_epochs: {uniform: [1, 5]}\n",
        "space.iou_ramp_epochs",
        "use int",
    ),
    "bad choice": ("space:\n  box_loss: {choice: [giou, dice]}\n", "space.box_loss", "'dice'"),
    "range on str field": ("space:\n  box_loss: {int: [1, 2]}\n", "space.box_loss", "not numeric"),
    "out of config range": (
        "space:\n  score_threshold: {uniform: [0.1, 1.5]}\n",
        "score_threshold",
        "out of range",
    ),
    "fixed wrong type": (
        "space:\n  batch: four\n  lr: {uniform: [0.001, 0.01]}\n",
        "space.batch",
        "must be int",
    ),
    "unknown distribution": (
        "space:\n  lr: {log_uniform: [0.001, 0.01]}\n",
        "space.lr",
        "did you mean 'loguniform'",
    ),
    "two distributions": (
        "space:\n  lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}\n",
        "space.lr",
        "exactly one",
    ),
    "range not a pair": ("space:\n  lr: {uniform: [0.1]}\n", "space.lr", "needs [low, high]"),
    "list as value": ("space:\n  lr: [0.1, 0.2]\n", "space.lr", "choice"),
    "nothing searched": ("space:\n  lr: 0.001\n", "space.yaml", "searches none"),
    "empty file": ("", "space.yaml", "empty"),
    "not a mapping": ("- lr\n- box_loss_weight\n", "space.yaml", "expected a mapping"),
    "no space section": (
        "search: {trials: 3}\n",
        "space.yaml",
        "space must be a non-empty mapping",
    ),
    "unknown section": (
        "spaces:\n  lr: {uniform: [0.1, 0.2]}\n",
        "space.yaml",
        "did you mean 'space'",
    ),
    "searched imgsz": ("space:\n  imgsz: {choice: [320, 384]}\n", "space.imgsz", "decoded once"),
    "epochs in space": (
        "space:\n  epochs: 5\n  lr: {uniform: [0.001, 0.01]}\n",
        "space.epochs",
        "search.epochs",
    ),
    "bad setting": (
        "search: {trails: 3}\nspace:\n  lr: {uniform: [0.001, 0.01]}\n",
        "search",
        "did you mean 'trials'",
    ),
    "grace above epochs": (
        "search: {epochs: 3, grace_period: 5}\nspace:\n  lr: {uniform: [0.001, 0.01]}\n",
        "search",
        "grace_period 5 is above epochs 3",
    ),
    "bad metric": (
        "search: {metric: map}\nspace:\n  lr: {uniform: [0.001, 0.01]}\n",
        "search",
        "not a per-epoch stat",
    ),
    "iou start above end": (
        "space:\n  iou_start: {uniform: [0.2, 0.7]}\n  iou_end: {uniform: [0.3, 0.6]}\n",
        "space.iou_start",
        "iou_end >= iou_start",
    ),
    "point outside": (
        "space:\n  lr: {uniform: [0.001, 0.01]}\npoints:\n  - {lr: 0.5}\n",
        "points[0].lr",
        "outside",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_space_names_file_key_and_problem(write_space: WriteSpace, case: str) -> None:
    text, where, problem = BAD[case]
    path = write_space(text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert str(path) in message
    assert where in message, message
    assert problem in message, message


def test_iou_start_above_a_fixed_iou_end_is_refused(write_space: WriteSpace) -> None:
    space = load_space(write_space("space:\n  iou_start: {uniform: [0.2, 0.5]}\n"))
    with pytest.raises(SpaceError, match="0.5 is above the fixed iou_end 0.45"):
        check_base(space, TrainConfig())
    check_base(space, TrainConfig(iou_end=0.5))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """run_search.main in a fresh interpreter; reports whether Ray was ever imported."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['run_search.py', *{args!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'run_search.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('RAY_IMPORTED', 'ray' in sys.modules)\n"
        "    sys.exit(e.code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


@pytest.mark.parametrize(
    "case",
    [
        "unknown key",
        "low above high",
        "log touches zero",
        "empty file",
        "not a mapping",
        "bound not a number",
    ],
)
def test_cli_bad_space_exits_2_fast_without_ray(
    write_space: WriteSpace, tmp_path: Path, case: str
) -> None:
    text, where, problem = BAD[case]
    path = write_space(text)
    proc = _cli(["--space", str(path), "--storage", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr
    assert where in proc.stderr
    assert problem in proc.stderr
    assert "RAY_IMPORTED False" in proc.stdout  # no Ray imported, so no Ray process started
    assert not (tmp_path / "runs").exists()


def test_cli_bad_flag_value_exits_2(tmp_path: Path) -> None:
    proc = _cli(
        [
            "--space",
            str(REPO / "search_spaces" / "smoke.yaml"),
            "--grace-period",
            "9",
            "--storage",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    assert "grace_period 9 is above epochs 4" in proc.stderr


def test_help_documents_every_flag() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_search.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    import run_search

    parser = run_search.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in proc.stdout


def _sample(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n define-by-run samples from a seeded TPE study, told random objectives."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    )
    dbr, samples = DefineByRun(space.knobs), []
    for i in range(n):
        trial = study.ask()
        derived = dbr(trial) or {}
        values = {**trial.params, **derived}
        samples.append(values)
        study.tell(trial, math.sin(i))
    return samples


@pytest.mark.parametrize("kind", ["uniform", "loguniform"])
def test_iou_end_never_below_iou_start(write_space: WriteSpace, kind: str) -> None:
    space = load_space(
        write_space(
            f"space:\n  iou_start: {{{kind}: [0.1, 0.5]}}\n  iou_end: {{{kind}: [0.2, 0.6]}}\n"
        )
    )
    samples = _sample(space, 300)
    for v in samples:
        assert 0.1 <= v["iou_start"] <= 0.5
        assert v["iou_start"] <= v["iou_end"] <= 0.6
        assert v["iou_end"] >= 0.2
        resolve_trial_config(TrainConfig(), v)  # TrainConfig's own check agrees
    # the reparameterization still reaches the whole range of iou_end
    ends = [v["iou_end"] for v in samples]
    assert min(ends) < 0.3
    assert max(ends) > 0.55


def test_first_point_is_the_exact_default(write_space: WriteSpace) -> None:
    space = load_space(REPO / "search_spaces" / "fixes.yaml")
    points, _ = first_points(space, TrainConfig())
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(points[0])
    trial = study.ask()
    derived = DefineByRun(space.knobs)(trial)
    assert derived is not None  # fixes.yaml searches iou_start and iou_end: iou_end is derived
    values = {**trial.params, **derived}
    cfg = resolve_trial_config(TrainConfig(), values)
    assert cfg == TrainConfig()  # iou_end comes back as exactly 0.45
    assert IOU_END_FRACTION in values


def test_default_outside_a_range_is_left_to_the_sampler(write_space: WriteSpace) -> None:
    space = load_space(
        write_space(
            "space:\n  lr: {loguniform: [1.0e-2, 1.0]}\n  focal_gamma: {uniform: [1, 3]}\n"
            "points:\n  - {lr: 0.5}\n"
        )
    )
    points, notes = first_points(space, TrainConfig())
    assert points == [{"focal_gamma": 2.0}, {"focal_gamma": 2.0, "lr": 0.5}]
    assert "lr=0.001 is outside loguniform" in notes[0]


def test_score_threshold_is_chosen_after_training_under_map(write_space: WriteSpace) -> None:
    from tune.space import for_metric

    text = (
        "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "  score_threshold: {uniform: [0.05, 0.5]}\npoints:\n  - {score_threshold: 0.3}\n"
    )
    space = load_space(write_space(text))
    for metric in (S.MAP50_95, S.MAP50, S.BEST_F1, S.VAL_LOSS):
        run, notes = for_metric(space, metric)
        assert list(run.knobs) == ["lr"]
        assert run.points == ({},)
        assert len(notes) == 1
        assert "chosen after training" in notes[0]
        assert metric in notes[0]
        assert run.threshold_range() == (0.05, 0.5)
        points, _ = first_points(run, TrainConfig())
        assert all("score_threshold" not in p for p in points)
    for metric in (S.PRECISION, S.RECALL, S.F1_AT_THRESHOLD):  # read at the threshold: a knob
        run, notes = for_metric(space, metric)
        assert "score_threshold" in run.knobs
        assert not notes
        assert run.threshold_range() is None
    only = load_space(write_space("space:\n  score_threshold: {uniform: [0.05, 0.5]}\n", "o.yaml"))
    with pytest.raises(SpaceError, match="only score_threshold"):
        for_metric(only, S.MAP50_95)
    fixed = load_space(
        write_space(
            "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  score_threshold: 0.4\n", "f.yaml"
        )
    )
    assert fixed.threshold_range() is None  # fixed by the space: kept
    plain = load_space(write_space("space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n", "p.yaml"))
    assert plain.threshold_range() == (0.0, 1.0)


def test_objective_settings_are_checked(write_space: WriteSpace) -> None:
    space = load_space(
        write_space(
            "search: {objective: last_mean, objective_window: 4}\n"
            "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        )
    )
    assert space.settings.objective == "last_mean"
    assert space.settings.objective_window == 4
    with pytest.raises(SpaceError, match="objective 'mean_last' is not one of best, last_mean"):
        load_space(
            write_space(
                "search: {objective: mean_last}\nspace:\n  lr: 0.001\n"
                "  box_loss_weight: {uniform: [2, 12]}\n",
                "b.yaml",
            )
        )
    with pytest.raises(SpaceError, match="confirm must be an integer >= 0"):
        load_space(
            write_space(
                "search: {confirm: -1}\nspace:\n  box_loss_weight: {uniform: [2, 12]}\n", "c.yaml"
            )
        )


def test_numbers_without_a_dot_are_numbers_everywhere_in_a_space(write_space: WriteSpace) -> None:
    space = load_space(
        write_space(
            "search: {min_rise: 5e-2, spike_ratio: 3e0}\nspace:\n  lr: 3e-3\n"
            "  weight_decay: {choice: [1e-4, 5e-4]}\n  box_loss_weight: {uniform: [2, 12]}\n"
        )
    )
    assert space.fixed["lr"] == 0.003
    assert space.knobs["weight_decay"].choices == (1e-4, 5e-4)
    assert space.settings.min_rise == 0.05
    assert space.settings.spike_ratio == 3.0
    with pytest.raises(SpaceError, match="unknown config key \\(did you mean 'lr'\\?\\)"):
        load_space(write_space("space:\n  learning_rate: {uniform: [0.001, 0.01]}\n", "b.yaml"))
