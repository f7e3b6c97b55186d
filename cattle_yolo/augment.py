"""Augmentation (train only): one scale-and-translate, an HSV colour matrix, a flip.

It works on one letterboxed (S, S, 3) uint8 image with pixel ``x1 y1 x2 y2`` boxes (M, 4);
``DetectionDataset.with_augment`` in ``data.py`` applies it to each item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cattle_yolo.config import TrainConfig

PAD_VALUE = 114  # letterbox and augmentation fill, as in YOLOv5/v8
MIN_BOX_PIXELS = 2.0  # an augmented box narrower or lower than this is dropped
MIN_VISIBLE = 0.2  # an augmented box with less than this share of its area in view is dropped
_LUMA = np.array([0.213, 0.715, 0.072])  # Rec. 709 weights, as SVG's hue and saturation filters
_HUE_SIN = np.array([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283], [-0.787, 0.715, 0.072]])


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation strengths; see ``TrainConfig`` for each field's meaning."""

    fliplr: float
    hsv_h: float
    hsv_s: float
    hsv_v: float
    scale: float
    translate: float

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Augment:
        return cls(cfg.fliplr, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v, cfg.scale, cfg.translate)


def augment(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, aug: Augment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one letterboxed image (S, S, 3) uint8 with pixel ``x1 y1 x2 y2`` boxes (M, 4).

    Draws the same 7 numbers from ``rng`` whatever is enabled. Boxes that end up mostly outside
    the image or under ``MIN_BOX_PIXELS`` are dropped with their labels; the rest are clipped.
    """
    size = image.shape[0]
    u = rng.uniform(-1.0, 1.0, 6)
    flip = rng.random() < aug.fliplr
    im = Image.fromarray(image)
    s = 1.0 + aug.scale * u[0]
    offset = size / 2 * (1 - s) + aug.translate * size * u[1:3]  # x' = s * x + offset
    if aug.scale or aug.translate:
        im = _scale_translate(im, s, offset)
        moved = boxes * s + np.tile(offset, 2).astype(np.float32)
        clipped = moved.clip(0, size)
        w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        keep = (w > MIN_BOX_PIXELS) & (h > MIN_BOX_PIXELS) & (w * h > MIN_VISIBLE * area)
        boxes, labels = clipped[keep], labels[keep]
    if aug.hsv_h or aug.hsv_s or aug.hsv_v:
        matrix = _colour_matrix(aug.hsv_h * u[3], 1 + aug.hsv_s * u[4], 1 + aug.hsv_v * u[5])
        im = im.convert("RGB", matrix)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    return np.asarray(im), boxes.astype(np.float32), labels


def _scale_translate(im: Image.Image, s: float, offset: np.ndarray) -> Image.Image:
    """Resample ``im`` so that a point x maps to ``s * x + offset``; the rest is padding."""
    size = im.size[0]
    x0, y0 = (max(0, round(v)) for v in offset)
    x1, y1 = (min(size, round(v + s * size)) for v in offset)
    out = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    if x1 > x0 and y1 > y0:  # resize only the part that stays in view
        src = np.clip((np.array([x0, y0, x1, y1]) - np.tile(offset, 2)) / s, 0, size)
        part = im.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=tuple(src))
        out.paste(part, (x0, y0))
    return out


def _colour_matrix(hue: float, sat: float, val: float) -> tuple[float, ...]:
    """HSV jitter as one RGB matrix for ``Image.convert``: a hue rotation by ``hue`` of the
    circle about the grey axis, a saturation gain blending towards grey, a value gain. PIL
    applies it in C (~0.6 ms at 384 px, against ~6 ms for an HSV round trip with lookup tables)."""
    grey = np.tile(_LUMA, (3, 1))
    angle = 2 * math.pi * hue
    rotate = grey + math.cos(angle) * (np.eye(3) - grey) + math.sin(angle) * _HUE_SIN
    saturate = grey + sat * (np.eye(3) - grey)
    m = val * rotate @ saturate
    return tuple(np.concatenate([m, np.zeros((3, 1))], axis=1).ravel().tolist())
