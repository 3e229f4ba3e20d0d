"""One entry point for every dataset: ``data.dataset`` -> the prepared train and test splits.

:func:`prepare_dataset` dispatches on the dataset's kind (colour-biased digits, image
benchmarks and user folders, tabular rows), then applies what every dataset shares: the
stratified test subset (``data.test_limit``) and the training-group noise
(``data.group_noise``, train split only). The ``ingest`` stage writes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdd.config import IMAGE_DATASETS, TABULAR_DATASETS, DataConfig
from fdd.datasets.adult import encode_adult, load_adult_frames
from fdd.datasets.colored import build_colored
from fdd.datasets.containers import GroupedImages, stratified_subset
from fdd.datasets.group_noise import perturb_groups
from fdd.datasets.image_sources import prepare_image_dataset
from fdd.datasets.sources import DatasetName, load_idx_folder, load_raw

__all__ = ["RAW_NAMES", "PreparedDataset", "prepare_dataset"]

#: The torchvision source of each colour-biased digit dataset.
RAW_NAMES: dict[str, DatasetName] = {"cmnist": "mnist", "cfmnist": "fashion_mnist"}


@dataclass(frozen=True)
class PreparedDataset:
    """The splits a pipeline run works on, and the facts the report and ``dataset.json`` record.

    ``train`` carries the (possibly perturbed) training groups; ``test`` is the test split,
    subsetted to ``data.test_limit`` when set. ``unit`` is ``"images"`` or ``"rows"``.
    """

    train: GroupedImages
    test: GroupedImages
    source: str
    description: str
    bias: str | None
    unit: str
    train_size: int  # images (rows) of the train split; it is never subsetted, only its groups perturbed
    extra: dict[str, Any] = field(default_factory=dict)  # feature_names or image_shape, group-noise summary

    def summary(self, dataset: str) -> dict[str, Any]:
        """The JSON record of the splits (``data/prepared/dataset.json``)."""
        return {
            "dataset": dataset,
            "bias": self.bias,
            "description": self.description,
            "source": self.source,
            "train_images": self.train_size,
            "test_images": len(self.test),
            "train_digest": self.train.digest(),
            "test_digest": self.test.digest(),
            "class_names": list(self.train.class_names),
            "group_names": list(self.train.group_names),
            **self.extra,
        }


def prepare_dataset(data: DataConfig, *, workspace: str | Path) -> PreparedDataset:
    """Acquire (download or read) ``data.dataset`` and build its train and test splits.

    Parameters
    ----------
    data : DataConfig
        The ``data`` section: which dataset, its source and bias settings.
    workspace : path
        Where relative paths of ``data`` (``root``, ``idx_dir``, user files) are resolved.

    Returns
    -------
    PreparedDataset
        Nothing is written except the raw downloads under ``data.root``.
    """
    root = Path(workspace)
    extra: dict[str, Any]
    bias: str | None
    if data.dataset in TABULAR_DATASETS:
        tab = data.tabular
        frames = load_adult_frames(
            root=root / data.root,
            download=data.download,
            csv=None if tab.csv is None else root / tab.csv,
            test_csv=None if tab.test_csv is None else root / tab.test_csv,
            test_fraction=tab.test_fraction,
            protected=tab.protected,
            seed=data.seed,
        )
        splits = encode_adult(
            frames.train,
            frames.test,
            protected=tab.protected,
            group_feature=tab.group_feature,
            missing=tab.missing,
            source=frames.source,
        )  # rows encoded as (N, F, 1, 1) tensors (fdd/datasets/adult.py)
        train, test = splits.train, splits.test
        source, bias, unit = frames.source, tab.protected, "rows"
        description = f"protected: {tab.protected}; {len(splits.feature_names)} features"
        extra = {"feature_names": list(splits.feature_names)}
    elif data.dataset in IMAGE_DATASETS:
        images = prepare_image_dataset(data, workspace=root)
        train, test = images.train, images.test
        source, description, bias, unit = images.source, images.description, None, "images"
        extra = {"image_shape": list(train.image_shape)}
    else:
        if data.idx_dir is not None:
            raw = load_idx_folder(root / data.idx_dir)
        else:
            raw = load_raw(RAW_NAMES[data.dataset], root=root / data.root, download=data.download)
        colored = build_colored(
            raw,
            bias=data.bias,
            train_correlation=data.train_correlation,
            test_correlation=data.test_correlation,
            num_confusing_colors=data.num_confusing_colors,
            seed=data.seed,
            shading=data.shading,
        )
        train, test = colored.train, colored.test
        source, bias, unit = raw.source, data.bias, "images"
        description = f"{data.bias} colour bias ({data.shading} shading), train correlation {data.train_correlation}"
        extra = {"image_shape": list(train.image_shape)}
    train_size = len(train)
    if data.test_limit is not None and data.test_limit < len(test):
        test = stratified_subset(test, size=data.test_limit, seed=data.seed)
    if data.group_noise.flip_fraction or data.group_noise.hide_fraction:  # train split only
        noisy = perturb_groups(
            train,
            flip_fraction=data.group_noise.flip_fraction,
            hide_fraction=data.group_noise.hide_fraction,
            seed=data.group_noise.seed,
        )
        train = noisy.data
        extra.update(noisy.summary())
    return PreparedDataset(
        train=train,
        test=test,
        source=source,
        description=description,
        bias=bias,
        unit=unit,
        train_size=train_size,
        extra=extra,
    )
