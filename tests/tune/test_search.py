"""Real searches on tiny synthetic data in one local Ray session (with its dashboard):
Optuna + ASHA + the divergence stopper, a diverging trial, a trial that fails once, the
dashboard's token auth, and the exported best config."""

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import yaml
from helpers import REPO, TINY, read_events, tiny_tuner
from ray import cloudpickle
from ray.tune import Tuner

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import load_datasets
from tune import cluster, report, search
from tune.results import OBJECTIVE, RESUMED_FROM_EPOCH, THRESHOLD, THRESHOLD_F1, TrialRow
from tune.space import SearchSpace, for_metric, load_space
from tune.study import JOURNAL_FILE, journal_storage

pytestmark = pytest.mark.slow

# FailOnce lives in this module, which Ray workers cannot import: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _listening_ipv4(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port``, read from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        ip_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1]))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ctx = cluster.init_ray(
        None, dashboard=True, dashboard_host="127.0.0.1", dashboard_port=_free_port()
    )
    yield ctx
    ray.shutdown()


def _search(
    tmp_path: Path,
    space_text: str,
    name: str,
    extra_callbacks: tuple[Callable[[S.EpochStats], None], ...] = (),
    max_failures: int = 1,
    concurrent: int | None = None,
) -> tuple[SearchSpace, TrainConfig, Tuner, Any, list[TrialRow]]:
    """Run a tiny search; returns (space, base config, tuner, Tune's ResultGrid, trial rows)."""
    space, _ = for_metric(load_space(_write(tmp_path / f"{name}.yaml", space_text)), S.MAP50_95)
    base = TrainConfig.load(None, {**TINY, **space.fixed, "epochs": space.settings.epochs})
    resources = cluster.plan_resources(ray.cluster_resources(), 0, 1.0, 1.0, space.settings.trials)
    if concurrent:
        resources = cluster.Resources(0, 0, 1.0, concurrent)
    runs = tmp_path / "runs"
    tuner = tiny_tuner(
        space,
        base,
        resources,
        name,
        str(runs),
        extra_callbacks,
        max_failures,
        journal=runs / name / JOURNAL_FILE,
    )
    results = tuner.fit()
    return space, base, tuner, results, report.trial_rows(results, space.settings)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SEARCH = """
search: {trials: 4, epochs: 3, grace_period: 1, reduction_factor: 2, patience: 2, seed: 3}
space:
  lr: {loguniform: [3.0e-4, 10.0]}
  box_loss_weight: {uniform: [4.0, 10.0]}
  iou_start: {uniform: [0.15, 0.35]}
  iou_end: {uniform: [0.35, 0.55]}
points:
  - {lr: 10.0}
"""


