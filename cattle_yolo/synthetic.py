"""A seeded generator of pasture scenes with cattle, written in the Ultralytics layout.

``generate`` writes ``images/{train,val,test}/*.jpg``, YOLO labels (normalized ``cx cy w h``) in
``labels/{train,val,test}/*.txt`` and a ``data.yaml`` naming two classes, ``cow`` and ``calf``
(about 10:1). Scenes are textured grass with distractors (mud, rocks, bushes, fences, shadows) and
1 to 8 animals drawn from ellipses and polygons: seen from the side (body, legs, head up or
grazing) or from above at an angle, with black, white, brown, tan or patched coats. Boxes average
about 0.12 of the image width and 0.21 of its height, as in the real data.

Image ``i`` of a split depends only on ``(seed, split, i)``, so the same seed gives byte-identical
files whatever the split sizes. ``default_dataset(cfg)`` is the embedded default: generated once
into a cache folder and renamed into place, so that concurrent processes never see half a dataset.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cattle_yolo.config import ConfigError, TrainConfig

GENERATOR_VERSION = 1  # bump whenever the output changes, so cached datasets are regenerated
NAMES = ("cow", "calf")
CALF_PROBABILITY = 1 / 11  # ~10:1 cows to calves
DEFAULT_IMGSZ = 384  # long side of the embedded default's images, whatever cfg.imgsz is
ASPECTS = (4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 5)  # width / height of the generated images
ANIMALS_PER_IMAGE = (0.10, 0.16, 0.18, 0.16, 0.13, 0.10, 0.09, 0.08)  # P(1), ..., P(8)
MAX_OVERLAP = 0.45  # a new animal may cover at most this share of another's box (and vice versa)
GRASS = ((70, 118, 42), (96, 128, 52), (128, 132, 66), (150, 136, 84), (58, 96, 40))
# (base colour, patch colour or None, weight); patches are Holstein- or Hereford-like
COATS = (
    ((28, 24, 22), None, 0.20),
    ((222, 218, 208), None, 0.10),
    ((112, 62, 32), None, 0.18),
    ((150, 78, 42), None, 0.08),
    ((186, 148, 100), None, 0.08),
    ((226, 224, 216), (24, 22, 20), 0.16),
    ((30, 26, 24), (224, 222, 214), 0.06),
    ((124, 66, 34), (226, 220, 210), 0.14),
)


def generate(
    root: str | Path, n_train: int, n_val: int, n_test: int, imgsz: int = 384, seed: int = 0
) -> Path:
    """Write a synthetic dataset under ``root`` and return ``root`` (which holds ``data.yaml``).

    ``imgsz`` is the long side of the images in pixels; their aspect ratio varies (4:3, 3:4, 1:1,
    16:9, 3:5). A split with no images (``n_test=0``) is left out of ``data.yaml``. A count or
    size out of range is a ``ConfigError``, before anything is written.
    """
    for key, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("n_test", n_test, 0)):
        if value < low:
            raise ConfigError(f"{key} = {value} must be >= {low}")
    if imgsz < 32:
        raise ConfigError(f"imgsz = {imgsz} must be >= 32")
    root = Path(root)
    splits = [("train", n_train), ("val", n_val), ("test", n_test)]
    for split_id, (split, n) in enumerate(splits):
        if n == 0:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed % 2**63, split_id, i])
            image, rows = render_scene(rng, imgsz)
            image.save(root / "images" / split / f"{i:06d}.jpg", quality=int(rng.integers(80, 96)))
            text = "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in rows)
            (root / "labels" / split / f"{i:06d}.txt").write_text(text)
    # data.yaml last: its presence means the dataset is complete. No `path:`, so the folder
    # can move.
    lines = [f"{split}: images/{split}" for split, n in splits if n]
    lines.append("names: [" + ", ".join(NAMES) + "]")
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return root


def cache_root() -> Path:
    """Folder of cached embedded datasets: ``$CATTLE_YOLO_CACHE``, else ``~/.cache/cattle-yolo``."""
    return Path(os.environ.get("CATTLE_YOLO_CACHE") or "~/.cache/cattle-yolo").expanduser()


def default_dataset(cfg: TrainConfig) -> Path:
    """The embedded default (seed 0, ``cfg.synthetic_images`` train, a quarter each for val and
    test, ``DEFAULT_IMGSZ`` px), generated on first use; returns its root (with ``data.yaml``).

    It is built in a temporary folder and renamed into place: concurrent callers (Ray trials) may
    each build it, one rename wins and the others use the winner's copy.
    """
    n_train = cfg.synthetic_images
    n_eval = max(1, n_train // 4)
    final = cache_root() / f"synthetic-v{GENERATOR_VERSION}-seed0-{n_train}-{n_eval}-{n_eval}"
    if (final / "data.yaml").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        generate(tmp, n_train, n_eval, n_eval, imgsz=DEFAULT_IMGSZ, seed=0)
        try:
            tmp.rename(final)
        except OSError:  # another process renamed its copy first
            if not (final / "data.yaml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


Row = tuple[int, float, float, float, float]  # a label: class, cx, cy, w, h (normalized)
Sprite = tuple[Image.Image, tuple[int, int], int]  # RGBA sprite, its (x, y) and its class


def render_scene(rng: np.random.Generator, long_side: int) -> tuple[Image.Image, list[Row]]:
    """One RGB scene and its labels ``[(class, cx, cy, w, h), ...]`` normalized to the image."""
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    width, height = (
        (long_side, round(long_side / aspect))
        if aspect >= 1
        else (round(long_side * aspect), long_side)
    )
    image, horizon = _background(rng, width, height)
    sprites = _place_animals(rng, width, height, horizon)
    light = rng.uniform(-0.25, 0.25, 2) + (0.0, 0.12)  # shadow offset, fraction of animal size
    fence_in_front = rng.random() < 0.5
    if rng.random() < 0.35 and not fence_in_front:
        _fence(rng, image)
    for sprite, (x, y), _ in sprites:  # soft shadows on the ground first
        alpha = sprite.getchannel("A").filter(ImageFilter.GaussianBlur(3))
        dx, dy = (light * sprite.size).astype(int)
        shade = Image.new("RGB", sprite.size, (20, 26, 12))
        image.paste(shade, (x + dx, y + dy), alpha.point(lambda v: int(v * 0.45)))
    for sprite, (x, y), _ in sprites:  # far (higher) animals first, near ones occlude them
        image.paste(sprite.convert("RGB"), (x, y), sprite.getchannel("A"))
    if rng.random() < 0.35 and fence_in_front:
        _fence(rng, image)
    image = _camera(rng, image)
    rows: list[Row] = []
    for sprite, (x, y), cls in sprites:
        x0, y0, x1, y1 = np.clip(np.add(_bbox(sprite), (x, y, x, y)), 0, (width, height) * 2)
        rows.append(
            (
                cls,
                (x0 + x1) / 2 / width,
                (y0 + y1) / 2 / height,
                (x1 - x0) / width,
                (y1 - y0) / height,
            )
        )
    return image, rows


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    """Grass: a base colour, smooth colour blotches, mid and fine noise, blades; plus
    distractors."""
    base = np.array(GRASS[rng.integers(len(GRASS))], np.float32) + rng.normal(0, 8, 3)
    light = _smooth_noise(rng, w, h, (3, 4)) * 18  # brighter and darker stretches
    dry = _smooth_noise(rng, w, h, (3, 4)) * np.array([16, 8, -4], np.float32)  # green to straw
    mid = _smooth_noise(rng, w, h, (max(2, h // 14), max(2, w // 14))) * 12
    fine = rng.standard_normal((h, w, 1), dtype=np.float32) * 7
    image = Image.fromarray(np.clip(base + light + dry + mid + fine, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    n = w * h // 180
    xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    ang = rng.normal(-math.pi / 2, 0.35, n)
    lens = rng.uniform(2, 7, n)
    tints = np.clip(base * rng.uniform(0.65, 1.3, (n, 1)), 0, 255).astype(int)
    for x, y, a, ln, t in zip(xs, ys, ang, lens, tints.tolist(), strict=True):
        draw.line((x, y, x + ln * math.cos(a), y + ln * math.sin(a)), fill=tuple(t))
    horizon = 0
    if rng.random() < 0.25:  # sky and a tree line at the top
        horizon = int(h * rng.uniform(0.08, 0.2))
        draw.rectangle((0, 0, w, horizon), fill=tuple(rng.integers(150, 215, 3).tolist()))
        for x in range(-10, w + 10, 12):
            crown = int(rng.integers(8, 18))
            draw.ellipse(
                (x - crown, horizon - crown, x + crown, horizon + crown // 2), fill=(34, 58, 30)
            )
    for _ in range(int(rng.integers(0, 4))):  # mud, dry grass, dark grass: soft blobs
        colour = [(96, 72, 46), (168, 152, 96), (40, 70, 30)][rng.integers(3)]
        _soft_blob(rng, image, colour, rng.uniform(0.1, 0.3) * min(w, h), horizon)
    for _ in range(int(rng.integers(0, 4))):  # rocks, bushes, hay bales: cattle-coloured clutter
        kind = rng.integers(3)
        r = rng.uniform(0.02, 0.06) * min(w, h) * (1.6 if kind == 1 else 1)
        x, y = rng.uniform(0, w), rng.uniform(horizon, h)
        tint = [(128, 126, 120), (28, 44, 22), (196, 170, 104)][kind] + rng.normal(0, 10, 3)
        for _ in range(3 if kind == 1 else 1):
            dx, dy = rng.normal(0, r * 0.5, 2)
            draw.ellipse(
                (x + dx - r, y + dy - r * 0.7, x + dx + r, y + dy + r * 0.7),
                fill=tuple(tint.astype(int).tolist()),
            )
    if rng.random() < 0.3:  # a tree's shadow
        _soft_blob(rng, image, (24, 40, 18), rng.uniform(0.2, 0.4) * min(w, h), horizon, 0.45)
    return image, horizon


def _smooth_noise(rng: np.random.Generator, w: int, h: int, grid: tuple[int, int]) -> np.ndarray:
    """Noise in [-1, 1] on a coarse ``grid`` (rows, cols), upsampled bicubically to (h, w, 1)."""
    small = Image.fromarray(rng.integers(0, 256, grid, dtype=np.uint8), "L")
    up = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return (up[..., None] - 127.5) / 127.5


def _soft_blob(
    rng: np.random.Generator,
    image: Image.Image,
    colour: tuple[int, int, int],
    radius: float,
    top: int,
    opacity: float = 0.8,
) -> None:
    w, h = image.size
    mask = Image.new("L", image.size, 0)
    x, y = rng.uniform(0, w), rng.uniform(top, h)
    rx, ry = radius * rng.uniform(0.7, 1.5), radius * rng.uniform(0.4, 0.9)
    ImageDraw.Draw(mask).ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(255 * opacity))
    mask = mask.filter(ImageFilter.GaussianBlur(radius * 0.3))
    image.paste(Image.new("RGB", image.size, tuple(int(c) for c in colour)), (0, 0), mask)


def _fence(rng: np.random.Generator, image: Image.Image) -> None:
    """A post-and-wire fence across the image: thin lines that occlude and distract."""
    w, h = image.size
    y0, y1 = rng.uniform(0.2, 0.9, 2) * h
    post = tuple(int(v) for v in np.multiply((150, 120, 90), rng.uniform(0.5, 1.3)))
    draw = ImageDraw.Draw(image)
    step = rng.uniform(0.1, 0.2) * w
    post_h = rng.uniform(0.06, 0.12) * h
    for x in np.arange(rng.uniform(0, step), w, step):
        y = y0 + (y1 - y0) * x / w
        draw.rectangle((x - 1.5, y - post_h, x + 1.5, y), fill=post)
    for frac in (0.35, 0.8):
        draw.line((0, y0 - post_h * frac, w, y1 - post_h * frac), fill=(150, 150, 140), width=1)


def _camera(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Exposure, contrast and occasional blur, applied to the whole scene."""
    gain, contrast = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.15)
    a = np.asarray(image, np.float32)
    a = (a - a.mean()) * contrast + a.mean() * gain
    image = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    return image


