"""Tests of fdd.datasets.group_noise and of how unknown groups (-1) flow through the library."""

from __future__ import annotations

import pytest
import torch

from fdd.config import ConfigError, GroupNoiseConfig, parse_config
from fdd.datasets.containers import UNKNOWN_GROUP, GroupedImages
from fdd.datasets.group_noise import perturb_groups
from fdd.datasets.partition import cell_counts
from fdd.distillation.dm import dm_loss


def dataset(n_per_cell: int = 25, num_classes: int = 3, num_groups: int = 4, seed: int = 0) -> GroupedImages:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(num_groups * n_per_cell)
    groups = torch.arange(num_groups).repeat_interleave(n_per_cell).repeat(num_classes)
    images = torch.randint(0, 256, (labels.numel(), 1, 4, 4), generator=gen, dtype=torch.uint8)
    return GroupedImages(
        images=images,
        labels=labels,
        groups=groups,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,),
        std=(0.5,),
    )


@pytest.mark.parametrize(("flip", "hide"), [(0.1, 0.0), (0.0, 0.2), (0.15, 0.25), (0.5, 0.5), (0.013, 0.0)])
def test_exact_fractions_disjoint_and_flips_change_group(flip, hide):
    data = dataset()
    out = perturb_groups(data, flip_fraction=flip, hide_fraction=hide, seed=3)
    n = len(data)
    assert int(out.hidden.sum()) == round(hide * n) and int(out.flipped.sum()) == round(flip * n)
    assert not bool((out.hidden & out.flipped).any())
    groups = out.data.groups
    assert bool((groups[out.hidden] == UNKNOWN_GROUP).all())
    assert bool((groups[out.flipped] != data.groups[out.flipped]).all())
    assert bool((groups[out.flipped] >= 0).all())
    untouched = ~(out.hidden | out.flipped)
    assert torch.equal(groups[untouched], data.groups[untouched])
    assert torch.equal(out.data.labels, data.labels) and torch.equal(out.data.images, data.images)
    assert out.summary() == {"groups_flipped": round(flip * n), "groups_hidden": round(hide * n)}


def test_flips_are_spread_over_the_other_groups():
    data = dataset(n_per_cell=400, num_classes=1, num_groups=4)
    out = perturb_groups(data, flip_fraction=1.0, seed=0)
    moved = (out.data.groups - data.groups) % 4  # shift in {1, 2, 3}, uniform
    counts = torch.bincount(moved, minlength=4)
    assert int(counts[0]) == 0
    assert all(abs(int(c) - 1600 / 3) < 80 for c in counts[1:])


def test_deterministic_per_seed():
    data = dataset()
    a = perturb_groups(data, flip_fraction=0.2, hide_fraction=0.1, seed=7)
    b = perturb_groups(data, flip_fraction=0.2, hide_fraction=0.1, seed=7)
    c = perturb_groups(data, flip_fraction=0.2, hide_fraction=0.1, seed=8)
    assert torch.equal(a.data.groups, b.data.groups)
    assert not torch.equal(a.data.groups, c.data.groups)


def test_zero_fractions_keep_the_data():
    data = dataset()
    out = perturb_groups(data, seed=1)
    assert out.data.digest() == data.digest() and out.summary() == {"groups_flipped": 0, "groups_hidden": 0}


def test_bad_input_errors():
    data = dataset()
    with pytest.raises(ValueError, match=r"flip_fraction must be a number in \[0, 1\]"):
        perturb_groups(data, flip_fraction=1.5)
    with pytest.raises(ValueError, match=r"hide_fraction must be a number in \[0, 1\]"):
        perturb_groups(data, hide_fraction=-0.1)
    with pytest.raises(ValueError, match="must be at most 1"):
        perturb_groups(data, flip_fraction=0.6, hide_fraction=0.6)
    with pytest.raises(ValueError, match="needs at least 2 groups"):
        perturb_groups(dataset(num_groups=1), flip_fraction=0.1)
    hidden = perturb_groups(data, hide_fraction=0.1).data
    with pytest.raises(ValueError, match="needs clean group labels"):
        perturb_groups(hidden, flip_fraction=0.1)
    with pytest.raises(ConfigError, match="flip_fraction \\+ hide_fraction must be at most 1"):
        parse_config({"data": {"group_noise": {"flip_fraction": 0.7, "hide_fraction": 0.7}}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"data": {"group_noise": {"flip": 0.1}}})
    assert parse_config({"data": {"group_noise": {"hide_fraction": 0.3}}}).data.group_noise == GroupNoiseConfig(
        hide_fraction=0.3
    )


def test_partition_counts_skip_unknown_groups():
    data = dataset()
    out = perturb_groups(data, hide_fraction=0.3, seed=0)
    counts = cell_counts(out.data)
    assert counts.sum() == len(data) - int(out.hidden.sum())
    expected = torch.bincount((data.labels * 4 + data.groups)[~out.hidden], minlength=12).view(3, 4).numpy()
    assert (counts == expected).all()


def _features(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(20)
    groups = torch.arange(2).repeat(30)
    syn = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    return real, labels, groups, syn, torch.arange(3).repeat_interleave(2)


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra", "cobra-w2", "cobra-bures"])
def test_losses_treat_unknown_groups_as_documented(mode):
    real, labels, groups, syn, syn_labels = _features()
    hidden = torch.zeros(60, dtype=torch.bool)
    hidden[::7] = True
    noisy = torch.where(hidden, torch.full_like(groups, -1), groups)
    kw = {"num_classes": 3, "num_groups": 2, "mode": mode}
    got = dm_loss(real, labels, noisy, syn, syn_labels, **kw)
    if mode == "vanilla":  # pooled mean: unknown-group samples count
        expected = dm_loss(real, labels, groups, syn, syn_labels, **kw)
        dropped = dm_loss(real[~hidden], labels[~hidden], groups[~hidden], syn, syn_labels, **kw)
        assert abs(float(expected - dropped)) > 1e-6
    else:  # group statistics: unknown-group samples are left out
        expected = dm_loss(real[~hidden], labels[~hidden], groups[~hidden], syn, syn_labels, **kw)
    torch.testing.assert_close(got, expected)
