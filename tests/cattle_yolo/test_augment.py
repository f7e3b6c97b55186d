"""Augmentation: mosaic, flip, scale and translate move boxes with the image, HSV jitter,
dropped boxes, and mosaic closing for the last epochs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from builders import tiny_dataset

from cattle_yolo.augment import Augment, augment, mosaic
from cattle_yolo.boxes import PAD_VALUE
from cattle_yolo.config import TrainConfig

NO_AUG = TrainConfig(
    fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0, mosaic=0.0
)


def test_flip_maps_boxes() -> None:
    ds = tiny_dataset().with_augment(NO_AUG.replace(fliplr=1.0))
    image, target, _ = ds[0]
    assert torch.equal(image, torch.from_numpy(ds.images[0][:, ::-1].copy()).permute(2, 0, 1))
    assert target.tolist() == [[0.0, 64 - 24, 12.0, 64 - 8, 36.0]]


def test_scale_and_translate_move_image_and_boxes_together() -> None:
    ds = tiny_dataset().with_augment(NO_AUG.replace(scale=0.5, translate=0.2))
    checked = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, target, _ = ds[i]
            for _, x1, y1, x2, y2 in target.round().int().tolist():
                inside = image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float()
                assert inside.mean() > 200, (epoch, i)
                ring = image[:, max(0, y1 - 4) : y2 + 4, max(0, x1 - 4) : x2 + 4].float()
                assert ring.mean() < inside.mean() - 20
                checked += 1
    assert checked > 30


class FixedRng:
    """Stands in for a Generator: ``uniform`` gives ``u`` and ``random`` gives ``r``."""

    def __init__(self, u: Sequence[float], r: float) -> None:
        self.u, self.r = np.asarray(u, np.float64), r

    def uniform(self, low: float, high: float, size: int) -> np.ndarray:
        return self.u

    def random(self) -> float:
        return self.r


def fixed_rng(u: Sequence[float], r: float) -> np.random.Generator:
    """A ``FixedRng`` where ``augment`` takes a Generator (it calls only uniform and random)."""
    return cast(np.random.Generator, FixedRng(u, r))


def test_boxes_moved_out_of_view_are_dropped_and_others_clipped() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[40, 10, 60, 30], [2, 10, 20, 30], [10, 40, 26, 60]], np.float32)
    labels = np.array([0, 1, 1])
    aug = Augment(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.5)
    out, moved, kept = augment(image, boxes, labels, aug, fixed_rng([0, 0.75, 0, 0, 0, 0], 1.0))
    assert out.shape == (64, 64, 3)
    assert kept.tolist() == [1, 1]
    np.testing.assert_allclose(moved, [[26, 10, 44, 30], [34, 40, 50, 60]])
    out, moved, kept = augment(image, boxes, labels, aug, fixed_rng([0, 0.5, 0, 0, 0, 0], 1.0))
    np.testing.assert_allclose(moved[0], [56, 10, 64, 30])  # 8 of 20 px in view: kept, clipped


def test_hsv_jitter_keeps_grey_grey_and_changes_colour() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    image[:4] = (200, 60, 30)
    aug = Augment(fliplr=0.0, hsv_h=0.5, hsv_s=0.9, hsv_v=0.0, scale=0.0, translate=0.0)
    out, _, _ = augment(
        image,
        np.zeros((0, 4), np.float32),
        np.zeros(0),
        aug,
        fixed_rng([0, 0, 0, 0.3, 0.5, 0], 1.0),
    )
    assert np.abs(out[4:].astype(int) - 100).max() <= 1
    assert np.abs(out[:4].astype(int) - image[:4]).max() > 30
    bright = Augment(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.4, scale=0.0, translate=0.0)
    out, _, _ = augment(
        image, np.zeros((0, 4), np.float32), np.zeros(0), bright, fixed_rng([0] * 5 + [1], 1.0)
    )
    assert np.abs(out[4:].astype(int) - 140).max() <= 1


def boxes_from_pixels(
    image: np.ndarray, colours: list[tuple[int, int, int]]
) -> list[list[int] | None]:
    """The bounding box (x1, y1, x2, y2) of each colour's pixels, None where it is absent."""
    found: list[list[int] | None] = []
    for colour in colours:
        ys, xs = np.nonzero((np.abs(image.astype(int) - colour) <= 8).all(-1))
        if len(xs) == 0:
            found.append(None)
        else:
            found.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return found