def test_search_with_a_diverging_trial_exports_a_best_config(
    ray_session: Any, tmp_path: Path
) -> None:
    space, base, tuner, results, rows = _search(tmp_path, SEARCH, "search")
    by_lr = {r.params["lr"]: r for r in rows}
    assert len(rows) == 4
    assert not results.errors
    assert {r.status for r in rows} <= {"completed", "stopped by ASHA", "diverged"}

    # the hand-fixed default ran first, exactly, and was not cut as diverged
    default = by_lr[1e-3]
    assert default.name.startswith("trial_001")
    assert (default.params["iou_start"], default.params["iou_end"]) == (0.25, 0.45)
    assert default.status in ("completed", "stopped by ASHA")

    # lr=10 is stopped within 2 epochs and reported diverged with the rule that fired
    wild = by_lr[10.0]
    assert wild.status == "diverged", (wild.status, wild.detail)
    assert wild.epochs_run <= 2, (wild.epochs_run, wild.detail)
    rules = ("non-finite", "spike", "training loop", "collapsed")  # which fires hangs on rounding
    assert any(rule in wild.detail for rule in rules), wild.detail
    assert wild.objective == 0.0  # the finite worst objective

    # every trial reached Optuna finished (none left RUNNING): ASHA's cuts as PRUNED
    assert all(math.isfinite(r.metrics[OBJECTIVE]) for r in results)
    study = optuna.load_study(
        study_name="search", storage=journal_storage(tmp_path / "runs" / "search" / JOURNAL_FILE)
    )
    want = {"completed": "COMPLETE", "diverged": "COMPLETE", "stopped by ASHA": "PRUNED"}
    assert sorted(t.state.name for t in study.trials) == sorted(want[r.status] for r in rows)
    complete = [
        r.objective for r in rows if r.status != "stopped by ASHA" and r.objective is not None
    ]
    values = [t.value for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    assert sorted(values) == sorted(complete)

    lines = report.write_report(
        rows, space, space.settings, base, tmp_path / "report", "search", tmp_path / "best.yaml"
    )
    assert any(line.startswith("best trial:") for line in lines)
    best = report.pick_best(rows, "max")
    assert best is not None
    cfg = TrainConfig.load(tmp_path / "best.yaml")
    assert cfg == report.best_config(best, base)
    assert cfg.epochs == 3
    assert cfg.lr == best.params["lr"]
    assert cfg.iou_end >= cfg.iou_start
    assert (Path(best.path) / "run" / "models" / "best.pt").is_file()
    for plot in ("curves.png", "knobs.png"):
        assert (tmp_path / "report" / "plots" / plot).is_file()

    # `cattle_yolo train --config` on the export reproduces the best trial's metric exactly
    # (the export carries the trial's thread count; the data, seed and epochs are the same)
    assert cfg.threads == best.threads >= 1
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cattle_yolo",
            "train",
            "--config",
            str(tmp_path / "best.yaml"),
            "--out",
            str(tmp_path / "retrain"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "retrain" / "metrics" / "training_metrics.jsonl").read_text().splitlines()
    retrained = max(json.loads(line)[S.MAP50_95] for line in log)
    assert retrained == best.objective, (retrained, best.objective)


class FailOnce:
    """A training callback that raises at ``epoch`` the first time only (a marker file)."""

    def __init__(self, marker: str, epoch: int) -> None:
        self.marker, self.epoch = marker, epoch

    def __call__(self, stats: S.EpochStats) -> None:
        if stats[S.EPOCH] == self.epoch and not os.path.exists(self.marker):
            Path(self.marker).write_text("failed once")
            raise RuntimeError("injected fault")


def test_a_trial_that_raises_is_retried_from_its_checkpoint(
    ray_session: Any, tmp_path: Path
) -> None:
    text = (
        "search: {trials: 1, epochs: 3, grace_period: 3}\n"
        "space:\n  lr: {loguniform: [1.0e-4, 3.0e-3]}\n"
    )
    marker = tmp_path / "failed"
    _, _, _, results, rows = _search(tmp_path, text, "retry", (FailOnce(str(marker), 2),))
    assert marker.is_file()  # the fault fired
    (row,) = rows
    assert row.status == "completed"
    assert not results.errors
    assert results[0].metrics[RESUMED_FROM_EPOCH] == 2  # resumed at epoch 2, not from 0
    assert [h[S.EPOCH] for h in row.history] == [1, 2, 3]


def _token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    return Path(cluster.token_location()).read_text().strip()


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=20
        ) as r:
            return int(r.status)  # urlopen is typed Any
    except urllib.error.HTTPError as e:
        return e.code


def test_dashboard_on_localhost_needs_the_token(ray_session: Any) -> None:
    url = ray_session.dashboard_url
    host, port = url.split(":")
    assert host == "127.0.0.1"
    assert cluster.token_auth_enabled()
    lines = cluster.dashboard_lines(ray_session, "127.0.0.1", attached=False)
    assert lines[0] == f"Ray dashboard: http://{url}"
    assert "token auth is on" in lines[1]
    assert "auth_token" in lines[1] or "RAY_AUTH_TOKEN" in lines[1]
    assert not any("WARNING" in line for line in lines)
    assert any("WARNING" in line for line in cluster.dashboard_lines(ray_session, "0.0.0.0", False))

    api = f"http://{url}/api/version"
    assert _get(api, {"Authorization": f"Bearer {_token()}"}) == 200
    assert _get(api) == 401
    assert _get(api, {"Authorization": "Bearer not-the-token"}) == 403
    # bound to the loopback only: every socket listening on the dashboard port is 127.0.0.1
    listening = _listening_ipv4(int(port))
    assert listening == {"127.0.0.1"}, listening


