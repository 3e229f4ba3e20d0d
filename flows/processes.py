"""The processes fdd starts die with it.

- :func:`die_with_parent` wraps a command so that the kernel sends it SIGTERM when the fdd
  process that started it dies, even by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``, set by a
  tiny launcher that then ``exec``\\s the command, so no ``preexec_fn`` runs in a threaded
  process). Used for ``fdd server``'s ``prefect server start`` and for the temporary Prefect
  server that ``fdd run`` starts (:func:`reap_temporary_server`), which also gets a session of
  its own, so that a signal to fdd's process group does not stop it before fdd is done with it.
- :func:`stop_on_signals` turns SIGTERM into the same clean shutdown as Ctrl-C, bounds that
  shutdown (:func:`arm_interrupt_watchdog`: the process leaves with 130 if stopping takes more
  than the exit grace plus :data:`INTERRUPT_SHUTDOWN_SECONDS`), and
  :func:`stop_descendants` ends every process fdd started (SIGTERM, a grace period, then
  SIGKILL), for ``fdd serve`` and ``fdd sweep``; :func:`interrupt_threads` passes the interrupt
  on to the threads that run :func:`interruptible` work (a sweep's cells on Dask thread workers)
  and keeps any more from starting until :func:`allow_threads`.
- :func:`run_group` runs a long-lived child in its own process group and forwards SIGTERM /
  SIGINT to the whole group (``fdd server``).
- :func:`bounded_exit` ends every fdd command within a grace period (:data:`EXIT_GRACE_SECONDS`,
  ``FDD_EXIT_GRACE_S``) even when a thread it leaves behind (a Dask, torch or Prefect worker)
  blocks, naming that thread; :func:`drain_prefect_services` lets Prefect send its queued logs
  before :func:`stop_on_signals` stops the temporary server they go to.
"""

from __future__ import annotations

import atexit
import ctypes
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

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
#: Seconds Prefect's services get to send what they queued before fdd stops its server.
PREFECT_DRAIN_SECONDS = 10.0
#: Seconds fdd waits at exit for threads and exit hooks that are still running
#: (:func:`bounded_exit`); :data:`EXIT_GRACE_ENV` overrides it.
EXIT_GRACE_SECONDS = 15.0
EXIT_GRACE_ENV = "FDD_EXIT_GRACE_S"
#: The ``atexit`` handlers (Prefect stopping its temporary server) get the grace period, and
#: never less than this, before fdd leaves without them.
EXIT_HANDLERS_MIN_SECONDS = 10.0
MSG_THREAD_INTERRUPTED = "fdd was interrupted (SIGINT or SIGTERM)"
#: What an interrupted command prints last, and its exit status.
MSG_STOPPED = "stopped: interrupted (SIGINT or SIGTERM); run the command again to continue"
EXIT_STOPPED = 130
#: After an interrupt, the seconds that stopping (the cells in flight, the states of their runs,
#: the processes fdd started) may take beyond the exit grace before fdd leaves without it.
INTERRUPT_SHUTDOWN_SECONDS = 10.0
WARN_SHUTDOWN_STUCK = (
    "warning: fdd was interrupted {seconds:g} s ago and is still stopping (still running: {names}); "
    "leaving without waiting for it"
)
WARN_EXIT_GRACE = "warning: {env}={value!r} is not a number of seconds >= 0; waiting {default:g} s at exit"
WARN_STUCK_THREADS = (
    "warning: fdd is done (exit status {status}) but after {grace:g} s these still run: {names}; "
    "leaving without waiting for them"
)
WARN_EXIT_HANDLERS = (
    "warning: fdd is done (exit status {status}) but its exit handlers still run after {grace:g} s; "
    "leaving without waiting for them"
)


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
        if sys.platform.startswith("linux"):  # out of fdd's process group, as it still dies with fdd
            kwargs.setdefault("start_new_session", True)  # (reap_temporary_server)
        return subprocess.Popen(die_with_parent(args), *rest, **kwargs)


