"""DVC experiments (`dvc exp run -S`, `dvc exp show`) and offline `dvc plots show` on tiny data."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.test_dvc import ROOT, _dvc

TEMPLATE = ROOT / ".dvc/plots/offline.html"


class _Resources(HTMLParser):
    """Every URL the page would load: script/img/iframe src, link href."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("src", "href", "data"):
            if values.get(key) and tag in ("script", "img", "iframe", "link", "object", "embed", "source"):
                self.urls.append(values[key])
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1


def _external(html: str) -> list[str]:
    parser = _Resources()
    parser.feed(html)
    return [url for url in parser.urls if url.startswith(("http:", "https:", "//"))]


def _plot_specs(ws: Path) -> dict[str, dict]:
    """``dvc plots show --json``: the rendered Vega-Lite spec of every plot file, by path."""
    shown = _dvc(["plots", "show", "--json"], ws)
    assert shown.returncode == 0, shown.stderr[-3000:]
    return {path: items[0]["content"] for path, items in json.loads(shown.stdout)["data"].items()}


def _encodings(spec: dict) -> list[dict]:
    """Every ``encoding`` block of a spec, its layers' included."""
    found = [spec["encoding"]] if "encoding" in spec else []
    for layer in spec.get("layer", []):
        found += _encodings(layer)
    return found


def _check_plot_specs(specs: dict[str, dict], modes: list[str]) -> None:
    """The group-recall bars grow along x (recall, a number) per y category (class / group);
    the loss curves put the iteration on x and the loss on y."""
    for mode in modes:
        recall = specs[f"data/plots/group_recall/{mode}.csv"]
        assert recall["mark"]["type"] == "bar"
        x, y = recall["encoding"]["x"], recall["encoding"]["y"]
        assert (x["field"], x["type"]) == ("recall", "quantitative"), x
        assert (y["field"], y["type"]) == ("cell", "nominal"), y
        rows = recall["data"]["values"]
        assert rows and all(0.0 <= float(row["recall"]) <= 100.0 for row in rows)
        assert all(" / " in row["cell"] for row in rows)
        losses = specs[f"data/plots/losses/{mode}.csv"]
        pairs = {(e["x"]["field"], e["y"]["field"]) for e in _encodings(losses) if "x" in e and "y" in e}
        assert pairs == {("iteration", "loss")}, pairs


def test_dvc_plot_specs_put_the_numbers_on_the_value_axis(tmp_path: Path) -> None:
    """dvc.yaml's plots, rendered by DVC from files shaped like the report's (fast: no pipeline run)."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert _dvc(["init", "-q"], tmp_path).returncode == 0
    for mode in ("vanilla", "cobra"):
        (tmp_path / "data/plots/group_recall").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data/plots/losses").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"data/plots/group_recall/{mode}.csv").write_text(
            "cell,group,class,recall\n0 / red,red,0,97.5\n0 / green,green,0,12.0\n1 / red,red,1,88.25\n"
        )
        (tmp_path / f"data/plots/losses/{mode}.csv").write_text("iteration,loss\n1,3.5\n2,2.75\n3,2.5\n")
    _check_plot_specs(_plot_specs(tmp_path), ["vanilla", "cobra"])


def test_offline_template_inlines_vega_and_loads_nothing_remote() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in html and "{scripts}" not in html  # dvc-render adds its CDN scripts at {scripts}
    parser = _Resources()
    parser.feed(html)
    assert parser.urls == [] and parser.inline_scripts == 3
    for library in ("vega 5.20.2", "vega-lite 5.2.0", "vega-embed 6.18.2"):
        assert f"/* {library} */" in html
    assert "html_template = plots/offline.html" in (ROOT / ".dvc/config").read_text()


@pytest.mark.slow
def test_dvc_exp_run_show_and_offline_plots(tiny_workspace: Path) -> None:
    ws = tiny_workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["synthesis"]["modes"] = ["vanilla"]  # one mode: fewer stage processes
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("fdd", "tasks", "flows"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, ws / name)

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "test@example.invalid")
    git("config", "user.name", "fdd test")
    assert _dvc(["init", "-q"], ws).returncode == 0
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")
    shutil.copytree(ROOT / ".dvc/plots", ws / ".dvc/plots")
    (ws / ".gitignore").write_text("__pycache__/\n.prefect/\n/data/raw/\n")
    git("add", "-A")
    git("commit", "-q", "-m", "baseline")

    run = _dvc(["exp", "run", "-S", "audit.epochs=5", "-n", "epochs5"], ws)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    shown = _dvc(["exp", "show", "--json"], ws)
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads((ws / "data/metrics.json").read_text())
    experiments = [
        exp
        for commit in json.loads(shown.stdout)
        for exp in (commit.get("experiments") or [])
        if exp.get("name") == "epochs5"
    ]
    assert len(experiments) == 1, shown.stdout[:3000]
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["audit"]["epochs"] == 5
    recorded = data["metrics"]["data/metrics.json"]["data"]
    assert set(recorded) == {"vanilla"}
    assert recorded["vanilla"]["accuracy"] == pytest.approx(metrics["vanilla"]["accuracy"])
    assert recorded["vanilla"]["deo_m"] == pytest.approx(metrics["vanilla"]["deo_m"])

    plots = _dvc(["plots", "show", "-o", "plots_out"], ws)
    assert plots.returncode == 0, plots.stderr[-3000:]
    html = (ws / "plots_out/index.html").read_text(encoding="utf-8")
    assert _external(html) == []
    assert "cdn.jsdelivr.net" not in html
    assert html.count("vegaEmbed(") >= 2  # the loss curves and the group recall plots
    assert "/* vega-embed 6.18.2 */" in html
    _check_plot_specs(_plot_specs(ws), ["vanilla"])  # the files the report stage wrote
