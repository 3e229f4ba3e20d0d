"""Per-(class, group) embedding statistics under a fixed reference embedder.

The reference embedder is a randomly initialised ConvNet with a fixed seed: DM matches
embeddings of random networks, so this is the geometry the distillation targets live
in. For each (class, group) cell up to ``max_per_cell`` images are embedded; the stage
keeps the full-dimensional cell means and counts (for first-moment barycenters) and a
PCA projection of the sampled embeddings (for the W2 barycenters, whose cost grows
with the dimension).

Group separation of class ``c`` is summarised by

.. math::

    \\text{separation}(c) = \\frac{\\operatorname{mean}_{g \\ne h \\in P_c}
        \\lVert m_{c,g} - m_{c,h} \\rVert_2}{\\operatorname{mean}_{g \\in P_c} \\sigma_{c,g}},
    \\qquad \\sigma_{c,g}^2 = \\frac{1}{n_{c,g}} \\sum_i \\lVert x_i - m_{c,g} \\rVert_2^2

the typical distance between group means in units of the typical within-group
spread: near 0 the groups look alike to the embedder, above 1 they are separated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from fdd.config import FeaturesConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages
from fdd.models.networks import build_network
from fdd.transport.barycenter import cell_statistics

__all__ = ["GroupFeatures", "embed_images", "group_features", "sample_cells", "separation_table"]


@dataclass(frozen=True)
class GroupFeatures:
    """Embedding statistics of a grouped image set.

    Attributes
    ----------
    means : Tensor, shape (C, G, D)
        Mean embedding per cell (zeros where the cell is empty).
    counts : Tensor, shape (C, G)
        Images embedded per cell (at most ``max_per_cell``).
    population : Tensor, shape (C, G)
        Images per cell in the whole split (the true group sizes).
    spread : Tensor, shape (C, G)
        Root mean squared distance to the cell mean (NaN where empty).
    projected : Tensor, shape (M, k)
        The sampled embeddings projected on the top-``k`` principal directions.
    labels, groups : Tensor, shape (M,)
    """

    means: Tensor
    counts: Tensor
    population: Tensor
    spread: Tensor
    projected: Tensor
    labels: Tensor
    groups: Tensor

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).detach().cpu().contiguous() for k in self.__dataclass_fields__}


def sample_cells(data: GroupedImages, *, max_per_cell: int, generator: torch.Generator) -> Tensor:
    """Indices of at most ``max_per_cell`` random images of every (class, group) cell."""
    cell = data.labels * data.num_groups + data.groups
    keys = torch.rand(len(data), generator=generator)
    order = torch.argsort(cell * 2.0 + keys)  # cells in order, random order inside each
    sorted_cell = cell[order]
    counts = torch.bincount(sorted_cell, minlength=data.num_classes * data.num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(data)) - starts[sorted_cell]
    return order[rank < max_per_cell]


@torch.no_grad()
def embed_images(
    data: GroupedImages, *, config: FeaturesConfig, network: NetworkConfig, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Reference embeddings of a per-cell sample of ``data``: ``(features (M, D), index (M,))``."""
    generator = torch.Generator().manual_seed(config.embedder_seed)
    index = sample_cells(data, max_per_cell=config.max_per_cell, generator=generator)
    net = build_network(
        input_shape=data.image_shape,
        num_classes=data.num_classes,
        network=network,
        seed=config.embedder_seed,
        device=device,
    ).eval()
    subset = data.subset(index)
    chunks = []
    for start in range(0, len(subset), config.batch_size):
        batch = subset.subset(torch.arange(start, min(start + config.batch_size, len(subset))))
        chunks.append(net.embed(batch.normalized(device)).double())
    return torch.cat(chunks), index


def group_features(
    data: GroupedImages, *, config: FeaturesConfig, network: NetworkConfig, device: torch.device | str = "cpu"
) -> GroupFeatures:
    """Per-cell embedding statistics of ``data`` under the reference embedder.

    Samples with an unknown group (id -1, :mod:`fdd.datasets.group_noise`) are left out.
    """
    if bool((data.groups < 0).any()):
        data = data.subset(data.groups >= 0)
    features, index = embed_images(data, config=config, network=network, device=device)
    labels, groups = data.labels[index].to(features.device), data.groups[index].to(features.device)
    stats = cell_statistics(features, labels, groups, num_classes=data.num_classes, num_groups=data.num_groups)
    deviation = features - stats.means[labels, groups]
    sq = torch.zeros_like(stats.counts).index_put_((labels, groups), deviation.pow(2).sum(dim=1), accumulate=True)
    spread = torch.where(stats.present, (sq / stats.counts.clamp_min(1)).sqrt(), torch.nan)
    k = min(config.projection_dim, features.shape[1], features.shape[0])
    centred = features - features.mean(dim=0, keepdim=True)
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ basis[:k].T
    return GroupFeatures(
        means=stats.means.float(),
        counts=stats.counts,
        population=torch.bincount(
            data.labels * data.num_groups + data.groups, minlength=data.num_classes * data.num_groups
        )
        .view(data.num_classes, data.num_groups)
        .to(features.device),
        spread=spread.float(),
        projected=projected.float(),
        labels=labels,
        groups=groups,
    )


def separation_table(stats: GroupFeatures, *, class_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per class: groups present, mean between-group distance, spread, separation."""
    present = stats.counts > 0  # (C, G)
    dist = torch.cdist(stats.means.double(), stats.means.double())  # (C, G, G)
    pair = present.unsqueeze(2) & present.unsqueeze(1)
    pair &= ~torch.eye(present.shape[1], dtype=torch.bool, device=present.device).unsqueeze(0)
    npairs = pair.sum(dim=(1, 2))
    between = torch.where(npairs > 0, (dist * pair).sum(dim=(1, 2)) / npairs.clamp_min(1), torch.nan)
    within = torch.nanmean(stats.spread.double(), dim=1)
    return pd.DataFrame(
        {
            "class": range(len(class_names)),
            "class_name": list(class_names),
            "groups_present": present.sum(dim=1).tolist(),
            "between_group_distance": between.tolist(),
            "within_group_spread": within.tolist(),
            "separation": (between / within).tolist(),
        }
    )
