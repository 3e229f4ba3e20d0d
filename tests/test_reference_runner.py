"""benchmarks/reference/run_reference.py: the COBRA reference run interrupted and resumed across
processes ends exactly where an uninterrupted run ends.

Needs a checkout of github:mhmoslemi/COBRA (never committed): ``$FDD_REFERENCE_DIR``, default
``.ref/COBRA`` at the repository root; skipped without it. The data are tiny synthetic IDX files
(10 classes, 40 training and 20 test images each), so the reference builds its coloured
C-MNIST in well under a second. The reference seeds torch from the wall clock and its fairness
metric calls ``.cuda()``: the runner's test switches ``--deterministic-clock`` and
``--cpu-cuda-noop`` make it deterministic and runnable on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdd.datasets.sources import IDX_FILES, encode_idx

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "benchmarks" / "reference" / "run_reference.py"
REFERENCE = Path(os.environ.get("FDD_REFERENCE_DIR") or ROOT / ".ref" / "COBRA")
FLAGS = [
    "--dataset",
    "Colored_MNIST_foreground",
    "--ipc",
    "1",
    "--mode",
    "cobra",
    "--Iteration",
    "6",
    "--num_eval",
    "2",
    "--epoch_eval_train",
    "2",
    "--batch_real",
    "32",
    "--cobra_warmup_epochs",
    "2",
]
RES = "res_DM_Colored_MNIST_foreground_ConvNet_1ipc_cobra.pt"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (REFERENCE / "train_dm.py").exists(),
        reason=f"no COBRA reference checkout at {REFERENCE} (set FDD_REFERENCE_DIR)",
    ),
]


def write_idx(root: Path) -> None:
    """Ten classes of 28x28 uint8 noise, class k with a bright bar at rows 2k+2..2k+4."""
    rng = np.random.default_rng(0)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 40, size=(labels.size, 28, 28), dtype=np.uint8)
        for k in range(10):
            images[labels == k, 2 + 2 * k : 5 + 2 * k, 4:24] = 255
        order = rng.permutation(labels.size)
        return images[order], labels[order]

    arrays = (*split(40), *split(20))
    for name, array in zip(IDX_FILES, arrays):
        (folder / name).write_bytes(encode_idx(array))


def run(tmp: Path, state: str, *extra: str, flags: list[str] = FLAGS) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(RUNNER),
        "--ref-dir",
        str(REFERENCE),
        "--data-root",
        str(tmp / "data"),
        "--state",
        str(tmp / state),
        "--deterministic-clock",
        "--cpu-cuda-noop",
        *extra,
        "--",
        *flags,
        "--save_path",
        str(tmp / f"save_{state}"),
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_interrupted_and_resumed_run_matches_uninterrupted_run(tmp_path: Path) -> None:
    write_idx(tmp_path / "data")
    full = run(tmp_path, "full")
    assert full.returncode == 0, full.stdout + full.stderr

    # segment 1: 3 distillation steps, then a checkpoint
    seg = run(tmp_path, "seg", "--max-units", "3")
    assert seg.returncode == 75, seg.stdout + seg.stderr
    assert "checkpoint at 3/6 iterations" in seg.stdout
    # other reference flags: refused, the checkpoint left as it was
    other = run(tmp_path, "seg", flags=[*FLAGS, "--lr_img", "0.5"])
    assert other.returncode != 0
    assert "other reference flags" in other.stderr and "lr_img" in other.stderr
    # segment 2: the 3 remaining steps, the first evaluation, then a checkpoint between evaluations
    seg = run(tmp_path, "seg", "--max-units", "4")
    assert seg.returncode == 75, seg.stdout + seg.stderr
    assert "checkpoint at 6/6 iterations, 1/2 evaluations" in seg.stdout
    # segment 3: replays evaluation 0, runs evaluation 1 and the final step
    seg = run(tmp_path, "seg")
    assert seg.returncode == 0, seg.stdout + seg.stderr

    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads((tmp_path / "seg" / "result.json").read_text())
    metrics = ("acc", "max_eo", "mean_eo")
    assert [[e[k] for k in metrics] for e in a["evaluations"]] == [[e[k] for k in metrics] for e in b["evaluations"]]
    assert (a["acc_mean"], a["deo_m_mean"], a["deo_a_mean"]) == (b["acc_mean"], b["deo_m_mean"], b["deo_a_mean"])
    assert [s["end_done"] for s in b["segments"]] == [3, 6, 6]
    assert b["iterations"] == 6 and b["num_evaluations"] == 2
    images_a = torch.load(tmp_path / "full" / RES, weights_only=False)["data"][0][0]
    images_b = torch.load(tmp_path / "seg" / RES, weights_only=False)["data"][0][0]
    assert torch.equal(images_a, images_b)
    # a finished state is not run again
    again = run(tmp_path, "seg")
    assert again.returncode == 0 and "finished already" in again.stdout


def test_evaluating_a_checkpoint_matches_the_run_that_stops_there_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    write_idx(tmp_path / "data")
    # the uninterrupted run of 3 steps evaluates the set after those 3 steps
    short = [*FLAGS, "--Iteration", "3", "--num_eval", "1"]
    ref = run(tmp_path, "short", flags=short)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    expected = json.loads((tmp_path / "short" / "result.json").read_text())["evaluations"]

    # a run of 6 steps cut after 3; its checkpoint evaluated as it stands, once (the run asked for 2)
    seg = run(tmp_path, "seg", "--max-units", "3")
    assert seg.returncode == 75, seg.stdout + seg.stderr
    checkpoint = (tmp_path / "seg" / "checkpoint.pt").read_bytes()
    ev = run(tmp_path, "seg", "--evaluate-checkpoint", flags=[*FLAGS, "--num_eval", "1"])
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "after 3/6 iterations, 1 evaluation(s)" in ev.stdout
    got = json.loads((tmp_path / "seg" / "evaluation_at_3.json").read_text())
    metrics = ("acc", "max_eo", "mean_eo")
    assert [[e[k] for k in metrics] for e in got["evaluations"]] == [[e[k] for k in metrics] for e in expected]
    assert (got["iterations_done"], got["iterations_total"], got["num_evaluations"]) == (3, 6, 1)
    # evaluated again: the new evaluation joins the earlier one in the same file
    again = run(tmp_path, "seg", "--evaluate-checkpoint", flags=[*FLAGS, "--num_eval", "1"])
    assert again.returncode == 0, again.stdout + again.stderr
    both = json.loads((tmp_path / "seg" / "evaluation_at_3.json").read_text())
    assert both["num_evaluations"] == 2 and both["evaluations"][0] == got["evaluations"][0]
    assert all(e["device"].startswith("cpu") for e in both["evaluations"])
    # the checkpoint is untouched and no result is claimed: the run continues as before
    assert (tmp_path / "seg" / "checkpoint.pt").read_bytes() == checkpoint
    assert not (tmp_path / "seg" / "result.json").exists()
    # other flags than num_eval are still refused; without a checkpoint there is nothing to evaluate
    other = run(tmp_path, "seg", "--evaluate-checkpoint", flags=[*FLAGS, "--lr_img", "0.5"])
    assert other.returncode != 0 and "lr_img" in other.stderr
    (tmp_path / "seg" / "evaluation_at_3.json").write_text("{not json")
    broken = run(tmp_path, "seg", "--evaluate-checkpoint", flags=[*FLAGS, "--num_eval", "1"])
    assert broken.returncode != 0 and "evaluation_at_3.json cannot be added to" in broken.stderr
    nothing = run(tmp_path, "seg", "--evaluate-checkpoint", flags=[*FLAGS, "--num_eval", "0"])
    assert nothing.returncode != 0 and "--num_eval of at least 1" in nothing.stderr
    missing = run(tmp_path, "none", "--evaluate-checkpoint")
    assert missing.returncode != 0 and "no checkpoint to evaluate" in missing.stderr