def reap_temporary_server() -> None:
    """Make the temporary Prefect server (``prefect.server.api.server.SubprocessASGIServer``,
    started by a run without ``PREFECT_API_URL``) die with this process, even on SIGKILL.

    Prefect starts it with ``subprocess.Popen([sys.executable, "-m", "uvicorn", ...])`` and
    stops it at exit, which a killed process never reaches; the module's ``subprocess`` is
    replaced by one that wraps that command with :func:`die_with_parent` and, on Linux, starts it
    in a session of its own. A signal sent to fdd's whole process group (``timeout``, Ctrl-C in a
    terminal) then reaches fdd alone: in the group, the server died at once, and fdd, reporting
    the interrupted runs to it, retried for minutes and then failed with ``ConnectError``
    instead of stopping. fdd stops it on the way out (:func:`stop_on_signals`, ``atexit``).
    """
    from prefect.server.api import server

    if not isinstance(server.subprocess, _ReapingSubprocess):
        server.subprocess = _ReapingSubprocess()


class ThreadInterrupted(BaseException):
    """Raised in an :func:`interruptible` block by :func:`interrupt_threads`.

    A BaseException, as KeyboardInterrupt, so that no ``except Exception`` takes it for an error
    (Prefect records the task run as crashed, without retrying it), but not KeyboardInterrupt,
    which Dask lets out of its worker thread into its event loop, closing it.
    """

    def __str__(self) -> str:
        return MSG_THREAD_INTERRUPTED  # raised as a class (interrupt_threads): no message of its own


#: The threads inside an :func:`interruptible` block (their ids), whether :func:`interrupt_threads`
#: was called since the last :func:`allow_threads` (then no block may start), and the lock that
#: guards both.
_INTERRUPTIBLE: set[int] = set()
_STOPPING = threading.Event()
_INTERRUPTIBLE_LOCK = threading.RLock()


@contextmanager
def interruptible() -> Iterator[None]:
    """The block, in a thread other than the main one, ends with :class:`ThreadInterrupted` when
    :func:`interrupt_threads` is called (by the main thread, once it was interrupted); entered
    after that call (and before :func:`allow_threads`), it raises :class:`ThreadInterrupted` at once.

    Python raises a signal's KeyboardInterrupt (or Prefect's ``TerminationSignal``) in the main
    thread only. A sweep's cells run on Dask worker threads of the fdd process
    (``sweep.processes: false``): interrupted, fdd went on computing the cell in flight, and
    Dask, closing its workers, waited 30 s for it before the process could stop. And once the
    interrupted cell had left its thread, Dask started the next queued cell there before the
    cluster was closed (measured 0.2 s after the interrupt, on one worker with cells waiting):
    that cell went on synthesizing until Dask's 30 s were over, or until ``timeout -k`` killed fdd.
    """
    ident = threading.get_ident()
    with _INTERRUPTIBLE_LOCK:
        if _STOPPING.is_set():
            raise ThreadInterrupted
        _INTERRUPTIBLE.add(ident)
    try:
        yield
    finally:
        with _INTERRUPTIBLE_LOCK:
            _INTERRUPTIBLE.discard(ident)


def interrupt_threads() -> int:
    """Raise :class:`ThreadInterrupted` in every thread but this one that runs an :func:`interruptible`
    block, and in every block that starts from now on until :func:`allow_threads` is called.

    The exception is raised when the thread next runs Python code (CPython's
    ``PyThreadState_SetAsyncExc``), so a thread inside one long call of a C library (a torch
    kernel) stops once that call returns. Returns the number of threads interrupted.
    """
    current = threading.get_ident()
    count = 0
    with _INTERRUPTIBLE_LOCK:
        _STOPPING.set()
        for ident in _INTERRUPTIBLE - {current}:
            count += ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(ThreadInterrupted)
            )
    return count


def allow_threads() -> None:
    """Let :func:`interruptible` blocks start again after :func:`interrupt_threads` (a new sweep in this process)."""
    with _INTERRUPTIBLE_LOCK:
        _STOPPING.clear()


_WATCHDOG_ARMED = threading.Event()


