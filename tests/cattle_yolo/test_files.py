"""Atomic writes: the file appears whole or not at all."""

from pathlib import Path

import pytest

from cattle_yolo.files import DiskFullError, atomic_write, atomic_write_text


def test_a_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.csv"
    atomic_write_text(path, "old\n")
    assert path.read_text() == "old\n"

    def torn(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.csv"]


def test_the_temp_file_keeps_the_suffix_and_is_hidden(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")

    atomic_write(tmp_path / "dets.npz", write)
    assert seen[0].startswith(".")
    assert seen[0].endswith(".npz")
    assert (tmp_path / "dets.npz").read_bytes() == b"x"


def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path: Path) -> None:
    import errno

    path = atomic_write_text(tmp_path / "last.pt", "epoch 1")

    def full(tmp: Path) -> None:
        tmp.write_text("epoch 2, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"last.pt: the disk filled .* left as it was"):
        atomic_write(path, full)
    assert path.read_text() == "epoch 1"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_torch_save_on_a_full_disk_is_a_disk_full_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports a full disk as a RuntimeError without an errno: the free space
    left at that moment tells it apart."""
    import shutil

    def torch_like(tmp: Path) -> None:
        tmp.write_bytes(b"PK")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(DiskFullError, match=r"\(0.0 MiB free\); none was there"):
        atomic_write(tmp_path / "best.pt", torch_like)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage)
    with pytest.raises(RuntimeError, match="file write failed"):  # space left: not a full disk
        atomic_write(tmp_path / "best.pt", torch_like)
    assert list(tmp_path.iterdir()) == []


def test_temps_of_killed_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from cattle_yolo.files import remove_stale_temps

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "models").mkdir()
    stale = tmp_path / "models" / f".last.{dead.stdout.strip()}.tmp.pt"
    live = tmp_path / "models" / f".last.{os.getpid()}.tmp.pt"
    for p in (stale, live, tmp_path / "models" / "last.pt"):
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([live.name, "last.pt"])
