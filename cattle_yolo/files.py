"""Writing files so that a reader, a kill mid-write or a full disk never sees a torn one."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

# Under this many free bytes left after a failed write, the disk is taken to be full: torch.save
# reports a full disk as a RuntimeError ("file write failed") without the errno.
FULL_DISK_BYTES = 1 << 20


class DiskFullError(OSError):
    """The disk filled while a file was written; the file named is left as it was."""


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temp file beside ``path``, then rename it to ``path``.

    The temp name (``.<name>.<pid>.tmp<suffix>``) keeps ``path``'s suffix, for writers that
    add one when it is missing (``np.savez``); it starts with a dot so that folder walkers
    that skip hidden files never pick it up. On error the temp file is removed and ``path`` is
    left as it was; an error on a full disk is raised as ``DiskFullError``, naming the file.
    Creates the parent folder. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as e:
        free = shutil.disk_usage(path.parent).free  # before the temp file is removed
        if getattr(e, "errno", None) == errno.ENOSPC or free < FULL_DISK_BYTES:
            kept = "the previous one is left as it was" if path.exists() else "none was there"
            raise DiskFullError(
                errno.ENOSPC,
                f"{path}: the disk filled while writing it ({free / 2**20:.1f} MiB free); "
                f"{kept}. Free space there and run the same command again",
            ) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files ``atomic_write`` left under ``folder`` when its process was killed
    mid-write (SIGKILL runs no cleanup; a checkpoint's temp file is as big as the checkpoint).
    Only temps of processes that are gone are deleted; returns them."""
    gone = []
    for tmp in Path(folder).rglob(".*.tmp*"):
        pid = tmp.name.split(".")[2] if tmp.name.count(".") >= 3 else ""
        if not pid.isdigit() or not tmp.is_file():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
        except PermissionError:  # alive, another user's
            pass
    return gone


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
