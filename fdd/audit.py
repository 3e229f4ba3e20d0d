"""Fairness audit of a synthetic set: train fresh networks on it, test on real data.

The protocol of METHOD.md section 2: for each of ``num_eval`` seeds, a fresh ConvNet is
trained on the synthetic set (SGD with momentum and weight decay, batch 256, DSA on,
learning rate x0.1 once epoch ``epochs // 2 + 1`` is done, ``epochs + 1`` epochs as in
the reference's ``range(Epoch + 1)``), then predicts the real test split; the
predictions go through :func:`fdd.metrics.fairness_report`. Results are the per-seed
reports and their mean and standard deviation.

With ``stack_models`` (the default) the ``num_eval`` networks are trained together as
one vectorised model (:func:`train_stacked`), which is what makes five evaluations
about as cheap as one on a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from fdd.augment import DSAConfig, apply_dsa, draw_dsa
from fdd.config import AuditConfig, NetworkConfig
from fdd.data import GroupedImages, SyntheticSet
from fdd.metrics import FairnessReport, fairness_report, summarize_runs
from fdd.networks import ConvNet, build_network
from fdd.synthesis import train_network

ERR_SHAPE_MISMATCH = (
    "the synthetic images have shape {syn} per image but the test images have {test}; "
    "audit a synthetic set against the dataset it was distilled from"
)
ERR_CLASSES_MISMATCH = "the synthetic set has classes {syn} but the test split has {test}"
ERR_NORMALISATION_MISMATCH = (
    "the synthetic set is normalised with (mean, std) {syn} but the test split with {test}; "
    "audit it against the dataset it was distilled from"
)
ERR_STACK_BUFFERS = (
    "train_stacked needs networks without buffers (use norm='instancenorm' or 'none'); got buffers {names}"
)


def train_stacked(
    nets: list[ConvNet],
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
) -> list[ConvNet]:
    """Train several networks of one architecture at once, as one vectorised model.

    The parameters of the ``M`` networks are stacked (:func:`torch.func.stack_module_state`)
    and the forward pass is vectorised with :func:`torch.func.vmap`, so each step runs
    ``M`` models in one set of kernels. Each model keeps its own batch order and its own
    training-time DSA draw (one family per model and step, per-image parameters); the
    loss is the sum of the models' mean cross-entropies, so the gradient of each model
    is exactly its own. SGD with momentum and weight decay is element-wise, hence the
    same as training the models one by one. Needs parameter-only networks (no
    batch-norm running statistics).
    """
    m, n = len(nets), images.shape[0]
    params, buffers = stack_module_state(nets)
    if buffers:
        raise ValueError(ERR_STACK_BUFFERS.format(names=sorted(buffers)))
    template = copy.deepcopy(nets[0]).to("meta")

    def one_model(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(template, p, (x,))

    forward = vmap(one_model)
    optimizer = torch.optim.SGD(list(params.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    one_batch = n <= batch_size
    fixed = torch.arange(n, device=images.device).expand(m, n)  # every model sees the whole set
    predrawn = None
    if dsa is not None and one_batch and epochs > 0:
        # draw every epoch's DSA parameters at once (one family per model and epoch)
        predrawn = draw_dsa(
            epochs * m * n, image_size=tuple(images.shape[-2:]), config=dsa, family_block=n,
            generator=generator, device=images.device,
        )
    for epoch in range(epochs):
        order = fixed if one_batch else torch.rand(m, n, generator=generator, device=images.device).argsort(dim=1)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]  # (M, b)
            b = idx.shape[1]
            x = images[idx.reshape(-1)]  # (M*b, C, H, W)
            y = labels[idx]  # (M, b)
            slots = torch.arange(m * b, device=x.device)
            if predrawn is not None:
                x = apply_dsa(x, slots + epoch * m * n, predrawn, config=dsa)
            elif dsa is not None:
                draw = draw_dsa(
                    m * b, image_size=tuple(x.shape[-2:]), config=dsa, family_block=b,
                    generator=generator, device=x.device,
                )
                x = apply_dsa(x, slots, draw, config=dsa)
            logits = forward(params, x.view(m, b, *x.shape[1:]))  # (M, b, classes)
            loss = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1)) * m
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if lr_decay_epoch is not None and epoch == lr_decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
    with torch.no_grad():
        for i, net in enumerate(nets):
            for name, value in net.named_parameters():
                value.copy_(params[name][i])
    return nets


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, *, batch_size: int) -> Tensor:
    """Arg-max predictions of ``net`` for normalised ``images``, in batches."""
    net.eval()
    out = [net(images[i : i + batch_size]).argmax(dim=1) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


@dataclass(frozen=True)
class AuditResult:
    """Per-seed fairness reports of a synthetic set and their summary."""

    reports: tuple[FairnessReport, ...]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "runs": [r.to_dict() for r in self.reports]}


def audit_synthetic(
    synthetic: SyntheticSet,
    test: GroupedImages,
    *,
    config: AuditConfig,
    network: NetworkConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> AuditResult:
    """Train ``config.num_eval`` fresh ConvNets on ``synthetic`` and audit them on ``test``.

    Parameters
    ----------
    synthetic : SyntheticSet
        Images in the normalised space of ``test``.
    test : GroupedImages
        Real test split with group ids.
    config : AuditConfig
    network : NetworkConfig
    device : torch.device or str
    progress : callable(evaluations_done), optional
    """
    if tuple(synthetic.images.shape[1:]) != test.image_shape:
        raise ValueError(ERR_SHAPE_MISMATCH.format(syn=tuple(synthetic.images.shape[1:]), test=test.image_shape))
    if tuple(synthetic.class_names) != test.class_names:
        raise ValueError(ERR_CLASSES_MISMATCH.format(syn=synthetic.class_names, test=test.class_names))
    if not (np.allclose(synthetic.mean, test.mean) and np.allclose(synthetic.std, test.std)):
        raise ValueError(
            ERR_NORMALISATION_MISMATCH.format(syn=(synthetic.mean, synthetic.std), test=(test.mean, test.std))
        )
    device = torch.device(device)
    images = synthetic.images.to(device, torch.float32)
    labels = synthetic.labels.to(device)
    test_images = test.normalized(device)
    dsa = DSAConfig() if config.dsa else None
    seeds = [config.seed * 1000 + run for run in range(config.num_eval)]
    nets = [
        build_network(
            input_shape=test.image_shape, num_classes=test.num_classes, network=network, seed=seed, device=device
        )
        for seed in seeds
    ]
    schedule = dict(
        epochs=config.epochs + 1, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        batch_size=config.batch_size, dsa=dsa, lr_decay_epoch=config.epochs // 2 + 1,
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(seeds[0])
    if config.stack_models and network.norm != "batchnorm" and len(nets) > 1:
        train_stacked(nets, images, labels, generator=generator, **schedule)
    else:
        for seed, net in zip(seeds, nets):
            generator.manual_seed(seed)
            train_network(net, images, labels, generator=generator, **schedule)
    reports = []
    for run, net in enumerate(nets):
        predictions = predict(net, test_images, batch_size=config.test_batch_size).cpu()
        reports.append(
            fairness_report(
                predictions, test.labels, sensitive_features=test.groups,
                num_classes=test.num_classes, num_groups=test.num_groups,
                class_names=test.class_names, group_names=test.group_names,
            )
        )
        if progress is not None:
            progress(run + 1)
    return AuditResult(reports=tuple(reports), summary=summarize_runs(reports))
