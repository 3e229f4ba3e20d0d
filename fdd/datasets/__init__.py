"""Datasets with a protected attribute, as tensors: acquisition, splits, groups.

- :mod:`~fdd.datasets.containers`: :class:`GroupedImages` (images or rows, labels, group ids)
  and :class:`SyntheticSet` (a distilled set), saved and hashed.
- :mod:`~fdd.datasets.sources`: MNIST / Fashion-MNIST acquisition (checksummed) and IDX files.
- :mod:`~fdd.datasets.colored`: the colour-biased digit datasets (C-MNIST, C-FMNIST).
- :mod:`~fdd.datasets.image_sources`: image benchmarks (CIFAR-10S, CelebA, UTKFace, BFFHQ)
  and a user's folder of images with a CSV.
- :mod:`~fdd.datasets.adult`: the tabular Adult census data.
- :mod:`~fdd.datasets.group_noise`: flipped and hidden training groups (robustness studies).
- :mod:`~fdd.datasets.partition`: class x group counts and imbalance.
- :mod:`~fdd.datasets.prepare`: :func:`prepare_dataset`, one entry point for every dataset.
"""

from fdd.datasets.containers import UNKNOWN_GROUP, GroupedImages, SyntheticSet, stratified_subset
from fdd.datasets.group_noise import NoisyGroups, perturb_groups
from fdd.datasets.image_sources import DatasetFilesError
from fdd.datasets.partition import class_summary, partition_table
from fdd.datasets.prepare import PreparedDataset, prepare_dataset
from fdd.datasets.sources import ChecksumError, DatasetUnavailableError

__all__ = [
    "UNKNOWN_GROUP",
    "ChecksumError",
    "DatasetFilesError",
    "DatasetUnavailableError",
    "GroupedImages",
    "NoisyGroups",
    "PreparedDataset",
    "SyntheticSet",
    "class_summary",
    "partition_table",
    "perturb_groups",
    "prepare_dataset",
    "stratified_subset",
]
