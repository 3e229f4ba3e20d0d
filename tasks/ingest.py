"""Stage ``ingest``: acquire the raw dataset and build the biased train/test splits."""

from __future__ import annotations

from pathlib import Path

from fdd.colored import build_colored
from fdd.config import DataConfig
from fdd.data import stratified_subset
from fdd.group_noise import perturb_groups
from fdd.sources import load_idx_folder, load_raw
from tasks.base import atomic_write_json, publish_markdown, run_logger, stage, stage_dir

RAW_NAMES = {"cmnist": "mnist", "cfmnist": "fashion_mnist"}


@stage("ingest", retries=2)
def ingest(workspace: str, data: DataConfig) -> list[Path]:
    """Write ``data/ingest/{train,test}.pt`` (uint8 images, labels, group ids) and a summary."""
    root = Path(workspace)
    out = stage_dir(workspace, "ingest")
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
    )
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
        "bias": data.bias,
        "source": raw.source,
        "train_images": len(splits.train),
        "test_images": len(test),
        "train_digest": train.digest(),
        "test_digest": test.digest(),
        "class_names": list(splits.train.class_names),
        "group_names": list(splits.train.group_names),
        **noise,
    }
    atomic_write_json(out / "dataset.json", summary)
    run_logger().info("ingested %s (%s): %d train / %d test images", data.dataset, raw.source, len(splits.train), len(test))
    publish_markdown(
        "ingest",
        f"# Dataset\n\n{data.dataset} ({data.bias} bias), source: {raw.source}\n\n"
        f"{len(splits.train)} train images (correlation {data.train_correlation}), "
        f"{len(test)} test images (correlation {data.test_correlation})\n",
        "dataset summary",
    )
    return [train_path, test_path, out / "dataset.json"]
