"""kill -9 at any point leaves no process and no temporary file that a rerun does not clean up;
SIGTERM / SIGINT to the long-running commands stop every process they started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from fdd.files import (
    SCRATCH_PREFIX,
    TEMP_NAME,
    remove_stale_scratch_dirs,
    remove_stale_temp_files,
)
from flows.lock import workspace_lock

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop("PREFECT_API_URL", None)
    return env


def _wait(predicate, *, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"{what}: the process exited with {process.returncode}: {out[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _killed_writer(folder: Path, name: str) -> Path:
    """A real process that dies by SIGKILL in the middle of fdd's atomic write of ``folder/name``."""
    code = textwrap.dedent(f"""
        import sys, time
        from fdd.files import atomic_write
        def write(handle):
            handle.write(b"x" * 1000)
            handle.flush()
            print("writing", flush=True)
            time.sleep(300)
        atomic_write({str(folder / name)!r}, write)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait(timeout=30)
    (left,) = [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]
    return left


def test_temporary_files_of_a_killed_write_are_removed_by_the_next_run(tiny_workspace: Path) -> None:
    prepared = tiny_workspace / "data/prepared"
    left = _killed_writer(prepared, "train.pt")
    assert TEMP_NAME.match(left.name) and left.stat().st_size == 1000
    keep = [prepared / ".notes.tmp", prepared / "train.pt.tmp", tiny_workspace / "tiny_idx/.mine.abcdefgh.tmp"]
    for path in keep:  # not fdd's temporary names, or outside data/
        path.write_text("the user's")
    env = _env()
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "stage", "ingest", "--workspace", str(tiny_workspace)],
        cwd=tiny_workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left.exists() and "removed 1 temporary file(s)" in result.stderr
    assert all(path.exists() for path in keep)


def test_remove_stale_temp_files_respects_the_name_pattern_and_age(tmp_path: Path) -> None:
    stale = tmp_path / "a/b/.synthetic.pt.x1y2z3_9.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"1")
    fresh = tmp_path / ".losses.csv.abcdefgh.tmp"
    fresh.write_bytes(b"1")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temp_files(tmp_path, older_than=60) == [stale]
    assert fresh.exists()
    assert remove_stale_temp_files(tmp_path) == [fresh]
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_scratch_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    code = (
        "from fdd.files import scratch_dir; import time; d = scratch_dir(); print(d.name, flush=True); time.sleep(300)"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=_env(TMPDIR=str(tmp_path)), stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    dead, alive = processes
    folders = [Path(p.stdout.readline().strip()) for p in processes]
    assert all(f.is_dir() and f.name.startswith(f"{SCRATCH_PREFIX}{p.pid}-") for f, p in zip(folders, processes))
    dead.kill()
    dead.wait(timeout=30)
    try:
        assert remove_stale_scratch_dirs(tmp_path) == [folders[0]]
        assert not folders[0].exists() and folders[1].exists()  # its owner still runs
    finally:
        alive.kill()
        alive.wait(timeout=30)
    with workspace_lock(tmp_path / "ws"):  # what every locked command does first (system temporary directory)
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_fdd_server_stops_its_prefect_server(sig: int, tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "server", "--port", str(port), "--workspace", str(tmp_path)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait(lambda: _answers(port), timeout=180, what="the Prefect server", process=process)
        children = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        assert children, "fdd server started no process"
        process.send_signal(sig)
        process.wait(timeout=60)
        assert _gone(children), f"left running after {signal.Signals(sig).name}: {children}"
        assert not _answers(port)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_temporary_prefect_server_dies_with_a_killed_run(tiny_workspace: Path) -> None:
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["synthesis"].update({"iterations": 100_000, "modes": ["vanilla"]})
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run"],
        cwd=tiny_workspace,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def server() -> list[int]:
            return [
                p.pid
                for p in psutil.Process(process.pid).children(recursive=True)
                if "uvicorn" in " ".join(p.cmdline())
            ]

        _wait(lambda: bool(server()), timeout=180, what="the temporary Prefect server", process=process)
        _wait(lambda: (tiny_workspace / "data/prepared/train.pt").exists(), timeout=180, what="ingest", process=process)
        pids = server()
        process.kill()  # SIGKILL: no atexit, no finally
        process.wait(timeout=30)
        assert _gone(pids), f"temporary Prefect server {pids} outlived the killed run"
    finally:
        if process.poll() is None:
            process.kill()


def test_stop_on_signals_ends_every_child(tmp_path: Path) -> None:
    """What `fdd serve` and `fdd sweep` run under: SIGTERM stops the command and every process it started."""
    code = textwrap.dedent("""
        import subprocess, sys, time
        from flows.processes import stop_on_signals
        with stop_on_signals():
            children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]) for _ in range(2)]
            grandchild = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
            print(" ".join(str(c.pid) for c in children + [grandchild]), flush=True)
            time.sleep(300)
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pids = [int(p) for p in process.stdout.readline().split()]
    _wait(lambda: len(psutil.Process(process.pid).children(recursive=True)) >= 4, timeout=30, what="the children")
    everything = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert set(pids) <= set(everything)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0 and _gone(everything), everything


