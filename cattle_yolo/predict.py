"""Inference on image files: detections in original pixels, drawn images and COCO-json results.

``predict_images`` letterboxes each image as training did (``boxes.letterbox``), runs the model
in batches of ``cfg.batch``, keeps detections scoring above ``cfg.score_threshold`` and maps the
boxes from the letterboxed pixel ``x1 y1 x2 y2`` back to the original image. ``write_outputs``
draws them and writes ``predictions.json`` in the COCO results format (pixel ``x y w h`` in the
original image) with ``categories.json`` beside it. Images are read with their EXIF orientation
applied, so boxes, sizes and drawings all refer to the upright image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from cattle_yolo.boxes import from_letterbox, letterbox, xyxy_to_xywh
from cattle_yolo.config import TrainConfig
from cattle_yolo.device import autocast, autocast_dtype, model_input
from cattle_yolo.evaluate import coco_categories, split_detections
from cattle_yolo.files import atomic_write
from cattle_yolo.model import postprocess
from cattle_yolo.sources import IMAGE_SUFFIXES, DataError

# Box colours per class (RGB), cycled: a readable set on grass and sky.
PALETTE = (
    (255, 56, 56),
    (50, 120, 255),
    (255, 178, 29),
    (72, 249, 10),
    (207, 32, 255),
    (0, 212, 187),
)


def collect_sources(source: str | Path) -> list[Path]:
    """An image file, or the images (jpg, jpeg, png, bmp; not recursive) of a folder, sorted.

    Raises FileNotFoundError when the path does not exist or a folder holds no image, and
    ValueError for a file that is not one of those image types; both name the path.
    """
    path = Path(source)
    allowed = ", ".join(sorted(IMAGE_SUFFIXES))
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path}: not an image file (expected {allowed})")
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise FileNotFoundError(f"{path}: no images ({allowed}) in this folder")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


def read_image(path: str | Path) -> Image.Image:
    """An RGB PIL image, EXIF orientation applied; ``DataError`` naming the file if it cannot be
    decoded (the CLI's exit 2)."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read image: {e}") from None


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    paths: Sequence[Path],
    cfg: TrainConfig,
    device: torch.device | str,
    names: Sequence[str],
) -> list[dict[str, Any]]:
    """Detect on every file of ``paths``, ``cfg.batch`` images per forward pass.

    Images are letterboxed to ``cfg.imgsz``; detections are ``model.postprocess`` with
    ``cfg.score_threshold`` as the floor, ``cfg.nms_iou`` and ``cfg.max_det``.

    Returns, per path in order: ``"file"`` (str), ``"width"``, ``"height"`` (original pixels),
    ``"boxes"`` float32 (K, 4) pixel xyxy in the original image, clipped to it, ``"scores"``
    float32 (K,) and ``"labels"`` int64 (K,) indices into ``names``, best score first.
    """
    device = torch.device(device)
    amp_dtype = autocast_dtype(cfg, device)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(paths), cfg.batch):
            chunk = paths[start : start + cfg.batch]
            images, params, sizes = [], [], []
            for path in chunk:
                image = np.asarray(read_image(path))  # uint8 (H, W, 3)
                boxed, ratio, pad_x, pad_y = letterbox(image, cfg.imgsz)
                images.append(torch.from_numpy(np.ascontiguousarray(boxed)).permute(2, 0, 1))
                params.append((ratio, pad_x, pad_y))
                sizes.append((image.shape[1], image.shape[0]))
            x = model_input(torch.stack(images), device, amp_dtype)
            with autocast(device, amp_dtype):
                outputs = model(x)
            num_classes = outputs["cls"].shape[-1]
            if num_classes != len(names):
                raise ValueError(
                    f"the model predicts {num_classes} classes but {len(names)} are named"
                )
            dets = split_detections(
                postprocess(outputs, cfg.score_threshold, cfg.nms_iou, cfg.max_det)
            )
            for path, (w, h), (ratio, pad_x, pad_y), det in zip(
                chunk, sizes, params, dets, strict=True
            ):
                boxes = from_letterbox(det["boxes"], ratio, pad_x, pad_y)
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
                results.append(
                    {
                        "file": str(path),
                        "width": int(w),
                        "height": int(h),
                        "boxes": boxes.astype(np.float32),
                        "scores": det["scores"],
                        "labels": det["labels"],
                    }
                )
    finally:
        model.train(was_training)
    return results


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its bundled font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def draw(image: Image.Image, det: dict[str, Any], names: Sequence[str]) -> Image.Image:
    """A copy of ``image`` with each box and a ``"name score"`` label drawn on it.

    ``det``: ``"boxes"`` (K, 4) pixel xyxy in ``image``, ``"scores"`` (K,), ``"labels"`` (K,).
    """
    out = image.convert("RGB")  # always a copy
    pen = ImageDraw.Draw(out)
    short = min(out.size)
    width = max(1, round(short / 300))
    font = _font(max(10, round(short / 40)))
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
    for (x1, y1, x2, y2), score, label in zip(
        boxes.tolist(), scores.tolist(), labels.tolist(), strict=True
    ):
        color = PALETTE[label % len(PALETTE)]
        pen.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=width)
        name = names[label] if 0 <= label < len(names) else str(label)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * width, bottom - top + 2 * width
        # Above the box when there is room, else just inside its top edge.
        ty = y1 - th if y1 - th >= 0 else y1
        pen.rectangle((x1, ty, x1 + tw, ty + th), fill=color)
        pen.text((x1 + width - left, ty + width - top), text, fill=(255, 255, 255), font=font)
    return out


