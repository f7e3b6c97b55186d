"""Resource planning and the shared-storage check, without starting Ray."""

import pytest

from tune import cluster
from tune.cluster import SearchSetupError, plan_resources


def test_more_gpus_than_ray_sees_is_an_error_naming_the_count():
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
def test_plan(cluster, gpus, per_trial, cpus, concurrent, cpus_each):
    r = plan_resources(cluster, gpus, per_trial, cpus, trials=3 if concurrent == 3 else 16)
    assert r.concurrent == concurrent and r.cpus_per_trial == cpus_each
    assert r.per_trial()["gpu"] == (0.0 if not r.gpus else per_trial)


@pytest.mark.parametrize(
    ("gpus", "per_trial", "cpus"), [(2, 3.0, None), (2, 0.0, None), (0, 1.0, 4.0)]
)
def test_bad_requests(gpus, per_trial, cpus):
    with pytest.raises(SearchSetupError):
        plan_resources({"CPU": 2, "GPU": 2}, gpus, per_trial, cpus, trials=4)


def test_storage_a_node_cannot_see_is_refused(monkeypatch, tmp_path):
    nodes = [
        {"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"},
        {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"},
    ]

    class Probe:
        def options(self, **_):
            return self

        def remote(self, path):
            return path

    import ray

    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "remote", lambda **_: lambda function: Probe())
    monkeypatch.setattr(ray, "get", lambda refs, timeout: [True, False])
    with pytest.raises(SearchSetupError) as err:
        cluster.check_shared_storage(str(tmp_path))
    assert "10.0.0.2" in str(err.value) and "10.0.0.1" not in str(err.value)
    assert "shared" in str(err.value) and "s3://" in str(err.value)
    assert not list(tmp_path.iterdir())  # the marker is cleaned up
    # a cloud URI is taken as shared without asking the nodes
    assert cluster.check_shared_storage("s3://bucket/searches") == 2
