"""Tests of fdd.distillation.augment: differentiable siamese augmentation, batched over slots."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fdd.distillation.augment import FAMILIES, DSAConfig, DSADraw, apply_dsa, augment_per_image, draw_dsa

FAM = {name: i for i, name in enumerate(FAMILIES)}


def images(n: int, size: int = 8, channels: int = 3, seed: int = 0, positive: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=gen)
    return x.abs() + 0.5 if positive else x


def one_family(name: str, **kw) -> DSAConfig:
    return DSAConfig(strategy=name, **kw)


def manual_draw(k: int, family: list[str], *, size: int = 8, **fields) -> DSADraw:
    """A hand-made draw: identity transform parameters unless given."""
    theta = torch.zeros(k, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    base = dict(
        family=torch.tensor([FAM[f] for f in family]),
        brightness=torch.zeros(k),
        saturation=torch.ones(k),
        contrast=torch.ones(k),
        theta=theta,
        cutout_low=torch.zeros(k, 2, dtype=torch.long),
        flip=torch.zeros(k, dtype=torch.bool),
    )
    base.update(fields)
    return DSADraw(**base)


# --------------------------------------------------------------------------- reference implementations


def ref_color(x, b, s, c):
    """The reference DSA: brightness, then saturation, then contrast (one image at a time)."""
    x = x + b
    m = x.mean(dim=0, keepdim=True)
    x = (x - m) * s + m
    m = x.mean()
    return (x - m) * c + m


def ref_shift(x, dy, dx):
    """out[..., i, j] = x[..., i + dy, j + dx], zero outside (rolled and zero-filled)."""
    h, w = x.shape[-2:]
    out = torch.roll(x, shifts=(-dy, -dx), dims=(-2, -1)).clone()
    if dy > 0:
        out[..., h - dy :, :] = 0
    elif dy < 0:
        out[..., :-dy, :] = 0
    if dx > 0:
        out[..., :, w - dx :] = 0
    elif dx < 0:
        out[..., :, :-dx] = 0
    return out


def ref_cutout_mask(h, w, low, cut):
    """The reference code's cutout mask: clamp the square's pixels into the image."""
    mask = torch.ones(h, w)
    rows = torch.clamp(torch.arange(cut) + low[0], 0, h - 1)
    cols = torch.clamp(torch.arange(cut) + low[1], 0, w - 1)
    mask[rows.view(-1, 1), cols.view(1, -1)] = 0
    return mask


# --------------------------------------------------------------------------- config


def test_families_and_errors():
    assert DSAConfig().families() == FAMILIES
    assert DSAConfig(strategy="none").families() == ()
    assert DSAConfig(strategy="").families() == ()
    assert DSAConfig(strategy="flip_crop").families() == ("flip", "crop")
    with pytest.raises(ValueError, match="unknown families") as info:
        DSAConfig(strategy="color_blur_flip").families()
    assert "blur" in str(info.value) and "rotate" in str(info.value)
    with pytest.raises(ValueError, match="unknown families"):
        draw_dsa(3, image_size=(8, 8), config=DSAConfig(strategy="noise"))


def test_strategy_none_returns_input():
    x = images(4)
    none = DSAConfig(strategy="none")
    draw = draw_dsa(2, image_size=(8, 8), config=none, generator=torch.Generator().manual_seed(0))
    assert bool((draw.family == -1).all())
    assert apply_dsa(x, torch.tensor([0, 1, 0, 1]), draw, config=none) is x
    # a no-family draw applied under a config with families leaves the pixels untouched too
    assert torch.equal(apply_dsa(x, torch.tensor([0, 1, 0, 1]), draw), x)
    assert torch.equal(augment_per_image(x, config=none), x)


def test_slots_validation():
    x = images(4)
    draw = draw_dsa(2, image_size=(8, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="slots must be a 1-D integer tensor of length N=4"):
        apply_dsa(x, torch.tensor([0, 1, 0]), draw)
    with pytest.raises(ValueError, match="slots must be"):
        apply_dsa(x, torch.tensor([0.0, 1.0, 0.0, 1.0]), draw)
    with pytest.raises(ValueError, match="slots must be"):
        apply_dsa(x, torch.zeros(4, 1, dtype=torch.long), draw)


def test_slots_out_of_range_error():
    x = images(2)
    draw = draw_dsa(2, image_size=(8, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="slots must be"):
        apply_dsa(x, torch.tensor([0, 2]), draw)
    with pytest.raises(ValueError, match="slots must be"):
        apply_dsa(x, torch.tensor([-1, 0]), draw)


# --------------------------------------------------------------------------- draws


def test_draw_shapes_ranges_and_determinism():
    k = 400
    draw = draw_dsa(k, image_size=(16, 16), generator=torch.Generator().manual_seed(0))
    again = draw_dsa(k, image_size=(16, 16), generator=torch.Generator().manual_seed(0))
    other = draw_dsa(k, image_size=(16, 16), generator=torch.Generator().manual_seed(1))
    for name in ("family", "brightness", "saturation", "contrast", "theta", "cutout_low", "flip"):
        assert torch.equal(getattr(draw, name), getattr(again, name)), name
    assert not torch.equal(draw.brightness, other.brightness)
    assert draw.num_slots == k and draw.theta.shape == (k, 2, 3) and draw.cutout_low.shape == (k, 2)
    # one family per slot: with 400 slots all six appear
    assert set(draw.family.tolist()) == set(range(len(FAMILIES)))
    assert float(draw.brightness.min()) >= -0.5 and float(draw.brightness.max()) <= 0.5
    assert float(draw.saturation.min()) >= 0.0 and float(draw.saturation.max()) <= 2.0
    assert float(draw.contrast.min()) >= 0.5 and float(draw.contrast.max()) <= 1.5
    assert 0.4 < float(draw.flip.float().mean()) < 0.6


def test_shared_family():
    for seed in range(5):
        draw = draw_dsa(20, image_size=(8, 8), shared_family=True, generator=torch.Generator().manual_seed(seed))
        assert draw.family.unique().numel() == 1


def test_family_block():
    for seed in range(5):
        draw = draw_dsa(10, image_size=(8, 8), family_block=3, generator=torch.Generator().manual_seed(seed))
        fam = draw.family
        assert fam.shape == (10,)
        for start in range(0, 10, 3):
            assert fam[start : start + 3].unique().numel() == 1
    # blocks draw their families independently
    draw = draw_dsa(300, image_size=(8, 8), family_block=3, generator=torch.Generator().manual_seed(0))
    assert draw.family.view(100, 3)[:, 0].unique().numel() == len(FAMILIES)
    # family_block=None or 1: one family per slot
    a = draw_dsa(12, image_size=(8, 8), generator=torch.Generator().manual_seed(1))
    b = draw_dsa(12, image_size=(8, 8), family_block=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.family, b.family)


def test_theta_structure_per_family():
    draw = draw_dsa(600, image_size=(16, 16), generator=torch.Generator().manual_seed(3))
    fam, theta = draw.family, draw.theta
    ident = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    for name in ("color", "cutout", "flip"):
        assert torch.equal(theta[fam == FAM[name]], ident.expand(int((fam == FAM[name]).sum()), 2, 3))
    # crop: integer pixel translations in [-2, 2] (ratio 0.125 of 16), identity linear part
    crop = theta[fam == FAM["crop"]]
    assert torch.equal(crop[:, :, :2], ident[:, :2].expand(len(crop), 2, 2))
    pixels = crop[:, :, 2] * (16 - 1) / 2
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-5, rtol=0)
    assert set(pixels.round().long().flatten().tolist()) == {-2, -1, 0, 1, 2}
    # scale: diagonal factors in [1/1.2, 1.2]
    scale = theta[fam == FAM["scale"]]
    assert torch.equal(scale[:, 0, 1], torch.zeros(len(scale))) and torch.equal(
        scale[:, :, 2], torch.zeros(len(scale), 2)
    )
    diag = torch.stack([scale[:, 0, 0], scale[:, 1, 1]])
    assert float(diag.min()) >= 1 / 1.2 - 1e-6 and float(diag.max()) <= 1.2 + 1e-6
    assert not torch.equal(scale[:, 0, 0], scale[:, 1, 1])  # independent x / y factors
    # rotate: a rotation of at most 15 degrees
    rot = theta[fam == FAM["rotate"]]
    det = rot[:, 0, 0] * rot[:, 1, 1] - rot[:, 0, 1] * rot[:, 1, 0]
    torch.testing.assert_close(det, torch.ones_like(det))
    torch.testing.assert_close(rot[:, 0, 1], -rot[:, 1, 0])
    angle = torch.atan2(rot[:, 1, 0], rot[:, 0, 0]).abs()
    assert float(angle.max()) <= math.radians(15) + 1e-6 and float(angle.max()) > math.radians(10)


# --------------------------------------------------------------------------- each family vs a reference


def test_flip_matches_reference():
    x = images(4)
    always = one_family("flip", flip_prob=1.0)
    never = one_family("flip", flip_prob=0.0)
    gen = torch.Generator().manual_seed(0)
    slots = torch.arange(4)
    assert torch.equal(
        apply_dsa(x, slots, draw_dsa(4, image_size=(8, 8), config=always, generator=gen), config=always), x.flip(3)
    )
    assert torch.equal(
        apply_dsa(x, slots, draw_dsa(4, image_size=(8, 8), config=never, generator=gen), config=never), x
    )
    # p = 0.5: each image is either flipped or untouched, following draw.flip
    half = one_family("flip")
    x = images(64)
    draw = draw_dsa(64, image_size=(8, 8), config=half, generator=gen)
    out = apply_dsa(x, torch.arange(64), draw, config=half)
    expected = torch.where(draw.flip.view(-1, 1, 1, 1), x.flip(3), x)
    assert torch.equal(out, expected)
    assert 0 < int(draw.flip.sum()) < 64


@pytest.mark.parametrize("size", [8, 16])
def test_crop_is_integer_shift_with_zero_fill(size):
    cfg = one_family("crop")
    x = images(40, size=size)
    draw = draw_dsa(40, image_size=(size, size), config=cfg, generator=torch.Generator().manual_seed(2))
    out = apply_dsa(x, torch.arange(40), draw, config=cfg)
    shifts = set()
    for i in range(40):
        dx = int(round(float(draw.theta[i, 0, 2]) * (size - 1) / 2))
        dy = int(round(float(draw.theta[i, 1, 2]) * (size - 1) / 2))
        shifts.add((dy, dx))
        torch.testing.assert_close(out[i], ref_shift(x[i], dy, dx), atol=1e-5, rtol=0)
    limit = int(size * 0.125 + 0.5)
    assert all(abs(a) <= limit and abs(b) <= limit for a, b in shifts)
    assert len(shifts) > 3 and any(a != 0 and b != 0 for a, b in shifts)


def test_crop_handmade_shift():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    theta = torch.tensor([[[1.0, 0, 1 * 2 / 7], [0, 1.0, -2 * 2 / 7]]])  # dx = +1, dy = -2
    draw = manual_draw(1, ["crop"], theta=theta)
    out = apply_dsa(x, torch.tensor([0]), draw)
    expected = torch.zeros(8, 8)
    expected[2:, :7] = x[0, 0, :6, 1:]
    torch.testing.assert_close(out[0, 0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size, cut", [(8, 4), (16, 8), (9, 5)])
def test_cutout_zeroes_square_of_right_size(size, cut):
    cfg = one_family("cutout")
    x = images(60, size=size, positive=True)  # no zero pixel before cutout
    draw = draw_dsa(60, image_size=(size, size), config=cfg, generator=torch.Generator().manual_seed(4))
    out = apply_dsa(x, torch.arange(60), draw, config=cfg)
    full = 0
    for i in range(60):
        mask = ref_cutout_mask(size, size, draw.cutout_low[i].tolist(), cut)
        assert torch.equal(out[i], x[i] * mask), i
        zero = (out[i] == 0).all(dim=0)
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= cut and 1 <= len(cols) <= cut
        assert int(zero.sum()) == len(rows) * len(cols)  # a rectangle (square clipped by the border)
        full += int(len(rows) == cut and len(cols) == cut)
        assert bool((out[i] == 0).all(dim=0).eq((out[i] == 0).any(dim=0)).all())  # all channels alike
    assert full > 0


def test_color_matches_reference_formulas():
    cfg = one_family("color")
    x = images(10)
    draw = draw_dsa(10, image_size=(8, 8), config=cfg, generator=torch.Generator().manual_seed(5))
    out = apply_dsa(x, torch.arange(10), draw, config=cfg)
    for i in range(10):
        expected = ref_color(x[i], draw.brightness[i], draw.saturation[i], draw.contrast[i])
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)
    # each piece alone, hand-made parameters
    x = images(1)
    b = manual_draw(1, ["color"], brightness=torch.tensor([0.3]))
    torch.testing.assert_close(apply_dsa(x, torch.tensor([0]), b), x + 0.3)
    s = manual_draw(1, ["color"], saturation=torch.tensor([0.0]))
    gray = x.mean(dim=1, keepdim=True).expand_as(x)
    torch.testing.assert_close(apply_dsa(x, torch.tensor([0]), s), gray)
    c = manual_draw(1, ["color"], contrast=torch.tensor([2.0]))
    m = x.mean()
    torch.testing.assert_close(apply_dsa(x, torch.tensor([0]), c), (x - m) * 2 + m)


@pytest.mark.parametrize("name", ["scale", "rotate"])
def test_scale_rotate_equal_grid_sample(name):
    cfg = one_family(name)
    x = images(12, size=8)
    draw = draw_dsa(12, image_size=(8, 8), config=cfg, generator=torch.Generator().manual_seed(6))
    out = apply_dsa(x, torch.arange(12), draw, config=cfg)
    grid = F.affine_grid(draw.theta, list(x.shape), align_corners=True)
    expected = F.grid_sample(x, grid, align_corners=True, padding_mode="zeros")
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, x, atol=1e-3)


def test_rotate_90_degrees_handmade():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    theta = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    out = apply_dsa(x, torch.tensor([0]), manual_draw(1, ["rotate"], theta=theta))
    # out(y, x) = in(x_in, y_in) with x_in = -y, y_in = x: a 90 degree rotation
    torch.testing.assert_close(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- mixing families in one batch


def test_other_families_leave_images_unchanged_bit_for_bit():
    # every parameter set to something drastic; only the slot's own family may act
    k = 6
    families = ["color", "crop", "cutout", "flip", "scale", "rotate"]
    theta = torch.tensor([[[0.8, 0.0, 0.0], [0.0, 1.2, 0.0]]]).repeat(k, 1, 1)
    theta[1] = torch.tensor([[1.0, 0, 2 / 7], [0, 1.0, 0]])
    draw = manual_draw(
        k,
        families,
        brightness=torch.full((k,), 0.4),
        saturation=torch.full((k,), 1.7),
        contrast=torch.full((k,), 1.4),
        theta=theta,
        cutout_low=torch.full((k, 2), 2),
        flip=torch.ones(k, dtype=torch.bool),
    )
    # images of slots 0..5, plus slot 3 (flip) with flip off via a second draw below
    x = images(k, positive=True)
    out = apply_dsa(x, torch.arange(k), draw)
    # color: only the colour formula, no flip, no warp, no cutout
    torch.testing.assert_close(out[0], ref_color(x[0], 0.4, 1.7, 1.4))
    # crop: a pure shift
    torch.testing.assert_close(out[1], ref_shift(x[1], 0, 1), atol=1e-5, rtol=0)
    # cutout: a pure hole, rest bit for bit
    mask = ref_cutout_mask(8, 8, [2, 2], 4)
    assert torch.equal(out[2], x[2] * mask)
    # flip: pure flip, bit for bit
    assert torch.equal(out[3], x[3].flip(2))
    # scale / rotate: only the warp
    grid = F.affine_grid(theta[4:], [2, 3, 8, 8], align_corners=True)
    torch.testing.assert_close(out[4:], F.grid_sample(x[4:], grid, align_corners=True))
    # flip family with flip off: untouched bit for bit
    off = manual_draw(k, families, brightness=torch.full((k,), 0.4), theta=theta, flip=torch.zeros(k, dtype=torch.bool))
    out = apply_dsa(x, torch.arange(k), off)
    assert torch.equal(out[3], x[3])
    # cutout slot with the default low corner (0, 0): a 4x4 hole in the corner, nothing else
    assert torch.equal(out[2], x[2] * ref_cutout_mask(8, 8, [0, 0], 4))
    assert int((out[2] == 0).all(dim=0).sum()) == 16
    # and the colour slot ignores the affine / flip / cutout parameters of its own slot
    torch.testing.assert_close(out[0], ref_color(x[0], 0.4, 1.0, 1.0))


def test_mixed_batch_equals_per_slot_calls():
    x = images(30, size=8)
    slots = torch.arange(30) % 10
    draw = draw_dsa(10, image_size=(8, 8), generator=torch.Generator().manual_seed(7))
    assert draw.family.unique().numel() > 2  # several families in one batch
    out = apply_dsa(x, slots, draw)
    for s in range(10):
        sub = DSADraw(
            family=draw.family[s : s + 1],
            brightness=draw.brightness[s : s + 1],
            saturation=draw.saturation[s : s + 1],
            contrast=draw.contrast[s : s + 1],
            theta=draw.theta[s : s + 1],
            cutout_low=draw.cutout_low[s : s + 1],
            flip=draw.flip[s : s + 1],
        )
        idx = (slots == s).nonzero().flatten()
        single = apply_dsa(x[idx], torch.zeros(len(idx), dtype=torch.long), sub)
        torch.testing.assert_close(out[idx], single, atol=1e-6, rtol=0)
        if FAMILIES[int(draw.family[s])] in ("flip", "cutout"):
            assert torch.equal(out[idx], single)


def test_unchanged_for_flip_slots_without_flip_bit_for_bit():
    cfg = one_family("flip_cutout")
    x = images(100)
    draw = draw_dsa(100, image_size=(8, 8), config=cfg, generator=torch.Generator().manual_seed(8))
    out = apply_dsa(x, torch.arange(100), draw, config=cfg)
    untouched = (draw.family == FAM["flip"]) & ~draw.flip
    assert int(untouched.sum()) > 0
    assert torch.equal(out[untouched], x[untouched])


# --------------------------------------------------------------------------- siamese behaviour


def test_siamese_identical_pixels_identical_outputs():
    real = images(12, size=8, seed=1)
    real_labels = torch.tensor([0, 1, 2] * 4)
    # synthetic image j of class c is a pixel copy of one real image of class c
    pick = torch.tensor([0, 3, 1, 7, 2, 11])
    syn, syn_labels = real[pick].clone(), real_labels[pick]
    families_seen = set()
    for seed in range(25):
        draw = draw_dsa(3, image_size=(8, 8), generator=torch.Generator().manual_seed(seed))
        families_seen |= set(draw.family.tolist())
        out_real = apply_dsa(real, real_labels, draw)
        out_syn = apply_dsa(syn, syn_labels, draw)
        torch.testing.assert_close(out_syn, out_real[pick], atol=1e-6, rtol=0)
        # something happened for at least one class in most draws
    assert families_seen == set(range(6))


def test_siamese_same_flip_and_shift_within_class():
    real_labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    syn_labels = torch.tensor([0, 1, 2, 3])
    real, syn = images(12, seed=2), images(4, seed=3)
    flip_cfg = one_family("flip")
    patterns = set()
    for seed in range(6):
        draw = draw_dsa(4, image_size=(8, 8), config=flip_cfg, generator=torch.Generator().manual_seed(seed))
        out_r, out_s = apply_dsa(real, real_labels, draw), apply_dsa(syn, syn_labels, draw)
        flipped_r = torch.tensor([torch.equal(o, x.flip(2)) for o, x in zip(out_r, real)])
        flipped_s = torch.tensor([torch.equal(o, x.flip(2)) for o, x in zip(out_s, syn)])
        unchanged_s = torch.tensor([torch.equal(o, x) for o, x in zip(out_s, syn)])
        assert bool((flipped_s ^ unchanged_s).all())
        assert torch.equal(flipped_r, flipped_s[real_labels])
        patterns.add(tuple(flipped_s.tolist()))
    assert len(patterns) > 1  # classes get different flips across draws
    crop_cfg = one_family("crop")
    draw = draw_dsa(4, image_size=(8, 8), config=crop_cfg, generator=torch.Generator().manual_seed(1))
    out_r, out_s = apply_dsa(real, real_labels, draw), apply_dsa(syn, syn_labels, draw)
    for c in range(4):
        dx = int(round(float(draw.theta[c, 0, 2]) * 7 / 2))
        dy = int(round(float(draw.theta[c, 1, 2]) * 7 / 2))
        for i in (real_labels == c).nonzero().flatten():
            torch.testing.assert_close(out_r[i], ref_shift(real[i], dy, dx), atol=1e-5, rtol=0)
        torch.testing.assert_close(out_s[c], ref_shift(syn[c], dy, dx), atol=1e-5, rtol=0)


def test_different_classes_can_draw_different_families():
    draw = draw_dsa(10, image_size=(8, 8), generator=torch.Generator().manual_seed(0))
    assert draw.family.unique().numel() > 1
    x = images(10)
    out = apply_dsa(x, torch.arange(10), draw)
    # images really get different kinds of transforms: some unchanged in mean (flip), some not (color)
    changed = [(not torch.equal(o, i)) for o, i in zip(out, x)]
    assert any(changed)


# --------------------------------------------------------------------------- gradients, per-image training DSA


@pytest.mark.parametrize("name", list(FAMILIES))
def test_gradient_flows_to_input(name):
    cfg = one_family(name, flip_prob=1.0)
    x = images(4, size=8).requires_grad_(True)
    draw = draw_dsa(4, image_size=(8, 8), config=cfg, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    (apply_dsa(x, torch.arange(4), draw, config=cfg) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert float(x.grad.abs().sum()) > 0
    if name == "flip":
        assert torch.equal(x.grad, weights.flip(3))
    if name == "cutout":
        # no gradient through the hole
        out_zero = apply_dsa(x.detach() + 10, torch.arange(4), draw, config=cfg) == 0
        assert bool((x.grad[out_zero] == 0).all())


def test_augment_per_image_one_family_independent_params():
    x = images(16, size=8)
    cfg = one_family("crop")
    out = augment_per_image(x, config=cfg, generator=torch.Generator().manual_seed(0))
    again = augment_per_image(x, config=cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    # per-image crop shifts differ between images
    shifts = set()
    for i in range(16):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if torch.allclose(out[i], ref_shift(x[i], dy, dx), atol=1e-5):
                    shifts.add((dy, dx))
    assert len(shifts) > 1
    # default strategy: one family for the whole batch
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        fam_draw = draw_dsa(16, image_size=(8, 8), shared_family=True, generator=gen)
        assert fam_draw.family.unique().numel() == 1
