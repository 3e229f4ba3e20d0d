r"""Group-covering initialisation of the synthetic set (``synthesis.init``).

The default ``init='real'`` starts each class's ``k = ipc`` synthetic images from random
real images of the class; on C-MNIST 90% of a class is its majority colour, so about
nine of ten starting images come from one group. The two options here choose the
starting images so that they cover the groups of each class:

``stratified``
    Round-robin over the groups: the groups of class :math:`c` are put in a random order
    :math:`\sigma`, each candidate image gets a random rank :math:`r` inside its
    (class, group) cell, and the class keeps the ``k`` candidates with the smallest key
    :math:`r\,G + \sigma(g)`. So slot :math:`j` takes group :math:`\sigma^{-1}(j \bmod G_c)`;
    a group with too few images is skipped and the next ones fill in. With
    :math:`k \ge G_c` every group present gets at least one image.

``barycenter``
    The same group quotas, placed at the uniform :math:`W_2` barycenter. Real candidates
    are embedded with a random ConvNet (drawn from the run's generator), and the
    free-support barycenter :math:`b_c = \arg\min_\nu \sum_g \frac{1}{G_c} W_2^2(\nu,
    \mu_{c,g})` with :math:`k` atoms :math:`x_1..x_k` is computed
    (:func:`fdd.transport.barycenter.free_support_barycenter`, POT). The atoms are then given to
    the slots' groups by a linear assignment with cost
    :math:`\min_{i \in g_j} \lVert x_k - y_i \rVert^2`, and within each group the atoms
    are matched to distinct real images by a second linear assignment (nearest images
    without repetition). The result covers the groups like ``stratified`` and sits where
    the barycenter's support lies.

Samples with an unknown group (id ``-1``) are never chosen: they cannot cover a group.
A class with no labelled sample falls back to random real images of the class.

Both are deterministic for a given generator state. They run once per synthesis; the
assignment is a small per-class CPU problem (a Python loop over classes, not in any hot
loop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fdd.datasets.containers import GroupedImages
from fdd.transport.barycenter import free_support_barycenter

__all__ = ["COVERING_INITS", "CoveringInit", "candidate_indices", "covering_indices", "stratified_indices"]

CoveringInit = Literal["stratified", "barycenter"]
COVERING_INITS: tuple[str, ...] = get_args(CoveringInit)

ERR_METHOD = "init method must be one of {allowed}; got {value!r}"
ERR_TOO_FEW = (
    "init={method!r} needs ipc={ipc} distinct real images per class, but class {name!r} has {count}; "
    "lower synthesis.ipc or use synthesis.init='noise'"
)
ERR_EMBED = "init='barycenter' needs an embed function (images -> features); got None"


def _random_keys(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()


def candidate_indices(train: GroupedImages, *, max_per_cell: int, generator: torch.Generator) -> Tensor:
    """At most ``max_per_cell`` random images of every (class, group) cell, the spare cell of
    each class's unknown-group images included (index into ``train``, sorted). Unknown-group
    candidates are chosen only where a class has too few labelled ones
    (:func:`stratified_indices` ranks them last)."""
    g = train.num_groups
    labels, groups = train.labels.cpu(), train.groups.cpu()
    labelled = groups >= 0
    cell = labels * (g + 1) + torch.where(labelled, groups, g)  # unknown group: a spare cell per class
    keys = _random_keys(len(train), generator)
    order = torch.argsort(cell.double() * 2.0 + keys)
    sorted_cell = cell[order]
    counts = torch.bincount(sorted_cell, minlength=train.num_classes * (g + 1))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(train)) - starts[sorted_cell]
    return torch.sort(order[rank < max_per_cell]).values


def stratified_indices(
    labels: Tensor, groups: Tensor, *, num_classes: int, num_groups: int, ipc: int, generator: torch.Generator
) -> Tensor:
    """Round-robin choice over groups (module docstring): ``ipc`` positions per class, class-major.

    ``labels`` / ``groups`` describe the candidates (groups may be ``-1``: chosen only in a
    class without labelled candidates). Returns positions into ``labels``, shape (C * ipc,),
    the ``ipc`` of class ``c`` ordered by slot.
    """
    n = labels.shape[0]
    g = num_groups
    sigma = torch.argsort(_random_keys(num_classes * g, generator).view(num_classes, g), dim=1)
    sigma = torch.argsort(sigma, dim=1)  # sigma[c, group] = position of the group in class c's order
    rand = _random_keys(n, generator)
    cell = labels * (g + 1) + torch.where(groups >= 0, groups, g)
    order = torch.argsort(cell.double() * 2.0 + rand)
    counts = torch.bincount(cell[order], minlength=num_classes * (g + 1))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts[cell[order]]
    group_pos = torch.where(groups >= 0, sigma[labels, groups.clamp_min(0)], g)
    # unknown groups come after every labelled candidate of the class
    key = torch.where(groups >= 0, rank * g + group_pos, n * (g + 1) + rank).double()
    per_class = torch.bincount(labels, minlength=num_classes)
    chosen = torch.argsort(labels.double() * (n * (g + 2) + 1) + key)
    starts_c = torch.cumsum(per_class, 0) - per_class
    slot = torch.arange(ipc)
    return chosen[(starts_c.unsqueeze(1) + slot).flatten()]


def _assign_to_barycenter(features: Tensor, groups: Tensor, slot_groups: Tensor, *, ipc: int, seed: int) -> Tensor:
    """Positions (into ``features``) of one class's images nearest the barycenter atoms, group quotas kept."""

    present = torch.unique(groups)
    clouds = [features[groups == gg] for gg in present]
    bary = free_support_barycenter(clouds, weights="uniform", support_size=ipc, num_iter=20, seed=seed)
    atoms = bary.support.double().cpu()
    feats = features.double().cpu()
    sq = torch.cdist(atoms, feats).pow(2)  # (k, n)
    # cost of giving atom k to slot j: distance to the nearest image of slot j's group
    nearest = torch.stack([sq[:, groups == gg].min(dim=1).values for gg in present], dim=1)  # (k, G_c)
    column = torch.searchsorted(present, slot_groups)
    rows, cols = linear_sum_assignment(nearest[:, column].numpy())
    atom_of_slot = torch.empty(ipc, dtype=torch.long)
    atom_of_slot[torch.as_tensor(cols)] = torch.as_tensor(rows)
    picks = torch.empty(ipc, dtype=torch.long)
    for gg in torch.unique(slot_groups):
        slots = torch.nonzero(slot_groups == gg).flatten()
        members = torch.nonzero(groups == gg).flatten()
        r, c = linear_sum_assignment(sq[atom_of_slot[slots]][:, members].numpy())
        picks[slots[torch.as_tensor(r)]] = members[torch.as_tensor(c)]
    return picks


