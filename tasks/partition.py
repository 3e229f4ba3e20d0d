"""Stage ``partition``: class x group counts, shares and imbalance ratios."""

from __future__ import annotations

from pathlib import Path

from fdd.datasets.containers import GroupedImages
from fdd.datasets.partition import class_summary, partition_table
from tasks.base import atomic_write_text, publish_markdown, publish_table, stage, stage_dir


@stage("partition")
def partition(workspace: str, inputs: dict[str, str]) -> list[Path]:
    """Write ``data/partition/partition.csv`` (one row per cell) and ``classes.csv``."""
    train = GroupedImages.load(Path(workspace) / "data/prepared/train.pt")
    out = stage_dir(workspace, "partition")
    cells = partition_table(train)
    classes = class_summary(train)
    atomic_write_text(out / "partition.csv", cells.to_csv(index=False))
    atomic_write_text(out / "classes.csv", classes.to_csv(index=False))
    publish_table("partition-classes", classes.round(3).to_dict("records"), "groups per class in the train split")
    publish_markdown(
        "partition", "# Partition of the train split\n\n" + classes.to_markdown(index=False), "class x group partition"
    )
    return [out / "partition.csv", out / "classes.csv"]