def _leave_after_interrupt(seconds: float) -> None:
    names = ", ".join(f"thread {t.name}" for t in _stuck_threads()) or "no other thread"
    print(WARN_SHUTDOWN_STUCK.format(seconds=seconds, names=names), file=sys.stderr)
    print(MSG_STOPPED, file=sys.stderr)
    with suppress(psutil.Error):
        stop_descendants(grace=1.0)
    from flows.lock import forget_lock_owners

    forget_lock_owners()  # the OS releases the locks themselves when the process ends
    _flush_standard_streams()
    leave_now(EXIT_STOPPED)


def arm_interrupt_watchdog(seconds: float | None = None) -> None:
    """Once per process: end it with :data:`EXIT_STOPPED` if it still runs ``seconds`` from now
    (default: :func:`exit_grace` plus :data:`INTERRUPT_SHUTDOWN_SECONDS`).

    Armed by the first SIGINT or SIGTERM under :func:`stop_on_signals`. Stopping an interrupted
    sweep goes through Prefect's reporting of the crashed runs, Dask's closing of its workers and
    the stopping of fdd's children, any of which can wait on another (on a loaded 2-core CI
    machine an interrupted sweep was once still running 135 s after Ctrl-C). When the watchdog
    fires it names the threads still running, prints :data:`MSG_STOPPED`, stops the children
    (SIGTERM, then SIGKILL after 1 s), removes the lock owner notes and leaves. What a finished
    cell recorded is already on disk (atomic writes); the cell in flight resumes from its
    checkpoint on the next run.
    """
    if _WATCHDOG_ARMED.is_set():
        return
    _WATCHDOG_ARMED.set()
    seconds = exit_grace() + INTERRUPT_SHUTDOWN_SECONDS if seconds is None else seconds
    watchdog = threading.Timer(seconds, _leave_after_interrupt, args=(seconds,))
    watchdog.name = "fdd-interrupt-watchdog"
    watchdog.daemon = True
    watchdog.start()


def _raise_interrupt(signum: int, _frame: object) -> None:
    arm_interrupt_watchdog()
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
    """SIGTERM ends the block as Ctrl-C does (KeyboardInterrupt), either one arms
    :func:`arm_interrupt_watchdog` (stopping is bounded), and on the way out every process this
    one started, or that its children left behind, is stopped (:func:`become_subreaper`,
    :func:`stop_descendants`)."""
    become_subreaper()
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        drain_prefect_services()  # while the temporary Prefect server, a descendant, still runs
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


