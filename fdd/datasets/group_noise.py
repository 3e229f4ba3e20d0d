r"""Imperfect group labels: flip or hide a fraction of the protected-group ids.

The robustness studies of the COBRA paper's appendices distill from training sets whose
group annotations are partly wrong or partly missing. :func:`perturb_groups` produces
such a set from a clean one, deterministically for a seed:

- **hidden**: exactly :math:`n_h = \operatorname{round}(h N)` samples, drawn uniformly
  without replacement, get the group id ``-1`` (:data:`fdd.datasets.containers.UNKNOWN_GROUP`);
- **flipped**: exactly :math:`n_f = \operatorname{round}(f N)` *other* samples (disjoint
  from the hidden ones, so :math:`f + h \le 1`) get a group drawn uniformly among the
  :math:`G - 1` groups different from their true one:
  :math:`a' = (a + U) \bmod G,\ U \sim \mathcal{U}\{1, \dots, G-1\}`.

The draw is over the whole split (not per class), so the fractions are exact for the
split and approximately equal in every class. Only the **training** split is perturbed
(the ingest stage applies it to ``train.pt``); the test split keeps its true groups, so
the audit measures fairness with respect to the real attribute.

How the rest of the pipeline treats unknown groups (``-1``):

- ``vanilla`` DM matches the pooled class mean and needs no group: hidden samples count
  as usual;
- ``fairdd``, ``cobra``, ``cobra-w2``, ``cobra-bures`` use group statistics: hidden
  samples are left out of every group mean / group cloud (they still occupy slots of
  the per-class real batch, so the labelled part of the batch is smaller); a class whose
  batch holds no labelled sample contributes nothing to the loss that iteration;
- the partition, features and barycenters stages count and embed labelled samples only
  (the ingest summary records how many were hidden and flipped);
- the ``stratified`` / ``barycenter`` initialisations never pick a hidden sample, except in
  a class with no labelled sample at all.

Flipped samples cannot be detected: they enter the wrong group's statistics, which is the
point of the experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fdd.datasets.containers import UNKNOWN_GROUP, GroupedImages

__all__ = ["NoisyGroups", "perturb_groups"]

ERR_FRACTION = "{name} must be a number in [0, 1]; got {value!r}"
ERR_FRACTION_SUM = (
    "flip_fraction + hide_fraction must be at most 1 (flipped and hidden samples are disjoint); "
    "got {flip} + {hide} = {total}"
)
ERR_FLIP_ONE_GROUP = "flip_fraction > 0 needs at least 2 groups to flip to; got num_groups={groups}"
ERR_ALREADY_UNKNOWN = "perturb_groups needs clean group labels; got {count} samples with group -1 already"


@dataclass(frozen=True)
class NoisyGroups:
    """The perturbed split and what was done to it.

    Attributes
    ----------
    data : GroupedImages
        Same images and labels; groups flipped / hidden.
    flipped, hidden : Tensor, shape (N,), bool
        Which samples were flipped / hidden (disjoint).
    """

    data: GroupedImages
    flipped: Tensor
    hidden: Tensor

    def summary(self) -> dict[str, int]:
        return {"groups_flipped": int(self.flipped.sum()), "groups_hidden": int(self.hidden.sum())}


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(ERR_FRACTION.format(name=name, value=value))
    return float(value)


def perturb_groups(
    data: GroupedImages, *, flip_fraction: float = 0.0, hide_fraction: float = 0.0, seed: int = 0
) -> NoisyGroups:
    """Flip and hide exact fractions of the group ids of ``data`` (see the module docstring).

    Parameters
    ----------
    data : GroupedImages
        A split with clean group ids (no ``-1``).
    flip_fraction, hide_fraction : float in [0, 1], with a sum of at most 1
    seed : int
        Seeds the choice of samples and of the new groups.

    Returns
    -------
    NoisyGroups

    Raises
    ------
    ValueError
        A fraction outside [0, 1], fractions summing above 1, flipping with one group,
        or input that already has unknown groups.
    """
    flip = _check_fraction("flip_fraction", flip_fraction)
    hide = _check_fraction("hide_fraction", hide_fraction)
    if flip + hide > 1.0 + 1e-12:
        raise ValueError(ERR_FRACTION_SUM.format(flip=flip, hide=hide, total=flip + hide))
    n, num_groups = len(data), data.num_groups
    n_hide = round(hide * n)
    n_flip = min(round(flip * n), n - n_hide)
    if n_flip > 0 and num_groups < 2:
        raise ValueError(ERR_FLIP_ONE_GROUP.format(groups=num_groups))
    groups = data.groups.cpu()
    unknown = int((groups == UNKNOWN_GROUP).sum())
    if unknown:
        raise ValueError(ERR_ALREADY_UNKNOWN.format(count=unknown))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    hidden = torch.zeros(n, dtype=torch.bool)
    flipped = torch.zeros(n, dtype=torch.bool)
    hidden[order[:n_hide]] = True
    flipped[order[n_hide : n_hide + n_flip]] = True
    shift = torch.randint(1, max(num_groups, 2), (n,), generator=generator)
    noisy = torch.where(flipped, (groups + shift) % num_groups, groups)
    noisy = torch.where(hidden, torch.full_like(noisy, UNKNOWN_GROUP), noisy)
    out = GroupedImages(
        images=data.images,
        labels=data.labels,
        groups=noisy,
        class_names=data.class_names,
        group_names=data.group_names,
        mean=data.mean,
        std=data.std,
    )
    return NoisyGroups(data=out, flipped=flipped, hidden=hidden)
