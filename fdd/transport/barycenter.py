r"""Per-(class, group) statistics and cross-group barycenters.

COBRA (cross-group barycenter alignment) distills each class :math:`c` toward a
barycenter of the distributions :math:`\mu_{c,g}` of its protected groups
:math:`g` with weights that do not depend on the group sizes:

.. math::
    b(c) = \mathop{\arg\min}_{\nu} \sum_{g \in \mathcal{G}_c} \lambda_{c,g}\,
    W_2^2(\nu, \mu_{c,g}), \qquad
    \lambda_{c,g} = \frac{1}{G_c} \ \text{(uniform)} \quad\text{or}\quad
    \lambda_{c,g} = \frac{n_{c,g}}{n_c} \ \text{(proportional)}

where :math:`\mathcal{G}_c` is the set of the :math:`G_c` groups present in class
:math:`c`. The mean of the :math:`W_2` barycenter is :math:`\sum_g \lambda_{c,g} m_{c,g}`,
so the first-moment target is a weighted average of the group means; proportional
weights give back the pooled class mean, i.e. the target of vanilla distillation.

This module offers

- :func:`cell_statistics`: batched sums, counts, means (and covariances) per
  (class, group) cell, differentiable w.r.t. the features (used on every
  iteration of the synthesis loop);
- :func:`barycenter_weights` and :func:`mean_barycenter`: the first-moment
  barycenter, batched over classes, differentiable;
- :func:`free_support_barycenter` and :func:`gaussian_barycenter`: full :math:`W_2`
  barycenters through POT (diagnostics, initialisation, static targets);
- :func:`per_class_barycenters`: one of the above for every class, with a
  :class:`MissingGroupWarning` for classes that lack some group;
- :func:`distances_to_targets`: how far each group mean lies from the uniform
  barycenter and from the pooled (vanilla) target.

References
----------
.. [1] M. Agueh and G. Carlier, "Barycenters in the Wasserstein space",
    SIAM Journal on Mathematical Analysis, 43(2), 904-924, 2011.
.. [2] M. Cuturi and A. Doucet, "Fast computation of Wasserstein barycenters",
    ICML 2014.
.. [3] R. Flamary et al., "POT: Python Optimal Transport", JMLR 22(78), 2021.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "WeightsMode",
    "BarycenterKind",
    "FairnessWarning",
    "MissingGroupWarning",
    "BarycenterConvergenceWarning",
    "CellStatistics",
    "FreeSupportBarycenter",
    "GaussianBarycenter",
    "ClassBarycenters",
    "TargetDistances",
    "cell_statistics",
    "barycenter_weights",
    "frontier_weights",
    "mean_barycenter",
    "free_support_barycenter",
    "gaussian_barycenter",
    "per_class_barycenters",
    "distances_to_targets",
]

WeightsMode = Literal["uniform", "proportional"]
BarycenterKind = Literal["mean", "free_support", "gaussian"]

WEIGHTS_MODES: tuple[str, ...] = get_args(WeightsMode)
BARYCENTER_KINDS: tuple[str, ...] = get_args(BarycenterKind)

# --------------------------------------------------------------------------- messages

ERR_CHOICE = "{name} must be one of {allowed}; got {value!r}"
ERR_POSITIVE_INT = "{name} must be a positive integer; got {value!r}"
ERR_NONNEGATIVE_FLOAT = "{name} must be a finite number >= 0; got {value!r}"
ERR_FEATURES_SHAPE = "features must have shape (N, D) with N >= 1 and D >= 1; got shape {shape}"
ERR_FLOAT_DTYPE = "{name} must be a floating-point tensor; got dtype {dtype}"
ERR_NONFINITE = "{name} contains {count} NaN or Inf values; all entries must be finite"
ERR_INDEX_SHAPE = "{name} must be a 1-D tensor of length N={n} (one per feature row); got shape {shape}"
ERR_INDEX_DTYPE = "{name} must be an integer tensor; got dtype {dtype}"
ERR_INDEX_RANGE = "{name} must lie in [0, {limit}) ({limit_name}={limit}); got values in [{low}, {high}]"
ERR_DEVICE = "{name} must be on the same device as {other} ({expected}); got {device}"
ERR_COUNTS_SHAPE = "counts must have shape (C, G){expected}; got shape {shape}"
ERR_LAMBDA = (
    "lam must be a number in [0, 1] (0: proportional weights, vanilla's target; 1: uniform, cobra's); got {value!r}"
)
ERR_MEANS_SHAPE = "means must have shape (C, G, D); got shape {shape}"
ERR_NEGATIVE = "{name} must be non-negative; got {count} negative entries (minimum {minimum})"
ERR_EMPTY_CLASS = (
    "every class needs at least one sample to define a barycenter; "
    "class index(es) {classes} have no sample in any group"
)
ERR_GROUP_LIST_EMPTY = "group_samples must hold at least one group; got an empty sequence"
ERR_GROUP_SAMPLES_SHAPE = "group_samples[{index}] must have shape (n_g, D) with n_g >= 1 and D={dim}; got shape {shape}"
ERR_WEIGHTS_SHAPE = "weights must be 'uniform', 'proportional' or an array of shape ({groups},); got shape {shape}"
ERR_WEIGHTS_SUM = "explicit weights must have a positive sum; got {value}"
ERR_PROPORTIONAL_COUNTS = "weights='proportional' needs counts (one per group) for {func}; got counts=None"
ERR_GROUP_COUNTS_SHAPE = "counts must have shape ({groups},) (one per group); got shape {shape}"
ERR_INIT_SHAPE = "init must have shape (support_size, D) = ({k}, {dim}); got shape {shape}"
ERR_GAUSSIAN_SHAPE = (
    "means must have shape (G, D) and covariances shape (G, D, D); got means {means} and covariances {covariances}"
)
ERR_SUPPORT_SIZE_REQUIRED = "kind='free_support' needs support_size (a positive integer); got None"

WARN_MISSING_GROUPS = (
    "class {cls} has no sample in group(s) {missing}; its barycenter uses the "
    "{kept} group(s) present {present} with {weights} weights"
)
WARN_NOT_CONVERGED = (
    "the Bures-Wasserstein fixed point did not converge: residual {residual:.3g} > "
    "tolerance {tolerance:.3g} after {num_iter} iterations"
)


class FairnessWarning(UserWarning):
    """Base class of the warnings about group coverage raised by :mod:`fdd`."""


class MissingGroupWarning(FairnessWarning):
    """A class lacks some protected group; its barycenter uses the groups present."""


class BarycenterConvergenceWarning(UserWarning):
    """An iterative barycenter solver stopped before reaching its tolerance."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CellStatistics:
    r"""Statistics of the features in every (class, group) cell.

    Attributes
    ----------
    sums : Tensor, shape (C, G, D)
        :math:`\sum_{i: y_i=c, a_i=g} x_i`.
    counts : Tensor, shape (C, G)
        :math:`n_{c,g}`, in the dtype of the features.
    means : Tensor, shape (C, G, D)
        :math:`m_{c,g} = \text{sums} / n_{c,g}`; zero where :math:`n_{c,g} = 0`.
    present : Tensor, shape (C, G), bool
        :math:`n_{c,g} > 0`.
    covariances : Tensor, shape (C, G, D, D), or None
        Maximum-likelihood covariance :math:`\frac{1}{n_{c,g}} \sum_i (x_i - m_{c,g})
        (x_i - m_{c,g})^\top`; zero where :math:`n_{c,g} = 0`. Only when asked for.
    """

    sums: Tensor
    counts: Tensor
    means: Tensor
    present: Tensor
    covariances: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.counts.shape[1])


