"""The wheel alone makes a working fdd: built, installed in a fresh virtual environment that
cannot see the source tree, then `fdd --help`, `fdd init DIR` and a tiny run in DIR.

The fresh environment gets the dependencies (torch, Prefect, DVC, ...) from the environment
running the tests through a ``.pth`` line naming its site-packages. Paths added that way are
not site directories, so the ``.pth`` files inside them (among them the editable install of
this checkout) are not run: ``fdd``, ``flows`` and ``tasks`` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from fdd.config import deep_merge
from tests.conftest import TINY_PARAMS, write_tiny_idx

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(
    args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (no build/ or egg-info left in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("fdd", "flows", "tasks"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source],
        cwd=out,
        env=dict(os.environ),
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (path,) = out.glob("fdd-*.whl")
    return path


def test_wheel_carries_every_package_and_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "fdd").rglob("__init__.py"))
    assert "fdd/distillation/backbones" in packages  # the nested subpackage the old wheel lacked
    for package in [*packages, "flows", "tasks"]:
        assert f"{package}/__init__.py" in names, package
    presets = sorted(p.name for p in (ROOT / "flows/presets").glob("*.yaml"))
    assert presets and all(f"flows/presets/{p}" in names for p in presets)
    assert {"flows/templates/params.yaml", "flows/templates/dvc.yaml.template", "flows/templates/dvcignore"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)


def test_installed_wheel_inits_a_workspace_and_runs_there(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env={})
    Path(site.stdout.strip(), "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"  # neither the checkout nor a parent of it
    outside.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
    }
    where = _run(
        [
            python,
            "-c",
            "import fdd, flows, tasks; print(fdd.__file__, flows.__file__, tasks.__file__, fdd.__version__)",
        ],
        cwd=outside,
        env=env,
    )
    assert where.returncode == 0, where.stderr[-3000:]
    *files, version = where.stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in files), where.stdout  # the wheel, not the checkout
    assert version == "0.1.0"

    helped = _run(["fdd", "--help"], cwd=outside, env=env)
    assert helped.returncode == 0 and "init" in helped.stdout and "run" in helped.stdout, helped.stderr[-2000:]

    inited = _run(["fdd", "init", "ws"], cwd=outside, env=env)
    assert inited.returncode == 0, inited.stderr[-2000:]
    ws = outside / "ws"
    assert (ws / "params.yaml").read_text() == (ROOT / "flows/templates/params.yaml").read_text()
    assert "fdd stage ingest" in (ws / "dvc.yaml").read_text()
    again = _run(["fdd", "init", "ws"], cwd=outside, env=env)
    assert again.returncode == 2 and "already has" in again.stderr  # never overwrites a workspace

    write_tiny_idx(ws / "tiny_idx")
    params = deep_merge(yaml.safe_load((ws / "params.yaml").read_text()), TINY_PARAMS)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _run(
        [
            "fdd",
            "run",
            "--preset",
            "quick",
            "--set",
            "synthesis.iterations=3",
            "--set",
            "audit.epochs=4",
            "--set",
            "network.width=8",
            "--set",
            "synthesis.batch_real=8",
            "--set",
            "synthesis.warmup_epochs=1",
        ],
        cwd=ws,
        env=env,
        timeout=900,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "| vanilla" in ran.stdout and "| cobra" in ran.stdout  # the comparison table
    assert (ws / "data/report/report.md").exists()

    # the workspace's dvc.yaml runs the same stages through the installed `fdd stage`
    assert _run(["git", "init", "-q"], cwd=ws, env=env).returncode == 0
    assert _run([python, "-m", "dvc", "init", "-q"], cwd=ws, env=env).returncode == 0
    repro = _run([python, "-m", "dvc", "repro"], cwd=ws, env=env, timeout=900)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    assert "Running stage 'report'" in repro.stdout
    assert (ws / "data/metrics.json").exists()
