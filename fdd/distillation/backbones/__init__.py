"""Distillation backbones behind one interface.

A backbone is a loss over a batch of real and synthetic data plus its schedule; the
loop, checkpoints, resume, initialisation and logging are shared
(:func:`fdd.distillation.run.synthesize`). Every backbone is a subclass of
:class:`fdd.distillation.synthesis.Synthesizer` implementing :meth:`~Backbone.step` (one outer
iteration; returns the loss) and, where it keeps more state than the synthetic pixels,
their optimiser and the generator, extends :meth:`~Backbone.state_dict`.

========  ==========================================  ==========================
backbone  loss                                        module
========  ==========================================  ==========================
dm        mean embeddings of a random ConvNet         :mod:`fdd.distillation.synthesis`, :mod:`fdd.distillation.dm`
dc        layer-wise gradient distance                :mod:`fdd.distillation.backbones.dc`
idc       DC on multi-formation decoded images        :mod:`fdd.distillation.backbones.idc`
cafe      layer-wise mean-feature MSE                 :mod:`fdd.distillation.backbones.cafe`
mtt       normalised parameter-trajectory distance    :mod:`fdd.distillation.backbones.mtt`
========  ==========================================  ==========================
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from fdd.config import NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation.backbones.cafe import CAFESynthesizer
from fdd.distillation.backbones.dc import DCSynthesizer
from fdd.distillation.backbones.idc import IDCSynthesizer
from fdd.distillation.backbones.mtt import MTTSynthesizer
from fdd.distillation.synthesis import DMSynthesizer, Synthesizer

__all__ = ["Backbone", "RECOMMENDED", "SYNTHESIZERS", "build_synthesizer"]

ERR_BACKBONE = "synthesis.backbone must be one of {allowed}; got {value!r}"

# The published schedule of each backbone (docs/method.md section 2; MTT: the MTT paper's
# learning rates, a short schedule of our own; CAFE: lr_img calibrated, see fdd.distillation.backbones.cafe):
# synthesis settings that differ from
# SynthesisConfig's DM defaults. flows/presets/<backbone>.yaml and benchmarks/backbones.py use them.
RECOMMENDED: dict[str, dict[str, object]] = {
    "dm": {"iterations": 2600, "batch_real": 600, "lr_img": 1.0, "momentum": 0.5},
    "dc": {"iterations": 1000, "batch_real": 256, "lr_img": 0.1, "momentum": 0.5},
    "idc": {"iterations": 1000, "batch_real": 256, "lr_img": 0.1, "momentum": 0.5},
    "cafe": {"iterations": 1000, "batch_real": 256, "lr_img": 30.0, "momentum": 0.5},
    "mtt": {"iterations": 1000, "batch_real": 256, "lr_img": 100.0, "momentum": 0.5},
}


class Backbone(Protocol):
    """What :func:`fdd.distillation.run.synthesize` needs from a backbone."""

    iteration: int
    device: torch.device
    syn_images: Tensor  # the learnable synthetic images (their shape is checked against a checkpoint's)

    def step(self) -> Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def synthetic_set(self, provenance: dict | None = None) -> SyntheticSet: ...


SYNTHESIZERS: dict[str, type[Synthesizer]] = {
    "dm": DMSynthesizer,
    "dc": DCSynthesizer,
    "idc": IDCSynthesizer,
    "cafe": CAFESynthesizer,
    "mtt": MTTSynthesizer,
}


def build_synthesizer(
    train: GroupedImages,
    *,
    mode: str,
    config: SynthesisConfig,
    network: NetworkConfig,
    seed: int,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> Backbone:
    """The synthesizer of ``config.backbone`` (arguments as :class:`fdd.distillation.synthesis.Synthesizer`).

    ``cache_dir`` is where MTT keeps its expert trajectories; other backbones ignore it.
    """
    if config.backbone not in SYNTHESIZERS:
        raise ValueError(ERR_BACKBONE.format(allowed=tuple(SYNTHESIZERS), value=config.backbone))
    cls = SYNTHESIZERS[config.backbone]
    kwargs = {"cache_dir": cache_dir} if cls is MTTSynthesizer else {}
    return cls(train, mode=mode, config=config, network=network, seed=seed, device=device, **kwargs)
