"""Atomic writes: the file appears whole or not at all."""

import pytest

from cattle_yolo.files import atomic_write, atomic_write_text


def test_a_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "sub" / "results.csv"
    atomic_write_text(path, "old\n")
    assert path.read_text() == "old\n"

    def torn(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.csv"]


def test_the_temp_file_keeps_the_suffix_and_is_hidden(tmp_path):
    seen = []
    atomic_write(tmp_path / "dets.npz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].startswith(".") and seen[0].endswith(".npz")
    assert (tmp_path / "dets.npz").read_bytes() == b"x"
