"""The benchmark scripts stay runnable and their bookkeeping is right: smoke tests, and known
answers for the anytime curve, the FLOP count, the turn-taking baton and the summaries."""

import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from benchmark_modules import load_benchmark as load

from cattle_yolo import stats as S

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 300) -> None:
    """Run ``benchmarks/<script>`` with ``args``; it must exit 0 (its output tail says why not)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_train_throughput_smoke(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    run_benchmark(
        "train_throughput.py",
        "--smoke-test",
        "--devices",
        "cpu",
        "--precision",
        "fp32,bf16",
        "--channels-last",
        "--json",
        str(out),
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["amp"], r["layout"]) for r in rows] == [
        ("off", "NCHW"),
        ("off", "channels_last"),
        ("bf16", "NCHW"),
        ("bf16", "channels_last"),
    ]
    for row in rows:
        assert row["images_per_sec"] > 0
        shares = [row[f"share_{k}"] for k in ("data", "forward", "loss", "backward")]
        assert abs(sum(shares) - 1) < 1e-6
        peaks = row["gemm_peak_gflops"]
        assert peaks["peak"] == max(peaks["matmul"], peaks["conv1x1"], peaks["conv3x3"])
        assert row["share_of_peak"] == pytest.approx(row["achieved_gflops"] / peaks["peak"])
    # the FLOPs of a step do not depend on the precision
    assert rows[0]["train_gflop_per_image"] == pytest.approx(rows[2]["train_gflop_per_image"])


def test_training_flops_of_a_known_convolution_with_its_loss() -> None:
    tt = load("train_throughput")

    class OneConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1, bias=False)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": self.conv(x)}

    def loss(
        out: dict[str, torch.Tensor], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        return {"total": out["y"].sum()}

    # forward 2 * 3 * 4 per pixel; backward the weight gradient only (the image needs none)
    assert tt.training_flops(OneConv(), 8, loss) == 2 * (2 * 3 * 4 * 64)


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    """gpu_check.py's CPU-sized form: throughput in fp32 and bf16, then one and two packed
    trials through run_search.py, each measured from the trials' own metrics logs."""
    out = tmp_path / "gpu.json"
    run_benchmark("gpu_check.py", "--smoke-test", "--json", str(out), timeout=600)
    doc = json.loads(out.read_text())
    assert [r["precision"] for r in doc["throughput"]] == ["fp32", "bf16"]
    assert [r["trials_per_gpu"] for r in doc["packing"]] == [1, 2]
    for row in doc["packing"]:
        assert row["trials"] == row["trials_per_gpu"]
        assert len(row["per_trial_images_per_sec"]) == row["trials"]
        assert row["aggregate_images_per_sec"] == pytest.approx(
            sum(row["per_trial_images_per_sec"])
        )
        assert row["trials_per_hour"] > 0
        assert row["share_of_bf16_peak"] > 0
    assert doc["packing"][0]["speedup"] == pytest.approx(1.0)
    assert "2 trials:" in doc["verdicts"][0]


def test_gpu_check_names_the_bottleneck_from_what_was_measured() -> None:
    gc = load("gpu_check")
    row = {
        "cpus_per_trial": 4,
        "gpu_util_mean": 50.0,
        "gpu_mem_used_max_mb": 139_000.0,
        "gpu_mem_total_mb": 143_000.0,
    }
    assert gc.bottleneck(row).startswith("GPU memory")
    row.update(gpu_mem_used_max_mb=20_000.0, cpus_per_trial=1)
    assert gc.bottleneck(row).startswith("CPU threads")
    row.update(cpus_per_trial=4, gpu_util_mean=97.0)
    assert gc.bottleneck(row).startswith("the GPU itself")
    row.update(gpu_util_mean=40.0)
    assert gc.bottleneck(row).startswith("the host side")


