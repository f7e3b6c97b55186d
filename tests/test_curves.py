"""benchmarks/curves.py: the normalised coordinates and nearest neighbour on a known table, the
table's append and resume bookkeeping, a replay that drives the real ASHA over known curves, and
a recording that resumes without duplicates."""

import argparse
import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import load_benchmark

from cattle_yolo import stats as S
from tune.space import SearchSpace, load_space

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "curves_tiny.csv.gz"
SPACE = "search:\n  seed: 0\n  grace_period: 1\nspace:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"


curves = load_benchmark("curves")


@pytest.fixture
def ray_local() -> Iterator[None]:
    import ray

    curves.init_ray(2)
    yield
    ray.shutdown()


@pytest.fixture
def space(tmp_path: Path) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return load_space(path)


def test_unit_coordinates_round_trip_and_log_scale(space: SearchSpace) -> None:
    lr = space.knobs["lr"]
    assert curves.to_unit(lr, 1e-3) == pytest.approx(0.5)  # the log-midpoint of [1e-4, 1e-2]
    for u in (0.0, 0.25, 0.9):
        assert curves.to_unit(lr, curves.from_unit(lr, u)) == pytest.approx(u)


def test_sobol_configs_are_a_fixed_sequence_inside_the_space() -> None:
    space = curves.load_space(REPO / "search_spaces" / "fixes.yaml")
    first = curves.sobol_configs(space, 8)
    assert curves.sobol_configs(space, 12)[:8] == first  # more configs extend, never reshuffle
    for values in first:
        assert all(space.knobs[k].contains(v) for k, v in values.items())
        assert values["iou_end"] >= values["iou_start"]


def test_nearest_recorded_config_on_the_known_table(space: SearchSpace) -> None:
    table = curves.Curves(curves.read_table(TINY), space)
    assert table.ids == [0, 1, 2, 3]
    assert table.nearest({"lr": 1e-3}) == 0
    assert table.nearest({"lr": 2.5e-3}) == 2  # log distance: 3e-3 is nearer than 1e-3
    assert table.nearest({"lr": 1.5e-4}) == 1
    assert table.nearest({"lr": 6e-3}) == 3
    assert [r[S.MAP50_95] for r in table.curve(2, 0)] == [0.15, 0.30, 0.45, 0.60]
    assert table.curve(2, 1)[0][S.MAP50_95] == pytest.approx(0.151)  # the second seed


