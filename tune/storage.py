"""Where a search writes: a filesystem path (local or shared) or a cloud URI, as Ray Tune takes.

``--storage`` is a path, ``file://`` URI (the path it names), or ``s3://`` / ``gs://`` URI.
Ray Tune writes the experiment there itself (trial results, checkpoints, the trials' run
folders). The driver's own files, the search report (``results.csv``, ``best_config.yaml``,
plots, the saved space and settings) and the Optuna journal, are written to a local folder
first; with cloud storage that folder is a local copy beside the driver
(``./ray_results/<name>``) and ``upload`` puts its files in the experiment folder on the
storage, from where ``download`` brings them back to resume on another machine.

Files go through ``pyarrow.fs``, the filesystem layer Ray Tune itself uses, so every URI Ray
accepts (and the ``AWS_ENDPOINT_URL`` of an S3-compatible server) works here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pyarrow.fs

from cattle_yolo.config import ConfigError
from cattle_yolo.files import atomic_write, atomic_write_bytes

LOCK_FILE = ".driver.lock"


def lock_experiment(folder: Path, what: str = "search") -> IO[str]:
    """Take the experiment folder's driver lock, or refuse: one driver per experiment.

    Two drivers on one experiment would both write its Tune state and Optuna journal. The lock
    is an ``flock`` on ``<folder>/.driver.lock``, held while the returned file stays open; the
    kernel lets it go when the driver dies, even by SIGKILL, so a killed search never blocks its
    own resume. It guards the folder this machine writes (the local copy of a cloud search;
    on shared filesystems, flock holds across nodes where the filesystem supports it, as NFS
    v4 does). Raises ``ConfigError`` naming the driver that holds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held for the driver's lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise ConfigError(
            f"{folder}: another {what} is running on this experiment ({owner}); wait for it "
            "to end (the same command then continues it), or give another --name"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%F %T')}\n")
    f.flush()
    return f


def is_uri(storage: str) -> bool:
    """A cloud or remote URI (``s3://``, ``gs://``...), as opposed to a filesystem path."""
    return "://" in storage and not storage.startswith("file://")


def resolve(storage: str) -> str:
    """``storage`` as Tune's ``storage_path``: a URI unchanged; a path or ``file://`` URI as
    an absolute path (``file:///x`` is the path ``/x``, as Ray Tune reads it)."""
    if is_uri(storage):
        return storage.rstrip("/")
    return str(Path(storage.removeprefix("file://")).expanduser().resolve())


def experiment_path(storage: str, name: str) -> str:
    """The experiment folder ``<storage>/<name>``, a path or a URI."""
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(Path(storage) / name)


def local_copy(name: str) -> Path:
    """The driver's local folder for a search on cloud storage: ``./ray_results/<name>``."""
    return Path("ray_results").resolve() / name


