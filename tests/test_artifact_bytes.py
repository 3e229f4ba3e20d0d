"""Artifacts whose bytes depend only on their content (issue 18, item 1).

The same payload saved by two fresh processes, built in different ways (a tensor that
views a larger storage vs a fresh copy, a string referenced twice vs two equal
strings, another key order), must give the same file; plain ``torch.save`` does not.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

# Two ways of building one content. ``{save}`` is replaced by the save call under test.
AS_VIEWS = """
import sys, torch
from fdd.datasets.containers import atomic_save, SyntheticSet
big = torch.arange(40, dtype=torch.float32).reshape(10, 4)
images = big[2:8].reshape(6, 1, 2, 2)              # a view into a larger storage
labels = torch.tensor([0, 0, 1, 1, 2, 2, 9, 9])[:6]  # a slice
mode = "cob" + "ra"                                 # one string object referenced three times
payload = {"images": images, "labels": labels, "meta": {"mode": mode, "modes": [mode, mode]},
           "pair": (labels, labels)}                # one tensor stored twice
{save}
"""
AS_COPIES = """
import sys, torch
from fdd.datasets.containers import atomic_save, SyntheticSet
images = torch.arange(8, 32, dtype=torch.float32).reshape(6, 1, 2, 2).clone()
labels = torch.tensor([0, 0, 1, 1, 2, 2])
payload = {"pair": (labels.clone(), labels.clone()),  # other key order, equal copies
           "meta": {"modes": ["".join(["co", "bra"]), "c" + "obra"], "mode": "cobr" + "a"},
           "labels": labels, "images": images}
{save}
"""
FDD_SAVE = "atomic_save(payload, sys.argv[1])"
TORCH_SAVE = "torch.save(payload, sys.argv[1])"


def _save_in_fresh_process(script: str, save: str, path: Path) -> bytes:
    subprocess.run(
        [sys.executable, "-c", script.replace("{save}", save), str(path)],
        cwd=ROOT,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return path.read_bytes()


def test_same_content_saved_by_two_processes_gives_the_same_bytes(tmp_path: Path) -> None:
    views = _save_in_fresh_process(AS_VIEWS, FDD_SAVE, tmp_path / "a.pt")
    copies = _save_in_fresh_process(AS_COPIES, FDD_SAVE, tmp_path / "b.pt")
    assert hashlib.sha256(views).hexdigest() == hashlib.sha256(copies).hexdigest()
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(loaded["images"], torch.arange(8, 32, dtype=torch.float32).reshape(6, 1, 2, 2))
    assert torch.equal(loaded["pair"][0], torch.tensor([0, 0, 1, 1, 2, 2])) and loaded["meta"]["mode"] == "cobra"
    # a saved view holds only its own elements, not the 40 of its base storage
    assert loaded["images"].untyped_storage().nbytes() == 24 * 4
    # the same file again from another process: stable
    assert _save_in_fresh_process(AS_VIEWS, FDD_SAVE, tmp_path / "c.pt") == views


def test_plain_torch_save_of_the_same_contents_differs(tmp_path: Path) -> None:
    """What the fix is for: without it the two builds give different files."""
    views = _save_in_fresh_process(AS_VIEWS, TORCH_SAVE, tmp_path / "a.pt")
    copies = _save_in_fresh_process(AS_COPIES, TORCH_SAVE, tmp_path / "b.pt")
    assert views != copies


def test_synthetic_set_saved_twice_is_byte_identical(tmp_path: Path) -> None:
    script = """
import sys, torch
from fdd.datasets.containers import SyntheticSet
gen = torch.Generator().manual_seed(0)
images = torch.randn(12, 3, 4, 4, generator=gen)
view = {view}
SyntheticSet(images=view, labels=torch.arange(12)[:6] % 3, class_names=("a", "b", "c"), mean=(0.5,) * 3,
             std=(0.5,) * 3, provenance={"mode": "cobra", "config": {"ipc": 2, "mode": "cobra"}}).save(sys.argv[1])
"""
    first = _save_in_fresh_process(script.replace("{view}", "images[:6]"), "", tmp_path / "a.pt")
    second = _save_in_fresh_process(script.replace("{view}", "images[:6].clone()"), "", tmp_path / "b.pt")
    assert first == second
