"""Augmentation (train only): a mosaic of 4, one scale-and-translate, an HSV colour matrix, a flip.

It works on letterboxed (S, S, 3) uint8 images with pixel ``x1 y1 x2 y2`` boxes (M, 4);
``DetectionDataset.with_augment`` in ``data.py`` applies it to each item. A mosaic is a
(2S, 2S, 3) canvas of 4 images meeting at a random centre; the scale-and-translate step then maps
the canvas's centre to the output's and crops it to (S, S), as YOLOv8 does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cattle_yolo.boxes import PAD_VALUE
from cattle_yolo.config import TrainConfig

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
    mosaic: float = 0.0  # probability of a mosaic
    mosaic_epochs: int = 0  # epochs 0 .. mosaic_epochs - 1 use mosaic (then close_mosaic)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Augment:
        return cls(
            cfg.fliplr,
            cfg.hsv_h,
            cfg.hsv_s,
            cfg.hsv_v,
            cfg.scale,
            cfg.translate,
            cfg.mosaic,
            max(0, cfg.epochs - cfg.close_mosaic),
        )


def mosaic(
    images: list[np.ndarray],
    boxes: list[np.ndarray],
    labels: list[np.ndarray],
    centre: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four (S, S, 3) uint8 images -> one (2S, 2S, 3) canvas, with their boxes mapped onto it.

    The images meet at pixel ``centre`` (x, y) of the canvas: the first to its top left, then
    top right, bottom left and bottom right; what falls off the canvas is cut, and the rest is
    grey (``PAD_VALUE``). Boxes are pixel ``x1 y1 x2 y2`` (M_k, 4) per image; they move with
    their image, are clipped to the part of it on the canvas, and are dropped (with their labels)
    when under ``MIN_BOX_PIXELS`` wide or high or with less than ``MIN_VISIBLE`` of their area
    left. Returns the canvas, boxes (M, 4) float32 and labels (M,).
    """
    size = images[0].shape[0]
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, np.uint8)
    xc, yc = centre
    out_boxes, out_labels = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)]
    for k, (im, b, lab) in enumerate(zip(images, boxes, labels, strict=True)):
        x0 = xc - size if k % 2 == 0 else xc  # the image's top-left corner on the canvas
        y0 = yc - size if k < 2 else yc
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + size, 2 * size), min(y0 + size, 2 * size)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        canvas[cy0:cy1, cx0:cx1] = im[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        moved = b + np.array([x0, y0, x0, y0], np.float32)
        keep, kept = _clip_boxes(moved, (cx0, cy0, cx1, cy1))
        out_boxes.append(kept)
        out_labels.append(lab[keep])
    return canvas, np.concatenate(out_boxes), np.concatenate(out_labels).astype(np.int64)


def _clip_boxes(
    moved: np.ndarray, window: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Clip pixel xyxy boxes (M, 4) to ``window`` (x0, y0, x1, y1) -> (keep mask, kept boxes):
    a box is kept if at least ``MIN_BOX_PIXELS`` wide and high and ``MIN_VISIBLE`` of it shows."""
    x0, y0, x1, y1 = window
    clipped = np.stack(
        [
            moved[:, 0].clip(x0, x1),
            moved[:, 1].clip(y0, y1),
            moved[:, 2].clip(x0, x1),
            moved[:, 3].clip(y0, y1),
        ],
        1,
    ).astype(np.float32)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    keep = (w > MIN_BOX_PIXELS) & (h > MIN_BOX_PIXELS) & (w * h > MIN_VISIBLE * area)
    return keep, clipped[keep]


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    aug: Augment,
    rng: np.random.Generator,
    out_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one square (N, N, 3) uint8 image with pixel ``x1 y1 x2 y2`` boxes (M, 4) into an
    (S, S, 3) image, ``S = out_size`` (default N; a mosaic canvas has N = 2S).

    The input's centre maps to the output's, scaled by ``1 +- scale`` and shifted by up to
    ``translate * S``. Draws the same 7 numbers from ``rng`` whatever is enabled. Boxes that end
    up mostly outside the image or under ``MIN_BOX_PIXELS`` are dropped with their labels; the
    rest are clipped.
    """
    size_in = image.shape[0]
    size = out_size or size_in
    u = rng.uniform(-1.0, 1.0, 6)
    flip = rng.random() < aug.fliplr
    im = Image.fromarray(image)
    s = 1.0 + aug.scale * u[0]
    offset = size / 2 - s * size_in / 2 + aug.translate * size * u[1:3]  # x' = s * x + offset
    if aug.scale or aug.translate or size != size_in:
        im = _scale_translate(im, s, offset, size)
        moved = boxes * s + np.tile(offset, 2).astype(np.float32)
        keep, boxes = _clip_boxes(moved, (0, 0, size, size))
        labels = labels[keep]
    if aug.hsv_h or aug.hsv_s or aug.hsv_v:
        matrix = _colour_matrix(aug.hsv_h * u[3], 1 + aug.hsv_s * u[4], 1 + aug.hsv_v * u[5])
        im = im.convert("RGB", matrix)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    return np.asarray(im), boxes.astype(np.float32), labels


def _scale_translate(im: Image.Image, s: float, offset: np.ndarray, size: int) -> Image.Image:
    """Resample square ``im`` into a ``size`` x ``size`` image so that a point x maps to
    ``s * x + offset``; the rest is padding."""
    size_in = im.size[0]
    x0, y0 = (max(0, round(v)) for v in offset)
    x1, y1 = (min(size, round(v + s * size_in)) for v in offset)
    out = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    if x1 > x0 and y1 > y0:  # resize only the part that stays in view
        src = np.clip((np.array([x0, y0, x1, y1]) - np.tile(offset, 2)) / s, 0, size_in)
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
