"""Fairness audit of a synthetic set: train fresh networks on it, test on real data.

The protocol of METHOD.md section 2: for each of ``num_eval`` seeds, a fresh ConvNet is
trained on the synthetic set (SGD with momentum and weight decay, batch 256, DSA on,
learning rate x0.1 once epoch ``epochs // 2 + 1`` is done, ``epochs + 1`` epochs as in
the reference's ``range(Epoch + 1)``), then predicts the real test split; the
predictions go through :func:`fdd.metrics.fairness_report`. Results are the per-seed
reports and their mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fdd.augment import DSAConfig
from fdd.config import AuditConfig, NetworkConfig
from fdd.data import GroupedImages, SyntheticSet
from fdd.metrics import FairnessReport, fairness_report, summarize_runs
from fdd.networks import build_convnet
from fdd.synthesis import train_network

ERR_SHAPE_MISMATCH = (
    "the synthetic images have shape {syn} per image but the test images have {test}; "
    "audit a synthetic set against the dataset it was distilled from"
)
ERR_CLASSES_MISMATCH = "the synthetic set has classes {syn} but the test split has {test}"


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
    device = torch.device(device)
    images = synthetic.images.to(device, torch.float32)
    labels = synthetic.labels.to(device)
    test_images = test.normalized(device)
    dsa = DSAConfig() if config.dsa else None
    reports = []
    for run in range(config.num_eval):
        seed = config.seed * 1000 + run
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        net = build_convnet(
            channels=test.image_shape[0], num_classes=test.num_classes, image_size=test.image_shape[1],
            width=network.width, depth=network.depth, norm=network.norm, pooling=network.pooling,
            seed=seed, device=device,
        )
        train_network(
            net, images, labels, epochs=config.epochs + 1, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, batch_size=config.batch_size, dsa=dsa,
            generator=generator, lr_decay_epoch=config.epochs // 2 + 1,
        )
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
