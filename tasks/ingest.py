"""Stage ``ingest``: acquire the raw dataset and build the biased train/test splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from fdd.adult import encode_adult, load_adult_frames
from fdd.colored import build_colored
from fdd.config import IMAGE_DATASETS, TABULAR_DATASETS, DataConfig
from fdd.data import stratified_subset
from fdd.group_noise import perturb_groups
from fdd.image_sources import prepare_image_dataset, user_files_digest
from fdd.metrics import NOTE_ONE_GROUP, SingleGroupWarning, groups_with_samples
from fdd.sources import load_idx_folder, load_raw
from tasks.base import atomic_write_json, atomic_write_text, publish_markdown, run_logger, stage, stage_dir

RAW_NAMES = {"cmnist": "mnist", "cfmnist": "fashion_mnist"}
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
    paths = [p for p in (data.idx_dir, data.folder.csv, data.folder.images, data.tabular.csv, data.tabular.test_csv) if p]
    payload = {"dataset": data.dataset, "paths": paths,
               "user_files_sha256": user_files_digest(data, workspace=root)}
    path = root / INPUTS_FINGERPRINT
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:  # unchanged bytes: DVC sees nothing new
        atomic_write_text(path, text)
    return path


@stage("ingest", retries=2)
def ingest(workspace: str, data: DataConfig, raw_digest: str | None = None) -> list[Path]:
    """Write ``data/ingest/{train,test}.pt`` (uint8 images, labels, group ids) and a summary.

    ``raw_digest`` (:func:`fdd.image_sources.user_files_digest`) only enters the cache key:
    the stage reruns when the user's own files change.
    """
    root = Path(workspace)
    out = stage_dir(workspace, "ingest")
    unit, extra = "images", {}
    if data.dataset in TABULAR_DATASETS:
        tab = data.tabular
        frames = load_adult_frames(
            root=root / data.root, download=data.download,
            csv=None if tab.csv is None else root / tab.csv,
            test_csv=None if tab.test_csv is None else root / tab.test_csv,
            test_fraction=tab.test_fraction, protected=tab.protected, seed=data.seed,
        )
        splits = encode_adult(
            frames.train, frames.test, protected=tab.protected, group_feature=tab.group_feature,
            missing=tab.missing, source=frames.source,
        )  # rows encoded as (N, F, 1, 1) tensors (fdd/adult.py)
        source, bias, unit = frames.source, tab.protected, "rows"
        description = f"protected: {tab.protected}; {len(splits.feature_names)} features"
        extra = {"feature_names": list(splits.feature_names)}
    elif data.dataset in IMAGE_DATASETS:
        splits = prepare_image_dataset(data, workspace=root)
        source, description, bias = splits.source, splits.description, None
        extra = {"image_shape": list(splits.train.image_shape)}
    else:
        if data.idx_dir is not None:
            raw = load_idx_folder(root / data.idx_dir)
        else:
            raw = load_raw(RAW_NAMES[data.dataset], root=root / data.root, download=data.download)
        splits = build_colored(
            raw,
            bias=data.bias,
            train_correlation=data.train_correlation,
            test_correlation=data.test_correlation,
            num_confusing_colors=data.num_confusing_colors,
            seed=data.seed,
            shading=data.shading,
        )
        source, bias = raw.source, data.bias
        description = f"{data.bias} colour bias ({data.shading} shading), train correlation {data.train_correlation}"
        extra = {"image_shape": list(splits.train.image_shape)}
    test = splits.test
    if data.test_limit is not None and data.test_limit < len(test):
        test = stratified_subset(test, size=data.test_limit, seed=data.seed)
    train, noise = splits.train, {}
    if data.group_noise.flip_fraction or data.group_noise.hide_fraction:  # train split only
        noisy = perturb_groups(
            train, flip_fraction=data.group_noise.flip_fraction, hide_fraction=data.group_noise.hide_fraction,
            seed=data.group_noise.seed,
        )
        train, noise = noisy.data, noisy.summary()
    train_path, test_path = out / "train.pt", out / "test.pt"
    train.save(train_path)
    test.save(test_path)
    summary = {
        "dataset": data.dataset,
        "bias": bias,
        "description": description,
        "source": source,
        "train_images": len(splits.train),
        "test_images": len(test),
        "train_digest": train.digest(),
        "test_digest": test.digest(),
        "class_names": list(splits.train.class_names),
        "group_names": list(splits.train.group_names),
        **extra,
        **noise,
    }
    for split_name, split in (("train", train), ("test", test)):
        present = groups_with_samples(split.groups, split.group_names)
        if len(present) < 2:  # recorded (and shown in the report) only when it applies
            note = NOTE_ONE_GROUP.format(groups=", ".join(present) or "none", split=split_name)
            summary.setdefault("warnings", []).append(note)
            warnings.warn(note, SingleGroupWarning, stacklevel=2)
            run_logger().warning("%s", note)
    atomic_write_json(out / "dataset.json", summary)
    write_inputs_fingerprint(workspace, data)
    run_logger().info("ingested %s (%s): %d train / %d test %s", data.dataset, source, len(splits.train), len(test), unit)
    publish_markdown(
        "ingest",
        f"# Dataset\n\n{data.dataset} ({description}), source: {source}\n\n"
        f"{len(splits.train)} train {unit}, {len(test)} test {unit}; classes {list(splits.train.class_names)}, "
        f"groups {list(splits.train.group_names)}\n",
        "dataset summary",
    )
    return [train_path, test_path, out / "dataset.json"]
