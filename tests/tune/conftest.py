"""Search tests: make `import tune` find the repo's package, and a space-file fixture."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helpers import WriteSpace

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # also under a bare `pytest` that does not add the cwd
    sys.path.insert(0, str(_REPO))


@pytest.fixture
def write_space(tmp_path: Path) -> WriteSpace:
    """Write a space file from text and return its path."""

    def write(text: str, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
