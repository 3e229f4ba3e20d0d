r"""Group DRO: training that minimises the worst group's loss (the ``vanilla-gdro`` baseline's audit).

Sagawa et al.'s online algorithm (Algorithm 1 of the paper below). The model keeps one
weight per protected group, :math:`q \in \Delta_G` (uniform at the start). At each step,
with :math:`\ell_g` the mean cross-entropy of the batch's samples of group :math:`g`:

.. math::

    q_g \leftarrow \frac{q_g\, e^{\eta\, \ell_g}}{\sum_{g'} q_{g'}\, e^{\eta\, \ell_{g'}}},
    \qquad \mathcal{L} = \sum_g q_g\, \ell_g

and the network takes its SGD step on :math:`\mathcal{L}` (the weights are not
differentiated). Groups absent from the batch keep :math:`\ell_g = 0` that step (their weight
only renormalises), as in the authors' code; samples of unknown group (``-1``) count in no group.
So the group with the largest loss gains weight until the network does well on it: Group
DRO approximates :math:`\min_\theta \max_g \mathbb{E}[\ell \mid g]`. :math:`\eta` is
``audit.gdro_step_size`` (default 0.01, the paper's most used value). The paper's
generalisation adjustment (:math:`C / \sqrt{n_g}` added to each group loss) and its strong
L2 penalty are not used: the audit keeps its own weight decay and schedule.

Several models trained together (:func:`fdd.fairness.audit.train_stacked`) keep one weight
vector each: ``weights`` has shape ``(M, G)``, updated in place (so a captured CUDA graph
replays the update).

References
----------
Sagawa, Koh, Hashimoto & Liang, "Distributionally Robust Neural Networks for Group Shifts: On the
Importance of Regularization for Worst-Case Generalization", ICLR 2020.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GroupDRO"]

ERR_GROUPS = "Group DRO needs a group id per training sample (>= 0, or -1 for unknown); got {detail}"
ERR_STEP = "Group DRO's step size must be a positive finite number; got {value!r}"


class GroupDRO:
    """The Group DRO objective as a ``loss_fn(logits, labels, index)`` of the training loops.

    Parameters
    ----------
    groups : Tensor, shape (N,)
        The group of each training sample (``index`` points into it); ``-1``: unknown.
    num_groups : int
    step_size : float
        :math:`\\eta` of the module docstring.
    num_models : int
        Models trained together (one weight vector each); 1 for a single network.

    Attributes
    ----------
    weights : Tensor, shape (num_models, num_groups)
        The current group weights :math:`q` (each row sums to 1).
    """

    def __init__(self, groups: Tensor, *, num_groups: int, step_size: float, num_models: int = 1) -> None:
        if groups.dim() != 1 or groups.dtype.is_floating_point or (groups.numel() and int(groups.min()) < -1):
            raise ValueError(ERR_GROUPS.format(detail=f"shape {tuple(groups.shape)}, dtype {groups.dtype}"))
        if not (step_size > 0 and step_size < float("inf")):
            raise ValueError(ERR_STEP.format(value=step_size))
        self.num_groups, self.step_size = num_groups, step_size
        # unknown groups go to a spare column, dropped from every sum
        self.groups = torch.where(groups < 0, torch.full_like(groups, num_groups), groups).long()
        self.weights = torch.full((num_models, num_groups), 1.0 / num_groups, device=groups.device)

    def group_losses(self, logits: Tensor, labels: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy per model and group, shape (M, G), and whether the group was in the batch."""
        batch = labels.shape[-1]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        losses = losses.view(-1, batch)  # (M, b)
        cells = self.groups[index].view(-1, batch)  # (M, b)
        sums = losses.new_zeros(losses.shape[0], self.num_groups + 1).scatter_add_(1, cells, losses)
        counts = losses.new_zeros(losses.shape[0], self.num_groups + 1).scatter_add_(1, cells, torch.ones_like(losses))
        present = counts[:, : self.num_groups] > 0
        return sums[:, : self.num_groups] / counts[:, : self.num_groups].clamp_min(1), present

    def __call__(self, logits: Tensor, labels: Tensor, index: Tensor) -> Tensor:
        """Update the weights on this batch (in place) and return :math:`\\sum_m \\sum_g q_{m,g} \\ell_{m,g}`.

        ``logits`` (b, K) or (M, b, K); ``labels`` and ``index`` (b,) or (M, b).
        """
        group_loss, present = self.group_losses(logits, labels, index)
        with torch.no_grad():
            self.weights.mul_(torch.exp(self.step_size * group_loss.detach() * present))
            self.weights.div_(self.weights.sum(dim=1, keepdim=True))
        return (self.weights * group_loss).sum()