@dataclass(frozen=True)
class FreeSupportBarycenter:
    r"""A free-support :math:`W_2` barycenter :math:`\sum_k w_k \delta_{x_k}`.

    Attributes
    ----------
    support : Tensor, shape (k, D)
        Atom locations :math:`x_k`.
    weights : Tensor, shape (k,)
        Atom weights :math:`w_k` (fixed, uniform :math:`1/k`).
    group_weights : Tensor, shape (G,)
        Barycentric coefficients :math:`\lambda_g` of the input groups.
    iterations : int
        Fixed-point iterations run.
    displacement : float
        Squared displacement of the support at the last iteration.
    """

    support: Tensor
    weights: Tensor
    group_weights: Tensor
    iterations: int
    displacement: float

    @property
    def mean(self) -> Tensor:
        """Mean :math:`\\sum_k w_k x_k` of the barycenter, shape (D,)."""
        return self.weights @ self.support


@dataclass(frozen=True)
class GaussianBarycenter:
    r"""A Bures-Wasserstein barycenter :math:`\mathcal{N}(m_b, \Sigma_b)`.

    Attributes
    ----------
    mean : Tensor, shape (D,)
    covariance : Tensor, shape (D, D)
    group_weights : Tensor, shape (G,)
        Barycentric coefficients :math:`\lambda_g`.
    iterations : int
        Fixed-point iterations run.
    residual : float
        Frobenius norm of the last fixed-point update.
    """

    mean: Tensor
    covariance: Tensor
    group_weights: Tensor
    iterations: int
    residual: float


@dataclass(frozen=True)
class ClassBarycenters:
    r"""One barycenter per class.

    Attributes
    ----------
    kind : {'mean', 'free_support', 'gaussian'}
    weights : {'uniform', 'proportional'}
    means : Tensor, shape (C, D)
        Mean of each class barycenter, :math:`\sum_g \lambda_{c,g} m_{c,g}`.
    group_weights : Tensor, shape (C, G)
        :math:`\lambda_{c,g}`; zero for the groups absent from class :math:`c`.
    present : Tensor, shape (C, G), bool
        Which groups each barycenter was computed from.
    counts : Tensor, shape (C, G)
    free_support : tuple of FreeSupportBarycenter, or None
        One per class when ``kind='free_support'``.
    gaussian : tuple of GaussianBarycenter, or None
        One per class when ``kind='gaussian'``.
    """

    kind: BarycenterKind
    weights: WeightsMode
    means: Tensor
    group_weights: Tensor
    present: Tensor
    counts: Tensor
    free_support: tuple[FreeSupportBarycenter, ...] | None = None
    gaussian: tuple[GaussianBarycenter, ...] | None = None

    @property
    def missing_groups(self) -> dict[int, list[int]]:
        """Class index -> absent group indices, for classes that miss some group."""
        present = self.present.cpu()
        return {
            int(c): torch.nonzero(~present[c]).flatten().tolist() for c in torch.nonzero(~present.all(dim=1)).flatten()
        }


@dataclass(frozen=True)
class TargetDistances:
    r"""Squared distances of the group means to the two candidate targets.

    Attributes
    ----------
    to_barycenter : Tensor, shape (C, G)
        :math:`\|m_{c,g} - b_{\text{unif}}(c)\|_2^2`; NaN where the group is absent.
    to_pooled : Tensor, shape (C, G)
        :math:`\|m_{c,g} - \bar m_c\|_2^2` with :math:`\bar m_c` the pooled class mean;
        NaN where the group is absent.
    barycenter_to_pooled : Tensor, shape (C,)
        :math:`\|b_{\text{unif}}(c) - \bar m_c\|_2^2`.
    barycenter : Tensor, shape (C, D)
    pooled : Tensor, shape (C, D)
    present : Tensor, shape (C, G), bool
    counts : Tensor, shape (C, G)
    """

    to_barycenter: Tensor
    to_pooled: Tensor
    barycenter_to_pooled: Tensor
    barycenter: Tensor
    pooled: Tensor
    present: Tensor
    counts: Tensor


