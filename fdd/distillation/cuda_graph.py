"""Training and synthesis steps captured as CUDA graphs and replayed.

On a GPU, the small steps of this field (ten SGD steps on 100 synthetic images, one
epoch of five stacked evaluation models) cost kernel launches more than arithmetic. A
CUDA graph records a step's kernels once and replays them with one launch.

- :class:`CapturedStep` runs a function of fixed-shape tensors eagerly for its first
  calls (real work that also warms up cuDNN, the allocator and ``torch.compile``), then
  captures it once and replays it from then on. Each call copies its inputs into the
  graph's static copies; random draws therefore stay outside the graph, drawn by the
  caller from its own generator, so the random stream is the one of the eager code.
  The DM synthesis step (:class:`fdd.distillation.synthesis.DMSynthesizer`) and an epoch of the
  stacked audit training (:func:`fdd.fairness.audit.train_stacked`) use it.
- :class:`CapturedTraining` is ``train_network`` on a network that is re-drawn
  between calls (COBRA's per-iteration embedder warm-up, DC's inner loop): captured
  once after throw-away warm-up runs, whose effect on the weights is undone.

A replay launches the same kernels on the same memory, so it computes what the eager
code computes; differences come only from the kernels cuDNN picks inside a capture
(observed in the 7th digit).

Requirements: a CUDA device, fixed shapes, no host synchronisation inside the captured
function, and state that is updated *in place* (parameters re-drawn with
:func:`fdd.models.networks.reset_parameters_`, optimiser buffers created before capture).
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from fdd.distillation.augment import DSAConfig
from fdd.distillation.training import draw_training_plan, train_network

__all__ = ["CapturedStep", "CapturedTraining", "capture"]

ERR_DEVICE = "CUDA-graph training needs a CUDA device; got {device}"
ERR_SHAPE = "CUDA-graph training was captured for {field} of shape {expected}; got {got}"
ERR_INPUTS = "a captured step was recorded for inputs {expected}; got {got}"
ERR_CAPTURE = (
    "capturing one {what} as a CUDA graph failed ({error}); set {setting}: false to run it eagerly "
    "(same results, slower), and please report the error"
)


def _tensors(value: object) -> list[Tensor]:
    """The tensors inside ``value``: a tensor, ``None``, a dataclass, tuple or list of them."""
    if value is None:
        return []
    if isinstance(value, Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []  # plain numbers and strings are part of the captured code, not inputs


def _signature(value: object) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.device) for t in _tensors(value)]


def _clone(value: object) -> object:
    """A copy of ``value`` with every tensor cloned (the graph's static inputs)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _clone(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        )
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(item) for item in value)
    return value


