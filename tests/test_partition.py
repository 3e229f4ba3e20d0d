"""Tests of the class x group partition tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from fdd.datasets.colored import colorize
from fdd.datasets.containers import GroupedImages
from fdd.datasets.partition import PARTITION_COLUMNS, SUMMARY_COLUMNS, class_summary, partition_table


def _data() -> GroupedImages:
    # class a: group x 3 times, group y once; class b: group x twice; class c: no image.
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    groups = torch.tensor([0, 1, 0, 0, 0, 0])
    return GroupedImages(
        images=torch.zeros(6, 1, 2, 2, dtype=torch.uint8),
        labels=labels,
        groups=groups,
        class_names=("a", "b", "c"),
        group_names=("x", "y"),
        mean=(0.0,),
        std=(1.0,),
    )


def test_partition_table_rows_counts_and_shares():
    table = partition_table(_data())
    assert tuple(table.columns) == PARTITION_COLUMNS
    assert list(zip(table["class_name"], table["group_name"])) == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("b", "y"),
        ("c", "x"),
        ("c", "y"),
    ]
    assert table["count"].tolist() == [3, 1, 2, 0, 0, 0]
    np.testing.assert_allclose(table["share_in_class"].to_numpy()[:4], [0.75, 0.25, 1.0, 0.0])
    assert table["share_in_class"].iloc[4:].isna().all()
    np.testing.assert_allclose(table["imbalance_ratio"].to_numpy()[:4], [3.0, 3.0, 1.0, 1.0])
    assert table["imbalance_ratio"].iloc[4:].isna().all()
    assert table["groups_present"].tolist() == [2, 2, 1, 1, 0, 0]


def test_class_summary():
    summary = class_summary(_data())
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert summary["count"].tolist() == [4, 2, 0]
    assert summary["groups_present"].tolist() == [2, 1, 0]
    assert summary["majority_group"].tolist() == [0, 0, -1]
    assert summary["majority_group_name"].tolist()[:2] == ["x", "x"]
    assert pd.isna(summary["majority_group_name"].iloc[2])
    np.testing.assert_allclose(summary["majority_share"].to_numpy()[:2], [0.75, 1.0])
    assert math.isnan(summary["majority_share"].iloc[2]) and math.isnan(summary["imbalance_ratio"].iloc[2])
    np.testing.assert_allclose(summary["imbalance_ratio"].to_numpy()[:2], [3.0, 1.0])


def test_partition_of_a_colored_split():
    labels = torch.arange(1000) % 10  # 100 per class
    images = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = colorize(images, labels, bias="foreground", correlation=0.9, seed=0)
    table = partition_table(data)
    assert len(table) == 100 and table["count"].sum() == 1000
    summary = class_summary(data)
    assert summary["majority_group"].tolist() == list(range(10))
    np.testing.assert_allclose(summary["majority_share"], 0.9)
    # 90 own colour, 10 left in chunks of 2 over 5 colours: ratio 45, 6 groups present
    np.testing.assert_allclose(summary["imbalance_ratio"], 45.0)
    assert summary["groups_present"].tolist() == [6] * 10
    cell = table[(table["class"] == 3) & (table["group"] == 4)]
    assert cell["count"].item() == 2 and cell["group_name"].item() == "green"