@pytest.mark.slow
def test_sigterm_to_fdd_sweep_stops_its_workers_and_servers(tiny_workspace: Path) -> None:
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["synthesis"]["iterations"] = 100_000
    params["sweep"] = {
        "datasets": ["cmnist"],
        "ipcs": [2],
        "modes": ["vanilla"],
        "seeds": [0, 1],
        "n_workers": 1,
        "processes": True,
    }
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "sweep"],
        cwd=tiny_workspace,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def uvicorns() -> list[psutil.Process]:
            return [
                p for p in psutil.Process(process.pid).children(recursive=True) if "uvicorn" in " ".join(p.cmdline())
            ]

        # the run's temporary Prefect server, then a Dask worker process with its own one (a grandchild)
        _wait(lambda: len(uvicorns()) >= 2, timeout=240, what="the Dask worker's Prefect server", process=process)
        everything = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        assert process.returncode == 130, process.stderr.read()[-2000:]
        assert _gone(everything), f"left running: {everything}"
    finally:
        if process.poll() is None:
            process.kill()


def test_interrupt_threads_stops_the_interruptible_blocks_of_other_threads() -> None:
    """What an interrupted sweep does to its cells on Dask thread workers (flows.sweep.grid_flow)."""
    import threading

    from flows.processes import (
        MSG_THREAD_INTERRUPTED,
        ThreadInterrupted,
        allow_threads,
        interrupt_threads,
        interruptible,
    )

    started, outside, ended = threading.Barrier(3), threading.Event(), {}

    def work(name: str, block: bool) -> None:
        try:
            with interruptible() if block else contextlib.nullcontext():
                started.wait()
                while not outside.is_set():  # Python code, as a cell's loop between torch calls
                    time.sleep(0.01)
            ended[name] = "done"
        except ThreadInterrupted as exc:
            ended[name] = str(exc)

    threads = [threading.Thread(target=work, args=(name, name == "cell")) for name in ("cell", "other")]
    for thread in threads:
        thread.start()
    started.wait()
    try:
        with interruptible():  # the calling thread is never interrupted
            assert interrupt_threads() == 1
        threads[0].join(timeout=10)
        outside.set()
        threads[1].join(timeout=10)
        assert ended == {"cell": MSG_THREAD_INTERRUPTED, "other": "done"}
        assert interrupt_threads() == 0  # the block was left
        # a block that starts after the interrupt (a waiting cell that Dask starts on the freed thread)
        with pytest.raises(ThreadInterrupted), interruptible():
            pytest.fail("a block started after interrupt_threads ran")
    finally:
        allow_threads()
    with interruptible():  # a new sweep of the same process
        assert interrupt_threads() == 0
    allow_threads()


