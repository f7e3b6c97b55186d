"""Augmentation: flip, scale and translate move boxes with the image, HSV jitter, dropped boxes."""

from __future__ import annotations

import numpy as np
import torch
from test_data import tiny

from cattle_yolo.augment import Augment, augment
from cattle_yolo.config import TrainConfig

NO_AUG = dict(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0)


def test_flip_maps_boxes() -> None:
    ds = tiny().with_augment(TrainConfig(**{**NO_AUG, "fliplr": 1.0}))
    image, target, _ = ds[0]
    assert torch.equal(image, torch.from_numpy(ds.images[0][:, ::-1].copy()).permute(2, 0, 1))
    assert target.tolist() == [[0.0, 64 - 24, 12.0, 64 - 8, 36.0]]


def test_scale_and_translate_move_image_and_boxes_together() -> None:
    ds = tiny().with_augment(TrainConfig(**{**NO_AUG, "scale": 0.5, "translate": 0.2}))
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

    def __init__(self, u, r):
        self.u, self.r = np.asarray(u, np.float64), r

    def uniform(self, low, high, size):
        return self.u

    def random(self):
        return self.r


def test_boxes_moved_out_of_view_are_dropped_and_others_clipped() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[40, 10, 60, 30], [2, 10, 20, 30], [10, 40, 26, 60]], np.float32)
    labels = np.array([0, 1, 1])
    aug = Augment(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.5)
    out, moved, kept = augment(image, boxes, labels, aug, FixedRng([0, 0.75, 0, 0, 0, 0], 1.0))
    assert out.shape == (64, 64, 3) and kept.tolist() == [1, 1]  # shifted right by 24 px
    np.testing.assert_allclose(moved, [[26, 10, 44, 30], [34, 40, 50, 60]])
    out, moved, kept = augment(image, boxes, labels, aug, FixedRng([0, 0.5, 0, 0, 0, 0], 1.0))
    np.testing.assert_allclose(moved[0], [56, 10, 64, 30])  # 8 of 20 px in view: kept, clipped


def test_hsv_jitter_keeps_grey_grey_and_changes_colour() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    image[:4] = (200, 60, 30)
    aug = Augment(fliplr=0.0, hsv_h=0.5, hsv_s=0.9, hsv_v=0.0, scale=0.0, translate=0.0)
    out, _, _ = augment(
        image, np.zeros((0, 4), np.float32), np.zeros(0), aug, FixedRng([0, 0, 0, 0.3, 0.5, 0], 1.0)
    )
    assert np.abs(out[4:].astype(int) - 100).max() <= 1
    assert np.abs(out[:4].astype(int) - image[:4]).max() > 30
    bright = Augment(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.4, scale=0.0, translate=0.0)
    out, _, _ = augment(
        image, np.zeros((0, 4), np.float32), np.zeros(0), bright, FixedRng([0] * 5 + [1], 1.0)
    )
    assert np.abs(out[4:].astype(int) - 140).max() <= 1
