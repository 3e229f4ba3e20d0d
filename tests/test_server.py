"""A real Prefect server on loopback, `fdd serve` registering a scheduled deployment,
`prefect deployment run` triggering it, and the run's artifacts read back from the API."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fdd.config import ConfigError
from flows import cli
from flows.configuration import parse_params as parse_config
from flows.deployments import (
    ERR_BAD_PARAMETERS,
    ERR_NO_SCHEDULES,
    ERR_UNKNOWN_SCHEDULE,
    build_deployments,
    deployment_parameters,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEDULE = {"name": "test-cobra", "flow": "distill", "mode": "cobra", "cron": "0 3 * * *", "timezone": "Europe/Paris"}


def test_schedules_become_cron_deployments_with_their_parameters(tmp_path: Path) -> None:
    config = parse_config(
        {
            "schedules": [
                SCHEDULE,
                {"name": "weekly", "flow": "compare", "cron": "0 6 * * 1", "parameters": {"synthesis": {"ipc": 5}}},
            ],
        }
    )
    nightly, weekly = build_deployments(config, str(tmp_path))
    assert (nightly.name, weekly.name) == ("test-cobra", "weekly")
    schedule = nightly.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 3 * * *", "Europe/Paris")
    assert nightly.parameters["mode"] == "cobra" and nightly.parameters["workspace"] == str(tmp_path.resolve())
    assert (
        nightly.parameters["config"]["synthesis"]["ipc"] == 10 and weekly.parameters["config"]["synthesis"]["ipc"] == 5
    )
    assert weekly.parameters["config"]["schedules"] == [] and "mode" not in weekly.parameters
    assert nightly.entrypoint == "flows.pipeline.distill_flow"
    only = build_deployments(config, str(tmp_path), only=["weekly"])
    assert [d.name for d in only] == ["weekly"]


def test_bad_schedules_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=ERR_NO_SCHEDULES.format(params="p.yaml").split(":")[0]):
        build_deployments(parse_config({}), str(tmp_path), params="p.yaml")
    config = parse_config({"schedules": [SCHEDULE]})
    with pytest.raises(ConfigError) as info:
        build_deployments(config, str(tmp_path), only=["nope"], params="p.yaml")
    assert str(info.value) == ERR_UNKNOWN_SCHEDULE.format(name="nope", params="p.yaml", known=["test-cobra"])
    bad = parse_config({"schedules": [{**SCHEDULE, "parameters": {"synthesis": {"ipc": 0}}}]})
    with pytest.raises(
        ConfigError,
        match=ERR_BAD_PARAMETERS.split("{error}")[0].format(name="test-cobra").replace("[", r"\[").replace("]", r"\]"),
    ):
        deployment_parameters(bad, bad.schedules[0], str(tmp_path))
    # a distill schedule whose mode the backbone lacks is refused when the deployments are built
    wrong_mode = parse_config(
        {"schedules": [{**SCHEDULE, "mode": "cobra-w2", "parameters": {"synthesis": {"backbone": "dc"}}}]}
    )
    with pytest.raises(ConfigError, match="synthesis.backbone='dc' supports modes"):
        build_deployments(wrong_mode, str(tmp_path))
    for broken, key in (
        ({**SCHEDULE, "cron": "0 3 * *"}, "cron"),
        ({**SCHEDULE, "flow": "train"}, "flow"),
        ({**SCHEDULE, "extra": 1}, "extra"),
        ({**SCHEDULE, "timezone": "Mars/Base"}, "timezone"),
    ):
        with pytest.raises(ConfigError, match=f"schedules.0.{key}"):
            parse_config({"schedules": [broken]})
    with pytest.raises(ConfigError, match="more than once"):
        parse_config({"schedules": [SCHEDULE, SCHEDULE]})


def test_fdd_serve_refuses_without_schedules_or_server(
    tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tiny_workspace / ".prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    params = str(tiny_workspace / "params.yaml")
    common = ["--params", params, "--workspace", str(tiny_workspace)]
    assert cli.main(["serve", *common]) == 2
    assert ERR_NO_SCHEDULES.format(params=params) in capsys.readouterr().err
    raw = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump({**raw, "schedules": [SCHEDULE]}))
    url = f"http://127.0.0.1:{_free_port()}/api"  # nothing listens there
    assert cli.main(["serve", *common, "--api-url", url]) == 4
    assert cli.ERR_NO_API.format(url=url) in capsys.readouterr().err
    assert "PREFECT_API_URL" not in os.environ


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
def test_server_serve_deployment_run_and_artifacts(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["schedules"] = [SCHEDULE]
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
        name = "fdd-distill/test-cobra"
        _wait(
            lambda: http.get(f"/deployments/name/{name}").status_code == 200,
            timeout=60,
            what="the deployment",
            processes=(server, serve),
        )
        deployment = http.get(f"/deployments/name/{name}").json()
        schedule = deployment["schedules"][0]["schedule"]
        assert (schedule["cron"], schedule["timezone"]) == ("0 3 * * *", "Europe/Paris")
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", name, "--watch", "--watch-timeout", "180"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + (logs / "serve.log").read_text()[-3000:]
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
        flow_run = http.get(f"/flow_runs/{run_id}").json()
        assert flow_run["deployment_id"] == deployment["id"] and flow_run["state"]["type"] == "COMPLETED", flow_run
        assert flow_run["parameters"]["mode"] == "cobra"
        runs = http.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}).json()
        assert {r["state"]["type"] for r in runs if r["id"] != run_id} <= {"SCHEDULED"}  # the cron's next runs
        artifacts = http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        by_key = {a["key"]: a for a in artifacts if a["key"]}
        assert {"report", "comparison", "metrics-cobra", "synthesis-cobra"} <= set(by_key), sorted(by_key)
        assert by_key["report"]["type"] == "markdown" and "DEO_M" in by_key["report"]["data"]
        assert by_key["comparison"]["type"] == "table"
        assert by_key["synthesis-cobra"]["type"] == "progress" and float(by_key["synthesis-cobra"]["data"]) == 100.0
        # the UI's report carries the figures inline (loss curves, frontier, grid, heatmap) as decodable PNGs
        inline = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", by_key["report"]["data"])
        assert len(inline) == 4 and all(base64.b64decode(data).startswith(b"\x89PNG") for data in inline)
        # report.md links the same PNG files, relative to data/report/
        report = tiny_workspace / "data/report"
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report / "report.md").read_text())
        assert sorted(links) == [
            "../audit/cobra/group_recall.png",
            "../synthetic/cobra/grid.png",
            "frontier.png",
            "loss_curves.png",
        ]
        for link in links:
            assert (report / link).read_bytes().startswith(b"\x89PNG"), link
    finally:
        _stop(serve)
        _stop(server)
    assert server.poll() is not None and serve is not None and serve.poll() is not None
