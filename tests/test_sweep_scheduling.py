"""Where and when sweep cells run on Dask, checked on the CPU.

The multi-GPU placement (issue 20) without GPUs: local cluster workers declare fake GPU
resources (``GPU=1`` each, cells on ``cpu:<k>``), two threads of one worker share one
fake GPU, and a cluster started separately (``dask scheduler`` / ``dask worker``
processes on loopback, as ``docs/operations.md`` describes) loses a worker mid-cell.
Each cell's row records its device, worker and start and end times, read back here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from flows.configuration import load_config
from flows.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One temporary Prefect server for the module: its API URL and result storage folder."""
    storage = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            yield str(PREFECT_API_URL.value()), storage


def _cells(workspace: Path) -> pd.DataFrame:
    cells = pd.read_csv(workspace / "data/sweep/cells.csv", dtype={"worker": str})
    cells["started"] = pd.to_datetime(cells["started"])
    cells["finished"] = pd.to_datetime(cells["finished"])
    return cells


def overlapping(cells: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(worker, cell, cell) for every two cells of one worker whose [started, finished] overlap."""
    found = []
    for worker, group in cells.groupby("worker"):
        spans = sorted(zip(group["started"], group["finished"], group["seed"].astype(str)))
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                found.append((str(worker), first, second))
    return found


def test_overlap_check_finds_two_cells_at_once_on_one_worker() -> None:
    """The check the tests below rely on: it must flag a worker running two cells at once."""
    t = pd.Timestamp("2026-01-01T00:00:00Z")
    s = pd.Timedelta(seconds=1)
    cells = pd.DataFrame(
        {
            "worker": ["0", "0", "1", "0"],
            "seed": [0, 1, 2, 3],
            "started": [t, t + 2 * s, t, t + 5 * s],
            "finished": [t + 2 * s, t + 4 * s, t + 9 * s, t + 6 * s],
        }
    )
    assert overlapping(cells) == []  # back to back on worker 0, worker 1 alone
    cells.loc[3, "started"] = t + 3 * s
    assert overlapping(cells) == [("0", "1", "3")]


@pytest.mark.slow
def test_fake_gpus_one_cell_per_worker_on_its_device(tiny_workspace: Path, prefect_api: tuple[str, Path]) -> None:
    """Four cells on a local cluster of two fake GPUs: each worker holds GPU=1, runs its cells
    one at a time, each on its own device (worker k on cpu:k, as cuda:k on a GPU host)."""
    overrides = {
        "sweep": {
            "datasets": ["cmnist"],
            "ipcs": [2],
            "backbones": ["dm"],
            "modes": ["cobra"],
            "seeds": [0, 1, 2, 3],
            "n_workers": 4,
            "processes": False,
        }
    }
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    result = run_sweep(config, workspace=str(tiny_workspace), gpus=2)
    assert result["cells"] == 4 and result["failed"] == 0
    cells = _cells(tiny_workspace)
    assert set(cells["status"]) == {"ok"}
    assert set(cells["worker"]) == {"0", "1"}  # min(n_workers, GPUs) = 2 workers, both used
    assert list(cells["device"]) == [f"cpu:{w}" for w in cells["worker"]]  # each cell on its worker's device
    assert overlapping(cells) == []
    assert (cells["started"] < cells["finished"]).all()
    for _, row in cells.iterrows():  # the synthesis ran on the recorded device
        timing = (
            tiny_workspace / f"data/sweep/cmnist/cells/ipc2-dm-cobra-seed{row['seed']}/data/synthetic/cobra/timing.json"
        )
        assert f'"device": "{row["device"]}"' in timing.read_text()


@pytest.mark.slow
def test_two_threads_sharing_one_gpu_never_run_two_cells_at_once(
    tiny_workspace: Path, prefect_api: tuple[str, Path]
) -> None:
    """A cluster given by address whose one worker has two threads but one GPU (GPU=1): the
    sweep sees the declared resource, asks GPU=1 per cell, and the cells run one after the other
    (without the resource request both threads would start a cell at once)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 1}, dashboard_address=None
    ) as cluster:
        overrides = {
            "sweep": {
                "datasets": ["cmnist"],
                "ipcs": [2],
                "backbones": ["dm"],
                "modes": ["cobra"],
                "seeds": [0, 1],
                "address": cluster.scheduler_address,
            }
        }
        config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
        run_sweep(config, workspace=str(tiny_workspace))
    cells = _cells(tiny_workspace)
    assert len(cells) == 2 and set(cells["status"]) == {"ok"} and cells["worker"].nunique() == 1
    assert set(cells["device"]) == {"cpu"}  # a cluster started elsewhere: the device its worker sees
    assert overlapping(cells) == []


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
        time.sleep(0.2)


