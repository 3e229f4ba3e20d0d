"""Stage ``features``: per-(class, group) embedding statistics under a reference embedder."""

from __future__ import annotations

from pathlib import Path

from fdd.config import FeaturesConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages, atomic_save
from fdd.fairness.features import group_features, separation_table
from tasks.base import atomic_write_text, publish_markdown, stage, stage_dir


@stage("features")
def extract_features(
    workspace: str, inputs: dict[str, str], features: FeaturesConfig, network: NetworkConfig, device: str = "cpu"
) -> list[Path]:
    """Write ``data/features/features.pt`` (cell means, counts, projected samples) and ``separation.csv``."""
    train = GroupedImages.load(Path(workspace) / "data/prepared/train.pt")
    out = stage_dir(workspace, "features")
    stats = group_features(train, config=features, network=network, device=device)
    atomic_save({"format": "fdd.GroupFeatures/1", **stats.to_dict()}, out / "features.pt")
    table = separation_table(stats, class_names=train.class_names)
    atomic_write_text(out / "separation.csv", table.to_csv(index=False))
    publish_markdown(
        "features",
        "# Group separation under the reference embedder\n\n" + table.round(3).to_markdown(index=False),
        "between-group distance over within-group spread, per class",
    )
    return [out / "features.pt", out / "separation.csv"]