# --------------------------------------------------------------------------- checks


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(ERR_CHOICE.format(name=name, allowed=list(allowed), value=value))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(ERR_POSITIVE_INT.format(name=name, value=value))


def _check_nonnegative_float(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not np.isfinite(value)
        or value < 0
    ):
        raise ValueError(ERR_NONNEGATIVE_FLOAT.format(name=name, value=value))


def _check_finite(name: str, values: Tensor) -> None:
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(ERR_NONFINITE.format(name=name, count=bad))


def _check_float(name: str, values: Tensor) -> None:
    if not values.dtype.is_floating_point:
        raise ValueError(ERR_FLOAT_DTYPE.format(name=name, dtype=values.dtype))


def _check_index(name: str, values: Tensor, n: int, limit: int, limit_name: str, device: torch.device) -> None:
    if values.dim() != 1 or values.shape[0] != n:
        raise ValueError(ERR_INDEX_SHAPE.format(name=name, n=n, shape=tuple(values.shape)))
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.is_complex():
        raise ValueError(ERR_INDEX_DTYPE.format(name=name, dtype=values.dtype))
    if values.device != device:
        raise ValueError(ERR_DEVICE.format(name=name, other="features", expected=device, device=values.device))
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= limit:
        raise ValueError(ERR_INDEX_RANGE.format(name=name, limit=limit, limit_name=limit_name, low=low, high=high))


def _check_counts(counts: Tensor, expected: tuple[int, int] | None = None) -> None:
    if counts.dim() != 2 or (expected is not None and tuple(counts.shape) != expected):
        suffix = f" = {expected}" if expected is not None else ""
        raise ValueError(ERR_COUNTS_SHAPE.format(expected=suffix, shape=tuple(counts.shape)))
    if counts.dtype == torch.bool or counts.is_complex():
        raise ValueError(
            ERR_CHOICE.format(name="counts dtype", allowed=["integer", "floating"], value=str(counts.dtype))
        )
    if counts.dtype.is_floating_point:
        _check_finite("counts", counts)
    negative = counts < 0
    if bool(negative.any()):
        raise ValueError(ERR_NEGATIVE.format(name="counts", count=int(negative.sum()), minimum=counts.min().item()))


def _as_tensor(values: Tensor | np.ndarray, *, like: Tensor | None = None) -> Tensor:
    if isinstance(values, Tensor):
        return values
    tensor = torch.as_tensor(np.asarray(values))
    if like is not None:
        tensor = tensor.to(device=like.device)
    return tensor