def test_appended_rows_are_one_table_and_complete_pairs_are_known(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    row = {"config_id": 0, "seed": 0, "epoch": 1, "lr": 1e-3, S.MAP50_95: 0.1, "diverged": 0}
    curves.append_rows(path, ["lr"], [row])
    curves.append_rows(path, ["lr"], [{**row, "epoch": 2}, {**row, "seed": 1, "diverged": 1}])
    rows = curves.read_table(path)
    assert [(r["seed"], r["epoch"]) for r in rows] == [(0, 1), (0, 2), (1, 1)]
    with gzip.open(path, "rt") as f:
        assert f.read().count("config_id") == 1  # one header
    assert math.isnan(rows[0][S.VAL_LOSS])
    # seed 0 reached 2 epochs; seed 1 diverged at epoch 1: both complete for 2 epochs
    assert curves.recorded_pairs(rows, 2) == {(0, 0), (0, 1)}
    assert curves.recorded_pairs(rows, 3) == {(0, 1)}


def test_a_table_of_other_configs_is_named_not_mixed() -> None:
    rows = [
        {"config_id": 0, "seed": 0, "epoch": 1, "lr": 1e-3},
        {"config_id": 0, "seed": 1, "epoch": 1, "lr": 1e-3},
        {"config_id": 1, "seed": 0, "epoch": 1, "lr": 2e-3},
    ]
    assert curves.changed_configs(rows, [{"lr": 1e-3}, {"lr": 2e-3}]) == []
    assert curves.changed_configs(rows, [{"lr": 1e-3}, {"lr": 5e-3}]) == [
        "config 1: lr was 0.002, now 0.005"
    ]
    assert curves.changed_configs(rows, [{"lr": 1e-3}]) == [
        "config 1 is recorded but the space now gives 1"
    ]


def test_budget_counts_each_trial_epoch_once() -> None:
    stopper = curves.BudgetStopper(3)
    for trial, epoch in [("a", 1), ("a", 2), ("a", 2), ("b", 1)]:  # Tune repeats a last result
        assert not stopper.stop_all()
        assert stopper(trial, {S.EPOCH: epoch}) is False
    assert stopper.stop_all()
    assert len(stopper.seen) == 3


def replay_args(**changes: Any) -> argparse.Namespace:
    values: dict[str, Any] = dict(
        trials=4,
        epochs=4,
        grace_period=1,
        reduction_factor=2.0,
        budget=0,
        concurrent=1,
        time_scale=1e-3,
        seeds=1,
        strategies=["tpe_asha"],
        from_scratch=False,
        fixed_trials=False,
    )
    values.update(changes)
    return argparse.Namespace(**values)


@pytest.mark.slow
def test_replay_is_deterministic_and_asha_cuts_where_the_curves_say(
    space: SearchSpace, tmp_path: Path, ray_local: None
) -> None:
    table = curves.Curves(curves.read_table(TINY), space)
    args = replay_args()
    runs = [curves.replay_search(table, "tpe_asha", 0, args, tmp_path / f"r{i}") for i in (0, 1)]
    assert runs[0]["curve"] == runs[1]["curve"]
    assert runs[0]["trials"] == runs[1]["trials"]
    assert len(runs[0]["curve"]) == 16  # the budget: 4 trials x 4 epochs
    trials = runs[0]["per_trial"]
    # The default (config 0) is the first trial and runs to the end: no rung value beats it at
    # first. A later trial on a config whose epoch-1 value is below the best rung-1 value seen
    # so far is cut at the grace period (asynchronous ASHA, keep the top 1/2).
    assert trials[0]["curve_id"] == 0
    assert trials[0]["epochs"] == 4
    rung1 = {0: 0.10, 1: 0.01, 2: 0.15, 3: 0.05}
    seen = [rung1[trials[0]["curve_id"]]]
    for t in trials[1:]:
        value = rung1[t["curve_id"]]
        below = sorted(seen + [value], reverse=True).index(value) >= len(seen + [value]) / 2
        if below:
            assert t["epochs"] == 1, (t, seen)
        seen.append(value)
    assert any(t["epochs"] == 1 for t in trials)
    # the recommendation is the config whose report set the final best, scored by its seeds' mean
    scores = curves.config_scores(table, S.MAP50_95, None)
    assert runs[0]["picked_score"] == scores[runs[0]["picked"]]
    # the incumbents' record: when the recommendation changed, ending at the pick
    incumbents = runs[0]["incumbents"]
    assert incumbents[0][1] == 0  # the default, the first to report
    assert incumbents[-1][1] == runs[0]["picked"]
    assert [e for e, _, _ in incumbents] == sorted({e for e, _, _ in incumbents})
    assert all(score == scores[cid] for _, cid, score in incumbents)

    # from scratch, the first trial is the sampler's (seeded random start), not the default
    scratch = curves.replay_search(
        table, "tpe_asha", 0, replay_args(from_scratch=True), tmp_path / "s"
    )
    assert len(scratch["curve"]) == 16
    assert scratch["per_trial"][0]["curve_id"] != 0 or scratch["per_trial"][1]["curve_id"] != 0


@pytest.mark.slow
def test_a_fixed_trials_replay_runs_the_trial_count_and_asha_spends_less(
    space: SearchSpace, tmp_path: Path, ray_local: None
) -> None:
    """``--fixed-trials``: every search runs exactly ``--trials`` trials, as run_search gives
    them; FIFO spends trials x epochs, ASHA's cuts spend less, and the anytime curve is as long
    as the epochs its trials reported."""
    table = curves.Curves(curves.read_table(TINY), space)
    args = replay_args(fixed_trials=True)
    asha = curves.replay_search(table, "tpe_asha", 0, args, tmp_path / "a")
    fifo = curves.replay_search(table, "random_fifo", 0, args, tmp_path / "f")
    for run in (asha, fifo):
        assert run["trials"] == len(run["per_trial"]) == 4
        assert len(run["curve"]) == sum(t["epochs"] for t in run["per_trial"])
    assert len(fifo["curve"]) == 16
    assert any(t["epochs"] < 4 for t in asha["per_trial"])  # a recorded curve ASHA cut
    assert len(asha["curve"]) < 16
    assert asha == {
        **curves.replay_search(table, "tpe_asha", 0, args, tmp_path / "b"),
        "wall_s": asha["wall_s"],
    }  # deterministic for a seed


def test_fixed_trials_is_keyed_only_when_set_and_excludes_a_budget() -> None:
    plain = curves.settings_key(replay_args())
    assert "fixed_trials" not in plain  # so replays written before the flag continue
    assert curves.whole_search(plain) == 16  # fewer epochs: cut short
    fixed = curves.settings_key(replay_args(fixed_trials=True))
    assert fixed == {**plain, "fixed_trials": True}
    assert curves.whole_search(fixed) is None  # ASHA legitimately spends less
    with pytest.raises(SystemExit, match="no --budget"):
        curves.settings_key(replay_args(fixed_trials=True, budget=8))
    doc = {
        "metric": S.MAP50_95,
        "target": 0.5,
        "settings": fixed,
        "summary": {
            "tpe_asha": {
                "best": (0.5, 0.6, 0.7),
                "epochs_spent": (7.0, 9.0, 11.0),
                "epochs_to_target": (2, 3, 4),
                "reached": 2,
            }
        },
        "runs": [{"strategy": "tpe_asha", "trials": 4}],
    }
    table = curves.markdown_table(doc)
    assert table[0].endswith("| trials | epochs spent |")
    assert table[1].count("|") == 9
    assert table[2].endswith("| 4 | 9 [7, 11] |")


@pytest.mark.slow
def test_replay_continues_from_its_json_and_refuses_other_settings(tmp_path: Path) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    out = tmp_path / "replay.json"
    common = {"space": str(space_file), "table": str(TINY), "storage": str(tmp_path / "t")}
    args = replay_args(
        **common, strategies=["random_fifo"], seeds=2, json=str(out), plot=None, budget=8
    )
    first = curves.replay(args)
    assert [(r["strategy"], r["seed"]) for r in first["runs"]] == [
        ("random_fifo", 0),
        ("random_fifo", 1),
    ]
    more = curves.replay(
        argparse.Namespace(**{**vars(args), "strategies": ["random_fifo", "tpe_asha"]})
    )
    assert more["runs"][:2] == first["runs"]  # kept, not replayed
    assert [r["strategy"] for r in more["runs"][2:]] == ["tpe_asha", "tpe_asha"]
    assert list(more["summary"]) == ["random_fifo", "tpe_asha"]
    with pytest.raises(SystemExit, match="another table or settings"):
        curves.replay(argparse.Namespace(**{**vars(args), "budget": 12}))


def test_replay_summary_table_and_plot_on_known_runs(tmp_path: Path) -> None:
    runs = [
        {"strategy": "random_fifo", "curve": [0.1, 0.3, 0.5, 0.5], "trials": 2, "best": 0.5},
        {"strategy": "random_fifo", "curve": [0.2, 0.2, 0.4, 0.6], "trials": 2, "best": 0.6},
        {"strategy": "tpe_asha", "curve": [0.55, 0.55, 0.55, 0.7], "trials": 4, "best": 0.7},
        {"strategy": "tpe_asha", "curve": [0.1, 0.6], "trials": 3, "best": 0.6},
    ]
    doc = {
        "metric": S.MAP50_95,
        "target": 0.55,  # the median of random FIFO's bests
        "settings": {"budget": 0, "trials": 2, "epochs": 2},
        "summary": {
            "random_fifo": {
                "best": (0.5, 0.55, 0.6),
                "epochs_to_target": (4, 4.5, 5),
                "reached": 1,
            },
            "tpe_asha": {
                "best": (0.6, 0.65, 0.7),
                "picked_score": (0.4, 0.5, 0.6),
                "epochs_to_target": (1, 1.5, 2),
                "reached": 2,
            },
        },
        "runs": runs,
    }
    table = curves.markdown_table(doc)
    assert table[0].startswith(
        "| strategy | best mAP50_95 | picked config's mean | epochs to 0.5500 |"
    )
    assert table[2] == "| random_fifo | 0.5500 [0.5000, 0.6000] |  | 4 [4, 5] | 1.12 | 1/2 | 2 |"
    assert table[3] == (
        "| tpe_asha | 0.6500 [0.6000, 0.7000] | 0.5000 [0.4000, 0.6000] | 2 [1, 2] | 0.38 "
        "| 2/2 | 4 |"
    )
    png = tmp_path / "replay.png"
    curves.plot_replay(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pick_summary_measures_p1_on_what_the_searches_recommend() -> None:
    """Random FIFO's final picks score 0.5 and 0.7 (median 0.6); TPE's pick reaches 0.6 at
    epoch 3 in one search and never in the other (budget 4: counted as 5)."""

    def run(strategy: str, incumbents: list[list[float]]) -> dict[str, Any]:
        return {"strategy": strategy, "incumbents": incumbents, "picked_score": incumbents[-1][2]}

    runs = [
        run("random_fifo", [[1, 0, 0.4], [2, 1, 0.5]]),
        run("random_fifo", [[1, 0, 0.4], [4, 2, 0.7]]),
        run("tpe_asha", [[1, 0, 0.4], [3, 3, 0.65]]),
        run("tpe_asha", [[1, 0, 0.4]]),
    ]
    target, rows = curves.pick_summary(runs, 4)
    assert target == pytest.approx(0.6)
    assert rows["random_fifo"] == {"epochs_to_pick": (4.25, 4.5, 4.75), "pick_reached": 1}
    assert rows["tpe_asha"] == {"epochs_to_pick": (3.5, 4.0, 4.5), "pick_reached": 1}
    assert curves.pick_summary([{k: v for k, v in runs[0].items() if k != "incumbents"}], 4) == (
        None,
        {},
    )  # an older replay's runs: no such measure
    doc = {
        "metric": S.MAP50_95,
        "target": 0.5,
        "pick_target": target,
        "settings": {"budget": 4, "trials": 2, "epochs": 2},
        "summary": {"tpe_asha": {"best": (0.6, 0.6, 0.6), **rows["tpe_asha"]}},
        "runs": [{**r, "trials": 3} for r in runs if r["strategy"] == "tpe_asha"],
    }
    table = curves.markdown_table(doc)
    assert table[0].endswith("| trials | epochs until the pick's mean >= 0.6000 | reached |")
    assert table[1].count("|") == 10
    assert table[2].endswith("| 3 | 4 [4, 4] | 1/2 |")
    # the recommendation after each epoch: nan before the first report, then each incumbent
    late = {"incumbents": [[2, 0, 0.4], [4, 2, 0.7]]}
    got = curves.pick_curve(late, 5)
    assert math.isnan(got[0])
    assert got[1:] == [0.4, 0.4, 0.7, 0.7]


def test_the_replay_plot_has_the_recommendation_panel_when_runs_kept_it(tmp_path: Path) -> None:
    runs = [
        {"strategy": "random_fifo", "curve": [0.4, 0.5], "incumbents": [[1, 0, 0.4], [2, 1, 0.5]]},
        {"strategy": "tpe_asha", "curve": [0.6, 0.6], "incumbents": [[1, 3, 0.55]]},
    ]
    doc = {
        "metric": S.MAP50_95,
        "target": 0.5,
        "pick_target": 0.5,
        "summary": {"random_fifo": {}, "tpe_asha": {}},
        "runs": runs,
    }
    png = tmp_path / "p.png"
    curves.plot_replay(doc, png)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 1.5 * im.size[1]  # two panels side by side
    curves.plot_replay({**doc, "pick_target": None}, png)
    with Image.open(png) as im:
        assert im.size[0] < 1.7 * im.size[1]  # one


@pytest.mark.slow
def test_record_resumes_without_duplicates(tmp_path: Path) -> None:
    table = tmp_path / "curves.csv.gz"
    args = [
        "record",
        "--space",
        str(tmp_path / "space.yaml"),
        "--configs",
        "1",
        "--seeds",
        "1",
        "--imgsz",
        "64",
        "--epochs",
        "1",
        "--data",
        "synthetic",
        "--table",
        str(table),
        "--cpus",
        "2",
        "--storage",
        str(tmp_path / "tune"),
        "--set",
        "neck_channels=16",
        "synthetic_images=8",
        "batch=4",
        "accumulate=1",
        "amp=off",
    ]
    (tmp_path / "space.yaml").write_text(SPACE)
    curves.main(args)
    rows = curves.read_table(table)
    assert sorted((r["config_id"], r["seed"], r["epoch"]) for r in rows) == [(0, 0, 1), (1, 0, 1)]
    lr = {r["config_id"]: r["lr"] for r in rows}
    sobol = curves.sobol_configs(curves.load_space(tmp_path / "space.yaml"), 1)[0]["lr"]
    assert lr == {0: 1e-3, 1: pytest.approx(sobol)}  # the default, then the first Sobol point
    assert all(0 <= r[S.MAP50_95] <= 1 and r[S.EPOCH_TIME] > 0 for r in rows)
    curves.main(args)  # nothing left to record
    assert len(curves.read_table(table)) == 2
    # a run killed before it was recorded: only it is trained again, and appended once
    kept = [r for r in rows if r["config_id"] == 0]
    table.unlink()
    curves.append_rows(table, ["lr"], kept)
    curves.main(args)
    again = curves.read_table(table)
    assert sorted((r["config_id"], r["seed"], r["epoch"]) for r in again) == [(0, 0, 1), (1, 0, 1)]
    # a changed range gives other Sobol configs under the same ids: refused, the table untouched
    (tmp_path / "space.yaml").write_text(SPACE.replace("1.0e-2", "3.0e-2"))
    with pytest.raises(SystemExit, match="not the ones"):
        curves.main(args)
    assert curves.read_table(table) == again


def test_importance_finds_the_knob_that_matters_and_its_edge(tmp_path: Path) -> None:
    """16 Sobol configs over lr and focal_gamma whose final mAP rises with log lr only: lr is
    the important knob, and its best configs press on the range's high bound."""
    path = tmp_path / "space.yaml"
    path.write_text(SPACE + "  focal_gamma: {uniform: [0.0, 3.0]}\n")
    space = curves.load_space(path)
    table = tmp_path / "t.csv.gz"
    rows: list[dict[str, Any]] = []
    for cid, values in enumerate(curves.sobol_configs(space, 16)):
        score = 0.1 * (math.log10(values["lr"]) + 4)  # 0 at 1e-4, 0.2 at 1e-2
        for seed in (0, 1):
            rows.append(
                {
                    "config_id": cid,
                    "seed": seed,
                    "epoch": 1,
                    **values,
                    S.MAP50_95: score + 0.001 * seed,
                    "diverged": 0,
                    "rule": "",
                }
            )
    curves.append_rows(table, list(space.knobs), rows)
    options = {"metric": S.MAP50_95, "epoch": None, "top": 0.25, "min_configs": 8, "json": None}
    args = argparse.Namespace(space=str(path), table=str(table), **options)
    doc = curves.importance_command(args)
    assert doc["configs"] == 16
    assert doc["importance"]["lr"] > 0.8 > doc["importance"]["focal_gamma"]
    assert doc["ranges"]["lr"]["edge"] == "high"
    assert doc["ranges"]["focal_gamma"]["edge"] == ""
    with pytest.raises(SystemExit):
        curves.importance_command(argparse.Namespace(**{**vars(args), "min_configs": 20}))


def test_spearman_known_answers() -> None:
    assert curves.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert curves.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap in four: rho = 1 - 6 * 2 / (4 * 15) = 0.8; ties share their mean rank
    assert curves.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert list(curves.ranks([0.5, 0.1, 0.5, 0.2])) == [3.5, 1.0, 3.5, 2.0]
    # Fisher's z with Bonett-Wright's se: rho 0.5 over 12 pairs is atanh(0.5) +- 1.96 x
    # sqrt(1.125 / 9) = 0.5493 +- 0.6930
    lo, hi = curves.spearman_interval(0.5, 12)
    assert lo == pytest.approx(math.tanh(0.549306 - 0.692965), abs=1e-5)
    assert hi == pytest.approx(math.tanh(0.549306 + 0.692965), abs=1e-5)
    assert curves.spearman_interval(1.0, 3) == (-1.0, 1.0)  # too few pairs to say anything


def test_fidelity_compares_the_configs_both_tables_hold(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    configs = [{"lr": 1e-3}, *curves.sobol_configs(load_space(path), 9)]

    def table(name: str, score: Any, ids: range) -> Path:
        out = tmp_path / name
        rows = [
            {"config_id": c, "seed": 0, "epoch": 1, **configs[c], S.MAP50_95: score(c)} for c in ids
        ]
        curves.append_rows(out, ["lr"], [{**r, "diverged": 0, "rule": ""} for r in rows])
        return out

    low = table("low.csv.gz", lambda c: 0.1 * c, range(10))
    high = table("high.csv.gz", lambda c: 0.1 * c if c != 2 else 0.35, range(8))  # 2 and 3 swap
    options = {
        "metric": S.MAP50_95,
        "epoch": None,
        "epoch_low": None,
        "epoch_high": None,
        "json": None,
        "space": str(path),
    }
    doc = curves.fidelity_command(
        argparse.Namespace(low=str(low), high=str(high), min_configs=8, **options)
    )
    assert doc["configs"] == list(range(8))
    assert doc["spearman"] == pytest.approx(1 - 6 * 2 / (8 * 63))
    assert doc["best_low"] == doc["best_high"] == 7
    assert (doc["top_third"], doc["top_kept"]) == (3, 3)  # 7, 6, 5 top both
    with pytest.raises(SystemExit, match="at least 9"):
        curves.fidelity_command(
            argparse.Namespace(low=str(low), high=str(high), min_configs=9, **options)
        )


def test_fidelity_of_one_table_at_two_epochs_is_the_rung_question(tmp_path: Path) -> None:
    """Epoch 1 ranks 9 configs in reverse of epoch 2: rho -1, and a top-third cut at epoch 1
    keeps none of epoch 2's best three."""
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    configs = [{"lr": 1e-3}, *curves.sobol_configs(load_space(path), 8)]
    rows = [
        {"config_id": c, "seed": 0, "epoch": e, **configs[c], S.MAP50_95: (c if e == 2 else -c)}
        for c in range(9)
        for e in (1, 2)
    ]
    table = tmp_path / "t.csv.gz"
    curves.append_rows(table, ["lr"], [{**r, "diverged": 0, "rule": ""} for r in rows])
    args = argparse.Namespace(
        low=str(table),
        high=str(table),
        space=str(path),
        metric=S.MAP50_95,
        epoch=None,
        epoch_low=1,
        epoch_high=None,  # each curve's last: epoch 2
        min_configs=8,
        json=str(tmp_path / "f.json"),
    )
    doc = curves.fidelity_command(args)
    assert doc["spearman"] == pytest.approx(-1.0)
    assert (doc["epoch_low"], doc["epoch_high"], doc["top_kept"]) == (1, None, 0)
    assert json.loads((tmp_path / "f.json").read_text())["spearman"] == pytest.approx(-1.0)


def test_runs_pack_on_a_gpu_when_ray_sees_one_and_take_a_cpu_each_otherwise() -> None:
    def args(gpus_per_trial: float = 0.25, cpus_per_trial: float | None = None) -> Any:
        return argparse.Namespace(gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial)

    cpu = curves.trial_resources({"CPU": 2.0}, args(), 98)
    assert (cpu.gpus_per_trial, cpu.cpus_per_trial, cpu.concurrent) == (0.0, 1.0, 2)
    gpu = curves.trial_resources({"CPU": 16.0, "GPU": 1.0}, args(), 98)
    assert (gpu.gpus_per_trial, gpu.cpus_per_trial, gpu.concurrent) == (0.25, 4.0, 4)
    two = curves.trial_resources({"CPU": 16.0, "GPU": 2.0}, args(0.5, 2.0), 3)
    assert (two.gpus_per_trial, two.cpus_per_trial, two.concurrent) == (0.5, 2.0, 3)  # 3 runs left


def test_a_search_cut_short_is_dropped_from_the_json_to_run_again(tmp_path: Path) -> None:
    """A search Ray stopped early (an interrupt) spent fewer epochs than the budget: it is not
    a data point, and the next replay runs it again instead of keeping it."""
    key = {"metric": S.MAP50_95, "configs": 4}
    whole = {"strategy": "tpe_asha", "seed": 0, "curve": [0.1, 0.2, 0.3]}
    cut = {"strategy": "gp_asha", "seed": 0, "curve": []}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**key, "runs": [whole, cut]}))
    assert curves.previous_runs(path, key, budget=3) == [whole]
    assert curves.previous_runs(path, key) == [whole, cut]  # no budget given: kept as written


