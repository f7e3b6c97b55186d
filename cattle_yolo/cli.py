"""Command line: ``python -m cattle_yolo {train,evaluate,predict,synth} ...``.

The only module that touches argparse. Exit codes: 0 ok, 2 bad config or data, 3 training
diverged, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cattle_yolo.config import ConfigError, TrainConfig, parse_overrides

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3

# Flags of `train` that are shorthands for config keys.
SHORTHANDS = ("data", "epochs", "imgsz", "batch", "device", "seed", "out", "lr", "amp")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="YAML config file (a run's config.yaml or a search's best_config.yaml)"
    )
    p.add_argument("--data", help="data.yaml or a folder with train/ and val/; default: synthetic")
    p.add_argument("--epochs", type=int, help="training epochs (config key epochs)")
    p.add_argument("--imgsz", type=int, help="square image size, a multiple of 32")
    p.add_argument("--batch", type=int, help="images per forward pass")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, help="random seed; CPU runs repeat exactly")
    p.add_argument("--out", help="run folder (default outputs/<dataset>/yolov8)")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        help="precision of the model (default auto: bf16 on CUDA where supported, else fp16; "
        "bf16 on a CPU with AMX or AVX512-BF16; fp32 elsewhere; off = fp32); the run's "
        "config.yaml records what auto chose",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any TrainConfig field")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cattle-yolo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a detector")
    _add_config_flags(t)
    t.add_argument("--strict", action="store_true", help="any bad label or image is an error")
    t.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from a last.pt (default: <out>/models/last.pt of this config)",
    )

    e = sub.add_parser("evaluate", help="evaluate a checkpoint with COCO mAP")
    e.add_argument("--weights", required=True, help="a best.pt or last.pt")
    e.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    e.add_argument("--split", choices=("val", "test"), default="val", help="split to evaluate")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. score_threshold=0.3")

    p = sub.add_parser("predict", help="draw detections on images and write COCO json")
    p.add_argument("--weights", required=True, help="a best.pt or last.pt")
    p.add_argument("--source", required=True, help="an image file or a folder of images")
    p.add_argument("--out", default="outputs/predict", help="folder for drawn images and json")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. score_threshold=0.4")

    s = sub.add_parser("synth", help="write a synthetic cattle dataset (Ultralytics layout)")
    s.add_argument("--out", required=True, help="folder to write")
    s.add_argument("--train", type=int, default=96, help="training images")
    s.add_argument("--val", type=int, default=24, help="validation images")
    s.add_argument("--test", type=int, default=24, help="test images")
    s.add_argument("--seed", type=int, default=0, help="generator seed")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config file, then the shorthand flags, then key=value overrides (last wins)."""
    overrides: dict[str, Any] = {}
    for key in SHORTHANDS:
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "strict", False):
        overrides["strict"] = True
    cfg = TrainConfig.load(args.config, overrides)
    return cfg.with_overrides(parse_overrides(args.overrides))


def cmd_train(args: argparse.Namespace) -> int:
    from cattle_yolo.data import load_datasets
    from cattle_yolo.train import run_dir, train

    cfg = config_from_args(args)
    datasets = load_datasets(cfg)
    resume = None
    if args.resume:
        resume = Path(args.resume)
        if args.resume == "auto":
            resume = run_dir(cfg, datasets.name) / "models" / "last.pt"
        if not resume.is_file():
            raise ConfigError(f"--resume: no checkpoint at {resume}")
    result = train(cfg, datasets, resume_from=resume)
    print(
        f"best mAP50-95={result['best_mAP50_95']:.4f} at epoch {result['best_epoch']}; "
        f"weights in {result['out']}/models/best.pt"
    )
    if result["val_coverage"]:
        print(f"warning: {result['val_coverage']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cattle_yolo.checkpoint import load_trained
    from cattle_yolo.data import load_datasets, make_loader
    from cattle_yolo.device import resolve_device
    from cattle_yolo.evaluate import evaluate
    from cattle_yolo.loss import DetectionLoss

    device = resolve_device(args.device)
    model, cfg, names = load_trained(args.weights, device, args.overrides)
    if args.data:
        cfg = cfg.replace(data=args.data)
    datasets = load_datasets(cfg)
    split = datasets.test if args.split == "test" else datasets.val
    if split is None:
        raise ConfigError(f"{cfg.data or 'synthetic'}: the dataset has no {args.split} split")
    if datasets.names != names:
        raise ConfigError(f"dataset classes {datasets.names} differ from the checkpoint's {names}")
    loss_fn = DetectionLoss(cfg, len(names))
    metrics = evaluate(
        model, make_loader(split, cfg, train=False), loss_fn, cfg, device, cfg.epochs
    )
    for key, value in metrics.items():
        print(f"{key:>16s} {value:.4f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cattle_yolo.checkpoint import load_trained
    from cattle_yolo.device import resolve_device
    from cattle_yolo.predict import collect_sources, predict_images, write_outputs

    try:  # the sources first: a wrong --source fails before the model loads
        paths = collect_sources(args.source)
    except ValueError as e:  # a file that is not an image
        raise ConfigError(f"--source {e}") from None
    device = resolve_device(args.device)
    model, cfg, names = load_trained(args.weights, device, args.overrides)
    results = predict_images(model, paths, cfg, device, names)
    write_outputs(results, Path(args.out), names)
    total = sum(len(r["scores"]) for r in results)
    print(f"{total} detections on {len(paths)} images written to {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from cattle_yolo.synthetic import generate

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder")
    root = generate(out, args.train, args.val, args.test, seed=args.seed)
    print(f"synthetic dataset written to {root} (data.yaml inside)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cattle_yolo.checkpoint import CheckpointError
    from cattle_yolo.data import DataError
    from cattle_yolo.files import DiskFullError
    from cattle_yolo.train import DivergedError

    commands = {
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "predict": cmd_predict,
        "synth": cmd_synth,
    }
    try:
        return commands[args.command](args)
    except (ConfigError, DataError, CheckpointError, DiskFullError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