#: How long `fdd sweep` may take to end after SIGTERM / SIGINT with a cell in flight: the grace
#: period it is given (FDD_EXIT_GRACE_S) and a margin for Prefect recording the interrupted runs
#: on a loaded 2-core machine. Before the fix it took 30 s (Dask waiting for the cell's thread)
#: and, signalled as a process group, minutes (its Prefect server was gone).
SWEEP_EXIT_GRACE = 2.0
SWEEP_EXIT_BOUND = SWEEP_EXIT_GRACE + 13.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "group", "queued"),
    [
        (signal.SIGTERM, False, False),
        (signal.SIGTERM, True, False),
        (signal.SIGINT, True, False),
        (signal.SIGTERM, True, True),
    ],
    ids=[
        "sigterm",
        "sigterm-to-the-group-as-timeout-does",
        "sigint-to-the-group-as-ctrl-c-does",
        "sigterm-during-synthesis-with-a-cell-waiting-for-the-worker",
    ],
)
def test_an_interrupted_sweep_stops_its_cell_in_flight_at_once(
    sig: int, group: bool, queued: bool, tiny_workspace: Path
) -> None:
    """`fdd sweep` on Dask thread workers (the default), interrupted while one cell synthesizes and
    after another finished: it ends within the bound with 130 and its one line, and leaves no
    process, no lock, no temporary file, and the finished cell's record.

    ``queued``: one worker, and a third cell waits for it. Before the fix, once the interrupted
    cell had left the worker's thread, Dask started the waiting cell there and its synthesis ran
    on until Dask's 30 s were over (on the GPU: until `timeout -k 15` killed fdd, exit 137)."""
    from flows.cli import EXIT_INTERRUPTED

    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["synthesis"].update({"iterations": 100_000, "log_every": 100})
    params["sweep"] = {  # random-real finishes in a second; vanilla runs until the signal
        "datasets": ["cmnist"],
        "ipcs": [2],
        "modes": ["random-real", "vanilla", "cobra"] if queued else ["random-real", "vanilla"],
        "seeds": [0],
        "n_workers": 1 if queued else 2,  # queued: cobra waits for vanilla's worker
        "processes": False,
        "records": "records",
    }
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params))
    record = tiny_workspace / "records/cmnist-ipc2-dm-random-real-seed0.json"
    log = tiny_workspace / "sweep.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "sweep"],
            cwd=tiny_workspace,
            env=_env(FDD_EXIT_GRACE_S=str(SWEEP_EXIT_GRACE)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as under `timeout` or in a terminal
        )
    try:
        _wait(record.exists, timeout=300, what="the random-real cell's record", process=process)
        _wait(
            lambda: "vanilla: iteration 100/" in log.read_text(), timeout=120, what="the vanilla cell", process=process
        )
        everything = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        assert everything, "no temporary Prefect server"
        sent = time.monotonic()
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        try:
            process.wait(timeout=SWEEP_EXIT_BOUND + 120)  # the bound is asserted below, with the log
        except subprocess.TimeoutExpired:
            alive = [f"{p.pid} {p.name()} {p.status()}" for p in psutil.Process(process.pid).children(recursive=True)]
            pytest.fail(
                f"still running {SWEEP_EXIT_BOUND + 120:.0f} s after the signal ({alive}): {log.read_text()[-4000:]}"
            )
        seconds = time.monotonic() - sent
        text = log.read_text()
        assert process.returncode == EXIT_INTERRUPTED, text[-3000:]
        assert seconds < SWEEP_EXIT_BOUND, f"ended {seconds:.0f} s after the signal: {text[-3000:]}"
        assert "stopped: interrupted (SIGINT or SIGTERM)" in text
        assert _gone(everything, timeout=5), f"left running: {everything}"
        assert not (tiny_workspace / ".fdd.lock.owner").exists()
        with workspace_lock(tiny_workspace):  # the next fdd command can start
            pass
        assert json.loads(record.read_text())["row"]["status"] == "ok"
        assert not (tiny_workspace / "records/cmnist-ipc2-dm-vanilla-seed0.json").exists()
        assert sorted(p.name for p in (tiny_workspace / "records").iterdir()) == [record.name]
        assert "synthesize[cobra]" not in text, "a cell started after the interrupt"
        assert not [p for p in tiny_workspace.rglob(".*") if TEMP_NAME.match(p.name)], "a file was left half-written"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


STUCK_AFTER_INTERRUPT = textwrap.dedent(
    """
    import subprocess, sys, threading, time
    from flows.lock import workspace_lock
    from flows.processes import stop_on_signals

    with workspace_lock(sys.argv[1]):
        try:
            with stop_on_signals():
                print("ready", flush=True)
                time.sleep(120)
        except KeyboardInterrupt:
            pass
        # a shutdown that never ends, with a child started on the way
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {child.pid}", flush=True)
        stuck = threading.Thread(target=threading.Event().wait, name="stuck-shutdown")
        stuck.start()
        stuck.join()
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_shutdown_that_hangs_after_an_interrupt_is_bounded(sig: int, tmp_path: Path) -> None:
    """Under stop_on_signals, the first SIGINT / SIGTERM arms a watchdog: when stopping does not end
    within the exit grace plus INTERRUPT_SHUTDOWN_SECONDS, fdd names what still runs, prints its
    stopped line, stops its children, removes its lock owner note and leaves with 130."""
    from flows.cli import EXIT_INTERRUPTED
    from flows.lock import OWNER_NAME
    from flows.processes import EXIT_STOPPED, INTERRUPT_SHUTDOWN_SECONDS, MSG_STOPPED

    assert EXIT_STOPPED == EXIT_INTERRUPTED
    grace = 1.0
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_AFTER_INTERRUPT, str(tmp_path)],
        env=_env(FDD_EXIT_GRACE_S=str(grace)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        assert (tmp_path / OWNER_NAME).exists()
        sent = time.monotonic()
        process.send_signal(sig)
        child = int(process.stdout.readline().split()[1])
        out, err = process.communicate(timeout=grace + INTERRUPT_SHUTDOWN_SECONDS + 30)
        seconds = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_STOPPED, err
    assert grace + INTERRUPT_SHUTDOWN_SECONDS - 1 < seconds < grace + INTERRUPT_SHUTDOWN_SECONDS + 10, seconds
    assert "is still stopping (still running: " in err and "thread stuck-shutdown" in err
    assert err.rstrip().endswith(MSG_STOPPED)
    assert _gone([child], timeout=5), "the child started during the shutdown still runs"
    assert not (tmp_path / OWNER_NAME).exists()
    with workspace_lock(tmp_path):  # the OS released the lock with the process
        pass
