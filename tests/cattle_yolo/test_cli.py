"""The command line, ``python -m cattle_yolo {train,evaluate,predict,synth}`` (``cli.main``).

Exit codes: 0 ok; 2 bad input, with an ``error:`` line on stderr that names the bad thing and no
traceback; 3 training diverged. Every subcommand has its bad-input tests here; argparse's own
usage errors (a missing or malformed flag) exit 2 through ``SystemExit``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import GOOD, TINY, dataset, nan_loss, save_image

from cattle_yolo import cli
from cattle_yolo import stats as S
from cattle_yolo.checkpoint import save_checkpoint
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import load_datasets
from cattle_yolo.loss import DetectionLoss
from cattle_yolo.model import CattleYOLO
from cattle_yolo.stats import EpochStats

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str]) -> int:
    return cli.main(args)


def bad_input(code: int, capsys: pytest.CaptureFixture[str], *named: str) -> str:
    """Check a bad-input exit: code 2, an ``error:`` line naming each of ``named``, no
    traceback; return stderr."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err, err
    assert "Traceback" not in err, err
    for name in named:
        assert name in err, (name, err)
    return err


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str], *named: str) -> str:
    """argparse refuses ``args``: exit 2 (SystemExit) and a usage message naming ``named``."""
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "usage: cattle-yolo" in err, err
    assert "Traceback" not in err, err
    for name in named:
        assert name in err, (name, err)
    return err


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """An untrained ``TINY`` model for the classes cow and calf, as a best.pt (a second to make)."""
    cfg = TrainConfig.load(None, TINY)
    state = {
        "model": CattleYOLO(2, cfg).state_dict(),
        "ema": None,
        "config": cfg.to_dict(),
        "names": ["cow", "calf"],
        "epoch": 0,
    }
    save_checkpoint(state, tmp_path / "w" / "best.pt")
    return tmp_path / "w" / "best.pt"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return save_image(tmp_path / "src" / "a.jpg")


# --- train ---------------------------------------------------------------------------------------


def test_cli_bad_config_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["train", "lrr=0.1"]) == 2
    assert "unknown key 'lrr' (did you mean 'lr'?)" in capsys.readouterr().err


