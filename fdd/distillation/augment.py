"""Differentiable siamese augmentation (DSA), batched over classes.

DSA (Zhao & Bilen, 2021) augments real and synthetic images with the *same* random
transformation so that matching their statistics still compares like with like. Each
call picks one family at random among ``color, crop, cutout, flip, scale, rotate``
(the ``"S"`` mode of the reference code) and draws its parameters.

The reference code calls DSA once per class, with the same seed for the class's real
and synthetic batch. Here one call augments a whole multi-class batch: parameters are
drawn per *slot* (:func:`draw_dsa`) and every image reads the parameters of its slot
(:func:`apply_dsa`). Passing the class labels as slots for both the real and the
synthetic batch reproduces the siamese behaviour with one parameter draw per class;
passing ``arange(N)`` gives independent per-image parameters (training-time DSA).
Every transform is differentiable in the pixels.

:func:`dc_augment` is the other augmentation of the reference's evaluation protocol: DC's
``augment`` (crop, scale, rotate, noise, one per image), which the reference evaluates DC and
CAFE sets with (``get_daparam``; docs/evaluation.md). It is not meant for matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fdd.config import DC_AUGMENT_FAMILIES, DEFAULT_DSA_STRATEGY, DSA_FAMILIES

__all__ = [
    "DC_FAMILIES",
    "DEFAULT_STRATEGY",
    "DCAugmentConfig",
    "DSAConfig",
    "DSADraw",
    "FAMILIES",
    "apply_dsa",
    "augment_per_image",
    "dc_augment",
    "draw_dsa",
]

FAMILIES: tuple[str, ...] = DSA_FAMILIES
DEFAULT_STRATEGY = DEFAULT_DSA_STRATEGY
DC_FAMILIES: tuple[str, ...] = DC_AUGMENT_FAMILIES
ERR_DC_STRATEGY = "DC augmentation strategy {strategy!r} names unknown families {unknown}; allowed families: {allowed}"

ERR_STRATEGY = "DSA strategy {strategy!r} names unknown families {unknown}; allowed families: {allowed}"
ERR_SLOTS = "slots must be a 1-D integer tensor of length N={n} with values in [0, {k}); got {detail}"


@dataclass(frozen=True)
class DSAConfig:
    """Magnitudes of the DSA transforms (the reference code's defaults)."""

    strategy: str = DEFAULT_STRATEGY
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    flip_prob: float = 0.5
    scale_ratio: float = 1.2
    rotate_degrees: float = 15.0

    def families(self) -> tuple[str, ...]:
        if self.strategy.lower() == "none" or not self.strategy:
            return ()
        names = tuple(self.strategy.split("_"))
        unknown = [n for n in names if n not in FAMILIES]
        if unknown:
            raise ValueError(ERR_STRATEGY.format(strategy=self.strategy, unknown=unknown, allowed=FAMILIES))
        return names


@dataclass(frozen=True)
class DSADraw:
    """One draw of DSA parameters for ``K`` slots (all tensors have leading dim K)."""

    family: Tensor  # (K,) index into FAMILIES
    brightness: Tensor  # (K,) additive shift
    saturation: Tensor  # (K,) factor around the per-pixel channel mean
    contrast: Tensor  # (K,) factor around the per-image mean
    theta: Tensor  # (K, 2, 3) affine for crop / scale / rotate
    cutout_low: Tensor  # (K, 2) first row / column of the cut square
    flip: Tensor  # (K,) bool

    @property
    def num_slots(self) -> int:
        return int(self.family.shape[0])


def _rand(k: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(k, generator=generator, device=device)


def draw_dsa(
    num_slots: int,
    *,
    image_size: tuple[int, ...],
    config: DSAConfig = DSAConfig(),
    shared_family: bool = False,
    family_block: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> DSADraw:
    """Draw DSA parameters for ``num_slots`` slots.

    Parameters
    ----------
    num_slots : int
        Number of independent parameter sets (classes for siamese matching, images for
        training-time augmentation).
    image_size : (H, W)
    config : DSAConfig
    shared_family : bool
        One family for all slots (the reference's training-time behaviour: one family
        per call, per-image parameters) instead of one family per slot.
    family_block : int, optional
        Consecutive blocks of this many slots share one family (several models
        trained together, each with its own training-time DSA call).
    generator : torch.Generator, optional
        Source of randomness; must live on ``device``.
    """
    device = torch.device(device)
    families = config.families()
    height, width = image_size
    k = num_slots
    if not families:
        allowed = torch.full((k,), -1, dtype=torch.long, device=device)
    else:
        codes = torch.tensor([FAMILIES.index(f) for f in families], device=device)
        block = k if shared_family else (family_block or 1)
        picks = torch.randint(len(families), (-(-k // block),), generator=generator, device=device)
        allowed = codes[picks].repeat_interleave(block)[:k].contiguous()
    brightness = (_rand(k, generator, device) - 0.5) * config.brightness
    saturation = _rand(k, generator, device) * config.saturation
    contrast = _rand(k, generator, device) + config.contrast
    # crop: integer translation of up to ratio * size pixels, zero fill
    shift_h, shift_w = int(height * config.crop_ratio + 0.5), int(width * config.crop_ratio + 0.5)
    trans_h = torch.randint(-shift_h, shift_h + 1, (k,), generator=generator, device=device)
    trans_w = torch.randint(-shift_w, shift_w + 1, (k,), generator=generator, device=device)
    # scale: independent factors in [1/ratio, ratio]
    r = config.scale_ratio
    sx = _rand(k, generator, device) * (r - 1.0 / r) + 1.0 / r
    sy = _rand(k, generator, device) * (r - 1.0 / r) + 1.0 / r
    # rotate: angle uniform in [-deg, deg]
    angle = (_rand(k, generator, device) - 0.5) * 2 * config.rotate_degrees / 180 * math.pi
    # cutout: square of side ratio * size with a random centre
    cut_h, cut_w = int(height * config.cutout_ratio + 0.5), int(width * config.cutout_ratio + 0.5)
    off_h = torch.randint(0, height + (1 - cut_h % 2), (k,), generator=generator, device=device)
    off_w = torch.randint(0, width + (1 - cut_w % 2), (k,), generator=generator, device=device)
    cutout_low = torch.stack([off_h - cut_h // 2, off_w - cut_w // 2], dim=1)
    flip = _rand(k, generator, device) < config.flip_prob

    theta = torch.zeros(k, 2, 3, device=device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    is_crop = allowed == FAMILIES.index("crop")
    is_scale = allowed == FAMILIES.index("scale")
    is_rotate = allowed == FAMILIES.index("rotate")
    # align_corners=True: one pixel is 2 / (size - 1) in normalised coordinates
    tw = trans_w.float() * 2 / max(width - 1, 1)
    th = trans_h.float() * 2 / max(height - 1, 1)
    theta[:, 0, 2] = torch.where(is_crop, tw, theta[:, 0, 2])
    theta[:, 1, 2] = torch.where(is_crop, th, theta[:, 1, 2])
    theta[:, 0, 0] = torch.where(is_scale, sx, theta[:, 0, 0])
    theta[:, 1, 1] = torch.where(is_scale, sy, theta[:, 1, 1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0] = torch.where(is_rotate, cos, theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(is_rotate, -sin, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(is_rotate, sin, theta[:, 1, 0])
    theta[:, 1, 1] = torch.where(is_rotate, cos, theta[:, 1, 1])
    return DSADraw(
        family=allowed,
        brightness=brightness,
        saturation=saturation,
        contrast=contrast,
        theta=theta,
        cutout_low=cutout_low,
        flip=flip,
    )


def apply_dsa(x: Tensor, slots: Tensor, draw: DSADraw, *, config: DSAConfig = DSAConfig()) -> Tensor:
    """Augment ``x`` (N, C, H, W); image ``i`` uses the parameters of slot ``slots[i]``.

    Images whose slot drew family ``f`` get exactly transform ``f`` and are otherwise
    returned unchanged (bit for bit), so one call serves a batch mixing families.
    """
    n = x.shape[0]
    if slots.dim() != 1 or slots.shape[0] != n or slots.dtype.is_floating_point:
        raise ValueError(
            ERR_SLOTS.format(n=n, k=draw.num_slots, detail=f"shape {tuple(slots.shape)}, dtype {slots.dtype}")
        )
    if slots.numel() and slots.device.type == "cpu":  # on an accelerator this check would sync
        low, high = int(slots.min()), int(slots.max())
        if low < 0 or high >= draw.num_slots:
            raise ValueError(ERR_SLOTS.format(n=n, k=draw.num_slots, detail=f"values in [{low}, {high}]"))
    if not config.families():
        return x
    family = draw.family[slots]
    view = (n, 1, 1, 1)

    is_color = (family == FAMILIES.index("color")).view(view)
    b = draw.brightness[slots].to(x.dtype).view(view)
    s = draw.saturation[slots].to(x.dtype).view(view)
    c = draw.contrast[slots].to(x.dtype).view(view)
    y = x + b
    channel_mean = y.mean(dim=1, keepdim=True)
    y = (y - channel_mean) * s + channel_mean
    image_mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - image_mean) * c + image_mean
    x = torch.where(is_color, y, x)

    is_affine = (
        (family == FAMILIES.index("crop")) | (family == FAMILIES.index("scale")) | (family == FAMILIES.index("rotate"))
    ).view(view)
    theta = draw.theta[slots].to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    warped = F.grid_sample(x, grid, align_corners=True, padding_mode="zeros")
    x = torch.where(is_affine, warped, x)

    height, width = x.shape[-2:]
    cut_h, cut_w = int(height * config.cutout_ratio + 0.5), int(width * config.cutout_ratio + 0.5)
    cut_low = draw.cutout_low[slots]
    rows = torch.arange(height, device=x.device).view(1, -1)
    cols = torch.arange(width, device=x.device).view(1, -1)
    in_rows = (rows >= cut_low[:, :1]) & (rows < cut_low[:, :1] + cut_h)  # (N, H)
    in_cols = (cols >= cut_low[:, 1:]) & (cols < cut_low[:, 1:] + cut_w)  # (N, W)
    hole = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)  # (N, 1, H, W)
    is_cutout = (family == FAMILIES.index("cutout")).view(view)
    x = torch.where(is_cutout & hole, torch.zeros((), dtype=x.dtype, device=x.device), x)

    is_flip = ((family == FAMILIES.index("flip")) & draw.flip[slots]).view(view)
    return torch.where(is_flip, x.flip(3), x)


def augment_per_image(
    x: Tensor,
    *,
    config: DSAConfig = DSAConfig(),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training-time DSA: one family for the batch, independent parameters per image."""
    draw = draw_dsa(
        x.shape[0],
        image_size=tuple(x.shape[-2:]),
        config=config,
        shared_family=True,
        generator=generator,
        device=x.device,
    )
    return apply_dsa(x, torch.arange(x.shape[0], device=x.device), draw, config=config)


@dataclass(frozen=True)
class DCAugmentConfig:
    """DC's evaluation augmentation: the families of ``strategy`` and their magnitudes.

    The magnitudes are those of the reference's ``get_daparam`` (crop 4 pixels, scale 0.2,
    rotate 45 degrees, noise 0.001); ``strategy`` joins families of :data:`DC_FAMILIES`
    with ``_`` (``'none'``: no augmentation).
    """

    strategy: str = "none"
    crop: int = 4
    scale: float = 0.2
    rotate: int = 45
    noise: float = 0.001

    def families(self) -> tuple[str, ...]:
        if self.strategy.lower() == "none" or not self.strategy:
            return ()
        names = tuple(self.strategy.split("_"))
        unknown = [n for n in names if n not in DC_FAMILIES]
        if unknown:
            raise ValueError(ERR_DC_STRATEGY.format(strategy=self.strategy, unknown=unknown, allowed=DC_FAMILIES))
        return names


def dc_augment(x: Tensor, *, config: DCAugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """DC's evaluation augmentation of a batch ``x`` (N, C, H, W): one family per image, batched.

    Each image gets one family of ``config.strategy``, drawn uniformly:

    - ``crop``: the image padded by ``crop`` pixels with the batch's per-channel mean, then an
      H x W window at offsets drawn from ``[0, 2 crop)`` (a shift of ``-crop .. crop - 1``);
    - ``scale``: resized (nearest) to ``floor(u_h H) x floor(u_w H)``, ``u ~ U(1 - scale, 1 + scale)``,
      centred on a zero canvas and centre-cropped back to H x W;
    - ``rotate``: rotated about its centre by an integer angle in ``[-rotate, rotate)`` degrees,
      filled with the mean of the channel means (bilinear; the reference's ``scipy.ndimage.rotate``
      interpolates with cubic splines);
    - ``noise``: plus ``noise`` times standard Gaussian noise.

    Random draws come from ``generator`` (on ``x``'s device). Not differentiable in the
    draws, and meant for training evaluation networks, as the reference uses it.
    """
    families = config.families()
    if not families or x.shape[0] == 0:
        return x
    n, c, h, w = x.shape
    device, dtype = x.device, x.dtype
    choice = torch.randint(len(families), (n,), generator=generator, device=device)
    mean = x.detach().mean(dim=(0, 2, 3))  # (C,) the batch's channel means, as the reference's `mean`
    batch = torch.arange(n, device=device)
    out = x
    for k, family in enumerate(families):
        if family == "crop":
            p = config.crop
            padded = mean.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p : p + h, p : p + w] = x
            r = torch.randint(2 * p, (n,), generator=generator, device=device)
            q = torch.randint(2 * p, (n,), generator=generator, device=device)
            rows = (r.unsqueeze(1) + torch.arange(h, device=device)).unsqueeze(2)  # (N, H, 1)
            cols = (q.unsqueeze(1) + torch.arange(w, device=device)).unsqueeze(1)  # (N, 1, W)
            done = padded.permute(0, 2, 3, 1)[batch.view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)
        elif family == "scale":
            low, high = 1 - config.scale, 1 + config.scale
            hs = (torch.rand(n, generator=generator, device=device) * (high - low) + low).mul(h).floor().long()
            ws = (torch.rand(n, generator=generator, device=device) * (high - low) + low).mul(h).floor().long()
            side = torch.maximum(torch.maximum(hs, ws), torch.full_like(hs, max(h, w)))
            yi = torch.arange(h, device=device) + ((side - h) // 2 - (side - hs) // 2).unsqueeze(1)  # (N, H)
            xj = torch.arange(w, device=device) + ((side - w) // 2 - (side - ws) // 2).unsqueeze(1)  # (N, W)
            src_y = (yi * h).div(hs.unsqueeze(1), rounding_mode="floor").clamp(0, h - 1)
            src_x = (xj * w).div(ws.unsqueeze(1), rounding_mode="floor").clamp(0, w - 1)
            inside = ((yi >= 0) & (yi < hs.unsqueeze(1))).unsqueeze(2) & ((xj >= 0) & (xj < ws.unsqueeze(1))).unsqueeze(
                1
            )
            gathered = x.permute(0, 2, 3, 1)[batch.view(n, 1, 1), src_y.unsqueeze(2), src_x.unsqueeze(1)]
            done = torch.where(inside.unsqueeze(3), gathered, torch.zeros((), dtype=dtype, device=device))
            done = done.permute(0, 3, 1, 2)
        elif family == "rotate":
            degrees = torch.randint(-config.rotate, config.rotate, (n,), generator=generator, device=device)
            angle = degrees.to(dtype) * (math.pi / 180)
            cos, sin = torch.cos(angle), torch.sin(angle)
            zero = torch.zeros_like(cos)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
            fill = mean.mean()
            done = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
        else:  # noise
            done = x + config.noise * torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        out = torch.where((choice == k).view(n, 1, 1, 1), done, out)
    return out
