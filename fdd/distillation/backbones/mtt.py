"""MTT: matching training trajectories, in the vanilla, FairDD and COBRA modes.

Expert networks are trained on the real data for ``train_epochs`` epochs and their
parameters saved after every epoch (the *trajectories*, a cached tensor file). Each
outer iteration picks an expert ``e`` and a start epoch ``s < max_start_epoch``,
initialises a student at the expert's parameters :math:`\\theta^*_s`, trains it for
``N = syn_steps`` SGD steps on the synthetic set with a learnable learning rate
:math:`\\alpha`, and minimises the normalised distance to the expert ``M =
expert_epochs`` epochs later:

.. math::

    \\mathcal{L} = \\frac{\\lVert \\hat\\theta_{s+N} - \\theta^*_{s+M} \\rVert^2}
        {\\lVert \\theta^*_s - \\theta^*_{s+M} \\rVert^2},
    \\qquad \\hat\\theta_{k+1} = \\hat\\theta_k - \\alpha \\nabla_\\theta \\ell(f_{\\hat\\theta_k}(A(S_k)))

differentiating through the unrolled steps (:func:`torch.func.functional_call` on a
flat parameter vector) into the synthetic pixels and :math:`\\alpha` (both SGD with
momentum 0.5; pixels at ``synthesis.lr_img``, :math:`\\alpha` at ``mtt.lr_lr``).

The modes change **the experts** (the targets), since the trajectory loss has no
per-group term of its own:

- vanilla: experts minimise the plain mean cross-entropy over the real data (group
  sizes weigh the majority group in);
- cobra: experts minimise the group-balanced risk, each image's loss weighted by
  :math:`w_i = n_c / (G_c\\, n_{c,g})` (:func:`fdd.distillation.backbones.weights.group_balanced_weights`):
  inside every class each present group carries the same total weight, so the
  trajectories move toward the uniform barycenter of the group risks, independent of
  group sizes;
- fairdd: experts see group-balanced *batches*: images are drawn with probability
  proportional to the same :math:`w_i` (with replacement), so every group of a class is
  equally represented in expectation. It optimises the same balanced risk as cobra with
  a different estimator (resampling instead of re-weighting); a per-group expert for
  every group (FairDD's synchronised matching taken literally) would multiply the
  expert cost by the number of groups and is not done.

References
----------
Cazenavette et al., "Dataset Distillation by Matching Training Trajectories", CVPR 2022.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fdd.config import MTTConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages, atomic_save
from fdd.distillation.augment import DSAConfig, apply_dsa, draw_dsa
from fdd.distillation.backbones.dc import ERR_BATCHNORM
from fdd.distillation.backbones.weights import group_balanced_weights
from fdd.distillation.synthesis import Synthesizer
from fdd.models.networks import build_network, reset_parameters_

__all__ = [
    "EXPERT_OBJECTIVES",
    "EXPERT_SEED_OFFSET",
    "ExpertObjective",
    "MTTSynthesizer",
    "OBJECTIVE_OF_MODE",
    "expert_cache_key",
    "flat_parameters",
    "train_experts",
    "unflatten",
]

ExpertObjective = Literal["plain", "balanced_weights", "balanced_sampling"]
EXPERT_OBJECTIVES: tuple[str, ...] = ("plain", "balanced_weights", "balanced_sampling")
OBJECTIVE_OF_MODE: dict[str, ExpertObjective] = {
    "vanilla": "plain",
    "cobra": "balanced_weights",
    "fairdd": "balanced_sampling",
}
ERR_OBJECTIVE = "objective must be one of {allowed}; got {value!r}"
ERR_TRAJECTORIES = (
    "expert trajectories must have shape (experts, epochs + 1 >= {need}, parameters={params}); got {shape}"
)
EXPERT_SEED_OFFSET = 7919  # experts draw from their own generator: a cache hit leaves the run unchanged


def flat_parameters(net: nn.Module) -> Tensor:
    """All parameters of ``net`` as one detached flat vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def unflatten(net: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """The inverse of :func:`flat_parameters`: a name -> tensor dict viewing ``flat``."""
    out, start = {}, 0
    for name, p in net.named_parameters():
        out[name] = flat[start : start + p.numel()].view(p.shape)
        start += p.numel()
    return out


def train_experts(
    train: GroupedImages,
    *,
    objective: ExpertObjective,
    settings: MTTConfig,
    network: NetworkConfig,
    dsa: DSAConfig | None,
    seed: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Train ``settings.num_experts`` ConvNets on ``train``; return their trajectories.

    Each expert: a fresh network of ``network`` (:func:`fdd.models.networks.build_network`), SGD (``lr_teacher``, no momentum, no weight decay),
    batches of ``expert_batch`` with training-time DSA, ``train_epochs`` epochs; the
    parameters are recorded at the start and after every epoch. ``objective`` is one of
    ``plain`` (mean cross-entropy), ``balanced_weights`` (each image's loss weighted by
    :func:`~fdd.distillation.backbones.weights.group_balanced_weights`) and ``balanced_sampling``
    (epochs of ``N`` images drawn with probability proportional to those weights).

    Returns
    -------
    Tensor, shape (num_experts, train_epochs + 1, P), float32 on ``device``
    """
    if objective not in EXPERT_OBJECTIVES:
        raise ValueError(ERR_OBJECTIVE.format(allowed=EXPERT_OBJECTIVES, value=objective))
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed + EXPERT_SEED_OFFSET)
    images = train.normalized(device)
    labels = train.labels.to(device)
    weights = group_balanced_weights(
        train.labels, train.groups, num_classes=train.num_classes, num_groups=train.num_groups
    ).to(device)
    n = images.shape[0]
    net = build_network(input_shape=train.image_shape, num_classes=train.num_classes, network=network, device=device)
    trajectories = []
    for _ in range(settings.num_experts):  # a handful of experts, each a full training run
        reset_parameters_(net, generator=generator)
        optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr_teacher)
        snapshots = [flat_parameters(net)]
        for _epoch in range(settings.train_epochs):
            if objective == "balanced_sampling":
                order = torch.multinomial(weights, n, replacement=True, generator=generator)
            else:
                order = torch.randperm(n, generator=generator, device=device)
            for start in range(0, n, settings.expert_batch):
                idx = order[start : start + settings.expert_batch]
                x, y = images[idx], labels[idx]
                if dsa is not None:
                    draw = draw_dsa(
                        x.shape[0],
                        image_size=tuple(x.shape[-2:]),
                        config=dsa,
                        shared_family=True,
                        generator=generator,
                        device=device,
                    )
                    x = apply_dsa(x, torch.arange(x.shape[0], device=device), draw, config=dsa)
                losses = F.cross_entropy(net(x), y, reduction="none")
                loss = (losses * weights[idx]).mean() if objective == "balanced_weights" else losses.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            snapshots.append(flat_parameters(net))
        trajectories.append(torch.stack(snapshots))
    return torch.stack(trajectories)


def expert_cache_key(
    train: GroupedImages, *, objective: str, settings: MTTConfig, network: NetworkConfig, dsa: bool, seed: int
) -> str:
    """What the trajectories depend on: data, objective, expert settings, network, DSA and seed."""
    expert_fields = ("num_experts", "train_epochs", "lr_teacher", "expert_batch")
    payload = {
        "train": train.digest(),
        "objective": objective,
        "network": network.model_dump(mode="json"),
        "experts": {k: getattr(settings, k) for k in expert_fields},
        "dsa": dsa,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class MTTSynthesizer(Synthesizer):
    """The MTT backbone (module docstring).

    Extra parameter ``cache_dir``: where the expert trajectories are kept
    (``experts-<objective>-<key>.pt``, written atomically, reused when the key matches);
    ``None`` trains them in memory.
    """

    def __init__(self, *args, cache_dir: str | Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        network = kwargs["network"]
        if network.norm == "batchnorm":
            raise ValueError(ERR_BATCHNORM.format(backbone="mtt"))
        self.settings = settings = self.config.mtt
        self.net.requires_grad_(False)
        self.objective = OBJECTIVE_OF_MODE[self.mode]
        self.trajectories = self._experts(network, cache_dir)
        params = flat_parameters(self.net).numel()
        need = settings.max_start_epoch + settings.expert_epochs + 1
        shape = tuple(self.trajectories.shape)
        if len(shape) != 3 or shape[1] < need or shape[2] != params:
            raise ValueError(ERR_TRAJECTORIES.format(need=need, params=params, shape=shape))
        self.syn_lr = torch.tensor(settings.syn_lr_init, device=self.device, requires_grad=True)
        self.lr_optimizer = torch.optim.SGD([self.syn_lr], lr=settings.lr_lr, momentum=0.5)

    def _experts(self, network: NetworkConfig, cache_dir: str | Path | None) -> Tensor:
        key = expert_cache_key(
            self.train,
            objective=self.objective,
            settings=self.settings,
            network=network,
            dsa=self.dsa is not None,
            seed=self.seed,
        )
        path = Path(cache_dir) / f"experts-{self.objective}-{key[:16]}.pt" if cache_dir is not None else None
        if path is not None and path.exists():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("key") == key:
                    return saved["trajectories"].to(self.device)
            except Exception:  # noqa: BLE001  (a damaged cache file is retrained and replaced)
                pass
        trajectories = train_experts(
            self.train,
            objective=self.objective,
            settings=self.settings,
            network=network,
            dsa=self.dsa,
            seed=self.seed,
            device=self.device,
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"key": key, "trajectories": trajectories.cpu()}, path)
        return trajectories

    def step(self) -> Tensor:
        s, g = self.settings, self.generator
        # drawn and used on the device: no host read per iteration
        expert = torch.randint(self.trajectories.shape[0], (1,), generator=g, device=self.device)
        start_epoch = torch.randint(s.max_start_epoch, (1,), generator=g, device=self.device)
        start = self.trajectories[expert, start_epoch].squeeze(0)
        target = self.trajectories[expert, start_epoch + s.expert_epochs].squeeze(0)
        images, labels = self.training_set()
        n = images.shape[0]
        batch = min(s.batch_syn or n, n)
        theta = start.clone().requires_grad_(True)
        student = theta
        slots = torch.arange(batch, device=self.device)
        for _ in range(s.syn_steps):
            idx = torch.randperm(n, generator=g, device=self.device)[:batch]
            x = images[idx]
            if self.dsa is not None:
                draw = draw_dsa(
                    batch,
                    image_size=tuple(x.shape[-2:]),
                    config=self.dsa,
                    shared_family=True,
                    generator=g,
                    device=self.device,
                )
                x = self.augment(x, slots, draw, config=self.dsa)
            ce = F.cross_entropy(functional_call(self.net, unflatten(self.net, student), (x,)), labels[idx])
            grad = torch.autograd.grad(ce, student, create_graph=True)[0]
            student = student - self.syn_lr * grad
        loss = (student - target).pow(2).sum() / (start - target).pow(2).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.lr_optimizer.step()
        self.iteration += 1
        return loss.detach()

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "syn_lr": self.syn_lr.detach().cpu().clone(),
            "lr_optimizer": self.lr_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"].to(self.device))
        self.lr_optimizer.load_state_dict(state["lr_optimizer"])

    def synthetic_set(self, provenance: dict | None = None):
        extra = {"mtt_syn_lr": float(self.syn_lr.detach()), "mtt_expert_objective": self.objective}
        return super().synthetic_set({**extra, **(provenance or {})})
