"""Screenshots of a real pipeline run in the Prefect UI, taken with headless Chromium.

Starts a Prefect server (UI on) on a free loopback port with a throw-away Prefect home,
runs the README's ``fdd run`` against it (``params.yaml``: C-MNIST foreground, vanilla vs
cobra at the quick CPU preset, data fetch included) in a fresh workspace, then saves with
``chromium --headless --screenshot``:

* ``docs/img/ui_flow_run.png``: the flow run page (task graph with each task's artifacts);
* ``docs/img/ui_report.png``: the run's markdown report artifact (results table, loss curves,
  synthetic grids and recall heatmaps);
* ``docs/img/ui_artifacts.png``: the artifacts list (report, tables, progress), with descriptions.

Usage: ``python scripts/screenshot_ui.py [--out docs/img] [--params params.yaml] [--set KEY=VALUE ...]``
(needs Debian's ``chromium`` package: ``apt-get install chromium``; about two minutes on a
2-core CPU). Stops the server at the end. ``tests/test_ui.py`` uses :func:`rendered_dom`.
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

ROOT = Path(__file__).resolve().parent.parent
# headless, and no background connections: on a machine without internet Chromium otherwise
# retries Google's hosts at every start
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
ERR_NO_CHROMIUM = "chromium is not installed (Debian: apt-get install chromium)"


def chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], *, budget_ms: int) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    if browser is None:
        raise SystemExit(ERR_NO_CHROMIUM)
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=240,
        )


def rendered_dom(url: str, *, budget_ms: int = 30000) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts for ``budget_ms`` of virtual time."""
    return _chromium(["--dump-dom", url], budget_ms=budget_ms).stdout


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
    _chromium([f"--window-size={size}", f"--screenshot={path}", url], budget_ms=budget_ms)
    print(f"wrote {path} ({url})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/img"), help="folder of the PNG files")
    parser.add_argument(
        "--params", default=str(ROOT / "params.yaml"), help="the run's configuration (default: params.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed on to fdd run (repeatable)",
    )
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time Chromium gives the UI to render")
    args = parser.parse_args()
    if chromium() is None:
        raise SystemExit(ERR_NO_CHROMIUM)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fdd-ui-") as tmp:
        workspace = Path(tmp) / "workspace"
        env = {
            **os.environ,
            "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
            "PREFECT_API_URL": f"{base}/api",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": f"{base}/api",
            "PYTHONPATH": str(ROOT),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            client = httpx.Client(base_url=f"{base}/api", timeout=10)
            _wait_healthy(client, server)
            sets = [item for pair in args.overrides for item in ("--set", pair)]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "flows.cli",
                    "run",
                    "--params",
                    args.params,
                    "--workspace",
                    str(workspace),
                    *sets,
                ],
                env=env,
                cwd=ROOT,
                check=True,
                timeout=1200,
            )
            runs = client.post("/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()
            run_id = runs[0]["id"]
            artifacts = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
            report = next(a for a in artifacts if a["key"] == "report")
            screenshot(
                f"{base}/runs/flow-run/{run_id}", out / "ui_flow_run.png", size="1400,1000", budget_ms=args.budget_ms
            )
            screenshot(f"{base}/artifacts", out / "ui_artifacts.png", size="1400,1100", budget_ms=args.budget_ms)
            screenshot(
                f"{base}/artifacts/artifact/{report['id']}",
                out / "ui_report.png",
                size="1400,5000",
                budget_ms=args.budget_ms,
            )
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
