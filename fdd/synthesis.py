"""The synthetic-set optimisation loop shared by every backbone, and the DM backbone.

:class:`Synthesizer` holds what every backbone shares (data, initialisation, optimiser,
generator, checkpoint state); :func:`synthesize` drives any backbone with checkpoints,
resume and progress; the other backbones live in :mod:`fdd.backbones`.

One outer iteration of DM (METHOD.md section 2):

1. re-draw the embedding network's parameters (a fresh random ConvNet);
2. cobra only: train it for ``K`` epochs on the current synthetic set (SGD, DSA),
   then freeze it;
3. draw ``batch_real`` real images per class on the device, augment the real batch and
   the synthetic set with one siamese DSA draw per class, embed both in **one**
   forward pass each, and compute :func:`fdd.dm.dm_loss` for all classes at once;
4. one SGD step (momentum) on the synthetic pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from fdd.augment import DSAConfig, DSADraw, apply_dsa, draw_dsa
from fdd.config import NetworkConfig, SynthesisConfig
from fdd.data import GroupedImages, SyntheticSet
from fdd.dm import dm_loss
from fdd.files import atomic_write_bytes
from fdd.networks import ConvNet, build_network, reset_parameters_

ERR_MODE = "mode must be one of {allowed}; got {value!r}"
ERR_CLASS_EMPTY = (
    "class index {names} has no training images; every class needs at least one real image "
    "to initialise and match its synthetic images"
)
ERR_TOO_FEW_FOR_INIT = (
    "init='real' needs ipc={ipc} distinct real images per class, but class {name!r} has {count}; "
    "lower synthesis.ipc or use synthesis.init='noise'"
)

ERR_CHECKPOINT_DISCARDED = "discarding checkpoint {path}: {reason}; the synthesis starts over"
#: suffix of the integrity record written beside a checkpoint (``sha256sum`` format)
CHECKPOINT_DIGEST_SUFFIX = ".sha256"

ProgressCallback = Callable[[int, float], None]


class CheckpointDiscardedWarning(UserWarning):
    """A checkpoint failed its integrity or sanity checks and was removed; the run starts over."""


class ClassSampler:
    """Draws per-class batches of real-image indices on the data's device.

    Each call returns ``batch`` indices per class drawn without replacement (the
    reference code's permutation), all classes together, in one batched operation.
    Classes with fewer than ``batch`` images contribute all of their images.
    """

    def __init__(self, labels: Tensor, *, num_classes: int) -> None:
        counts = torch.bincount(labels, minlength=num_classes)
        if bool((counts == 0).any()):
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(ERR_CLASS_EMPTY.format(names=empty))  # class indices
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        position = torch.arange(width, device=labels.device).unsqueeze(0)  # (1, W)
        valid = position < counts.unsqueeze(1)  # (C, W)
        flat = (starts.unsqueeze(1) + position).clamp_max(labels.numel() - 1)
        self.index = torch.where(valid, order[flat], torch.zeros_like(flat))  # (C, W)
        self.valid = valid
        self.counts = counts
        self.smallest_class = int(counts.min())  # read once: no device sync per draw
        self.num_classes = num_classes

    def sample(self, batch: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Indices, class-major: ``min(batch, n_c)`` distinct images of every class ``c``."""
        index, valid = self.sample_padded(batch, generator=generator)
        if index.shape[1] <= self.smallest_class:  # every class fills its batch: no ragged mask, no device sync
            return index.flatten()
        return index[valid]

    def sample_padded(self, batch: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Indices as a (C, b) matrix, ``b = min(batch, largest class)``, and its validity mask.

        The same draw as :meth:`sample` (same generator use); a class with fewer than
        ``b`` images fills its row's tail with repeats marked ``False`` in the mask, so
        per-class work can be batched as one (C, b) tensor.
        """
        b = min(batch, self.index.shape[1])
        keys = torch.rand(self.index.shape, generator=generator, device=self.index.device)
        keys = keys.masked_fill(~self.valid, 2.0)
        picks = keys.topk(b, dim=1, largest=False).indices  # (C, b)
        chosen = torch.gather(self.index, 1, picks)
        valid = torch.arange(b, device=chosen.device) < self.counts.unsqueeze(1)
        return torch.where(valid, chosen, chosen[:, :1]), valid


def initial_synthetic_images(
    train: GroupedImages,
    *,
    ipc: int,
    init: str,
    generator: torch.Generator,
    device: torch.device,
    network: NetworkConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """Initial synthetic images (normalised space) and labels, ``ipc`` per class.

    ``init='real'`` takes ``ipc`` distinct random real images of each class (as the
    reference code does); ``init='noise'`` draws standard normal pixels;
    ``'stratified'`` and ``'barycenter'`` choose real images covering the groups
    (:mod:`fdd.initialisation`; ``barycenter`` embeds with a random ConvNet of ``network``).
    """
    c = train.num_classes
    labels = torch.arange(c, device=device).repeat_interleave(ipc)
    if init == "noise":
        shape = (c * ipc, *train.image_shape)
        return torch.randn(shape, generator=generator, device=device), labels
    if init in ("stratified", "barycenter"):
        from fdd.initialisation import covering_indices

        embed = None
        if init == "barycenter":
            net = network or NetworkConfig()
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            embed = build_network(
                input_shape=train.image_shape, num_classes=c, network=net, seed=seed, device=device,
            ).eval().embed
        index = covering_indices(train, ipc=ipc, method=init, generator=generator, embed=embed, device=device)
        return train.subset(index).normalized(device), labels
    counts = torch.bincount(train.labels, minlength=c)
    for k in range(c):
        if int(counts[k]) < ipc:
            raise ValueError(ERR_TOO_FEW_FOR_INIT.format(ipc=ipc, name=train.class_names[k], count=int(counts[k])))
    sampler = ClassSampler(train.labels.to(device), num_classes=c)
    index = sampler.sample(ipc, generator=generator).cpu()
    return train.subset(index).normalized(device), labels


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
    (:class:`fdd.cuda_graph.CapturedTraining`) replay the training with fresh draws.
    """

    orders: Tensor | None
    dsa: DSADraw | None
    slots_per_epoch: int


def draw_training_plan(
    n: int,
    *,
    epochs: int,
    batch_size: int,
    image_size: tuple[int, int],
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
            epochs * per_epoch, image_size=image_size, config=dsa, family_block=block,
            generator=generator, device=device,
        )
    return TrainingPlan(orders=orders, dsa=draw, slots_per_epoch=per_epoch)


def train_network(
    net: ConvNet,
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
) -> ConvNet:
    """Train ``net`` on (images, labels) with SGD and cross-entropy, DSA per batch.

    The learning rate is multiplied by 0.1 once epoch ``lr_decay_epoch`` is done
    (the evaluation protocol's schedule); ``None`` keeps it constant. ``forward``
    replaces ``net(x)`` and ``augment`` replaces :func:`fdd.augment.apply_dsa` (e.g.
    ``torch.compile``-d versions). The batch orders and DSA parameters of all epochs
    are drawn first, in one :func:`draw_training_plan` call from ``generator``; this
    removes most of the per-step launch overhead on a GPU. ``plan`` passes such a
    draw in instead.
    """
    forward = forward if forward is not None else net
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = images.shape[0]
    if plan is None:
        plan = draw_training_plan(
            n, epochs=epochs, batch_size=batch_size, image_size=tuple(images.shape[-2:]), dsa=dsa,
            generator=generator, device=images.device,
        )
    if (plan.orders is not None and tuple(plan.orders.shape) != (epochs, n)) or (plan.orders is None and n > batch_size):
        got = None if plan.orders is None else tuple(plan.orders.shape)
        raise ValueError(ERR_PLAN.format(detail=f"orders of shape {got} for {epochs} epochs of {n} images in batches of {batch_size}"))
    if (plan.dsa is None) != (dsa is None or epochs == 0 or n == 0):
        raise ValueError(ERR_PLAN.format(detail=f"DSA draw {'missing' if plan.dsa is None else 'given'} with dsa={dsa}"))
    slots = torch.arange(min(n, batch_size), device=images.device)
    for epoch in range(epochs):
        for start in range(0, n, batch_size):
            if plan.orders is None:
                x, y = images, labels
            else:
                idx = plan.orders[epoch, start : start + batch_size]
                x, y = images[idx], labels[idx]
            if plan.dsa is not None:
                x = augment(x, slots[: x.shape[0]] + (epoch * plan.slots_per_epoch + start), plan.dsa, config=dsa)
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if lr_decay_epoch is not None and epoch == lr_decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
    return net


@dataclass
class SynthesisResult:
    """What one synthesis run produced."""

    synthetic: SyntheticSet
    losses: list[float] = field(default_factory=list)  # one per iteration
    seconds: float = 0.0
    seconds_per_iteration: float = 0.0


class Synthesizer:
    """What every backbone shares: the real data on the device, the class sampler, the
    initial synthetic set and its optimiser, the run's generator, the matching network,
    checkpoint state and the finished :class:`SyntheticSet`.

    A backbone (DM, DC, IDC, CAFE, MTT; :mod:`fdd.backbones`) is a subclass whose
    :meth:`step` runs one outer iteration of its loss and schedule and returns the loss;
    :func:`synthesize` drives any of them; benchmarks time :meth:`step` directly.

    Parameters
    ----------
    train : GroupedImages
        The real training split with its group ids.
    mode : {"vanilla", "fairdd", "cobra"}
    config : SynthesisConfig
        Iterations, batch size, learning rates, initialisation, warm-up schedule.
    network : NetworkConfig
        Architecture of the embedding ConvNet.
    seed : int
        Seeds the initialisation, the batches, the networks and the augmentation.
    device : torch.device or str
    """

    def __init__(
        self,
        train: GroupedImages,
        *,
        mode: str,
        config: SynthesisConfig,
        network: NetworkConfig,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        from fdd.dm import MATCHING_MODES

        if mode not in MATCHING_MODES:
            raise ValueError(ERR_MODE.format(allowed=MATCHING_MODES, value=mode))
        self.train, self.mode, self.config, self.seed = train, mode, config, seed
        self.device = device = torch.device(device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.real_images = train.normalized(device)
        self.real_labels = train.labels.to(device)
        self.real_groups = train.groups.to(device)
        self.sampler = ClassSampler(self.real_labels, num_classes=train.num_classes)
        syn_images, self.syn_labels = initial_synthetic_images(
            train, ipc=config.ipc, init=config.init, generator=self.generator, device=device, network=network
        )
        self.syn_images = syn_images.detach().clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.syn_images], lr=config.lr_img, momentum=config.momentum)
        self.dsa = DSAConfig() if config.dsa else None
        self.net = build_network(
            input_shape=train.image_shape, num_classes=train.num_classes, network=network, device=device
        )
        from fdd.dm import WARMUP_MODES

        self.warmup_epochs = config.resolved_warmup_epochs() if mode in WARMUP_MODES and config.backbone == "dm" else 0
        self.iteration = 0
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.real_images = self.real_images.contiguous(memory_format=torch.channels_last)
        self.autocast = torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
        )
        # dynamic=False: one specialised build per input shape (real batch, synthetic set), all
        # made in the first, eager iterations; a CUDA-graph capture must not trigger a rebuild
        self.embed = torch.compile(self.net.embed, dynamic=False) if config.compile else self.net.embed
        self.forward = torch.compile(self.net, dynamic=False) if config.compile else self.net
        self.augment = torch.compile(apply_dsa, dynamic=False) if config.compile else apply_dsa

    def step(self) -> Tensor:
        """One outer iteration; returns the matching loss (a 0-d tensor on the device)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit: images, optimiser, RNG, iteration."""
        return {
            "syn_images": self.syn_images.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state().cpu(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.syn_images.copy_(state["syn_images"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].to(self.generator.get_state().device))
        self.iteration = int(state["iteration"])

    def training_set(self) -> tuple[Tensor, Tensor]:
        """The images a model trains on and their labels (the stored ones; IDC decodes them)."""
        return self.syn_images, self.syn_labels

    def synthetic_set(self, provenance: dict | None = None) -> SyntheticSet:
        images, labels = self.training_set()
        return SyntheticSet(
            images=images.detach().cpu(),
            labels=labels.cpu(),
            class_names=self.train.class_names,
            mean=self.train.mean,
            std=self.train.std,
            provenance={
                "backbone": self.config.backbone,
                "mode": self.mode,
                "ipc": self.config.ipc,
                "iterations": self.iteration,
                "seed": self.seed,
                **(provenance or {}),
            },
        )


class DMSynthesizer(Synthesizer):
    """The DM backbone: :meth:`step` runs one outer iteration of distribution matching.

    With ``synthesis.cuda_graph`` on a CUDA device (fp32, contiguous format), a
    first-moment mode (vanilla, fairdd, cobra) and a real batch every class can fill,
    the whole iteration after the random draws (warm-up, real batch, embedding, loss,
    pixel update) is one :class:`fdd.cuda_graph.CapturedStep`: the first iterations run
    eagerly, then the graph is replayed. The draws (network, warm-up plan, real batch,
    DSA) are made first, in the eager code's order, from the run's generator.
    Otherwise only the cobra warm-up is captured (:class:`fdd.cuda_graph.CapturedTraining`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        config, device = self.config, self.device
        self.captured_step = self.captured_warmup = None
        if self._whole_step_capturable():
            from fdd.cuda_graph import CapturedStep

            self.captured_step = CapturedStep(self._warm_up_and_match, device=device, what="DM iteration")
        elif (
            config.cuda_graph and self.warmup_epochs and device.type == "cuda"
            and config.precision == "fp32" and not config.channels_last
        ):
            from fdd.cuda_graph import CapturedTraining

            self.captured_warmup = CapturedTraining(
                self.net, image_shape=tuple(self.syn_images.shape), labels=self.syn_labels,
                epochs=self.warmup_epochs, batch_size=config.warmup_batch, lr=config.warmup_lr,
                momentum=config.warmup_momentum, weight_decay=config.warmup_weight_decay, dsa=self.dsa,
                forward=self.forward, augment=self.augment,
            )

    def _whole_step_capturable(self) -> bool:
        from fdd.dm import MEAN_MODES

        config = self.config
        return (
            config.cuda_graph and self.device.type == "cuda" and config.precision == "fp32"
            and not config.channels_last and self.mode in MEAN_MODES
            and config.batch_real <= self.sampler.smallest_class  # fixed real-batch shape
        )

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.captured_step is not None:  # the graph holds the old optimiser buffers: capture again
            from fdd.cuda_graph import CapturedStep

            self.captured_step = CapturedStep(self._warm_up_and_match, device=self.device, what="DM iteration")

    def step(self) -> Tensor:
        """One outer iteration; returns the matching loss (a 0-d tensor on the device)."""
        config, generator = self.config, self.generator
        reset_parameters_(self.net, generator=generator)
        plan = None
        if self.warmup_epochs and self.captured_warmup is None:
            n = self.syn_images.shape[0]
            plan = draw_training_plan(
                n, epochs=self.warmup_epochs, batch_size=config.warmup_batch,
                image_size=tuple(self.syn_images.shape[-2:]), dsa=self.dsa, generator=generator, device=self.device,
            )
        elif self.captured_warmup is not None:
            with record_function("fdd.warmup"):
                self.net.requires_grad_(True)
                self.captured_warmup.run(self.syn_images.detach(), generator=generator)
        index = self.sampler.sample(config.batch_real, generator=generator)
        draw = None
        if self.dsa is not None:
            draw = draw_dsa(
                self.train.num_classes, image_size=self.train.image_shape[1:], config=self.dsa,
                generator=generator, device=self.device,
            )
        run = self.captured_step if self.captured_step is not None else self._warm_up_and_match
        loss = run(plan, index, draw)
        self.iteration += 1
        return loss.detach()

    def _warm_up_and_match(self, plan: TrainingPlan | None, index: Tensor, draw: DSADraw | None) -> Tensor:
        """Steps 2-4 from drawn randomness: ``plan`` for the warm-up, ``index`` and
        ``draw`` for the real batch and its siamese augmentation."""
        with record_function("fdd.warmup"):
            if plan is not None:
                self._warm_up(plan)
        with record_function("fdd.match"):
            return self._match(index, draw)

    def _warm_up(self, plan: TrainingPlan) -> None:
        """cobra modes: train the freshly drawn embedder on the synthetic set (step 2)."""
        config, net = self.config, self.net
        net.requires_grad_(True)
        with self.autocast:
            train_network(
                net, self.syn_images.detach().contiguous(memory_format=self.memory_format), self.syn_labels,
                epochs=self.warmup_epochs, lr=config.warmup_lr, momentum=config.warmup_momentum,
                weight_decay=config.warmup_weight_decay, batch_size=config.warmup_batch, dsa=self.dsa,
                generator=None, forward=self.forward, augment=self.augment, plan=plan,
            )

    def _match(self, index: Tensor, draw: DSADraw | None) -> Tensor:
        """Steps 3 and 4: embed the real batch ``index`` and the synthetic set, match,
        update the pixels; returns the loss."""
        train, config, net = self.train, self.config, self.net
        net.requires_grad_(False)
        net.train()
        real = self.real_images[index]
        real_labels = self.real_labels[index]
        syn = self.syn_images
        if draw is not None:
            real = self.augment(real, real_labels, draw, config=self.dsa)
            syn = self.augment(syn, self.syn_labels, draw, config=self.dsa)
        if self.config.channels_last:
            syn = syn.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            with torch.no_grad():
                real_features = self.embed(real).float()
            syn_features = self.embed(syn).float()
        loss = dm_loss(
            real_features, real_labels, self.real_groups[index], syn_features, self.syn_labels,
            num_classes=train.num_classes, num_groups=train.num_groups, mode=self.mode,
            solver=config.w2_solver, reg=config.w2_reg, reduction=config.w2_reduction,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def checkpoint_digest_path(path: str | Path) -> Path:
    """The integrity record of the checkpoint at ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKPOINT_DIGEST_SUFFIX)


def write_checkpoint(payload: dict, path: str | Path) -> None:
    """Save ``payload`` with :func:`torch.save` to ``path`` and its SHA-256 to ``<path>.sha256``.

    Both files are written atomically (temporary file, fsync, rename), the checkpoint first:
    a crash between the two leaves a checkpoint whose record does not match, which
    :func:`read_checkpoint` discards (the run loses its progress, never its correctness).
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(checkpoint_digest_path(path), f"{hashlib.sha256(data).hexdigest()}  {Path(path).name}\n".encode())


def discard_checkpoint(path: str | Path, reason: str) -> None:
    """Remove the checkpoint at ``path`` and its record, warning with :data:`ERR_CHECKPOINT_DISCARDED`."""
    warnings.warn(ERR_CHECKPOINT_DISCARDED.format(path=path, reason=reason), CheckpointDiscardedWarning, stacklevel=3)
    Path(path).unlink(missing_ok=True)
    checkpoint_digest_path(path).unlink(missing_ok=True)


def _nonfinite(value: object) -> int:
    """Count of NaN / Inf entries in the floating-point tensors nested in ``value``."""
    if isinstance(value, Tensor):
        return int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
    if isinstance(value, dict):
        return sum(_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nonfinite(v) for v in value)
    if isinstance(value, float):
        return int(not math.isfinite(value))
    return 0


def read_checkpoint(
    path: str | Path, *, fingerprint: str, iterations: int, image_shape: tuple[int, ...]
) -> dict | None:
    """The checkpoint at ``path`` if it can be trusted and resumed, else None.

    A checkpoint is discarded (removed, with a :class:`CheckpointDiscardedWarning` naming
    it) when its SHA-256 does not match ``<path>.sha256`` (bit flips, truncation, a missing
    record), when it does not load, when it was made by other data or settings
    (``fingerprint``), when its iteration exceeds ``iterations``, when its synthetic images
    do not have ``image_shape``, or when it holds NaN or Inf values. None when ``path``
    does not exist.
    """
    path = Path(path)
    if not path.exists():
        checkpoint_digest_path(path).unlink(missing_ok=True)
        return None
    record = checkpoint_digest_path(path)
    try:
        expected = record.read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        discard_checkpoint(path, f"its integrity record {record.name} is missing or unreadable")
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        discard_checkpoint(path, f"its content does not match the SHA-256 in {record.name} (damaged or modified)")
        return None
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is discarded, never used
        discard_checkpoint(path, f"it does not load ({type(exc).__name__})")
        return None
    state = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not isinstance(saved.get("losses"), Tensor) or "syn_images" not in state:
        discard_checkpoint(path, "it is not an fdd synthesis checkpoint (keys fingerprint, state, losses)")
        return None
    if saved.get("fingerprint") != fingerprint:
        discard_checkpoint(path, "it was made with other data, mode, seed or synthesis settings")
        return None
    if not isinstance(state.get("iteration"), int) or not 0 <= state["iteration"] <= iterations:
        discard_checkpoint(path, f"its iteration {state.get('iteration')!r} is outside 0..{iterations}")
        return None
    shape = tuple(state["syn_images"].shape) if isinstance(state["syn_images"], Tensor) else None
    if shape != tuple(image_shape):
        discard_checkpoint(path, f"its synthetic images have shape {shape}, this run's have {tuple(image_shape)}")
        return None
    if saved["losses"].shape != (state["iteration"],):
        discard_checkpoint(path, f"it holds {saved['losses'].numel()} losses for {state['iteration']} iterations")
        return None
    bad = _nonfinite(saved)
    if bad:
        discard_checkpoint(path, f"it holds {bad} NaN or Inf values")
        return None
    return saved


def _fingerprint(train: GroupedImages, mode: str, config: SynthesisConfig, network: NetworkConfig, seed: int) -> str:
    """What a checkpoint must match to be resumed (settings that change the result)."""
    settings = config.model_dump(mode="json", exclude={"log_every", "checkpoint_every", "modes"})
    return hashlib.sha256(
        json.dumps(
            {"train": train.digest(), "mode": mode, "seed": seed, "synthesis": settings,
             "network": network.model_dump(mode="json")},
            sort_keys=True,
        ).encode()
    ).hexdigest()


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each iteration."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SynthesisInterrupted(RuntimeError):
    """Raised after a checkpoint was saved because SIGTERM or SIGINT arrived."""


def synthesize(
    train: GroupedImages,
    *,
    mode: str,
    config: SynthesisConfig,
    network: NetworkConfig,
    seed: int,
    device: torch.device | str = "cpu",
    provenance: dict | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> SynthesisResult:
    """Distil ``train`` into ``config.ipc`` synthetic images per class with ``config.backbone`` in ``mode``.

    Parameters are those of :class:`Synthesizer`, plus

    provenance : dict, optional
        Recorded in the returned :class:`SyntheticSet` (config and data hashes).
    progress : callable(iteration, loss), optional
        Called every ``config.log_every`` iterations and at the end.
    checkpoint : path, optional
        Where to keep a resumable checkpoint (written atomically every
        ``config.checkpoint_every`` iterations and when SIGTERM/SIGINT arrives). If it
        exists and was made by the same data, mode, seed and settings, the run resumes
        from it and ends with the same result as an uninterrupted run (bit for bit on
        the CPU with the same number of threads, where the kernels are deterministic). A SHA-256
        record ``<checkpoint>.sha256`` is written beside it; a checkpoint that fails that check,
        does not load, holds NaN or Inf or does not fit this run is discarded with a
        :class:`CheckpointDiscardedWarning` naming it (:func:`read_checkpoint`), and the run starts
        over. Both files are removed when the run ends.
    cache_dir : path, optional
        Where a backbone keeps reusable artifacts between runs (MTT's expert trajectories).
    """
    from fdd.backbones import build_synthesizer  # the backbones subclass Synthesizer: imported late

    loop = build_synthesizer(
        train, mode=mode, config=config, network=network, seed=seed, device=device, cache_dir=cache_dir
    )
    losses = torch.zeros(config.iterations, device=loop.device)
    fingerprint = _fingerprint(train, mode, config, network, seed) if checkpoint is not None else ""
    if checkpoint is not None:
        saved = read_checkpoint(checkpoint, fingerprint=fingerprint, iterations=config.iterations,
                                image_shape=tuple(loop.syn_images.shape))
        if saved is not None:
            try:
                loop.load_state_dict(saved["state"])
                losses[: loop.iteration] = saved["losses"].to(loop.device)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
                discard_checkpoint(checkpoint, f"its state does not fit this run ({type(exc).__name__}: {exc})")
                loop = build_synthesizer(  # a partly loaded state is never used: a fresh start
                    train, mode=mode, config=config, network=network, seed=seed, device=device, cache_dir=cache_dir
                )
                losses.zero_()

    def save_checkpoint() -> None:
        if checkpoint is not None:
            write_checkpoint(
                {"fingerprint": fingerprint, "state": loop.state_dict(), "losses": losses[: loop.iteration].cpu()},
                checkpoint,
            )

    start = time.perf_counter()
    first = loop.iteration
    with _StopRequest() as stop:
        for it in range(first, config.iterations):
            losses[it] = loop.step()
            if progress is not None and ((it + 1) % config.log_every == 0 or it + 1 == config.iterations):
                progress(it + 1, float(losses[it]))
            if stop.signal is not None:
                save_checkpoint()
                raise SynthesisInterrupted(
                    f"stopped by signal {stop.signal} after iteration {it + 1}; checkpoint saved to {checkpoint}"
                )
            if config.checkpoint_every and (it + 1) % config.checkpoint_every == 0 and it + 1 < config.iterations:
                save_checkpoint()
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    seconds = time.perf_counter() - start
    result = SynthesisResult(
        synthetic=loop.synthetic_set(provenance),
        losses=losses.cpu().tolist(),
        seconds=seconds,
        seconds_per_iteration=seconds / max(config.iterations - first, 1),
    )
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
        checkpoint_digest_path(checkpoint).unlink(missing_ok=True)
    return result