def _resolve_group_weights(
    weights: WeightsMode | Tensor | np.ndarray | Sequence[float],
    *,
    num_groups: int,
    counts: Tensor | None,
    func: str,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Barycentric coefficients :math:`\\lambda` (G,) for one barycenter, summing to one."""
    if isinstance(weights, str):
        _check_choice("weights", weights, WEIGHTS_MODES)
        if weights == "uniform":
            return torch.full((num_groups,), 1.0 / num_groups, dtype=dtype, device=device)
        if counts is None:
            raise ValueError(ERR_PROPORTIONAL_COUNTS.format(func=func))
        counts = counts.to(device=device, dtype=dtype)
        return counts / counts.sum()
    lam = torch.as_tensor(np.asarray(weights.detach().cpu() if isinstance(weights, Tensor) else weights))
    if lam.dim() != 1 or lam.shape[0] != num_groups:
        raise ValueError(ERR_WEIGHTS_SHAPE.format(groups=num_groups, shape=tuple(lam.shape)))
    if lam.dtype == torch.bool or lam.is_complex():
        raise ValueError(ERR_WEIGHTS_SHAPE.format(groups=num_groups, shape=tuple(lam.shape)))
    lam = lam.to(dtype=torch.float64)
    _check_finite("weights", lam)
    if bool((lam < 0).any()):
        raise ValueError(ERR_NEGATIVE.format(name="weights", count=int((lam < 0).sum()), minimum=lam.min().item()))
    total = float(lam.sum())
    if not total > 0:
        raise ValueError(ERR_WEIGHTS_SUM.format(value=total))
    return (lam / total).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- statistics


def index_counts(index: Tensor, size: int) -> Tensor:
    """``torch.bincount(index, minlength=size)`` for ids known to lie in ``[0, size)``.

    Unlike :func:`torch.bincount`, which reads the largest id back to the host to size
    its output, this never synchronises with the device, so it can run inside a
    captured CUDA graph (:mod:`fdd.distillation.cuda_graph`) and keeps the launch queue full.
    """
    return torch.zeros(size, dtype=torch.long, device=index.device).scatter_add_(
        0, index.long(), torch.ones_like(index, dtype=torch.long)
    )


def cell_statistics(
    features: Tensor,
    labels: Tensor,
    groups: Tensor,
    *,
    num_classes: int,
    num_groups: int,
    covariance: bool = False,
    validate: bool = True,
) -> CellStatistics:
    r"""Sums, counts, means (and covariances) of the features of every (class, group) cell.

    .. math::
        n_{c,g} = \sum_i [y_i = c][a_i = g], \qquad
        m_{c,g} = \frac{1}{n_{c,g}} \sum_i [y_i = c][a_i = g]\, x_i, \qquad
        \Sigma_{c,g} = \frac{1}{n_{c,g}} \sum_i [y_i = c][a_i = g]\,
        (x_i - m_{c,g})(x_i - m_{c,g})^\top

    One ``index_add`` and one :func:`index_counts` over the flattened cell index
    :math:`c G + g`; no Python loop over classes or groups. Differentiable with
    respect to ``features``. The outputs follow the device and dtype of ``features``.

    Parameters
    ----------
    features : Tensor, shape (N, D)
        Floating-point embeddings.
    labels : Tensor, shape (N,)
        Integer class ids in ``[0, num_classes)``.
    groups : Tensor, shape (N,)
        Integer protected-group ids in ``[0, num_groups)``.
    num_classes : int
        C, the number of classes.
    num_groups : int
        G, the number of protected groups.
    covariance : bool, default False
        Also compute the maximum-likelihood covariance of each cell (C, G, D, D).
        Memory is :math:`O(C G \max_{c,g} n_{c,g} D)` for the padded batch plus
        :math:`O(C G D^2)` for the result.
    validate : bool, default True
        Check shapes, dtypes, index ranges and finiteness. The checks synchronise
        with the device; a hot loop whose inputs are known to be valid may turn them off.

    Returns
    -------
    CellStatistics
        ``sums`` (C, G, D), ``counts`` (C, G), ``means`` (C, G, D), ``present`` (C, G)
        and ``covariances`` (C, G, D, D) or None.

    Raises
    ------
    ValueError
        On a shape, dtype or device mismatch, an out-of-range id or a NaN/Inf feature.
    """
    if validate:
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("num_groups", num_groups)
        if features.dim() != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(ERR_FEATURES_SHAPE.format(shape=tuple(features.shape)))
        _check_float("features", features)
        n = features.shape[0]
        _check_index("labels", labels, n, num_classes, "num_classes", features.device)
        _check_index("groups", groups, n, num_groups, "num_groups", features.device)
        _check_finite("features", features)
    num_cells = num_classes * num_groups
    dim = features.shape[1]
    cell = labels.long() * num_groups + groups.long()
    sums = features.new_zeros((num_cells, dim)).index_add(0, cell, features)
    counts_int = index_counts(cell, num_cells)
    counts = counts_int.to(features.dtype)
    present = counts_int > 0
    means = sums / counts.clamp_min(1).unsqueeze(-1)

    covariances = None
    if covariance:
        centered = features - means[cell]
        order = torch.argsort(cell, stable=True)
        sorted_cell = cell[order]
        starts = torch.cumsum(counts_int, 0) - counts_int
        position = torch.arange(cell.shape[0], device=cell.device) - starts[sorted_cell]
        width = int(counts_int.max())
        padded = features.new_zeros((num_cells, width, dim)).index_put((sorted_cell, position), centered[order])
        scatter = padded.transpose(1, 2) @ padded
        covariances = (scatter / counts.clamp_min(1)[:, None, None]).reshape(num_classes, num_groups, dim, dim)

    return CellStatistics(
        sums=sums.reshape(num_classes, num_groups, dim),
        counts=counts.reshape(num_classes, num_groups),
        means=means.reshape(num_classes, num_groups, dim),
        present=present.reshape(num_classes, num_groups),
        covariances=covariances,
    )


# --------------------------------------------------------------------------- first moment


def barycenter_weights(
    counts: Tensor,
    *,
    weights: WeightsMode = "uniform",
    validate: bool = True,
) -> Tensor:
    r"""Barycentric coefficients :math:`\lambda_{c,g}` of the groups of every class.

    .. math::
        \lambda^{\text{uniform}}_{c,g} = \frac{[n_{c,g} > 0]}{G_c}, \qquad
        \lambda^{\text{proportional}}_{c,g} = \frac{n_{c,g}}{n_c}, \qquad
        G_c = \sum_g [n_{c,g} > 0], \quad n_c = \sum_g n_{c,g}

    Uniform weights ignore the group sizes (COBRA); proportional weights reproduce
    the pooled class statistic (vanilla distillation).

    Parameters
    ----------
    counts : Tensor, shape (C, G)
        Non-negative sample counts :math:`n_{c,g}` (integer or floating).
    weights : {'uniform', 'proportional'}, default 'uniform'
    validate : bool, default True
        Check the counts (shape, sign, finiteness, empty classes); synchronises
        with the device.

    Returns
    -------
    Tensor, shape (C, G)
        Rows sum to one; zero for absent groups. Floating dtype of ``counts``
        (float32 for integer counts), on its device.

    Raises
    ------
    ValueError
        On an unknown ``weights``, a bad shape, negative or non-finite counts, or a
        class with no sample in any group (the message names the class indices).
    """
    _check_choice("weights", weights, WEIGHTS_MODES)
    if validate:
        _check_counts(counts)
    dtype = counts.dtype if counts.dtype.is_floating_point else torch.get_default_dtype()
    counts_f = counts.detach().to(dtype)
    present = counts_f > 0
    if validate:
        empty = ~present.any(dim=1)
        if bool(empty.any()):
            raise ValueError(ERR_EMPTY_CLASS.format(classes=torch.nonzero(empty).flatten().tolist()))
    if weights == "uniform":
        mass = present.to(dtype)
    else:
        mass = counts_f
    return mass / mass.sum(dim=1, keepdim=True)


def frontier_weights(counts: Tensor, *, lam: float, validate: bool = True) -> Tensor:
    r"""Weights on the frontier from proportional (``lam=0``) to uniform (``lam=1``) group weights.

    .. math::
        \lambda^{(\ell)}_{c,g} = (1 - \ell)\, \frac{n_{c,g}}{n_c} + \ell\, \frac{[n_{c,g} > 0]}{G_c}

    The mean barycenter is linear in the weights, so its target moves on the segment from the
    pooled class mean (vanilla's target) to the uniform barycenter (cobra's): a trade-off
    between the data's group shares and imbalance-agnostic fairness. Rows sum to one.

    Parameters
    ----------
    counts : Tensor, shape (C, G)
        As :func:`barycenter_weights`.
    lam : float in [0, 1]
    validate : bool, default True

    Raises
    ------
    ValueError
        For ``lam`` outside [0, 1], and as :func:`barycenter_weights`.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= float(lam) <= 1.0:
        raise ValueError(ERR_LAMBDA.format(value=lam))
    uniform = barycenter_weights(counts, weights="uniform", validate=validate)
    if lam == 1:
        return uniform
    proportional = barycenter_weights(counts, weights="proportional", validate=False)
    return (1.0 - float(lam)) * proportional + float(lam) * uniform


def mean_barycenter(
    means: Tensor,
    counts: Tensor,
    *,
    weights: WeightsMode = "uniform",
    validate: bool = True,
    lam: float | None = None,
) -> Tensor:
    r"""First-moment barycenter of the group means of every class.

    .. math::
        b(c) = \mathop{\arg\min}_{b} \sum_{g} \lambda_{c,g} \|b - m_{c,g}\|_2^2
             = \sum_{g} \lambda_{c,g}\, m_{c,g}

    with :math:`\lambda` from :func:`barycenter_weights`: ``'uniform'`` averages the
    means of the groups present in the class, ``'proportional'`` gives the pooled
    class mean. It is also the mean of the :math:`W_2` barycenter of the group
    distributions with the same weights. Batched over classes and differentiable
    with respect to ``means``.

    Parameters
    ----------
    means : Tensor, shape (C, G, D)
        Group means :math:`m_{c,g}`; entries of absent groups are ignored.
    counts : Tensor, shape (C, G)
        Sample counts :math:`n_{c,g}`; a group is present where its count is > 0.
    weights : {'uniform', 'proportional'}, default 'uniform'
    validate : bool, default True
        Check shapes, counts and finiteness; synchronises with the device.
    lam : float in [0, 1], optional
        When given, the weights are :func:`frontier_weights` (``lam`` 0: proportional,
        1: uniform) and ``weights`` is not read.

    Returns
    -------
    Tensor, shape (C, D)
        On the device and in the dtype of ``means``.

    Raises
    ------
    ValueError
        On an unknown ``weights``, a shape mismatch, negative counts, NaN/Inf means of
        present groups, or a class with no sample at all.

    References
    ----------
    .. [1] M. Agueh and G. Carlier, "Barycenters in the Wasserstein space", 2011.
    """
    _check_choice("weights", weights, WEIGHTS_MODES)
    if validate:
        if means.dim() != 3:
            raise ValueError(ERR_MEANS_SHAPE.format(shape=tuple(means.shape)))
        _check_float("means", means)
        _check_counts(counts, expected=(means.shape[0], means.shape[1]))
    coefficients = (
        barycenter_weights(counts, weights=weights, validate=validate)
        if lam is None
        else frontier_weights(counts, lam=lam, validate=validate)
    ).to(device=means.device, dtype=means.dtype)
    present = (counts > 0).to(means.device).unsqueeze(-1)
    safe = torch.where(present, means, torch.zeros_like(means))
    if validate:
        _check_finite("means", safe)
    return torch.einsum("cg,cgd->cd", coefficients, safe)


# --------------------------------------------------------------------------- W2 barycenters


def free_support_barycenter(
    group_samples: Sequence[Tensor | np.ndarray],
    *,
    weights: WeightsMode | Tensor | np.ndarray | Sequence[float] = "uniform",
    support_size: int,
    init: Tensor | np.ndarray | None = None,
    num_iter: int = 100,
    tolerance: float = 1e-7,
    seed: int = 0,
) -> FreeSupportBarycenter:
    r"""Free-support :math:`W_2` barycenter of the empirical group distributions.

    .. math::
        \min_{X \in \mathbb{R}^{k \times D}} \sum_{g=1}^{G} \lambda_g\,
        W_2^2\Big(\tfrac{1}{k}\textstyle\sum_j \delta_{X_j},\
        \tfrac{1}{n_g}\sum_i \delta_{x_{g,i}}\Big)

    solved by the fixed-point iteration of POT's :func:`ot.lp.free_support_barycenter`
    (exact OT plans, atom weights fixed at :math:`1/k`). After any iteration the
    weighted mean of the support is exactly :math:`\sum_g \lambda_g m_g`.

    The OT solver runs on the CPU in float64; the result is returned as torch
    tensors on the device and in the (floating) dtype of the first group. Not
    differentiable.

    Parameters
    ----------
    group_samples : sequence of G arrays, shapes (n_g, D)
        Samples of each group (torch tensors or numpy arrays), n_g >= 1.
    weights : {'uniform', 'proportional'} or array of shape (G,), default 'uniform'
        ``'uniform'``: :math:`\lambda_g = 1/G` whatever the :math:`n_g`;
        ``'proportional'``: :math:`\lambda_g = n_g / \sum_h n_h`; an array is
        normalised to sum to one.
    support_size : int
        k, the number of atoms of the barycenter.
    init : array, shape (k, D), optional
        Initial support. By default k points drawn from the mixture
        :math:`\sum_g \lambda_g \mu_g` (a group by :math:`\lambda`, then a sample).
    num_iter : int, default 100
        Maximum number of fixed-point iterations.
    tolerance : float, default 1e-7
        Stop when the squared displacement of the support falls below it.
    seed : int, default 0
        Seed of the default initialisation.

    Returns
    -------
    FreeSupportBarycenter
        ``support`` (k, D), ``weights`` (k,), ``group_weights`` (G,), ``iterations``,
        ``displacement``.

    References
    ----------
    .. [2] M. Cuturi and A. Doucet, "Fast computation of Wasserstein barycenters", ICML 2014.
    .. [3] P. C. Alvarez-Esteban et al., "A fixed-point approach to barycenters in
        Wasserstein space", J. Math. Anal. Appl. 441(2), 2016.
    """
    if len(group_samples) == 0:
        raise ValueError(ERR_GROUP_LIST_EMPTY)
    _check_positive_int("support_size", support_size)
    _check_positive_int("num_iter", num_iter)
    _check_nonnegative_float("tolerance", tolerance)

    first = group_samples[0]
    if isinstance(first, Tensor):
        device = first.device
        dtype = first.dtype if first.dtype.is_floating_point else torch.get_default_dtype()
    else:
        device = torch.device("cpu")
        arr = np.asarray(first)
        dtype = torch.from_numpy(arr[:0]).dtype if np.issubdtype(arr.dtype, np.floating) else torch.get_default_dtype()

    locations: list[np.ndarray] = []
    dim = None
    for index, samples in enumerate(group_samples):
        arr = samples.detach().cpu().numpy() if isinstance(samples, Tensor) else np.asarray(samples)
        if dim is None and arr.ndim == 2:
            dim = arr.shape[1]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[1] != dim:
            raise ValueError(ERR_GROUP_SAMPLES_SHAPE.format(index=index, dim=dim, shape=arr.shape))
        arr = arr.astype(np.float64)
        _check_finite(f"group_samples[{index}]", torch.from_numpy(arr))
        locations.append(np.ascontiguousarray(arr))
    sizes = np.array([loc.shape[0] for loc in locations], dtype=np.float64)
    lam = _resolve_group_weights(
        weights,
        num_groups=len(locations),
        counts=torch.from_numpy(sizes),
        func="free_support_barycenter",
        dtype=torch.float64,
        device=torch.device("cpu"),
    ).numpy()

    if init is None:
        rng = np.random.default_rng(seed)
        chosen_groups = rng.choice(len(locations), size=support_size, p=lam)
        x_init = np.stack([locations[g][rng.integers(locations[g].shape[0])] for g in chosen_groups])
    else:
        x_init = init.detach().cpu().numpy() if isinstance(init, Tensor) else np.asarray(init)
        if x_init.shape != (support_size, dim):
            raise ValueError(ERR_INIT_SHAPE.format(k=support_size, dim=dim, shape=x_init.shape))
        x_init = x_init.astype(np.float64)
        _check_finite("init", torch.from_numpy(x_init))

    atom_weights = np.full(support_size, 1.0 / support_size)
    measure_weights = [np.full(loc.shape[0], 1.0 / loc.shape[0]) for loc in locations]
    import ot  # POT is needed only for the W2 barycenters, not for the synthesis loop

    support, log = ot.lp.free_support_barycenter(
        locations,
        measure_weights,
        np.ascontiguousarray(x_init),
        b=atom_weights,
        weights=lam,
        numItermax=num_iter,
        stopThr=tolerance,
        log=True,
    )
    displacements = log["displacement_square_norms"]
    return FreeSupportBarycenter(
        support=torch.from_numpy(np.asarray(support)).to(device=device, dtype=dtype),
        weights=torch.from_numpy(atom_weights).to(device=device, dtype=dtype),
        group_weights=torch.from_numpy(lam).to(device=device, dtype=dtype),
        iterations=len(displacements),
        displacement=float(displacements[-1]) if displacements else float("nan"),
    )


def gaussian_barycenter(
    means: Tensor | np.ndarray,
    covariances: Tensor | np.ndarray,
    *,
    weights: WeightsMode | Tensor | np.ndarray | Sequence[float] = "uniform",
    counts: Tensor | np.ndarray | None = None,
    num_iter: int = 1000,
    tolerance: float = 1e-7,
) -> GaussianBarycenter:
    r"""Bures-Wasserstein barycenter of Gaussian group distributions.

    .. math::
        (m_b, \Sigma_b) = \mathop{\arg\min}_{m, \Sigma} \sum_{g=1}^{G} \lambda_g\,
        W_2^2\big(\mathcal{N}(m, \Sigma), \mathcal{N}(m_g, \Sigma_g)\big),

    .. math::
        m_b = \sum_g \lambda_g m_g, \qquad
        \Sigma_b = \sum_g \lambda_g \big(\Sigma_b^{1/2} \Sigma_g \Sigma_b^{1/2}\big)^{1/2}

    The covariance is the fixed point of POT's
    :func:`ot.gaussian.bures_wasserstein_barycenter` (``method='fixed_point'``), run
    with POT's torch backend in float64 on the input device; the result is cast back
    to the input dtype. Differentiable through POT's matrix square root.

    Parameters
    ----------
    means : Tensor or array, shape (G, D)
    covariances : Tensor or array, shape (G, D, D)
        Symmetric positive semi-definite.
    weights : {'uniform', 'proportional'} or array of shape (G,), default 'uniform'
        ``'uniform'``: :math:`\lambda_g = 1/G`; ``'proportional'`` needs ``counts``;
        an array is normalised to sum to one.
    counts : Tensor or array, shape (G,), optional
        Group sizes, for ``weights='proportional'``.
    num_iter : int, default 1000
    tolerance : float, default 1e-7
        On the Frobenius norm of the fixed-point update. A
        :class:`BarycenterConvergenceWarning` is emitted if it is not reached.

    Returns
    -------
    GaussianBarycenter
        ``mean`` (D,), ``covariance`` (D, D), ``group_weights`` (G,), ``iterations``,
        ``residual``; torch tensors on the device of ``means`` (CPU for numpy input).

    References
    ----------
    .. [1] M. Agueh and G. Carlier, "Barycenters in the Wasserstein space", 2011.
    """
    means_t = _as_tensor(means)
    cov_t = _as_tensor(covariances, like=means_t)
    _check_positive_int("num_iter", num_iter)
    _check_nonnegative_float("tolerance", tolerance)
    if (
        means_t.dim() != 2
        or cov_t.dim() != 3
        or means_t.shape[0] == 0
        or cov_t.shape != (means_t.shape[0], means_t.shape[1], means_t.shape[1])
    ):
        raise ValueError(ERR_GAUSSIAN_SHAPE.format(means=tuple(means_t.shape), covariances=tuple(cov_t.shape)))
    if cov_t.device != means_t.device:
        raise ValueError(
            ERR_DEVICE.format(name="covariances", other="means", expected=means_t.device, device=cov_t.device)
        )
    _check_finite("means", means_t)
    _check_finite("covariances", cov_t)
    out_dtype = means_t.dtype if means_t.dtype.is_floating_point else torch.get_default_dtype()
    device = means_t.device
    num_groups = means_t.shape[0]
    counts_t = None
    if counts is not None:
        counts_t = _as_tensor(counts).to(device=device, dtype=torch.float64)
        if counts_t.shape != (num_groups,):
            raise ValueError(ERR_GROUP_COUNTS_SHAPE.format(groups=num_groups, shape=tuple(counts_t.shape)))
        _check_finite("counts", counts_t)
        if bool((counts_t < 0).any()):
            raise ValueError(
                ERR_NEGATIVE.format(name="counts", count=int((counts_t < 0).sum()), minimum=counts_t.min().item())
            )
        if isinstance(weights, str) and weights == "proportional" and not float(counts_t.sum()) > 0:
            raise ValueError(ERR_WEIGHTS_SUM.format(value=float(counts_t.sum())))
    lam = _resolve_group_weights(
        weights,
        num_groups=num_groups,
        counts=counts_t,
        func="gaussian_barycenter",
        dtype=torch.float64,
        device=device,
    )
    m64 = means_t.to(torch.float64)
    c64 = cov_t.to(torch.float64)
    c64 = 0.5 * (c64 + c64.transpose(-1, -2))
    # POT prints "Dit not converge." instead of warning; capture it and warn properly.
    with contextlib.redirect_stdout(io.StringIO()):
        import ot  # lazily, as in free_support_barycenter: the synthesis loop does not need POT

        mean, cov, log = ot.gaussian.bures_wasserstein_barycenter(
            m64, c64, weights=lam, method="fixed_point", num_iter=num_iter, eps=tolerance, log=True
        )
    residual = float(log["final_diff"])
    iterations = int(log["num_iter"]) + 1
    if residual > tolerance:
        warnings.warn(
            WARN_NOT_CONVERGED.format(residual=residual, tolerance=tolerance, num_iter=iterations),
            BarycenterConvergenceWarning,
            stacklevel=2,
        )
    return GaussianBarycenter(
        mean=mean.to(out_dtype),
        covariance=cov.to(out_dtype),
        group_weights=lam.to(out_dtype),
        iterations=iterations,
        residual=residual,
    )


# --------------------------------------------------------------------------- per class


def _warn_missing_groups(present: Tensor, weights: str) -> None:
    present = present.cpu()
    for c in torch.nonzero(~present.all(dim=1)).flatten().tolist():
        kept = torch.nonzero(present[c]).flatten().tolist()
        if not kept:
            continue  # an empty class raises elsewhere
        missing = torch.nonzero(~present[c]).flatten().tolist()
        warnings.warn(
            WARN_MISSING_GROUPS.format(cls=c, missing=missing, kept=len(kept), present=kept, weights=weights),
            MissingGroupWarning,
            stacklevel=3,
        )


def per_class_barycenters(
    features: Tensor,
    labels: Tensor,
    groups: Tensor,
    *,
    num_classes: int,
    num_groups: int,
    weights: WeightsMode = "uniform",
    kind: BarycenterKind = "mean",
    support_size: int | None = None,
    num_iter: int | None = None,
    tolerance: float = 1e-7,
    covariance_reg: float = 0.0,
    seed: int = 0,
) -> ClassBarycenters:
    r"""One cross-group barycenter per class.

    .. math::
        b(c) = \mathop{\arg\min}_{\nu} \sum_{g \in \mathcal{G}_c} \lambda_{c,g}\,
        D(\nu, \mu_{c,g}), \qquad \mathcal{G}_c = \{g : n_{c,g} > 0\}

    with :math:`D` the squared distance between means (``kind='mean'``), :math:`W_2^2`
    between empirical measures (``'free_support'``) or between Gaussian fits
    (``'gaussian'``), and :math:`\lambda` from :func:`barycenter_weights`.

    A class that misses some group gets the barycenter of the groups it has, and a
    :class:`MissingGroupWarning` naming the class and the missing groups. A class
    with no sample at all is an error.

    Parameters
    ----------
    features : Tensor, shape (N, D)
    labels : Tensor, shape (N,)
    groups : Tensor, shape (N,)
    num_classes : int
    num_groups : int
    weights : {'uniform', 'proportional'}, default 'uniform'
    kind : {'mean', 'free_support', 'gaussian'}, default 'mean'
    support_size : int, optional
        Atoms per class barycenter; required for ``kind='free_support'``.
    num_iter : int, optional
        Solver iterations (default 100 for free support, 1000 for Gaussian).
    tolerance : float, default 1e-7
    covariance_reg : float, default 0.0
        Added to the diagonal of every group covariance (``kind='gaussian'``).
    seed : int, default 0
        Seed of the free-support initialisation (class c uses ``seed + c``).

    Returns
    -------
    ClassBarycenters
        ``means`` (C, D) for every kind, plus one :class:`FreeSupportBarycenter` or
        :class:`GaussianBarycenter` per class.

    Raises
    ------
    ValueError
        On bad input (see :func:`cell_statistics`), an unknown ``weights`` or
        ``kind``, or a class without samples.
    """
    _check_choice("weights", weights, WEIGHTS_MODES)
    _check_choice("kind", kind, BARYCENTER_KINDS)
    _check_nonnegative_float("covariance_reg", covariance_reg)
    if kind == "free_support":
        if support_size is None:
            raise ValueError(ERR_SUPPORT_SIZE_REQUIRED)
        _check_positive_int("support_size", support_size)
    if num_iter is not None:
        _check_positive_int("num_iter", num_iter)
    stats = cell_statistics(
        features,
        labels,
        groups,
        num_classes=num_classes,
        num_groups=num_groups,
        covariance=(kind == "gaussian"),
    )
    lam = barycenter_weights(stats.counts, weights=weights)
    _warn_missing_groups(stats.present, weights)
    means = mean_barycenter(stats.means, stats.counts, weights=weights, validate=False)
    present_cpu = stats.present.cpu()

    free_support = None
    gaussian = None
    if kind == "free_support":
        cell = labels.long() * num_groups + groups.long()
        order = torch.argsort(cell, stable=True)
        per_cell = torch.split(features.detach()[order], stats.counts.long().flatten().tolist())
        results = []
        for c in range(num_classes):
            kept = torch.nonzero(present_cpu[c]).flatten().tolist()
            results.append(
                free_support_barycenter(
                    [per_cell[c * num_groups + g] for g in kept],
                    weights=weights,
                    support_size=int(support_size),  # type: ignore[arg-type]
                    num_iter=100 if num_iter is None else num_iter,
                    tolerance=tolerance,
                    seed=seed + c,
                )
            )
        free_support = tuple(results)
        means = torch.stack([r.mean for r in results])
    elif kind == "gaussian":
        assert stats.covariances is not None
        eye = torch.eye(features.shape[1], device=features.device, dtype=features.dtype)
        gaussians = []
        for c in range(num_classes):
            present_index = torch.nonzero(present_cpu[c]).flatten().to(features.device)
            gaussians.append(
                gaussian_barycenter(
                    stats.means[c, present_index],
                    stats.covariances[c, present_index] + covariance_reg * eye,
                    weights=weights,
                    counts=stats.counts[c, present_index],
                    num_iter=1000 if num_iter is None else num_iter,
                    tolerance=tolerance,
                )
            )
        gaussian = tuple(gaussians)
        means = torch.stack([r.mean for r in gaussians])

    return ClassBarycenters(
        kind=kind,
        weights=weights,
        means=means,
        group_weights=lam.to(device=features.device, dtype=features.dtype),
        present=stats.present,
        counts=stats.counts,
        free_support=free_support,
        gaussian=gaussian,
    )


def distances_to_targets(
    means: Tensor,
    counts: Tensor,
) -> TargetDistances:
    r"""Squared distances of each group mean to the uniform barycenter and to the pooled mean.

    .. math::
        d^{\text{bary}}_{c,g} = \Big\|m_{c,g} - \frac{1}{G_c}\sum_{h \in \mathcal{G}_c} m_{c,h}\Big\|_2^2,
        \qquad
        d^{\text{pooled}}_{c,g} = \Big\|m_{c,g} - \sum_h \frac{n_{c,h}}{n_c} m_{c,h}\Big\|_2^2

    The pooled mean is the target of vanilla distillation; it sits close to the
    majority group, so minority groups have a large :math:`d^{\text{pooled}}`.

    Parameters
    ----------
    means : Tensor, shape (C, G, D)
        Group means, e.g. :attr:`CellStatistics.means`.
    counts : Tensor, shape (C, G)
        Group counts, e.g. :attr:`CellStatistics.counts`.

    Returns
    -------
    TargetDistances
        ``to_barycenter`` and ``to_pooled`` (C, G) with NaN for absent groups,
        ``barycenter_to_pooled`` (C,), the two targets (C, D), ``present``, ``counts``.
    """
    barycenter = mean_barycenter(means, counts, weights="uniform")
    pooled = mean_barycenter(means, counts, weights="proportional", validate=False)
    present = (counts > 0).to(means.device)
    nan = torch.full(present.shape, float("nan"), dtype=means.dtype, device=means.device)
    to_bary = ((means - barycenter.unsqueeze(1)) ** 2).sum(-1)
    to_pooled = ((means - pooled.unsqueeze(1)) ** 2).sum(-1)
    return TargetDistances(
        to_barycenter=torch.where(present, to_bary, nan),
        to_pooled=torch.where(present, to_pooled, nan),
        barycenter_to_pooled=((barycenter - pooled) ** 2).sum(-1),
        barycenter=barycenter,
        pooled=pooled,
        present=present,
        counts=counts,
    )
