"""The synthetic-set optimisation loop shared by every backbone, and the DM backbone.

:class:`Synthesizer` holds what every backbone shares (data, initialisation, optimiser,
generator, checkpoint state); :func:`fdd.distillation.run.synthesize` drives any backbone with
checkpoints, resume and progress; the other backbones live in :mod:`fdd.distillation.backbones`.

One outer iteration of DM (docs/method.md section 2):

1. re-draw the embedding network's parameters (a fresh random ConvNet);
2. cobra only: train it for ``K`` epochs on the current synthetic set (SGD, DSA),
   then freeze it;
3. draw ``batch_real`` real images per class on the device, augment the real batch and
   the synthetic set with one siamese DSA draw per class, embed both in **one**
   forward pass each, and compute :func:`fdd.distillation.dm.dm_loss` for all classes at once;
4. one SGD step (momentum) on the synthetic pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor
from torch.profiler import record_function

from fdd.config import NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation.augment import DSAConfig, DSADraw, apply_dsa, draw_dsa
from fdd.distillation.compilation import compile_static
from fdd.distillation.cuda_graph import CapturedStep, CapturedTraining
from fdd.distillation.dm import MATCHING_MODES, MEAN_MODES, POOLED_MODES, WARMUP_MODES, MatchingMode, dm_loss
from fdd.distillation.initialisation import CoveringInit, covering_indices
from fdd.distillation.training import TrainingPlan, draw_training_plan, train_network
from fdd.models.networks import build_network, reset_parameters_

__all__ = [
    "ClassSampler",
    "DMSynthesizer",
    "GroupBalancedSampler",
    "ProgressCallback",
    "SynthesisResult",
    "Synthesizer",
    "check_group_labels",
    "initial_synthetic_images",
    "initial_synthetic_indices",
]

#: DM modes whose iteration is not captured as one CUDA graph, even with synthesis.cuda_graph on: they
#: run eagerly (same results, slower). cui-reweight: capturing its iteration failed on an H200
#: (cudaErrorStreamCaptureInvalidated, torch 2.11, 2026-11-29); the cause is not found yet.
UNCAPTURED_MODES: tuple[str, ...] = ("cui-reweight",)
ERR_MODE = "mode must be one of {allowed}; got {value!r}"
ERR_CLASS_EMPTY = (
    "class index {names} has no training images; every class needs at least one real image "
    "to initialise and match its synthetic images"
)
ERR_TOO_FEW_FOR_INIT = (
    "init='real' needs ipc={ipc} distinct real images per class, but class {name!r} has {count}; "
    "lower synthesis.ipc or use synthesis.init='noise'"
)

ERR_NEEDS_GROUPS = (
    "mode {mode!r} needs the train split's protected groups, but it has {found}; it needs at least two groups "
    "with labelled samples (group id >= 0). Use a mode that needs no groups (vanilla, random-real, full-data, "
    "cui-reweight) or a dataset with group labels"
)
ERR_CLASS_UNLABELLED = (
    "mode 'uniform-subgroup' draws each class's real batch evenly over its groups, but class index {names} has no "
    "sample with a known group (all -1)"
)

ProgressCallback = Callable[[int, float], None]


def check_group_labels(train: GroupedImages, mode: str) -> None:
    """Raise :data:`ERR_NEEDS_GROUPS` unless ``train`` has at least two groups with labelled samples.

    For the modes of :data:`fdd.config.GROUP_MODES`: with a single group (or none known) a
    group-stratified or group-balanced choice is a random one, and Group DRO plain ERM.
    """
    present = torch.unique(train.groups[train.groups >= 0])
    if present.numel() < 2:
        found = "no labelled group" if present.numel() == 0 else f"only group {train.group_names[int(present[0])]!r}"
        raise ValueError(ERR_NEEDS_GROUPS.format(mode=mode, found=found))


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

    def fixed_size(self, batch: int) -> bool:
        """Whether every draw of ``batch`` has the same shape: when every class holds at least ``batch`` images."""
        return batch <= self.smallest_class

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


class GroupBalancedSampler:
    """Draws per-class real batches split evenly over each class's groups (mode ``uniform-subgroup``).

    Class ``c`` has ``G_c`` groups with labelled samples in the train split; each draw takes
    ``q_c = max(1, batch // G_c)`` images of every such (class, group) cell: distinct images
    where the cell holds at least ``q_c``, all of them plus repeats drawn uniformly with
    replacement where it holds fewer, so every group has exactly the same number of images in
    the batch (and the same weight in its pooled mean). Samples of unknown group (``-1``) are
    never drawn. The batch size ``sum_c G_c q_c`` is the same at every draw, so DM's CUDA-graph
    capture applies. One batched draw, no Python loop over classes or groups.
    """

    def __init__(self, labels: Tensor, groups: Tensor, *, num_classes: int, num_groups: int) -> None:
        labelled = groups >= 0
        cell = torch.where(labelled, labels * num_groups + groups.clamp_min(0), num_classes * num_groups)
        counts = torch.bincount(cell, minlength=num_classes * num_groups + 1)[:-1]  # unknown groups dropped
        per_class = (counts.view(num_classes, num_groups) > 0).sum(dim=1)
        if bool((per_class == 0).any()):
            raise ValueError(ERR_CLASS_UNLABELLED.format(names=torch.nonzero(per_class == 0).flatten().tolist()))
        cells = torch.nonzero(counts > 0).flatten()  # present cells, class-major
        order = torch.argsort(cell, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        position = torch.arange(width, device=labels.device).unsqueeze(0)
        self.counts = counts[cells]  # (P,)
        self.valid = position < self.counts.unsqueeze(1)  # (P, W)
        flat = (starts[cells].unsqueeze(1) + position).clamp_max(labels.numel() - 1)
        self.index = torch.where(self.valid, order[flat], torch.zeros_like(flat))  # (P, W) sample ids
        self.groups_per_class = per_class  # (C,)
        self.cell_class = cells // num_groups  # (P,)
        self._keep: dict[int, tuple[int, Tensor]] = {}

    def fixed_size(self, batch: int) -> bool:
        """Whether every draw of ``batch`` has the same shape (always: short cells repeat images)."""
        return True

    def sample(self, batch: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Indices, class-major: ``max(1, batch // G_c)`` images of each group of every class ``c``."""
        if batch not in self._keep:  # which slots of the (P, largest quota) draw are kept: fixed per batch size
            quota = (batch // self.groups_per_class).clamp_min(1)[self.cell_class]  # (P,)
            width = int(quota.max())
            keep = torch.arange(width, device=quota.device) < quota.unsqueeze(1)
            self._keep[batch] = (width, torch.nonzero(keep.flatten()).flatten())
        width, keep = self._keep[batch]
        device = self.index.device
        keys = torch.rand(self.index.shape, generator=generator, device=device).masked_fill(~self.valid, 2.0)
        distinct = min(width, self.index.shape[1])
        chosen = torch.gather(self.index, 1, keys.topk(distinct, dim=1, largest=False).indices)  # (P, distinct)
        uniform = torch.rand(self.index.shape[0], width, generator=generator, device=device)
        repeats = torch.gather(self.index, 1, (uniform * self.counts.unsqueeze(1)).long())  # with replacement
        if distinct < width:
            chosen = torch.cat([chosen, repeats[:, distinct:]], dim=1)
        slot = torch.arange(width, device=device)
        drawn = torch.where(slot < self.counts.unsqueeze(1), chosen, repeats)  # short cells: repeats past their size
        return drawn.flatten()[keep]


def initial_synthetic_indices(
    train: GroupedImages,
    *,
    ipc: int,
    init: str,
    generator: torch.Generator,
    device: torch.device,
    network: NetworkConfig | None = None,
) -> Tensor | None:
    """Indices into ``train`` (CPU, class-major, ``ipc`` per class) of the real images a set starts from.

    ``init='real'`` takes ``ipc`` distinct random real images of each class (as the
    reference code does); ``'stratified'`` and ``'barycenter'`` choose real images covering
    the groups (:mod:`fdd.distillation.initialisation`; ``barycenter`` embeds with a random
    ConvNet of ``network``). ``init='noise'`` starts from no real image: None, and nothing is
    drawn from ``generator``.
    """
    c = train.num_classes
    if init == "noise":
        return None
    if init in ("stratified", "barycenter"):
        embed = None
        if init == "barycenter":
            net = network or NetworkConfig()
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            embed = (
                build_network(
                    input_shape=train.image_shape,
                    num_classes=c,
                    network=net,
                    seed=seed,
                    device=device,
                )
                .eval()
                .embed
            )
        method = cast(CoveringInit, init)  # 'stratified' or 'barycenter' here
        return covering_indices(train, ipc=ipc, method=method, generator=generator, embed=embed, device=device)
    counts = torch.bincount(train.labels, minlength=c)
    for k in range(c):
        if int(counts[k]) < ipc:
            raise ValueError(ERR_TOO_FEW_FOR_INIT.format(ipc=ipc, name=train.class_names[k], count=int(counts[k])))
    sampler = ClassSampler(train.labels.to(device), num_classes=c)
    return sampler.sample(ipc, generator=generator).cpu()


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

    The real images of :func:`initial_synthetic_indices`, or for ``init='noise'`` standard
    normal pixels.
    """
    labels = torch.arange(train.num_classes, device=device).repeat_interleave(ipc)
    index = initial_synthetic_indices(train, ipc=ipc, init=init, generator=generator, device=device, network=network)
    if index is None:
        shape = (train.num_classes * ipc, *train.image_shape)
        return torch.randn(shape, generator=generator, device=device), labels
    return train.subset(index).normalized(device), labels


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

    A backbone (DM, DC, IDC, CAFE, MTT; :mod:`fdd.distillation.backbones`) is a subclass whose
    :meth:`step` runs one outer iteration of its loss and schedule and returns the loss;
    :func:`synthesize` drives any of them; benchmarks time :meth:`step` directly.

    Parameters
    ----------
    train : GroupedImages
        The real training split with its group ids.
    mode : str
        One of :data:`fdd.distillation.dm.MATCHING_MODES` (DM; the other backbones list theirs).
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
        start = initial_synthetic_indices(
            train, ipc=config.ipc, init=config.init, generator=self.generator, device=device, network=network
        )
        self.syn_labels = torch.arange(train.num_classes, device=device).repeat_interleave(config.ipc)
        if start is None:
            syn_images = torch.randn(
                (train.num_classes * config.ipc, *train.image_shape), generator=self.generator, device=device
            )
        else:
            syn_images = train.subset(start).normalized(device)
        #: the group of the real image each synthetic image starts from (None for init='noise')
        self.syn_groups = None if start is None else train.groups[start].clone()
        self.syn_images = syn_images.detach().clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.syn_images], lr=config.lr_img, momentum=config.momentum)
        self.dsa = DSAConfig() if config.dsa else None
        self.net = build_network(
            input_shape=train.image_shape, num_classes=train.num_classes, network=network, device=device
        )
        self.warmup_epochs = config.resolved_warmup_epochs() if mode in WARMUP_MODES and config.backbone == "dm" else 0
        self.iteration = 0
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.real_images = self.real_images.contiguous(memory_format=torch.channels_last)
        # no cast cache: the warm-up updates the weights inside one autocast region (a cached bf16 copy
        # would go stale after the first SGD step), and a CUDA-graph capture must not keep cached casts
        self.autocast = torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16", cache_enabled=False
        )
        # one specialised build per input shape (real batch, synthetic set), all made in the first,
        # eager iterations; a CUDA-graph capture must not trigger a rebuild (compile_static)
        self.embed = compile_static(self.net.embed) if config.compile else self.net.embed
        self.forward = compile_static(self.net) if config.compile else self.net
        self.augment = compile_static(apply_dsa) if config.compile else apply_dsa

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

    With ``synthesis.cuda_graph`` on a CUDA device (any precision and memory format: bf16
    autocast covers the network's activations, the losses, the statistics, the pixel update
    and the synthetic images stay fp32), a first-moment mode (vanilla, fairdd, cobra,
    uniform-subgroup; not cui-reweight, :data:`UNCAPTURED_MODES`) and a real batch of fixed shape (every class fills
    ``batch_real``; always for uniform-subgroup's group-balanced draw),
    the whole iteration after the random draws (warm-up, real batch, embedding, loss,
    pixel update) is one :class:`fdd.distillation.cuda_graph.CapturedStep`: the first iterations run
    eagerly, then the graph is replayed. The draws (network, warm-up plan, real batch,
    DSA) are made first, in the eager code's order, from the run's generator.
    Otherwise only the cobra warm-up is captured (:class:`fdd.distillation.cuda_graph.CapturedTraining`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        config, device = self.config, self.device
        #: the real-batch draw: per class (vanilla, fairdd, cobra, ...), or per (class, group) cell
        #: evenly over the groups (uniform-subgroup)
        self.batch_sampler: ClassSampler | GroupBalancedSampler = self.sampler
        if self.mode == "uniform-subgroup":
            check_group_labels(self.train, self.mode)
            self.batch_sampler = GroupBalancedSampler(
                self.real_labels,
                self.real_groups,
                num_classes=self.train.num_classes,
                num_groups=self.train.num_groups,
            )
        self.captured_step = self.captured_warmup = None
        if self._whole_step_capturable():
            self.captured_step = CapturedStep(self._warm_up_and_match, device=device, what="DM iteration")
        elif (
            config.cuda_graph
            and self.warmup_epochs
            and device.type == "cuda"
            and config.precision == "fp32"
            and not config.channels_last
        ):
            self.captured_warmup = CapturedTraining(
                self.net,
                image_shape=tuple(self.syn_images.shape),
                labels=self.syn_labels,
                epochs=self.warmup_epochs,
                batch_size=config.warmup_batch,
                lr=config.warmup_lr,
                momentum=config.warmup_momentum,
                weight_decay=config.warmup_weight_decay,
                dsa=self.dsa,
                forward=self.forward,
                augment=self.augment,
            )

    def _whole_step_capturable(self) -> bool:
        config = self.config
        return (
            config.cuda_graph
            and self.device.type == "cuda"
            and self.mode in MEAN_MODES + POOLED_MODES
            and self.mode not in UNCAPTURED_MODES
            and self.batch_sampler.fixed_size(config.batch_real)  # fixed real-batch shape
        )

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.captured_step is not None:  # the graph holds the old optimiser buffers: capture again
            self.captured_step = CapturedStep(self._warm_up_and_match, device=self.device, what="DM iteration")

    def step(self) -> Tensor:
        """One outer iteration; returns the matching loss (a 0-d tensor on the device)."""
        config, generator = self.config, self.generator
        reset_parameters_(self.net, generator=generator)
        plan = None
        if self.warmup_epochs and self.captured_warmup is None:
            n = self.syn_images.shape[0]
            plan = draw_training_plan(
                n,
                epochs=self.warmup_epochs,
                batch_size=config.warmup_batch,
                image_size=tuple(self.syn_images.shape[-2:]),
                dsa=self.dsa,
                generator=generator,
                device=self.device,
            )
        elif self.captured_warmup is not None:
            with record_function("fdd.warmup"):
                self.net.requires_grad_(True)
                self.captured_warmup.run(self.syn_images.detach(), generator=generator)
        index = self.batch_sampler.sample(config.batch_real, generator=generator)
        draw = None
        if self.dsa is not None:
            draw = draw_dsa(
                self.train.num_classes,
                image_size=self.train.image_shape[1:],
                config=self.dsa,
                generator=generator,
                device=self.device,
            )
        run = self.captured_step if self.captured_step is not None else self._warm_up_and_match
        loss = run(plan, index, draw)
        assert loss is not None  # _warm_up_and_match returns the loss, and so does its captured graph
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
                net,
                self.syn_images.detach().contiguous(memory_format=self.memory_format),
                self.syn_labels,
                epochs=self.warmup_epochs,
                lr=config.warmup_lr,
                momentum=config.warmup_momentum,
                weight_decay=config.warmup_weight_decay,
                batch_size=config.warmup_batch,
                dsa=self.dsa,
                generator=None,
                forward=self.forward,
                augment=self.augment,
                plan=plan,
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
            dsa = cast(DSAConfig, self.dsa)  # a draw exists only with DSA on
            real = self.augment(real, real_labels, draw, config=dsa)
            syn = self.augment(syn, self.syn_labels, draw, config=dsa)
        if self.config.channels_last:
            syn = syn.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            with torch.no_grad():
                real_features = self.embed(real).float()
            syn_features = self.embed(syn).float()
        loss = dm_loss(
            real_features,
            real_labels,
            self.real_groups[index],
            syn_features,
            self.syn_labels,
            num_classes=train.num_classes,
            num_groups=train.num_groups,
            mode=cast(MatchingMode, self.mode),
            solver=config.w2_solver,
            reg=config.w2_reg,
            reduction=config.w2_reduction,
            barycenter_lambda=config.barycenter_lambda,
            kde_bandwidth=config.cui_bandwidth,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
