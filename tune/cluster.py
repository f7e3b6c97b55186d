"""Ray itself: starting or attaching to it, its dashboard, the resources trials get, and the
checks that come before a search (dashboard exposure, shared storage).

- ``check_exposure`` refuses, before Ray starts, a dashboard on a network address without
  token auth.
- ``init_ray`` is the one place that calls ``ray.init`` (dashboard bound to 127.0.0.1 by
  default, token auth as Ray 2.60 sets it up); ``dashboard_lines`` says how to reach it.
- ``plan_resources`` turns ``--gpus``/``--gpus-per-trial``/``--cpus-per-trial`` into per-trial
  resources and the number of trials that run at once.
- ``check_shared_storage`` refuses a storage path that some node of a cluster cannot see.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cattle_yolo.config import ConfigError
from tune.storage import is_uri


class SearchSetupError(RuntimeError):
    """Resources, cluster or storage do not allow the search as asked (exit code 2)."""


def init_ray(
    address: str | None,
    dashboard: bool,
    dashboard_host: str,
    dashboard_port: int,
    trial_logs: bool = True,
) -> Any:
    """Start a local Ray (or attach to ``address``); returns Ray's context.

    Attaching to a cluster leaves its dashboard as the cluster was started. ``trial_logs``
    forwards the trials' output (one line per epoch) to this terminal.
    """
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # use the CLIReporter table below
    # Per-epoch checkpoints with num_to_keep force frequent state snapshots: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        return ray.init(address=address, log_to_driver=trial_logs)
    return ray.init(
        include_dashboard=dashboard,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
        log_to_driver=trial_logs,
    )


def token_auth_enabled() -> bool:
    """Ray 2.60 turns token auth on for a new local cluster by setting RAY_AUTH_MODE=token."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def token_location() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")


def dashboard_lines(context: Any, dashboard_host: str, attached: bool) -> list[str]:
    """What to print at start: the URL, how to authenticate, and a warning if exposed."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return ["Ray dashboard: off"]
    lines = [f"Ray dashboard: http://{url}"]
    if token_auth_enabled():
        lines.append(
            f"  token auth is on: paste the token from {token_location()} (or the output of "
            "`ray get-auth-token`) when the page asks; API clients send the header "
            "'Authorization: Bearer <token>'"
        )
    else:
        lines.append(
            "  WARNING: token auth is off (RAY_AUTH_MODE); anyone who reaches this port "
            "can submit jobs and run code on this machine"
        )
    if not attached and dashboard_host not in ("127.0.0.1", "localhost"):
        lines.append(
            f"  WARNING: the dashboard listens on {dashboard_host}, not only on this machine. "
            "Anyone who reaches an unauthenticated Ray dashboard can run code on it; keep token "
            "auth on and the port behind a firewall, or use an SSH tunnel to 127.0.0.1 instead"
        )
    return lines


@dataclass(frozen=True)
class Resources:
    gpus: float  # GPUs the search may use
    gpus_per_trial: float  # 0 on CPU
    cpus_per_trial: float
    concurrent: int  # trials that run at once

    def per_trial(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def plan_resources(
    cluster: dict[str, float],
    gpus: float | None,
    gpus_per_trial: float,
    cpus_per_trial: float | None,
    trials: int,
) -> Resources:
    """Check the asked resources against what Ray sees and size the concurrency.

    ``gpus=None`` uses every GPU Ray sees. With GPUs, ``cpus_per_trial=None`` shares the CPUs
    evenly between the trials that run at once; on CPU it is 1.
    """
    seen_gpus, seen_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    gpus = seen_gpus if gpus is None else gpus
    if gpus < 0 or gpus > seen_gpus:
        raise SearchSetupError(
            f"--gpus {gpus:g}: Ray sees {seen_gpus:g} GPU(s) in this cluster; ask for at most that"
        )
    if gpus > 0:
        if not 0 < gpus_per_trial <= gpus:
            raise SearchSetupError(f"--gpus-per-trial {gpus_per_trial:g} must be in (0, {gpus:g}]")
        concurrent = math.floor(gpus / gpus_per_trial + 1e-9)
        if cpus_per_trial is None:
            cpus_per_trial = max(1.0, math.floor(seen_cpus / concurrent))
    else:
        gpus_per_trial = 0.0
        cpus_per_trial = 1.0 if cpus_per_trial is None else cpus_per_trial
    if cpus_per_trial <= 0:
        raise SearchSetupError(f"--cpus-per-trial {cpus_per_trial:g} must be > 0")
    if cpus_per_trial > seen_cpus:
        raise SearchSetupError(
            f"--cpus-per-trial {cpus_per_trial:g}: Ray sees {seen_cpus:g} CPU(s) in this cluster"
        )
    by_cpu = math.floor(seen_cpus / cpus_per_trial + 1e-9)
    concurrent = min(concurrent, by_cpu) if gpus > 0 else by_cpu
    return Resources(gpus, gpus_per_trial, float(cpus_per_trial), max(1, min(concurrent, trials)))


def _sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(storage: str) -> int:
    """With more than one node, every node must see ``storage`` (a URI is taken as shared).

    A marker file is written at ``storage`` and each node is asked whether it sees it.
    Returns the number of alive nodes; raises ``SearchSetupError`` naming the nodes that do not.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or is_uri(storage):
        return len(nodes)
    root = Path(storage.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".shared-storage-check-{uuid.uuid4().hex}"
    marker.write_text("written by the search driver\n")
    try:
        refs = [
            ray.remote(num_cpus=0)(_sees)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(marker))
            for n in nodes
        ]
        seen = ray.get(refs, timeout=120)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise SearchSetupError(
            f"--storage {storage}: a local path that node(s) {', '.join(blind)} cannot see. "
            f"With {len(nodes)} nodes every trial must write to shared storage: give a path on "
            "a filesystem all nodes mount (NFS, Lustre...) or a cloud URI such as s3://bucket/dir"
        )
    return len(nodes)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(
    address: str | None, dashboard: bool, dashboard_host: str, allow_unauthenticated: bool
) -> None:
    """Refuse, before Ray starts, a dashboard on a network address without token auth.

    Ray 2.60 turns token auth on for a new local cluster unless ``RAY_AUTH_MODE`` says
    otherwise; an unauthenticated dashboard lets anyone who reaches it run code on the machine
    (ShadowRay, CVE-2023-48022). ``--allow-unauthenticated-dashboard`` is the explicit opt-out.
    """
    if address or not dashboard or dashboard_host in LOOPBACK:
        return  # attaching keeps the cluster's own dashboard; loopback is this machine only
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token" or allow_unauthenticated:
        return
    raise ConfigError(
        f"--dashboard-host {dashboard_host} with token auth off (RAY_AUTH_MODE={mode}): "
        "anyone who reaches that address could submit jobs and run code on this machine "
        "(ShadowRay, CVE-2023-48022). Turn token auth on (unset RAY_AUTH_MODE or set it to "
        "token), keep the dashboard on 127.0.0.1 and use an SSH tunnel, or pass "
        "--allow-unauthenticated-dashboard if the network is yours alone"
    )