def _place_animals(rng: np.random.Generator, w: int, h: int, horizon: int) -> list[Sprite]:
    """Sprites with positions and classes, ``[(RGBA sprite, (x, y), cls)]`` sorted far to near."""
    count = 1 + int(rng.choice(len(ANIMALS_PER_IMAGE), p=ANIMALS_PER_IMAGE))
    placed: list[Sprite] = []
    boxes: list[np.ndarray] = []
    for _ in range(count):
        cls = int(rng.random() < CALF_PROBABILITY)
        for _ in range(30):  # reject placements that hide another animal or leave the frame
            y = rng.uniform(horizon, h)
            depth = 0.8 + 0.35 * (y - horizon) / max(1, h - horizon)  # nearer is larger
            size = math.sqrt(w * h) * rng.uniform(0.15, 0.25) * depth * (0.62 if cls else 1.0)
            sprite = _animal(rng, size, bool(cls))
            sw, sh = sprite.size
            x0, y0 = int(rng.uniform(-0.15 * sw, w - 0.85 * sw)), int(y - sh / 2)
            box = np.add(_bbox(sprite), (x0, y0, x0, y0)).astype(float)
            clipped = np.clip(box, 0, (w, h, w, h))
            if _area(clipped) < 0.75 * _area(box) or clipped[1] < horizon - 0.1 * sh:
                continue
            if all(_covered(clipped, b) <= MAX_OVERLAP for b in boxes):
                placed.append((sprite, (x0, y0), cls))
                boxes.append(clipped)
                break
    return [placed[k] for k in np.argsort([b[3] for b in boxes], kind="stable")]


