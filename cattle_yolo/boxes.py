"""Every box-format conversion in one place.

Formats used in this project:
- YOLO labels: normalized ``cx cy w h`` in [0, 1], relative to the original image.
- Model outputs, targets and the letterboxed training space: pixel ``x1 y1 x2 y2``.
- COCO json: pixel ``x y w h`` in the original image.

And the letterbox that maps an original image into the square training space.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_convert

Array = np.ndarray | torch.Tensor
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)  # numpy in, numpy out; torch in, torch out
PAD_VALUE = 114  # letterbox and augmentation fill, as in YOLOv5/v8


def cxcywh_to_xyxy(boxes: ArrayT) -> ArrayT:
    """(..., 4) cx cy w h -> (..., 4) x1 y1 x2 y2, same units, numpy or torch."""
    if isinstance(boxes, torch.Tensor):
        xyxy: torch.Tensor = box_convert(boxes, "cxcywh", "xyxy")  # torchvision is untyped
        return xyxy
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_xywh(boxes: ArrayT) -> ArrayT:
    """(..., 4) pixel x1 y1 x2 y2 -> (..., 4) COCO pixel x y w h."""
    if isinstance(boxes, torch.Tensor):
        xywh: torch.Tensor = box_convert(boxes, "xyxy", "xywh")  # torchvision is untyped
        return xywh
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def to_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) normalized x1 y1 x2 y2 -> (N, 4) pixel x1 y1 x2 y2 in a ``width`` x ``height``
    image (float32). YOLO labels: ``to_pixels(cxcywh_to_xyxy(labels), w, h)``."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return boxes.astype(np.float32) * scale


def letterbox_params(width: int, height: int, size: int) -> tuple[float, float, float]:
    """Scale and (pad_x, pad_y) that fit a ``width`` x ``height`` image centred in ``size``^2."""
    ratio = min(size / width, size / height)
    new_w, new_h = round(width * ratio), round(height * ratio)
    return ratio, (size - new_w) / 2, (size - new_h) / 2


def to_letterbox(boxes: ArrayT, ratio: float, pad_x: float, pad_y: float) -> ArrayT:
    """(N, 4) pixel xyxy in the original image -> (N, 4) pixel xyxy in the letterboxed image."""
    offset = [pad_x, pad_y, pad_x, pad_y]
    if isinstance(boxes, torch.Tensor):
        return boxes * ratio + boxes.new_tensor(offset)
    moved: np.ndarray = boxes * ratio + np.asarray(offset, dtype=boxes.dtype)
    return moved


def from_letterbox(boxes: ArrayT, ratio: float, pad_x: float, pad_y: float) -> ArrayT:
    """(N, 4) pixel xyxy in the letterboxed image -> (N, 4) pixel xyxy in the original image."""
    offset = [pad_x, pad_y, pad_x, pad_y]
    if isinstance(boxes, torch.Tensor):
        return (boxes - boxes.new_tensor(offset)) / ratio
    restored: np.ndarray = (boxes - np.asarray(offset, dtype=boxes.dtype)) / ratio
    return restored


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """Fit an (H, W, 3) uint8 image into ``size`` x ``size``, centred, padded with 114.

    Returns the (size, size, 3) uint8 image, ``ratio``, ``pad_x`` and ``pad_y``: a pixel ``x1 y1
    x2 y2`` box maps with ``boxes.to_letterbox(box, ratio, pad_x, pad_y)``. The pads are the whole
    pixels actually used (``boxes.letterbox_params``'s, rounded down).
    """
    out, ratio, pad_x, pad_y = letterbox_pil(Image.fromarray(image), size)
    return np.array(out), ratio, pad_x, pad_y


def letterbox_pil(
    im: Image.Image, size: int, orig: tuple[int, int] | None = None
) -> tuple[Image.Image, float, float, float]:
    width, height = orig or im.size
    ratio, pad_x, pad_y = letterbox_params(width, height, size)
    new_w, new_h = round(width * ratio), round(height * ratio)
    if im.size != (new_w, new_h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    out.paste(im, (int(pad_x), int(pad_y)))
    return out, ratio, float(int(pad_x)), float(int(pad_y))
