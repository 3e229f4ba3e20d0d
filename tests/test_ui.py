"""A run's report artifact as the Prefect UI renders it: a real `prefect server` (UI on), a tiny
`fdd run` reporting to it, and the artifact page loaded in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from flows import cli
from scripts.screenshot_ui import chromium, rendered_dom
from tests.test_server import _free_port, _stop, _wait

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = chromium()


class _Page(HTMLParser):
    """The rendered page's tables (as rows of cell texts) and images (their src)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def test_report_artifact_renders_its_table_and_figures_in_the_prefect_ui(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("logs")
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_API_URL": f"{base}/api",
        "PREFECT_UI_API_URL": f"{base}/api",
        "PREFECT_UI_ENABLED": "true",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }
    server = None
    try:
        server = subprocess.Popen(
            cli.server_command("127.0.0.1", port),
            env=env,
            cwd=ROOT,
            stdout=(logs / "server.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        http = httpx.Client(base_url=f"{base}/api", timeout=10)

        def healthy() -> bool:
            try:
                return http.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, timeout=120, what="the Prefect server", processes=(server,))
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "run",
                "--params",
                str(tiny_workspace / "params.yaml"),
                "--workspace",
                str(tiny_workspace),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        flow_run = http.post("/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()[0]
        artifacts = http.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}
        ).json()
        by_key = {a["key"]: a for a in artifacts if a["key"]}
        for key in ("synthesis-vanilla", "synthesis-cobra"):  # the progress bars say what they count
            assert by_key[key]["type"] == "progress" and "iterations" in (by_key[key]["description"] or ""), by_key[key]
        # every artifact fdd publishes (keyed; Prefect's own result records have no key) says what it is
        undescribed = [(a["key"], a["type"]) for a in artifacts if a["key"] and not a["description"]]
        assert not undescribed, undescribed

        page = _Page()
        page.feed(rendered_dom(f"{base}/artifacts/artifact/{by_key['report']['id']}"))
        results = [t for t in page.tables if t and "mode" in t[0] and any("DEO_M" in cell for cell in t[0])]
        assert results, f"no results table among {len(page.tables)} tables: {[t[:1] for t in page.tables]}"
        modes = [row[0] for row in results[0][1:]]
        assert modes == ["vanilla", "cobra"], results[0]
        figures = [src for src in page.images if src.startswith("data:image/png;base64,")]
        assert len(figures) == 6, page.images  # loss curves, each mode's grid and recall heatmap, the frontier
    finally:
        _stop(server)
    assert server is not None and server.poll() is not None
