"""The fix audit: planning from two configs (every refusal before Ray starts), and a run of the
real grid Tuner on a synthetic trainable of known effects whose report recovers them."""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import yaml

import run_search
from cattle_yolo.config import ConfigError
from cattle_yolo.stats import MAP50
from tune import audit, audit_report
from tune import design as doe
from tune.results import DIVERGED, EPOCH, OBJECTIVE, OBJECTIVE_EPOCH, THRESHOLD_F1, VAL_LOSS
from tune.search import Experiment
from tune.space import AUDIT_ROW

REPO = Path(__file__).resolve().parents[2]
SEED_BEFORE = REPO / "search_spaces" / "audit" / "before.yaml"
SEED_AFTER = REPO / "search_spaces" / "audit" / "after.yaml"
SEED_GROUPS = ["iou_start,iou_end,iou_ramp_epochs", "box_loss_weight,cls_loss_weight"]


def _yaml(path: Path, values: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _plan(
    before: str,
    after: str,
    groups: Sequence[str] = (),
    design: str = "auto",
    seeds: int = 3,
    overrides: dict[str, Any] | None = None,
    **settings: Any,
) -> audit.AuditPlan:
    return audit.plan_audit(
        before,
        after,
        overrides=overrides or {},
        groups=list(groups),
        design=design,
        seeds=seeds,
        settings=settings,
    )


def test_the_seeds_example_plans_six_trained_changes_and_the_threshold_after_training() -> None:
    plan = _plan(str(SEED_BEFORE), str(SEED_AFTER), SEED_GROUPS, overrides={"epochs": 10})
    names = [f.name for f in plan.factors]
    assert names == [
        "wh_clamp",
        "iou_start+iou_end+iou_ramp_epochs",
        "box_loss_weight+cls_loss_weight",
        "focal_gamma",
        "lr",
        "warmup_start_fraction",
        "score_threshold",
    ]
    assert plan.post_hoc is not None
    assert plan.post_hoc.name == "score_threshold"
    assert plan.x.shape == (16, 6)  # a resolution IV fraction over the six trained changes
    assert plan.seeds == [0, 1, 2]
    assert plan.settings.epochs == 10
    assert plan.base.box_head == "exp"  # both files are on the seed's exp head
    runs = plan.runs()
    assert len(runs) == 48
    before = next(r for r in runs if plan.row_label(r[AUDIT_ROW]) == "BEFORE")
    assert before["lr"] == 2e-3
    assert before["wh_clamp"] == 20.0
    assert before["iou_ramp_epochs"] == 20
    assert "score_threshold" not in before  # not a design column: scored after training


def test_threshold_is_a_design_column_when_the_metric_reads_it(tmp_path: Path) -> None:
    b = _yaml(tmp_path / "b.yaml", {"score_threshold": 0.1, "lr": 1e-3})
    a = _yaml(tmp_path / "a.yaml", {"score_threshold": 0.3, "lr": 2e-3})
    plan = _plan(b, a, metric="f1")
    assert plan.post_hoc is None
    assert plan.x.shape == (4, 2)


def test_run_keys_are_noted_not_audited(tmp_path: Path) -> None:
    b = _yaml(tmp_path / "b.yaml", {"lr": 1e-3, "threads": 1, "amp": "bf16"})
    a = _yaml(tmp_path / "a.yaml", {"lr": 2e-3, "threads": 2, "amp": "auto"})
    plan = _plan(b, a)
    assert [f.name for f in plan.factors] == ["lr"]
    assert any("threads differs" in n for n in plan.notes)
    assert any("amp differs" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("before", "after", "kwargs", "message"),
    [
        ({"lr": 1e-3}, {"lr": 1e-3}, {}, "no key differs"),
        ({"lr": 1e-3}, {"lr": 2e-3, "imgsz": 320}, {}, "imgsz differs"),
        ({"lr": 1e-3}, {"lr": 2e-3, "epochs": 9}, {}, "--epochs"),
        ({"lr": 1e-3}, {"lr": 2e-3}, {"seeds": 1}, "2 or more seeds"),
        ({"lr": 1e-3}, {"lr": 2e-3}, {"groups": ["lr,focal_gamma"]}, "'focal_gamma' is the same"),
        ({"lr": 1e-3}, {"lr": 2e-3}, {"groups": ["lr"]}, "two or more keys"),
        ({"lr": 1e-3}, {"lr": 2e-3}, {"groups": ["lr,bogus_key"]}, "unknown key 'bogus_key'"),
        (  # a row mixing one end of each pair is no valid config: group them
            {"iou_start": 0.1, "iou_end": 0.2},
            {"iou_start": 0.3, "iou_end": 0.5},
            {},
            "--group the keys",
        ),
        (
            {"lr": 1e-3, "box_loss_weight": 5.0, "focal_gamma": 1.0},
            {"lr": 2e-3, "box_loss_weight": 6.0, "focal_gamma": 2.0},
            {"design": "fractional"},
            "use --design factorial",
        ),
    ],
)
def test_bad_audits_are_refused_with_the_reason(
    tmp_path: Path,
    before: dict[str, Any],
    after: dict[str, Any],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    b, a = _yaml(tmp_path / "b.yaml", before), _yaml(tmp_path / "a.yaml", after)
    groups = kwargs.pop("groups", ())
    with pytest.raises(ConfigError, match=message):
        _plan(b, a, groups, **kwargs)


def test_too_many_changes_for_the_design(tmp_path: Path) -> None:
    keys = ["lr", "box_loss_weight", "cls_loss_weight", "focal_gamma", "hsv_h", "hsv_s", "hsv_v"]
    b = _yaml(tmp_path / "b.yaml", {k: 0.1 for k in keys})
    a = _yaml(tmp_path / "a.yaml", {k: 0.2 for k in keys})
    with pytest.raises(ConfigError, match="--design factorial: .*1 to 6"):
        _plan(b, a, design="factorial")
    assert _plan(b, a).x.shape == (16, 7)  # auto: a fraction
    more = {**{k: 0.1 for k in keys}, "scale": 0.1, "translate": 0.1}
    b9 = _yaml(tmp_path / "b9.yaml", more)
    a9 = _yaml(tmp_path / "a9.yaml", {k: 0.2 for k in more})
    with pytest.raises(ConfigError, match="too many for --design auto"):
        _plan(b9, a9)


def test_one_at_a_time_plan(tmp_path: Path) -> None:
    b = _yaml(tmp_path / "b.yaml", {"lr": 1e-3, "focal_gamma": 1.0, "hsv_h": 0.0})
    a = _yaml(tmp_path / "a.yaml", {"lr": 2e-3, "focal_gamma": 2.0, "hsv_h": 0.1})
    assert len(_plan(b, a, design="oat").x) == 8


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ({"lr": 1e-3}, [], "no key differs"),
        ({"learning_rat": 1e-3}, [], "unknown key 'learning_rat'"),
        ({"lr": -1.0}, [], "'lr' = -1.0 is out of range"),
        ({"lr": "fast"}, [], "key 'lr' must be float"),
        ({"lr": 2e-3}, ["--space", "search_spaces/fixes.yaml"], "--audit takes no --space"),
        ({"lr": 2e-3}, ["--audit-seeds", "1"], "2 or more seeds"),
    ],
)
def test_cli_errors_exit_2_before_ray_and_write_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Any],
    extra: list[str],
    message: str,
) -> None:
    before = _yaml(tmp_path / "before.yaml", {"lr": 1e-3})
    after = _yaml(tmp_path / "after.yaml", files)
    storage = tmp_path / "storage"
    code = run_search.main(
        ["--audit", before, after, "--storage", str(storage), "--no-dashboard", *extra]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not storage.exists()
    assert not ray.is_initialized()  # refused before Ray starts


def test_resume_refuses_a_changed_plan(tmp_path: Path) -> None:
    b = _yaml(tmp_path / "b.yaml", {"lr": 1e-3, "focal_gamma": 1.0})
    a = _yaml(tmp_path / "a.yaml", {"lr": 2e-3, "focal_gamma": 2.0})
    plan = _plan(b, a)
    audit.save_plan(plan, tmp_path / "exp")
    audit.check_resume(plan, tmp_path / "exp")  # the same plan: fine
    with pytest.raises(ConfigError, match="changes the audit's seeds"):
        audit.check_resume(_plan(b, a, seeds=4), tmp_path / "exp")


# --- a real grid on a synthetic trainable of known effects ------------------------------------

TRUE = {"lr": 0.06, "box_loss_weight": -0.04, "focal_gamma": 0.0}  # AFTER - BEFORE
BEFORE = {"lr": 1e-3, "box_loss_weight": 5.0, "focal_gamma": 1.0}
AFTER = {"lr": 2e-3, "box_loss_weight": 7.5, "focal_gamma": 2.0}
NOISE_SD = 0.004


def synthetic_value(config: dict[str, Any]) -> tuple[dict[str, int], int, float]:
    """0.5 + the sum of the effects at the row's levels + a seed effect + noise."""
    levels = {k: 1 if config[k] == AFTER[k] else -1 for k in TRUE}
    seed = int(config["seed"])
    rng = np.random.default_rng(1000 * int(config[AUDIT_ROW]) + seed)
    value = 0.5 + sum(TRUE[k] * lv / 2 for k, lv in levels.items())
    return levels, seed, value + 0.01 * seed + rng.normal(0, NOISE_SD)


def synthetic_trial(config: dict[str, Any]) -> None:
    """Reports ``synthetic_value``; the row with every change AFTER diverges on seed 2 (the
    worst value, marked)."""
    from ray import tune

    levels, seed, value = synthetic_value(config)
    for epoch in (1, 2):
        if epoch == 2 and all(lv > 0 for lv in levels.values()) and seed == 2:
            tune.report({EPOCH: epoch, OBJECTIVE: 0.0, DIVERGED: True})
            return
        tune.report(
            {
                EPOCH: epoch,
                OBJECTIVE: value if epoch == 2 else value - 0.1,
                OBJECTIVE_EPOCH: epoch,
                MAP50: value + 0.2,
                VAL_LOSS: 2.0 - value,
                THRESHOLD_F1: value / 2,
                DIVERGED: False,
            }
        )


@pytest.mark.slow
def test_audit_recovers_known_effects_through_the_real_grid(tmp_path: Path) -> None:
    from ray import tune

    b, a = _yaml(tmp_path / "b.yaml", BEFORE), _yaml(tmp_path / "a.yaml", AFTER)
    plan = _plan(b, a, seeds=3, overrides={"epochs": 2})
    assert plan.x.shape == (8, 3)
    import sys

    from ray import cloudpickle

    # the trial function travels by value: Ray's workers cannot import this test module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = audit.build_tuner(
            tune.with_resources(synthetic_trial, {"cpu": 0.25}),
            plan,
            Experiment("known", str(tmp_path / "storage"), max_failures=0, verbose=0),
            concurrent=8,
        )
        runs = audit.collect(tuner.fit(), plan, ["cow"])
    finally:
        ray.shutdown()
    assert len(runs) == 24
    diverged = [r for r in runs if r.status == "diverged"]
    assert len(diverged) == 1
    assert diverged[0].objective == 0.0
    assert diverged[0].f1["own"] == 0.0
    assert plan.row_label(diverged[0].row) == "AFTER"
    assert diverged[0].seed == 2

    folder = tmp_path / "report"
    lines = audit_report.write_report(plan, runs, folder)
    doc = json.loads((folder / audit_report.REPORT_JSON).read_text())
    effects = doc["metrics"][OBJECTIVE]["effects"]
    # The diverged run (0 instead of ~0.53) is one outlier cell: its row x seed residual makes
    # every interval wide, so the verdicts below are judged on the runs without it.
    assert all(e["low"] <= e["effect"] <= e["high"] for e in effects.values())
    clean = [r for r in runs if r.status != "diverged"]
    would_be = synthetic_value({**AFTER, "seed": 2, AUDIT_ROW: diverged[0].row})[2]
    fixed = audit.Run(
        **{**vars(diverged[0]), "status": "completed", "objective": would_be},
    )
    fixed.val_loss, fixed.mAP50, fixed.f1 = 2.0 - would_be, would_be + 0.2, {"own": would_be / 2}
    # with the diverged run, the val loss has no effects: one run has no finite value
    assert "unavailable" in doc["metrics"]["val_loss"]
    doc2 = audit_report.analyse(plan, [*clean, fixed])
    for key, true in TRUE.items():
        e = doc2["metrics"][OBJECTIVE]["effects"][key]
        assert e["low"] <= true <= e["high"], (key, e)
        assert abs(e["effect"] - true) < 0.02
    verdicts = {k: doc2["metrics"][OBJECTIVE]["effects"][k]["verdict"] for k in TRUE}
    assert verdicts == {"lr": "helped", "box_loss_weight": "hurt", "focal_gamma": "within noise"}
    # the lower val loss is the better one: a change that raised the objective lowered it
    assert doc2["metrics"]["val_loss"]["effects"]["lr"]["verdict"] == "helped"
    # every file of the report, with its content
    md = (folder / audit_report.REPORT_MD).read_text()
    assert "| lr |" in md
    assert "diverged (worst value): AFTER seed 2" in md
    assert len((folder / audit_report.RUNS_CSV).read_text().splitlines()) == 25
    assert (folder / audit_report.FOREST_PNG).stat().st_size > 5000
    assert any("report:" in line for line in lines)
    rows = doc["metrics"][OBJECTIVE]["rows"]
    assert rows["AFTER"]["values"][2] == 0.0  # the diverged seed counts with the worst value
    before_mean = 0.5 - sum(TRUE.values()) / 2 + 0.01  # every change at BEFORE; seeds 0-2
    assert math.isclose(rows["BEFORE"]["mean"], before_mean, abs_tol=0.01)
    # a full factorial resolves each two-factor interaction: the true ones are zero
    assert [len(i["pairs"]) for i in doc2["metrics"][OBJECTIVE]["interactions"]] == [1, 1, 1]
    assert all(i["low"] <= 0 <= i["high"] for i in doc2["metrics"][OBJECTIVE]["interactions"])