ASHA = """
search: {trials: 4, epochs: 3, grace_period: 1, reduction_factor: 2, seed: 1}
space:
  lr: {loguniform: [1.0e-4, 3.0e-3]}
  box_loss_weight: {uniform: [4.0, 10.0]}
  score_threshold: {uniform: [0.05, 0.5]}
"""


def test_asha_stops_are_pruned_in_the_journal_and_confirmation_retrains(
    ray_session: Any, tmp_path: Path
) -> None:
    """One trial at a time, so ASHA's cuts do not depend on which trial finished first."""
    space, base, _, results, rows = _search(tmp_path, ASHA, "asha", concurrent=1)
    assert "score_threshold" not in space.knobs  # under mAP it is chosen after training
    cut = [r for r in rows if r.status == "stopped by ASHA"]
    assert cut, [(r.name, r.status) for r in rows]
    study = optuna.load_study(
        study_name="asha", storage=journal_storage(tmp_path / "runs" / "asha" / JOURNAL_FILE)
    )
    trials = sorted(study.trials, key=lambda t: t.number)
    for row, trial in zip(rows, trials, strict=True):  # trial order is the study's order
        assert trial.state.name == ("PRUNED" if row.status == "stopped by ASHA" else "COMPLETE")
        # every epoch's objective reached the study, the last one included
        assert sorted(trial.intermediate_values) == list(range(1, row.epochs_run + 1))
        assert trial.intermediate_values[row.epochs_run] == pytest.approx(row.objective)
        assert THRESHOLD in row.threshold
        assert THRESHOLD_F1 in row.threshold

    # bounded disk: an ended trial keeps its best.pt (keep_weights None here) but no last.pt
    for row in rows:
        models = Path(row.path) / "run" / "models"
        assert (models / "best.pt").is_file()
        assert not (models / "last.pt").exists()

    # TensorBoard: every trial's events hold each epoch's scalars and its hyperparameters
    for row in rows:
        scalars, hparams = read_events(Path(row.path))
        for key in (S.MAP50_95, S.TRAIN_LOSS):
            got = dict(scalars[f"ray/tune/{key}"])  # Tune's TensorBoard tag of a result key
            assert sorted(got) == list(range(1, row.epochs_run + 1))
            assert [got[int(h[S.EPOCH])] for h in row.history] == pytest.approx(
                [h[key] for h in row.history]
            )
        assert hparams >= 1

    # each trial's run/config.yaml holds exactly the values the searcher sampled
    for result in results:
        saved = TrainConfig.load(Path(result.path) / "run" / "config.yaml")
        for key in space.knobs:
            assert getattr(saved, key) == result.config[key], key

    # confirmation: the best trial (K=1) and the default, 2 fresh seeds each: K x S + S runs
    from tune import confirm

    settings = space.settings
    candidates = confirm.pick_candidates(rows, space, settings, base, k=1)
    assert candidates[0].label == "default"
    assert candidates[0].params["lr"] == base.lr
    others = [r for r in rows if r.status == "completed" and r.params["lr"] != base.lr]
    top = max(r.objective for r in others if r.objective is not None)
    assert len(candidates) == 2
    assert candidates[1].label in {r.name for r in others if r.objective == top}
    seeds = confirm.fresh_seeds(settings, 2)
    assert seeds == [2, 3]  # the search trained on seed 1
    datasets = load_datasets(base, verbose=False)
    resources = cluster.Resources(0, 0, 1.0, 2)
    trainable = search.make_trainable(
        base, datasets, settings, resources, threshold_range=space.threshold_range()
    )
    experiment = search.Experiment("asha", str(tmp_path / "runs"), max_failures=0, verbose=0)
    tuner = confirm.build_confirm_tuner(trainable, candidates, seeds, settings, 2, experiment)
    confirm.attach_runs(candidates, tuner.fit(), settings)
    assert [len(c.runs) for c in candidates] == [2, 2]
    for c in candidates:
        assert sorted(r.config["seed"] for r in c.runs) == seeds
        assert all(r.status == "completed" and r.epochs_run == 3 for r in c.runs)
        for r in c.runs:  # trained with that seed and the config's knobs
            saved = TrainConfig.load(Path(r.path) / "run" / "config.yaml")
            assert saved.seed == r.config["seed"]
            assert saved.lr == c.params["lr"]
    lines = confirm.report(
        candidates, seeds, space, settings, base, tmp_path / "rep", "asha", tmp_path / "best.yaml"
    )
    text = "\n".join(lines)
    win = confirm.winner(candidates, settings, len(seeds))
    assert win is not None
    # the verdict the numbers call for: the winner's gain against the larger seed sd
    if win is candidates[0]:
        assert "the hand-fixed default has the best mean" in text
    else:
        (m_w, sd_w), (m_d, sd_d) = win.mean_sd(0.0), candidates[0].mean_sd(0.0)
        word = "beats" if m_w - m_d > max(sd_w, sd_d) else "does not beat"
        assert f"confirmation: {win.label} {word} the default" in text
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["confirmed"]["config"] == win.label
    assert exported["confirmed"]["mean"] == pytest.approx(win.mean_sd(0.0)[0])
    assert exported["config"]["seed"] in seeds
    assert exported["config"]["lr"] == win.params["lr"]


