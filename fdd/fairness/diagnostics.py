"""Barycenter diagnostics: how far each group lies from the fair and the vanilla target.

For every class ``c`` and group ``g`` present, under the reference embedder:

* ``mean_to_barycenter`` = :math:`\\lVert m_{c,g} - b_{\\text{unif}}(c) \\rVert_2` and
  ``mean_to_pooled`` = :math:`\\lVert m_{c,g} - \\bar m_c \\rVert_2` (first moments, full
  embedding space), where :math:`\\bar m_c` is the pooled mean vanilla DM targets;
* ``w2_to_barycenter`` and ``w2_to_pooled``: :math:`W_2` between the group's (PCA-
  projected) embedding cloud and the free-support barycenter of the class with uniform
  weights, resp. with proportional weights (the distributional analogue of the pooled
  target), computed exactly with :func:`ot.emd2`.

Under vanilla weights the majority group sits next to the target and minority groups
far from it; the uniform barycenter spreads the distances evenly. The per-class
``spread_ratio`` (largest over smallest group distance) summarises that.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fdd.config import BarycenterConfig
from fdd.transport.barycenter import MissingGroupWarning, distances_to_targets, free_support_barycenter

__all__ = ["BarycenterDiagnostics", "barycenter_diagnostics"]


WARN_MISSING = (
    "class {name!r} has no images of groups {absent}; its barycenter uses the groups it has "
    "(uniform weights over the groups present)"
)


@dataclass(frozen=True)
class BarycenterDiagnostics:
    tensors: dict[str, Any]
    table: pd.DataFrame  # one row per (class, group) present
    class_table: pd.DataFrame  # one row per class


def _w2(samples: np.ndarray, support: np.ndarray) -> float:
    a = np.full(samples.shape[0], 1.0 / samples.shape[0])
    b = np.full(support.shape[0], 1.0 / support.shape[0])
    # POT is imported here, as in fdd.barycenter: only the diagnostics need it, so the synthesis
    # and the audit (a sweep's cells) run where POT is not installed, e.g. a bare GPU machine
    import ot

    cost = ot.dist(samples, support)  # squared Euclidean
    return float(np.sqrt(max(ot.emd2(a, b, cost), 0.0)))


def barycenter_diagnostics(
    stats: Mapping[str, Any],
    *,
    class_names: tuple[str, ...],
    group_names: tuple[str, ...],
    config: BarycenterConfig,
) -> BarycenterDiagnostics:
    """Per-class barycenters (mean and W2 free-support) and per-cell distances.

    Parameters
    ----------
    stats : mapping
        The saved :class:`fdd.fairness.features.GroupFeatures` (``means``, ``population``,
        ``projected``, ``labels``, ``groups``).
    class_names, group_names : tuple of str
    config : BarycenterConfig
        ``weights`` selects the fair target (``"uniform"``, the method's choice).
    """
    means = stats["means"].double()
    population = stats["population"].double()
    targets = distances_to_targets(means, population)
    projected = stats["projected"].double().numpy()
    labels, groups = stats["labels"].numpy(), stats["groups"].numpy()
    num_classes, num_groups = population.shape
    rows = []
    supports_fair, supports_pooled = [], []
    missing = {c: [group_names[g] for g in range(num_groups) if population[c, g] == 0] for c in range(num_classes)}
    for c, absent in missing.items():
        if absent and len(absent) < num_groups:
            warnings.warn(WARN_MISSING.format(name=class_names[c], absent=absent), MissingGroupWarning, stacklevel=2)
    for c in range(num_classes):
        present = [g for g in range(num_groups) if population[c, g] > 0 and ((labels == c) & (groups == g)).any()]
        clouds = [projected[(labels == c) & (groups == g)] for g in present]
        if not clouds:
            continue
        k = min(config.support_size, min(len(x) for x in clouds))
        fair = free_support_barycenter(
            clouds, weights=config.weights, support_size=k, num_iter=config.max_iter, seed=c
        ).support.numpy()
        pooled_weights = population[c, present].numpy()
        pooled = free_support_barycenter(
            clouds, weights=pooled_weights, support_size=k, num_iter=config.max_iter, seed=c
        ).support.numpy()
        supports_fair.append(torch.from_numpy(fair).float())
        supports_pooled.append(torch.from_numpy(pooled).float())
        total = float(population[c].sum())
        for g, cloud in zip(present, clouds):
            rows.append(
                {
                    "class": c,
                    "class_name": class_names[c],
                    "group": g,
                    "group_name": group_names[g],
                    "count": int(population[c, g]),
                    "share": float(population[c, g]) / total,
                    "mean_to_barycenter": float(targets.to_barycenter[c, g].sqrt()),
                    "mean_to_pooled": float(targets.to_pooled[c, g].sqrt()),
                    "w2_to_barycenter": _w2(cloud, fair),
                    "w2_to_pooled": _w2(cloud, pooled),
                }
            )
    table = pd.DataFrame(rows)
    grouped = table.groupby(["class", "class_name"], sort=True)
    class_table = grouped.agg(
        groups=("group", "count"),
        majority_share=("share", "max"),
        mean_to_barycenter=("mean_to_barycenter", "mean"),
        mean_to_pooled=("mean_to_pooled", "mean"),
        w2_to_barycenter=("w2_to_barycenter", "mean"),
        w2_to_pooled=("w2_to_pooled", "mean"),
        worst_w2_to_barycenter=("w2_to_barycenter", "max"),
        worst_w2_to_pooled=("w2_to_pooled", "max"),
    ).reset_index()
    tensors = {
        "uniform_mean": targets.barycenter.float(),
        "pooled_mean": targets.pooled.float(),
        "present": targets.present,
        "population": population,
        "support_uniform": supports_fair,  # one (k_c, projection_dim) tensor per class
        "support_pooled": supports_pooled,
    }
    return BarycenterDiagnostics(tensors=tensors, table=table, class_table=class_table)
