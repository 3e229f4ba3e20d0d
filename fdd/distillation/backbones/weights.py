"""Per-sample weights that turn group-aware targets into weighted sums over a real batch.

Gradients and mean features are linear in the per-sample weights, so the targets of
the three modes are weighted sums over the real batch of a class ``c``:

.. math::

    \\text{vanilla:}\\quad w_i = \\frac{1}{n_c}, \\qquad
    \\text{cobra:}\\quad w_i = \\frac{1}{G_c\\, n_{c, g(i)}}, \\qquad
    \\text{fairdd (one row per group } g\\text{):}\\quad w_{g,i} = \\frac{[g(i) = g]}{n_{c,g}}

where ``n_{c,g}`` counts the batch's images of class ``c`` and group ``g`` and ``G_c``
the groups present. Images of unknown group (``-1``, :mod:`fdd.datasets.group_noise`) count in
vanilla's pooled batch and are left out of the group targets, as in :mod:`fdd.distillation.dm`. The cobra weights give each present group the same total weight
``1 / G_c`` whatever its size: the layer-wise mean over groups of per-group targets
(the uniform barycenter of their first moments) in one weighted sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WEIGHTED_MODES", "cell_weights", "group_balanced_weights"]

ERR_MODE = "mode must be one of {allowed}; got {value!r}"
WEIGHTED_MODES: tuple[str, ...] = ("vanilla", "fairdd", "cobra")


def cell_weights(groups: Tensor, valid: Tensor, *, num_groups: int, mode: str) -> tuple[Tensor, Tensor]:
    """Weights of each class's real batch for ``mode`` (see the module docstring).

    Parameters
    ----------
    groups : Tensor, shape (C, B)
        Group id of every image of the per-class batches.
    valid : Tensor, shape (C, B), bool
        Which entries are real draws (``False``: padding of a small class).
    num_groups : int
    mode : {"vanilla", "fairdd", "cobra"}

    Returns
    -------
    weights : Tensor, shape (C, K, B)
        ``K = 1`` for vanilla and cobra, ``K = num_groups`` for fairdd. Every row sums
        to 1 over ``B`` unless its (class, group) cell is empty (then 0).
    present : Tensor, shape (C, K), bool
        Rows with at least one image.
    """
    if mode not in WEIGHTED_MODES:
        raise ValueError(ERR_MODE.format(allowed=WEIGHTED_MODES, value=mode))
    v = valid.float()
    if mode == "vanilla":  # the pooled class batch: every image, labelled or not
        n = v.sum(dim=1, keepdim=True)  # (C, 1)
        return (v / n.clamp_min(1)).unsqueeze(1), n > 0
    # unknown groups (-1) go to a spare column that is dropped: left out of the group targets
    spare = torch.where(groups < 0, torch.full_like(groups, num_groups), groups)
    one_hot = torch.nn.functional.one_hot(spare, num_groups + 1).float()[..., :num_groups] * v.unsqueeze(2)
    counts = one_hot.sum(dim=1)  # (C, G)
    if mode == "fairdd":
        weights = one_hot.transpose(1, 2) / counts.clamp_min(1).unsqueeze(2)  # (C, G, B)
        return weights, counts > 0
    present_groups = (counts > 0).sum(dim=1, keepdim=True).float()  # G_c, (C, 1)
    padded = torch.cat([counts, torch.zeros_like(counts[:, :1])], dim=1)
    per_sample_count = torch.gather(padded, 1, spare)  # n_{c, g(i)}; 0 for unknown groups
    labelled = v * (groups >= 0).float()
    weights = labelled / (present_groups * per_sample_count).clamp_min(1)
    return weights.unsqueeze(1), present_groups > 0


def group_balanced_weights(labels: Tensor, groups: Tensor, *, num_classes: int, num_groups: int) -> Tensor:
    """Per-image weights ``n_c / (G_c n_{c,g})`` of a whole labelled set, shape (N,).

    Inside every class ``c`` each present group gets the same total weight ``n_c / G_c``
    and the class keeps its total ``n_c`` (its share of the data), so the weighted risk
    :math:`\\frac{1}{N}\\sum_i w_i \\ell_i` is the class-prior-weighted mean over classes of
    the uniform average of the per-group risks. The weights average to 1.
    """
    labelled = groups >= 0  # unknown groups (-1) get weight 0: they belong to no group's risk
    safe = groups.clamp_min(0)
    cell = labels * num_groups + safe
    counts = torch.bincount(cell[labelled], minlength=num_classes * num_groups).view(num_classes, num_groups)
    present = (counts > 0).sum(dim=1)  # G_c
    class_total = counts.sum(dim=1)
    per_image = class_total[labels].double() / (present[labels] * counts[labels, safe]).clamp_min(1).double()
    return torch.where(labelled, per_image, 0.0).to(torch.float32)
