"""The driver end to end: killed with SIGKILL mid-search, then resumed by the same command."""

import contextlib
import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, run_search

from tune.results import EPOCH, RESUMED_FROM_EPOCH

pytestmark = pytest.mark.slow


def _trial_states(experiment: Path) -> dict[str, str]:
    """trial id -> status from Tune's latest experiment-state snapshot."""
    files = glob.glob(str(experiment / "experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(Path(max(files, key=os.path.getmtime)).read_text())
    except (json.JSONDecodeError, OSError):  # caught mid-write
        return {}
    trials = [json.loads(t[0]) for t in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _epochs_trained(experiment: Path) -> dict[str, int]:
    """trial id -> epochs its run folder holds (run folders are persistent, unlike Tune's state)."""
    epochs = {}
    for metrics in experiment.glob("trial_*/run/metrics/training_metrics.csv"):
        epochs[metrics.parents[2].name.rsplit("_", 1)[-1]] = len(
            list(csv.DictReader(metrics.open()))
        )
    return epochs


# Epochs per trial, on 16 images (4 steps an epoch): enough that, once a trial has finished,
# another is still part-way when the test looks.
EPOCHS = 6


def test_killed_search_resumes_without_losing_finished_trials(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(REPO / "run_search.py"),
        "--smoke-test",
        "--trials",
        "4",
        "--epochs",
        str(EPOCHS),
        "--grace-period",
        str(EPOCHS),
        "--set",
        "synthetic_images=16",
        # seed 0's fourth trial (lr 8.8e-3) trips the collapse rule on these 4-step epochs
        # (BatchNorm's running statistics stay cold); this test is about resuming
        "--seed",
        "1",
        "--storage",
        str(tmp_path),
        "--name",
        "killed",
        "--no-dashboard",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    experiment = tmp_path / "killed"
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    finished: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            states = _trial_states(experiment)
            done = {t for t, s in states.items() if s == "TERMINATED"}
            trained = _epochs_trained(experiment)
            # kill once a trial has finished and another one is part-way through
            if done and any(t not in done and 0 < n < EPOCHS for t, n in trained.items()):
                finished = {t: s for t, s in states.items() if s == "TERMINATED"}
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the search ended before it could be killed"
        assert finished, "no trial finished in time"
        os.kill(driver.pid, signal.SIGKILL)
        started = {t: n for t, n in _epochs_trained(experiment).items() if t not in finished}
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        with contextlib.suppress(ProcessLookupError):  # Ray's processes of that driver, if left
            os.killpg(driver.pid, signal.SIGKILL)
        log.close()

    progress = {}
    for trial_id in finished:
        (trial_dir,) = experiment.glob(f"trial_*_{trial_id}")
        progress[trial_id] = (trial_dir / "progress.csv").read_text()

    resumed = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the search" in resumed.stdout

    rows = list(csv.DictReader((experiment / "results.csv").open()))
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"completed"}
    for trial_id, before in progress.items():
        (trial_dir,) = experiment.glob(f"trial_*_{trial_id}")
        assert (trial_dir / "progress.csv").read_text() == before  # kept, not trained again
        assert any(r["trial"].endswith(trial_id) for r in rows)
    assert (experiment / "best_config.yaml").is_file()
    for trial_id, epochs in started.items():  # unfinished trials continued, not restarted
        (trial_dir,) = experiment.glob(f"trial_*_{trial_id}")
        last = json.loads((trial_dir / "result.json").read_text().splitlines()[-1])
        assert last[RESUMED_FROM_EPOCH] >= epochs, (trial_id, epochs, last[RESUMED_FROM_EPOCH])
        history = [
            json.loads(line)[EPOCH] for line in (trial_dir / "result.json").read_text().splitlines()
        ]
        assert sorted(set(history)) == list(range(1, EPOCHS + 1))
    assert any(n > 0 for n in started.values())


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--epochs", "1", "--storage", str(cwd), "--no-dashboard", "--quiet"]
    return run_search([*flags, *args], cwd)


def test_more_trials_extend_a_finished_search_and_changed_settings_are_refused(
    tmp_path: Path,
) -> None:
    first = _run(["--name", "ext", "--trials", "2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    results = tmp_path / "ext" / "results.csv"
    assert len(list(csv.DictReader(results.open()))) == 2

    more = _run(["--name", "ext", "--trials", "3"], tmp_path)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "extending the search to 3 trials" in more.stdout
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 3
    assert {r["status"] for r in rows} == {"completed"}

    for flags, message in (
        (["--epochs", "2"], "--epochs 2 differs from the saved 1"),
        (["--trials", "2"], "--trials 2 is below the saved 3"),
        (["--set", "lr_warmup=1"], "unknown"),
        (["--set", "imgsz=96"], "change imgsz"),
        (["--warm-start", "ext"], "--warm-start only seeds a new search"),
    ):
        refused = _run(["--name", "ext", "--trials", "3", *flags], tmp_path)
        assert refused.returncode == 2, (flags, refused.stdout[-2000:], refused.stderr[-2000:])
        assert message in refused.stderr, (flags, refused.stderr)
    assert len(list(csv.DictReader(results.open()))) == 3  # nothing was lost

    # a new search warm-started from that one: its study begins with the 3 finished trials
    warm = _run(["--name", "warm", "--trials", "1", "--warm-start", "ext"], tmp_path)
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    assert "the study begins with 3 finished trial(s)" in warm.stdout
    import optuna

    from tune.study import JOURNAL_FILE, journal_storage

    study = optuna.load_study(
        study_name="warm", storage=journal_storage(tmp_path / "warm" / JOURNAL_FILE)
    )
    assert len(study.trials) == 4
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_file_uri_storage_is_the_path_it_names(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    import run_search

    args = run_search.build_parser().parse_args(
        ["--smoke-test", "--storage", f"file://{tmp_path}/store", "--name", "x"]
    )
    plan = run_search.plan_search(args)
    assert plan.storage == str(tmp_path / "store")
    assert plan.path == str(tmp_path / "store" / "x")


def test_confirm_set_is_checked_before_ray_and_sets_the_confirmations_config(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(REPO))
    import run_search
    from cattle_yolo.config import ConfigError

    def plan(*flags: str) -> Any:
        args = run_search.build_parser().parse_args(
            ["--smoke-test", "--storage", str(tmp_path), "--name", "p", "--confirm", "1", *flags]
        )
        return run_search.plan_search(args)

    same = plan()
    assert same.confirm_base is None
    assert same.confirmation() == (same.base, same.settings)
    # A value the search already has changes nothing: the search's config (and data) serve.
    assert plan("--confirm-set", f"imgsz={same.base.imgsz}").confirm_base is None

    p = plan("--confirm-set", "imgsz=96", "--confirm-set", "epochs=3")
    base, settings = p.confirmation()
    assert (base.imgsz, base.epochs, settings.epochs) == (96, 3, 3)
    assert p.base.imgsz == 64
    assert p.settings.epochs == 2
    assert base.to_dict() == {**p.base.to_dict(), "imgsz": 96, "epochs": 3}

    for flag, message in (
        ("lr=0.1", "--confirm-set lr"),  # a searched knob: that is what it confirms
        ("seed=5", "--confirm-set seed"),
        ("imgsz=abc", "imgsz"),
        ("data=/no/such/folder", "no such file or folder"),
        ("epochs=0", "epochs"),
    ):
        with pytest.raises(ConfigError, match=message):
            plan("--confirm-set", flag)
    with pytest.raises(ConfigError, match="confirms nothing"):  # nothing to apply it to
        plan("--confirm", "0", "--confirm-set", "imgsz=96")


def test_a_search_confirms_at_the_confirm_set_fidelity_and_a_resume_keeps_it(
    tmp_path: Path,
) -> None:
    """Search at 64 px for 1 epoch, confirm the best and the default at 96 px for 2 epochs:
    every confirmation run trains with that config, the export carries it, and running the
    same search again without the flag finds it saved."""
    flags = ["--name", "cs", "--trials", "2", "--confirm", "1", "--confirm-seeds", "1"]
    first = _run([*flags, "--confirm-set", "imgsz=96", "--confirm-set", "epochs=2"], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "the confirmation differs from the search by imgsz=96, epochs=2" in first.stdout
    assert "2 runs of 2 epochs" in first.stdout

    searched = list((tmp_path / "cs").glob("trial_*/run/config.yaml"))
    confirmed = list((tmp_path / "cs-confirm").glob("trial_*/run/config.yaml"))
    assert len(searched) == 2
    assert len(confirmed) == 2
    assert {yaml.safe_load(f.read_text())["imgsz"] for f in searched} == {64}
    assert {yaml.safe_load(f.read_text())["imgsz"] for f in confirmed} == {96}
    for f in confirmed:
        rows = list(csv.DictReader((f.parent / "metrics" / "training_metrics.csv").open()))
        assert len(rows) == 2
    export = yaml.safe_load((tmp_path / "cs" / "best_config.yaml").read_text())
    assert (export["config"]["imgsz"], export["config"]["epochs"]) == (96, 2)
    saved = yaml.safe_load((tmp_path / "cs" / "search_settings.yaml").read_text())
    assert saved["confirm_base"]["imgsz"] == 96
    assert saved["base"]["imgsz"] == 64

    again = _run(flags, tmp_path)  # no --confirm-set: the saved one holds
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "the confirmation differs from the search by imgsz=96, epochs=2" in again.stdout
    assert len(list((tmp_path / "cs-confirm").glob("trial_*/run/config.yaml"))) == 2
