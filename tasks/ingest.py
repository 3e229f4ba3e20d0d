"""Stage ``ingest``: acquire the raw dataset and build the biased train/test splits."""

from __future__ import annotations

from pathlib import Path

from fdd.config import DataConfig
from fdd.datasets.prepare import prepare_dataset
from tasks.base import atomic_write_json, publish_markdown, run_logger, stage, stage_dir


@stage("ingest", retries=2)
def ingest(workspace: str, data: DataConfig, raw_digest: str | None = None) -> list[Path]:
    """Write ``data/ingest/{train,test}.pt`` (uint8 images, labels, group ids) and a summary.

    ``raw_digest`` (:func:`fdd.datasets.image_sources.user_files_digest`) only enters the cache key:
    the stage reruns when the user's own files change.
    """
    out = stage_dir(workspace, "ingest")
    prepared = prepare_dataset(data, workspace=Path(workspace))
    train, test, unit = prepared.train, prepared.test, prepared.unit
    train_path, test_path = out / "train.pt", out / "test.pt"
    train.save(train_path)
    test.save(test_path)
    atomic_write_json(out / "dataset.json", prepared.summary(data.dataset))
    run_logger().info(
        "ingested %s (%s): %d train / %d test %s", data.dataset, prepared.source, prepared.train_size, len(test), unit
    )
    publish_markdown(
        "ingest",
        f"# Dataset\n\n{data.dataset} ({prepared.description}), source: {prepared.source}\n\n"
        f"{prepared.train_size} train {unit}, {len(test)} test {unit}; classes {list(train.class_names)}, "
        f"groups {list(train.group_names)}\n",
        "dataset summary",
    )
    return [train_path, test_path, out / "dataset.json"]
