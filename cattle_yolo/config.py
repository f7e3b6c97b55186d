"""The one typed training config: every knob the search turns, with YAML in and YAML out.

Defaults are the hand-fixed values the project starts from. A config is built from a YAML file
(``--config FILE``) and then ``key=value`` overrides; unknown keys, wrong types and out-of-range
values are errors that name the key (``ConfigError``). The same YAML format is written beside every
run and exported as a search's best config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from cattle_yolo.files import atomic_write_text

# amp was a bool before it named a precision: old configs' true/false mean auto/off.
LEGACY_AMP = {True: "auto", False: "off"}


class ConfigError(ValueError):
    """A config key, type or value is wrong; the message names the key and, for a file, the file."""


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    data: str | None = None  # data.yaml or a folder with train/ and val/; None = embedded synthetic
    imgsz: int = 384  # square letterbox size in pixels, a multiple of 32
    strict: bool = False  # any skipped image or label is an error instead of a counted skip
    fliplr: float = 0.5  # probability of a horizontal flip (train only)
    hsv_h: float = 0.015  # hue jitter, fraction of the hue circle (train only)
    hsv_s: float = 0.7  # saturation gain jitter, +- fraction (train only)
    hsv_v: float = 0.4  # value gain jitter, +- fraction (train only)
    scale: float = 0.5  # random scale jitter, +- fraction (train only)
    translate: float = 0.1  # random translation, +- fraction of imgsz (train only)
    mosaic: float = 1.0  # probability that a training image is a mosaic of 4 (train only)
    close_mosaic: int = 10  # the last this many epochs train without mosaic
    workers: int = 0  # DataLoader worker processes; 0 loads in the training process

    # --- model ---
    pretrained: bool = False  # ImageNet weights for the ResNet18 backbone (needs the network once)
    neck_channels: int = 128  # channels of the neck and head at every level
    box_head: Literal["dfl", "exp"] = "dfl"  # dfl: distributions of the l/t/r/b distances
    # (YOLOv8); exp: the seed's exp(clamp(t, -wh_clamp, wh_clamp)) * stride size
    reg_max: int = 16  # bins of each DFL distance distribution, in strides (dfl head)
    dropout: float = 0.0  # channel dropout in the head, before the prediction convs
    wh_clamp: float = (
        4.0  # exp head: box size decodes as exp(clamp(t, -wh_clamp, wh_clamp)) * stride
    )

    # --- loss and positive assignment (task-aligned, see loss.py) ---
    tal_topk: int = 10  # candidates per object: the top-k anchors by alignment inside it
    tal_alpha: float = 0.5  # alignment = class score ** tal_alpha * IoU ** tal_beta
    tal_beta: float = 6.0  # ... the IoU exponent
    iou_start: float = 0.25  # IoU gate on the top-k candidates at epoch 0 (best one always kept)
    iou_end: float = 0.45  # IoU gate once the ramp is over
    iou_ramp_epochs: int = 30  # epochs over which the gate rises linearly
    box_loss: Literal["giou", "ciou"] = "ciou"  # torchvision.ops IoU loss for matched boxes
    box_loss_weight: float = 7.5  # weight of the IoU box term in the total loss
    cls_loss_weight: float = 0.5  # weight of the quality focal class term in the total loss
    dfl_loss_weight: float = 1.5  # weight of the distribution focal term (dfl head only)
    focal_gamma: float = 2.0  # quality focal exponent: |y - sigmoid| ** gamma * BCE; 0 = BCE

    # --- optimisation ---
    epochs: int = 150  # training epochs
    batch: int = 4  # images per forward pass
    accumulate: int = 4  # forward passes per optimizer step (effective batch = batch * accumulate)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 5e-4  # AdamW decoupled weight decay
    warmup_epochs: float = 10.0  # epochs of per-iteration linear warmup
    warmup_start_fraction: float = 0.5  # LR multiplier at the first warmup iteration
    final_lr_fraction: float = 0.01  # LR multiplier at the end of the cosine decay
    grad_clip: float = 10.0  # max gradient norm; 0 disables clipping
    ema_decay: float = 0.9998  # EMA decay once ramped up; 0 disables the EMA
    ema_tau: float = 200.0  # EMA ramp: decay * (1 - exp(-updates / tau))
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # autocast precision of the model
    # (loss, assigner, metrics stay fp32). auto: bf16 on CUDA where supported, else fp16; bf16
    # on a CPU with AMX or AVX512-BF16; fp32 elsewhere. true/false of old configs = auto/off.
    # A run's config.yaml records what auto resolved to.
    compile: bool = False  # torch.compile the training step's model (opt-in: it pays back only
    # in long runs; docs/benchmarks.md gives compile time against the steady-state gain)
    max_skipped_fraction: float = (
        0.25  # share of non-finite steps in an epoch that means divergence
    )

    # --- evaluation and inference ---
    score_threshold: float = 0.25  # score for precision/recall/F1 and drawn boxes; never gates mAP
    conf_floor: float = 0.001  # lowest score kept for mAP, as COCO and Ultralytics do
    nms_iou: float = 0.7  # IoU of class-wise NMS
    max_det: int = 300  # detections kept per image

    # --- run ---
    seed: int = 0  # seeds model init, augmentation and data order
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default. CPU results repeat exactly only
    # with the same thread count (float sums), so a search's export records its trial's count
    out: str | None = None  # run folder; None = outputs/<dataset name>/yolov8
    synthetic_images: int = 96  # embedded synthetic dataset: training images (val gets a quarter)

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # TrainConfig(amp=True) from code of the bool days
            object.__setattr__(self, "amp", LEGACY_AMP[self.amp])
        _validate(self)

    # --- YAML in, YAML out ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the resolved config atomically (temp file, then rename)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a plain dict, checking every key and type; ``source`` prefixes errors."""
        kwargs = {}
        for key, value in values.items():
            kwargs[key] = coerce(key, value, source)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def load(
        cls, path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
    ) -> TrainConfig:
        """Defaults, then the YAML file at ``path``, then ``key=value`` overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(read_yaml_mapping(path))
            # A search's best_config.yaml carries extra sections; only `config` is the config.
            if "config" in values and isinstance(values["config"], dict):
                values = dict(values["config"])
        if isinstance(overrides, dict):
            values.update(overrides)
        else:
            values.update(parse_overrides(overrides or []))
        return cls.from_dict(values, source=str(path) if path is not None else "overrides")

    def with_overrides(self, changes: Mapping[str, Any], source: str = "overrides") -> TrainConfig:
        """This config with ``changes`` applied, each key and type checked and the whole config
        validated again; errors name ``source``. The one way a config is patched."""
        checked = {k: coerce(k, v, source) for k, v in changes.items()}
        try:
            return dataclasses.replace(self, **checked)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """Keyword changes made in code, checked as ``with_overrides`` checks them."""
        return dataclasses.replace(self, **{k: coerce(k, v, "replace") for k, v in changes.items()})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}``, each value YAML-parsed and checked against the
    key's type; cross-key checks happen when the whole config is built."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        key = key.strip()
        values[key] = coerce(key, yaml.safe_load(raw) if raw.strip() else None, "overrides")
    return values


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` a file that must hold a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if loaded is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(loaded).__name__}")
    return loaded


FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))


# Names people bring from other tools (Ultralytics, timm, papers) for our keys.
ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "lr0": "lr",
    "base_lr": "lr",
    "img_size": "imgsz",
    "image_size": "imgsz",
    "imagesize": "imgsz",
    "size": "imgsz",
    "batch_size": "batch",
    "bs": "batch",
    "box_weight": "box_loss_weight",
    "box": "box_loss_weight",
    "cls_weight": "cls_loss_weight",
    "cls": "cls_loss_weight",
    "dfl_weight": "dfl_loss_weight",
    "dfl": "dfl_loss_weight",
    "gamma": "focal_gamma",
    "fl_gamma": "focal_gamma",
    "conf": "score_threshold",
    "conf_thres": "score_threshold",
    "threshold": "score_threshold",
    "iou_thres": "nms_iou",
    "iou": "nms_iou",
    "warmup": "warmup_epochs",
    "warmup_bias_lr": "warmup_start_fraction",
    "decay": "weight_decay",
    "num_workers": "workers",
    "random_seed": "seed",
}


def closest_key(
    key: str, options: Sequence[str] = FIELD_NAMES, aliases: dict[str, str] | None = None
) -> str:
    """A hint naming the closest valid key among ``options``, or the empty string.

    In order: a known alias (``learning_rate`` -> ``lr``); the longest option the key starts
    with at a word boundary (``lr_typo`` -> ``lr``); the option holding all of the key's words
    (``box_weight`` -> ``box_loss_weight``); then the closest spelling (``imgsize`` ->
    ``imgsz``).
    """
    aliases = ALIASES if aliases is None else aliases
    k = key.lower().replace("-", "_")
    match = aliases.get(k) if aliases.get(k) in options else None
    if match is None:
        prefixes = [o for o in options if k.startswith(o + "_") or k.startswith(o + ".")]
        match = max(prefixes, key=len) if prefixes else None
    if match is None:
        words = set(k.split("_"))
        holding = [o for o in options if len(words) > 1 and words <= set(o.split("_"))]
        match = min(holding, key=len) if holding else None
    if match is None:
        found = difflib.get_close_matches(k, list(options), n=1, cutoff=0.5)
        match = found[0] if found else None
    return f" (did you mean {match!r}?)" if match else ""


# Keys of earlier versions, each with what replaced it: a config that sets one is an error that
# says so, not a silent change of meaning.
RETIRED: dict[str, str] = {
    "obj_loss_weight": "there is no objectness branch any more: the class score is trained "
    "to be IoU-aware; weigh it with cls_loss_weight",
    "focal_alpha": "the class loss is a quality focal loss on IoU-aware soft targets over all "
    "anchors and has no class balance; use focal_gamma and cls_loss_weight",
}


def check_key(key: str, source: str = "config") -> None:
    if key in RETIRED:
        raise ConfigError(f"{source}: key {key!r} was retired: {RETIRED[key]}")
    if key not in FIELD_TYPES:
        raise ConfigError(f"{source}: unknown key {key!r}{closest_key(key)}")


def coerce(key: str, value: Any, source: str = "config") -> Any:
    """Check ``value`` against the declared type of ``key``; ints are accepted for floats."""
    check_key(key, source)
    if key == "amp" and isinstance(value, bool):  # amp was a bool before the precision names
        value = LEGACY_AMP[value]
    tp = FIELD_TYPES[key]
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    for option in options:
        if _is_instance(value, option):
            return float(value) if option is float else value
    if float in options and isinstance(value, str):
        # YAML 1.1 reads 3e-3 (no dot) as a string: take every number Python's float() takes.
        try:
            return float(value.strip())
        except ValueError:
            pass
    allowed = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{source}: key {key!r} must be {allowed}, got {value!r}")


def _is_instance(value: Any, option: Any) -> bool:
    """Whether ``value`` is a valid ``option`` (one member of a field's type): a bool is no int
    or float, an int is a float, a Literal takes its listed values."""
    if typing.get_origin(option) is Literal:
        return value in typing.get_args(option)
    if option is type(None):
        return value is None
    if isinstance(value, bool):
        return option is bool
    if option is float:
        return isinstance(value, int | float)
    return option in (int, str) and isinstance(value, option)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else tp.__name__


# (key, low, high, low inclusive, high inclusive)
_RANGES: list[tuple[str, float, float, bool, bool]] = [
    ("imgsz", 32, 4096, True, True),
    ("fliplr", 0, 1, True, True),
    ("hsv_h", 0, 0.5, True, True),
    ("hsv_s", 0, 1, True, True),
    ("hsv_v", 0, 1, True, True),
    ("scale", 0, 0.9, True, True),
    ("translate", 0, 0.5, True, True),
    ("workers", 0, 64, True, True),
    ("threads", 0, 1024, True, True),
    ("neck_channels", 8, 1024, True, True),
    ("reg_max", 2, 64, True, True),
    ("mosaic", 0, 1, True, True),
    ("close_mosaic", 0, 100_000, True, True),
    ("dropout", 0, 1, True, False),
    ("wh_clamp", 0, 20, False, True),
    ("iou_start", 0, 1, False, False),
    ("iou_end", 0, 1, False, False),
    ("iou_ramp_epochs", 0, 10_000, True, True),
    ("box_loss_weight", 0, 1e3, True, True),
    ("cls_loss_weight", 0, 1e3, True, True),
    ("dfl_loss_weight", 0, 1e3, True, True),
    ("focal_gamma", 0, 10, True, True),
    ("tal_topk", 1, 1000, True, True),
    ("tal_alpha", 0, 20, True, True),
    ("tal_beta", 0, 20, True, True),
    ("epochs", 1, 100_000, True, True),
    ("batch", 1, 4096, True, True),
    ("accumulate", 1, 1024, True, True),
    ("lr", 0, 10, False, True),
    ("weight_decay", 0, 1, True, True),
    ("warmup_epochs", 0, 10_000, True, True),
    ("warmup_start_fraction", 0, 1, False, True),
    ("final_lr_fraction", 0, 1, True, True),
    ("grad_clip", 0, 1e6, True, True),
    ("ema_decay", 0, 1, True, False),
    ("ema_tau", 0, 1e9, False, True),
    ("max_skipped_fraction", 0, 1, True, True),
    ("score_threshold", 0, 1, True, True),
    ("conf_floor", 0, 1, True, False),
    ("nms_iou", 0, 1, False, True),
    ("max_det", 1, 100_000, True, True),
    ("synthetic_images", 4, 100_000, True, True),
]


def _validate(cfg: TrainConfig) -> None:
    for key, low, high, low_in, high_in in _RANGES:
        value = getattr(cfg, key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"key {key!r} must be a number, got {value!r}")
        ok = (value >= low if low_in else value > low) and (
            value <= high if high_in else value < high
        )
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            lo, hi = ("[" if low_in else "("), ("]" if high_in else ")")
            raise ConfigError(f"key {key!r} = {value!r} is out of range {lo}{low}, {high}{hi}")
    if cfg.amp not in typing.get_args(FIELD_TYPES["amp"]):
        raise ConfigError(f"key 'amp' = {cfg.amp!r} must be auto, bf16, fp16 or off")
    if cfg.imgsz % 32:
        raise ConfigError(f"key 'imgsz' = {cfg.imgsz} must be a multiple of 32")
    if cfg.iou_end < cfg.iou_start:
        raise ConfigError(f"key 'iou_end' = {cfg.iou_end} must be >= iou_start = {cfg.iou_start}")
    if cfg.device != "auto" and cfg.device != "cpu" and not cfg.device.startswith("cuda"):
        raise ConfigError(f"key 'device' = {cfg.device!r} must be auto, cpu, cuda or cuda:N")


__all__ = [
    "ConfigError",
    "TrainConfig",
    "FIELD_NAMES",
    "coerce",
    "check_key",
    "parse_overrides",
    "read_yaml_mapping",
]
