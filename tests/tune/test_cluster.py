"""A two-node cluster (ray.cluster_utils.Cluster, both nodes on this machine) runs trials on
both nodes, with the storage check passing because every node sees the path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from helpers import REPO, TINY
from ray import cloudpickle, tune

from cattle_yolo.config import TrainConfig
from cattle_yolo.data import load_datasets
from tune import cluster, report, search
from tune.space import load_space

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RecordNode:
    """Training callback writing the node that runs the trial to ``folder/<trial id>``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, stats: dict) -> None:
        node = ray.get_runtime_context().get_node_id()
        (Path(self.folder) / tune.get_context().get_trial_id()).write_text(node)


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_run_on_both_nodes(two_nodes, tmp_path):
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
    trainable = search.make_trainable(
        base,
        load_datasets(base, verbose=False),
        space.settings,
        resources,
        (RecordNode(str(nodes_dir)),),
    )
    tuner, _ = search.build_tuner(
        trainable,
        space,
        base,
        space.settings,
        resources,
        "cluster",
        storage,
        max_failures=0,
        verbose=0,
    )
    rows = report.trial_rows(tuner.fit(), space.settings)
    assert [r.status for r in rows] == ["completed", "completed"]
    ran_on = {p.read_text() for p in nodes_dir.iterdir()}
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(ran_on) == 2 and ran_on == alive


def test_driver_attaches_to_the_cluster_with_address(two_nodes, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "run_search.py"),
        "--smoke-test",
        "--address",
        two_nodes.address,
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "attached",
        "--quiet",
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 node(s)" in proc.stdout and "2 trial(s) at once" in proc.stdout
    assert (tmp_path / "runs" / "attached" / "best_config.yaml").is_file()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # the cluster outlives the driver
