"""Tests of the C-MNIST / C-FMNIST builders (docs/method.md section 4)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from fdd.datasets.colored import (
    COLOR_NAMES,
    COLORS,
    ERR_BIAS,
    ERR_CORRELATION,
    ERR_IMAGES,
    ERR_NUM_CONFUSING,
    ERR_RANDOMNESS,
    ERR_SHADING,
    PAD_OFFSET,
    assign_colors,
    build_colored,
    colorize,
    paint,
    reference_background_table,
)
from fdd.datasets.sources import RawSplits


def _labels(sizes: dict[int, int]) -> torch.Tensor:
    parts = [torch.full((n,), k, dtype=torch.int64) for k, n in sizes.items()]
    labels = torch.cat(parts)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(123))]


def _color_counts(labels: torch.Tensor, groups: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(groups[labels == k], minlength=10).tolist()


def _expected_counts(k: int, n: int, correlation: float, m: int) -> list[int]:
    """The definition, written out with Python integers."""
    counts = [0] * 10
    major = int(n * correlation)
    counts[k] = major
    rest = n - major
    chunk = math.ceil(rest / m) if rest else 0
    for j in range(m):
        counts[(k + 1 + j) % 10] += max(0, min(chunk, rest - j * chunk))
    return counts


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_palette_matches_method():
    assert COLORS == (
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
    assert len(set(COLOR_NAMES)) == 10 and COLOR_NAMES[0] == "red" and COLOR_NAMES[9] == "white"


@pytest.mark.parametrize(
    ("sizes", "correlation", "m"),
    [
        ({0: 100, 3: 37, 9: 20}, 0.9, 9),
        ({0: 100, 5: 61}, 0.9, 3),
        ({2: 90, 9: 45}, 0.1, 9),
        ({1: 7, 4: 100}, 0.5, 9),  # 3.5 -> 3 (truncation, not rounding)
        ({6: 100}, 0.29, 9),  # 100 * 0.29 == 28.999999999999996 -> 28, like int()
        ({7: 13}, 0.0, 9),
        ({8: 13}, 1.0, 4),
    ],
)
def test_colour_counts_follow_the_definition(sizes, correlation, m):
    labels = _labels(sizes)
    groups = assign_colors(labels, correlation=correlation, num_confusing_colors=m, generator=_gen(0))
    for k, n in sizes.items():
        assert _color_counts(labels, groups, k) == _expected_counts(k, n, correlation, m)


def test_chunks_of_the_decorrelated_part_and_wraparound():
    labels = torch.full((100,), 9)
    groups = assign_colors(labels, correlation=0.9, num_confusing_colors=9, generator=_gen(0))
    # 10 left over, chunks of ceil(10 / 9) = 2 on colours 0, 1, 2, 3, 4 (wrapping past 9).
    assert torch.bincount(groups, minlength=10).tolist() == [2, 2, 2, 2, 2, 0, 0, 0, 0, 90]


def test_test_split_correlation_is_uniform_when_divisible():
    labels = _labels({k: 90 for k in range(10)})
    groups = assign_colors(labels, correlation=0.1, num_confusing_colors=9, generator=_gen(3))
    for k in range(10):
        assert _color_counts(labels, groups, k) == [9] * 10


def test_assignment_is_seeded():
    labels = _labels({0: 50, 1: 50})
    a = assign_colors(labels, correlation=0.9, generator=_gen(0))
    b = assign_colors(labels, correlation=0.9, generator=_gen(0))
    c = assign_colors(labels, correlation=0.9, generator=_gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # which images are decorrelated is random, not "the last ones of the class"
    first = (a[labels == 0] != 0).nonzero().flatten()
    assert first.tolist() != list(range(45, 50))


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=_gen(seed))


def test_foreground_padding_binarisation_and_colour():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = 128  # -> pixel (4, 4)
    images[:, 27, 27] = 255  # -> pixel (31, 31)
    images[:, 10, 3] = 127  # below the threshold: black
    labels = torch.tensor([0, 6])
    out = colorize(images, labels, bias="foreground", correlation=1.0, seed=0)
    assert out.images.shape == (2, 3, 32, 32) and out.images.dtype == torch.uint8
    assert out.groups.tolist() == [0, 6]
    for i, color in enumerate([COLORS[0], COLORS[6]]):
        img = out.images[i]
        assert img[:, 4, 4].tolist() == list(color)
        assert img[:, 31, 31].tolist() == list(color)
        assert img[:, 14, 7].tolist() == [0, 0, 0]
        assert int(img[:, :4, :].sum()) == 0 and int(img[:, :, :4].sum()) == 0
        assert int((img.sum(0) > 0).sum()) == 2


def test_background_inverts_foreground():
    images, labels = _digits(30), torch.arange(30) % 10
    fg = colorize(images, labels, bias="foreground", correlation=0.9, seed=5)
    bg = colorize(images, labels, bias="background", correlation=0.9, seed=5)
    assert torch.equal(fg.groups, bg.groups)
    palette = torch.tensor(COLORS, dtype=torch.uint8)[fg.groups][:, :, None, None].expand(-1, -1, 32, 32)
    assert torch.equal(fg.images + bg.images, palette)  # disjoint masks covering the image
    digit = torch.zeros(30, 32, 32, dtype=torch.bool)
    digit[:, 4:, 4:] = images >= 128
    assert int(bg.images.permute(0, 2, 3, 1)[digit].sum()) == 0  # digit black
    assert torch.equal(bg.images[:, :, :4, :], palette[:, :, :4, :])  # padding coloured


def test_intensity_shading_scales_the_colour_by_the_grey_level():
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = 255
    images[:, 5, 6] = 100  # below the binary threshold: kept as a grey level
    images[:, 7, 8] = 1
    labels = torch.tensor([1, 3, 9])  # colours (255,128,0), (255,255,128), white
    fg = colorize(images, labels, bias="foreground", correlation=1.0, seed=0, shading="intensity")
    bg = colorize(images, labels, bias="background", correlation=1.0, seed=0, shading="intensity")
    for i, color in enumerate([COLORS[1], COLORS[3], COLORS[9]]):
        assert fg.images[i, :, 4, 4].tolist() == list(color)
        assert fg.images[i, :, 9, 10].tolist() == [100 * c // 255 for c in color]
        assert fg.images[i, :, 11, 12].tolist() == [c // 255 for c in color]
        assert bg.images[i, :, 4, 4].tolist() == [0, 0, 0]
        assert bg.images[i, :, 9, 10].tolist() == [155 * c // 255 for c in color]
        assert bg.images[i, :, 0, 0].tolist() == list(color)  # padding: full colour behind
        assert int(fg.images[i, :, :4, :].sum()) == 0
    binary = colorize(images, labels, bias="foreground", correlation=1.0, seed=0)
    assert binary.images[:, :, 9, 10].sum() == 0 and fg.images[:, :, 9, 10].sum() > 0
    # on binary pixels (0 or 255) both shadings agree
    digits = (_digits(20) >= 128).to(torch.uint8) * 255
    a = colorize(digits, torch.arange(20) % 10, bias="background", correlation=0.9, seed=1)
    b = colorize(digits, torch.arange(20) % 10, bias="background", correlation=0.9, seed=1, shading="intensity")
    assert torch.equal(a.images, b.images)


def test_bad_shading():
    images, labels = _digits(10), torch.arange(10)
    with pytest.raises(ValueError, match=re.escape(ERR_SHADING.split("{")[0])):
        colorize(images, labels, bias="foreground", correlation=0.9, seed=0, shading="grey")


def test_colorize_output_metadata_and_determinism():
    images, labels = _digits(40), torch.arange(40) % 4
    names = ("a", "b", "c", "d")
    out = colorize(images, labels, bias="foreground", correlation=0.5, seed=1, class_names=names)
    assert out.class_names == names and out.group_names == COLOR_NAMES
    assert out.mean == (0.5, 0.5, 0.5) and out.std == (0.5, 0.5, 0.5)
    assert torch.equal(out.labels, labels)
    again = colorize(images, labels, bias="foreground", correlation=0.5, generator=_gen(1), class_names=names)
    other = colorize(images, labels, bias="foreground", correlation=0.5, seed=2, class_names=names)
    assert out.digest() == again.digest()
    assert out.digest() != other.digest()


@pytest.mark.parametrize("bias", ["fg", "Foreground", None])
def test_bad_bias(bias):
    with pytest.raises(ValueError, match=re.escape(ERR_BIAS.format(allowed=("foreground", "background"), value=bias))):
        colorize(_digits(2), torch.tensor([0, 1]), bias=bias, correlation=0.9, seed=0)


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.9", float("nan")])
def test_bad_correlation(value):
    with pytest.raises(ValueError, match=re.escape(ERR_CORRELATION.format(name="correlation", value=value))):
        colorize(_digits(2), torch.tensor([0, 1]), bias="foreground", correlation=value, seed=0)


@pytest.mark.parametrize("value", [0, 10, 2.5, True])
def test_bad_num_confusing_colors(value):
    with pytest.raises(ValueError, match=re.escape(ERR_NUM_CONFUSING.format(high=9, value=value))):
        colorize(
            _digits(2), torch.tensor([0, 1]), bias="foreground", correlation=0.9, num_confusing_colors=value, seed=0
        )


def test_bad_randomness_and_inputs():
    with pytest.raises(ValueError, match=re.escape(ERR_RANDOMNESS.format(seed=None, generator=None))):
        colorize(_digits(2), torch.tensor([0, 1]), bias="foreground", correlation=0.9)
    with pytest.raises(ValueError, match="pass exactly one of seed and generator"):
        colorize(_digits(2), torch.tensor([0, 1]), bias="foreground", correlation=0.9, seed=0, generator=_gen(0))
    bad = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match=re.escape(ERR_IMAGES.format(dtype=torch.uint8, shape=(2, 1, 28, 28)))):
        colorize(bad, torch.tensor([0, 1]), bias="foreground", correlation=0.9, seed=0)
    with pytest.raises(ValueError, match=r"values in \[0, 10\)"):
        colorize(_digits(2), torch.tensor([0, 10]), bias="foreground", correlation=0.9, seed=0)
    with pytest.raises(ValueError, match="class_names must name every label"):
        colorize(_digits(2), torch.tensor([0, 3]), bias="foreground", correlation=0.9, seed=0, class_names=("a",))


def test_build_colored_splits():
    labels = torch.arange(200) % 10
    raw = RawSplits(_digits(200, 1), labels, _digits(90, 2), torch.arange(90) % 10, class_names=tuple("0123456789"))
    splits = build_colored(raw, bias="background", num_confusing_colors=3, seed=7)
    for k in range(10):
        assert _color_counts(splits.train.labels, splits.train.groups, k) == _expected_counts(k, 20, 0.9, 3)
        # the test split always spreads over all 9 other colours: 9 images -> one per other colour
        assert _color_counts(splits.test.labels, splits.test.groups, k) == _expected_counts(k, 9, 0.1, 9)
    assert splits.params["num_confusing_colors"] == 3 and splits.params["bias"] == "background"
    same = build_colored(raw, bias="background", num_confusing_colors=3, seed=7)
    assert same.train.digest() == splits.train.digest() and same.test.digest() == splits.test.digest()
    assert build_colored(raw, bias="background", num_confusing_colors=3, seed=8).train.digest() != splits.train.digest()
    with pytest.raises(ValueError, match=re.escape(ERR_CORRELATION.format(name="test_correlation", value=2))):
        build_colored(raw, bias="foreground", test_correlation=2)


# The public C-FMNIST builder's background pixels for the orange colour (255, 128, 0), read off
# its own output on row 14 of the first Fashion-MNIST training image: grey level -> (R, G, B).
REFERENCE_ORANGE_BACKGROUND = {
    0: (255, 128, 0),
    1: (253, 126, 255),
    2: (251, 124, 254),
    4: (247, 121, 252),
    6: (243, 118, 250),
    7: (241, 117, 249),
    77: (100, 12, 179),
    215: (81, 61, 41),
    216: (79, 59, 40),
    217: (77, 58, 39),
    218: (75, 56, 38),
    219: (73, 55, 37),
    221: (69, 52, 35),
    222: (67, 50, 34),
    223: (65, 49, 33),
    226: (59, 44, 30),
    229: (53, 40, 27),
    237: (37, 28, 19),
    255: (1, 1, 1),
}


def test_reference_shading_pins_the_public_builders_background_pixels() -> None:
    levels = torch.tensor(sorted(REFERENCE_ORANGE_BACKGROUND), dtype=torch.uint8)
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, : len(levels)] = levels
    painted = paint(images, torch.tensor([1]), bias="background", shading="reference")
    assert painted.dtype == torch.uint8 and painted.shape == (1, 3, 32, 32)
    got = {int(x): tuple(int(v) for v in painted[0, :, PAD_OFFSET, PAD_OFFSET + i]) for i, x in enumerate(levels)}
    assert got == REFERENCE_ORANGE_BACKGROUND
    assert painted[0, :, 0, 0].tolist() == [255, 128, 0]  # the padding is background
    # the overflow rule, floor(255 x + (255 - x) c / 255) mod 256, holds up to float32 rounding
    table = reference_background_table()
    x = torch.arange(256, dtype=torch.int64)[:, None]
    c = torch.arange(256, dtype=torch.int64)[None, :]
    exact = torch.div(255 * 255 * x + (255 - x) * c, 255, rounding_mode="floor") % 256  # in integers
    off = (table.to(torch.int64) - exact) % 256
    assert set(off.unique().tolist()) <= {0, 1, 255} and (off == 0).float().mean() > 0.99  # one unit at most
    assert table[0, [0, 128, 255]].tolist() == [0, 128, 255]  # background pixels get the palette's values


def test_reference_shading_keeps_the_intensity_foreground() -> None:
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    groups = torch.tensor([0, 3, 7, 9])
    assert torch.equal(
        paint(images, groups, bias="foreground", shading="reference"),
        paint(images, groups, bias="foreground", shading="intensity"),
    )
    assert not torch.equal(
        paint(images, groups, bias="background", shading="reference"),
        paint(images, groups, bias="background", shading="intensity"),
    )
