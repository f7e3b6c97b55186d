"""Real searches on tiny synthetic data in one local Ray session (with its dashboard):
Optuna + ASHA + the divergence stopper, a diverging trial, a trial that fails once, the
dashboard's token auth, and the exported best config."""

import json
import math
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray
from helpers import REPO, TINY
from ray import cloudpickle

from cattle_yolo.config import TrainConfig
from cattle_yolo.data import load_datasets
from tune import report, search
from tune.space import load_space

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
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_session():
    ctx = search.init_ray(None, dashboard=True, dashboard_host="127.0.0.1",
                          dashboard_port=_free_port())  # fmt: skip
    yield ctx
    ray.shutdown()


def _search(tmp_path, space_text, name, extra_callbacks=(), max_failures=1):
    space = load_space(_write(tmp_path / f"{name}.yaml", space_text))
    base = TrainConfig.load(None, {**TINY, **space.fixed, "epochs": space.settings.epochs})
    datasets = load_datasets(base, verbose=False)
    resources = search.plan_resources(ray.cluster_resources(), 0, 1.0, 1.0, space.settings.trials)
    trainable = search.make_trainable(base, datasets, space.settings, resources, extra_callbacks)
    tuner, _ = search.build_tuner(trainable, space, base, space.settings, resources, name,
                                  str(tmp_path / "runs"), max_failures, verbose=0)  # fmt: skip
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


def test_search_with_a_diverging_trial_exports_a_best_config(ray_session, tmp_path):
    space, base, tuner, results, rows = _search(tmp_path, SEARCH, "search")
    by_lr = {r.params["lr"]: r for r in rows}
    assert len(rows) == 4 and not results.errors
    assert {r.status for r in rows} <= {"completed", "stopped by ASHA", "diverged"}

    # the hand-fixed default ran first, exactly, and was not cut as diverged
    default = by_lr[1e-3]
    assert default.name.startswith("trial_001")
    assert (default.params["iou_start"], default.params["iou_end"]) == (0.25, 0.45)
    assert default.status in ("completed", "stopped by ASHA")

    # lr=10 is stopped within 2 epochs and reported diverged with the rule that fired
    wild = by_lr[10.0]
    assert wild.status == "diverged" and wild.epochs_run <= 2, (wild.status, wild.detail)
    assert "non-finite" in wild.detail or "spike" in wild.detail or "training loop" in wild.detail
    assert wild.best == 0.0  # the finite worst objective

    # every trial reached Optuna as a finite, completed value (none left RUNNING)
    assert all(math.isfinite(r.metrics["objective"]) for r in results)
    study = tuner._local_tuner._tune_config.search_alg.searcher._ot_study  # private: no public view
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.value for t in study.trials) == sorted(r.best for r in rows)

    lines = report.write_report(rows, space, space.settings, base, tmp_path / "report", "search",
                                tmp_path / "best.yaml")  # fmt: skip
    assert any(line.startswith("best trial:") for line in lines)
    best = report.pick_best(rows, "max")
    cfg = TrainConfig.load(tmp_path / "best.yaml")
    assert cfg == report.best_config(best, base) and cfg.epochs == 3
    assert cfg.lr == best.params["lr"] and cfg.iou_end >= cfg.iou_start
    assert (Path(best.path) / "run" / "models" / "best.pt").is_file()
    for plot in ("curves.png", "knobs.png"):
        assert (tmp_path / "report" / "plots" / plot).is_file()

    # `cattle_yolo train --config` on the export reproduces the best trial's metric exactly
    # (the export carries the trial's thread count; the data, seed and epochs are the same)
    assert cfg.threads == best.threads >= 1
    proc = subprocess.run(
        [sys.executable, "-m", "cattle_yolo", "train", "--config", str(tmp_path / "best.yaml"),
         "--out", str(tmp_path / "retrain")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "retrain" / "metrics" / "training_metrics.jsonl").read_text().splitlines()
    retrained = max(json.loads(line)["mAP50_95"] for line in log)
    assert retrained == best.best, (retrained, best.best)


class FailOnce:
    """A training callback that raises at ``epoch`` the first time only (a marker file)."""

    def __init__(self, marker: str, epoch: int) -> None:
        self.marker, self.epoch = marker, epoch

    def __call__(self, stats: dict) -> None:
        if stats["epoch"] == self.epoch and not os.path.exists(self.marker):
            Path(self.marker).write_text("failed once")
            raise RuntimeError("injected fault")


def test_a_trial_that_raises_is_retried_from_its_checkpoint(ray_session, tmp_path):
    text = "search: {trials: 1, epochs: 3, grace_period: 3}\nspace:\n  lr: {loguniform: [1.0e-4, 3.0e-3]}\n"
    marker = tmp_path / "failed"
    _, _, _, results, rows = _search(tmp_path, text, "retry", (FailOnce(str(marker), 2),))
    assert marker.is_file()  # the fault fired
    (row,) = rows
    assert row.status == "completed" and not results.errors
    assert results[0].metrics["resumed_from_epoch"] == 2  # resumed at epoch 2, not from 0
    assert [h["epoch"] for h in row.history] == [1, 2, 3]


def _token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    return Path(search.token_location()).read_text().strip()


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=20
        ) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_dashboard_on_localhost_needs_the_token(ray_session):
    url = ray_session.dashboard_url
    host, port = url.split(":")
    assert host == "127.0.0.1"
    assert search.token_auth_enabled()
    lines = search.dashboard_lines(ray_session, "127.0.0.1", attached=False)
    assert (
        lines[0] == f"Ray dashboard: http://{url}"
        and "auth_token" in lines[1]
        or "RAY_AUTH" in lines[1]
    )
    assert not any("WARNING" in line for line in lines)
    assert any("WARNING" in line for line in search.dashboard_lines(ray_session, "0.0.0.0", False))

    api = f"http://{url}/api/version"
    assert _get(api, {"Authorization": f"Bearer {_token()}"}) == 200
    assert _get(api) == 401
    assert _get(api, {"Authorization": "Bearer not-the-token"}) == 403
    # bound to the loopback only: every socket listening on the dashboard port is 127.0.0.1
    listening = _listening_ipv4(int(port))
    assert listening == {"127.0.0.1"}, listening
