"""One pipeline run per workspace at a time.

Two runs writing the same ``data/`` would interleave their outputs. Every command that
writes (``fdd run``, ``fdd distill``, ``fdd stage``, ``fdd data fetch``) takes an
exclusive lock on ``<workspace>/.fdd.lock`` (:mod:`filelock`, an OS-level lock that is
released when the process ends, even by SIGKILL, so it is never left broken). A second
run fails at once with a message naming the run that holds it.

The flows take it too (:func:`holds_workspace_lock` on ``compare``, ``distill`` and
``sweep``), so a scheduled run of ``fdd serve`` (a flow run in its own process) cannot
write the ``data/`` of a manual ``fdd run`` either. The lock is re-entrant within one
process: the flow called by ``fdd run``, which already holds it, goes on.
Holding the lock means no other fdd process writes the workspace, so what a killed run left
behind is removed once it is taken: the temporary files of interrupted atomic writes under
``data/`` (:func:`fdd.files.remove_stale_temp_files`) and the download scratch folders of
dead fdd processes in the system temporary directory (:func:`fdd.files.remove_stale_scratch_dirs`).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import sys
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from fdd.files import remove_stale_scratch_dirs, remove_stale_temp_files

LOCK_NAME = ".fdd.lock"
OWNER_NAME = ".fdd.lock.owner"
NOTE_CLEANED = "note: removed {count} temporary file(s) and folder(s) left by a killed run, e.g. {example}"
ERR_BUSY = (
    "workspace {workspace} is in use by another fdd run ({owner}); wait for it to finish or use another --workspace"
)


F = TypeVar("F", bound=Callable[..., Any])
_HELD: set[Path] = set()  # the workspaces whose lock this process holds


class WorkspaceBusyError(RuntimeError):
    """Another fdd process holds the workspace lock."""


@contextmanager
def workspace_lock(workspace: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the workspace lock for the duration of the block, or fail fast.

    Re-entrant within a process: a block nested in another one on the same workspace
    (``fdd run`` holding it, then its flow taking it) goes on without a second lock.
    """
    root = Path(workspace)
    root.mkdir(parents=True, exist_ok=True)
    key = root.resolve()
    if key in _HELD:  # this process holds it: the outermost block releases it
        yield
        return
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
    _HELD.add(key)
    try:
        owner_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv),
                }
            )
        )
        removed = remove_stale_temp_files(root / "data") + remove_stale_scratch_dirs()
        if removed:
            print(NOTE_CLEANED.format(count=len(removed), example=removed[0]), file=sys.stderr)
        yield
    finally:
        _HELD.discard(key)
        owner_file.unlink(missing_ok=True)
        lock.release()


def forget_lock_owners() -> None:
    """Remove the owner notes of the workspaces this process holds, for a process that leaves
    without unwinding (:func:`flows.processes.arm_interrupt_watchdog`); the OS releases the locks."""
    for root in list(_HELD):
        (root / OWNER_NAME).unlink(missing_ok=True)


def holds_workspace_lock(fn: F) -> F:
    """``fn`` (a flow function with a ``workspace`` parameter), run holding that workspace's lock.

    Put under ``@flow`` so that every run of the flow (CLI, deployment, sweep) takes it;
    ``functools.wraps`` keeps the signature, so Prefect sees the same parameters.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with workspace_lock(bound.arguments["workspace"]):
            return fn(*args, **kwargs)

    # the annotations resolved: Prefect builds the parameter model in this module, which does not import them
    hints = typing.get_type_hints(fn)
    locked.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(annotation=hints.get(name, p.annotation)) for name, p in signature.parameters.items()],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    return locked  # type: ignore[return-value]