def test_a_search_that_spent_less_than_its_budget_is_not_a_run(space: SearchSpace) -> None:
    """Ray stopped early (an interrupt): 2 of a 3-epoch budget reported; the summary refuses
    it rather than record a short curve, for replayed and real searches alike."""
    import pandas as pd

    table = curves.Curves(curves.read_table(TINY), space)
    result = argparse.Namespace(
        config={"lr": 1e-3},
        metrics_dataframe=pd.DataFrame(
            {S.EPOCH: [1, 2], S.MAP50_95: [0.1, 0.2], "timestamp": [1.0, 2.0], "diverged": False}
        ),
    )
    settings = argparse.Namespace(metric=S.MAP50_95, seed=0)
    whole = curves.search_run([result], table, "random_fifo", settings, 2)
    assert whole["curve"] == [0.1, 0.2]
    with pytest.raises(SystemExit, match="cut short after 2 of 3 epochs"):
        curves.search_run([result], table, "random_fifo", settings, 3)

    class Grid(list[Any]):  # a ResultGrid's length, items and count of trials that ended
        num_terminated = 1

    # with fixed trials a short curve is normal (ASHA's cuts); trials that never ended are not
    fixed = argparse.Namespace(metric=S.MAP50_95, seed=0, trials=1)
    assert curves.search_run(Grid([result]), table, "tpe_asha", fixed, 9, True)["curve"] == [
        0.1,
        0.2,
    ]
    two = argparse.Namespace(**{**vars(fixed), "trials": 2})
    with pytest.raises(SystemExit, match="cut short: 1 of 2 trials ended"):
        curves.search_run(Grid([result]), table, "tpe_asha", two, 9, True)
