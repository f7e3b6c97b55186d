"""The cost of Ray: one config standalone against the same config as a one-trial search, trial
start-up with the dataset shared through the object store against each trial loading it, and
the time from ``run_search.py`` start to the first trial's first step.

    python benchmarks/ray_overhead.py               # synthetic data, 128 px, 3 epochs
    python benchmarks/ray_overhead.py --smoke-test  # 1 epoch at 64 px
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from cattle_yolo import stats as S  # noqa: E402
from cattle_yolo.config import TrainConfig  # noqa: E402
from cattle_yolo.data import Datasets, load_datasets  # noqa: E402
from cattle_yolo.train import train  # noqa: E402
from tune.cluster import Resources  # noqa: E402
from tune.search import make_trainable  # noqa: E402
from tune.space import SearchSettings  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "cattle-chute"


def standalone_vs_trial(cfg: TrainConfig, storage: Path, cpus: int) -> dict[str, Any]:
    """Wall time of one config trained standalone and as a one-trial Tune run.

    Standalone is measured twice: ``python -m cattle_yolo train --config`` in a fresh process
    (what a user runs: it pays the Python start, imports and data loading, as a trial's worker
    does), and ``train()`` inside this already warm process. The one-trial search is
    ``Tuner.fit()`` in this process, with ``ray.init`` already done and the data already in
    memory. The trial's own log splits its time: ``fit()`` to its first step (starting the
    trial's worker, imports, data from the object store, model), training, and its last epoch
    to ``fit()`` returning.
    """
    cfg = cfg.replace(threads=cpus)
    datasets = load_datasets(cfg, verbose=False)
    cfg.to_yaml(storage / "config.yaml")
    cmd = [
        sys.executable,
        "-m",
        "cattle_yolo",
        "train",
        "--config",
        str(storage / "config.yaml"),
        "--out",
        str(storage / "cli"),
    ]
    start, t0 = datetime.now(), time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    cli_s = time.perf_counter() - t0
    log = (storage / "cli" / "logs" / "train.log").read_text().splitlines()
    cli = {
        "cli_s": cli_s,
        "cli_to_first_step_s": (_stamp(log[0]) - start).total_seconds(),
        "cli_training_s": (_stamp(log[-1]) - _stamp(log[0])).total_seconds(),
    }

    torch.set_num_threads(cpus)
    t0 = time.perf_counter()
    alone = train(cfg.replace(out=str(storage / "standalone")), datasets)
    in_process_s = time.perf_counter() - t0

    settings = SearchSettings(epochs=cfg.epochs)
    trainable = make_trainable(cfg, datasets, settings, Resources(0, 0, cpus, 1))
    tuner = tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="one-trial", storage_path=str(storage), verbose=0),
    )
    start, t0 = datetime.now(), time.perf_counter()
    result = tuner.fit()[0]
    trial_s, end = time.perf_counter() - t0, datetime.now()
    log = next((storage / "one-trial").glob("*/run/logs/train.log")).read_text().splitlines()
    assert result.metrics is not None  # the trial reported
    return {
        **cli,
        "in_process_train_s": in_process_s,
        "one_trial_search_s": trial_s,
        "ratio_to_cli": trial_s / cli_s,
        "ratio_to_in_process": trial_s / in_process_s,
        "same_metric": result.metrics[S.MAP50_95] == alone["last"][S.MAP50_95],
        "fit_to_first_step_s": (_stamp(log[0]) - start).total_seconds(),
        "trial_training_s": (_stamp(log[-1]) - _stamp(log[0])).total_seconds(),
        "last_epoch_to_fit_end_s": (end - _stamp(log[-1])).total_seconds(),
    }


def _stamp(line: str) -> datetime:
    """The time at the start of a train.log line."""
    stamp = re.match(r"(\S+ \S+)", line)
    if stamp is None:
        raise ValueError(f"a train.log line without a time stamp: {line!r}")
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")


def _ready_shared(config: dict[str, Any], datasets: Datasets | None = None) -> None:
    assert datasets is not None  # tune.with_parameters passes it
    tune.report({"ready": time.time(), "images": len(datasets.train)})


def _ready_loading(config: dict[str, Any]) -> None:
    start = time.time()
    cfg = TrainConfig.load(None, config["cfg"])
    datasets = load_datasets(cfg, verbose=False)
    tune.report(
        {"ready": time.time(), "load_s": time.time() - start, "images": len(datasets.train)}
    )


def startup(cfg: TrainConfig, storage: Path, trials: int) -> dict[str, Any]:
    """Seconds from ``fit()`` to data ready in each trial: shared object vs each trial loading."""
    out = {}
    space: dict[str, Any]
    for mode in ("shared", "loading"):
        t_load = time.perf_counter()
        if mode == "shared":
            datasets = load_datasets(cfg, verbose=False)
            driver_load = time.perf_counter() - t_load
            fn = tune.with_parameters(_ready_shared, datasets=datasets)
            space = {}
        else:
            driver_load = 0.0
            fn, space = _ready_loading, {"cfg": cfg.to_dict()}
        tuner = tune.Tuner(
            tune.with_resources(fn, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=trials),
            run_config=tune.RunConfig(name=f"startup-{mode}", storage_path=str(storage), verbose=0),
        )
        t0 = time.time()
        results: Any = tuner.fit()  # a ResultGrid: iterable, though not typed so
        ready = sorted(r.metrics["ready"] - t0 for r in results)
        out[mode] = {
            "driver_load_s": driver_load,
            "mean_ready_s": sum(ready) / len(ready),
            "last_ready_s": ready[-1],
            "total_s": driver_load + ready[-1],
        }
    return out


def first_step(storage: Path) -> float:
    """Seconds from launching ``run_search.py --smoke-test`` to its first trial's first step."""
    cmd = [
        sys.executable,
        str(REPO / "run_search.py"),
        "--smoke-test",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--storage",
        str(storage),
        "--name",
        "first-step",
        "--no-dashboard",
        "--quiet",
    ]
    start = datetime.now()
    subprocess.run(cmd, check=True, capture_output=True)
    logs = list((storage / "first-step").glob("*/run/logs/train.log"))
    # The line "training N epochs on ..." is written right before the first step.
    line = next(x for x in logs[0].read_text().splitlines() if " training " in x)
    return (_stamp(line) - start).total_seconds()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=3, help="epochs of the standalone/trial run")
    p.add_argument("--imgsz", type=int, default=128, help="image size")
    p.add_argument("--trials", type=int, default=4, help="trials in the start-up comparison")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke-test", action="store_true", help="1 epoch at 64 px, 2 trials")
    args = p.parse_args()
    if args.smoke_test:
        args.epochs, args.imgsz, args.trials = 1, 64, 2
    cpus = os.cpu_count() or 1
    cfg = TrainConfig(
        imgsz=args.imgsz,
        epochs=args.epochs,
        synthetic_images=64,
        neck_channels=32,
        batch=8,
        accumulate=1,
        warmup_epochs=1.0,
        device="cpu",
    )
    startup_data = cfg.replace(data=str(REAL)) if (REAL / "train").is_dir() else cfg
    ray.init(include_dashboard=False, num_cpus=cpus, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as folder:
        tmp = Path(folder)
        results: dict[str, Any] = {"cpus": cpus, "torch": torch.__version__, "ray": ray.__version__}
        results["standalone_vs_trial"] = standalone_vs_trial(cfg, tmp / "a", cpus)
        print(json.dumps(results["standalone_vs_trial"]))
        results["startup_data"] = startup_data.data or "synthetic"
        results["startup"] = startup(startup_data, tmp / "b", args.trials)
        print(json.dumps(results["startup"]))
        ray.shutdown()
        results["run_search_to_first_step_s"] = first_step(tmp / "c")
        print(f"run_search.py start to first step: {results['run_search_to_first_step_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
