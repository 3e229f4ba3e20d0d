"""A synthesis killed mid-run resumes from its checkpoint and ends with the same result."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fdd.distillation.run import checkpoint_digest_path
from fdd.distillation.synthesis import DMSynthesizer
from flows.pipeline import load_config, run_single_stage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _prepare(workspace: Path, iterations: int = 40) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["synthesis"].update({"iterations": iterations, "checkpoint_every": 4, "modes": ["cobra"]})
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    run_single_stage("ingest", load_config(workspace / "params.yaml"), str(workspace))


def _stage_process(workspace: Path) -> subprocess.Popen:
    # the same thread count as this process (conftest: 1): CPU reductions are deterministic per thread count
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "stage",
            "synthesize",
            "--mode",
            "cobra",
            "--workspace",
            str(workspace),
            "--params",
            str(workspace / "params.yaml"),
        ],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _wait_for_checkpoint(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the checkpoint and its integrity record agree. The record is written just after the
    checkpoint (fdd.distillation.run.write_checkpoint); a kill between the two makes the next run
    discard the checkpoint and start over, by design, so the kill must not land there."""
    record = checkpoint_digest_path(path)
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint with a matching record appeared"
        try:
            if record.read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest():
                return
        except (FileNotFoundError, IndexError):
            pass
        time.sleep(0.05)


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM])
def test_killed_synthesis_resumes_to_the_uninterrupted_result(
    tiny_workspace: Path, tmp_path: Path, kill: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference_ws = tmp_path / "reference"
    shutil.copytree(tiny_workspace, reference_ws)
    _prepare(tiny_workspace)
    _prepare(reference_ws)
    config = load_config(reference_ws / "params.yaml")
    run_single_stage("synthesize", config, str(reference_ws), "cobra")
    expected = torch.load(reference_ws / "data/synthetic/cobra/synthetic.pt", weights_only=True)

    checkpoint = tiny_workspace / "data/synthetic/cobra/checkpoint.pt"
    process = _stage_process(tiny_workspace)
    _wait_for_checkpoint(checkpoint, process)
    process.send_signal(kill)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert checkpoint.exists() and not (tiny_workspace / "data/synthetic/cobra/synthetic.pt").exists()
    saved = torch.load(checkpoint, weights_only=True)
    done = saved["state"]["iteration"]
    assert 0 < done < 40

    steps = []
    original_step = DMSynthesizer.step
    monkeypatch.setattr(DMSynthesizer, "step", lambda self: steps.append(1) or original_step(self))
    run_single_stage("synthesize", load_config(tiny_workspace / "params.yaml"), str(tiny_workspace), "cobra")
    resumed = torch.load(tiny_workspace / "data/synthetic/cobra/synthetic.pt", weights_only=True)
    assert len(steps) == 40 - done  # resumed, not restarted
    assert torch.equal(resumed["images"], expected["images"])  # bit-identical on CPU
    assert not checkpoint.exists()
    losses = (tiny_workspace / "data/synthetic/cobra/losses.csv").read_text()
    assert losses == (reference_ws / "data/synthetic/cobra/losses.csv").read_text()


def test_checkpoint_of_other_settings_is_not_resumed(tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare(tiny_workspace)
    config = load_config(tiny_workspace / "params.yaml")
    folder = tiny_workspace / "data/synthetic/cobra"
    folder.mkdir(parents=True)
    torch.save(
        {"fingerprint": "someone else's", "state": {"iteration": 39}, "losses": torch.zeros(39)},
        folder / "checkpoint.pt",
    )
    steps = []
    original_step = DMSynthesizer.step
    monkeypatch.setattr(DMSynthesizer, "step", lambda self: steps.append(1) or original_step(self))
    run_single_stage("synthesize", config, str(tiny_workspace), "cobra")
    assert len(steps) == 40  # started over
    assert not (folder / "checkpoint.pt").exists()


def test_second_run_on_the_same_workspace_fails_fast_naming_the_first(tiny_workspace: Path) -> None:
    _prepare(tiny_workspace, iterations=100_000)  # the first run is still busy when the second starts
    first = _stage_process(tiny_workspace)
    _wait_for(tiny_workspace / ".fdd.lock.owner", first)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "stage",
            "partition",
            "--workspace",
            str(tiny_workspace),
            "--params",
            str(tiny_workspace / "params.yaml"),
        ],
        cwd=tiny_workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 3
    assert f"pid {first.pid}" in second.stderr and "in use by another fdd run" in second.stderr
    assert not (tiny_workspace / "data/partition").exists()  # the refused run wrote nothing
    first.kill()  # SIGKILL: the OS releases the lock, so it is never left broken
    first.wait(timeout=60)
    third = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "stage",
            "partition",
            "--workspace",
            str(tiny_workspace),
            "--params",
            str(tiny_workspace / "params.yaml"),
        ],
        cwd=tiny_workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert third.returncode == 0, third.stderr[-2000:]
    assert time.monotonic() - start < 120


def test_damaged_checkpoint_is_not_used(tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare(tiny_workspace)
    folder = tiny_workspace / "data/synthetic/cobra"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    steps = []
    original_step = DMSynthesizer.step
    monkeypatch.setattr(DMSynthesizer, "step", lambda self: steps.append(1) or original_step(self))
    run_single_stage("synthesize", load_config(tiny_workspace / "params.yaml"), str(tiny_workspace), "cobra")
    assert len(steps) == 40 and (folder / "synthetic.pt").exists() and not (folder / "checkpoint.pt").exists()