def test_f1_effect_of_the_threshold_is_paired_over_every_run() -> None:
    factor = audit.Factor(("score_threshold",), (0.05,), (0.25,), post_hoc=True)
    lr = audit.Factor(("lr",), (1e-3,), (2e-3,))
    from cattle_yolo.config import TrainConfig
    from tune.space import SearchSettings

    settings = SearchSettings(epochs=2, grace_period=1)
    x = doe.full_factorial(1)
    plan = audit.AuditPlan("b", "a", TrainConfig(), [lr, factor], "2^1", x, [0, 1, 2], settings)
    runs = []
    for row in range(2):
        for seed in range(3):
            f1 = {"-1": 0.40 + 0.01 * seed, "1": 0.45 + 0.01 * seed + 0.002 * row}
            runs.append(
                audit.Run(row, seed, "completed", "", "", 2, 0.5 + 0.1 * row, 2, 0.7, 1.0, f1)
            )
    doc = audit_report.analyse(plan, runs)
    thr = doc["metrics"]["F1"]["effects"]["score_threshold"]
    assert thr["effect"] == pytest.approx(0.051)
    assert thr["verdict"] == "helped"
    assert thr["df"] == 2
    assert "cannot change it" in doc["metrics"][OBJECTIVE]["effects"]["score_threshold"]["verdict"]
    # BEFORE's F1 is read at BEFORE's threshold, AFTER's at AFTER's
    assert doc["metrics"]["F1"]["rows"]["BEFORE"]["mean"] == pytest.approx(0.41)
    assert doc["metrics"]["F1"]["rows"]["AFTER"]["mean"] == pytest.approx(0.462)