def drawn(size: int, box: list[int], colour: tuple[int, int, int]) -> np.ndarray:
    image = np.full((size, size, 3), 30, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = colour
    return image


COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]


def test_mosaic_places_four_images_around_the_centre() -> None:
    boxes = [[8, 8, 40, 40], [30, 20, 60, 50], [2, 4, 20, 30], [10, 34, 50, 62]]
    images = [drawn(64, b, c) for b, c in zip(boxes, COLOURS, strict=True)]
    canvas, out, labels = mosaic(
        images,
        [np.array([b], np.float32) for b in boxes],
        [np.array([k]) for k in range(4)],
        centre=(70, 60),
    )
    assert canvas.shape == (128, 128, 3)
    # image k's top-left corner lands at (70 - 64 or 70, 60 - 64 or 60), cut at the canvas edge
    shift = [(6, -4), (70, -4), (6, 60), (70, 60)]
    expected = []
    for (x1, y1, x2, y2), (dx, dy) in zip(boxes, shift, strict=True):
        lo_x, lo_y, hi_x, hi_y = max(0, dx), max(0, dy), min(128, dx + 64), min(128, dy + 64)
        expected.append(
            [max(x1 + dx, lo_x), max(y1 + dy, lo_y), min(x2 + dx, hi_x), min(y2 + dy, hi_y)]
        )
    assert expected[0] == [14, 4, 46, 36]
    assert expected[1] == [100, 16, 128, 46]
    np.testing.assert_allclose(out, expected)
    assert labels.tolist() == [0, 1, 2, 3]
    assert boxes_from_pixels(canvas, COLOURS) == expected  # pixels and boxes agree
    assert (canvas[:, :6] == PAD_VALUE).all()  # left of the left images: grey


def test_mosaic_then_crop_keeps_boxes_on_their_pixels() -> None:
    """A dataset item that is a mosaic: every box returned covers its colour's drawn pixels."""
    size = 96
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(24):
        boxes = []
        for _ in range(4):
            xy = rng.uniform(0, 56, 2)
            boxes.append(
                [*np.round(xy).astype(int), *np.round(xy + rng.uniform(20, 40, 2)).astype(int)]
            )
        images = [drawn(size, b, c) for b, c in zip(boxes, COLOURS, strict=True)]
        cx, cy = (int(v) for v in rng.uniform(0.5, 1.5, 2) * size)
        canvas, out, labels = mosaic(
            images,
            [np.array([b], np.float32) for b in boxes],
            [np.array([k]) for k in range(4)],
            centre=(cx, cy),
        )
        aug = Augment(0.0, 0.0, 0.0, 0.0, scale=0.3, translate=0.1, mosaic=1.0, mosaic_epochs=1)
        image, moved, kept = augment(canvas, out, labels, aug, np.random.default_rng(trial), size)
        assert image.shape == (size, size, 3)
        seen = boxes_from_pixels(image, [COLOURS[k] for k in kept])
        for box, pixels in zip(moved, seen, strict=True):
            if min(box[2] - box[0], box[3] - box[1]) < 4:
                continue  # a sliver: its few pixels are all blended at the edge
            assert pixels is not None
            np.testing.assert_allclose(box, pixels, atol=1.5)  # bilinear edges
            checked += 1
    assert checked > 20


def test_mosaic_closes_for_the_last_epochs() -> None:
    cfg = NO_AUG.replace(mosaic=1.0, epochs=5, close_mosaic=2)
    ds = tiny_dataset().with_augment(cfg)
    plain = [ds.images[i] for i in range(len(ds))]
    for epoch, expect_mosaic in [(0, True), (2, True), (3, False), (4, False)]:
        ds.set_epoch(epoch)
        image = ds[0][0].permute(1, 2, 0).numpy()
        assert (not np.array_equal(image, plain[0])) == expect_mosaic, epoch
    ds.set_epoch(1)
    assert torch.equal(ds[1][0], ds[1][0])  # seeded: the same item twice is the same mosaic
