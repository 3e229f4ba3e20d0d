"""Fairness audit of a synthetic set: train fresh networks on it, test on real data.

The protocol of docs/method.md section 2: for each of ``num_eval`` seeds, a fresh ConvNet is
trained on the synthetic set (SGD with momentum and weight decay, batch 256, DSA on,
learning rate x0.1 once epoch ``epochs // 2 + 1`` is done, ``epochs + 1`` epochs as in
the reference's ``range(Epoch + 1)``), then predicts the real test split; the
predictions go through :func:`fdd.fairness.metrics.fairness_report`. Results are the per-seed
reports and their mean and standard deviation.

With ``stack_models`` (the default) the ``num_eval`` networks are trained together as
one vectorised model (:func:`train_stacked`), which is what makes five evaluations
about as cheap as one on a GPU.

The network is the matching network (the ``network`` section) or any evaluation
architecture of :func:`fdd.models.architectures.build_architecture` (``architecture``;
:func:`audit_architectures` audits several). Networks with batch norm keep running
statistics in buffers, which :func:`torch.func.functional_call` under :func:`torch.func.vmap`
cannot update per model: they are trained one at a time, with the same schedule.

The evaluation protocol follows the set's backbone as the reference code does
(:func:`evaluation_protocol`; docs/evaluation.md): the augmentation of ``audit.augmentation``
(``auto``: DSA for DM and MTT sets, DC's augmentation for DC and CAFE sets, none for IDC
sets), and for a set that carries a learned learning rate (MTT's ``mtt_syn_lr``) that rate.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from fdd.config import AuditConfig, NetworkConfig, parse_architecture
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation.augment import DCAugmentConfig, DSAConfig, DSADraw, apply_dsa, dc_augment
from fdd.distillation.compilation import compile_static
from fdd.distillation.cuda_graph import CapturedStep
from fdd.distillation.training import draw_training_plan, train_network
from fdd.fairness.gdro import GroupDRO
from fdd.fairness.metrics import FairnessReport, fairness_report, summarize_runs
from fdd.models.architectures import build_architecture, has_buffers

__all__ = [
    "AuditResult",
    "EvaluationProtocol",
    "INTERVENTIONS",
    "LEARNED_LR_KEY",
    "STACKED_DRAW_SLOTS",
    "audit_architectures",
    "audit_synthetic",
    "evaluation_protocol",
    "predict",
    "reference_dc_strategy",
    "train_stacked",
]

ERR_SHAPE_MISMATCH = (
    "the synthetic images have shape {syn} per image but the test images have {test}; "
    "audit a synthetic set against the dataset it was distilled from"
)
ERR_CLASSES_MISMATCH = "the synthetic set has classes {syn} but the test split has {test}"
ERR_NORMALISATION_MISMATCH = (
    "the synthetic set is normalised with (mean, std) {syn} but the test split with {test}; "
    "audit it against the dataset it was distilled from"
)
ERR_INTERVENTION = "intervention must be one of {allowed}; got {value!r}"
ERR_NO_SYN_GROUPS = (
    "intervention 'gdro' trains with each synthetic image's group, but this synthetic set records none "
    "(SyntheticSet.groups is None); make it with mode vanilla-gdro, or audit it without the intervention"
)
INTERVENTIONS: tuple[str, ...] = ("none", "gdro")
ERR_STACK_BUFFERS = (
    "train_stacked vectorises (stack_forward='vmap') networks without buffers only (use norm='instancenorm' or "
    "'none', or stack_forward='loop'); got buffers {names}"
)


STACKED_DRAW_SLOTS = 2**20  # DSA parameters drawn at once: a chunk of epochs of about 50 MB
#: The provenance key of a learned evaluation learning rate (MTT's syn_lr, fdd.distillation.backbones.mtt).
LEARNED_LR_KEY = "mtt_syn_lr"


@dataclass(frozen=True)
class EvaluationProtocol:
    """How one set is audited on one architecture: augmentation and learning rate.

    ``augmentation`` is ``dsa`` (families ``strategy``), ``dc`` (DC's augmentation, families
    ``strategy``; ``none`` when it names none) or ``none``; ``lr`` the initial learning rate and
    ``lr_source`` where it came from (``audit.lr`` or the set's ``mtt_syn_lr``).
    """

    augmentation: str
    strategy: str
    lr: float
    lr_source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reference_dc_strategy(architecture: str, network: NetworkConfig) -> str:
    """The reference's ``get_daparam`` strategy for an evaluation architecture.

    ``get_daparam(dataset, model, model_eval, ipc)`` starts from ``'none'``, picks
    ``'crop_scale_rotate'`` for the dataset named ``'MNIST'`` (plain MNIST; the biased
    datasets are named otherwise, e.g. ``Colored_MNIST_foreground``, so never for fdd's) and
    ``'crop_noise'`` when the evaluation model is ``ConvNetBN`` (a ConvNet with batch norm);
    the IPC is not used.
    """
    spec = parse_architecture(architecture)
    if spec.base == "matching":
        batchnorm_convnet = network.architecture == "convnet" and network.norm == "batchnorm"
    else:
        batchnorm_convnet = spec.base == "convnet" and spec.norm == "batchnorm"
    return "crop_noise" if batchnorm_convnet else "none"


def evaluation_protocol(
    synthetic: SyntheticSet, *, config: AuditConfig, network: NetworkConfig, architecture: str = "matching"
) -> EvaluationProtocol:
    """The protocol ``synthetic`` is audited with on ``architecture`` (module docstring).

    The backbone is read from the set's provenance (``backbone``; unknown for sets made
    elsewhere, which :meth:`fdd.config.AuditConfig.resolved_augmentation` audits with DSA).
    """
    augmentation = config.resolved_augmentation(synthetic.provenance.get("backbone"))
    if augmentation == "dsa":
        strategy = config.dsa_strategy
    elif augmentation == "dc":
        strategy = config.dc_strategy or reference_dc_strategy(architecture, network)
    else:
        strategy = "none"
    learned = synthetic.provenance.get(LEARNED_LR_KEY)
    if config.learned_lr and isinstance(learned, (int, float)) and not isinstance(learned, bool) and learned > 0:
        return EvaluationProtocol(augmentation, strategy, float(learned), LEARNED_LR_KEY)
    return EvaluationProtocol(augmentation, strategy, config.lr, "audit.lr")


def train_stacked(
    nets: Sequence[nn.Module],
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
    cuda_graph: bool = False,
    precision: str = "fp32",
    stack_forward: str = "vmap",
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    compile: bool = False,
) -> Sequence[nn.Module]:
    """Train several networks of one architecture at once, as one vectorised model.

    The parameters of the ``M`` networks are stacked (:func:`torch.func.stack_module_state`)
    and the forward pass is vectorised with :func:`torch.func.vmap`, so each step runs
    ``M`` models in one set of kernels. Each model keeps its own batch order and its own
    training-time DSA draw (one family per model and batch, per-image parameters); the
    loss is the sum of the models' mean cross-entropies, so the gradient of each model
    is exactly its own. SGD with momentum and weight decay is element-wise, hence the
    same as training the models one by one. The vmap forward needs parameter-only networks
    (no batch-norm running statistics); the loop forward (``stack_forward="loop"``) also
    trains networks with batch norm: each model's statistics come from its own batch, and its
    running statistics are updated in its own row of the stacked buffers, then copied back.

    The random choices (batch orders, DSA parameters) are drawn up front for chunks of
    epochs, as one :func:`fdd.distillation.training.draw_training_plan` of ``count x M`` runs; an epoch then reads its share through two small device tensors, so every
    epoch runs the same kernels. ``cuda_graph`` (CUDA only) runs the first epochs eagerly, then captures one epoch
    as a CUDA graph (:class:`fdd.distillation.cuda_graph.CapturedStep`; one more for the decayed
    learning rate) and replays it for the others. ``loss_fn(logits, labels, index)`` (shapes
    (M, b, K), (M, b), (M, b); ``index`` into ``images``) replaces the sum of the models' mean
    cross-entropies, e.g. :class:`fdd.fairness.gdro.GroupDRO` with one weight vector per model;
    its state must be updated in place (a captured epoch replays it).

    ``precision="bf16"`` runs the forward passes under bfloat16 autocast (no cast cache: the
    weights change every step); parameters, gradients, the loss and the SGD update stay fp32.
    ``stack_forward="loop"`` computes the models' forward passes one after another inside the
    step (plain convolutions) instead of one :func:`torch.func.vmap` (grouped convolutions);
    the gradients are the same, each model's from its own slice of the stacked parameters.
    ``transform``, when given, is applied to every batch after DSA (the DC augmentation,
    which draws as it goes: its epochs are not captured). ``compile`` runs the stacked forward
    pass and the DSA augmentation through ``torch.compile``
    (:func:`fdd.distillation.compilation.compile_static`: one build per batch shape; the backward
    pass is compiled with it), so the convolution's epilogue (norm,
    activation, pooling) and its gradient run as fused kernels; the first epochs then also pay
    the compilation.
    """
    m, n = len(nets), images.shape[0]
    params, buffers = stack_module_state(nets)
    if buffers and stack_forward != "loop":
        raise ValueError(ERR_STACK_BUFFERS.format(names=sorted(buffers)))
    template = copy.deepcopy(nets[0]).to("meta")

    def one_model(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(template, p, (x,))

    def one_by_one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        # model i's buffers are views of row i of the stacked ones: batch norm's running statistics
        # update in place there, as they would in the network itself
        return torch.stack(
            [
                functional_call(
                    template, ({k: v[i] for k, v in p.items()}, {k: v[i] for k, v in buffers.items()}), (x[i],)
                )
                for i in range(m)
            ]
        )

    forward = one_by_one if stack_forward == "loop" else vmap(one_model)
    augment = apply_dsa
    if compile:
        forward = compile_static(forward)
        augment = compile_static(apply_dsa)
    device = images.device
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False
    )
    optimizer = torch.optim.SGD(list(params.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    block = min(n, batch_size)
    starts = list(range(0, n, block))
    per_epoch = len(starts) * m * block  # DSA slots of one epoch: model i's batch j reads one family block
    offsets = (torch.arange(m, device=device) * block).unsqueeze(1) + torch.arange(block, device=device)  # (M, block)
    chunk = max(1, min(epochs, STACKED_DRAW_SLOTS // max(per_epoch, 1)))
    # what an epoch reads: its batch orders and the first slot of its DSA parameters
    order = torch.arange(n, device=device).expand(m, n).contiguous()
    draws: DSADraw | None = None  # one chunk's DSA parameters, refilled in place
    slot_bases = torch.arange(chunk, device=device) * per_epoch  # first DSA slot of each epoch of a chunk

    def run_epoch(order: Tensor, slot_base: Tensor) -> None:
        for j, start in enumerate(starts):
            idx = order[:, start : start + block]  # (M, b)
            b = idx.shape[1]
            x = images[idx.reshape(-1)]  # (M*b, C, H, W)
            y = labels[idx]  # (M, b)
            if draws is not None:
                slots = (offsets[:, :b] + (slot_base + j * m * block)).reshape(-1)
                x = augment(x, slots, draws, config=cast(DSAConfig, dsa))  # draws exist only with dsa
            if transform is not None:
                x = transform(x)
            with autocast:
                logits = forward(params, x.view(m, b, *x.shape[1:]))  # (M, b, classes)
            logits = logits.float()
            if loss_fn is None:
                loss = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1)) * m
            else:
                loss = loss_fn(logits, y, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    graphed: dict[float, CapturedStep] = {}  # learning rate -> captured epoch
    step: Callable[[Tensor, Tensor], object] = run_epoch
    for epoch in range(epochs):
        if epoch % chunk == 0:  # draw the next chunk of epochs: one training plan of count x M runs
            count = min(chunk, epochs - epoch)
            plan = draw_training_plan(
                n,
                epochs=count * m,
                batch_size=batch_size,
                image_size=tuple(images.shape[-2:]),
                dsa=dsa,
                generator=generator,
                device=device,
            )
            orders = None if plan.orders is None else plan.orders.view(count, m, n)
            if plan.dsa is not None:
                if draws is None:
                    draws = plan.dsa
                else:  # same tensors (a captured epoch reads them), refilled; a shorter last chunk fills a prefix
                    with torch.no_grad():
                        for f in dataclasses.fields(DSADraw):
                            getattr(draws, f.name)[: count * per_epoch].copy_(getattr(plan.dsa, f.name))
        if orders is not None:
            order = orders[epoch % chunk]
        slot_base = slot_bases[epoch % chunk]
        if cuda_graph and device.type == "cuda" and transform is None:
            rate = optimizer.param_groups[0]["lr"]
            if rate not in graphed:
                graphed[rate] = CapturedStep(
                    run_epoch,
                    device=device,
                    eager_calls=0 if graphed else 3,
                    what="audit epoch",
                    setting="audit.cuda_graph",
                )
            step = graphed[rate]
        step(order, slot_base)
        if lr_decay_epoch is not None and epoch == lr_decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
    with torch.no_grad():
        for i, net in enumerate(nets):
            for name, value in net.named_parameters():
                value.copy_(params[name][i])
            for name, buffer in net.named_buffers():
                buffer.copy_(buffers[name][i])
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
    protocol: EvaluationProtocol | None = None

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
    architecture: str = "matching",
    epochs: int | None = None,
    intervention: str = "none",
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
        The matching network's settings (what ``architecture="matching"`` trains).
    device : torch.device or str
    progress : callable(evaluations_done), optional
    architecture : str
        An evaluation-architecture spec (:func:`fdd.config.parse_architecture`); default the
        matching network.
    epochs : int, optional
        Training epochs in place of ``config.epochs`` (the audit of ``full-data`` trains on the
        whole train split for ``config.full_data_epochs``: :meth:`fdd.config.AuditConfig.epochs_for`).
        The set is always trained in minibatches of ``config.batch_size``.
    intervention : {"none", "gdro"}
        ``gdro``: train with Group DRO (:class:`fdd.fairness.gdro.GroupDRO`, step size
        ``config.gdro_step_size``) on the groups recorded in ``synthetic.groups``.
    """
    if intervention not in INTERVENTIONS:
        raise ValueError(ERR_INTERVENTION.format(allowed=INTERVENTIONS, value=intervention))
    if intervention == "gdro" and synthetic.groups is None:
        raise ValueError(ERR_NO_SYN_GROUPS)
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
    protocol = evaluation_protocol(synthetic, config=config, network=network, architecture=architecture)
    dsa = DSAConfig(strategy=protocol.strategy) if protocol.augmentation == "dsa" else None
    generator = torch.Generator(device=device)
    transform: Callable[[Tensor], Tensor] | None = None
    if protocol.augmentation == "dc" and DCAugmentConfig(strategy=protocol.strategy).families():
        transform = functools.partial(
            dc_augment, config=DCAugmentConfig(strategy=protocol.strategy), generator=generator
        )

    seeds = [config.seed * 1000 + run for run in range(config.num_eval)]
    nets = [
        build_architecture(
            architecture,
            input_shape=test.image_shape,
            num_classes=test.num_classes,
            network=network,
            seed=seed,
            device=device,
        )
        for seed in seeds
    ]
    epochs = config.epochs if epochs is None else epochs
    schedule: dict[str, Any] = dict(
        epochs=epochs + 1,
        lr=protocol.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        dsa=dsa,
        lr_decay_epoch=epochs // 2 + 1,
        transform=transform,
    )

    def objective(models: int) -> GroupDRO | None:
        if intervention != "gdro":
            return None
        groups = cast(Tensor, synthetic.groups).to(device)  # checked above
        return GroupDRO(groups, num_groups=test.num_groups, step_size=config.gdro_step_size, num_models=models)

    generator.manual_seed(seeds[0])
    stack_forward = config.resolved_stack_forward(images.device.type)
    # networks with batch norm stack only in the loop forward (vmap cannot update their running statistics)
    if config.stack_models and len(nets) > 1 and (stack_forward == "loop" or not has_buffers(nets[0])):
        train_stacked(
            nets,
            images,
            labels,
            generator=generator,
            cuda_graph=config.cuda_graph,
            precision=config.precision,
            stack_forward=stack_forward,
            compile=config.compile,
            loss_fn=objective(len(nets)),
            **schedule,
        )
    else:
        for seed, net in zip(seeds, nets):
            generator.manual_seed(seed)
            train_network(net, images, labels, generator=generator, loss_fn=objective(1), **schedule)
    reports = []
    for run, net in enumerate(nets):
        predictions = predict(net, test_images, batch_size=config.test_batch_size).cpu()
        reports.append(
            fairness_report(
                predictions,
                test.labels,
                sensitive_features=test.groups,
                num_classes=test.num_classes,
                num_groups=test.num_groups,
                class_names=test.class_names,
                group_names=test.group_names,
            )
        )
        if progress is not None:
            progress(run + 1)
    return AuditResult(reports=tuple(reports), summary=summarize_runs(reports), protocol=protocol)


def audit_architectures(
    synthetic: SyntheticSet,
    test: GroupedImages,
    *,
    config: AuditConfig,
    network: NetworkConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int], None] | None = None,
    epochs: int | None = None,
    intervention: str = "none",
) -> dict[str, AuditResult]:
    """:func:`audit_synthetic` for every network of ``config.architectures``, in that order.

    ``progress(architecture, done)`` is called after each evaluation; ``epochs`` and
    ``intervention`` are passed on.
    """
    results = {}
    for name in config.architectures:
        report = None if progress is None else (lambda done, name=name: progress(name, done))
        results[name] = audit_synthetic(
            synthetic,
            test,
            config=config,
            network=network,
            device=device,
            progress=report,
            architecture=name,
            epochs=epochs,
            intervention=intervention,
        )
    return results
