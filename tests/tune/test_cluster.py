"""tune/cluster.py: resource planning and the shared-storage check (without Ray), the
dashboard exposure check (a network-facing dashboard without token auth is refused before Ray
starts; with token auth on it binds and answers 401 without the token, 200 with it), and a
two-node cluster (ray.cluster_utils.Cluster, both nodes on this machine) that runs trials on
both nodes with the storage check passing because every node sees the path.

The tests that start no Ray come first: the two-node cluster starts with the first test that
uses it and lives to the end of the module."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from helpers import REPO, TINY, run_search, tiny_tuner
from ray import cloudpickle, tune
from ray.cluster_utils import Cluster

from cattle_yolo.config import TrainConfig
from cattle_yolo.stats import EpochStats
from tune import cluster, report
from tune.cluster import SearchSetupError, plan_resources
from tune.space import load_space

# RecordNode lives in this module, which Ray workers cannot import: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_more_gpus_than_ray_sees_is_an_error_naming_the_count() -> None:
    with pytest.raises(SearchSetupError, match="Ray sees 1 GPU"):
        plan_resources(
            {"CPU": 16, "GPU": 1}, gpus=2, gpus_per_trial=1, cpus_per_trial=None, trials=8
        )
    with pytest.raises(SearchSetupError, match="Ray sees 0 GPU"):
        plan_resources({"CPU": 2}, gpus=1, gpus_per_trial=1, cpus_per_trial=None, trials=8)


@pytest.mark.parametrize(
    ("cluster", "gpus", "per_trial", "cpus", "concurrent", "cpus_each"),
    [
        ({"CPU": 16, "GPU": 2}, 2, 1.0, None, 2, 8.0),  # all CPUs shared between the GPU trials
        ({"CPU": 16, "GPU": 2}, 2, 0.5, None, 4, 4.0),  # two trials packed on each GPU
        ({"CPU": 16, "GPU": 4}, 1, 1.0, 2, 1, 2.0),  # --gpus 1 of 4: one trial at a time
        ({"CPU": 16, "GPU": 2}, None, 1.0, None, 2, 8.0),  # default: every GPU Ray sees
        ({"CPU": 2}, None, 1.0, None, 2, 1.0),  # no GPU: CPU trials, one CPU each
        ({"CPU": 2, "GPU": 1}, 0, 1.0, 2, 1, 2.0),  # --gpus 0 on a GPU machine
        ({"CPU": 8}, 0, 1.0, 1, 3, 1.0),  # never more at once than trials
    ],
)
def test_plan(
    cluster: dict[str, float],
    gpus: float | None,
    per_trial: float,
    cpus: float | None,
    concurrent: int,
    cpus_each: float,
) -> None:
    r = plan_resources(cluster, gpus, per_trial, cpus, trials=3 if concurrent == 3 else 16)
    assert r.concurrent == concurrent
    assert r.cpus_per_trial == cpus_each
    assert r.per_trial()["gpu"] == (0.0 if not r.gpus else per_trial)


@pytest.mark.parametrize(
    ("gpus", "per_trial", "cpus"), [(2, 3.0, None), (2, 0.0, None), (0, 1.0, 4.0)]
)
def test_bad_requests(gpus: float, per_trial: float, cpus: float | None) -> None:
    with pytest.raises(SearchSetupError):
        plan_resources({"CPU": 2, "GPU": 2}, gpus, per_trial, cpus, trials=4)


def test_storage_a_node_cannot_see_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nodes = [
        {"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"},
        {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"},
    ]

    class Probe:
        def options(self, **_: Any) -> "Probe":
            return self

        def remote(self, path: str) -> str:
            return path

    import ray

    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "remote", lambda **_: lambda function: Probe())
    monkeypatch.setattr(ray, "get", lambda refs, timeout: [True, False])
    with pytest.raises(SearchSetupError) as err:
        cluster.check_shared_storage(str(tmp_path))
    assert "10.0.0.2" in str(err.value)
    assert "10.0.0.1" not in str(err.value)
    assert "shared" in str(err.value)
    assert "s3://" in str(err.value)
    assert not list(tmp_path.iterdir())  # the marker is cleaned up
    # a cloud URI is taken as shared without asking the nodes
    assert cluster.check_shared_storage("s3://bucket/searches") == 2


# --- dashboard exposure ---
def test_network_dashboard_without_auth_is_refused_before_ray_starts(tmp_path: Path) -> None:
    proc = run_search(
        ["--dashboard-host", "0.0.0.0", "--storage", str(tmp_path)],
        REPO,
        {"RAY_AUTH_MODE": "disabled"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "token auth off" in proc.stderr
    assert "CVE-2023-48022" in proc.stderr
    assert "--allow-unauthenticated-dashboard" in proc.stderr
    assert "Started a local Ray" not in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


PROBE = """
import json, os, sys, urllib.error, urllib.request
from pathlib import Path
from tune import cluster
port = int(sys.argv[1])
ctx = cluster.init_ray(None, True, "0.0.0.0", port, trial_logs=False)
token = os.environ.get("RAY_AUTH_TOKEN") or Path(cluster.token_location()).read_text().strip()
def get(headers):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/version", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps({"auth": cluster.token_auth_enabled(), "without": get({}),
                  "with": get({"Authorization": f"Bearer {token}"})}))
"""


@pytest.mark.slow
def test_network_dashboard_with_auth_binds_and_needs_the_token() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(port)],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"auth": True, "without": 401, "with": 200}


# --- a two-node cluster ---


class RecordNode:
    """Training callback writing the node that runs the trial to ``folder/<trial id>``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, stats: EpochStats) -> None:
        node = ray.get_runtime_context().get_node_id()
        (Path(self.folder) / tune.get_context().get_trial_id()).write_text(node)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_trials_run_on_both_nodes(two_nodes: Cluster, tmp_path: Path) -> None:
    storage = str(tmp_path / "runs")
    assert cluster.check_shared_storage(storage) == 2
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "search: {trials: 2, epochs: 2, grace_period: 2}\n"
        "space:\n  lr: {loguniform: [3.0e-4, 3.0e-3]}\n"
    )
    space = load_space(space_file)
    base = TrainConfig.load(None, {**TINY, "epochs": 2})
    resources = cluster.plan_resources(ray.cluster_resources(), 0, 1.0, 1.0, 2)
    assert resources.concurrent == 2
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir()
    tuner = tiny_tuner(
        space, base, resources, "cluster", storage, (RecordNode(str(nodes_dir)),), max_failures=0
    )
    rows = report.trial_rows(tuner.fit(), space.settings)
    assert [r.status for r in rows] == ["completed", "completed"]
    ran_on = {p.read_text() for p in nodes_dir.iterdir()}
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(ran_on) == 2
    assert ran_on == alive


@pytest.mark.slow
def test_driver_attaches_to_the_cluster_with_address(two_nodes: Cluster, tmp_path: Path) -> None:
    args = [
        "--address",
        two_nodes.address,
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "attached",
        "--quiet",
    ]
    proc = run_search(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 node(s)" in proc.stdout
    assert "2 trial(s) at once" in proc.stdout
    assert (tmp_path / "runs" / "attached" / "best_config.yaml").is_file()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # the cluster outlives the driver
