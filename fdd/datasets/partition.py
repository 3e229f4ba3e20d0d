"""Class x group composition of a grouped image set.

The partition stage records how a biased training set is spread over its (class, group)
cells: counts, within-class shares and imbalance ratios. For class :math:`k` with group
counts :math:`n_{k,g}`,

.. math::

    \\text{share}_{k,g} = \\frac{n_{k,g}}{\\sum_{g'} n_{k,g'}}, \\qquad
    \\text{imbalance}_k = \\frac{\\max_g n_{k,g}}{\\min_{g:\\, n_{k,g} > 0} n_{k,g}}.

Classes without images get NaN shares and ratios.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fdd.datasets.containers import GroupedImages

__all__ = ["PARTITION_COLUMNS", "SUMMARY_COLUMNS", "cell_counts", "class_summary", "partition_table"]

PARTITION_COLUMNS: tuple[str, ...] = (
    "class",
    "class_name",
    "group",
    "group_name",
    "count",
    "share_in_class",
    "imbalance_ratio",
    "groups_present",
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "class",
    "class_name",
    "count",
    "groups_present",
    "majority_group",
    "majority_group_name",
    "majority_share",
    "imbalance_ratio",
)


def cell_counts(data: GroupedImages) -> np.ndarray:
    """Counts :math:`n_{k,g}` as an int64 array of shape (num_classes, num_groups).

    Samples with an unknown group (id -1, :mod:`fdd.datasets.group_noise`) are not counted.
    """
    labels = data.labels.detach().to("cpu", torch.int64)
    groups = data.groups.detach().to("cpu", torch.int64)
    labels, groups = labels[groups >= 0], groups[groups >= 0]
    flat = torch.bincount(labels * data.num_groups + groups, minlength=data.num_classes * data.num_groups)
    return flat.view(data.num_classes, data.num_groups).numpy()


def _class_stats(counts: np.ndarray) -> dict[str, np.ndarray]:
    totals = counts.sum(axis=1)
    present = (counts > 0).sum(axis=1)
    nonzero_min = np.where(counts > 0, counts, np.iinfo(np.int64).max).min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(totals > 0, counts.max(axis=1) / nonzero_min, np.nan)
        share = np.where(totals[:, None] > 0, counts / totals[:, None], np.nan)
    return {"totals": totals, "present": present, "ratio": ratio, "share": share}


def partition_table(data: GroupedImages) -> pd.DataFrame:
    """One row per (class, group) cell, empty cells included.

    Parameters
    ----------
    data : GroupedImages

    Returns
    -------
    DataFrame
        Columns :data:`PARTITION_COLUMNS`: ``count`` :math:`n_{k,g}`, ``share_in_class``
        :math:`n_{k,g} / n_k`, and the per-class ``imbalance_ratio`` (largest over smallest
        non-zero group count) and ``groups_present`` repeated on each row of the class.
        Rows are ordered by class, then group.
    """
    counts = cell_counts(data)
    stats = _class_stats(counts)
    num_classes, num_groups = counts.shape
    classes = np.repeat(np.arange(num_classes), num_groups)
    groups = np.tile(np.arange(num_groups), num_classes)
    return pd.DataFrame(
        {
            "class": classes,
            "class_name": np.asarray(data.class_names, dtype=object)[classes],
            "group": groups,
            "group_name": np.asarray(data.group_names, dtype=object)[groups],
            "count": counts.reshape(-1),
            "share_in_class": stats["share"].reshape(-1),
            "imbalance_ratio": stats["ratio"][classes],
            "groups_present": stats["present"][classes],
        },
        columns=list(PARTITION_COLUMNS),
    )


def class_summary(data: GroupedImages) -> pd.DataFrame:
    """One row per class: size, groups present, majority group and its share, imbalance ratio.

    Parameters
    ----------
    data : GroupedImages

    Returns
    -------
    DataFrame
        Columns :data:`SUMMARY_COLUMNS`. ``majority_group`` is the largest group of the class
        (lowest id on ties); for an empty class it is -1, its name missing (NA) and the
        shares and ratio NaN.
    """
    counts = cell_counts(data)
    stats = _class_stats(counts)
    totals = stats["totals"]
    majority = np.where(totals > 0, counts.argmax(axis=1), -1)
    names = np.asarray(data.group_names, dtype=object)
    with np.errstate(divide="ignore", invalid="ignore"):
        majority_share = np.where(totals > 0, counts.max(axis=1) / totals, np.nan)
    return pd.DataFrame(
        {
            "class": np.arange(counts.shape[0]),
            "class_name": list(data.class_names),
            "count": totals,
            "groups_present": stats["present"],
            "majority_group": majority,
            "majority_group_name": np.where(majority >= 0, names[np.maximum(majority, 0)], None),  # type: ignore[call-overload]  # numpy stubs reject None
            "majority_share": majority_share,
            "imbalance_ratio": stats["ratio"],
        },
        columns=list(SUMMARY_COLUMNS),
    )