@pytest.mark.slow
def test_a_separately_started_cluster_and_a_worker_killed_mid_cell(
    tiny_workspace: Path, prefect_api: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`dask scheduler` and `dask worker` processes on loopback, with what docs/operations.md says
    workers need (the Prefect API, the shared result storage, fdd importable, the workspace's
    path); `sweep.address` points to the scheduler. Worker w0 is killed (SIGKILL) while its cell
    synthesises: the cell runs again on worker w1, and both cells finish."""
    from distributed import Client

    api, storage = prefect_api
    logs = tmp_path_factory.mktemp("dask-logs")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": api,
        "PREFECT_LOCAL_STORAGE_PATH": str(storage),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "OMP_NUM_THREADS": "1",
    }
    address = f"tcp://127.0.0.1:{_free_port()}"
    worker_args = ["--nthreads", "1", "--no-nanny", "--resources", "GPU=1", "--no-dashboard"]

    def start(*args: str, log: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            env=env,
            cwd=tiny_workspace,
            stdout=(logs / log).open("w"),
            stderr=subprocess.STDOUT,
        )

    overrides = {
        "sweep": {
            "datasets": ["cmnist"],
            "ipcs": [2],
            "backbones": ["dm"],
            "modes": ["cobra"],
            "seeds": [0, 1],
            "address": address,
        },
        "synthesis": {"iterations": 40, "checkpoint_every": 2},
    }  # a few seconds per cell; a checkpoint every 2
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    processes: dict[str, subprocess.Popen] = {}
    killed: dict[str, object] = {}
    try:
        processes["scheduler"] = start(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            address.rsplit(":", 1)[1],
            "--no-dashboard",
            log="scheduler.log",
        )
        processes["w0"] = start("worker", address, "--name", "w0", *worker_args, log="w0.log")
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)

            def kill_w0_mid_cell() -> None:  # once a cell has saved its first checkpoint, w0 is inside it
                cells = tiny_workspace / "data/sweep/cmnist/cells"
                _wait(
                    lambda: any(cells.glob("*/data/synthetic/cobra/checkpoint.pt")),
                    timeout=240,
                    what="a cell's first checkpoint",
                    processes=tuple(processes.values()),
                )
                killed["cell"] = next(cells.glob("*/data/synthetic/cobra/checkpoint.pt")).parts[-5]
                processes["w1"] = start("worker", address, "--name", "w1", *worker_args, log="w1.log")
                killed["at"] = pd.Timestamp.now(tz="UTC")
                processes["w0"].send_signal(signal.SIGKILL)

            def guarded() -> None:
                try:
                    kill_w0_mid_cell()
                except BaseException as exc:  # noqa: BLE001 - reported by the assertions below, with the logs
                    killed["error"] = exc

            killer = threading.Thread(target=guarded)
            killer.start()
            result = run_sweep(config, workspace=str(tiny_workspace))
            killer.join(timeout=60)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    logs_text = "\n".join(f"{p.name}:\n{p.read_text()[-2000:]}" for p in sorted(logs.iterdir()))
    assert "at" in killed, f"{killed.get('error')}\n{logs_text}"
    assert processes["w0"].returncode == -signal.SIGKILL
    assert result["cells"] == 2 and result["failed"] == 0, logs_text
    cells = _cells(tiny_workspace).set_index("seed")
    assert set(cells["status"]) == {"ok"} and set(cells["device"]) == {"cpu"}
    victim = cells.loc[int(killed["cell"].rsplit("seed", 1)[1])]
    assert victim["worker"] == "w1" and victim["started"] > killed["at"]  # run again, on the other worker
    assert set(cells["worker"]) <= {"w0", "w1"}
    assert overlapping(cells.reset_index()) == []