def _area(b: np.ndarray) -> float:
    area: float = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])  # numpy scalars are floats
    return area


def _covered(a: np.ndarray, b: np.ndarray) -> float:
    """The larger of: the share of ``a`` that ``b`` covers, and the share of ``b`` that ``a``
    does."""
    inter = _area(np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]))
    return inter / max(1e-9, min(_area(a), _area(b)))


def _bbox(sprite: Image.Image) -> tuple[int, int, int, int]:
    """Pixel box of the sprite's opaque part (alpha > 127), as ``x1 y1 x2 y2``."""
    return sprite.getchannel("A").point(lambda v: 255 if v > 127 else 0).getbbox() or (0, 0, 1, 1)


def _animal(rng: np.random.Generator, size: float, calf: bool) -> Image.Image:
    """An RGBA sprite of one animal about ``size`` px long, side-on or seen from above."""
    weights = np.array([c[2] for c in COATS])
    coat_rgb, patch, _ = COATS[rng.choice(len(COATS), p=weights / weights.sum())]
    base = np.clip(np.multiply(coat_rgb, rng.uniform(0.85, 1.15)) + rng.normal(0, 4, 3), 0, 255)
    side = rng.random() < 0.2
    s = size * (0.8 if side else 1.0)
    pad = int(s * 0.8) + 4
    mask = Image.new("L", (2 * pad, 2 * pad), 0)
    draw, c = ImageDraw.Draw(mask), pad
    head_scale = 1.25 if calf else 1.0
    if side:
        bw, bh = s / 2, s * 0.2
        leg = s * (0.42 if calf else 0.32)
        draw.ellipse((c - bw, c - bh, c + bw, c + bh), fill=255)
        for fx in (-0.75, -0.55, 0.5, 0.72):
            lx = c + fx * bw + rng.normal(0, s * 0.02)
            draw.polygon(
                [
                    (lx - s * 0.035, c),
                    (lx + s * 0.035, c),
                    (lx + s * 0.03 + rng.normal(0, s * 0.03), c + bh + leg),
                    (lx - s * 0.03 + rng.normal(0, s * 0.03), c + bh + leg),
                ],
                fill=255,
            )
        head_y = c - bh * 1.4 if rng.random() < 0.6 else c + bh + leg * 0.6  # alert or grazing
        hx, hw, hh = c + bw * 1.05, s * 0.13 * head_scale, s * 0.09 * head_scale
        draw.polygon(
            [
                (c + bw * 0.55, c - bh * 0.8),
                (c + bw * 0.75, c + bh * 0.3),
                (hx, head_y + hh),
                (hx, head_y - hh),
            ],
            fill=255,
        )
        draw.ellipse((hx - hw * 0.6, head_y - hh, hx + hw * 1.4, head_y + hh), fill=255)
        draw.ellipse((hx - hw * 0.8, head_y - hh * 1.5, hx - hw * 0.1, head_y - hh * 0.6), fill=255)
        draw.line(
            (c - bw * 0.98, c - bh * 0.5, c - bw * 1.05, c + bh + leg * 0.6), fill=255, width=2
        )
    else:
        bw, bh = s * (0.18 if calf else 0.16), s / 2
        draw.ellipse((c - bw, c - bh, c + bw, c + bh), fill=255)
        for fx in (-0.7, 0.7):  # hip bones
            draw.ellipse(
                (c + fx * bw - bw * 0.35, c + bh * 0.35, c + fx * bw + bw * 0.35, c + bh * 0.8),
                fill=255,
            )
        hx = c + rng.normal(0, bw * 0.3)
        hw, hh = bw * 0.5 * head_scale, s * 0.15 * head_scale
        draw.ellipse((hx - hw, c - bh - hh * 1.1, hx + hw, c - bh + hh * 0.6), fill=255)
        for ex in (-1, 1):  # ears
            draw.ellipse(
                (
                    hx + ex * hw * 1.4 - hw * 0.5,
                    c - bh - hh * 0.5,
                    hx + ex * hw * 1.4 + hw * 0.5,
                    c - bh - hh * 0.1,
                ),
                fill=255,
            )
        draw.line((c, c + bh * 0.9, c + rng.normal(0, bw * 0.3), c + bh * 1.25), fill=255, width=2)
    coat = _coat(rng, mask.size, base, patch, side)
    sprite = Image.merge("RGBA", (*coat.split(), mask))
    if side and rng.random() < 0.5:
        sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if not side:  # mostly head-up or head-down in the image, as cattle walk along a chute
        angle = rng.normal(0, 22) + (180 if rng.random() < 0.5 else 0)
        sprite = sprite.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    elif rng.random() < 0.5:
        sprite = sprite.rotate(rng.normal(0, 8), Image.Resampling.BILINEAR, expand=True)
    return sprite.crop(_bbox(sprite))


def _coat(
    rng: np.random.Generator,
    size: tuple[int, int],
    base: np.ndarray,
    patch: tuple[int, int, int] | None,
    side: bool,
) -> Image.Image:
    """The coat colours over the sprite's canvas: base colour, patches, shading and fur noise."""
    w, h = size
    coat = Image.new("RGB", size, tuple(int(v) for v in base))
    if patch is not None:
        draw = ImageDraw.Draw(coat)
        for _ in range(int(rng.integers(3, 9))):
            x, y = rng.uniform(0.15, 0.85) * w, rng.uniform(0.2, 0.8) * h
            rx, ry = rng.uniform(0.05, 0.16, 2) * (w, h)
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=patch)
    a: np.ndarray = np.asarray(coat, np.float32)
    shade: np.ndarray  # float32 either way (the stubs make the second float64)
    if side:  # lit from above: lighter back, darker belly and legs
        shade = np.linspace(1.15, 0.75, h, dtype=np.float32)[:, None, None]
    else:  # a lighter spine along the middle
        shade = 0.8 + 0.3 * np.cos(np.linspace(-1.4, 1.4, w, dtype=np.float32))[None, :, None]
    a = a * shade + rng.standard_normal((h, w, 1), dtype=np.float32) * 6
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
