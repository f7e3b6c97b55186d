"""A test split no choice was made on: the last frames of a video dataset's train/, held out.

Consecutive frames of one video are near-duplicates, so a random split leaks: a test frame's
neighbour is in training. This writes an Ultralytics ``data.yaml`` (and two image lists) that
train on the first frames of ``train/`` by frame number, hold out the last ``--fraction`` of
them as ``test`` as one contiguous block, and drop ``--gap`` frames between the two so that
the boundary frames are not near-duplicates across the split. ``val/`` stays the dataset's own.
No image is copied: the lists name the dataset's files.

    python benchmarks/holdout.py split --data ../shared/data/cattle-chute --out outputs/holdout
    python -m cattle_yolo train --data outputs/holdout/data.yaml ...
    python -m cattle_yolo evaluate --weights best.pt --data outputs/holdout/data.yaml --split test

``score`` does the last step for a whole confirmation (``run_search.py --confirm``): every
completed run in its ``confirm.csv`` is evaluated on val and test with its ``best.pt``, and each
config gets its mean and sample sd over its seeds on both, with the verdict of the best config
by val mean (what the confirmation picks) against the default on the test split:

    python benchmarks/holdout.py score --confirm ray_results/fixes/confirm.csv \
        --json docs/data/holdout_scores.json
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from cattle_yolo import stats as S  # noqa: E402
from cattle_yolo.sources import IMAGE_SUFFIXES, classes_txt  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cattle-chute"


def frame_number(path: Path) -> int:
    """The last number in a file's stem (``frame_000490.jpg`` -> 490)."""
    found = re.findall(r"\d+", path.stem)
    if not found:
        raise ValueError(f"{path}: no frame number in the file name")
    return int(found[-1])


