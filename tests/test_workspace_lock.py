"""One run per workspace: the lock is taken by the flows themselves, so a scheduled run of
`fdd serve` (a flow run in the runner's own process) cannot write the data/ of a manual
`fdd run`, and `fdd run` (which holds it already) is not blocked by its own flow."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from flows.deployments import build_deployments
from flows.lock import ERR_BUSY, WorkspaceBusyError, workspace_lock

ROOT = Path(__file__).resolve().parent.parent
HOLD = (
    "import sys, time\n"
    "from flows.lock import workspace_lock\n"
    "with workspace_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)
SCHEDULES = [
    {"name": "nightly-cobra", "flow": "distill", "mode": "cobra", "cron": "0 3 * * *"},
    {"name": "weekly-compare", "flow": "compare", "cron": "0 6 * * 1"},
    {
        "name": "weekly-sweep",
        "flow": "sweep",
        "cron": "0 7 * * 1",
        "parameters": {"sweep": {"ipcs": [2], "modes": ["cobra"], "seeds": [0]}},
    },
]
BUSY_PREFIX = ERR_BUSY.split("{")[1].split("}")[1]  # " is in use by another fdd run ("


@pytest.fixture
def manual_run(tiny_workspace: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the workspace lock, as a manual `fdd run` does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tiny_workspace)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_lock_is_reentrant_in_its_process_and_exclusive_across_processes(
    manual_run: subprocess.Popen, tiny_workspace: Path
) -> None:
    with pytest.raises(WorkspaceBusyError, match=f"pid {manual_run.pid} on "):
        with workspace_lock(tiny_workspace):
            pass
    tmp_path = tiny_workspace / "another"
    with workspace_lock(tmp_path):
        with workspace_lock(tmp_path / "."):  # the same workspace, nested: goes on
            assert (tmp_path / ".fdd.lock.owner").exists()
        assert (tmp_path / ".fdd.lock.owner").exists()  # still held by the outer block
        out = subprocess.run(
            [sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert out.returncode == 1 and "WorkspaceBusyError" in out.stderr and BUSY_PREFIX in out.stderr
    assert not (tmp_path / ".fdd.lock.owner").exists()
    out = subprocess.run(
        [sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0 and out.stdout.strip() == "held"  # released by the outermost block


def test_every_served_flow_refuses_a_workspace_in_use(tiny_workspace: Path, manual_run: subprocess.Popen) -> None:
    """The function each deployment's entrypoint runs (what `fdd serve`'s runner calls, with the
    deployment's parameters) fails before writing anything while another run holds the lock."""
    from prefect.flows import load_flow_from_entrypoint

    from flows.configuration import load_config

    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    config = load_config(tiny_workspace / "params.yaml", overrides={"schedules": SCHEDULES})
    deployments = build_deployments(config, str(tiny_workspace))
    assert sorted(d.name for d in deployments) == sorted(s["name"] for s in SCHEDULES)
    before = sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*"))
    for deployment in deployments:
        served = load_flow_from_entrypoint(deployment.entrypoint)
        with pytest.raises(WorkspaceBusyError) as info:
            served.fn(**served.validate_parameters(deployment.parameters))
        assert f"workspace {tiny_workspace} is in use by another fdd run (pid {manual_run.pid} on " in str(info.value)
    assert sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*")) == before  # no data/ written
    assert yaml.safe_load((tiny_workspace / "params.yaml").read_text()) == params


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, *, timeout: float, what: str, processes: tuple[subprocess.Popen, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{what}: {process.args[:4]} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.slow
def test_a_scheduled_run_fails_while_a_manual_run_holds_the_workspace(
    tiny_workspace: Path, manual_run: subprocess.Popen, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real server, `fdd serve`, and the deployment run now (as its schedule would): the flow
    run fails naming the manual run, and the workspace's data/ stays untouched."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["schedules"] = [SCHEDULES[0]]
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    logs = tmp_path_factory.mktemp("logs")
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_API_URL": api,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(ROOT),
    }
    from flows import cli

    server = serve = None
    try:
        server = subprocess.Popen(
            cli.server_command("127.0.0.1", port),
            env=env,
            cwd=ROOT,
            stdout=(logs / "server.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        http = httpx.Client(base_url=api, timeout=10)

        def healthy() -> bool:
            try:
                return http.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, timeout=90, what="the Prefect server", processes=(server,))
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "serve",
                "--params",
                str(tiny_workspace / "params.yaml"),
                "--workspace",
                str(tiny_workspace),
                "--api-url",
                api,
            ],
            env=env,
            cwd=ROOT,
            stdout=(logs / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        name = "fdd-distill/nightly-cobra"
        _wait(
            lambda: http.get(f"/deployments/name/{name}").status_code == 200,
            timeout=60,
            what="the deployment",
            processes=(server, serve),
        )
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", name, "--watch", "--watch-timeout", "180"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
        flow_run = http.get(f"/flow_runs/{run_id}").json()
        serve_log = (logs / "serve.log").read_text()
        assert flow_run["state"]["type"] == "FAILED", flow_run["state"]
        assert "WorkspaceBusyError" in serve_log and f"(pid {manual_run.pid} on " in serve_log, serve_log[-3000:]
        assert not (tiny_workspace / "data").exists()  # the scheduled run wrote nothing
        assert manual_run.poll() is None  # and the manual run goes on
    finally:
        _stop(serve)
        _stop(server)
