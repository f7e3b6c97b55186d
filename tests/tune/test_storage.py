"""Storage: paths and URIs, the trial's file uploader, and a search on a real S3-compatible
server (moto in server mode on 127.0.0.1) that writes there and resumes from there."""

import csv
import logging
import re
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs
import pytest
import yaml
from helpers import run_search

from tune import storage
from tune.disk import Ended, enforce


def test_paths_and_uris_are_read_as_ray_tune_reads_them(tmp_path: Path) -> None:
    assert storage.resolve(f"file://{tmp_path}/a") == str(tmp_path / "a")
    assert storage.resolve("s3://bucket/x/") == "s3://bucket/x"
    assert storage.experiment_path("s3://bucket/x", "fixes") == "s3://bucket/x/fixes"
    assert storage.experiment_path(str(tmp_path), "fixes") == str(tmp_path / "fixes")
    assert not storage.is_uri("file:///x")
    assert storage.is_uri("gs://b/x")
    s3 = pyarrow.fs.S3FileSystem(region="us-east-1", anonymous=True)
    assert storage.uri(s3, "bucket/x/trial_001") == "s3://bucket/x/trial_001"
    assert storage.uri(pyarrow.fs.LocalFileSystem(), "/x/trial_001") == "/x/trial_001"


def _rewrite(path: Path, data: bytes) -> None:
    """Write as the training loop does: a new file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_the_uploader_sends_each_new_or_rewritten_file_once(tmp_path: Path) -> None:
    run, remote = tmp_path / "run", tmp_path / "remote"
    (run / "models").mkdir(parents=True)
    (run / "metrics").mkdir()
    _rewrite(run / "models" / "last.pt", b"resume")
    _rewrite(run / "models" / "best.pt", b"best-1")
    _rewrite(run / "metrics" / "m.csv", b"epoch\n1\n")
    (run / "models" / ".best.pt.123.tmp").write_bytes(b"half")  # a save in progress
    up = storage.FolderUploader(
        run,
        pyarrow.fs.LocalFileSystem(),
        str(remote),
        skip=[Path("models/last.pt")],
        drop=[Path("models/best.pt")],
    )

    assert sorted(map(str, up.upload())) == ["metrics/m.csv", "models/best.pt"]
    assert (remote / "models" / "best.pt").read_bytes() == b"best-1"
    assert not (run / "models" / "best.pt").exists()  # dropped locally once sent
    assert not (remote / "models" / "last.pt").exists()
    assert not list(remote.rglob(".*"))
    assert up.upload() == []  # nothing changed: nothing sent

    with (run / "metrics" / "m.csv").open("a") as f:
        f.write("2\n")
    _rewrite(run / "models" / "best.pt", b"best-2")
    assert sorted(map(str, up.upload())) == ["metrics/m.csv", "models/best.pt"]
    assert (remote / "metrics" / "m.csv").read_text() == "epoch\n1\n2\n"
    assert (remote / "models" / "best.pt").read_bytes() == b"best-2"
    assert up.sent == {Path("metrics/m.csv"): 2, Path("models/best.pt"): 2}

    # a trial restored on a fresh folder: its files come back and count as sent
    again = storage.FolderUploader(
        tmp_path / "fresh", pyarrow.fs.LocalFileSystem(), str(remote), drop=[Path("models/best.pt")]
    )
    assert sorted(map(str, again.download())) == ["metrics/m.csv", "models/best.pt"]
    assert (tmp_path / "fresh" / "metrics" / "m.csv").read_text() == "epoch\n1\n2\n"
    assert not (tmp_path / "fresh" / "models" / "best.pt").exists()
    assert again.upload() == []


def test_ended_trials_lose_the_weights_in_their_tune_checkpoints(tmp_path: Path) -> None:
    """On cloud storage last.pt lives in checkpoint_*/; it goes when the trial ends."""
    for name in ("a", "b"):
        for ckpt in ("checkpoint_000001", "checkpoint_000002"):
            (tmp_path / name / ckpt).mkdir(parents=True)
            (tmp_path / name / ckpt / "last.pt").write_bytes(b"x" * 400)
            (tmp_path / name / ckpt / "search_state.json").write_text("{}")
        (tmp_path / name / "run" / "models").mkdir(parents=True)
        (tmp_path / name / "run" / "models" / "best.pt").write_bytes(b"x" * 100)
    ended = [Ended(str(tmp_path / "a"), (1, 0.5)), Ended(str(tmp_path / "b"), (1, 0.1))]
    cleared: set[str] = set()
    assert enforce(ended, keep=1, cleared=cleared) == 4 * 400 + 100
    assert not list(tmp_path.rglob("last.pt"))
    assert len(list(tmp_path.rglob("search_state.json"))) == 4  # Tune's own state stays
    assert [p.parts[-4] for p in tmp_path.rglob("best.pt")] == ["a"]
    # b holds no weights now: the next trial's end does not list its folder again
    assert cleared == {str(tmp_path / "b")}
    (tmp_path / "b" / "run" / "models" / "best.pt").write_bytes(b"x")
    assert enforce(ended, keep=1, cleared=cleared) == 0


# --- a search on S3 (moto's server) ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Requests(logging.Handler):
    """Counts the server's uploads per key: one multipart start (POST ?uploads) or one plain
    PUT per object written."""

    def __init__(self) -> None:
        super().__init__()
        self.uploads: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        line = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # werkzeug colours some
        m = re.search(r'"(PUT|POST) /([^ ?]+)(\?[^ ]*)? HTTP', line)
        if m and (m[1] == "PUT" and not m[3] or m[1] == "POST" and m[3] == "?uploads"):
            self.uploads[m[2]] += 1


@pytest.fixture
def s3_server(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[pyarrow.fs.S3FileSystem, _Requests]]:
    """An S3-compatible server on 127.0.0.1 with a bucket ``cattle``; the environment points
    pyarrow (in this process and in the search's) at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=True)
    server.start()
    requests = _Requests()
    logging.getLogger("werkzeug").addHandler(requests)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"],
        scheme="http",
        access_key="test",
        secret_key="test",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("cattle")
    yield fs, requests
    logging.getLogger("werkzeug").removeHandler(requests)
    server.stop()


def _search(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--epochs", "1", "--storage", "s3://cattle/exp", "--no-dashboard", "--quiet"]
    return run_search([*flags, *args], cwd, {"CATTLE_YOLO_NO_PROGRESS": "1"}, timeout=600)


def _keys(fs: pyarrow.fs.S3FileSystem, root: str) -> list[str]:
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return sorted(i.path[len(root) + 1 :] for i in infos if i.type == pyarrow.fs.FileType.File)


def test_a_search_on_s3_writes_there_uploads_weights_once_and_resumes_from_there(
    s3_server: tuple[pyarrow.fs.S3FileSystem, _Requests], tmp_path: Path
) -> None:
    fs, requests = s3_server
    first = _search(["--name", "s3", "--trials", "2", "--export", "best.yaml"], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    keys = _keys(fs, "cattle/exp/s3")
    for name in (
        "results.csv",
        "best_config.yaml",
        "optuna_journal.log",
        "space.yaml",
        "search_settings.yaml",
        "plots/curves.png",
    ):
        assert name in keys, keys
    trials = sorted({k.split("/")[0] for k in keys if k.startswith("trial_")})
    assert len(trials) == 2
    for trial in trials:
        assert f"{trial}/run/metrics/training_metrics.csv" in keys
        assert f"{trial}/run/config.yaml" in keys
    weights = [k for k in keys if k.endswith(".pt")]
    assert not any(k.endswith("last.pt") for k in weights)  # ended: their checkpoints' weights go
    assert all(k.endswith("/run/models/best.pt") for k in weights)
    assert weights

    uploaded = {k: n for k, n in requests.uploads.items() if k.endswith(".pt")}
    assert uploaded
    assert all(n == 1 for n in uploaded.values()), uploaded  # each weight file once
    assert not any("/run/models/last.pt" in k for k in uploaded)  # last.pt: checkpoints only
    assert any("/checkpoint_" in k and k.endswith("last.pt") for k in uploaded)

    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["checkpoint"].startswith("s3://cattle/exp/s3/trial_")
    assert exported["checkpoint"].endswith("/run/models/best.pt")
    local = tmp_path / "ray_results" / "s3"
    remote_csv = fs.open_input_stream("cattle/exp/s3/results.csv").read()
    assert (local / "results.csv").read_bytes() == remote_csv  # the local copy is the same

    # Another machine: no local copy. --resume reads the plan and the study from S3, restores
    # the Tuner from there and extends the search by one trial.
    import shutil

    shutil.rmtree(tmp_path / "ray_results")
    more = _search(["--name", "s3", "--trials", "3", "--resume"], tmp_path)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "resuming the search at s3://cattle/exp/s3" in more.stdout
    assert "extending the search to 3 trials" in more.stdout
    rows = list(csv.DictReader((local / "results.csv").open()))
    assert len(rows) == 3
    assert {r["status"] for r in rows} <= {"completed", "stopped by ASHA"}
    assert {r["trial"] for r in rows} >= set(trials)  # the finished trials were kept, not rerun
    remote_rows = fs.open_input_stream("cattle/exp/s3/results.csv").read().decode()
    assert len(remote_rows.strip().splitlines()) == 4  # header + 3 trials, uploaded again

    import optuna

    from tune.study import JOURNAL_FILE, journal_storage

    study = optuna.load_study(study_name="s3", storage=journal_storage(local / JOURNAL_FILE))
    assert len(study.trials) == 3  # the study continued in the downloaded journal


def test_one_driver_per_experiment_and_a_killed_one_does_not_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second driver on the same experiment is refused, naming the first; the lock goes with
    a driver killed by SIGKILL, so the same command can resume."""
    import os
    import signal
    import sys

    from cattle_yolo.config import ConfigError
    from tune.storage import lock_experiment

    held = lock_experiment(tmp_path / "exp")
    with pytest.raises(ConfigError, match=rf"another search is running .*pid {os.getpid()}"):
        lock_experiment(tmp_path / "exp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import run_search

    args = ["--smoke-test", "--storage", str(tmp_path), "--name", "exp", "--no-dashboard"]
    assert run_search.main(args) == 2  # refused before Ray starts
    assert "another search is running on this experiment" in capsys.readouterr().err
    held.close()

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tune.storage import "
            "lock_experiment; f = lock_experiment(Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(60)",
            str(tmp_path / "exp"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"pid {child.pid}"):
        lock_experiment(tmp_path / "exp")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    lock_experiment(tmp_path / "exp").close()  # free again
