"""Colour-biased MNIST / Fashion-MNIST (C-MNIST, C-FMNIST), as in the FairDD / COBRA benchmark.

Each 28x28 grayscale image is zero-padded to 32x32 (4 pixels at the top and left, none at the
bottom and right, so the digit occupies rows and columns 4..31), binarised (pixel >= 128 is
the digit; ``shading="binary"``, as docs/method.md states it) or kept as a grey level
(``shading="intensity"``), and painted with one of the 10 :data:`COLORS`. The colour index is the protected
group. In the ``"foreground"`` variant the digit gets the colour on a black background; in the
``"background"`` variant the digit is black on a coloured background (including the padding).

Colour assignment within class :math:`k` of size :math:`n_k`, for correlation :math:`\\rho`
and :math:`m` confusing colours: the class is shuffled (seeded); the first

.. math:: a_k = \\lfloor \\rho\\, n_k \\rfloor

images get colour :math:`k` (truncation, as ``int(n * corr)`` in the reference code); the
remaining :math:`r_k = n_k - a_k` are cut in consecutive chunks of
:math:`c_k = \\lceil r_k / m \\rceil` images, chunk :math:`j` getting colour
:math:`(k + 1 + j) \\bmod 10`, :math:`j = 0..m-1` (the last chunk may be shorter, later ones
empty). The train split uses :math:`\\rho = 0.9`, the test split :math:`\\rho = 0.1`, which
with :math:`m = 9` spreads each class (almost) uniformly over the 10 colours.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from fdd.datasets.containers import GroupedImages
from fdd.datasets.sources import RawSplits

__all__ = [
    "BIAS_CHOICES",
    "BINARIZE_THRESHOLD",
    "Bias",
    "COLORED_MEAN",
    "COLORED_STD",
    "COLORS",
    "COLOR_NAMES",
    "ColoredSplits",
    "INPUT_SIDE",
    "NUM_COLORS",
    "OUTPUT_SIDE",
    "PAD_OFFSET",
    "SHADINGS",
    "assign_colors",
    "build_colored",
    "colorize",
    "paint",
]

Bias = Literal["foreground", "background"]
BIAS_CHOICES: tuple[str, ...] = get_args(Bias)

#: The 10 colours, in group-id order.
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 128, 0),
    (255, 255, 0),
    (255, 255, 128),
    (0, 255, 0),
    (0, 255, 255),
    (0, 0, 255),
    (128, 0, 255),
    (255, 0, 255),
    (255, 255, 255),
)
COLOR_NAMES: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "light_yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "magenta",
    "white",
)
NUM_COLORS = len(COLORS)
INPUT_SIDE = 28
OUTPUT_SIDE = 32
#: Zero padding (top, left); the bottom and right get none.
PAD_OFFSET = OUTPUT_SIDE - INPUT_SIDE
#: A pixel belongs to the digit when its value is >= this (identical to ``> 127``, and to
#: ``x / 255 > 0.5`` after ``ToTensor``).
BINARIZE_THRESHOLD = 128
COLORED_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
COLORED_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

ERR_BIAS = "bias must be one of {allowed}; got {value!r}"
SHADINGS = ("binary", "intensity", "reference")
ERR_SHADING = "shading must be one of {allowed}; got {value!r}"
ERR_CORRELATION = "{name} must be a real number in [0, 1]; got {value!r}"
ERR_NUM_CONFUSING = (
    "num_confusing_colors must be an integer in 1..{high} (how many of the other colours "
    "share the decorrelated images); got {value!r}"
)
ERR_IMAGES = "images must be a uint8 tensor of shape (N, 28, 28) with N >= 1; got dtype {dtype}, shape {shape}"
ERR_LABELS = (
    "labels must be an integer tensor of shape (N,) = ({n},) with values in [0, {colors}) "
    "(class k's bias colour is COLORS[k]); got dtype {dtype}, shape {shape}, values in [{low}, {high}]"
)
ERR_CLASS_NAMES = "class_names must name every label 0..{high}; got {count} names"
ERR_RANDOMNESS = "pass exactly one of seed and generator; got seed={seed!r}, generator={generator!r}"
ERR_SEED = "seed must be a non-negative integer; got {value!r}"


@dataclass(frozen=True)
class ColoredSplits:
    """Train and test splits of a colour-biased dataset.

    Parameters
    ----------
    train, test : GroupedImages
        3x32x32 uint8 images, groups = colour index (:data:`COLOR_NAMES`).
    params : dict
        The construction parameters (bias, correlations, num_confusing_colors, seed).
    """

    train: GroupedImages
    test: GroupedImages
    params: dict[str, object]


def _check_bias(bias: str) -> None:
    if bias not in BIAS_CHOICES:
        raise ValueError(ERR_BIAS.format(allowed=BIAS_CHOICES, value=bias))


def _check_shading(shading: str) -> None:
    if shading not in SHADINGS:
        raise ValueError(ERR_SHADING.format(allowed=SHADINGS, value=shading))


def _check_correlation(name: str, value: object) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0
    if not ok:
        raise ValueError(ERR_CORRELATION.format(name=name, value=value))
    return float(value)  # type: ignore[arg-type]


def _check_num_confusing(value: object) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= int(value) <= NUM_COLORS - 1
    if not ok:
        raise ValueError(ERR_NUM_CONFUSING.format(high=NUM_COLORS - 1, value=value))
    return int(value)  # type: ignore[call-overload]  # an Integral, checked above


def _check_seed(value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < 0:
        raise ValueError(ERR_SEED.format(value=value))
    return int(value)


def assign_colors(
    labels: Tensor,
    *,
    correlation: float,
    num_confusing_colors: int = NUM_COLORS - 1,
    generator: torch.Generator,
) -> Tensor:
    """Colour (group) index of every image, per the rule in the module docstring.

    Parameters
    ----------
    labels : Tensor, shape (N,)
        Class ids in ``[0, 10)``.
    correlation : float in [0, 1]
        Share :math:`\\rho` of each class that gets its own colour (truncated:
        :math:`\\lfloor \\rho n_k \\rfloor`).
    num_confusing_colors : int in 1..9
        How many of the following colours (:math:`k+1, k+2, \\dots \\bmod 10`) share the rest.
    generator : torch.Generator
        Source of the per-class shuffle (a CPU generator).

    Returns
    -------
    Tensor, shape (N,), int64, on the CPU
    """
    correlation = _check_correlation("correlation", correlation)
    m = _check_num_confusing(num_confusing_colors)
    labels = labels.detach().to("cpu", torch.int64)
    n = labels.numel()
    # One random permutation, then a stable sort by class: each class's indices in random order.
    perm = torch.randperm(n, generator=generator, device="cpu")
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    counts = torch.bincount(labels, minlength=NUM_COLORS)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[sorted_labels]
    # float64 product then floor == Python's int(n * corr) for the reference's rounding.
    n_major = torch.floor(counts.to(torch.float64) * correlation).to(torch.int64)
    chunk = torch.clamp((counts - n_major + m - 1) // m, min=1)
    major = n_major[sorted_labels]
    offset = torch.div(rank - major, chunk[sorted_labels], rounding_mode="floor")
    color_sorted = torch.where(rank < major, sorted_labels, (sorted_labels + 1 + offset) % NUM_COLORS)
    groups = torch.empty_like(labels)
    groups[order] = color_sorted
    return groups


@functools.lru_cache(maxsize=1)
def reference_background_table() -> Tensor:
    """The public C-FMNIST builder's background pixel for each (grey level, colour channel value).

    The builder of the COBRA and FairDD code computes, per channel value :math:`c` and grey
    level :math:`x`, in float32 and in this order,

    .. math:: d = (255 - x) / 255, \\qquad v = \\big(255 + d\\,(c / 255 - 255)\\big) \\cdot 255

    and casts :math:`v` to uint8. The start colour is 255 where 1 was meant, so
    :math:`v = 255x + (255 - x)c/255` exceeds 255 for every :math:`x \\ge 1` and the cast
    keeps its low byte: the result is :math:`\\lfloor v \\rfloor \\bmod 256`. Background pixels
    (:math:`x = 0`) get the colour as intended; the garment becomes an inverted, almost
    colour-neutral texture. The published C-FMNIST background numbers were measured on
    these pixels, so ``shading="reference"`` reproduces them exactly, float32 rounding
    included (the ops run eagerly on the CPU, never fused).

    Returns
    -------
    Tensor, shape (256, 256), uint8
        ``table[x, c]``.
    """
    x = torch.arange(256, dtype=torch.float32)[:, None]
    c = torch.arange(256, dtype=torch.float32)[None, :]
    d = (255.0 - x) / 255.0
    v = (255.0 + d * (c / 255.0 - 255.0)) * 255.0
    return (v.to(torch.int64) % 256).to(torch.uint8)


def paint(images: Tensor, groups: Tensor, *, bias: Bias, shading: str = "binary") -> Tensor:
    """Pad 28x28 uint8 images to 32x32 and colour them.

    With ``shading="binary"`` a pixel is the digit when ``x >= 128`` and gets the full colour
    :math:`c` (foreground) or black (background). With ``shading="intensity"`` the grey level
    :math:`x` scales the colour:

    .. math:: \\text{foreground: } \\lfloor x\\, c / 255 \\rfloor, \\qquad
              \\text{background: } \\lfloor (255 - x)\\, c / 255 \\rfloor

    which keeps the texture of Fashion-MNIST items (the foreground formula is what the public
    C-FMNIST builder of the FairDD line of work computes; binarising discards texture).
    ``shading="reference"`` is the public C-FMNIST builder's own output: the intensity
    foreground, and for the background its overflowing formula
    (:func:`reference_background_table`), on which the published C-FMNIST background
    numbers were measured.

    Parameters
    ----------
    images : Tensor, shape (N, 28, 28), uint8
    groups : Tensor, shape (N,)
        Colour index per image.
    bias : {"foreground", "background"}
    shading : {"binary", "intensity", "reference"}

    Returns
    -------
    Tensor, shape (N, 3, 32, 32), uint8, on ``images.device``
    """
    _check_bias(bias)
    _check_shading(shading)
    n = images.shape[0]
    palette = torch.tensor(COLORS, dtype=torch.uint8, device=images.device)
    colors = palette[groups.to(images.device)]  # (N, 3)
    if shading == "binary":
        digit = torch.zeros(n, OUTPUT_SIDE, OUTPUT_SIDE, dtype=torch.bool, device=images.device)
        digit[:, PAD_OFFSET:, PAD_OFFSET:] = images >= BINARIZE_THRESHOLD
        mask = digit if bias == "foreground" else ~digit
        return mask[:, None, :, :].to(torch.uint8) * colors[:, :, None, None]
    level = torch.zeros(n, OUTPUT_SIDE, OUTPUT_SIDE, dtype=torch.int32, device=images.device)
    level[:, PAD_OFFSET:, PAD_OFFSET:] = images.to(torch.int32)
    if shading == "reference" and bias == "background":
        table = reference_background_table().to(images.device)
        return table[level[:, None, :, :], colors[:, :, None, None].to(torch.int64)]
    if bias == "background":
        level = 255 - level
    return (level[:, None, :, :] * colors[:, :, None, None].to(torch.int32) // 255).to(torch.uint8)


def colorize(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    bias: Bias,
    correlation: float,
    num_confusing_colors: int = NUM_COLORS - 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    class_names: Sequence[str] | None = None,
    shading: str = "binary",
) -> GroupedImages:
    """Build a colour-biased split (C-MNIST / C-FMNIST) from 28x28 grayscale digits.

    Parameters
    ----------
    images : Tensor, shape (N, 28, 28), uint8
        Grayscale pixels 0-255.
    labels : Tensor, shape (N,)
        Class ids in ``[0, 10)``.
    bias : {"foreground", "background"}
        Colour the digit (on black) or the background (behind a black digit).
    correlation : float in [0, 1]
        Share of class :math:`k` that gets colour :math:`k`: :math:`\\lfloor \\rho n_k \\rfloor`
        images.
    num_confusing_colors : int in 1..9
        The other :math:`n_k - \\lfloor \\rho n_k \\rfloor` images are split in chunks of
        :math:`\\lceil r_k / m \\rceil` over colours :math:`k+1, \\dots, k+m \\pmod{10}`.
    seed, generator : int or torch.Generator
        Exactly one: the randomness of the per-class shuffle. Same seed, same split.
    class_names : sequence of str, optional
        Names of the classes; defaults to ``"0".."9"`` (as many as ``max(labels) + 1``).
    shading : {"binary", "intensity", "reference"}
        See :func:`paint`.

    Returns
    -------
    GroupedImages
        Images (N, 3, 32, 32) uint8 on ``images.device``; groups = colour index; group names
        :data:`COLOR_NAMES`; normalisation mean = std = 0.5 per channel.
    """
    _check_bias(bias)
    _check_shading(shading)
    correlation = _check_correlation("correlation", correlation)
    m = _check_num_confusing(num_confusing_colors)
    if (seed is None) == (generator is None):
        raise ValueError(ERR_RANDOMNESS.format(seed=seed, generator=generator))
    if generator is None:
        generator = torch.Generator().manual_seed(_check_seed(seed))
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if (
        images.dtype != torch.uint8
        or images.dim() != 3
        or images.shape[0] == 0
        or images.shape[1:]
        != (
            INPUT_SIDE,
            INPUT_SIDE,
        )
    ):
        raise ValueError(ERR_IMAGES.format(dtype=images.dtype, shape=tuple(images.shape)))
    n = images.shape[0]
    integral = not (labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool)
    low = int(labels.min()) if labels.numel() else 0
    high = int(labels.max()) if labels.numel() else 0
    if not integral or labels.shape != (n,) or low < 0 or high >= NUM_COLORS:
        raise ValueError(
            ERR_LABELS.format(n=n, colors=NUM_COLORS, dtype=labels.dtype, shape=tuple(labels.shape), low=low, high=high)
        )
    if class_names is None:
        class_names = tuple(str(k) for k in range(high + 1))
    elif len(class_names) <= high:
        raise ValueError(ERR_CLASS_NAMES.format(high=high, count=len(class_names)))
    groups = assign_colors(labels, correlation=correlation, num_confusing_colors=m, generator=generator)
    return GroupedImages(
        images=paint(images, groups, bias=bias, shading=shading),
        labels=labels.to(images.device, torch.int64),
        groups=groups.to(images.device),
        class_names=tuple(class_names),
        group_names=COLOR_NAMES,
        mean=COLORED_MEAN,
        std=COLORED_STD,
    )


def build_colored(
    raw: RawSplits,
    *,
    bias: Bias,
    train_correlation: float = 0.9,
    test_correlation: float = 0.1,
    num_confusing_colors: int = NUM_COLORS - 1,
    seed: int = 0,
    shading: str = "binary",
) -> ColoredSplits:
    """C-MNIST / C-FMNIST train and test splits from raw 28x28 splits.

    Parameters
    ----------
    raw : RawSplits
        From :func:`fdd.datasets.sources.load_raw`.
    bias : {"foreground", "background"}
    train_correlation : float in [0, 1]
        Bias strength of the train split (0.9 in the benchmark).
    test_correlation : float in [0, 1]
        Of the test split (0.1: about uniform over the 10 colours).
    num_confusing_colors : int in 1..9
        Spread of the train split's decorrelated images. The test split always spreads over
        all 9 other colours, so that it stays (nearly) balanced.
    seed : int
        One CPU generator seeded with it shuffles the train split, then the test split.
    shading : {"binary", "intensity", "reference"}
        See :func:`paint`.

    Returns
    -------
    ColoredSplits
    """
    _check_bias(bias)
    train_correlation = _check_correlation("train_correlation", train_correlation)
    test_correlation = _check_correlation("test_correlation", test_correlation)
    m = _check_num_confusing(num_confusing_colors)
    generator = torch.Generator().manual_seed(_check_seed(seed))
    _check_shading(shading)
    common: dict[str, Any] = {"bias": bias, "generator": generator, "class_names": raw.class_names, "shading": shading}
    train = colorize(
        raw.train_images, raw.train_labels, correlation=train_correlation, num_confusing_colors=m, **common
    )
    test = colorize(
        raw.test_images, raw.test_labels, correlation=test_correlation, num_confusing_colors=NUM_COLORS - 1, **common
    )
    params: dict[str, object] = {
        "bias": bias,
        "train_correlation": train_correlation,
        "test_correlation": test_correlation,
        "num_confusing_colors": m,
        "test_num_confusing_colors": NUM_COLORS - 1,
        "seed": int(seed),
        "shading": shading,
        "binarize_threshold": BINARIZE_THRESHOLD if shading == "binary" else None,
        "pad_offset": PAD_OFFSET,
    }
    return ColoredSplits(train=train, test=test, params=params)
