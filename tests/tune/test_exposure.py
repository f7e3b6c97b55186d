"""No unauthenticated exposure: a network-facing dashboard without token auth is refused before
Ray starts; with token auth on it binds, and answers 401 without the token, 200 with it."""

import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO


def _run_search(args, env):
    return subprocess.run(
        [sys.executable, str(REPO / "run_search.py"), "--smoke-test", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_network_dashboard_without_auth_is_refused_before_ray_starts(tmp_path):
    t0 = time.perf_counter()
    proc = _run_search(
        ["--dashboard-host", "0.0.0.0", "--storage", str(tmp_path)], {"RAY_AUTH_MODE": "disabled"}
    )
    assert proc.returncode == 2, proc.stderr
    assert "token auth off" in proc.stderr and "CVE-2023-48022" in proc.stderr
    assert "--allow-unauthenticated-dashboard" in proc.stderr
    assert "Started a local Ray" not in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written
    assert time.perf_counter() - t0 < 60


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
def test_network_dashboard_with_auth_binds_and_needs_the_token():
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
