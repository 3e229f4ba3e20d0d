"""Distribution matching (DM) losses in the vanilla, FairDD and COBRA modes.

All three compare, per class ``c``, the mean embedding of the class's synthetic images
``s_c`` with a target computed from a batch of real images of the class:

.. math::

    \\text{vanilla:}\\quad & \\sum_c \\lVert \\bar m_c - s_c \\rVert_2^2,
        \\qquad \\bar m_c = \\sum_g \\pi(g|c)\\, m_{c,g} \\ \\text{(pooled mean)} \\\\
    \\text{fairdd:}\\quad & \\sum_c \\sum_{g \\in P_c} \\lVert m_{c,g} - s_c \\rVert_2^2 \\\\
    \\text{cobra:}\\quad & \\sum_c \\lVert b_c - s_c \\rVert_1,
        \\qquad b_c = \\frac{1}{|P_c|} \\sum_{g \\in P_c} m_{c,g}

where ``m_{c,g}`` is the mean embedding of the real images of class ``c`` and group
``g`` in the batch and ``P_c`` the groups present in it. ``b_c`` is the uniform
(imbalance-agnostic) first-moment barycenter of :func:`fdd.transport.barycenter.mean_barycenter`,
the same function the barycenters stage uses. With ``barycenter_lambda`` :math:`\\ell < 1`
cobra's target is the barycenter with :func:`fdd.transport.barycenter.frontier_weights`,
:math:`b_c^{(\\ell)} = (1 - \\ell)\\, \\bar m_c + \\ell\\, b_c` when every sample's group is known: the
frontier from vanilla's target (0) to cobra's (1). Everything is computed for all classes
at once with scatter operations: no Python loop over classes or groups.

The distributional modes ``cobra-w2`` and ``cobra-bures`` align the whole synthetic
feature cloud with the uniform :math:`W_2` barycenter of the group distributions; they
are computed by :func:`fdd.transport.alignment.alignment_loss` (see there for the math).

Real samples whose group is unknown (group id ``-1``, see :mod:`fdd.datasets.group_noise`) count
in the pooled class mean of ``vanilla`` (which needs no group), and are left out of the
group means of ``fairdd``, ``cobra``, ``cobra-w2`` and ``cobra-bures`` (a class whose
batch holds no labelled sample contributes nothing in those modes).

References
----------
Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.
Zhou et al., "FairDD: Fair Dataset Distillation via Synchronized Matching", 2025.
"Fair Dataset Distillation via Cross-Group Barycenter Alignment" (COBRA), ICML 2026.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import Tensor

from fdd.transport.alignment import ALIGNMENT_MODES, AlignmentMode, Reduction, W2Solver, alignment_loss
from fdd.transport.barycenter import cell_statistics, index_counts, mean_barycenter

__all__ = [
    "MATCHING_MODES",
    "MEAN_MODES",
    "MatchingMode",
    "WARMUP_MODES",
    "class_means",
    "dm_loss",
    "mean_matching_loss",
]

MatchingMode = Literal["vanilla", "fairdd", "cobra", "cobra-w2", "cobra-bures"]
MEAN_MODES: tuple[str, ...] = ("vanilla", "fairdd", "cobra")  # first-moment matching (this module)
MATCHING_MODES: tuple[str, ...] = MEAN_MODES + ALIGNMENT_MODES
WARMUP_MODES: tuple[str, ...] = ("cobra", "cobra-w2", "cobra-bures")  # train the embedder before matching
ERR_MODE = "mode must be one of {allowed}; got {value!r}"
ERR_DIM = "real and synthetic embeddings must have the same feature size; got {real} and {syn}"


def class_means(features: Tensor, labels: Tensor, *, num_classes: int) -> Tensor:
    """Mean feature per class, shape (num_classes, D); zeros for absent classes."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = index_counts(labels, num_classes).to(features.dtype).clamp_min(1)
    return sums / counts.unsqueeze(1)