def drain_prefect_services(timeout: float = PREFECT_DRAIN_SECONDS) -> None:
    """Send the logs and events that Prefect still queues for its API now, while its server runs.

    Prefect sends them from background services that it drains at interpreter exit (before the
    ``atexit`` handler that stops its temporary server). :func:`stop_descendants` stops that
    server earlier, so a drain left to exit posts to a dead server, retries for a minute or more
    and then prints ``--- Error logging to API --- All connection attempts failed``. Waits at
    most ``timeout`` seconds per service; does nothing when Prefect was never imported.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout)


def exit_grace(environ: Mapping[str, str] | None = None) -> float:
    """Seconds fdd waits at exit for the threads it leaves running: :data:`EXIT_GRACE_ENV`
    when set to a finite number >= 0, else :data:`EXIT_GRACE_SECONDS` (a bad value is
    named in a warning on stderr)."""
    text = (os.environ if environ is None else environ).get(EXIT_GRACE_ENV, "").strip()
    if not text:
        return EXIT_GRACE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        print(WARN_EXIT_GRACE.format(env=EXIT_GRACE_ENV, value=text, default=EXIT_GRACE_SECONDS), file=sys.stderr)
        return EXIT_GRACE_SECONDS
    return value


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # closed or replaced by the caller
            stream.flush()


def leave_now(status: int) -> NoReturn:
    """Flush stdout / stderr and end the process with ``status`` at once: no thread is joined
    and no ``atexit`` handler runs (after an interrupt, once every child was stopped)."""
    _flush_standard_streams()
    os._exit(status)


class _ThreadExitHooks:
    """The hooks that CPython's ``threading._shutdown`` runs before it joins the non-daemon
    threads (``threading._register_atexit``: ``concurrent.futures`` joining every executor's
    workers, Prefect draining its log and event services), taken out of ``threading`` and run
    on a daemon thread so that waiting for them can be bounded. ``current`` names the hook
    that runs (or blocks)."""

    def __init__(self) -> None:
        hooks = getattr(threading, "_threading_atexits", None)  # CPython's private list
        self.calls: list[Callable[[], object]] = []
        if isinstance(hooks, list):
            self.calls = list(reversed(hooks))  # the order threading._shutdown uses
            hooks.clear()  # run once, here; threading._shutdown finds nothing left to run
        self.current = ""
        self.thread = threading.Thread(target=self._run, name="fdd-exit-hooks", daemon=True)

    def _run(self) -> None:
        for call in self.calls:
            func = getattr(call, "func", call)  # functools.partial
            self.current = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
            try:
                call()
            except Exception:  # noqa: BLE001 - as threading._shutdown would, but keep going
                traceback.print_exc()
        self.current = ""


def _stuck_threads() -> list[threading.Thread]:
    current = threading.current_thread()
    return [t for t in threading.enumerate() if t is not current and not t.daemon and t.is_alive()]


def _run_atexit_handlers() -> None:
    # CPython's atexit._run_exitfuncs (no public equivalent): runs the registered handlers
    # (LIFO) and clears them, as a normal exit would; os._exit skips them otherwise.
    run = getattr(atexit, "_run_exitfuncs", None)
    if run is not None:
        run()


def _arm_exit_watchdog(status: int, grace: float) -> None:
    """A daemon thread that ends the process with ``status`` if it still runs ``grace``
    seconds from now (an ``atexit`` handler that blocks)."""

    def fire() -> None:
        print(WARN_EXIT_HANDLERS.format(status=status, grace=grace), file=sys.stderr)
        leave_now(status)

    watchdog = threading.Timer(grace, fire)
    watchdog.name = "fdd-exit-watchdog"
    watchdog.daemon = True
    watchdog.start()


def bounded_exit(status: int, *, grace: float | None = None) -> int:
    """Wait at most ``grace`` seconds (default :func:`exit_grace`) for what a normal exit waits
    for without a bound, then leave with ``status``.

    A normal exit first runs ``threading``'s exit hooks (``concurrent.futures`` joins every
    executor worker, Prefect drains its API services) and joins every non-daemon thread,
    and only then runs the ``atexit`` handlers (which stop Prefect's temporary server). One
    blocked thread or hook holds the process forever. Here they are given ``grace`` seconds
    together; when all ended, ``status`` is returned for the caller to exit normally (and a
    watchdog still ends the process if the ``atexit`` handlers then take more than ``grace``
    seconds, at least :data:`EXIT_HANDLERS_MIN_SECONDS`). Otherwise one warning on stderr
    names what still runs, the ``atexit`` handlers run, stdout and stderr are flushed and the
    process ends with ``status`` without waiting (:func:`os._exit`). Call it from the main
    thread, once the command is done.
    """
    grace = exit_grace() if grace is None else grace
    deadline = time.monotonic() + grace
    hooks = _ThreadExitHooks()
    hooks.thread.start()
    hooks.thread.join(max(deadline - time.monotonic(), 0))
    for thread in _stuck_threads():
        thread.join(max(deadline - time.monotonic(), 0))
    stuck = [f"thread {thread.name}" for thread in _stuck_threads()]
    if hooks.thread.is_alive() and hooks.current:
        stuck.append(f"exit hook {hooks.current}")
    _arm_exit_watchdog(status, max(grace, EXIT_HANDLERS_MIN_SECONDS))
    if not stuck:
        return status
    print(
        WARN_STUCK_THREADS.format(status=status, grace=grace, names=", ".join(stuck)),
        file=sys.stderr,
    )
    _flush_standard_streams()
    _run_atexit_handlers()
    leave_now(status)