def test_precision_parity_applies_the_search_rules_to_each_run() -> None:
    pp = load("precision_parity")
    settings = {"patience": 3, "spike_ratio": 3.0, "min_rise": 0.05}
    healthy = {
        S.TRAIN_LOSS: [9.0, 7.0, 6.0, 5.5],
        S.VAL_LOSS: [8.0, 6.5, 5.9, 5.4],
        S.FIRST_STEP_LOSS: 10.0,
        S.SKIPPED_STEPS: [0, 0, 1, 0],
        S.TRAIN_BATCHES: 100,
    }
    assert pp.stopped_by(healthy, settings) is None
    spiked = {**healthy, S.TRAIN_LOSS: [9.0, 40.0, 6.0, 5.5]}
    assert pp.stopped_by(spiked, settings).startswith("epoch 2: spike")
    dead = {**healthy, S.SKIPPED_STEPS: [0, 0, 30, 0]}
    assert pp.stopped_by(dead, settings) == "epoch 3: 30 steps skipped (the dead-step rule)"
    runs = [
        {"name": "fp32", "seed": s, S.MAP50_95: [0.1, v], S.EPOCH_TIME: [10.0, 12.0]}
        for s, v in ((0, 0.4), (1, 0.6))
    ] + [{"name": "bf16", "seed": 0, S.MAP50_95: [0.1, 0.5], S.EPOCH_TIME: [5.0, 7.0]}]
    table = pp.summarize(runs, [2])
    assert table["fp32"]["epoch_2"]["mean"] == pytest.approx(0.5)
    assert table["fp32"]["epoch_2"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert table["bf16"]["epoch_2"] == {"mean": 0.5, "sd": 0.0, "values": [0.5]}
    assert table["bf16"]["epoch_s"] == pytest.approx(6.0)


class FakeResult:
    """A Ray Tune ``Result`` as far as the benchmarks read one: its reported rows."""

    def __init__(self, rows: list[dict[str, float]]) -> None:
        self.metrics_dataframe = pd.DataFrame(rows)


def test_anytime_curve_orders_epochs_by_time_and_skips_diverged_values() -> None:
    se = load("search_efficiency")
    a = FakeResult(
        [
            {"timestamp": 1, S.EPOCH: 1, S.MAP50_95: 0.1, "diverged": False},
            {"timestamp": 4, S.EPOCH: 2, S.MAP50_95: 0.3, "diverged": False},
        ]
    )
    b = FakeResult(
        [
            {"timestamp": 2, S.EPOCH: 1, S.MAP50_95: 0.2, "diverged": False},
            {"timestamp": 3, S.EPOCH: 2, S.MAP50_95: 0.9, "diverged": True},  # worst, not 0.9
        ]
    )
    curve = se.anytime([a, b], S.MAP50_95)
    assert curve == [(1, 0.1), (2, 0.2), (3, 0.2), (4, 0.3)]
    assert se.epochs_to_reach(curve, 0.2) == 2
    assert se.epochs_to_reach(curve, 0.31) is None


def test_training_flops_of_a_linear_layer() -> None:
    tt = load("train_throughput")
    layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5, bias=False))
    # forward 2*48*5 per image; backward: the weight gradient only (the input needs none)
    assert tt.training_flops(layer, 4) == 2 * 48 * 5 * 2


