"""Sources: dataset layouts, data.yaml, class names, and label parsing and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import GOOD, dataset, load, save_image

from cattle_yolo.sources import DataError

BAD_LABELS = [
    ("0 0.5 0.5 0.2\n", 1, "expected 5 fields (class cx cy w h), got 4"),
    (GOOD + "0 0.5 x 0.2 0.2\n", 2, "'x' is not a number"),
    ("0 nan 0.5 0.2 0.2\n", 1, "not a finite number"),
    (
        GOOD + "\n0 1.05 0.5 0.2 0.2\n",
        3,
        "box edge x2 = 1.1500 is outside [0, 1] beyond the 1% tolerance",
    ),
    (
        "0 0.5 -0.02 0.2 0.02\n",
        1,
        "box edge y1 = -0.0300 is outside [0, 1] beyond the 1% tolerance",
    ),
    ("0 0.5 0.5 0 0.2\n", 1, "non-positive width or height (w=0, h=0.2)"),
    ("0 0.5 0.5 0.2 -0.1\n", 1, "non-positive width or height (w=0.2, h=-0.1)"),
    (GOOD + "2 0.5 0.5 0.2 0.2\n", 2, "class id 2 but only 2 classes named"),
    ("-1 0.5 0.5 0.2 0.2\n", 1, "class id -1 is not a non-negative integer"),
    ("0.5 0.5 0.5 0.2 0.2\n", 1, "class id 0.5 is not a non-negative integer"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_LABELS)
def test_bad_label_skips_the_image_and_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, reason: str
) -> None:
    root = dataset(tmp_path, {"a": GOOD, "b": text})
    data = load(root)
    expected = f"{root / 'train' / 'b.txt'}:{line}: {reason}"
    report = data.train.report
    assert report is not None
    assert report.reasons == [expected]
    assert report.skipped == 1
    assert report.found == 2
    assert data.train.files == [str(root / "train" / "a.jpg")]
    assert len(data.val) == 1
    assert expected in capsys.readouterr().out

    with pytest.raises(DataError) as e:
        load(root, strict=True)
    assert str(e.value) == expected


def test_one_class_named_message(tmp_path: Path) -> None:
    root = dataset(tmp_path, {"a": GOOD, "b": "1 0.5 0.5 0.2 0.2\n"}, names=("Cow",))
    report = load(root).train.report
    assert report is not None
    assert report.reasons[0].endswith("b.txt:1: class id 1 but only 1 class named")


def test_coordinates_within_tolerance_are_clipped(tmp_path: Path) -> None:
    root = dataset(tmp_path, {"a": "0 0.995 0.5 0.02 0.2\n"})  # x2 = 1.005
    train = load(root).train
    assert train.report is not None
    assert train.report.skipped == 0
    assert train.report.clipped == 1
    # 64 x 48 image: ratio 1, pad_y 8; x1 = 0.985 * 64, x2 clipped to 64
    np.testing.assert_allclose(train.boxes[0], [[63.04, 27.2, 64.0, 36.8]], rtol=1e-5)


def test_duplicate_boxes_are_dropped(tmp_path: Path) -> None:
    root = dataset(tmp_path, {"a": GOOD + "1 0.2 0.2 0.1 0.1\n" + GOOD})
    train = load(root).train
    assert train.report is not None
    assert train.report.duplicates == 1
    assert train.report.skipped == 0
    assert train.labels[0].tolist() == [0, 1]
    assert train.boxes[0].shape == (2, 4)


def test_missing_and_empty_labels_are_backgrounds(tmp_path: Path) -> None:
    root = dataset(tmp_path, {"a": GOOD, "missing": None, "empty": "\n"})
    train = load(root).train
    assert train.report is not None
    assert len(train) == 3
    assert train.report.backgrounds == 2
    assert train.report.skipped == 0
    for i, f in enumerate(train.files):
        if "a.jpg" not in f:
            assert train.boxes[i].shape == (0, 4)
            assert train[i][1].shape == (0, 5)


def ultralytics(root: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    for split in splits:
        for name in ("x", "y"):
            save_image(root / "images" / split / f"{name}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    return root


@pytest.mark.parametrize(
    ("names_yaml", "names"),
    [
        ("names: [a, b, c]", ["a", "b", "c"]),
        ("names: {0: a, 1: b, 2: c}", ["a", "b", "c"]),
        ("nc: 3", ["0", "1", "2"]),
        ("nc: 3\nnames: [a, b, c]", ["a", "b", "c"]),
    ],
)
def test_data_yaml_names(tmp_path: Path, names_yaml: str, names: list[str]) -> None:
    root = ultralytics(tmp_path / "cattle")
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\n{names_yaml}\n")
    for source in (root, root / "data.yaml"):
        data = load(source)
        assert data.names == names
        assert data.name == "cattle"
        assert data.test is None
        assert len(data.train) == 2
        assert data.train.labels[0].tolist() == [2]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train: images/train\nnames: [a]", "no 'val' entry"),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}", "names keys must be 0..1"),
        (
            "train: images/train\nval: images/val\nnc: 2\nnames: [a, b, c]",
            "nc is 2 but names has 3",
        ),
        ("train: images/train\nval: nowhere\nnames: [a, b, c]", "val: .*nowhere does not exist"),
        ("path: true\ntrain: images/train\nval: images/val", "path must be a folder"),
        ("train: [images/train, 3]\nval: images/val", "train must name folders"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_bad_data_yaml(tmp_path: Path, yaml_text: str, message: str) -> None:
    root = ultralytics(tmp_path / "cattle")
    (root / "bad.yaml").write_text(yaml_text + "\n")
    with pytest.raises(DataError, match=message) as e:
        load(root / "bad.yaml")
    assert str(root / "bad.yaml") in str(e.value)


def test_data_yaml_path_lists_and_txt_files(tmp_path: Path) -> None:
    root = ultralytics(tmp_path / "sets" / "herd", splits=("train", "val", "extra"))
    (root / "train.txt").write_text("./images/train/x.png\nimages/extra/y.png\n\n")
    (tmp_path / "herd.yaml").write_text(
        "path: sets/herd\ntrain: [train.txt, images/extra]\nval: images/val\ntest: images/val\n"
        "names: [a, b, c]\n"
    )
    data = load(tmp_path / "herd.yaml")
    assert data.name == "herd"
    assert len(data.train) == 4
    assert data.test is not None
    assert len(data.test) == 2
    assert data.train.files[:2] == [
        str(root / "images/train/x.png"),
        str(root / "images/extra/y.png"),
    ]


def test_folder_layouts_and_class_names(tmp_path: Path) -> None:
    root = ultralytics(tmp_path / "plain")  # images/train without a data.yaml: numbered names
    data = load(root)
    assert data.names == ["0", "1", "2"]
    assert data.name == "plain"
    assert len(data.val) == 2
    (root / "images" / "train" / "classes.txt").write_text("a\nb\nc\n")
    assert load(root).names == ["a", "b", "c"]


def test_a_box_running_past_the_border_is_clipped_and_the_image_kept(tmp_path: Path) -> None:
    # centre and size inside [0, 1], bottom edge at y2 = 1.05: Ultralytics keeps and clips it
    root = dataset(tmp_path, {"a": GOOD + "1 0.5 0.9 0.2 0.3\n", "b": GOOD})
    train = load(root).train
    assert train.report is not None
    assert train.report.skipped == 0
    assert train.report.clipped == 1
    assert len(train) == 2
    assert "1 clipped" in train.report.summary(len(train), 0)  # the load summary says so
    boxes = train.boxes[train.files.index(str(root / "train" / "a.jpg"))]
    # 64 x 48 image letterboxed to 64: ratio 1, pad_y 8; y1 = 0.75 * 48 + 8, y2 = 1.0 * 48 + 8
    np.testing.assert_allclose(boxes[1], [25.6, 44.0, 38.4, 56.0], rtol=1e-5)
