r"""The real-image baselines: training sets of real images, chosen without any optimisation.

Three modes of :data:`fdd.config.REAL_SET_MODES` stand beside the distillation modes in the
same comparison (docs/evaluation.md, "Baselines"); the audit trains on their set as on a
distilled one:

``random-real``
    ``ipc`` distinct real training images of each class drawn at random (the same draw as
    ``synthesis.init: real``, :class:`fdd.distillation.synthesis.ClassSampler`), from a CPU
    generator seeded with ``runtime.seed``: the same set on every device. The usual lower
    reference of dataset distillation.
``stratified-real``
    ``ipc`` real images of each class split as evenly as possible over the groups present
    in the class: with :math:`G_c` groups, each gets :math:`\lfloor ipc / G_c \rfloor` or one
    more (the extra slots go to groups in a random order), and a group with too few images
    gives its slots to the others (:func:`fdd.distillation.initialisation.stratified_indices`,
    the round-robin of ``synthesis.init: stratified``). Images of unknown group are chosen
    only where a class has too few labelled ones. Needs group labels.
``full-data``
    The whole training split: the upper reference (what training on all the data gives).
    The audit trains on it for ``audit.full_data_epochs`` epochs instead of ``audit.epochs``
    (:meth:`fdd.config.AuditConfig.epochs_for`).

The sets keep each image's group (``SyntheticSet.groups``) and record ``iterations: 0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fdd.config import REAL_SET_MODES
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation.initialisation import covering_indices
from fdd.distillation.synthesis import ClassSampler, check_group_labels

__all__ = ["real_baseline_set", "real_set_indices"]

ERR_REAL_MODE = "a real-image baseline is one of {allowed}; got {value!r}"
ERR_TOO_FEW_REAL = (
    "mode {mode!r} takes ipc={ipc} distinct real images per class, but class {name!r} has {count}; lower synthesis.ipc"
)


def real_set_indices(train: GroupedImages, *, mode: str, ipc: int, generator: torch.Generator) -> Tensor:
    """Indices into ``train`` (CPU, int64) of the set of real-image baseline ``mode`` (module docstring).

    Class-major, ``ipc`` per class, for ``random-real`` and ``stratified-real``; every
    index in order for ``full-data``.

    Raises
    ------
    ValueError
        An unknown mode, a class with fewer than ``ipc`` images, or ``stratified-real`` on
        data with fewer than two labelled groups.
    """
    if mode not in REAL_SET_MODES:
        raise ValueError(ERR_REAL_MODE.format(allowed=REAL_SET_MODES, value=mode))
    if mode == "full-data":
        return torch.arange(len(train))
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    for k in range(train.num_classes):  # once per run, over classes: names the first short class
        if int(counts[k]) < ipc:
            raise ValueError(
                ERR_TOO_FEW_REAL.format(mode=mode, ipc=ipc, name=train.class_names[k], count=int(counts[k]))
            )
    if mode == "stratified-real":
        check_group_labels(train, mode)
        return covering_indices(train, ipc=ipc, method="stratified", generator=generator)
    sampler = ClassSampler(train.labels.cpu(), num_classes=train.num_classes)
    return sampler.sample(ipc, generator=generator).cpu()


def real_baseline_set(
    train: GroupedImages, *, mode: str, ipc: int, seed: int, provenance: dict[str, Any] | None = None
) -> SyntheticSet:
    """The training set of real-image baseline ``mode``: the images of :func:`real_set_indices`.

    Normalised like ``train`` (as a distilled set), with each image's group, drawn from a CPU
    generator seeded with ``seed``; ``provenance`` is recorded after the mode, ``ipc``,
    ``iterations`` (0) and ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = train.subset(real_set_indices(train, mode=mode, ipc=ipc, generator=generator))
    return SyntheticSet(
        images=chosen.normalized(),
        labels=chosen.labels,
        class_names=train.class_names,
        mean=train.mean,
        std=train.std,
        provenance={
            "backbone": None,  # no optimisation: the backbone is not used
            "mode": mode,
            "ipc": None if mode == "full-data" else ipc,
            "iterations": 0,
            "seed": seed,
            **(provenance or {}),
        },
        groups=chosen.groups,
    )
