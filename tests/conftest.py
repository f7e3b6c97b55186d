import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CATTLE_CHUTE = REPO.parent / "shared" / "data" / "cattle-chute"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Generate the embedded synthetic dataset into a per-session folder, not ~/.cache."""
    old = os.environ.get("CATTLE_YOLO_CACHE")
    os.environ["CATTLE_YOLO_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("CATTLE_YOLO_NO_PROGRESS", "1")
    yield
    if old is None:
        os.environ.pop("CATTLE_YOLO_CACHE", None)
    else:
        os.environ["CATTLE_YOLO_CACHE"] = old


@pytest.fixture
def cattle_chute() -> Path:
    if not (CATTLE_CHUTE / "train").is_dir():
        pytest.skip(f"real data not found at {CATTLE_CHUTE}")
    return CATTLE_CHUTE