def test_cli_refuses_too_many_changes_for_the_design(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["lr", "box_loss_weight", "cls_loss_weight", "focal_gamma", "hsv_h", "hsv_s", "hsv_v"]
    b = _yaml(tmp_path / "b.yaml", {k: 0.1 for k in keys})
    a = _yaml(tmp_path / "a.yaml", {k: 0.2 for k in keys})
    code = run_search.main(["--audit", b, a, "--design", "factorial", "--no-dashboard"])
    assert code == 2
    assert "a full factorial takes 1 to 6 factors" in capsys.readouterr().err


@pytest.mark.slow
def test_audit_cli_trains_the_real_trainable_and_resumes(tmp_path: Path) -> None:
    """Two trained changes and the post-hoc threshold on the tiny synthetic data, 1 epoch:
    the report has every response, F1 is scored at both thresholds from best.pt's saved
    detections, and --resume of the finished audit keeps its runs and writes the report again."""
    from helpers import TINY

    b = _yaml(
        tmp_path / "b.yaml", {**TINY, "lr": 1e-3, "focal_gamma": 2.0, "score_threshold": 0.05}
    )
    a = _yaml(tmp_path / "a.yaml", {**TINY, "lr": 2e-3, "focal_gamma": 1.0, "score_threshold": 0.3})
    storage = ["--storage", str(tmp_path / "st"), "--name", "tiny"]
    args = ["--audit", b, a, "--epochs", "1", "--audit-seeds", "2", *storage, "--no-dashboard"]
    assert run_search.main(args) == 0
    folder = tmp_path / "st" / "tiny"
    doc = json.loads((folder / audit_report.REPORT_JSON).read_text())
    assert len(doc["runs"]) == 8
    assert all(r["status"] == "completed" for r in doc["runs"])
    assert all(set(r["f1"]) == {"-1", "1"} for r in doc["runs"])  # both thresholds scored
    effects = doc["metrics"]["F1"]["effects"]
    assert set(effects) == {"lr", "focal_gamma", "score_threshold"}
    assert effects["score_threshold"]["df"] == 1  # 2 seeds
    first = (folder / audit_report.RUNS_CSV).read_text()
    trials = sorted(p.name for p in folder.glob("trial_*"))
    assert run_search.main([*args, "--resume"]) == 0
    assert sorted(p.name for p in folder.glob("trial_*")) == trials  # nothing retrained
    assert (folder / audit_report.RUNS_CSV).read_text() == first
