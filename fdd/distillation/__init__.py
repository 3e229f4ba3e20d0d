"""Dataset distillation: the synthetic-set optimisation and its backbones.

Bottom to top (each module imports only those above it in this list):

- :mod:`~fdd.distillation.augment`: differentiable siamese augmentation (DSA).
- :mod:`~fdd.distillation.training`: training a network on a set, every random draw up front.
- :mod:`~fdd.distillation.cuda_graph`: captured CUDA graphs of training and synthesis steps.
- :mod:`~fdd.distillation.dm`: the distribution-matching losses per mode (vanilla, fairdd, cobra, ...).
- :mod:`~fdd.distillation.initialisation`: group-covering initial synthetic images.
- :mod:`~fdd.distillation.synthesis`: :class:`Synthesizer`, what every backbone shares, and DM.
- :mod:`~fdd.distillation.baselines`: the real-image baselines' sets (random, stratified, whole split).
- :mod:`~fdd.distillation.backbones`: DC, IDC, CAFE, MTT and the registry :func:`build_synthesizer`.
- :mod:`~fdd.distillation.run`: :func:`synthesize`, running a backbone with checkpoints and resume.
"""

from fdd.distillation.augment import DSAConfig
from fdd.distillation.backbones import RECOMMENDED, SYNTHESIZERS, Backbone, build_synthesizer
from fdd.distillation.dm import MATCHING_MODES, dm_loss
from fdd.distillation.run import SynthesisInterrupted, synthesize
from fdd.distillation.synthesis import DMSynthesizer, SynthesisResult, Synthesizer
from fdd.distillation.training import train_network

__all__ = [
    "MATCHING_MODES",
    "RECOMMENDED",
    "SYNTHESIZERS",
    "Backbone",
    "DMSynthesizer",
    "DSAConfig",
    "SynthesisInterrupted",
    "SynthesisResult",
    "Synthesizer",
    "build_synthesizer",
    "dm_loss",
    "synthesize",
    "train_network",
]
