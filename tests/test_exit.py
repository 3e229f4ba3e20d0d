"""Every fdd command ends within a bounded time: threads it leaves running get a grace period
(FDD_EXIT_GRACE_S), then fdd names them, runs its exit handlers and leaves with its status; and
a successful command prints no Prefect error on the way out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from flows.cli import EXIT_USER_ERROR
from flows.processes import (
    EXIT_GRACE_ENV,
    EXIT_GRACE_SECONDS,
    EXIT_HANDLERS_MIN_SECONDS,
    WARN_EXIT_GRACE,
    WARN_EXIT_HANDLERS,
    WARN_STUCK_THREADS,
    exit_grace,
)

ROOT = Path(__file__).resolve().parent.parent
GRACE = 1.0
#: Python's own start and fdd's imports, on a loaded machine.
MARGIN = 45.0
#: The lines of WARN_STUCK_THREADS, whatever its fields.
STUCK_WARNING = re.compile(re.sub(r"\\\{\w+(?::\w+)?\\\}", ".*", re.escape(WARN_STUCK_THREADS)), re.MULTILINE)

#: The ``fdd`` console script (``sys.exit(main())``), with threads that never end: a plain
#: non-daemon thread and a ThreadPoolExecutor job (joined by concurrent.futures at exit).
#: The atexit handler writes ``marker``; ``fdd config`` with a bad --set exits with 2.
SCRIPT = textwrap.dedent("""
    import atexit, concurrent.futures, sys, threading
    from pathlib import Path
    from flows.cli import main
    marker, how, params = sys.argv[1], sys.argv[2], sys.argv[3]
    if how == "hung-atexit":
        atexit.register(threading.Event().wait)  # runs after the marker's handler (LIFO)
    atexit.register(lambda: Path(marker).write_text("atexit ran"))
    if how == "stuck":
        never = threading.Event()
        threading.Thread(target=never.wait, name="stuck-plain-thread").start()
        pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="stuck-pool")
        pool.submit(never.wait)
    idle = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="idle-pool")
    idle.submit(print, "an idle pool, never shut down: ends at exit", file=sys.stderr).result()
    sys.argv = ["fdd", "config", "--params", params, "--set", "synthesis.ipc=0"]
    sys.exit(main())
""")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop("PREFECT_API_URL", None)
    return env


def _script(tmp_path: Path, how: str, *, grace: str = str(GRACE)) -> tuple[subprocess.CompletedProcess[str], float]:
    marker = tmp_path / "atexit.txt"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker), how, str(ROOT / "params.yaml")],
        cwd=tmp_path,
        env=_env(**{EXIT_GRACE_ENV: grace}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert marker.read_text() == "atexit ran", result.stderr[-2000:]
    return result, time.monotonic() - start


def test_stuck_threads_are_named_and_left_behind_with_the_status(tmp_path: Path) -> None:
    result, seconds = _script(tmp_path, "stuck")
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert seconds < GRACE + MARGIN
    (warning,) = STUCK_WARNING.findall(result.stderr)
    assert f"exit status {EXIT_USER_ERROR}" in warning and "leaving without waiting" in warning
    assert "stuck-plain-thread" in warning and "stuck-pool_0" in warning
    assert "idle-pool" not in warning  # concurrent.futures' exit hook ended it


def test_a_hung_atexit_handler_is_left_behind(tmp_path: Path) -> None:
    result, seconds = _script(tmp_path, "hung-atexit")
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert seconds < EXIT_HANDLERS_MIN_SECONDS + MARGIN
    assert WARN_EXIT_HANDLERS.format(status=EXIT_USER_ERROR, grace=EXIT_HANDLERS_MIN_SECONDS) in result.stderr
    assert not STUCK_WARNING.search(result.stderr)


def test_a_normal_exit_does_not_warn(tmp_path: Path) -> None:
    result, _ = _script(tmp_path, "fine")
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert "warning" not in result.stderr and "synthesis.ipc" in result.stderr


def test_python_m_flows_cli_exits_normally(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "config", "--params", str(ROOT / "params.yaml")],
        cwd=tmp_path,
        env=_env(**{EXIT_GRACE_ENV: str(GRACE)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr[-2000:]


def test_a_bad_grace_is_named_and_the_default_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("soon", "-1", "nan", "inf"):
        assert exit_grace({EXIT_GRACE_ENV: bad}) == EXIT_GRACE_SECONDS
        assert capsys.readouterr().err.strip() == WARN_EXIT_GRACE.format(
            env=EXIT_GRACE_ENV, value=bad, default=EXIT_GRACE_SECONDS
        )
    assert exit_grace({EXIT_GRACE_ENV: " 2.5 "}) == 2.5 and exit_grace({EXIT_GRACE_ENV: "0"}) == 0
    assert exit_grace({}) == EXIT_GRACE_SECONDS and not capsys.readouterr().err
    result, _ = _script(tmp_path, "fine", grace="soon")
    assert f"{EXIT_GRACE_ENV}='soon'" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_a_successful_sweep_prints_no_prefect_error_and_exits_promptly(tiny_workspace: Path) -> None:
    """`fdd sweep` stops its children, the temporary Prefect server among them, before it exits;
    Prefect's queued flow-run logs went to that server at exit, retried for a minute and printed
    '--- Error logging to API --- All connection attempts failed'."""
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    (tiny_workspace / "records").mkdir()  # no record yet: every cell is reported as not run
    params["sweep"] = {
        "datasets": ["cmnist"],
        "ipcs": [2],
        "modes": ["vanilla"],
        "seeds": [0],
        "records": "records",
    }
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "sweep", "--from-records"],
        cwd=tiny_workspace,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Flow run" in result.stderr  # Prefect ran and logged flow runs to its API
    assert "Error logging to API" not in result.stderr, result.stderr[-3000:]
    assert "All connection attempts failed" not in result.stderr
    assert not STUCK_WARNING.search(result.stderr)
    assert "Stopping temporary server" in result.stderr  # Prefect's atexit handler ran
