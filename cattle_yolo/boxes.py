"""Every box-format conversion in one place.

Formats used in this project:
- YOLO labels: normalized ``cx cy w h`` in [0, 1], relative to the original image.
- Model outputs, targets and the letterboxed training space: pixel ``x1 y1 x2 y2``.
- COCO json: pixel ``x y w h`` in the original image.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_convert

Array = np.ndarray | torch.Tensor


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """(..., 4) cx cy w h -> (..., 4) x1 y1 x2 y2, same units, numpy or torch."""
    if isinstance(boxes, torch.Tensor):
        return box_convert(boxes, "cxcywh", "xyxy")
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """(..., 4) x1 y1 x2 y2 -> (..., 4) cx cy w h, same units, numpy or torch."""
    if isinstance(boxes, torch.Tensor):
        return box_convert(boxes, "xyxy", "cxcywh")
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def xyxy_to_xywh(boxes: Array) -> Array:
    """(..., 4) pixel x1 y1 x2 y2 -> (..., 4) COCO pixel x y w h."""
    if isinstance(boxes, torch.Tensor):
        return box_convert(boxes, "xyxy", "xywh")
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def yolo_to_pixel_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) normalized cx cy w h -> (N, 4) pixel x1 y1 x2 y2 in a ``width`` x ``height`` image."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return cxcywh_to_xyxy(boxes.astype(np.float32)) * scale


def pixel_xyxy_to_yolo(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) pixel x1 y1 x2 y2 -> (N, 4) normalized cx cy w h; inverse of
    ``yolo_to_pixel_xyxy``."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return xyxy_to_cxcywh(boxes.astype(np.float32) / scale)


def letterbox_params(width: int, height: int, size: int) -> tuple[float, float, float]:
    """Scale and (pad_x, pad_y) that fit a ``width`` x ``height`` image centred in ``size``^2."""
    ratio = min(size / width, size / height)
    new_w, new_h = round(width * ratio), round(height * ratio)
    return ratio, (size - new_w) / 2, (size - new_h) / 2


def to_letterbox(boxes: Array, ratio: float, pad_x: float, pad_y: float) -> Array:
    """(N, 4) pixel xyxy in the original image -> (N, 4) pixel xyxy in the letterboxed image."""
    offset = [pad_x, pad_y, pad_x, pad_y]
    if isinstance(boxes, torch.Tensor):
        return boxes * ratio + boxes.new_tensor(offset)
    return boxes * ratio + np.asarray(offset, dtype=boxes.dtype)


def from_letterbox(boxes: Array, ratio: float, pad_x: float, pad_y: float) -> Array:
    """(N, 4) pixel xyxy in the letterboxed image -> (N, 4) pixel xyxy in the original image."""
    offset = [pad_x, pad_y, pad_x, pad_y]
    if isinstance(boxes, torch.Tensor):
        return (boxes - boxes.new_tensor(offset)) / ratio
    return (boxes - np.asarray(offset, dtype=boxes.dtype)) / ratio
