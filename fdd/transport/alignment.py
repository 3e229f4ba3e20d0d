r"""Distributional cross-group alignment: the ``cobra-w2`` and ``cobra-bures`` DM losses.

COBRA (``cobra`` mode, :mod:`fdd.distillation.dm`) matches the mean synthetic embedding of each
class to the uniform *first-moment* barycenter of its groups. The losses here align the
whole synthetic feature cloud with the uniform :math:`W_2` barycenter of the group
feature distributions. Per class :math:`c`, with :math:`\nu_c` the empirical measure of
the :math:`k` synthetic embeddings of the class and :math:`\mu_{c,g}` that of the real
embeddings of cell :math:`(c, g)` in the batch,

.. math::

    L(\nu) = \sum_c \sum_{g \in P_c} \frac{1}{G_c}\, W_2^2(\nu_c, \mu_{c,g}),
    \qquad G_c = |P_c| ,

where :math:`P_c` are the groups present in the batch for class :math:`c`. The
barycenter :math:`b_c = \arg\min_\nu \sum_g \frac{1}{G_c} W_2^2(\nu, \mu_{c,g})` is the
minimiser of this objective, so gradient steps on :math:`L` pull :math:`\nu_c` toward the
uniform (imbalance-agnostic) :math:`W_2` barycenter without computing it. The weights
:math:`1/G_c` do not depend on the group sizes: duplicating every sample of a group
leaves :math:`\mu_{c,g}` and hence :math:`L` unchanged.

Relation to ``cobra``. :math:`W_2^2` splits into a mean and a centred part,
:math:`W_2^2(\nu, \mu) = \lVert m_\nu - m_\mu \rVert^2 + W_2^2(\bar\nu, \bar\mu)`
(:math:`\bar\cdot` = centred). Hence for Diracs (or zero covariances)

.. math::

    \sum_g \tfrac{1}{G_c} \lVert s_c - m_{c,g} \rVert^2
    = \lVert s_c - b_c \rVert_2^2 + \tfrac{1}{G_c} \sum_g \lVert m_{c,g} - b_c \rVert^2,
    \qquad b_c = \tfrac{1}{G_c} \sum_g m_{c,g},

i.e. the mean term is the squared-L2 distance to the barycenter of the ``cobra`` mode
(which uses the L1 norm of the same difference, :math:`\lVert s_c - b_c \rVert_1`) plus a
constant; its gradient w.r.t. :math:`s_c` is :math:`2 (s_c - b_c)`, where ``cobra``'s is
:math:`\operatorname{sign}(s_c - b_c)`. With one group the loss is plain :math:`W_2^2`
matching of the synthetic and real clouds.

Scale (``reduction``). The gradient of the objective above w.r.t. a synthetic point is
:math:`\frac{2}{k}(x_i - \frac{1}{G_c}\sum_g T_g(x_i))` (:math:`T_g` the optimal map to
group :math:`g`), :math:`G_c` times smaller than FairDD's summed loss, for which the
published step size ``lr_img = 1`` is tuned. ``reduction="sum"`` (the default) therefore
minimises :math:`\sum_c \sum_{g \in P_c} W_2^2(\nu_c, \mu_{c,g})`, i.e. :math:`G_c` times
the barycenter objective of each class: the same minimiser (the uniform barycenter, still
independent of the group sizes), and with Diracs exactly the ``fairdd`` loss
:math:`\sum_g \lVert s_c - m_{c,g} \rVert^2`. ``reduction="mean"`` keeps the :math:`1/G_c`
weights. (Measured on the quick CPU preset, C-MNIST: ``mean`` at ``lr_img = 1`` stays near
vanilla's biased solution after 200 iterations; see ``docs/alignment.md``.)

Two ways of computing it:

``cobra-w2`` (empirical :math:`W_2`)
    ``solver="emd"``: exact OT (POT's network simplex, :func:`ot.emd`) on each
    (class, group) cell. The cost matrices
    :math:`M_{ij} = \lVert x_i - y_j \rVert^2` of all cells are built in one batched
    matrix product on the device; only the optimal plans :math:`P^*` are computed on the
    CPU (the simplex is a CPU solver, one call per cell), and the loss is
    :math:`\sum \frac{1}{G_c} \langle P^*, M \rangle`. By the envelope theorem
    :math:`\partial W_2^2 / \partial M = P^*`, so autograd through :math:`M` gives the
    exact gradient (this is what :func:`ot.emd2` returns with the torch backend).
    ``solver="sinkhorn"``: the debiased Sinkhorn divergence
    :math:`S_\varepsilon(\nu,\mu) = OT_\varepsilon(\nu,\mu) - \frac12 OT_\varepsilon(\nu,\nu)
    - \frac12 OT_\varepsilon(\mu,\mu)` with all cells solved in one batched call
    (:func:`ot.batch.solve_batch`, log-domain Sinkhorn, envelope gradients), entirely on
    the device. :math:`\varepsilon` = ``reg`` times the mean cost of the batch (scale-free).
    :math:`S_\varepsilon \to W_2^2` as :math:`\varepsilon \to 0`. The term
    :math:`-\frac12 OT_\varepsilon(\mu,\mu)` does not depend on the synthetic images, so it
    changes no gradient; it is left out of the computed value because it costs one
    :math:`n_{c,g} \times n_{c,g}` problem per cell (about 20x the rest on a CPU at batch
    600). The value is therefore the divergence minus a constant, and its gradient
    vanishes when :math:`\nu_c = \mu_{c,g}` (where plain entropic OT's does not).

``cobra-bures`` (Gaussian :math:`W_2`)
    Each cloud is replaced by the Gaussian with its mean and (maximum-likelihood)
    covariance, and :math:`W_2^2` between Gaussians is the Bures-Wasserstein distance

    .. math::

        W_2^2 = \lVert m_s - m_g \rVert^2 + \operatorname{tr} \Sigma_s
        + \operatorname{tr} \Sigma_g
        - 2 \operatorname{tr} \big(\Sigma_s^{1/2} \Sigma_g \Sigma_s^{1/2}\big)^{1/2} .

    With :math:`k = 10` synthetic points in :math:`D = 2048` dimensions the covariances
    are rank-deficient (rank :math:`\le k - 1`), so no matrix square root of a
    :math:`D \times D` matrix is formed. Writing :math:`\Sigma_s = A A^\top`,
    :math:`\Sigma_g = B B^\top` with :math:`A = X_s^\top / \sqrt{k}`,
    :math:`B = X_g^\top / \sqrt{n}` (centred rows), the eigenvalues of
    :math:`\Sigma_s^{1/2} \Sigma_g \Sigma_s^{1/2}` are the squared singular values of
    :math:`A^\top B`, so the fidelity term is the nuclear norm
    :math:`\lVert X_s X_g^\top \rVert_* / \sqrt{k n}` of a small :math:`k \times n` matrix:
    exact for any rank, no :math:`\varepsilon I` regularisation needed, batched over
    all cells (:func:`torch.linalg.svdvals`, whose gradient is stable at repeated or zero
    singular values).

Samples whose group is unknown (group id ``-1``, see :mod:`fdd.datasets.group_noise`) belong to no
cell and are left out of both losses.

References
----------
.. [1] M. Agueh and G. Carlier, "Barycenters in the Wasserstein space", SIAM J. Math.
    Anal. 43(2), 2011.
.. [2] J. Feydy et al., "Interpolating between optimal transport and MMD using Sinkhorn
    divergences", AISTATS 2019.
.. [3] R. Bhatia, T. Jain and Y. Lim, "On the Bures-Wasserstein distance between positive
    definite matrices", Expositiones Mathematicae 37(2), 2019.
.. [4] R. Flamary et al., "POT: Python Optimal Transport", JMLR 22(78), 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from fdd.transport.barycenter import index_counts

__all__ = [
    "ALIGNMENT_MODES",
    "AlignmentMode",
    "REDUCTIONS",
    "Reduction",
    "W2Solver",
    "W2_SOLVERS",
    "alignment_loss",
]

AlignmentMode = Literal["cobra-w2", "cobra-bures"]
W2Solver = Literal["emd", "sinkhorn"]
Reduction = Literal["sum", "mean"]
ALIGNMENT_MODES: tuple[str, ...] = get_args(AlignmentMode)
W2_SOLVERS: tuple[str, ...] = get_args(W2Solver)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)

ERR_MODE = "mode must be one of {allowed}; got {value!r}"
ERR_SOLVER = "solver must be one of {allowed}; got {value!r}"
ERR_REDUCTION = "reduction must be one of {allowed}; got {value!r}"
ERR_REG = "reg must be a finite number > 0 for solver='sinkhorn'; got {value!r}"
ERR_DIM = "real and synthetic embeddings must have the same feature size; got {real} and {syn}"
ERR_SYN_LAYOUT = (
    "synthetic labels must hold the same number of images for every class "
    "(ipc = N_syn / num_classes); got counts {counts}"
)


@dataclass(frozen=True)
class _Cells:
    """Real embeddings padded per (class, group) cell, and the synthetic ones per class."""

    syn: Tensor  # (C, k, D)
    padded_cost: Tensor | None  # (C*G, k, W) squared distances (W: largest cell)
    mask: Tensor  # (C*G, W) bool, real slot holds a sample
    counts: Tensor  # (C*G,) long
    weights: Tensor  # (C*G,) 1/G_c for present cells, else 0
    real_sorted: Tensor  # (M, D) labelled real embeddings sorted by cell
    cell_sorted: Tensor  # (M,)
    position: Tensor  # (M,) slot inside the cell


def _syn_by_class(syn_features: Tensor, syn_labels: Tensor, num_classes: int, validate: bool) -> Tensor:
    if validate:
        counts = torch.bincount(syn_labels, minlength=num_classes)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise ValueError(ERR_SYN_LAYOUT.format(counts=counts.tolist()))
    order = torch.argsort(syn_labels, stable=True)
    return syn_features[order].reshape(num_classes, -1, syn_features.shape[1])


def _class_dots(rows: Tensor, cls: Tensor, syn: Tensor) -> Tensor:
    """``rows[i] . syn[cls[i], j]`` for every row and its class's k synthetic points: (M, k).

    ``rows`` are sorted by class; they are padded per class so that one batched matrix
    product (C, W, D) x (C, D, k) does the work, without multiplying each row by the other
    classes' synthetic points.
    """
    num_classes = syn.shape[0]
    counts = index_counts(cls, num_classes)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(cls.shape[0], device=cls.device) - starts[cls]
    width = max(int(counts.max()), 1) if cls.numel() else 1
    padded = rows.new_zeros(num_classes, width, rows.shape[1]).index_put((cls, position), rows)
    return torch.bmm(padded, syn.transpose(1, 2))[cls, position]


def _cells(
    real_features: Tensor,
    real_labels: Tensor,
    real_groups: Tensor,
    syn: Tensor,
    *,
    num_groups: int,
    cost: bool,
) -> _Cells:
    num_classes = syn.shape[0]
    num_cells = num_classes * num_groups
    labelled = real_groups >= 0
    # unlabelled samples go to a spare cell num_cells, dropped below (no device sync)
    cell = torch.where(labelled, real_labels * num_groups + real_groups, torch.full_like(real_labels, num_cells))
    counts_all = index_counts(cell, num_cells + 1)
    order = torch.argsort(cell, stable=True)
    sorted_cell = cell[order]
    starts = torch.cumsum(counts_all, 0) - counts_all
    position = torch.arange(cell.shape[0], device=cell.device) - starts[sorted_cell]
    keep = sorted_cell < num_cells
    order, sorted_cell, position = order[keep], sorted_cell[keep], position[keep]
    counts = counts_all[:num_cells]
    width = max(int(counts.max()), 1)
    real_sorted = real_features[order]
    mask = torch.zeros(num_cells, width, dtype=torch.bool, device=cell.device)
    mask[sorted_cell, position] = True
    present = (counts > 0).reshape(num_classes, num_groups)
    groups_present = present.sum(dim=1, keepdim=True).clamp_min(1)
    weights = (present / groups_present).to(syn.dtype).flatten()
    padded_cost = None
    if cost:
        k = syn.shape[1]
        cls = sorted_cell // num_groups
        # squared distances of each real sample to its class's k synthetic samples: (M, k)
        dots = _class_dots(real_sorted, cls, syn)  # (M, k)
        sq = real_sorted.pow(2).sum(1, keepdim=True) + syn.pow(2).sum(2)[cls] - 2 * dots
        padded_cost = sq.new_zeros(num_cells, width, k).index_put((sorted_cell, position), sq)
        padded_cost = padded_cost.transpose(1, 2)  # (C*G, k, W)
    return _Cells(syn, padded_cost, mask, counts, weights, real_sorted, sorted_cell, position)


def _w2_emd(cells: _Cells) -> Tensor:
    """Exact :math:`W_2^2` per cell: plans on the CPU, values through autograd on the device."""
    import ot  # POT (and its backends) is loaded only when an exact W2 is asked for

    cost = cells.padded_cost
    assert cost is not None  # built for the W2 solvers
    k = cost.shape[1]
    cost_np = cost.detach().to("cpu", torch.float64).numpy()
    counts = cells.counts.cpu().numpy()
    plans = np.zeros(cost_np.shape, dtype=np.float64)
    a = np.full(k, 1.0 / k)
    for index in np.flatnonzero(counts):  # one network-simplex call per present cell (CPU solver)
        n = int(counts[index])
        plans[index, :, :n] = ot.emd(a, np.full(n, 1.0 / n), np.ascontiguousarray(cost_np[index, :, :n]))
    plan = torch.from_numpy(plans).to(device=cost.device, dtype=cost.dtype)
    return (plan * cost).sum(dim=(1, 2))


def _w2_sinkhorn(cells: _Cells, reg: float) -> Tensor:
    """Debiased Sinkhorn divergence per cell, all cells in one batched solve on the device."""
    from ot.batch import solve_batch  # loaded only for cobra-w2's Sinkhorn solver, as POT above

    cost = cells.padded_cost  # (C*G, k, W)
    assert cost is not None  # built for the W2 solvers
    num_cells, k, _ = cost.shape
    num_groups = num_cells // cells.syn.shape[0]
    mask = cells.mask.to(cost.dtype)
    b = mask / cells.counts.clamp_min(1).unsqueeze(1).to(cost.dtype)
    a = cost.new_full((num_cells, k), 1.0 / k)
    eps = reg * float(cost.detach()[cells.mask.unsqueeze(1).expand_as(cost)].mean().clamp_min(1e-12))
    # padded slots: zero mass and a large cost, so they carry no plan and no NaN
    big = cost.detach().max() * 10 + 1
    cost_padded = torch.where(cells.mask.unsqueeze(1), cost, big)
    present = torch.nonzero(cells.counts > 0).flatten()  # empty cells have no feasible plan: not solved
    cross = cost.new_zeros(num_cells).index_put(
        (present,),
        solve_batch(
            cost_padded[present], reg=eps, a=a[present], b=b[present], method="log_sinkhorn", grad="envelope"
        ).value,
    )
    syn = cells.syn
    syn_cost = (syn.unsqueeze(2) - syn.unsqueeze(1)).pow(2).sum(-1)  # (C, k, k)
    a_syn = syn.new_full(syn.shape[:2], 1.0 / k)
    self_syn = solve_batch(syn_cost, reg=eps, a=a_syn, b=a_syn, method="log_sinkhorn", grad="envelope").value
    # the real-real term -1/2 OT_eps(mu, mu) is a constant of the synthetic images: left out
    return cross - 0.5 * self_syn.repeat_interleave(num_groups)


def _bures(cells: _Cells, num_groups: int) -> Tensor:
    """Bures-Wasserstein :math:`W_2^2` between the Gaussian fits of each cell and its class's synthetic set."""
    syn = cells.syn  # (C, k, D)
    num_classes, k, _ = syn.shape
    num_cells = num_classes * num_groups
    counts = cells.counts.to(syn.dtype)
    real = cells.real_sorted
    sums = real.new_zeros(num_cells, real.shape[1]).index_add(0, cells.cell_sorted, real)
    means = sums / counts.clamp_min(1).unsqueeze(1)  # (C*G, D)
    centred = real - means[cells.cell_sorted]
    syn_mean = syn.mean(dim=1)  # (C, D)
    syn_centred = syn - syn_mean.unsqueeze(1)
    mean_term = (syn_mean.repeat_interleave(num_groups, dim=0) - means).pow(2).sum(1)
    trace_syn = syn_centred.pow(2).sum(dim=(1, 2)) / k  # (C,)
    trace_real = real.new_zeros(num_cells).index_add(0, cells.cell_sorted, centred.pow(2).sum(1)) / counts.clamp_min(1)
    cls = cells.cell_sorted // num_groups
    dots = _class_dots(centred, cls, syn_centred)  # (M, k)
    width = cells.mask.shape[1]
    cross = dots.new_zeros(num_cells, width, k).index_put((cells.cell_sorted, cells.position), dots)
    nuclear = torch.linalg.svdvals(cross).sum(dim=1)  # (C*G,)
    fidelity = nuclear / torch.sqrt(counts.clamp_min(1) * k)
    return mean_term + trace_syn.repeat_interleave(num_groups) + trace_real - 2 * fidelity


