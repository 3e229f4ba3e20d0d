"""One pipeline run per workspace at a time.

Two runs writing the same ``data/`` would interleave their outputs. Every command that
writes (``fdd run``, ``fdd distill``, ``fdd stage``, ``fdd data fetch``) takes an
exclusive lock on ``<workspace>/.fdd.lock`` (:mod:`filelock`, an OS-level lock that is
released when the process ends, even by SIGKILL, so it is never left broken). A second
run fails at once with a message naming the run that holds it.

Holding the lock means no other fdd process writes the workspace, so what a killed run left
behind is removed once it is taken: the temporary files of interrupted atomic writes under
``data/`` (:func:`fdd.files.remove_stale_temp_files`) and the download scratch folders of
dead fdd processes in the system temporary directory (:func:`fdd.files.remove_stale_scratch_dirs`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from fdd.files import remove_stale_scratch_dirs, remove_stale_temp_files

LOCK_NAME = ".fdd.lock"
OWNER_NAME = ".fdd.lock.owner"
NOTE_CLEANED = "note: removed {count} temporary file(s) and folder(s) left by a killed run, e.g. {example}"
ERR_BUSY = (
    "workspace {workspace} is in use by another fdd run ({owner}); wait for it to finish "
    "or use another --workspace"
)


class WorkspaceBusyError(RuntimeError):
    """Another fdd process holds the workspace lock."""


@contextmanager
def workspace_lock(workspace: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the workspace lock for the duration of the block, or fail fast."""
    root = Path(workspace)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK_NAME)
    owner_file = root / OWNER_NAME
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            info = json.loads(owner_file.read_text())
            owner = f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
        except (OSError, ValueError, KeyError):
            owner = "owner unknown"
        raise WorkspaceBusyError(ERR_BUSY.format(workspace=root, owner=owner)) from None
    try:
        owner_file.write_text(
            json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
            })
        )
        removed = remove_stale_temp_files(root / "data") + remove_stale_scratch_dirs()
        if removed:
            print(NOTE_CLEANED.format(count=len(removed), example=removed[0]), file=sys.stderr)
        yield
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()
