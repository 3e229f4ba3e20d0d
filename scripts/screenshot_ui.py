"""Screenshots of a pipeline run in the Prefect UI, taken with headless Chromium.

Starts a Prefect server (UI on) on a free loopback port with a throw-away Prefect home,
runs ``fdd run`` against it on a tiny generated dataset (the test suite's toy IDX
data, a few seconds), then saves with ``chromium --headless --screenshot``:

* ``docs/img/ui_flow_run.png``: the flow run page (task graph with each task's artifacts);
* ``docs/img/ui_report.png``: the run's markdown report artifact, figures included;
* ``docs/img/ui_artifacts.png``: the artifacts list (report, tables, progress).

Usage: ``python scripts/screenshot_ui.py [--out docs/img]`` (needs Debian's
``chromium`` package: ``apt-get install chromium``). Stops the server at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_PARAMS, write_tiny_idx  # noqa: E402  (after the repository root joins sys.path)

DEMO = {**TINY_PARAMS, "synthesis": {**TINY_PARAMS["synthesis"], "iterations": 30, "ipc": 4, "log_every": 5},
        "audit": {**TINY_PARAMS["audit"], "epochs": 20}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(client: httpx.Client, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {server.returncode}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the Prefect server did not answer in time")


def screenshot(url: str, path: Path, *, size: str, budget_ms: int) -> None:
    """One headless Chromium screenshot of ``url`` after ``budget_ms`` of virtual time."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=180,
        )
    print(f"wrote {path} ({url})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/img"), help="folder of the PNG files")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time Chromium gives the UI to render")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fdd-ui-") as tmp:
        workspace = Path(tmp) / "workspace"
        write_tiny_idx(workspace / "tiny_idx")
        (workspace / "params.yaml").write_text(yaml.safe_dump(DEMO, sort_keys=False))
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect-home"), "PREFECT_API_URL": f"{base}/api",
               "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
               "PREFECT_UI_API_URL": f"{base}/api", "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT)
        try:
            client = httpx.Client(base_url=f"{base}/api", timeout=10)
            _wait_healthy(client, server)
            subprocess.run([sys.executable, "-m", "flows.cli", "run", "--params", str(workspace / "params.yaml"),
                            "--workspace", str(workspace)], env=env, cwd=ROOT, check=True, timeout=600)
            runs = client.post("/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()
            run_id = runs[0]["id"]
            artifacts = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
            report = next(a for a in artifacts if a["key"] == "report")
            screenshot(f"{base}/runs/flow-run/{run_id}", out / "ui_flow_run.png",
                       size="1400,1000", budget_ms=args.budget_ms)
            screenshot(f"{base}/artifacts", out / "ui_artifacts.png", size="1400,1100", budget_ms=args.budget_ms)
            screenshot(f"{base}/artifacts/artifact/{report['id']}", out / "ui_report.png",
                       size="1400,2600", budget_ms=args.budget_ms)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
