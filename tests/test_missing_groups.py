"""A class that lacks some group: documented behaviour (barycenter over the groups present) and a warning."""

from __future__ import annotations

import pytest
import torch

from fdd.config import BarycenterConfig, FeaturesConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages
from fdd.distillation.run import synthesize
from fdd.fairness.diagnostics import barycenter_diagnostics
from fdd.fairness.features import group_features
from fdd.transport.barycenter import MissingGroupWarning


def _data_missing_group() -> GroupedImages:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 12)
    # class 0 has groups 0 and 1; class 1 only group 0 (group 1 missing)
    groups = torch.tensor([0] * 8 + [1] * 4 + [0] * 12)
    images = torch.randint(0, 256, (24, 3, 8, 8), generator=g, dtype=torch.uint8)
    return GroupedImages(
        images=images,
        labels=labels,
        groups=groups,
        class_names=("a", "b"),
        group_names=("x", "y"),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )


def test_diagnostics_warn_and_use_present_groups() -> None:
    data = _data_missing_group()
    stats = group_features(
        data, config=FeaturesConfig(max_per_cell=10, projection_dim=3), network=NetworkConfig(width=4, depth=1)
    )
    with pytest.warns(MissingGroupWarning, match="'b' has no images of groups \\['y'\\]"):
        result = barycenter_diagnostics(
            stats.to_dict(),
            class_names=data.class_names,
            group_names=data.group_names,
            config=BarycenterConfig(support_size=2, max_iter=3),
        )
    rows_b = result.table[result.table["class_name"] == "b"]
    assert rows_b["group_name"].tolist() == ["x"]
    # with a single group present the uniform barycenter is that group's mean
    assert rows_b["mean_to_barycenter"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(result.tensors["uniform_mean"][1], stats.means[1, 0], atol=1e-6)


def test_cobra_synthesis_runs_when_a_class_misses_a_group() -> None:
    data = _data_missing_group()
    result = synthesize(
        data,
        mode="cobra",
        config=SynthesisConfig(ipc=2, iterations=2, batch_real=6, warmup_epochs=1),
        network=NetworkConfig(width=4, depth=1),
        seed=0,
    )
    assert torch.isfinite(result.synthetic.images).all() and len(result.losses) == 2