def test_cli_bad_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("epochs: -3\n")
    assert run_cli(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "'epochs'" in err


def test_cli_bad_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    assert run_cli(["train", "--data", str(tmp_path / "empty"), "epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert str(tmp_path / "empty" / "train") in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cli_cuda_without_gpu_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["train", "--device", "cuda", "epochs=1"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_diverged_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DetectionLoss, "forward", nan_loss)
    args = ["train", *[f"{k}={v}" for k, v in TINY.items()], f"out={tmp_path / 'run'}"]
    assert run_cli(args) == 3
    assert "diverged" in capsys.readouterr().err


def test_cli_train_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", *[f"{k}={v}" for k, v in TINY.items()], "epochs=1", f"out={out}"]
    assert run_cli(args) == 0
    weights = out / "models" / "best.pt"
    assert (
        run_cli(
            [
                "evaluate",
                "--weights",
                str(weights),
                "--split",
                "test",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert S.MAP50_95 in json.loads((tmp_path / "m.json").read_text())
    cfg = TrainConfig.load(out / "config.yaml")
    images = load_datasets(cfg).val.files[:2]
    pred_out = tmp_path / "pred"
    assert (
        run_cli(
            [
                "predict",
                "--weights",
                str(weights),
                "--source",
                str(images[0]),
                "--out",
                str(pred_out),
                "score_threshold=0.0",
            ]
        )
        == 0
    )
    records = json.loads((pred_out / "predictions.json").read_text())
    assert isinstance(records, list)
    assert records
    assert {r["file_name"] for r in records} == {Path(images[0]).name}
    assert all(len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0 for r in records)
    assert (pred_out / Path(images[0]).name).is_file()  # the drawn image


def test_cli_resume_trains_only_the_missing_epochs(tmp_path: Path) -> None:
    """A 2-epoch run stopped after epoch 1; `train --resume` trains epoch 2 alone."""
    from cattle_yolo.train import train

    class Stop(Exception):
        pass

    def stop_after_epoch_1(stats: EpochStats) -> None:
        if stats[S.EPOCH] == 1:
            raise Stop

    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(
            TrainConfig.load(None, {**TINY, "epochs": 2, "out": str(out)}),
            callbacks=[stop_after_epoch_1],
        )
    first = (out / "metrics" / "training_metrics.jsonl").read_text().splitlines()
    args = ["train", *[f"{k}={v}" for k, v in TINY.items()], "epochs=2", f"out={out}", "--resume"]
    assert run_cli(args) == 0
    log = (out / "metrics" / "training_metrics.jsonl").read_text().splitlines()
    assert log[: len(first)] == first
    assert [json.loads(line)[S.EPOCH] for line in log] == [1, 2]
    assert "resumed from" in (out / "logs" / "train.log").read_text()


def test_cli_train_missing_resume_checkpoint_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "last.pt"
    args = ["train", *[f"{k}={v}" for k, v in TINY.items()], f"out={tmp_path / 'run'}"]
    bad_input(run_cli([*args, "--resume", str(missing)]), capsys, f"no checkpoint at {missing}")
    assert not (tmp_path / "run" / "models" / "last.pt").exists()  # nothing trained


def test_cli_train_bad_device_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    bad_input(run_cli(["train", "--device", "bogus", "epochs=1"]), capsys, "'device'", "bogus")


def test_cli_train_malformed_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(["train", "--epochs", "ten"], capsys, "--epochs", "'ten'")


# --- evaluate ------------------------------------------------------------------------------------


def test_cli_evaluate_missing_weights_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    bad_input(run_cli(["evaluate", "--weights", str(missing)]), capsys, f"{missing}: no such")


def test_cli_evaluate_unreadable_weights_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    err = bad_input(run_cli(["evaluate", "--weights", str(junk)]), capsys, str(junk))
    assert "not a readable cattle_yolo checkpoint" in err


def test_cli_evaluate_bad_override_key_exits_2(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["evaluate", "--weights", str(weights), "scor_threshold=0.3"])
    bad_input(code, capsys, "unknown key 'scor_threshold' (did you mean 'score_threshold'?)")


def test_cli_evaluate_missing_data_exits_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "nowhere"
    code = run_cli(["evaluate", "--weights", str(weights), "--data", str(nowhere)])
    bad_input(code, capsys, f"{nowhere}: no such file or folder")


def test_cli_evaluate_a_split_the_dataset_lacks_exits_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = dataset(tmp_path, {"a": GOOD})  # train and val, no test
    args = ["evaluate", "--weights", str(weights), "--data", str(root), "--split", "test"]
    bad_input(run_cli(args), capsys, str(root), "has no test split")


def test_cli_evaluate_other_classes_than_the_checkpoint_exits_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = dataset(tmp_path, {"a": GOOD}, names=("bull", "heifer"))
    code = run_cli(["evaluate", "--weights", str(weights), "--data", str(root)])
    bad_input(code, capsys, "['bull', 'heifer'] differ from the checkpoint's ['cow', 'calf']")


def test_cli_evaluate_unknown_split_is_a_usage_error(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usage_error(["evaluate", "--weights", str(weights), "--split", "train"], capsys, "'train'")


def test_cli_evaluate_without_weights_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(["evaluate"], capsys, "--weights")


# --- predict -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("notes.txt", "not an image file"),
        ("missing.jpg", "no such file or folder"),
        ("empty", "no images"),
    ],
)
def test_predict_cli_bad_source_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty").mkdir()
    code = cli.main(
        [
            "predict",
            "--weights",
            str(tmp_path / "w.pt"),
            "--source",
            str(tmp_path / name),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(tmp_path / name) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_predict_missing_weights_exits_2(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    args = ["predict", "--weights", str(missing), "--source", str(image)]
    bad_input(run_cli([*args, "--out", str(tmp_path / "out")]), capsys, f"{missing}: no such")
    assert not (tmp_path / "out").exists()


def test_cli_predict_bad_override_key_exits_2(
    weights: Path, tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--weights", str(weights), "--source", str(image)]
    code = run_cli([*args, "--out", str(tmp_path / "out"), "score_treshold=0.3"])
    bad_input(code, capsys, "unknown key 'score_treshold'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg"], ids=["empty", "truncated"]
)
def test_cli_predict_undecodable_image_exits_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """A .jpg that does not decode: exit 2 naming the file, no traceback (it exited 1)."""
    bad = tmp_path / "src" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    args = ["predict", "--weights", str(weights), "--source", str(bad)]
    bad_input(run_cli([*args, "--out", str(tmp_path / "out")]), capsys, f"{bad}: cannot read image")
    assert not (tmp_path / "out").exists()


def test_cli_predict_without_source_is_a_usage_error(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usage_error(["predict", "--weights", str(weights)], capsys, "--source")


# --- a device name torch does not know: every command names it


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_unknown_device_exits_2(
    command: str, weights: Path, tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, "--weights", str(weights), "--device", "bogus"]
    if command == "predict":
        args += ["--source", str(image), "--out", str(tmp_path / "out")]
    bad_input(run_cli(args), capsys, "bogus")


# --- synth ---------------------------------------------------------------------------------------


def test_cli_synth_writes_a_dataset_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synth"
    assert run_cli(["synth", "--out", str(out), "--train", "2", "--val", "1", "--test", "0"]) == 0
    assert str(out) in capsys.readouterr().out
    data = load_datasets(TrainConfig(data=str(out), imgsz=64, strict=True), verbose=False)
    assert (len(data.train), len(data.val), data.test) == (2, 1, None)


def test_cli_synth_malformed_count_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usage_error(["synth", "--out", str(tmp_path / "s"), "--train", "x"], capsys, "--train", "'x'")


def test_cli_synth_without_out_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(["synth"], capsys, "--out")


@pytest.mark.parametrize(("flag", "value"), [("--train", "0"), ("--val", "0"), ("--test", "-1")])
def test_cli_synth_count_out_of_range_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    out = tmp_path / "s"
    code = run_cli(["synth", "--out", str(out), flag, value])
    err = bad_input(code, capsys, value)
    assert flag in err or f"n_{flag[2:]}" in err  # the flag, or generate's name for it
    assert not out.exists()


def test_cli_synth_out_is_a_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder\n")
    args = ["synth", "--out", str(taken), "--train", "1", "--val", "1", "--test", "0"]
    bad_input(run_cli(args), capsys, str(taken))


# --- the command itself --------------------------------------------------------------------------


def test_cli_without_a_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error([], capsys, "train,evaluate,predict,synth")


def test_cli_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(["fit"], capsys, "invalid choice: 'fit'")


def test_python_m_cattle_yolo_bad_input_exits_2_without_a_traceback(tmp_path: Path) -> None:
    """``python -m cattle_yolo`` passes main's exit code to the shell and prints no traceback."""
    missing = tmp_path / "missing.pt"
    run = subprocess.run(
        [sys.executable, "-m", "cattle_yolo", "evaluate", "--weights", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert f"error: {missing}: no such checkpoint" in run.stderr
    assert "Traceback" not in run.stderr
