"""Stage ``barycenters``: per-class cross-group barycenters and their diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fdd.config import BarycenterConfig
from fdd.datasets.containers import atomic_save
from fdd.fairness.diagnostics import barycenter_diagnostics
from tasks.base import atomic_write_text, publish_markdown, stage, stage_dir


@stage("barycenters")
def compute_barycenters(workspace: str, inputs: dict[str, str], barycenters: BarycenterConfig) -> list[Path]:
    """Write ``data/barycenters/barycenters.pt`` and ``diagnostics.csv`` (one row per cell)."""
    root = Path(workspace)
    stats = torch.load(root / "data/features/features.pt", map_location="cpu", weights_only=True)
    dataset = json.loads((root / "data/prepared/dataset.json").read_text())
    out = stage_dir(workspace, "barycenters")
    result = barycenter_diagnostics(
        stats, class_names=tuple(dataset["class_names"]), group_names=tuple(dataset["group_names"]), config=barycenters
    )
    atomic_save({"format": "fdd.Barycenters/1", **result.tensors}, out / "barycenters.pt")
    atomic_write_text(out / "diagnostics.csv", result.table.to_csv(index=False))
    atomic_write_text(out / "classes.csv", result.class_table.to_csv(index=False))
    publish_markdown(
        "barycenters",
        "# Barycenter diagnostics\n\n"
        "Distance of each group to the uniform barycenter versus to the pooled (vanilla) target, "
        "averaged per class:\n\n" + result.class_table.round(3).to_markdown(index=False),
        "cross-group barycenter diagnostics",
    )
    return [out / "barycenters.pt", out / "diagnostics.csv", out / "classes.csv"]