def split_frames(
    images: list[Path], fraction: float, gap: int
) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, dropped, test) by frame number: test is the last ``fraction`` of the frames,
    the ``gap`` frames before it are dropped, the rest train."""
    if not 0 < fraction < 1:
        raise ValueError(f"--fraction {fraction}: must be in (0, 1)")
    ordered = sorted(images, key=frame_number)
    n_test = max(1, round(fraction * len(ordered)))
    cut = len(ordered) - n_test
    start = max(0, cut - gap)
    if start < 1:
        raise ValueError(f"{len(ordered)} frames leave none to train on")
    return ordered[:start], ordered[start:cut], ordered[cut:]


def write_holdout(data: Path, out: Path, fraction: float = 0.15, gap: int = 10) -> dict[str, Any]:
    """Write ``out/data.yaml``, ``out/train.txt`` and ``out/test.txt``; returns a summary."""
    train_dir, val_dir = data / "train", data / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise ValueError(f"{data}: expected train/ and val/ folders")
    images = [p for p in train_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    train, dropped, test = split_frames(images, fraction, gap)
    out.mkdir(parents=True, exist_ok=True)
    for name, files in (("train.txt", train), ("test.txt", test)):
        (out / name).write_text("".join(f"{p.resolve()}\n" for p in files))
    names = classes_txt([train_dir, val_dir, data])
    doc = {
        "path": str(out.resolve()),
        "train": "train.txt",
        "val": str(val_dir.resolve()),
        "test": "test.txt",
        **({"names": names} if names else {}),
    }
    (out / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return {
        "train": len(train),
        "dropped": len(dropped),
        "test": len(test),
        "train_frames": [frame_number(train[0]), frame_number(train[-1])],
        "test_frames": [frame_number(test[0]), frame_number(test[-1])],
        "data_yaml": str(out / "data.yaml"),
    }


def score_runs(confirm_csv: Path, data: str | None = None) -> list[dict[str, Any]]:
    """Evaluate every completed run of a confirmation on its val and test splits: one dict per
    run (config, seed, its search objective, val and test mAP50-95 and mAP50). ``data``
    replaces the checkpoints' dataset (default: the one each was trained on)."""
    import torch

    from cattle_yolo.checkpoint import load_trained
    from cattle_yolo.data import load_datasets, make_loader
    from cattle_yolo.evaluate import evaluate
    from cattle_yolo.loss import DetectionLoss

    device = torch.device("cpu")
    decoded: dict[tuple[Any, int], Any] = {}
    out = []
    with confirm_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "completed"]
    for row in rows:
        weights = Path(row["path"]) / "run" / "models" / "best.pt"
        if not weights.is_file():
            raise ValueError(
                f"{weights}: no best.pt for {row['config']} seed {row['seed']} (the "
                "confirmation keeps only --keep-weights runs' weights: raise it to keep all)"
            )
        model, cfg, names = load_trained(weights, device)
        if data:
            cfg = cfg.replace(data=data)
        key = (cfg.data, cfg.imgsz)
        if key not in decoded:
            decoded[key] = load_datasets(cfg, verbose=False)
        datasets = decoded[key]
        if datasets.test is None:
            raise ValueError(f"{cfg.data}: the dataset has no test split")
        if datasets.names != names:
            raise ValueError(f"{weights}: classes {names} differ from the data's {datasets.names}")
        loss_fn = DetectionLoss(cfg, len(names))
        run: dict[str, Any] = {
            "config": row["config"],
            "seed": int(row["seed"]),
            "objective": float(row["objective"]),
            "weights": str(weights),
        }
        for split in ("val", "test"):
            loader = make_loader(getattr(datasets, split), cfg, train=False)
            metrics = evaluate(model, loader, loss_fn, cfg, device, cfg.epochs)
            run[split] = metrics[S.MAP50_95]
            run[f"{split}_mAP50"] = metrics[S.MAP50]
        print(
            f"{row['config']} seed {row['seed']}: val {run['val']:.4f} test {run['test']:.4f}",
            flush=True,
        )
        out.append(run)
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per config: its seeds and mean ± sd on val and test. The best config by val mean (as the
    confirmation picks it) is compared with the default on test: a gain beyond the larger of
    the two test sds is "beats", within it "ties", and below it "loses"."""
    configs: dict[str, dict[str, Any]] = {}
    for r in runs:
        c = configs.setdefault(r["config"], {"seeds": [], "val": [], "test": []})
        for key, value in (("seeds", r["seed"]), ("val", r["val"]), ("test", r["test"])):
            c[key].append(value)
    for c in configs.values():
        for split in ("val", "test"):
            c[f"{split}_mean"], c[f"{split}_sd"] = mean_sd(c[split])
    doc: dict[str, Any] = {"runs": runs, "configs": configs}
    others = [name for name in configs if name != "default"]
    if "default" in configs and others:
        best = max(others, key=lambda n: configs[n]["val_mean"])
        b, d = configs[best], configs["default"]
        gain = b["test_mean"] - d["test_mean"]
        spread = max(b["test_sd"], d["test_sd"])
        word = "beats" if gain > spread else ("loses to" if gain < -spread else "ties")
        doc["verdict"] = {
            "config": best,
            "test_gain": gain,
            "test_spread": spread,
            "val_gain": b["val_mean"] - d["val_mean"],
            "word": word,
        }
    return doc


def split_command(args: argparse.Namespace) -> None:
    try:
        summary = write_holdout(Path(args.data), Path(args.out), args.fraction, args.gap)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"train {summary['train']} frames ({summary['train_frames'][0]}-"
        f"{summary['train_frames'][1]}), {summary['dropped']} dropped, test {summary['test']} "
        f"frames ({summary['test_frames'][0]}-{summary['test_frames'][1]}): "
        f"{summary['data_yaml']}"
    )


def score_command(args: argparse.Namespace) -> dict[str, Any]:
    import json

    try:
        doc = summarise(score_runs(Path(args.confirm), args.data))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for name, c in doc["configs"].items():
        print(
            f"{name}: val {c['val_mean']:.4f} ± {c['val_sd']:.4f}, test {c['test_mean']:.4f} ± "
            f"{c['test_sd']:.4f} (seeds {c['seeds']})"
        )
    v = doc.get("verdict")
    if v:
        print(
            f"on test, {v['config']} {v['word']} the default: {v['test_gain']:+.4f} against a "
            f"seed spread of {v['test_spread']:.4f} (on val {v['val_gain']:+.4f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return doc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("split", help="write the held-out data.yaml")
    w.add_argument("--data", default=str(DEFAULT_DATA), help="a folder with train/ and val/")
    w.add_argument("--out", default=str(REPO / "outputs" / "holdout"), help="where to write")
    w.add_argument("--fraction", type=float, default=0.15, help="share of train/ held out")
    w.add_argument("--gap", type=int, default=10, help="frames dropped between train and test")
    c = sub.add_parser("score", help="a confirmation's runs on val and test, per config")
    c.add_argument("--confirm", required=True, help="the confirmation's confirm.csv")
    c.add_argument("--data", help="evaluate on this dataset (default: each run's own)")
    c.add_argument("--json", help="write the scores here")
    args = p.parse_args(argv)
    {"split": split_command, "score": score_command}[args.command](args)


if __name__ == "__main__":
    main()
