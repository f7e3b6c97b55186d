"""Fault campaign: does a search, and its confirmation, survive what kills them in real life?

The search is the mission's own command (``run_search.py``, TPE, ASHA, the divergence
stopper, a confirmation of the top config and the default on fresh seeds) on small synthetic
trials. While it runs, a random trial worker of this search (a ``ray::...Trainable`` process
whose raylet belongs to the driver's process group; other searches on the machine are left
alone) is sent SIGKILL every ``--every`` seconds (jittered), and the driver itself is sent
SIGKILL four times, each time followed by the same command, which resumes:

1. during the search; then, before resuming, the journal's last record is torn (half a record
   appended, as a kill mid-append leaves it) and one unfinished trial's ``last.pt`` is cut to
   half its size (as a failing disk leaves it);
2. during the resumed search;
3. during the confirmation;
4. during the resumed confirmation;
5. the last run is left alone and must end with exit 0.

While run 1 is going, the same command is started a second time: it must refuse (exit 2).
Separately, a training run writes its checkpoints on a tmpfs that fills during epoch 2's
``last.pt`` (root only; the fault-hook test in tests/cattle_yolo/test_train.py covers it
elsewhere): it must end with exit 2 naming the full disk, keep epoch 1's ``last.pt``
loadable, and resume once the tmpfs grows.

An undisturbed run of the same command (``--name <name>-calm``) is the reference: wall time,
and every epoch's metrics of every config both ran (a resumed trial continues exactly, so they
must be equal). The report: kills that landed, trials planned and finished, trials lost (goal
0), epochs trained twice, trials the Optuna journal and Tune disagree on (goal 0: each Tune
trial is exactly one study trial with its state and value; a study trial no Tune trial owns
must be FAIL), and the epochs whose metrics differ from the reference.

    python benchmarks/chaos.py --json docs/data/chaos.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cattle_yolo import stats as S  # noqa: E402
from tune.confirm import CONFIRM_CSV, CONFIRM_SUFFIX  # noqa: E402
from tune.results import ENDED as ENDED_STATUSES  # noqa: E402
from tune.results import OBJECTIVE, Status  # noqa: E402
from tune.study import JOURNAL_FILE, TUNE_TRIAL_ID  # noqa: E402

# Small synthetic trials that still learn something in their epochs; fp32 and one thread per
# trial, so a resumed trial must repeat the undisturbed one's numbers exactly.
TRIAL_CONFIG = {
    "amp": "off",
    "imgsz": 64,
    "neck_channels": 16,
    "synthetic_images": 64,
    "batch": 8,
    "accumulate": 1,
    "warmup_epochs": 1.0,
}
ENDED = {str(s) for s in ENDED_STATUSES}  # ended as the search meant: not errored, unfinished


def search_command(args: argparse.Namespace, name: str) -> list[str]:
    sets = [x for k, v in TRIAL_CONFIG.items() for x in ("--set", f"{k}={v}")]
    return [
        sys.executable,
        str(REPO / "run_search.py"),
        "--space",
        str(REPO / "search_spaces" / "fixes.yaml"),
        "--trials",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--grace-period",
        str(args.grace_period),
        "--confirm",
        "1",
        "--confirm-seeds",
        str(args.confirm_seeds),
        "--seed",
        str(args.seed),
        *sets,
        "--cpus-per-trial",
        "1",
        "--storage",
        str(args.out),
        "--name",
        name,
        "--no-dashboard",
        "--quiet",
    ]


# --- processes --------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ray_processes(pgid: int) -> list[int]:
    """The processes a driver started: its process group (Ray's raylet, GCS...) and their
    children in other groups (Ray's workers, one session each)."""
    group = {p for p in _pids() if (_stat(p) or (0, 0))[1] == pgid}
    workers = {p for p in _pids() if (_stat(p) or (0, 0))[0] in group}
    return sorted(group | workers)


def trial_workers(pgid: int) -> list[int]:
    """The driver's busy trial workers: ``ray::<...>Trainable.train`` under its raylet."""
    return [
        p
        for p in ray_processes(pgid)
        if _cmdline(p).startswith("ray::") and "Trainable" in _cmdline(p)
    ]


@dataclass
class Driver:
    """One invocation of the search command, in its own session (so its Ray can be found)."""

    cmd: list[str]
    log: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CATTLE_YOLO_NO_PROGRESS": "1"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, grace: float = 10.0) -> list[str]:
        """SIGKILL the driver alone, as a crash would; Ray's own processes should follow it.
        Returns those still there after ``grace`` seconds (then killed too), by name."""
        pgid = self.proc.pid
        family = ray_processes(pgid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_stat(p) for p in family):
            time.sleep(0.5)
        left = [p for p in family if _stat(p)]
        names = [_cmdline(p).split(" ")[0].rsplit("/", 1)[-1] for p in left]
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return names


# --- the campaign -----------------------------------------------------------------------------


def _phase(out: Path, name: str) -> str:
    return "confirm" if (out / (name + CONFIRM_SUFFIX)).is_dir() else "search"


def _tear_journal(journal: Path) -> int:
    """Append half of the last record, as a kill in the middle of an append leaves it."""
    lines = journal.read_bytes().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]
    with journal.open("ab") as f:
        f.write(torn)
    return len(torn)


def _corrupt_a_last_pt(experiment: Path) -> str | None:
    """Cut to half the last.pt of a trial that Tune's saved state will resume."""
    status = tune_status(experiment)
    for path in sorted(experiment.glob("trial_*/run/models/last.pt")):
        trial = path.parents[2].name
        if status.get(trial.rsplit("_", 1)[-1]) not in (None, "TERMINATED"):
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 2)
            return trial
    return None


