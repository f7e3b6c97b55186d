"""benchmarks/real_search.py: real searches run by the replay's own tuner, placed among their
replays."""

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import load_benchmark

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "curves_tiny.csv.gz"
SPACE = "search:\n  seed: 0\n  grace_period: 1\nspace:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"

real = load_benchmark("real_search")
curves = load_benchmark("curves")


def test_percentile_known_answers() -> None:
    assert real.percentile(0.5, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert real.percentile(0.0, [0.1, 0.2]) == 0.0
    assert real.percentile(0.2, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.375)  # a tie is half


def test_compare_places_each_real_search_and_orders_the_strategies() -> None:
    def run(strategy: str, seed: int, curve: list[float], picked: float = 0.5) -> dict[str, Any]:
        return {
            "strategy": strategy,
            "seed": seed,
            "curve": curve,
            "best": curve[-1],
            "trials": 2,
            "picked_score": picked,
        }

    replay_runs = [
        run("random_fifo", 0, [0.1, 0.4]),
        run("random_fifo", 1, [0.2, 0.6]),
        run("tpe_asha", 0, [0.5, 0.7]),
        run("tpe_asha", 1, [0.3, 0.5]),
    ]
    target, summary = curves.summarise(replay_runs, 2)
    replay = {
        "settings": {"trials": 1, "epochs": 2, "budget": 0},
        "target": target,
        "summary": summary,
        "runs": replay_runs,
    }
    # for real, random FIFO did better than TPE + ASHA: the orders disagree
    doc = real.compare(
        [run("random_fifo", 0, [0.3, 0.65]), run("tpe_asha", 0, [0.2, 0.45])], replay
    )
    assert doc["target"] == pytest.approx(0.5)
    first, second = doc["rows"]
    assert first["percentile"] == 1.0
    assert first["epochs_to_target"] == 2
    assert first["same_seed_replay_best"] == 0.4
    assert second["percentile"] == 0.0
    assert second["epochs_to_target"] == 3  # never: the budget plus one
    assert doc["real_order"] == ["random_fifo", "tpe_asha"]
    assert doc["replay_order"] == ["tpe_asha", "random_fifo"]
    lines = real.comparison_table(doc)
    assert lines[2].startswith("| random_fifo | 0 | 0.6500 | 0.5000 [0.4500, 0.5500] | 1.00 | 2 |")


@pytest.mark.slow
def test_a_real_search_runs_the_replays_tuner_and_resumes_from_its_json(tmp_path: Path) -> None:
    """Tiny real searches (synthetic, 64 px, 2 epochs a trial, a 4-epoch budget) beside a
    replay with the same settings: each spends the budget, starts from the default, keeps
    no weights, and the same command runs nothing twice; a replay of other settings is
    refused."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    shared: dict[str, Any] = dict(
        space=str(space),
        table=str(TINY),
        trials=2,
        epochs=2,
        grace_period=1,
        reduction_factor=2.0,
        budget=4,
        concurrent=1,
        from_scratch=False,
        fixed_trials=False,
    )
    replay_json = tmp_path / "replay.json"
    curves.replay(
        argparse.Namespace(
            **shared,
            strategies=["random_fifo", "tpe_asha"],
            seeds=3,
            time_scale=1e-3,
            storage=str(tmp_path / "replay"),
            json=str(replay_json),
            plot=None,
        )
    )
    argv = [
        "--space", str(space), "--table", str(TINY), "--replay", str(replay_json),
        "--strategies", "random_fifo", "tpe_asha", "--seeds", "0",
        "--trials", "2", "--epochs", "2", "--imgsz", "64", "--data", "synthetic",
        "--grace-period", "1", "--reduction-factor", "2", "--budget", "4", "--concurrent", "1",
        "--cpus", "1", "--storage", str(tmp_path / "real"), "--json", str(tmp_path / "real.json"),
        "--set", "neck_channels=16", "synthetic_images=8", "batch=4", "accumulate=1", "amp=off",
    ]  # fmt: skip
    doc = real.run_command(real.build_parser().parse_args(argv))
    assert [(r["strategy"], r["seed"]) for r in doc["runs"]] == [
        ("random_fifo", 0),
        ("tpe_asha", 0),
    ]
    for r in doc["runs"]:
        assert len(r["curve"]) == 4  # the budget
        assert r["per_trial"][0]["curve_id"] == 0  # the default first, as run_search does
        assert all(0 <= v <= 1 for v in r["curve"])
        assert r["curve"] == sorted(r["curve"])  # best so far
    assert not list((tmp_path / "real").glob("**/*.pt"))
    rows = doc["comparison"]["rows"]
    assert [r["strategy"] for r in rows] == ["random_fifo", "tpe_asha"]
    assert all(0 <= r["percentile"] <= 1 for r in rows)
    saved = json.loads((tmp_path / "real.json").read_text())
    assert saved["runs"] == doc["runs"]

    again = real.run_command(real.build_parser().parse_args(argv))
    assert again["runs"] == doc["runs"]  # nothing run twice
    other = [*argv[: argv.index("--budget") + 1], "6", *argv[argv.index("--budget") + 2 :]]
    with pytest.raises(SystemExit, match="other budget"):
        real.run_command(real.build_parser().parse_args(other))
    fixed = [*other[: other.index("--budget")], *other[other.index("--budget") + 2 :]]
    with pytest.raises(SystemExit, match="fixed_trials"):  # the replay spent a budget
        real.run_command(real.build_parser().parse_args([*fixed, "--fixed-trials"]))
