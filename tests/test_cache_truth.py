"""One truth for "this stage is done", whoever produced the outputs (issues 18.1 and 19.1).

In a git + DVC workspace on tiny data: ``fdd run``, ``dvc repro``, ``fdd run``,
``dvc repro`` each compute nothing after the first; adding a mode computes only that
mode's stages and the report, in the flow and under DVC; editing the report's module
reruns only the report; a fresh clone after ``dvc push`` / ``dvc pull`` computes nothing.

Evidence that a stage computed: its ``manifest.json`` is rewritten (a stage that is done
never writes it) and, in ``fdd run``'s log, its "wrote N files" line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_dvc import ROOT, _dvc

pytestmark = pytest.mark.slow

FIRST = {"ingest", "partition", "features", "barycenters", "synthesize[vanilla]", "audit[vanilla]", "report"}


def _git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)


def _fdd_run(ws: Path) -> tuple[set[str], set[str]]:
    """``fdd run`` in ``ws`` (its own copy of the sources): the stages that computed, and those found done."""
    env = {**os.environ, "PYTHONPATH": str(ws)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run"], cwd=ws, env=env, capture_output=True, text=True, timeout=900
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Traceback" not in log and "changed since the upstream stage wrote it" not in log, log[-4000:]
    computed = set(re.findall(r"stage (\S+) wrote \d+ files", log))
    found_done = set(re.findall(r"stage (\S+): outputs match \S+; nothing to compute", log))
    return computed, found_done


def _manifests(ws: Path) -> dict[str, int]:
    return {str(p.relative_to(ws)): p.stat().st_mtime_ns for p in (ws / "data").rglob("manifest.json")}


def _changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {path for path in after if before.get(path) != after[path]}


def _repro(ws: Path) -> set[str]:
    """``dvc repro``: the DVC stages whose command ran, but ``inputs``, which runs every time by
    design (``always_changed``: it only hashes the user's data files into data/inputs.json,
    whose bytes, and so ingest, change only when those files do)."""
    done = _dvc(["repro"], ws)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return set(re.findall(r"Running stage '([^']+)'", done.stdout)) - {"inputs"}


def _status_clean(ws: Path) -> None:
    status = _dvc(["status", "--json"], ws)
    assert status.returncode == 0, status.stdout + status.stderr
    # nothing to do, but the always-changed fingerprint stage
    assert json.loads(status.stdout) == {"inputs": ["always changed"]}, status.stdout


def test_fdd_and_dvc_in_any_order_compute_each_stage_once(tiny_workspace: Path, tmp_path_factory) -> None:
    ws = tiny_workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["synthesis"]["modes"] = ["vanilla"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("fdd", "tasks", "flows"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, ws / name)
    (ws / ".gitignore").write_text("__pycache__/\n.prefect/\n/data/raw/\n.fdd.lock\n.fdd.lock.owner\n")
    _git(ws, "init", "-q")
    _git(ws, "config", "user.email", "test@example.invalid")
    _git(ws, "config", "user.name", "fdd test")
    assert _dvc(["init", "-q"], ws).returncode == 0
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")  # the shipped local remote, ../.dvc-remote
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "sources and params")

    # fdd run computes every stage; dvc repro then computes nothing (and records dvc.lock)
    computed, _ = _fdd_run(ws)
    assert computed == FIRST
    first = _manifests(ws)
    assert len(first) == len(FIRST)
    synthetic = (ws / "data/synthetic/vanilla/synthetic.pt").read_bytes()
    assert _repro(ws) == {
        "settings",
        "ingest",
        "partition",
        "features",
        "barycenters",
        "synthesize@vanilla",
        "audit@vanilla",
        "report",
    }
    assert _manifests(ws) == first
    assert (ws / "data/synthetic/vanilla/synthetic.pt").read_bytes() == synthetic
    _status_clean(ws)

    # fdd run after dvc repro, and dvc repro after that: nothing
    computed, found_done = _fdd_run(ws)
    assert computed == set() and found_done == FIRST
    assert _repro(ws) == set()
    assert _manifests(ws) == first

    # a new mode: only its synthesis and audit, and the report, in the flow; DVC then confirms them
    params["synthesis"]["modes"] = ["vanilla", "cobra"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    computed, found_done = _fdd_run(ws)
    assert computed == {"synthesize[cobra]", "audit[cobra]", "report"}
    assert found_done == FIRST - {"report"}
    second = _manifests(ws)
    assert _changed(first, second) == {
        "data/synthetic/cobra/manifest.json",
        "data/audit/cobra/manifest.json",
        "data/report/manifest.json",
    }
    assert _repro(ws) == {"settings", "synthesize@cobra", "audit@cobra", "report"}
    assert _manifests(ws) == second
    _status_clean(ws)

    # an edit of the report's module: dvc repro reruns the report and nothing else
    report_module = ws / "tasks/report.py"
    report_module.write_text(report_module.read_text() + "\n# an edit that changes no behaviour\n")
    assert _repro(ws) == {"settings", "report"}
    third = _manifests(ws)
    assert _changed(second, third) == {"data/report/manifest.json"}
    _status_clean(ws)

    # a fresh clone: dvc pull, then fdd run computes nothing (the manifests DVC restored are trusted)
    pushed = _dvc(["push"], ws)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "results")
    clone = tmp_path_factory.mktemp("clone") / "ws"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True, capture_output=True)
    assert _dvc(["remote", "modify", "--local", "local", "url", str(ws / ".dvc-remote")], clone).returncode == 0
    pulled = _dvc(["pull"], clone)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    pulled_manifests = _manifests(clone)
    computed, found_done = _fdd_run(clone)
    assert computed == set()
    assert found_done == FIRST | {"synthesize[cobra]", "audit[cobra]"}
    assert _manifests(clone) == pulled_manifests
    _status_clean(clone)