def test_baton_alternates_two_sides_epoch_by_epoch(tmp_path: Path) -> None:
    peer = load("peer_ultralytics")
    (tmp_path / "turn").write_text("ours")
    order: list[tuple[str, int]] = []
    lock = threading.Lock()

    def side(name: str, epochs: int) -> None:
        baton = peer.Baton(tmp_path, name)
        baton.wait()
        for epoch in range(1, epochs + 1):
            with lock:
                order.append((name, epoch))
            if epoch < epochs:
                baton.give()
                baton.wait()
        baton.finish()

    threads = [threading.Thread(target=side, args=(n, e)) for n, e in (("ours", 3), ("peer", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # the side with more epochs goes on alone once the other has finished
    assert order == [("ours", 1), ("peer", 1), ("ours", 2), ("peer", 2), ("ours", 3)]


def test_summary_leaves_out_the_first_epoch_and_takes_the_last_accuracy() -> None:
    peer = load("peer_ultralytics")
    run = {
        "flops_per_image": 2e9,
        "peak_rss_mb": 100.0,
        "epochs": [
            {
                "epoch": 1,
                "images": 10,
                "train_s": 100.0,
                "epoch_s": 110.0,
                "mAP50": 0.1,
                "mAP50_95": 0.05,
            },
            {
                "epoch": 2,
                "images": 10,
                "train_s": 5.0,
                "epoch_s": 6.0,
                "mAP50": 0.4,
                "mAP50_95": 0.2,
            },
            {
                "epoch": 3,
                "images": 10,
                "train_s": 5.0,
                "epoch_s": 6.0,
                "mAP50": 0.3,
                "mAP50_95": 0.1,
            },
        ],
    }
    s = peer.summarize(run, peak_gflops=8.0)
    assert s["images_per_sec"] == 2.0
    assert s["achieved_gflops"] == 4.0
    assert s["share_of_peak"] == 0.5
    assert s["train_s_per_epoch"] == 5.0
    assert s["epoch_s_with_val"] == 6.0
    assert (s["last_mAP50"], s["last_mAP50_95"], s["best_mAP50_95"]) == (0.3, 0.1, 0.2)


def test_blowups_use_the_divergence_rules_whether_or_not_the_stopper_ran() -> None:
    se = load("search_efficiency")
    settings = SimpleNamespace(patience=3, spike_ratio=3.0, min_rise=0.05)
    healthy = FakeResult([{S.EPOCH: e, S.TRAIN_LOSS: 10.0 - e, S.VAL_LOSS: 9.0} for e in (1, 2, 3)])
    nan_val = FakeResult(
        [  # finite training loss, overflowing outputs at epoch 2; ran 3 epochs
            {S.EPOCH: 1, S.TRAIN_LOSS: 10.0, S.VAL_LOSS: 9.0},
            {S.EPOCH: 2, S.TRAIN_LOSS: 9.0, S.VAL_LOSS: math.inf},
            {S.EPOCH: 3, S.TRAIN_LOSS: 8.0, S.VAL_LOSS: 9.0},
        ]
    )
    spike = FakeResult([{S.EPOCH: 1, S.TRAIN_LOSS: 2.0}, {S.EPOCH: 2, S.TRAIN_LOSS: 7.0}])
    assert se.blowups([healthy, nan_val, spike], settings) == [3, 2]
    # blown up inside epoch 1 (first step 11, epoch mean 5894), then "falling": caught too
    inside = FakeResult(
        [
            {S.EPOCH: 1, S.TRAIN_LOSS: 5894.0, S.FIRST_STEP_LOSS: 11.0, S.VAL_LOSS: 9.0},
            {S.EPOCH: 2, S.TRAIN_LOSS: 531.0, S.FIRST_STEP_LOSS: 600.0, S.VAL_LOSS: 9.0},
        ]
    )
    assert se.blowups([healthy, inside], settings) == [2]


def test_objective_ranking_bookkeeping() -> None:
    orank = load("objective_ranking")
    assert orank.ranks([0.3, 0.1, 0.3, 0.2]) == [3.5, 1.0, 3.5, 2.0]  # ties share their mean rank
    assert orank.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert orank.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(orank.spearman([1, 1, 1], [1, 2, 3]))
    curve = [0.1, 0.3, 0.08, 0.12, math.nan]
    assert orank.objective(curve, "best", 1) == 0.3
    assert orank.objective(curve, "last_mean", 3) == pytest.approx((0.08 + 0.12) / 3)  # nan: 0


def test_every_command_line_flag_has_help() -> None:
    """Every flag of the benchmarks and the two CLIs says what it does in --help."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    scripts = [*sorted((repo / "benchmarks").glob("*.py")), repo / "run_search.py"]
    missing: list[str] = []
    for path in [*scripts, repo / "cattle_yolo" / "cli.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or getattr(node.func, "attr", "") != "add_argument":
                continue
            if not any(k.arg == "help" for k in node.keywords):
                missing.append(f"{path.name}:{node.lineno}")
    assert missing == []
