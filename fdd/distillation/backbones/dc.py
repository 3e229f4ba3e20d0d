"""DC (dataset condensation with gradient matching) in the vanilla, FairDD and COBRA modes.

Per class ``c``, the gradient of the cross-entropy of a real batch with respect to the
network's weights is matched to that of the class's synthetic images with DC's
layer-wise distance (docs/method.md section 2):

.. math::

    d(A, B) = \\sum_{\\ell} \\sum_{o} \\Bigl(1 - \\frac{\\langle A_{\\ell,o}, B_{\\ell,o}\\rangle}
        {\\lVert A_{\\ell,o}\\rVert \\lVert B_{\\ell,o}\\rVert + 10^{-6}}\\Bigr)

over the layers ``l`` with a weight matrix or kernel (bias and norm parameters are
skipped) and their output channels ``o`` (rows of the weight reshaped to
``(out, -1)``). The targets:

.. math::

    \\text{vanilla:}\\ & d(\\nabla_\\theta \\ell(S_c), \\nabla_\\theta \\ell(T_c)) \\\\
    \\text{fairdd:}\\ & \\sum_{g \\in P_c} d(\\nabla_\\theta \\ell(S_c), \\nabla_\\theta \\ell(T_{c,g})) \\\\
    \\text{cobra:}\\ & d\\Bigl(\\nabla_\\theta \\ell(S_c), \\frac{1}{|P_c|}\\sum_{g \\in P_c}
        \\nabla_\\theta \\ell(T_{c,g})\\Bigr)

with ``l`` the mean cross-entropy. The cobra target, a layer-wise mean of per-group mean
gradients, is the gradient of one group-balanced weighted loss
(:func:`fdd.distillation.backbones.weights.cell_weights`), so it costs one backward pass; fairdd needs
one backward pass per group. All classes (and groups) are batched: the network is
evaluated functionally (:func:`torch.func.functional_call`) under :func:`torch.func.vmap`
over classes (one weighted pull-back per class, :func:`torch.func.vjp`); fairdd's
per-group gradients come from per-image gradients (:func:`torch.func.grad` vmapped over
the images) contracted with the groups' weight vectors, so the backward work does not
grow with the number of groups.

Schedule (DC): each outer iteration draws a fresh network; ``outer_loop`` times, the
matching loss of all classes is summed and one SGD step is taken on the synthetic
pixels, and between two such steps the network is trained for ``inner_loop`` epochs on
the current synthetic set (SGD ``lr_net``, no momentum, DSA); with
``synthesis.cuda_graph`` on a CUDA device that training is one captured CUDA graph
(:class:`fdd.distillation.cuda_graph.CapturedTraining`, the same computation without the launch cost
of its ``inner_loop`` tiny steps).

References
----------
Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from fdd.distillation.augment import draw_dsa
from fdd.distillation.backbones.weights import cell_weights
from fdd.distillation.cuda_graph import CapturedTraining
from fdd.distillation.synthesis import Synthesizer
from fdd.distillation.training import train_network
from fdd.models.networks import reset_parameters_

__all__ = [
    "DCSynthesizer",
    "EPS",
    "OuterInnerSynthesizer",
    "class_gradients",
    "layerwise_distance",
    "matched_parameters",
]

ERR_BATCHNORM = (
    "backbone {backbone!r} evaluates the network per class under torch.func.vmap and needs per-image "
    "normalisation; network.norm must be 'instancenorm' or 'none', got 'batchnorm'"
)
ERR_GRAD_SHAPES = "syn and real gradients must list the same layers; got {syn} and {real}"
ERR_NO_GRADIENTS = "layerwise_distance needs at least one gradient tensor per side; got none"
EPS = 1e-6


def matched_parameters(net: nn.Module) -> list[str]:
    """Names of the parameters DC matches: weights with at least 2 dimensions (no bias, no norm)."""
    return [name for name, p in net.named_parameters() if p.dim() >= 2]


def layerwise_distance(syn: Sequence[Tensor], real: Sequence[Tensor], *, batch_dims: int) -> Tensor:
    """DC's layer-wise distance between two lists of gradients (module docstring).

    Parameters
    ----------
    syn, real : sequence of Tensor
        One tensor per matched layer, shape ``(*lead, out, ...)`` where ``lead`` has
        ``batch_dims`` dimensions; leading dimensions broadcast (e.g. syn ``(C, 1)``
        against real ``(C, G)``).
    batch_dims : int

    Returns
    -------
    Tensor, shape ``lead`` (broadcast)
        Sum over layers and output channels of ``1 - cos``.
    """
    if len(syn) != len(real):
        raise ValueError(ERR_GRAD_SHAPES.format(syn=len(syn), real=len(real)))
    if not syn:
        raise ValueError(ERR_NO_GRADIENTS)
    total = None
    for s, r in zip(syn, real):
        s2, r2 = s.flatten(batch_dims + 1), r.flatten(batch_dims + 1)
        cos = (s2 * r2).sum(-1) / (s2.norm(dim=-1) * r2.norm(dim=-1) + EPS)
        term = (1 - cos).sum(-1)
        total = term if total is None else total + term
    assert total is not None  # syn is not empty
    return total


def class_gradients(
    net: nn.Module,
    params: dict[str, Tensor],
    names: Sequence[str],
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    *,
    chunk_size: int | None = None,
) -> list[Tensor]:
    """Gradients of weighted cross-entropies, for every class and weight row at once.

    .. math::

        G_{c,k} = \\nabla_{\\theta} \\sum_b w_{c,k,b}\\, \\ell(f_\\theta(x_{c,b}), y_{c,b})

    Parameters
    ----------
    net : nn.Module
        Evaluated with :func:`torch.func.functional_call` on ``params``.
    params : dict of str to Tensor
        Every parameter of ``net`` (detached: the gradients are w.r.t. these values).
    names : sequence of str
        The parameters to differentiate (e.g. :func:`matched_parameters`).
    images : Tensor, shape (C, B, channels, H, W)
        Per-class batches; gradients flow back to them (``create_graph`` semantics)
        when they require grad.
    labels : Tensor, shape (C, B)
    weights : Tensor, shape (C, K, B)
    chunk_size : int, optional
        Classes per vectorised call (``torch.func.vmap``'s ``chunk_size``): bounds the
        memory (``None``: all classes at once). With ``K > 1`` the gradients are taken per
        image (memory ``chunk_size * B`` times the matched parameters) and contracted
        with the weights.

    Returns
    -------
    list of Tensor
        One per name, shape ``(C, K, *param.shape)``.
    """
    fixed = {n: p for n, p in params.items() if n not in names}
    wrt = {n: params[n] for n in names}
    classes, rows, batch = weights.shape
    if rows == 1:  # one weighted loss per class: one pull-back per class, classes vmapped

        def one_class(x: Tensor, y: Tensor, w: Tensor) -> dict[str, Tensor]:
            def losses(p: dict[str, Tensor]) -> Tensor:
                return F.cross_entropy(functional_call(net, {**fixed, **p}, (x,)), y, reduction="none")

            _, pullback = vjp(losses, wrt)  # type: ignore[misc]  # the stub's tuple also covers has_aux=True
            return pullback(w[0])[0]

        grads = vmap(one_class, chunk_size=chunk_size)(images, labels, weights)
        return [grads[n].unsqueeze(1) for n in names]

    # several weight rows (fairdd's groups): per-image gradients once, then one contraction
    # per layer; K pull-backs would cost K times the backward pass
    def one_image(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(net, {**fixed, **p}, (x.unsqueeze(0),)), y.unsqueeze(0))

    chunk = None if chunk_size is None else chunk_size * batch
    per_image = vmap(grad(one_image), in_dims=(None, 0, 0), chunk_size=chunk)(
        wrt, images.flatten(0, 1), labels.flatten()
    )
    return [
        torch.einsum("ckb,cbp->ckp", weights, per_image[n].reshape(classes, batch, -1)).reshape(
            classes, rows, *wrt[n].shape
        )
        for n in names
    ]


class OuterInnerSynthesizer(Synthesizer):
    """DC's schedule around a per-outer-loop matching loss (DC, IDC, CAFE).

    Subclasses implement :meth:`matching_loss` (summed over classes) and may decode the
    stored images into the training set (:meth:`training_set`).
    """

    section = "dc"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        net_cfg = kwargs["network"]
        if net_cfg.norm == "batchnorm":
            raise ValueError(ERR_BATCHNORM.format(backbone=self.config.backbone))
        settings = getattr(self.config, self.section)
        self.settings = settings
        self.outer_loop, self.inner_loop = settings.resolved_loops(self.config.ipc)
        self.param_names = matched_parameters(self.net)
        self.captured_inner = None
        if self.config.cuda_graph and self.device.type == "cuda" and self.inner_loop and self.outer_loop > 1:
            images, labels = self.training_set()
            self.captured_inner = CapturedTraining(
                self.net,
                image_shape=tuple(images.shape),
                labels=labels,
                epochs=self.inner_loop,
                batch_size=settings.batch_train,
                lr=settings.lr_net,
                momentum=0.0,
                weight_decay=0.0,
                dsa=self.dsa,
            )

    def matching_loss(self) -> Tensor:
        """The loss of one outer loop, summed over classes, differentiable in the pixels."""
        raise NotImplementedError

    def real_batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(images (C, B, ...), labels (C, B), groups (C, B), valid (C, B)) drawn on the device."""
        index, valid = self.sampler.sample_padded(self.config.batch_real, generator=self.generator)
        return self.real_images[index], self.real_labels[index], self.real_groups[index], valid

    def siamese(self, real: Tensor, real_labels: Tensor, syn: Tensor, syn_labels: Tensor) -> tuple[Tensor, Tensor]:
        """One DSA draw per class applied to the real batch (C, B, ...) and the synthetic set alike."""
        if self.dsa is None:
            return real, syn
        draw = draw_dsa(
            self.train.num_classes,
            image_size=self.train.image_shape[1:],
            config=self.dsa,
            generator=self.generator,
            device=self.device,
        )
        flat = self.augment(real.flatten(0, 1), real_labels.flatten(), draw, config=self.dsa)
        return flat.view(real.shape), self.augment(syn, syn_labels, draw, config=self.dsa)

    def step(self) -> Tensor:
        reset_parameters_(self.net, generator=self.generator)
        total = torch.zeros((), device=self.device)
        for outer in range(self.outer_loop):
            self.net.requires_grad_(False)  # the pixel loss must not accumulate into the network's .grad
            loss = self.matching_loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total = total + loss.detach()
            if outer + 1 < self.outer_loop and self.inner_loop:
                images, labels = self.training_set()
                self.net.requires_grad_(True)
                if self.captured_inner is not None:  # the same training replayed as one CUDA graph
                    self.captured_inner.run(images.detach(), generator=self.generator)
                    continue
                train_network(
                    self.net,
                    images.detach(),
                    labels,
                    epochs=self.inner_loop,
                    lr=self.settings.lr_net,
                    momentum=0.0,
                    weight_decay=0.0,
                    batch_size=self.settings.batch_train,
                    dsa=self.dsa,
                    generator=self.generator,
                )
        self.iteration += 1
        return total / self.outer_loop


class DCSynthesizer(OuterInnerSynthesizer):
    """The DC backbone (module docstring)."""

    def matching_loss(self) -> Tensor:
        c = self.train.num_classes
        real, real_labels, real_groups, valid = self.real_batch()
        syn, syn_labels = self.training_set()
        real, syn = self.siamese(real, real_labels, syn, syn_labels)
        params = {n: p.detach() for n, p in self.net.named_parameters()}
        weights, present = cell_weights(real_groups, valid, num_groups=self.train.num_groups, mode=self.mode)
        # fairdd: per-image gradients of about 2 classes' batches held at once bound the memory
        chunk = None if weights.shape[1] == 1 else 2
        with torch.no_grad():
            target = class_gradients(self.net, params, self.param_names, real, real_labels, weights, chunk_size=chunk)
        per_class = syn.shape[0] // c
        syn_weights = torch.full((c, 1, per_class), 1.0 / per_class, device=self.device)
        syn_grads = class_gradients(
            self.net,
            params,
            self.param_names,
            syn.view(c, per_class, *syn.shape[1:]),
            syn_labels.view(c, per_class),
            syn_weights,
        )
        distance = layerwise_distance(syn_grads, target, batch_dims=2)  # (C, K)
        return (distance * present).sum()
