"""Bounded disk: which weights an ended trial keeps, the size estimate, the free-space check."""

from pathlib import Path
from typing import Any

import pytest
from helpers import TINY

from cattle_yolo.config import TrainConfig
from tune.disk import (
    DiskError,
    Ended,
    check_free_space,
    checkpoint_bytes,
    enforce,
    peak_bytes,
    rank,
)
from tune.results import DIVERGED, EPOCH, OBJECTIVE


def _trial(root: Path, name: str) -> Path:
    models = root / name / "run" / "models"
    models.mkdir(parents=True)
    (models / "last.pt").write_bytes(b"x" * 400)
    (models / "best.pt").write_bytes(b"x" * 100)
    (root / name / "run" / "config.yaml").write_text("lr: 0.001\n")
    return root / name


def test_ranks_put_completed_trials_first_then_objective() -> None:
    assert rank({OBJECTIVE: 0.2, EPOCH: 4}, 4, "max") > rank({OBJECTIVE: 0.5, EPOCH: 2}, 4, "max")
    assert rank({OBJECTIVE: 0.3, EPOCH: 4}, 4, "max") > rank({OBJECTIVE: 0.2, EPOCH: 4}, 4, "max")
    assert rank({OBJECTIVE: 1.0, EPOCH: 4}, 4, "min") > rank({OBJECTIVE: 2.0, EPOCH: 4}, 4, "min")
    assert rank({OBJECTIVE: 0.9, EPOCH: 1, DIVERGED: True}, 4, "max") == (-1, float("-inf"))


def test_only_the_top_trials_keep_best_pt_and_no_ended_trial_keeps_last_pt(tmp_path: Path) -> None:
    paths = [_trial(tmp_path, f"t{i}") for i in range(5)]
    ranks = [(1, 0.3), (1, 0.5), (0, 0.9), (-1, float("-inf")), (1, 0.1)]
    ended = [Ended(str(p), r) for p, r in zip(paths, ranks, strict=True)]
    freed = enforce(ended, keep=2, protect=[paths[4]])
    kept = sorted(p.name for p in paths if (p / "run" / "models" / "best.pt").exists())
    assert kept == ["t0", "t1", "t4"]  # the best two completed, and the protected export
    assert not any((p / "run" / "models" / "last.pt").exists() for p in paths)
    assert all((p / "run" / "config.yaml").exists() for p in paths)  # config and logs stay
    assert freed == 5 * 400 + 2 * 100
    assert enforce(ended, keep=2) == 100  # idempotent but for the no longer protected t4
    enforce([Ended(str(_trial(tmp_path, "u")), (1, 0.0))], keep=None)  # None: every best.pt stays
    assert (tmp_path / "u" / "run" / "models" / "best.pt").exists()


def test_the_estimate_matches_the_checkpoints_training_writes(tmp_path: Path) -> None:
    from cattle_yolo.train import train

    cfg = TrainConfig.load(None, {**TINY, "epochs": 1, "out": str(tmp_path / "run")})
    train(cfg)
    resumable, inference = checkpoint_bytes(cfg, num_classes=2)
    last = (tmp_path / "run" / "models" / "last.pt").stat().st_size
    best = (tmp_path / "run" / "models" / "best.pt").stat().st_size
    assert resumable == pytest.approx(last, rel=0.05)
    assert inference == pytest.approx(best, rel=0.05)
    # two at once, three kept: 2 x (last + the next being written + best) + 3 best, x 1.1 + 100 MB
    assert peak_bytes(1000, 250, 2, 3) == int((2 * 2250 + 750) * 1.1) + 100 * 2**20


def test_a_search_that_will_not_fit_is_refused(tmp_path: Path) -> None:
    assert check_free_space(tmp_path / "not" / "yet", 1, "the search") > 0
    with pytest.raises(DiskError, match="needs about .* GiB at .* only .* GiB is free"):
        check_free_space(tmp_path, 1 << 60, "the search 'x'")


def test_an_ended_trial_keeps_last_pt_until_a_saved_state_records_its_end(tmp_path: Path) -> None:
    """A driver killed between a trial's end and Tune's next state save resumes that trial as
    unfinished: its last.pt must still be there. It goes one state save after that."""
    from types import SimpleNamespace

    import pyarrow.fs

    from tune.disk import DiskKeeper

    def fake(name: str, status: str = "RUNNING") -> Any:
        return SimpleNamespace(
            path=str(_trial(tmp_path, name)),
            status=status,
            last_result={OBJECTIVE: 0.5, EPOCH: 4},
            storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()),
        )

    def last_pt(trial: Any) -> bool:
        return (Path(trial.path) / "run" / "models" / "last.pt").exists()

    keeper = DiskKeeper(keep=1, max_epochs=4, mode="max")
    a, b = fake("a"), fake("b")
    b.last_result = {OBJECTIVE: 0.9, EPOCH: 4}  # the better: it keeps best.pt
    keeper.on_trial_complete(0, [a, b], a)
    assert last_pt(a)  # ended, but no saved state says so yet
    keeper.get_state()  # Tune saves a state that records a's end...
    assert last_pt(a)
    a.status = "TERMINATED"
    keeper.on_trial_complete(1, [a, b], b)
    assert last_pt(a)
    assert last_pt(b)
    keeper.get_state()  # ... and at the next save that one is on storage
    assert not last_pt(a)
    assert last_pt(b)
    keeper.on_experiment_end([a, b])
    assert not last_pt(b)
    assert (Path(b.path) / "run" / "models" / "best.pt").exists()  # best.pt: the top 1 keeps it
    assert not (Path(a.path) / "run" / "models" / "best.pt").exists()