def alignment_loss(
    real_features: Tensor,
    real_labels: Tensor,
    real_groups: Tensor,
    syn_features: Tensor,
    syn_labels: Tensor,
    *,
    num_classes: int,
    num_groups: int,
    mode: AlignmentMode,
    solver: W2Solver = "emd",
    reg: float = 0.05,
    reduction: Reduction = "sum",
    validate: bool = True,
) -> Tensor:
    r"""The uniform-barycenter :math:`W_2` alignment loss, summed over classes.

    .. math::
        L = \sum_c \sum_{g \in P_c} \frac{1}{G_c}\, W_2^2(\nu_c, \mu_{c,g})

    with the empirical (``cobra-w2``) or Gaussian (``cobra-bures``) :math:`W_2^2`; see
    the module docstring for the solvers and the relation to ``cobra``.

    Parameters
    ----------
    real_features : Tensor, shape (N_real, D)
        Embeddings of the real batch (all classes together); constants.
    real_labels, real_groups : Tensor, shape (N_real,)
        Class ids, and group ids in ``[0, num_groups)`` or ``-1`` (unknown group: the
        sample is ignored).
    syn_features : Tensor, shape (N_syn, D)
        Embeddings of the synthetic images, the same number ``k`` per class; gradients
        flow through them.
    syn_labels : Tensor, shape (N_syn,)
    num_classes, num_groups : int
    mode : {"cobra-w2", "cobra-bures"}
    solver : {"emd", "sinkhorn"}, default "emd"
        ``cobra-w2`` only: exact OT or debiased Sinkhorn divergence.
    reg : float, default 0.05
        Sinkhorn only: :math:`\varepsilon` relative to the mean cost of the batch.
    reduction : {"sum", "mean"}, default "sum"
        ``"mean"``: the weights :math:`1/G_c` of the formula; ``"sum"``: weights 1, i.e.
        :math:`G_c` times it (FairDD's scale; see the module docstring).
    validate : bool, default True
        Check the synthetic layout (one device sync); the synthesis loop turns it off.

    Returns
    -------
    Tensor
        Scalar loss. Classes without labelled real images in the batch contribute nothing.
    """
    if mode not in ALIGNMENT_MODES:
        raise ValueError(ERR_MODE.format(allowed=ALIGNMENT_MODES, value=mode))
    if solver not in W2_SOLVERS:
        raise ValueError(ERR_SOLVER.format(allowed=W2_SOLVERS, value=solver))
    if reduction not in REDUCTIONS:
        raise ValueError(ERR_REDUCTION.format(allowed=REDUCTIONS, value=reduction))
    if solver == "sinkhorn" and not (isinstance(reg, (int, float)) and np.isfinite(reg) and reg > 0):
        raise ValueError(ERR_REG.format(value=reg))
    if real_features.shape[1] != syn_features.shape[1]:
        raise ValueError(ERR_DIM.format(real=real_features.shape[1], syn=syn_features.shape[1]))
    syn = _syn_by_class(syn_features, syn_labels, num_classes, validate)
    real_features = real_features.to(syn.dtype)
    if mode == "cobra-bures":
        cells = _cells(real_features, real_labels, real_groups, syn, num_groups=num_groups, cost=False)
        per_cell = _bures(cells, num_groups)
    else:
        cells = _cells(real_features, real_labels, real_groups, syn, num_groups=num_groups, cost=True)
        per_cell = _w2_emd(cells) if solver == "emd" else _w2_sinkhorn(cells, reg)
    weights = cells.weights if reduction == "mean" else (cells.counts > 0).to(per_cell.dtype)
    return (weights * per_cell).sum()