def covering_indices(
    train: GroupedImages,
    *,
    ipc: int,
    method: CoveringInit,
    generator: torch.Generator,
    embed: Callable[[Tensor], Tensor] | None = None,
    max_per_cell: int = 50,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Indices into ``train`` of the ``ipc`` starting images of every class, class-major.

    Parameters
    ----------
    train : GroupedImages
        Training split (group ids may be ``-1``: never chosen, see the module docstring).
    ipc : int
        Images per class.
    method : {"stratified", "barycenter"}
    generator : torch.Generator
        All randomness (candidate sample, group order, ranks, barycenter start).
    embed : callable, optional
        ``barycenter`` only: maps normalised images (B, C, H, W) on ``device`` to features (B, D).
    max_per_cell : int, default 50
        Candidates per (class, group) cell for ``barycenter`` (all images for ``stratified``).
    batch_size : int, default 512
        Embedding batch size.
    device : torch.device or str

    Returns
    -------
    Tensor, shape (num_classes * ipc,), int64, on the CPU.

    Raises
    ------
    ValueError
        Unknown method, no ``embed`` for ``barycenter``, or a class with fewer than ``ipc`` images.
    """
    if method not in COVERING_INITS:
        raise ValueError(ERR_METHOD.format(allowed=COVERING_INITS, value=method))
    if method == "barycenter" and embed is None:
        raise ValueError(ERR_EMBED)
    counts = torch.bincount(train.labels.cpu(), minlength=train.num_classes)
    for k in range(train.num_classes):
        if int(counts[k]) < ipc:
            raise ValueError(
                ERR_TOO_FEW.format(method=method, ipc=ipc, name=train.class_names[k], count=int(counts[k]))
            )
    if method == "stratified":
        return stratified_indices(
            train.labels.cpu(),
            train.groups.cpu(),
            num_classes=train.num_classes,
            num_groups=train.num_groups,
            ipc=ipc,
            generator=generator,
        )
    cand = candidate_indices(train, max_per_cell=max(max_per_cell, ipc), generator=generator)
    labels, groups = train.labels.cpu()[cand], train.groups.cpu()[cand]
    slots = stratified_indices(
        labels, groups, num_classes=train.num_classes, num_groups=train.num_groups, ipc=ipc, generator=generator
    ).view(train.num_classes, ipc)
    subset = train.subset(cand)
    assert embed is not None  # required for 'barycenter' (ERR_EMBED above)
    with torch.no_grad():
        features = torch.cat(
            [
                embed(subset.subset(torch.arange(s, min(s + batch_size, len(subset)))).normalized(device)).float().cpu()
                for s in range(0, len(subset), batch_size)
            ]
        )
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
    chosen = []
    for c in range(train.num_classes):  # once per run: a small CPU problem per class
        members = torch.nonzero((labels == c) & (groups >= 0)).flatten()
        if members.numel() < ipc:  # too few labelled images: keep the stratified choice
            chosen.append(cand[slots[c]])
            continue
        picks = _assign_to_barycenter(features[members], groups[members], groups[slots[c]], ipc=ipc, seed=seed + c)
        chosen.append(cand[members[picks]])
    return torch.cat(chosen)