def tune_status(experiment: Path) -> dict[str, str]:
    """trial id -> status in Tune's latest saved experiment state."""
    return {k: v[0] for k, v in _saved_trials(experiment).items()}


def _saved_trials(experiment: Path) -> dict[str, tuple[str, int]]:
    """trial id -> (status, failures Tune counted) from its latest saved experiment state."""
    states = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    out = {}
    for trial, meta in json.loads(states[-1].read_text())["trial_data"]:
        trial = json.loads(trial)
        meta = json.loads(meta) if isinstance(meta, str) else meta
        out[trial["trial_id"]] = (trial["status"], int(meta.get("num_failures", 0)))
    return out


def run_campaign(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    name = args.name
    cmd = search_command(args, name)
    plan = [  # (phase the driver is killed in, worker kills in it first), then a calm run
        ("search", args.kills_per_run),
        ("search", args.kills_per_run),
        ("confirm", args.kills_per_run),
        ("confirm", args.kills_per_run),
        (None, 0),
    ]
    runs: list[dict[str, Any]] = []
    worker_kills = {"search": 0, "confirm": 0}
    second: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    t0 = time.monotonic()
    for i, (kill_in, kills) in enumerate(plan):
        driver = Driver(cmd, args.out / f"{name}.run{i + 1}.log")
        record: dict[str, Any] = {"run": i + 1, "kill_driver_in": kill_in, "worker_kills": 0}
        landed = 0
        next_kill = time.monotonic() + args.every * rng.uniform(0.7, 1.3)
        while driver.alive:
            time.sleep(0.5)
            phase = _phase(args.out, name)
            if i == 0 and not second and trial_workers(driver.proc.pid):
                second = second_driver(cmd, args.out / f"{name}.second.log")
            if kill_in is None or time.monotonic() < next_kill:
                continue
            next_kill = time.monotonic() + args.every * rng.uniform(0.7, 1.3)
            if phase == kill_in and landed >= kills:
                record["driver_phase"] = phase
                record["leftover_ray_processes"] = driver.kill()
                break
            workers = trial_workers(driver.proc.pid)
            if workers:
                try:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                worker_kills[phase] += 1
                record["worker_kills"] += 1
                landed += phase == kill_in
        runs.append(_ended(record, driver))
        print(f"run {i + 1}: {record}", flush=True)
        if i == 0:  # the faults a resume must survive
            faults["journal_torn_bytes"] = _tear_journal(args.out / name / JOURNAL_FILE)
            faults["corrupt_last_pt_trial"] = _corrupt_a_last_pt(args.out / name)
        if record["exit"] == 0:
            break
    log_text = "\n".join((args.out / f"{name}.run{r['run']}.log").read_text() for r in runs)
    faults["journal_repair_noted"] = "was torn, likely by a kill mid-write" in log_text
    corrupt = faults["corrupt_last_pt_trial"]
    trial_log = args.out / name / str(corrupt) / "run" / "logs" / "train.log"
    faults["corrupt_last_pt_noted"] = bool(corrupt) and (
        "the trial does not resume from it" in trial_log.read_text()
    )
    return {
        "wall_s": round(time.monotonic() - t0, 1),
        "runs": runs,
        "worker_kills": worker_kills,
        "driver_kills": sum(r["killed"] for r in runs),
        "second_driver": second,
        "faults": faults,
    }


def _ended(record: dict[str, Any], driver: Driver) -> dict[str, Any]:
    """``record`` with how the driver's run ended: exit code, killed or not, wall time, and the
    log's tail when it failed on its own."""
    record["exit"] = driver.proc.returncode
    record["killed"] = record["exit"] == -signal.SIGKILL
    record["wall_s"] = round(time.monotonic() - driver.started, 1)
    if record["exit"] not in (-signal.SIGKILL, 0):
        record["log_tail"] = driver.log.read_text()[-2000:]
    return record


def second_driver(cmd: list[str], log: Path) -> dict[str, Any]:
    """The same command again while the first runs: it must refuse, quickly, writing nothing."""
    t0 = time.monotonic()
    other = Driver(cmd, log)
    try:
        other.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        other.kill()
    text = log.read_text()
    return {
        "exit": other.proc.returncode,
        "seconds": round(time.monotonic() - t0, 1),
        "refused": other.proc.returncode == 2 and "another search is running" in text,
        "message": next((ln for ln in text.splitlines() if ln.startswith("error:")), text[-300:]),
    }


# --- the audit of what the searches left --------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def epochs_by_trial(experiment: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """trial folder -> epoch -> the last logged stats of that epoch, and the lines per epoch."""
    out = {}
    for log in sorted(experiment.glob("trial_*/run/metrics/training_metrics.jsonl")):
        epochs: dict[int, dict[str, Any]] = {}
        for line in log.read_text().splitlines():
            try:
                stats = json.loads(line)
            except json.JSONDecodeError:
                continue
            e = int(stats[S.EPOCH])
            stats["_lines"] = epochs.get(e, {}).get("_lines", 0) + 1
            epochs[e] = stats
        out[log.parents[2].name] = epochs
    return out


def journal_agreement(experiment: Path) -> dict[str, Any]:
    """Does the Optuna journal hold each Tune trial of results.csv exactly once, with its
    state and value? Study trials that no Tune trial owns must be FAIL."""
    import optuna

    from tune.study import journal_storage

    rows = _rows(experiment / "results.csv")
    storage = journal_storage(experiment / JOURNAL_FILE)
    (study_name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    by_owner: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.trials:
        by_owner.setdefault(str(t.user_attrs.get(TUNE_TRIAL_ID, "")), []).append(t)
    problems, retried_attempts = [], 0
    for row in rows:
        trial_id = row["trial"].rsplit("_", 1)[-1]
        owned = by_owner.pop(trial_id, [])
        final = [t for t in owned if t.state.name != "FAIL"]
        retried_attempts += len(owned) - len(final)
        if len(final) != 1:
            states = [t.state.name for t in owned]
            problems.append(f"{row['trial']}: {len(final)} finished study trials {states}")
            continue
        t = final[0]
        want: dict[str, str] = {
            Status.COMPLETED: "COMPLETE",
            Status.DIVERGED: "COMPLETE",
            Status.STOPPED: "PRUNED",
        }
        if want.get(row["status"]) != t.state.name:
            problems.append(f"{row['trial']}: Tune {row['status']}, study {t.state.name}")
        elif t.state.name == "COMPLETE" and not math.isclose(
            math.nan if t.value is None else t.value,
            float(row[OBJECTIVE]),
            rel_tol=1e-9,
            abs_tol=1e-12,
        ):
            problems.append(f"{row['trial']}: value {t.value} vs {row[OBJECTIVE]}")
    orphans = [t for owner in by_owner.values() for t in owner]
    problems += [
        f"study trial {t.number}: no Tune trial, {t.state.name}"
        for t in orphans
        if t.state.name != "FAIL"
    ]
    return {
        "tune_trials": len(rows),
        "study_trials": len(study.trials),
        "failed_attempts_retried": retried_attempts,
        "orphans_failed": sum(t.state.name == "FAIL" for t in orphans),
        "disagreements": problems,
    }


def tune_failures(experiment: Path) -> dict[str, int]:
    """Failures Tune counted per trial (each a retry from the last checkpoint)."""
    return {k: v[1] for k, v in _saved_trials(experiment).items()}


def outcome(out: Path, name: str, trials: int, confirm_runs: int) -> dict[str, Any]:
    search = _rows(out / name / "results.csv")
    confirm = _rows(out / name / CONFIRM_CSV)
    search_ended = sum(r["status"] in ENDED for r in search)
    confirm_ended = sum(r["status"] in ENDED for r in confirm)
    epochs = {**epochs_by_trial(out / name), **epochs_by_trial(out / (name + CONFIRM_SUFFIX))}
    lines = sum(s["_lines"] for trial in epochs.values() for s in trial.values())
    unique = sum(len(trial) for trial in epochs.values())
    failures = {
        **tune_failures(out / name),
        **tune_failures(out / (name + CONFIRM_SUFFIX)),
    }
    return {
        "tune_failures": sum(failures.values()),
        "most_failures_of_a_trial": max(failures.values(), default=0),
        "search_trials": {"planned": trials, "ended": search_ended, "rows": len(search)},
        "confirm_runs": {"planned": confirm_runs, "ended": confirm_ended, "rows": len(confirm)},
        "trials_lost": (trials - search_ended) + (confirm_runs - confirm_ended),
        "epochs_trained": lines,
        "epochs_trained_twice": lines - unique,
        "statuses": sorted({r["status"] for r in search + confirm}),
    }


def knob_key(row: dict[str, str], knobs: list[str]) -> tuple[str, ...]:
    return tuple(f"{float(row[k]):.9g}" for k in knobs)


def compare_with_calm(out: Path, name: str, calm: str) -> dict[str, Any]:
    """Every epoch of every config (and seed) both searches trained: equal metrics?"""

    def index(exp: str) -> dict[tuple[str, ...], dict[int, dict[str, Any]]]:
        rows = _rows(out / exp / "results.csv") + _rows(out / exp / CONFIRM_CSV)
        epochs = {**epochs_by_trial(out / exp), **epochs_by_trial(out / (exp + CONFIRM_SUFFIX))}
        knobs = ["lr", "box_loss_weight", "warmup_start_fraction", "iou_start", "iou_end"]
        knobs.append("focal_gamma")
        found = {}
        for row in rows:
            folder = Path(row["path"]).name
            key = (*knob_key(row, [k for k in knobs if k in row]), row.get("seed", "search"))
            found[key] = epochs.get(folder, {})
        return found

    chaos, reference = index(name), index(calm)
    compared = differ = 0
    examples: list[dict[str, Any]] = []
    for key in chaos.keys() & reference.keys():
        for epoch in chaos[key].keys() & reference[key].keys():
            compared += 1
            a, b = chaos[key][epoch], reference[key][epoch]
            fields = (S.TRAIN_LOSS, S.VAL_LOSS, S.MAP50_95)
            if any(a.get(f) != b.get(f) for f in fields):
                differ += 1
                if len(examples) < 5:
                    examples.append(
                        {"config": key, S.EPOCH: epoch, **{f: (a[f], b[f]) for f in fields}}
                    )
    return {
        "configs_in_both": len(chaos.keys() & reference.keys()),
        "epochs_compared": compared,
        "epochs_that_differ": differ,
        "examples": examples,
    }


# --- a disk that fills ------------------------------------------------------------------------


def disk_full(out: Path) -> dict[str, Any]:
    """Train on a tmpfs that fills while epoch 2's last.pt is written; then grow it, resume."""
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root; the fault-hook test covers it"}
    from cattle_yolo.checkpoint import load_checkpoint

    sets = [f"{k}={v}" for k, v in TRIAL_CONFIG.items()]
    train = [sys.executable, "-m", "cattle_yolo", "train", "--epochs", "3", *sets]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CATTLE_YOLO_NO_PROGRESS": "1"}
    probe = out / "disk-probe"  # how big the checkpoints are
    subprocess.run(
        [*train, "--epochs", "1", "--out", str(probe)], env=env, check=True, capture_output=True
    )
    last, best = ((probe / "models" / n).stat().st_size for n in ("last.pt", "best.pt"))
    shutil.rmtree(probe)
    mount = out / "tmpfs"
    mount.mkdir(parents=True, exist_ok=True)
    size = last + best + (1 << 20) + last // 2  # epoch 1 fits; epoch 2's last.pt does not
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        run = mount / "run"
        first = subprocess.run([*train, "--out", str(run)], env=env, capture_output=True, text=True)
        kept = load_checkpoint(run / "models" / "last.pt")["epoch"]
        leftovers = sorted(p.name for p in (run / "models").iterdir())
        subprocess.run(["mount", "-o", f"remount,size={4 * size}", str(mount)], check=True)
        again = subprocess.run(
            [*train, "--out", str(run), "--resume"], env=env, capture_output=True, text=True
        )
        final = load_checkpoint(run / "models" / "last.pt")["epoch"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    message = next((ln for ln in first.stderr.splitlines() if ln.startswith("error:")), "")
    return {
        "tmpfs_bytes": size,
        "last_pt_bytes": last,
        "exit": first.returncode,
        "message": message,
        "traceback": "Traceback" in first.stderr,
        "last_pt_epoch_kept": kept,
        "models_folder": leftovers,
        "resume_exit": again.returncode,
        "resumed_to_epoch": final,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "chaos", help="storage folder")
    p.add_argument("--name", default="chaos", help="experiment name")
    p.add_argument("--trials", type=int, default=6, help="search trials")
    p.add_argument("--epochs", type=int, default=12, help="epochs per trial")
    p.add_argument("--grace-period", type=int, default=4, help="ASHA grace period")
    p.add_argument("--confirm-seeds", type=int, default=3, help="seeds per confirmed config")
    p.add_argument("--every", type=float, default=10.0, help="seconds between worker kills")
    p.add_argument(
        "--kills-per-run", type=int, default=5, help="worker kills in a phase before the driver's"
    )
    p.add_argument("--seed", type=int, default=0, help="the search's seed and the kill schedule's")
    p.add_argument("--no-calm", action="store_true", help="skip the undisturbed reference run")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args()
    if (args.out / args.name).exists():
        print(
            f"error: {args.out / args.name} exists; give another --name or --out", file=sys.stderr
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    report["trial_config"] = TRIAL_CONFIG
    confirm_runs = 2 * args.confirm_seeds
    if not args.no_calm:
        t0 = time.monotonic()
        calm = Driver(search_command(args, args.name + "-calm"), args.out / f"{args.name}-calm.log")
        calm.proc.wait()
        report["calm"] = {"exit": calm.proc.returncode, "wall_s": round(time.monotonic() - t0, 1)}
        report["calm"].update(outcome(args.out, args.name + "-calm", args.trials, confirm_runs))
        print(f"calm: {report['calm']}", flush=True)
    report["chaos"] = run_campaign(args, rng)
    report["chaos"].update(outcome(args.out, args.name, args.trials, confirm_runs))
    report["journal"] = journal_agreement(args.out / args.name)
    if not args.no_calm:
        report["same_as_calm"] = compare_with_calm(args.out, args.name, args.name + "-calm")
    report["disk_full"] = disk_full(args.out)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    sys.exit(main())
