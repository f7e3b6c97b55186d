"""Seeded fuzz of everything a user hands the tool: label lines, label and image files, data.yaml,
configs, space files and command-line values. The property, for every input: it is accepted
(and then its values are sane) or refused with the project's own error naming the file (and
line) or key; never another exception, never a traceback, nothing written."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import run_search
from cattle_yolo import cli
from cattle_yolo.config import FIELD_NAMES, FIELD_TYPES, ConfigError, TrainConfig
from cattle_yolo.data import DataError, load_datasets
from cattle_yolo.sources import parse_labels

REPO = Path(__file__).resolve().parents[1]
TOKENS = [
    "0", "1", "0.5", "0.25", "1.0", "-1", "-0.5", "2", "1e-300", "1e30", "1e400", "-1e400",
    "nan", "NaN", "inf", "-inf", "abc", "0x10", "1,5", "9223372036854775808", "0.0000001",
    "1.5", "3", "", "1e-7", "0.999999", "+0.5", "５",
]  # fmt: skip
BAD_VALUES = [".nan", ".inf", "-.inf", "-1", "1e30", "abc", "[1, 2]", "{a: 1}", "true", "null"]


def _line(rng: random.Random) -> str:
    n = rng.choice([5, 5, 5, 5, 4, 6, 1, 0])
    return " ".join(rng.choice(TOKENS) for _ in range(n))


def test_label_lines(tmp_path: Path) -> None:
    """800 random label lines: parsed to finite boxes in [0, 1] with sane class ids, or an
    error naming file:line."""
    rng = random.Random(0)
    accepted = refused = 0
    for i in range(800):
        path = tmp_path / f"l{i}.txt"
        lines = [_line(rng) for _ in range(rng.randint(1, 3))]
        path.write_text("\n".join(lines) + "\n")
        labels = parse_labels(path)
        if labels.error is not None:
            refused += 1
            assert labels.error.startswith(f"{path}:"), labels.error
            continue
        accepted += 1
        assert np.isfinite(labels.xyxy).all()
        assert ((labels.xyxy >= 0) & (labels.xyxy <= 1)).all()
        assert (labels.xyxy[:, 2] > labels.xyxy[:, 0]).all()
        assert (labels.xyxy[:, 3] > labels.xyxy[:, 1]).all()
        assert ((labels.classes >= 0) & (labels.classes <= 100_000)).all()
    assert accepted > 20
    assert refused > 400


def _image(path: Path, value: int = 90) -> None:
    Image.fromarray(np.full((48, 64, 3), value, np.uint8)).save(path)


def _dataset(root: Path) -> Path:
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            _image(root / split / f"im{i}.jpg", 40 * i)
            (root / split / f"im{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    return root


def _replaced(path: Path, make: Callable[[Path], object]) -> None:
    """Remove the file ``path`` and ``make`` something else there."""
    path.unlink()
    make(path)


BROKEN_FILES: dict[str, Callable[[Path], object]] = {  # what each does to a dataset folder
    "zero-byte image": lambda d: (d / "train" / "im0.jpg").write_bytes(b""),
    "truncated image": lambda d: (d / "train" / "im0.jpg").write_bytes(
        (d / "train" / "im0.jpg").read_bytes()[:60]
    ),
    "text named .jpg": lambda d: (d / "train" / "im0.jpg").write_text("not an image"),
    "symlink loop": lambda d: _replaced(d / "train" / "im0.jpg", lambda p: p.symlink_to(p)),
    "folder named .jpg": lambda d: _replaced(d / "train" / "im0.jpg", lambda p: p.mkdir()),
    "binary label": lambda d: (d / "train" / "im0.txt").write_bytes(bytes(range(256))),
    "label is a folder": lambda d: _replaced(d / "train" / "im0.txt", lambda p: p.mkdir()),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
@pytest.mark.parametrize("strict", [False, True])
def test_broken_files_are_skipped_and_counted_or_refused_by_name(
    tmp_path: Path, case: str, strict: bool
) -> None:
    data = _dataset(tmp_path / "d")
    BROKEN_FILES[case](data)
    cfg = TrainConfig(data=str(data), imgsz=64, strict=strict)
    if strict:
        with pytest.raises(DataError, match="im0"):
            load_datasets(cfg, verbose=False)
        return
    try:
        ds = load_datasets(cfg, verbose=False)
    except DataError as e:  # refused outright: it must name the file
        assert "im0" in str(e)  # noqa: PT017 (either outcome is allowed: a refusal must name it)
        return
    assert len(ds.train) == 2
    assert ds.train.report is not None
    assert ds.train.report.skipped == 1
    assert "im0" in ds.train.report.reasons[0]


def _mutate_yaml(text: str, rng: random.Random) -> str:
    """One random damage: a value replaced, a key renamed, the text cut, a line indented."""
    lines = text.splitlines()
    kind = rng.choice(["value", "value", "key", "cut", "indent", "colon"])
    i = rng.randrange(len(lines))
    if kind == "value" and ":" in lines[i]:
        head = lines[i].split(":", 1)[0]
        lines[i] = f"{head}: {rng.choice(BAD_VALUES)}"
    elif kind == "key" and ":" in lines[i]:
        lines[i] = "bogus_" + lines[i].lstrip()
    elif kind == "cut":
        return text[: rng.randrange(len(text))]
    elif kind == "indent":
        lines[i] = "   " + lines[i]
    else:
        lines[i] = lines[i].replace(":", " ", 1)
    return "\n".join(lines) + "\n"


def test_data_yaml(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "d")
    good = yaml.safe_dump({"path": str(data), "train": "train", "val": "val", "names": ["cow"]})
    rng = random.Random(1)
    for i in range(60):
        path = tmp_path / f"data{i}.yaml"
        path.write_text(_mutate_yaml(good, rng))
        try:
            ds = load_datasets(TrainConfig(data=str(path), imgsz=64), verbose=False)
        except DataError as e:
            assert str(path) in str(e) or str(data) in str(e), e  # noqa: PT017 (either outcome is allowed: a refusal must name it)
            continue
        assert len(ds.train) == 3
        assert len(ds.val) == 3


def test_config_files(tmp_path: Path) -> None:
    """Random damage to a run's config.yaml: it loads (every value checked) or the error names
    the file and the key."""
    good = yaml.safe_dump(TrainConfig().to_dict(), sort_keys=False)
    rng = random.Random(2)
    for i in range(150):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(_mutate_yaml(good, rng))
        try:
            cfg = TrainConfig.load(path)
        except ConfigError as e:
            assert str(path) in str(e), e  # noqa: PT017 (either outcome is allowed: a refusal must name it)
            continue
        for key in FIELD_NAMES:  # accepted: every number is finite
            value = getattr(cfg, key)
            assert not (isinstance(value, float) and not math.isfinite(value)), key


def test_space_files(tmp_path: Path) -> None:
    """Random damage to fixes.yaml: the search plans (nothing run, nothing written) or the
    error names the file."""
    good = (REPO / "search_spaces" / "fixes.yaml").read_text()
    rng = random.Random(3)
    storage = tmp_path / "runs"
    for i in range(150):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(_mutate_yaml(good, rng))
        args = run_search.build_parser().parse_args(
            ["--space", str(path), "--storage", str(storage)]
        )
        try:
            run_search.plan_search(args)
        except ConfigError as e:
            assert str(path) in str(e), e  # noqa: PT017 (either outcome is allowed: a refusal must name it)
        assert not storage.exists()


NUMERIC = [k for k in FIELD_NAMES if FIELD_TYPES[k] in (int, float)]


def test_command_line_values(capsys: pytest.CaptureFixture[str]) -> None:
    """``cattle_yolo train key=<bad>`` and ``run_search.py --set key=<bad>``: exit 2 naming
    the key, no traceback, before anything trains."""
    rng = random.Random(4)
    for _ in range(40):
        key = rng.choice(NUMERIC)
        value = rng.choice([".nan", ".inf", "-.inf", "1e30", "abc", "[1]", "-5"])
        try:
            TrainConfig.load(None, [f"{key}={value}"])
        except ConfigError:
            pass
        else:
            continue  # a value this key accepts (say -5 nowhere, 1e30 for a weight): skip it
        assert cli.main(["train", f"{key}={value}"]) == 2
        err = capsys.readouterr().err
        assert key in err
        assert "Traceback" not in err
        code = run_search.main(["--set", f"{key}={value}", "--no-dashboard"])
        err = capsys.readouterr().err
        assert code == 2
        assert key in err
        assert "Traceback" not in err