FOCAL = """
search: {trials: 2, epochs: 1, grace_period: 1}
space:
  focal_gamma: {choice: [0.5, 3.0]}
points:
  - {focal_gamma: 0.5}
  - {focal_gamma: 3.0}
"""


def test_trials_that_differ_only_in_focal_gamma_train_differently(
    ray_session: Any, tmp_path: Path
) -> None:
    """The sampled value reaches the loss: the Ultralytics bug where every trial trained
    identically cannot happen here."""
    _, _, _, results, rows = _search(tmp_path, FOCAL, "focal")
    assert sorted(r.params["focal_gamma"] for r in rows) == [0.5, 3.0]
    cls = {}
    for result in results:
        saved = TrainConfig.load(Path(result.path) / "run" / "config.yaml")
        assert saved.focal_gamma == result.config["focal_gamma"]
        log = Path(result.path) / "run" / "metrics" / "training_metrics.jsonl"
        cls[saved.focal_gamma] = json.loads(log.read_text().splitlines()[0])[S.TRAIN_CLS]
    assert cls[0.5] != pytest.approx(cls[3.0], rel=1e-3), cls
    assert cls[0.5] > cls[3.0]  # a larger gamma down-weights the easy negatives more


def _api_json(url: str) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {_token()}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def _walk(obj: object) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def test_a_running_trial_is_named_on_the_dashboard_and_exports_its_metrics(
    ray_session: Any, tmp_path: Path
) -> None:
    """The dashboard's actor list (through its API, with the token) names the trial, and the
    node's Prometheus endpoint serves the trial's gauges labelled by trial id and experiment."""
    import threading

    text = (
        "search: {trials: 1, epochs: 20, grace_period: 20}\n"
        "space:\n  lr: {loguniform: [1.0e-4, 3.0e-3]}\n"
    )
    worker = threading.Thread(target=_search, args=(tmp_path, text, "watched"), daemon=True)
    worker.start()
    node = ray._private.worker.global_worker.node
    assert node is not None  # this process is connected to Ray
    metrics_url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    actors_url = f"http://{ray_session.dashboard_url}/api/v0/actors?detail=1&limit=1000"
    named, exported = None, None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.is_alive() and not (named and exported):
        time.sleep(2)
        trials = list((tmp_path / "runs" / "watched").glob("trial_*"))
        if not trials:
            continue
        trial_name = trials[0].name  # trial_001_<trial id>
        trial_id = trial_name.rsplit("_", 1)[-1]
        reprs = [a.get("repr_name") for a in _walk(_api_json(actors_url)) if "repr_name" in a]
        named = named or next((r for r in reprs if r == f"trial {trial_name}"), None)
        body = urllib.request.urlopen(metrics_url, timeout=20).read().decode()
        lines = [line for line in body.splitlines() if line.startswith("ray_cattle_trial_epoch{")]
        exported = exported or next(
            (
                line
                for line in lines
                if f'trial_id="{trial_id}"' in line and 'experiment="watched"' in line
            ),
            None,
        )
    worker.join(timeout=300)
    assert named, "no actor on the dashboard named after the trial"
    assert exported, "the trial's epoch gauge never reached the metrics endpoint"
    assert float(exported.rsplit(" ", 1)[-1]) >= 1  # an epoch count
