"""IDC: gradient matching (DC) on a multi-formation decoding of the stored images.

Each stored ``H x W`` image holds ``f x f`` tiles of size ``H/f x W/f``; decoding cuts
the tiles out and upsamples each back to ``H x W`` (bilinear), so ``ipc`` stored images
per class train a model as ``ipc * f**2`` images (:func:`decode`). The storage budget
stays ``ipc`` full-size images per class; the saved :class:`~fdd.datasets.containers.SyntheticSet` is
the decoded set, which is what a model trains on (``provenance["idc_factor"]`` records
``f``).

Choices (documented differences from the IDC paper's code):

- matching is DC's (:mod:`fdd.distillation.backbones.dc`): layer-wise distance, DC's outer/inner
  schedule, and the same vanilla / fairdd / cobra targets, computed on the decoded
  synthetic set; the real batch stays at full resolution;
- the inner loop trains the network on the decoded synthetic set, as DC does (IDC
  trains it on real data and uses a pretrained pool of networks and mixup; not done);
- ``init='real'`` fills each stored image with ``f**2`` distinct real images of its
  class, each downsampled by ``f`` (average pooling) into one tile (:func:`encode`);
  ``init='noise'`` keeps the shared noise initialisation.

References
----------
Kim et al., "Dataset Condensation via Efficient Synthetic-Data Parameterization", ICML 2022.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fdd.distillation.backbones.cafe import ERR_ARCHITECTURE
from fdd.distillation.backbones.dc import DCSynthesizer
from fdd.distillation.synthesis import initial_synthetic_images

__all__ = ["IDCSynthesizer", "decode", "encode"]

ERR_FACTOR = "idc.factor={factor} must divide the image size {height}x{width}"


def decode(stored: Tensor, *, factor: int) -> Tensor:
    """(N, C, H, W) stored images -> (N * factor**2, C, H, W) decoded, tiles row-major per image."""
    n, ch, h, w = stored.shape
    if h % factor or w % factor:
        raise ValueError(ERR_FACTOR.format(factor=factor, height=h, width=w))
    if factor == 1:
        return stored
    tiles = stored.view(n, ch, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, ch, h // factor, w // factor)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def encode(images: Tensor, *, factor: int) -> Tensor:
    """(N * factor**2, C, H, W) images -> (N, C, H, W): each downsampled by ``factor`` into a tile."""
    m, ch, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(ERR_FACTOR.format(factor=factor, height=h, width=w))
    n = m // (factor * factor)
    small = F.avg_pool2d(images, factor) if factor > 1 else images
    tiles = small.reshape(n, factor, factor, ch, h // factor, w // factor).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(n, ch, h, w)


class IDCSynthesizer(DCSynthesizer):
    """The IDC backbone (module docstring)."""

    section = "idc"

    def __init__(self, *args, **kwargs) -> None:
        if kwargs["network"].architecture != "convnet":
            raise ValueError(ERR_ARCHITECTURE.format(backbone="idc", value=kwargs["network"].architecture))
        self.factor = f = kwargs["config"].idc.factor  # set first: the base class may decode (CUDA graph shapes)
        super().__init__(*args, **kwargs)
        height, width = self.train.image_shape[1:]
        if height % f or width % f:
            raise ValueError(ERR_FACTOR.format(factor=f, height=height, width=width))
        if self.config.init == "real":
            images, _ = initial_synthetic_images(
                self.train, ipc=self.config.ipc * f * f, init="real", generator=self.generator, device=self.device
            )
            with torch.no_grad():
                self.syn_images.copy_(encode(images, factor=f))

    def training_set(self) -> tuple[Tensor, Tensor]:
        f2 = self.factor * self.factor
        return decode(self.syn_images, factor=self.factor), self.syn_labels.repeat_interleave(f2)

    def synthetic_set(self, provenance: dict | None = None):
        return super().synthetic_set({"idc_factor": self.factor, **(provenance or {})})
