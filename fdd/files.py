"""Atomic file writes: a temporary file in the target folder, fsync, then rename.

A crash or a full disk never leaves a half-written file under the final name, and the
previous version of the file survives until the new one is complete. A process killed
mid-write (SIGKILL) leaves its temporary file (``.<name>.<random>.tmp``) behind;
:func:`remove_stale_temp_files` removes those at the start of the next run, and
:func:`remove_stale_scratch_dirs` the download folders (:func:`scratch_dir`) of dead processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: The names :func:`atomic_write` gives its temporary files: ``.<final name>.<8 random characters>.tmp``
#: (:func:`tempfile.mkstemp` draws from lower-case letters, digits and ``_``).
TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp$")
#: Prefix of the scratch folders (system temporary directory) of downloads: ``fdd-fetch-<pid>-<random>``.
SCRATCH_PREFIX = "fdd-fetch-"
SCRATCH_NAME = re.compile(rf"^{SCRATCH_PREFIX}(?P<pid>\d+)-")
__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "remove_stale_scratch_dirs",
    "remove_stale_temp_files",
    "scratch_dir",
    "sha256_file",
]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary file, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # TEMP_NAME
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # e.g. ENOSPC from write or fsync: name the file being written
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(data))


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 2**20) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temp_files(folder: str | os.PathLike[str], *, older_than: float = 0.0) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` under ``folder`` (recursively).

    Only names matching :data:`TEMP_NAME` are touched, and only files last modified more than
    ``older_than`` seconds ago. Call it only while no other process writes under ``folder``
    (fdd holds the workspace lock): such a file is then the remains of a killed writer.
    Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.rglob(".*.tmp"):
        try:
            if (
                TEMP_NAME.match(path.name)
                and path.is_file()
                and not path.is_symlink()
                and now - path.stat().st_mtime >= older_than
            ):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A scratch folder in the system temporary directory named after this process
    (``fdd-fetch-<pid>-...``), so that :func:`remove_stale_scratch_dirs` can tell when its
    owner is gone."""
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_scratch_dirs(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete the :func:`scratch_dir` folders under ``parent`` (default: the system temporary
    directory) whose process no longer runs (killed mid-download). Returns the removed paths."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    removed: list[Path] = []
    for path in parent.glob(f"{SCRATCH_PREFIX}*"):
        match = SCRATCH_NAME.match(path.name)
        if match is None or not path.is_dir() or path.is_symlink() or _alive(int(match["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