def dm_loss(
    real_features: Tensor,
    real_labels: Tensor,
    real_groups: Tensor,
    syn_features: Tensor,
    syn_labels: Tensor,
    *,
    num_classes: int,
    num_groups: int,
    mode: MatchingMode,
    solver: W2Solver = "emd",
    reg: float = 0.05,
    reduction: Reduction = "sum",
    barycenter_lambda: float = 1.0,
) -> Tensor:
    """The DM matching loss of ``mode``, summed over classes (see the module docstring).

    Parameters
    ----------
    real_features : Tensor, shape (N_real, D)
        Embeddings of the real batch (all classes together).
    real_labels, real_groups : Tensor, shape (N_real,)
        Class ids; group ids in ``[0, num_groups)`` or ``-1`` (unknown, see above).
    syn_features : Tensor, shape (N_syn, D)
        Embeddings of the synthetic images; gradients flow through them.
    syn_labels : Tensor, shape (N_syn,)
    num_classes, num_groups : int
    mode : {"vanilla", "fairdd", "cobra", "cobra-w2", "cobra-bures"}
    solver, reg, reduction
        ``cobra-w2`` / ``cobra-bures`` only: see :func:`fdd.transport.alignment.alignment_loss`.
    barycenter_lambda : float in [0, 1]
        ``cobra`` only: the target's group weights, from proportional (0, vanilla's target)
        to uniform (1, the default: COBRA's).

    Returns
    -------
    Tensor
        Scalar loss. Classes without real images in the batch contribute nothing.
    """
    if mode not in MATCHING_MODES:
        raise ValueError(ERR_MODE.format(allowed=MATCHING_MODES, value=mode))
    if real_features.shape[1] != syn_features.shape[1]:
        raise ValueError(ERR_DIM.format(real=real_features.shape[1], syn=syn_features.shape[1]))
    if mode in ALIGNMENT_MODES:
        return alignment_loss(
            real_features,
            real_labels,
            real_groups,
            syn_features,
            syn_labels,
            num_classes=num_classes,
            num_groups=num_groups,
            mode=cast(AlignmentMode, mode),
            solver=solver,
            reg=reg,
            reduction=reduction,
            validate=False,
        )
    return mean_matching_loss(
        real_features,
        real_labels,
        real_groups,
        syn_features,
        syn_labels,
        num_classes=num_classes,
        num_groups=num_groups,
        mode=mode,
        barycenter_distance="l1",
        barycenter_lambda=barycenter_lambda,
    )


def mean_matching_loss(
    real_features: Tensor,
    real_labels: Tensor,
    real_groups: Tensor,
    syn_features: Tensor,
    syn_labels: Tensor,
    *,
    num_classes: int,
    num_groups: int,
    mode: str,
    barycenter_distance: Literal["l1", "squared"],
    barycenter_lambda: float = 1.0,
) -> Tensor:
    """The first-moment losses of the module docstring, for features of shape (N, D).

    ``barycenter_distance`` is cobra's distance to :math:`b_c`: ``"l1"`` (COBRA-DM) or
    ``"squared"`` (squared L2, as CAFE matches its layer features). ``mode`` is one of
    :data:`MEAN_MODES`; callers check it. ``barycenter_lambda``: cobra's group weights on the
    frontier from proportional (0) to uniform (1; :func:`fdd.transport.barycenter.frontier_weights`).
    """
    syn_means = class_means(syn_features, syn_labels, num_classes=num_classes)  # (C, D)
    if mode == "vanilla":  # pooled class mean: every real sample, labelled or not
        counts = index_counts(real_labels, num_classes)
        has_real = (counts > 0).to(syn_means.dtype).unsqueeze(1)
        target = class_means(real_features, real_labels, num_classes=num_classes)
        return ((target - syn_means) * has_real).pow(2).sum()
    # unknown groups (-1) go to a spare group column, dropped: no device sync
    spare = torch.where(real_groups < 0, torch.full_like(real_groups, num_groups), real_groups)
    full = cell_statistics(
        real_features,
        real_labels,
        spare,
        num_classes=num_classes,
        num_groups=num_groups + 1,
        validate=False,  # built by the synthesis loop; checking would sync the device
    )
    means, counts, present = full.means[:, :num_groups], full.counts[:, :num_groups], full.present[:, :num_groups]
    has_real = (counts.sum(dim=1) > 0).to(syn_means.dtype)  # (C,)
    if mode == "fairdd":
        diff = means - syn_means.unsqueeze(1)  # (C, G, D)
        per_cell = diff.pow(2).sum(dim=2) * present.to(diff.dtype)
        return per_cell.sum()
    safe_counts = counts + (1 - has_real).unsqueeze(1)  # empty classes: any weights, masked below
    if barycenter_lambda == 1:
        target = mean_barycenter(means, safe_counts, weights="uniform", validate=False)  # (C, D)
    else:
        target = mean_barycenter(means, safe_counts, lam=barycenter_lambda, validate=False)
    diff = (target - syn_means) * has_real.unsqueeze(1)
    return diff.abs().sum() if barycenter_distance == "l1" else diff.pow(2).sum()
