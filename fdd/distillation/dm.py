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

Two baselines (docs/evaluation.md, "Baselines") keep vanilla's pooled target and change what it
pools:

.. math::

    \\text{uniform-subgroup:}\\quad & \\sum_c \\lVert \\bar m_c - s_c \\rVert_2^2
        \\ \\text{on a batch holding as many images of each group of } c
        \\ \\text{(fdd.distillation.synthesis.GroupBalancedSampler)} \\\\
    \\text{cui-reweight:}\\quad & \\sum_c \\lVert \\textstyle\\sum_{i \\in c} w_i x_i - s_c \\rVert_2^2,
        \\qquad w_i \\propto 1 / \\hat p_c(x_i) \\ \\text{(:func:`kde_weights`)}

The distributional modes ``cobra-w2`` and ``cobra-bures`` align the whole synthetic
feature cloud with the uniform :math:`W_2` barycenter of the group distributions; they
are computed by :func:`fdd.transport.alignment.alignment_loss` (see there for the math).

Real samples whose group is unknown (group id ``-1``, see :mod:`fdd.datasets.group_noise`) count
in the pooled class mean of ``vanilla`` (which needs no group), and are left out of the
group means of ``fairdd``, ``cobra``, ``cobra-w2`` and ``cobra-bures`` (a class whose
batch holds no labelled sample contributes nothing in those modes).

References
----------
Cui, Wang, Xiong & Hsieh, "Ameliorate Spurious Correlations in Dataset Condensation" (arXiv 2406.06609,
"Mitigating Bias in Dataset Distillation"), ICML 2024.
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
    "POOLED_MODES",
    "WARMUP_MODES",
    "class_means",
    "dm_loss",
    "kde_weights",
    "mean_matching_loss",
]

MatchingMode = Literal["vanilla", "fairdd", "cobra", "uniform-subgroup", "cui-reweight", "cobra-w2", "cobra-bures"]
MEAN_MODES: tuple[str, ...] = ("vanilla", "fairdd", "cobra")  # first-moment matching (this module)
#: baselines matching vanilla's pooled class mean, of a group-balanced batch or with KDE weights
POOLED_MODES: tuple[str, ...] = ("uniform-subgroup", "cui-reweight")
MATCHING_MODES: tuple[str, ...] = MEAN_MODES + POOLED_MODES + ALIGNMENT_MODES
WARMUP_MODES: tuple[str, ...] = ("cobra", "cobra-w2", "cobra-bures")  # train the embedder before matching
ERR_MODE = "mode must be one of {allowed}; got {value!r}"
ERR_DIM = "real and synthetic embeddings must have the same feature size; got {real} and {syn}"


def class_means(features: Tensor, labels: Tensor, *, num_classes: int) -> Tensor:
    """Mean feature per class, shape (num_classes, D); zeros for absent classes."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = index_counts(labels, num_classes).to(features.dtype).clamp_min(1)
    return sums / counts.unsqueeze(1)


def kde_weights(features: Tensor, labels: Tensor, *, num_classes: int, bandwidth: float) -> Tensor:
    """Per-sample weights inversely proportional to a Gaussian KDE of the sample's class, summing to 1 per class.

    For sample :math:`i` of class :math:`c` (:math:`n_c` samples in ``features``):

    .. math::

        \\hat p_c(x_i) = \\frac{1}{n_c} \\sum_{j \\in c} \\exp\\Big(-\\frac{\\lVert x_i - x_j \\rVert^2}{\\beta\\, s_c}\\Big),
        \\qquad s_c = \\frac{1}{n_c^2} \\sum_{i, j \\in c} \\lVert x_i - x_j \\rVert^2,
        \\qquad w_i = \\frac{1 / \\hat p_c(x_i)}{\\sum_{j \\in c} 1 / \\hat p_c(x_j)}

    with :math:`\\beta` = ``bandwidth``: the kernel's squared bandwidth (up to the Gaussian's factor 2) as a
    share of the class's mean squared distance, so the weights do not depend on the scale of the
    embedding. The sum includes :math:`j = i` (the usual KDE at the sample points), so
    :math:`\\hat p_c \\ge 1/n_c` and no weight is infinite. Samples in sparse regions of their
    class (bias-conflicting ones: the rare colours of a C-MNIST digit) weigh more, those in
    the dense majority mode less: the weighted class mean moves from the majority's mean
    towards the mean of the modes.

    This is the reweighting of Cui et al. (ICML 2024, module References) in the form we could
    establish: their paper weights each real sample inversely to a kernel density estimate of its
    embedding; their code is not public (as far as we could find), and we could not read the
    paper's exact kernel, bandwidth and normalisation, nor use their embedder (a model trained
    with a supervised contrastive loss). Here the density is estimated on the current DM
    embedding of the real batch, within each class, at every iteration (docs/evaluation.md).

    Parameters
    ----------
    features : Tensor, shape (N, D)
    labels : Tensor, shape (N,)
        Class ids in ``[0, num_classes)``.
    num_classes : int
    bandwidth : float > 0

    Returns
    -------
    Tensor, shape (N,)
        Non-negative weights; those of each class present sum to 1. Computed from an
        ``N x N`` distance matrix (``N`` = the real batch: ``batch_real`` per class).
    """
    f = features.detach().float()
    sq = (f * f).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * f @ f.T).clamp_min(0)  # (N, N)
    same = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(f.dtype)
    n_c = index_counts(labels, num_classes).to(f.dtype).clamp_min(1)
    n_i = n_c[labels]
    row_mean = (d2 * same).sum(dim=1) / n_i
    s_c = f.new_zeros(num_classes).index_add_(0, labels, row_mean) / n_c
    scale = (bandwidth * s_c[labels]).clamp_min(torch.finfo(f.dtype).tiny)  # all equal features: uniform weights
    density = (torch.exp(-d2 / scale.unsqueeze(1)) * same).sum(dim=1) / n_i
    inverse = 1.0 / density
    total = f.new_zeros(num_classes).index_add_(0, labels, inverse)
    return inverse / total[labels]


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
    kde_bandwidth: float = 0.5,
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
    mode : {"vanilla", "fairdd", "cobra", "uniform-subgroup", "cui-reweight", "cobra-w2", "cobra-bures"}
        ``uniform-subgroup`` is vanilla's loss (its batch is drawn group-balanced by the caller).
    solver, reg, reduction
        ``cobra-w2`` / ``cobra-bures`` only: see :func:`fdd.transport.alignment.alignment_loss`.
    barycenter_lambda : float in [0, 1]
        ``cobra`` only: the target's group weights, from proportional (0, vanilla's target)
        to uniform (1, the default: COBRA's).
    kde_bandwidth : float
        ``cui-reweight`` only: :func:`kde_weights`'s ``bandwidth``.

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
    if mode in POOLED_MODES:
        syn_means = class_means(syn_features, syn_labels, num_classes=num_classes)
        has_real = (index_counts(real_labels, num_classes) > 0).to(syn_means.dtype).unsqueeze(1)
        if mode == "cui-reweight":
            weights = kde_weights(real_features, real_labels, num_classes=num_classes, bandwidth=kde_bandwidth)
            target = syn_means.new_zeros(syn_means.shape).index_add_(
                0, real_labels, real_features * weights.unsqueeze(1)
            )
        else:
            target = class_means(real_features, real_labels, num_classes=num_classes)
        return ((target - syn_means) * has_real).pow(2).sum()
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
