"""Writing files so that a reader, or a kill mid-write, never sees a torn one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temp file beside ``path``, then rename it to ``path``.

    The temp name (``.<name>.<pid>.tmp<suffix>``) keeps ``path``'s suffix, for writers that
    add one when it is missing (``np.savez``); it starts with a dot so that folder walkers
    that skip hidden files never pick it up. On error the temp file is removed and ``path`` is
    left as it was. Creates the parent folder. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