def _split(uri: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path in it) of a URI or a filesystem path."""
    uri = str(uri)
    if not is_uri(uri):
        return pyarrow.fs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, str(path)


def uri(fs: pyarrow.fs.FileSystem | None, path: str) -> str:
    """A path on ``fs`` as one string: a filesystem path, or a URI with its scheme (Ray gives
    ``bucket/dir/...`` and the filesystem apart; joined with ``Path`` the scheme's slashes
    would collapse into ``s3:/bucket``)."""
    scheme = {"s3": "s3", "gcs": "gs"}.get(getattr(fs, "type_name", "local"))
    return f"{scheme}://{path}" if scheme else str(path)


def file_sizes(where: str | Path, patterns: list[str]) -> dict[str, int]:
    """The files under ``where`` (path or URI) matching ``patterns`` (relative, ``*`` matches
    one folder level, e.g. ``checkpoint_*/last.pt``): path on its filesystem -> bytes."""
    import fnmatch

    fs, root = _split(where)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        rel = info.path[len(root) :].lstrip("/")
        if info.type == pyarrow.fs.FileType.File and any(
            fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in patterns
        ):
            out[info.path] = info.size
    return out


def delete_files(where: str | Path, paths: list[str]) -> None:
    """Delete ``paths`` (as ``file_sizes`` names them) on the filesystem of ``where``."""
    fs, _ = _split(where)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)


def _put(local: Path, fs: pyarrow.fs.FileSystem, target: str) -> None:
    """Copy one local file to ``target`` on ``fs``, creating its folder."""
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    pyarrow.fs.copy_files(str(local), target, destination_filesystem=fs)


def upload(folder: Path, uri: str, names: list[str] | None = None) -> list[str]:
    """Copy the files of ``folder`` (recursively; only ``names`` when given) to ``uri``,
    keeping their relative paths. Returns the relative paths copied."""
    fs, root = _split(uri)
    if names is None:
        names = sorted(
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
    names = [n for n in names if (folder / n).is_file()]
    for name in names:
        _put(folder / name, fs, f"{root}/{name}")
    return names


def download(uri: str, folder: Path, names: list[str]) -> list[str]:
    """Copy the files ``names`` (relative paths) under ``uri`` that exist there into
    ``folder``, each atomically. Returns the names copied."""
    fs, root = _split(uri)
    infos = fs.get_file_info([f"{root}/{n}" for n in names])
    copied = []
    for name, info in zip(names, infos, strict=True):
        if info.type != pyarrow.fs.FileType.File:
            continue
        src: str = info.path

        def fetch(tmp: Path, src: str = src) -> None:
            pyarrow.fs.copy_files(src, str(tmp), source_filesystem=fs)

        atomic_write(folder / name, fetch)
        copied.append(name)
    return copied


def read_bytes(uri: str) -> bytes:
    fs, path = _split(uri)
    with fs.open_input_stream(path) as f:
        data: bytes = f.read()
    return data


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` at ``uri``: atomically on a filesystem path (temp file, then rename);
    an object store's put is atomic by itself."""
    if not is_uri(uri):
        atomic_write_bytes(uri.removeprefix("file://"), data)
        return
    fs, path = _split(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def list_names(uri: str, pattern_prefix: str) -> list[str]:
    """Names of the files directly under ``uri`` that start with ``pattern_prefix``, sorted."""
    fs, root = _split(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pyarrow.fs.FileType.File and i.base_name.startswith(pattern_prefix)
    )


class FolderUploader:
    """Uploads a local folder's new and changed files to ``(fs, root)``, one call per epoch.

    A file counts as changed when its inode, size or modification time differ from when it was
    last sent (the training loop rewrites files by renaming a new one into place). Files whose
    relative path is in ``skip``, and hidden temp files, are never sent; those in ``drop`` are
    deleted locally once sent (weights: the local disk keeps none). ``sent`` counts the uploads
    per file.
    """

    def __init__(
        self,
        folder: Path,
        fs: pyarrow.fs.FileSystem,
        root: str,
        skip: Sequence[Path] = (),
        drop: Sequence[Path] = (),
    ) -> None:
        self.folder, self.fs, self.root = folder, fs, root.rstrip("/")
        self.skip, self.drop = {Path(p) for p in skip}, {Path(p) for p in drop}
        self.seen: dict[Path, tuple[int, int, int]] = {}  # relative path -> (ino, size, mtime)
        self.sent: dict[Path, int] = {}

    def _files(self) -> dict[Path, tuple[int, int, int]]:
        out = {}
        for path in self.folder.rglob("*"):
            rel = path.relative_to(self.folder)
            if rel in self.skip or path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while listing
                continue
            if path.is_file():
                out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    def upload(self) -> list[Path]:
        """Send what is new or changed since the last call; returns the relative paths sent."""
        sent = []
        for rel, key in sorted(self._files().items()):
            if self.seen.get(rel) == key:
                continue
            _put(self.folder / rel, self.fs, f"{self.root}/{rel.as_posix()}")
            self.seen[rel] = key
            self.sent[rel] = self.sent.get(rel, 0) + 1
            sent.append(rel)
            if rel in self.drop:
                (self.folder / rel).unlink()
        return sent

    def download(self) -> list[Path]:
        """Bring the folder's files back from the storage (a trial restored elsewhere); they
        count as sent."""
        info = self.fs.get_file_info(self.root)
        if info.type != pyarrow.fs.FileType.Directory:
            return []
        self.folder.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(self.root, str(self.folder), source_filesystem=self.fs)
        self.seen = self._files()
        for rel in self.drop & set(self.seen):
            (self.folder / rel).unlink()
        return sorted(self.seen)
