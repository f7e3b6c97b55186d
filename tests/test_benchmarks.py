"""The benchmark scripts stay runnable: each one's --smoke-test finishes and reports numbers."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_throughput_smoke(tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--smoke-test",
         "--devices", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["images_per_sec"] > 0
    shares = [rows[0][f"share_{k}"] for k in ("data", "forward", "loss", "backward")]
    assert abs(sum(shares) - 1) < 1e-6