def capture(body: Callable[[], object], *, device: torch.device, eager_runs: int = 0):
    """Run ``body()`` ``eager_runs`` times on a side stream, then capture one call.

    Returns ``(graph, output of the captured call)``. The eager runs do their work
    (callers either want it or undo it); capturing runs nothing.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(eager_runs):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # Only this thread's calls may invalidate the capture (as in torch.compile's CUDA-graph trees):
    # under the default "global" mode, a CUDA call that capture forbids made by any other thread
    # (torch.compile's kernel loading, say) breaks it. On an H200 one capture failed that way
    # inside the CUDA test suite and passed alone. The garbage collector stays off meanwhile, so
    # no finaliser frees CUDA objects during the capture.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = body()
    finally:
        if collecting:
            gc.enable()
    return graph, out


class CapturedStep:
    """``fn(*inputs)``: eager for the first ``eager_calls`` calls, then one CUDA graph.

    Parameters
    ----------
    fn : callable
        A function of fixed-shape tensors (or dataclasses / tuples holding them, or
        ``None``) that launches device work only: no host synchronisation, no change of
        shapes between calls, state updated in place. Its output is a tensor or ``None``.
    device : torch.device
        The CUDA device.
    eager_calls : int
        Calls run eagerly (on a side stream, as :func:`torch.cuda.graph` asks of the
        warm-up) before the capture. They are real calls: their results are kept.
    what, setting : str
        Named in the error if the capture fails: what was captured and the setting
        that turns the capture off.

    Each later call copies the inputs into the static copies the graph reads and replays
    it; the output is a fresh copy of the graph's output tensor.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor | None],
        *,
        device: torch.device,
        eager_calls: int = 3,
        what: str = "step",
        setting: str = "synthesis.cuda_graph",
    ) -> None:
        if device.type != "cuda":
            raise ValueError(ERR_DEVICE.format(device=device))
        self.fn, self.device, self.eager_calls = fn, device, eager_calls
        self.what, self.setting = what, setting
        self.calls = 0
        self.graph = None
        self.static_inputs: tuple = ()
        self.static_output: Tensor | None = None

    def __call__(self, *inputs: object) -> Tensor | None:
        self.calls += 1
        if self.graph is None and self.calls <= self.eager_calls:
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out = self.fn(*inputs)
            current.wait_stream(side)
            return out
        if self.graph is None:
            self.static_inputs = cast(tuple, _clone(inputs))  # a tuple in, a tuple out
            try:
                self.graph, self.static_output = capture(lambda: self.fn(*self.static_inputs), device=self.device)
            except RuntimeError as error:
                raise RuntimeError(ERR_CAPTURE.format(what=self.what, error=error, setting=self.setting)) from error
        elif _signature(inputs) != _signature(self.static_inputs):
            raise ValueError(ERR_INPUTS.format(expected=_signature(self.static_inputs), got=_signature(inputs)))
        with torch.no_grad():
            for static, value in zip(_tensors(self.static_inputs), _tensors(inputs)):
                static.copy_(value)
        assert self.graph is not None  # captured above
        self.graph.replay()
        return None if self.static_output is None else self.static_output.detach().clone()


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
        :func:`fdd.distillation.training.train_network`.
    dsa : DSAConfig or None
    forward, augment : callable, optional
        Replacements for ``net(x)`` and :func:`fdd.distillation.augment.apply_dsa` inside the graph,
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
            n,
            epochs=epochs,
            batch_size=batch_size,
            image_size=tuple(image_shape[-2:]),
            dsa=dsa,
            generator=None,
            device=device,
        )
        saved = [p.detach().clone() for p in net.parameters()]
        buffers = [b.detach().clone() for b in net.buffers()]

        extra: dict[str, Any] = {k: v for k, v in (("forward", forward), ("augment", augment)) if v is not None}

        def body() -> None:
            train_network(
                net,
                self.images,
                self.labels,
                epochs=epochs,
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                batch_size=batch_size,
                dsa=dsa,
                generator=None,
                plan=self.plan,
                **extra,
            )

        for p in net.parameters():
            p.grad = None
        self.graph, _ = capture(body, device=device, eager_runs=warmup_runs)
        with torch.no_grad():  # capturing ran nothing, but the warm-up runs changed the weights
            for p, value in zip(net.parameters(), saved):
                p.copy_(value)
            for b, value in zip(net.buffers(), buffers):
                b.copy_(value)

    def run(self, images: Tensor, *, generator: torch.Generator | None) -> None:
        """Train the network on ``images`` from its current parameters, in place.

        The batch orders and DSA parameters are drawn here from ``generator`` exactly as
        :func:`fdd.distillation.training.train_network` draws them (:func:`fdd.distillation.training.draw_training_plan`),
        copied into the graph's static inputs, and the graph is replayed.
        """
        if tuple(images.shape) != tuple(self.images.shape):
            raise ValueError(
                ERR_SHAPE.format(field="images", expected=tuple(self.images.shape), got=tuple(images.shape))
            )
        with torch.no_grad():
            self.images.copy_(images)
            fresh = draw_training_plan(
                images.shape[0],
                epochs=self.epochs,
                batch_size=self.batch_size,
                image_size=tuple(images.shape[-2:]),
                dsa=self.dsa,
                generator=generator,
                device=images.device,
            )
            for static, value in zip(_tensors(self.plan), _tensors(fresh)):
                static.copy_(value)
        self.graph.replay()
