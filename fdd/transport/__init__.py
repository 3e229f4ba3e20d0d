"""Optimal transport between the groups of a class: barycenters and alignment losses.

- :mod:`~fdd.transport.barycenter`: per-class barycenters of the group distributions with
  uniform (imbalance-agnostic) or proportional weights (mean, free-support W2 through POT,
  Gaussian / Bures), and each group's distance to them (docs/method.md section 1).
- :mod:`~fdd.transport.alignment`: distribution-level alignment of the synthetic set to the
  barycenter (exact W2, Sinkhorn, Bures) for the ``cobra-w2`` and ``cobra-bures`` modes.

The same barycenter code serves the diagnostics stage (reference embedder) and the
synthesis loop (each iteration's embedder).
"""

from fdd.transport.alignment import ALIGNMENT_MODES, alignment_loss
from fdd.transport.barycenter import (
    BarycenterConvergenceWarning,
    ClassBarycenters,
    FairnessWarning,
    MissingGroupWarning,
    distances_to_targets,
    free_support_barycenter,
    gaussian_barycenter,
    mean_barycenter,
    per_class_barycenters,
)

__all__ = [
    "ALIGNMENT_MODES",
    "BarycenterConvergenceWarning",
    "ClassBarycenters",
    "FairnessWarning",
    "MissingGroupWarning",
    "alignment_loss",
    "distances_to_targets",
    "free_support_barycenter",
    "gaussian_barycenter",
    "mean_barycenter",
    "per_class_barycenters",
]
