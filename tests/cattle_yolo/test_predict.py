"""Prediction: source collection, letterbox mapping back to original pixels, written outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_outputs import Detection, raw_output
from PIL import Image
from torch import nn

from cattle_yolo.boxes import to_letterbox
from cattle_yolo.config import TrainConfig
from cattle_yolo.predict import collect_sources, draw, predict_images, write_outputs

NAMES = ["cow", "calf"]
IMGSZ = 64


def save_image(path: Path, width: int, height: int, value: int = 90) -> Path:
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)
    return path


# --- collect_sources ------------------------------------------------------------------------


def test_collect_sources_single_file(tmp_path: Path) -> None:
    image = save_image(tmp_path / "a.png", 8, 8)
    assert collect_sources(image) == [image]
    assert collect_sources(str(image)) == [image]


def test_collect_sources_folder_sorted_images_only(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "c.jpeg", "d.bmp"):
        save_image(tmp_path / name, 8, 8)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image suffix is not an image
    assert [p.name for p in collect_sources(tmp_path)] == ["a.PNG", "b.jpg", "c.jpeg", "d.bmp"]


def test_collect_sources_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jpg: no such file"):
        collect_sources(tmp_path / "missing.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no images"):
        collect_sources(tmp_path / "empty")
    (tmp_path / "labels.txt").write_text("0 0.5 0.5 0.1 0.1")
    with pytest.raises(ValueError, match="labels.txt: not an image file"):
        collect_sources(tmp_path / "labels.txt")


# --- predict_images ---------------------------------------------------------------------------


class ScriptedModel(nn.Module):
    """Returns, for the n-th image it is shown, the letterbox-space boxes ``script[n]``.

    Each entry is ``(class, box)`` (near-certain score) or ``(class, box, class logit)``.
    """

    def __init__(self, script: Sequence[Sequence[Detection]]) -> None:
        super().__init__()
        self.script, self.seen = script, 0
        self.batches: list[tuple[int, ...]] = []  # the shape of each batch shown
        self.anchors = max(len(s) for s in script) + 1

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        self.batches.append(tuple(images.shape))
        out = raw_output(self.script[self.seen : self.seen + b], self.anchors, len(NAMES))
        self.seen += b
        return out


def letterboxed(path: Path, boxes: np.ndarray) -> list[list[float]]:
    """``boxes`` pixel xyxy in the original image -> the letterboxed image, as letterbox
    maps them."""
    from cattle_yolo.boxes import letterbox

    _, ratio, pad_x, pad_y = letterbox(np.asarray(Image.open(path).convert("RGB")), IMGSZ)
    moved: list[list[float]] = to_letterbox(boxes.astype(np.float32), ratio, pad_x, pad_y).tolist()
    return moved


@pytest.mark.parametrize("batch", [1, 2])
def test_predicted_boxes_map_back_to_original_pixels(tmp_path: Path, batch: int) -> None:
    wide = save_image(tmp_path / "wide.png", 200, 100)
    tall = save_image(tmp_path / "tall.jpg", 90, 160)
    truth = {
        wide: np.array([[20.0, 10, 120, 90]]),
        tall: np.array([[5.0, 40, 60, 150], [30, 0, 80, 20]]),
    }
    script = [
        [(0, letterboxed(wide, truth[wide])[0])],
        [(1, b) for b in letterboxed(tall, truth[tall])],
    ]
    model = ScriptedModel(script)
    cfg = TrainConfig(imgsz=IMGSZ, batch=batch)
    results = predict_images(model, [wide, tall], cfg, "cpu", NAMES)

    assert len(model.batches) == 2 // batch
    assert model.batches[0] == (batch, 3, IMGSZ, IMGSZ)
    assert [(r["file"], r["width"], r["height"]) for r in results] == [
        (str(wide), 200, 100),
        (str(tall), 90, 160),
    ]
    for r, path in zip(results, (wide, tall), strict=True):
        order = np.argsort(r["boxes"][:, 1])  # NMS order is by score; compare by position
        expected = truth[path][np.argsort(truth[path][:, 1])]
        np.testing.assert_allclose(r["boxes"][order], expected, atol=1e-3)
        assert (r["scores"] > 0.99).all()
    assert results[0]["labels"].tolist() == [0]
    assert results[1]["labels"].tolist() == [1, 1]


def test_boxes_in_the_padding_are_clipped_and_low_scores_dropped(tmp_path: Path) -> None:
    wide = save_image(
        tmp_path / "wide.png", 200, 100
    )  # letterboxed: 16 px of padding above and below
    # The second box scores sigmoid(-2) ~ 0.12, under score_threshold 0.25.
    model = ScriptedModel([[(0, [-10.0, 0.0, 40.0, 30.0]), (1, [30.0, 30.0, 40.0, 40.0], -2.0)]])
    results = predict_images(model, [wide], TrainConfig(imgsz=IMGSZ), "cpu", NAMES)
    assert len(results[0]["boxes"]) == 1
    x1, y1, x2, y2 = results[0]["boxes"][0].tolist()
    assert x1 == 0.0
    assert y1 == 0.0
    assert 0 < x2 <= 200
    assert 0 < y2 <= 100


def test_class_count_mismatch_is_an_error(tmp_path: Path) -> None:
    image = save_image(tmp_path / "a.png", 32, 32)
    with pytest.raises(ValueError, match="predicts 2 classes but 3 are named"):
        predict_images(
            ScriptedModel([[]]), [image], TrainConfig(imgsz=IMGSZ), "cpu", [*NAMES, "bull"]
        )


# --- draw and write_outputs ----------------------------------------------------------------


def result_for(path: Path) -> dict[str, Any]:
    return {
        "file": str(path),
        "width": 100,
        "height": 80,
        "boxes": np.array([[10.0, 20.0, 60.0, 70.0], [50.0, 5.0, 90.0, 40.0]], dtype=np.float32),
        "scores": np.array([0.9, 0.5], dtype=np.float32),
        "labels": np.array([0, 1]),
    }


def test_draw_marks_the_boxes_and_keeps_the_input() -> None:
    image = Image.new("RGB", (100, 80), (90, 90, 90))
    drawn = draw(image, result_for(Path("x.png")), NAMES)
    assert drawn.size == image.size
    assert np.asarray(image).max() == 90  # input untouched
    pixels = np.asarray(drawn)
    assert (pixels != 90).any(axis=2)[20:70, 10].all()  # the left edge of the first box


def test_write_outputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a = save_image(src / "a.jpg", 100, 80)
    b = save_image(src / "b.png", 100, 80)
    empty = {
        **result_for(b),
        "boxes": np.zeros((0, 4)),
        "scores": np.zeros(0),
        "labels": np.zeros(0, int),
    }
    out = tmp_path / "out"
    path = write_outputs([result_for(a), empty], out, NAMES)

    assert path == out / "predictions.json"
    preds = json.loads(path.read_text())
    assert preds == [
        {
            "image_id": 1,
            "file_name": "a.jpg",
            "category_id": 1,
            "bbox": [10.0, 20.0, 50.0, 50.0],
            "score": 0.9,
        },
        {
            "image_id": 1,
            "file_name": "a.jpg",
            "category_id": 2,
            "bbox": [50.0, 5.0, 40.0, 35.0],
            "score": 0.5,
        },
    ]
    categories = json.loads((out / "categories.json").read_text())
    assert categories == [{"id": 1, "name": "cow"}, {"id": 2, "name": "calf"}]
    for name in ("a.jpg", "b.png"):
        with Image.open(out / name) as im:
            assert im.size == (100, 80)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no temp file left
    with Image.open(out / "b.png") as im:  # no detections: the image is copied unchanged
        assert np.asarray(im).max() == 90


def test_write_outputs_refuses_to_overwrite_sources(tmp_path: Path) -> None:
    a = save_image(tmp_path / "a.png", 100, 80)
    with pytest.raises(ValueError, match="overwrite the source image"):
        write_outputs([result_for(a)], tmp_path, NAMES)
    assert np.asarray(Image.open(a)).max() == 90
