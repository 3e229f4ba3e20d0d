"""The COBRA warm-up as one captured CUDA graph.

In cobra mode every outer iteration trains a freshly drawn ConvNet for ``K`` epochs on
the current synthetic set before matching (``K = 10`` at IPC 10). With the synthetic set
in one batch that is ``K`` tiny SGD steps whose cost on a GPU is kernel launches, not
arithmetic: about 4 ms a step on an H100/H200 for well under 1 ms of work.

:class:`CapturedTraining` records the whole warm-up (``K`` forward passes with DSA,
backward passes and SGD updates of a *fresh* optimiser, over every batch of every
epoch) once with
:func:`torch.cuda.graph` and replays it every iteration. The replay launches the same
kernels on the same memory, so it computes what :func:`fdd.synthesis.train_network`
computes eagerly, bit for bit. Random draws stay outside the graph: the caller draws the
DSA parameters with its own generator and :meth:`CapturedTraining.run` copies them into
the graph's static inputs, so the random stream is the same as without the graph.

Requirements: a CUDA device, fixed shapes (the synthetic set has a fixed size), and a network whose parameters are re-drawn *in place* between
iterations (:func:`fdd.networks.reset_parameters_`), since the graph reads and updates
those very tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fdd.augment import DSAConfig, DSADraw
from fdd.synthesis import draw_training_plan, train_network

ERR_DEVICE = "CUDA-graph training needs a CUDA device; got {device}"
ERR_SHAPE = "CUDA-graph training was captured for {field} of shape {expected}; got {got}"


class CapturedTraining:
    """``train_network(net, images, labels, ...)`` captured once, replayed by :meth:`run`.

    Parameters
    ----------
    net : nn.Module
        The network to train; its parameter tensors are the graph's state.
    image_shape : tuple
        ``(N, C, H, W)`` of the images it will be trained on.
    labels : Tensor
        ``(N,)`` fixed labels on the CUDA device.
    epochs, lr, momentum, weight_decay : training schedule of
        :func:`fdd.synthesis.train_network`.
    dsa : DSAConfig or None
    forward, augment : callable, optional
        Replacements for ``net(x)`` and :func:`fdd.augment.apply_dsa` inside the graph,
        e.g. their ``torch.compile``-d versions (fused kernels capture like any others;
        the eager runs before capture compile them).
    warmup_runs : int
        Eager runs on a side stream before capture (cuDNN and allocator warm-up, as
        :func:`torch.cuda.graph` requires).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        image_shape: tuple[int, ...],
        labels: Tensor,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        dsa: DSAConfig | None,
        forward: Callable[[Tensor], Tensor] | None = None,
        augment: Callable[..., Tensor] | None = None,
        warmup_runs: int = 3,
    ) -> None:
        device = labels.device
        if device.type != "cuda":
            raise ValueError(ERR_DEVICE.format(device=device))
        n = image_shape[0]
        self.net, self.epochs, self.batch_size, self.dsa = net, epochs, batch_size, dsa
        self.images = torch.randn(image_shape, device=device)  # warm-up input; run() copies the real one in
        self.labels = labels
        self.plan = draw_training_plan(  # static inputs; run() overwrites them with fresh draws
            n, epochs=epochs, batch_size=batch_size, image_size=tuple(image_shape[-2:]), dsa=dsa,
            generator=None, device=device,
        )
        saved = [p.detach().clone() for p in net.parameters()]
        buffers = [b.detach().clone() for b in net.buffers()]

        extra = {k: v for k, v in (("forward", forward), ("augment", augment)) if v is not None}

        def body() -> None:
            train_network(
                net, self.images, self.labels, epochs=epochs, lr=lr, momentum=momentum,
                weight_decay=weight_decay, batch_size=batch_size, dsa=dsa, generator=None, plan=self.plan,
                **extra,
            )

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                body()
        torch.cuda.current_stream(device).wait_stream(side)
        for p in net.parameters():
            p.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            body()
        with torch.no_grad():  # capturing ran nothing, but the warm-up runs changed the weights
            for p, value in zip(net.parameters(), saved):
                p.copy_(value)
            for b, value in zip(net.buffers(), buffers):
                b.copy_(value)

    def run(self, images: Tensor, *, generator: torch.Generator | None) -> None:
        """Train the network on ``images`` from its current parameters, in place.

        The batch orders and DSA parameters are drawn here from ``generator`` exactly as
        :func:`fdd.synthesis.train_network` draws them (:func:`fdd.synthesis.draw_training_plan`),
        copied into the graph's static inputs, and the graph is replayed.
        """
        if tuple(images.shape) != tuple(self.images.shape):
            raise ValueError(ERR_SHAPE.format(field="images", expected=tuple(self.images.shape), got=tuple(images.shape)))
        with torch.no_grad():
            self.images.copy_(images)
            fresh = draw_training_plan(
                images.shape[0], epochs=self.epochs, batch_size=self.batch_size,
                image_size=tuple(images.shape[-2:]), dsa=self.dsa, generator=generator, device=images.device,
            )
            if self.plan.orders is not None:
                self.plan.orders.copy_(fresh.orders)
            if self.plan.dsa is not None:
                for field in dataclasses.fields(DSADraw):
                    getattr(self.plan.dsa, field.name).copy_(getattr(fresh.dsa, field.name))
        self.graph.replay()
