"""The processes fdd starts die with it.

- :func:`die_with_parent` wraps a command so that the kernel sends it SIGTERM when the fdd
  process that started it dies, even by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``, set by a
  tiny launcher that then ``exec``\\s the command, so no ``preexec_fn`` runs in a threaded
  process). Used for ``fdd server``'s ``prefect server start`` and for the temporary Prefect
  server that ``fdd run`` starts (:func:`reap_temporary_server`).
- :func:`stop_on_signals` turns SIGTERM into the same clean shutdown as Ctrl-C, and
  :func:`stop_descendants` ends every process fdd started (SIGTERM, a grace period, then
  SIGKILL), for ``fdd serve`` and ``fdd sweep``.
- :func:`run_group` runs a long-lived child in its own process group and forwards SIGTERM /
  SIGINT to the whole group (``fdd server``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psutil

#: Runs ``argv[2:]`` after asking the kernel for SIGTERM when the parent (pid ``argv[1]``) dies.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the parent died before the request took effect\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
GRACE_SECONDS = 10.0


def die_with_parent(command: Sequence[str]) -> list[str]:
    """``command`` wrapped so that it receives SIGTERM when this process dies (Linux; elsewhere unchanged).

    The first element of ``command`` must be an executable path (e.g. ``sys.executable``).
    The request survives ``exec`` and is tied to the thread that starts the child, so start
    long-lived children from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *command]


class _ReapingSubprocess(types.ModuleType):
    """:mod:`subprocess` whose ``Popen`` wraps the command with :func:`die_with_parent`."""

    def __init__(self) -> None:
        super().__init__("subprocess")

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Sequence[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # named as in subprocess
        return subprocess.Popen(die_with_parent(args), *rest, **kwargs)


def reap_temporary_server() -> None:
    """Make the temporary Prefect server (``prefect.server.api.server.SubprocessASGIServer``,
    started by a run without ``PREFECT_API_URL``) die with this process, even on SIGKILL.

    Prefect starts it with ``subprocess.Popen([sys.executable, "-m", "uvicorn", ...])`` and
    stops it at exit, which a killed process never reaches; the module's ``subprocess`` is
    replaced by one that wraps that command with :func:`die_with_parent`.
    """
    from prefect.server.api import server

    if not isinstance(server.subprocess, _ReapingSubprocess):
        server.subprocess = _ReapingSubprocess()


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def become_subreaper() -> bool:
    """Adopt the orphans among this process's descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    A worker that is stopped before its own children (a Dask worker's temporary Prefect
    server, a flow run's subprocess) leaves them orphaned; as a subreaper this process
    inherits them instead of init, so :func:`stop_descendants` still finds them.
    Returns whether the request was made.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM ends the block as Ctrl-C does (KeyboardInterrupt), and on the way out every
    process this one started, or that its children left behind, is stopped
    (:func:`become_subreaper`, :func:`stop_descendants`)."""
    become_subreaper()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_descendants()


def stop_descendants(grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM every descendant of this process, SIGKILL those still alive after ``grace`` seconds.

    Returns the pids that were signalled.
    """
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return [child.pid for child in children]


def run_group(command: Sequence[str], *, env: dict[str, str] | None = None, grace: float = GRACE_SECONDS) -> int:
    """Run ``command`` in its own process group until it exits; SIGTERM / SIGINT to this process
    are forwarded to the whole group, which gets SIGKILL if it outlives ``grace`` seconds.
    The child also dies with this process (:func:`die_with_parent`). Returns its exit code
    (128 + signal number when a forwarded signal ended it)."""
    process = subprocess.Popen(die_with_parent(command), env=env, start_new_session=True)
    received: list[tuple[int, float]] = []

    def forward(signum: int, _frame: object) -> None:
        received.append((signum, time.monotonic()))
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (code := process.poll()) is None:
            if received and time.monotonic() - received[0][1] > grace:
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:  # whatever the group left behind (e.g. a process that ignored the signal)
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return 128 + received[0][0] if received and code < 0 else code