def write_outputs(results: Sequence[dict[str, Any]], out_dir: Path, names: Sequence[str]) -> Path:
    """Draw every result into ``out_dir`` and write the detections as COCO json there.

    ``results`` as ``predict_images`` returns them. Writes, each atomically (temporary file, then
    rename): one drawn image per result under its source file name; ``predictions.json``, the COCO
    results format ``[{"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score"}]``
    with pixel boxes in the original image, ``image_id`` the 1-based position in ``results`` and
    ``category_id`` the class index + 1; ``categories.json``, ``[{"id", "name"}]``.
    Returns the path of ``predictions.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    written: dict[str, str] = {}
    extensions = Image.registered_extensions()
    for image_id, result in enumerate(results, start=1):
        src = Path(result["file"])
        dst = out_dir / src.name
        if dst.resolve() == src.resolve():
            raise ValueError(
                f"{dst}: writing here would overwrite the source image; use another output folder"
            )
        if src.name in written:
            raise ValueError(
                f"{src} and {written[src.name]}: two images named {src.name!r} in one output folder"
            )
        written[src.name] = str(src)
        drawn = draw(read_image(src), result, names)
        fmt = extensions.get(dst.suffix.lower(), "PNG")
        options: dict[str, int] = {"quality": 95} if fmt == "JPEG" else {}

        def save(
            p: Path, im: Image.Image = drawn, f: str = fmt, o: dict[str, int] = options
        ) -> None:
            im.save(p, format=f, **o)

        atomic_write(dst, save)

        xywh = xyxy_to_xywh(np.asarray(result["boxes"], dtype=np.float64).reshape(-1, 4))
        for box, score, label in zip(
            xywh.tolist(),
            np.asarray(result["scores"]).tolist(),
            np.asarray(result["labels"]).tolist(),
            strict=True,
        ):
            records.append(
                {
                    "image_id": image_id,
                    "file_name": src.name,
                    "category_id": int(label) + 1,
                    "bbox": [round(v, 3) for v in box],
                    "score": round(float(score), 5),
                }
            )
    categories = coco_categories(names)
    predictions = out_dir / "predictions.json"
    atomic_write(predictions, lambda p: p.write_text(json.dumps(records)))
    atomic_write(
        out_dir / "categories.json", lambda p: p.write_text(json.dumps(categories, indent=2))
    )
    return predictions


__all__ = [
    "collect_sources",
    "draw",
    "predict_images",
    "read_image",
    "write_outputs",
]
