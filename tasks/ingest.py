"""Stage ``ingest``: acquire the raw dataset and build the biased train/test splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from fdd.config import DataConfig
from fdd.datasets.image_sources import user_files_digest
from fdd.datasets.prepare import prepare_dataset
from fdd.fairness.metrics import NOTE_ONE_GROUP, SingleGroupWarning, groups_with_samples
from tasks.base import atomic_write_json, atomic_write_text, publish_markdown, run_logger, stage, stage_dir

#: The fingerprint of the user's own data files, a dependency of ``ingest`` in ``dvc.yaml``.
INPUTS_FINGERPRINT = "data/inputs.json"


def write_inputs_fingerprint(workspace: str, data: DataConfig) -> Path:
    """Write ``data/inputs.json``: the SHA-256 of the user's own data files (``data.idx_dir``, the
    ``folder`` dataset's CSV and images, ``data.tabular.csv`` / ``test_csv``; null for the
    published releases, which are checksummed when fetched).

    DVC cannot list paths that depend on ``params.yaml`` as dependencies, so ``dvc.yaml``'s
    ``inputs`` stage (``always_changed``) runs this on every ``dvc repro`` and ``ingest``
    depends on the file: its bytes, and so ``ingest``, change only when the user's files do.
    The flow's ``ingest`` writes the same file, so ``fdd run`` and ``dvc repro`` agree.
    """
    root = Path(workspace)
    # the configuration allows each of these only for its own dataset
    paths = [
        p for p in (data.idx_dir, data.folder.csv, data.folder.images, data.tabular.csv, data.tabular.test_csv) if p
    ]
    payload = {"dataset": data.dataset, "paths": paths, "user_files_sha256": user_files_digest(data, workspace=root)}
    path = root / INPUTS_FINGERPRINT
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:  # unchanged bytes: DVC sees nothing new
        atomic_write_text(path, text)
    return path


@stage("ingest", retries=2)
def ingest(workspace: str, data: DataConfig, raw_digest: str | None = None) -> list[Path]:
    """Write ``data/ingest/{train,test}.pt`` (uint8 images, labels, group ids) and a summary.

    ``raw_digest`` (:func:`fdd.datasets.image_sources.user_files_digest`) only enters the cache key:
    the stage reruns when the user's own files change. A split with fewer than two protected
    groups is recorded as a warning in ``dataset.json`` (the report shows it; its fairness
    figures are empty).
    """
    out = stage_dir(workspace, "ingest")
    prepared = prepare_dataset(data, workspace=Path(workspace))
    train, test, unit = prepared.train, prepared.test, prepared.unit
    train_path, test_path = out / "train.pt", out / "test.pt"
    train.save(train_path)
    test.save(test_path)
    summary = prepared.summary(data.dataset)
    for split_name, split in (("train", train), ("test", test)):
        present = groups_with_samples(split.groups, split.group_names)
        if len(present) < 2:  # recorded (and shown in the report) only when it applies
            note = NOTE_ONE_GROUP.format(groups=", ".join(present) or "none", split=split_name)
            summary.setdefault("warnings", []).append(note)
            warnings.warn(note, SingleGroupWarning, stacklevel=2)
            run_logger().warning("%s", note)
    atomic_write_json(out / "dataset.json", summary)
    write_inputs_fingerprint(workspace, data)
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
