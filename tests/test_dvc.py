"""dvc.yaml agrees with the flow, and `dvc repro` runs the same stages on tiny data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline import PER_MODE_STAGES, SETTINGS_DIR, STAGES

ROOT = Path(__file__).resolve().parent.parent


def test_dvc_stages_match_the_flow_stages() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(dvc) == ("settings", "inputs", *STAGES)
    settings = dvc.pop("settings")
    # the settings stage sees every parameter and every source the keys are computed from
    assert settings["cmd"] == "python -m flows.cli stage settings"
    assert {"fdd", "tasks", "flows"} <= set(settings["deps"]) and settings["params"] == [{"params.yaml": None}]
    assert settings["outs"] == [SETTINGS_DIR]
    inputs = dvc.pop("inputs")  # the fingerprint of the user's files, before the flow's stages
    assert inputs["always_changed"] and inputs["cmd"] == "python -m flows.cli stage inputs"
    assert "data/inputs.json" in dvc["ingest"]["deps"]
    for name, stage in dvc.items():
        body = stage.get("do", stage)
        assert body["cmd"].startswith(f"python -m flows.cli stage {name}")
        assert ("foreach" in stage) == (name in PER_MODE_STAGES), name
        # a stage's settings and sources reach DVC only through its settings file, as in its cache key:
        # no params.yaml section (it would hold synthesis.modes, log_every, ...) and no source folder
        assert f"{SETTINGS_DIR}/{name}.json" in body["deps"], name
        assert "params" not in body, name
        assert not {"fdd", "tasks", "flows"} & set(body["deps"]), name
        # DVC keeps a stage's outputs while its command runs: a stage that is done computes nothing
        for out in body["outs"] + stage.get("metrics", []) + stage.get("plots", []):
            assert isinstance(out, dict) and next(iter(out.values()))["persist"] is True, (name, out)


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def _dvc_workspace(ws: Path) -> None:
    for folder in ("fdd", "tasks", "flows"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, ws / name)
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    assert _dvc(["init", "-q"], ws).returncode == 0
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")  # the shipped default remote


def _up_to_date(ws: Path) -> None:
    """`dvc status` lists nothing but the always-changed fingerprint stage of the user's files."""
    status = _dvc(["status", "--json"], ws)
    assert status.returncode == 0 and json.loads(status.stdout) == {"inputs": ["always changed"]}, (
        status.stdout + status.stderr
    )


def test_dvc_repro_then_status_clean_and_metrics(tiny_workspace: Path) -> None:
    _dvc_workspace(tiny_workspace)
    repro = _dvc(["repro"], tiny_workspace)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    _up_to_date(tiny_workspace)
    shown = _dvc(["metrics", "show", "--json"], tiny_workspace)
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads((tiny_workspace / "data/metrics.json").read_text())
    assert {"vanilla", "cobra"} <= set(metrics)
    assert "deo_m" in shown.stdout and str(round(metrics["cobra"]["accuracy"], 2))[:4] in shown.stdout
    # the default local remote works out of the box: push, lose the outputs and the cache, pull
    pushed = _dvc(["push"], tiny_workspace)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert (tiny_workspace / ".dvc-remote").is_dir()
    synthetic = tiny_workspace / "data/synthetic/cobra/synthetic.pt"
    original = synthetic.read_bytes()
    shutil.rmtree(tiny_workspace / "data/synthetic")
    shutil.rmtree(tiny_workspace / ".dvc/cache")
    pulled = _dvc(["pull"], tiny_workspace)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert synthetic.read_bytes() == original

    # a changed audit parameter reruns only the audits and what depends on them
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["audit"]["epochs"] = 6
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = _dvc(["repro"], tiny_workspace)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = {line.split("'")[1] for line in again.stdout.splitlines() if line.startswith("Running stage")}
    skipped = {line.split("'")[1] for line in again.stdout.splitlines() if "didn't change" in line}
    # settings: writes the stages' key files; inputs: always runs (it only hashes the user's files)
    assert ran == {"settings", "inputs", "audit@vanilla", "audit@cobra", "report"}, again.stdout
    assert skipped == {"ingest", "partition", "features", "barycenters", "synthesize@vanilla", "synthesize@cobra"}


@pytest.mark.slow
def test_dvc_sees_a_changed_user_idx_file(tiny_workspace: Path) -> None:
    ws = tiny_workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["synthesis"]["modes"] = ["vanilla"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc_workspace(ws)
    targets = ["ingest"]  # only what the check needs: inputs and ingest
    first = _dvc(["repro", *targets], ws)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    fingerprint = (ws / "data/inputs.json").read_text()
    assert json.loads(fingerprint)["paths"] == ["tiny_idx"]
    again = _dvc(["repro", *targets], ws)  # nothing changed: the fingerprint keeps its bytes, ingest is skipped
    assert again.returncode == 0 and "Stage 'ingest' didn't change" in again.stdout, again.stdout
    assert (ws / "data/inputs.json").read_text() == fingerprint
    status = _dvc(["status", "--json", "ingest"], ws)
    assert json.loads(status.stdout) == {}, status.stdout  # ingest is up to date

    labels = ws / "tiny_idx/train-labels-idx1-ubyte"  # the user edits one label of their own data
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 3
    labels.write_bytes(bytes(data))
    assert _dvc(["repro", "inputs"], ws).returncode == 0  # what `dvc repro` runs first
    assert (ws / "data/inputs.json").read_text() != fingerprint
    status = _dvc(["status", "--json", "ingest"], ws)
    assert json.loads(status.stdout).get("ingest") == [{"changed deps": {"data/inputs.json": "modified"}}], (
        status.stdout
    )
    rerun = _dvc(["repro", *targets], ws)
    assert rerun.returncode == 0 and "Running stage 'ingest'" in rerun.stdout, rerun.stdout
