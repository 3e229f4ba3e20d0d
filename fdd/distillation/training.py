"""Training a network on a (synthetic) set: SGD, cross-entropy, DSA, every random draw made up front.

The building block under COBRA's embedder warm-up (:class:`fdd.distillation.synthesis.DMSynthesizer`),
DC's inner loop (:mod:`fdd.distillation.backbones.dc`), MTT's experts, the captured CUDA graphs
(:mod:`fdd.distillation.cuda_graph`) and the audit's evaluation models (:mod:`fdd.fairness.audit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdd.distillation.augment import DSAConfig, DSADraw, apply_dsa, draw_dsa

__all__ = ["TrainingPlan", "draw_training_plan", "train_network"]


ERR_PLAN = "training plan does not fit: {detail}"


@dataclass(frozen=True)
class TrainingPlan:
    """Every random choice of one :func:`train_network` run, drawn before it starts.

    ``orders`` holds each epoch's batch order, shape ``(epochs, N)``, or is ``None``
    when the whole set is one batch (identity order). ``dsa`` holds the training-time
    DSA parameters of ``epochs * slots_per_epoch`` slots: batch ``b`` of epoch ``e``
    reads slots ``e * slots_per_epoch + b * B + arange(len(batch))``, and each block of
    ``B = min(N, batch_size)`` slots shares one family (one family per batch, per-image
    parameters, as the reference draws them). Drawing it all up front costs one call
    instead of one per step, and lets a captured CUDA graph
    (:class:`fdd.distillation.cuda_graph.CapturedTraining`) replay the training with fresh draws.
    """

    orders: Tensor | None
    dsa: DSADraw | None
    slots_per_epoch: int


def draw_training_plan(
    n: int,
    *,
    epochs: int,
    batch_size: int,
    image_size: tuple[int, ...],
    dsa: DSAConfig | None,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> TrainingPlan:
    """Draw the batch orders and DSA parameters of training on ``n`` images."""
    block = min(n, batch_size)
    per_epoch = -(-n // block) * block if n else 0
    orders = None
    if n > batch_size:
        orders = torch.rand(epochs, n, generator=generator, device=device).argsort(dim=1)
    draw = None
    if dsa is not None and epochs > 0 and n > 0:
        draw = draw_dsa(
            epochs * per_epoch,
            image_size=image_size,
            config=dsa,
            family_block=block,
            generator=generator,
            device=device,
        )
    return TrainingPlan(orders=orders, dsa=draw, slots_per_epoch=per_epoch)


def train_network(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    dsa: DSAConfig | None,
    generator: torch.Generator | None,
    lr_decay_epoch: int | None = None,
    forward: Callable[[Tensor], Tensor] | None = None,
    augment: Callable[..., Tensor] = apply_dsa,
    plan: TrainingPlan | None = None,
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> nn.Module:
    """Train ``net`` on (images, labels) with SGD and cross-entropy, DSA per batch.

    The learning rate is multiplied by 0.1 once epoch ``lr_decay_epoch`` is done
    (the evaluation protocol's schedule); ``None`` keeps it constant. ``forward``
    replaces ``net(x)`` and ``augment`` replaces :func:`fdd.distillation.augment.apply_dsa` (e.g.
    ``torch.compile``-d versions). The batch orders and DSA parameters of all epochs
    are drawn first, in one :func:`draw_training_plan` call from ``generator``; this
    removes most of the per-step launch overhead on a GPU. ``plan`` passes such a
    draw in instead. ``loss_fn(logits, labels, index)`` replaces the mean cross-entropy
    (``index``: the batch's positions in ``images``, e.g. to look up each sample's group;
    :class:`fdd.fairness.gdro.GroupDRO`). ``transform``, when given, is applied to every batch
    after DSA (the audit's DC augmentation, :func:`fdd.distillation.augment.dc_augment`, which
    draws as it goes).
    """
    forward = forward if forward is not None else net
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = images.shape[0]
    if plan is None:
        plan = draw_training_plan(
            n,
            epochs=epochs,
            batch_size=batch_size,
            image_size=tuple(images.shape[-2:]),
            dsa=dsa,
            generator=generator,
            device=images.device,
        )
    if (plan.orders is not None and tuple(plan.orders.shape) != (epochs, n)) or (
        plan.orders is None and n > batch_size
    ):
        got = None if plan.orders is None else tuple(plan.orders.shape)
        raise ValueError(
            ERR_PLAN.format(
                detail=f"orders of shape {got} for {epochs} epochs of {n} images in batches of {batch_size}"
            )
        )
    if (plan.dsa is None) != (dsa is None or epochs == 0 or n == 0):
        raise ValueError(
            ERR_PLAN.format(detail=f"DSA draw {'missing' if plan.dsa is None else 'given'} with dsa={dsa}")
        )
    slots = torch.arange(min(n, batch_size), device=images.device)
    for epoch in range(epochs):
        for start in range(0, n, batch_size):
            if plan.orders is None:
                x, y = images, labels
                idx = slots  # the whole set, in order (n <= batch_size)
            else:
                idx = plan.orders[epoch, start : start + batch_size]
                x, y = images[idx], labels[idx]
            if plan.dsa is not None:
                x = augment(x, slots[: x.shape[0]] + (epoch * plan.slots_per_epoch + start), plan.dsa, config=dsa)
            if transform is not None:
                x = transform(x)
            logits = forward(x)
            loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if lr_decay_epoch is not None and epoch == lr_decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
    return net
