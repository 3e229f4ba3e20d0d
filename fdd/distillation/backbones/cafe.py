"""CAFE: layer-wise feature alignment in the vanilla, FairDD and COBRA modes.

The features of layer ``l`` are the output of conv block ``l`` of the ConvNet, averaged
over the spatial positions (``width`` values per image). Per class, the mean synthetic
feature of every layer is matched with the squared error (MSE with sum reduction) to a
target from the real batch, and the layers are summed:

.. math::

    \\text{vanilla:}\\ & \\sum_c \\sum_l \\mathrm{SE}(\\bar m^l_c, s^l_c) \\\\
    \\text{fairdd:}\\ & \\sum_c \\sum_{g \\in P_c} \\sum_l \\mathrm{SE}(m^l_{c,g}, s^l_c) \\\\
    \\text{cobra:}\\ & \\sum_c \\sum_l \\mathrm{SE}\\Bigl(\\frac{1}{|P_c|}\\sum_{g\\in P_c} m^l_{c,g},\\ s^l_c\\Bigr)

(``SE(a, b) = ||a - b||^2``; pooled mean ``\\bar m`` weighted by group sizes; per-layer features averaged uniformly over
the groups present for cobra). All classes and groups in one scatter
(:func:`fdd.transport.barycenter.cell_statistics`), as in :mod:`fdd.distillation.dm`. The schedule is DC's
(fresh network, ``outer_loop`` pixel steps, ``inner_loop`` network epochs on the
synthetic set between them).

The features are small (spatial means after instance norm), so the pixel gradients are
about a thousandth of DC's: ``fdd.distillation.backbones.RECOMMENDED`` pairs CAFE with ``lr_img`` 30
(our calibration: per-step pixel updates of the order of DC's at 0.1, measured at width
128), not DC's 0.1.

With the squared distance, FairDD and COBRA have the same minimiser and direction:
:math:`\\sum_{g \\in P_c} \\lVert m_{c,g} - s_c \\rVert^2 = |P_c| \\lVert b_c - s_c \\rVert^2 + \\text{const}`,
so FairDD's pixel gradient is :math:`|P_c|` times COBRA's, class by class. In CAFE the two
modes differ only by that per-class step size (COBRA-DM's L1 distance is what makes the
modes differ in DM).

CAFE's discrimination term (classifying real features by the synthetic class centroids)
is **not** included: only the layer-wise alignment loss is optimised.

References
----------
Wang et al., "CAFE: Learning to Condense Dataset by Aligning Features", CVPR 2022.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from fdd.distillation.backbones.dc import OuterInnerSynthesizer
from fdd.distillation.dm import mean_matching_loss

__all__ = ["CAFESynthesizer", "CAFE_MODES", "cafe_loss", "layer_features"]

ERR_MODE = "mode must be one of {allowed}; got {value!r}"
CAFE_MODES: tuple[str, ...] = ("vanilla", "fairdd", "cobra")
ERR_ARCHITECTURE = (
    "backbone {backbone!r} works on the ConvNet's conv blocks and image tiles; network.architecture must be "
    "'convnet', got {value!r}"
)


def layer_features(net: nn.Module, x: Tensor) -> Tensor:
    """Spatially averaged output of every conv block of a :class:`~fdd.models.networks.ConvNet`, (N, depth, width)."""
    outputs = []
    blocks = list(cast(nn.Sequential, net.features))
    for start in range(0, len(blocks), 4):  # conv, norm, relu, pool
        for layer in blocks[start : start + 4]:
            x = layer(x)
        outputs.append(x.mean(dim=(2, 3)))
    return torch.stack(outputs, dim=1)


def cafe_loss(
    real_features: Tensor,
    real_labels: Tensor,
    real_groups: Tensor,
    syn_features: Tensor,
    syn_labels: Tensor,
    *,
    num_classes: int,
    num_groups: int,
    mode: str,
) -> Tensor:
    """The CAFE alignment loss of ``mode`` (module docstring), summed over classes and layers.

    Parameters
    ----------
    real_features : Tensor, shape (N_real, L, D)
        Per-layer features of the real batch.
    real_labels, real_groups : Tensor, shape (N_real,)
    syn_features : Tensor, shape (N_syn, L, D)
    syn_labels : Tensor, shape (N_syn,)
    num_classes, num_groups : int
    mode : {"vanilla", "fairdd", "cobra"}
    """
    if mode not in CAFE_MODES:
        raise ValueError(ERR_MODE.format(allowed=CAFE_MODES, value=mode))
    return mean_matching_loss(
        real_features.flatten(1),
        real_labels,
        real_groups,
        syn_features.flatten(1),
        syn_labels,
        num_classes=num_classes,
        num_groups=num_groups,
        mode=mode,
        barycenter_distance="squared",
    )


class CAFESynthesizer(OuterInnerSynthesizer):
    """The CAFE backbone (module docstring)."""

    section = "cafe"

    def __init__(self, *args, **kwargs) -> None:
        if kwargs["network"].architecture != "convnet":
            raise ValueError(ERR_ARCHITECTURE.format(backbone="cafe", value=kwargs["network"].architecture))
        super().__init__(*args, **kwargs)

    def matching_loss(self) -> Tensor:
        real, real_labels, real_groups, valid = self.real_batch()
        syn, syn_labels = self.training_set()
        real, syn = self.siamese(real, real_labels, syn, syn_labels)
        real, real_labels, real_groups = real.flatten(0, 1), real_labels.flatten(), real_groups.flatten()
        if self.config.batch_real > self.sampler.smallest_class:  # ragged rows: drop the padding (syncs)
            keep = valid.flatten()
            real, real_labels, real_groups = real[keep], real_labels[keep], real_groups[keep]
        with torch.no_grad():
            real_features = layer_features(self.net, real)
        syn_features = layer_features(self.net, syn)
        return cafe_loss(
            real_features,
            real_labels,
            real_groups,
            syn_features,
            syn_labels,
            num_classes=self.train.num_classes,
            num_groups=self.train.num_groups,
            mode=self.mode,
        )
