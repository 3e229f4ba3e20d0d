"""Tests of fdd.distillation.dm: the DM matching losses in vanilla, FairDD and COBRA modes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fdd.distillation.dm import MEAN_MODES, class_means, dm_loss

PROPERTY = settings(max_examples=25, deadline=None)


def batch(
    seed: int,
    num_classes: int = 3,
    num_groups: int = 3,
    dim: int = 5,
    n_real: int = 40,
    ipc: int = 2,
    dtype=torch.float64,
):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(n_real, dim, generator=gen, dtype=dtype)
    labels = torch.randint(num_classes, (n_real,), generator=gen)
    labels[:num_classes] = torch.arange(num_classes)
    groups = torch.randint(num_groups, (n_real,), generator=gen)
    syn = torch.randn(num_classes * ipc, dim, generator=gen, dtype=dtype)
    syn_labels = torch.arange(num_classes).repeat_interleave(ipc)
    return real, labels, groups, syn, syn_labels


def naive_loss(real, labels, groups, syn, syn_labels, num_classes, num_groups, mode):
    total = torch.zeros((), dtype=real.dtype)
    for c in range(num_classes):
        rc = real[labels == c]
        if len(rc) == 0:
            continue
        s = syn[syn_labels == c].mean(0)
        group_means = [
            real[(labels == c) & (groups == g)].mean(0)
            for g in range(num_groups)
            if bool(((labels == c) & (groups == g)).any())
        ]
        if mode == "vanilla":
            total = total + ((rc.mean(0) - s) ** 2).sum()
        elif mode == "fairdd":
            for m in group_means:
                total = total + ((m - s) ** 2).sum()
        else:
            b = torch.stack(group_means).mean(0)
            total = total + (b - s).abs().sum()
    return total


def loss(real, labels, groups, syn, syn_labels, num_classes=3, num_groups=3, mode="vanilla"):
    return dm_loss(real, labels, groups, syn, syn_labels, num_classes=num_classes, num_groups=num_groups, mode=mode)


# --------------------------------------------------------------------------- values vs naive loops


@pytest.mark.parametrize("mode", MEAN_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_naive_loop(mode, seed):
    real, labels, groups, syn, syn_labels = batch(seed)
    got = loss(real, labels, groups, syn, syn_labels, mode=mode)
    expected = naive_loss(real, labels, groups, syn, syn_labels, 3, 3, mode)
    assert got.shape == ()
    torch.testing.assert_close(got, expected)


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    num_classes=st.integers(1, 4),
    num_groups=st.integers(1, 4),
    n_real=st.integers(4, 30),
    ipc=st.integers(1, 3),
    mode=st.sampled_from(MEAN_MODES),
)
def test_loss_equals_naive_loop_property(seed, num_classes, num_groups, n_real, ipc, mode):
    n_real = max(n_real, num_classes)
    real, labels, groups, syn, syn_labels = batch(seed, num_classes, num_groups, 3, n_real, ipc)
    got = loss(real, labels, groups, syn, syn_labels, num_classes, num_groups, mode)
    torch.testing.assert_close(got, naive_loss(real, labels, groups, syn, syn_labels, num_classes, num_groups, mode))


def test_handmade_values():
    # one class, two groups: group 0 = {0, 0} (x3 copies), group 1 = {4, 0}; syn mean = (1, 1)
    real = torch.tensor([[0.0, 0.0]] * 3 + [[4.0, 0.0]], dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.long)
    groups = torch.tensor([0, 0, 0, 1])
    syn = torch.tensor([[0.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    syn_labels = torch.zeros(2, dtype=torch.long)
    kw = dict(num_classes=1, num_groups=2)
    # pooled mean (1, 0): (1-1)^2 + (0-1)^2 = 1
    assert float(dm_loss(real, labels, groups, syn, syn_labels, mode="vanilla", **kw)) == pytest.approx(1.0)
    # groups (0,0), (4,0): (1 + 1) + (9 + 1) = 12
    assert float(dm_loss(real, labels, groups, syn, syn_labels, mode="fairdd", **kw)) == pytest.approx(12.0)
    # barycenter (2, 0): |2-1| + |0-1| = 2
    assert float(dm_loss(real, labels, groups, syn, syn_labels, mode="cobra", **kw)) == pytest.approx(2.0)


def test_class_means():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 2])
    means = class_means(feats, labels, num_classes=4)
    torch.testing.assert_close(means, torch.tensor([[2.0, 3.0], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fairdd_gradient_equals_group_count_times_barycenter_gradient(seed):
    """THE key identity: sum_g ||m_g - s||^2 = G ||b - s||^2 + const, so equal gradients."""
    num_classes, num_groups = 4, 3
    real, _, _, syn, syn_labels = batch(seed, num_classes, num_groups, dim=6, n_real=48, ipc=3)
    labels = torch.arange(48) % num_classes
    groups = (torch.arange(48) // num_classes) % num_groups  # every group in every class
    groups[(labels == 0) & (torch.arange(48) > 24)] = 0  # class 0: imbalanced groups
    # class 3: only group 0 present; class 2: groups 1 and 2 only
    groups[labels == 3] = 0
    groups[(labels == 2) & (groups == 0)] = 1
    cell_sizes = torch.bincount(labels * num_groups + groups, minlength=12).view(4, 3)
    assert len(set(cell_sizes[0].tolist())) > 1
    syn_a = syn.clone().requires_grad_(True)
    fair = dm_loss(
        real, labels, groups, syn_a, syn_labels, num_classes=num_classes, num_groups=num_groups, mode="fairdd"
    )
    (grad_fair,) = torch.autograd.grad(fair, syn_a)

    syn_b = syn.clone().requires_grad_(True)
    reference = torch.zeros((), dtype=syn.dtype)
    group_counts = []
    for c in range(num_classes):
        present = [g for g in range(num_groups) if bool(((labels == c) & (groups == g)).any())]
        group_counts.append(len(present))
        b = torch.stack([real[(labels == c) & (groups == g)].mean(0) for g in present]).mean(0)
        s = syn_b[syn_labels == c].mean(0)
        reference = reference + len(present) * ((b - s) ** 2).sum()
    (grad_ref,) = torch.autograd.grad(reference, syn_b)
    assert group_counts == [3, 3, 2, 1]
    torch.testing.assert_close(grad_fair, grad_ref)
    # and the vanilla gradient is different (pooled target != barycenter)
    syn_c = syn.clone().requires_grad_(True)
    van = dm_loss(
        real, labels, groups, syn_c, syn_labels, num_classes=num_classes, num_groups=num_groups, mode="vanilla"
    )
    (grad_van,) = torch.autograd.grad(van, syn_c)
    assert not torch.allclose(grad_van, grad_ref / torch.tensor(group_counts, dtype=syn.dtype)[syn_labels].unsqueeze(1))


@pytest.mark.parametrize("mode", MEAN_MODES)
def test_gradient_matches_naive_loop_and_no_grad_to_real(mode):
    real, labels, groups, syn, syn_labels = batch(5)
    syn_a = syn.clone().requires_grad_(True)
    real_a = real.clone().requires_grad_(False)
    (g_a,) = torch.autograd.grad(loss(real_a, labels, groups, syn_a, syn_labels, mode=mode), syn_a)
    syn_b = syn.clone().requires_grad_(True)
    (g_b,) = torch.autograd.grad(naive_loss(real, labels, groups, syn_b, syn_labels, 3, 3, mode), syn_b)
    torch.testing.assert_close(g_a, g_b)
    assert float(g_a.abs().sum()) > 0


def test_gradient_flows_through_real_features_too():
    real, labels, groups, syn, syn_labels = batch(6)
    real = real.requires_grad_(True)
    out = loss(real, labels, groups, syn, syn_labels, mode="cobra")
    out.backward()
    assert real.grad is not None and float(real.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- missing groups / classes


def test_missing_groups_use_barycenter_over_present_groups():
    num_groups = 4
    # class 0 has groups 0 and 2 only; class 1 has group 3 only
    real = torch.tensor([[0.0], [0.0], [0.0], [6.0], [5.0], [7.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    groups = torch.tensor([0, 0, 0, 2, 3, 3])
    syn = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    syn_labels = torch.tensor([0, 1])
    kw = dict(num_classes=2, num_groups=num_groups)
    # cobra: class 0 target (0 + 6) / 2 = 3 -> |3 - 1| = 2; class 1 target 6 -> |6 - 2| = 4
    assert float(dm_loss(real, labels, groups, syn, syn_labels, mode="cobra", **kw)) == pytest.approx(6.0)
    # fairdd: class 0: (0-1)^2 + (6-1)^2 = 26; class 1: (6-2)^2 = 16 (absent groups contribute nothing)
    assert float(dm_loss(real, labels, groups, syn, syn_labels, mode="fairdd", **kw)) == pytest.approx(42.0)
    # vanilla: class 0 pooled 1.5 -> 0.25; class 1 -> 16
    assert float(dm_loss(real, labels, groups, syn, syn_labels, mode="vanilla", **kw)) == pytest.approx(16.25)


@pytest.mark.parametrize("mode", MEAN_MODES)
def test_class_without_real_images_contributes_nothing(mode):
    real, labels, groups, syn, syn_labels = batch(7, num_classes=3)
    keep = labels != 1
    full = loss(real[keep], labels[keep], groups[keep], syn, syn_labels, mode=mode)
    # same as dropping class 1 entirely (its synthetic images included)
    syn_keep = syn_labels != 1
    remap = torch.tensor([0, -1, 1])
    reduced = dm_loss(
        real[keep],
        remap[labels[keep]],
        groups[keep],
        syn[syn_keep],
        remap[syn_labels[syn_keep]],
        num_classes=2,
        num_groups=3,
        mode=mode,
    )
    torch.testing.assert_close(full, reduced)
    # and no gradient to the synthetic images of class 1
    s = syn.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(real[keep], labels[keep], groups[keep], s, syn_labels, mode=mode), s)
    assert float(g[syn_labels == 1].abs().sum()) == 0.0
    assert torch.isfinite(full)


# --------------------------------------------------------------------------- imbalance invariance


def test_uniform_target_invariant_to_duplicating_a_group_vanilla_moves():
    real, labels, groups, syn, syn_labels = batch(8, num_classes=2, num_groups=2, n_real=30)
    dup = (labels == 0) & (groups == 1)
    assert int(dup.sum()) > 0
    real2 = torch.cat([real] + [real[dup]] * 5)
    labels2 = torch.cat([labels] + [labels[dup]] * 5)
    groups2 = torch.cat([groups] + [groups[dup]] * 5)
    kw = dict(num_classes=2, num_groups=2)
    for mode in ("cobra", "fairdd"):
        a = dm_loss(real, labels, groups, syn, syn_labels, mode=mode, **kw)
        b = dm_loss(real2, labels2, groups2, syn, syn_labels, mode=mode, **kw)
        torch.testing.assert_close(a, b)
    a = dm_loss(real, labels, groups, syn, syn_labels, mode="vanilla", **kw)
    b = dm_loss(real2, labels2, groups2, syn, syn_labels, mode="vanilla", **kw)
    assert abs(float(a) - float(b)) > 1e-3
    # the minimisers show it directly: the barycenter stays the zero of cobra's loss for both
    # batches, while the zero of vanilla's loss moves to the new pooled mean
    one = torch.arange(2)
    bary = torch.stack(
        [torch.stack([real[(labels == c) & (groups == g)].mean(0) for g in range(2)]).mean(0) for c in range(2)]
    )
    for r, lab, grp in ((real, labels, groups), (real2, labels2, groups2)):
        assert float(dm_loss(r, lab, grp, bary, one, mode="cobra", **kw)) == pytest.approx(0.0, abs=1e-12)
    pooled2 = torch.stack([real2[labels2 == c].mean(0) for c in range(2)])
    assert float(dm_loss(real2, labels2, groups2, pooled2, one, mode="vanilla", **kw)) == pytest.approx(0.0, abs=1e-12)
    assert float(dm_loss(real, labels, groups, pooled2, one, mode="vanilla", **kw)) > 1e-3
    # and pooled2 moved towards the duplicated group's mean
    m1 = real[dup].mean(0)
    assert float((pooled2[0] - m1).norm()) < float((real[labels == 0].mean(0) - m1).norm())


def test_cobra_zero_at_barycenter_vanilla_zero_at_pooled():
    real, labels, groups, _, _ = batch(9, num_classes=2, num_groups=2, n_real=40)
    kw = dict(num_classes=2, num_groups=2)
    bary = torch.stack(
        [torch.stack([real[(labels == c) & (groups == g)].mean(0) for g in range(2)]).mean(0) for c in range(2)]
    )
    pooled = torch.stack([real[labels == c].mean(0) for c in range(2)])
    syn_labels = torch.arange(2)
    assert float(dm_loss(real, labels, groups, bary, syn_labels, mode="cobra", **kw)) == pytest.approx(0.0, abs=1e-12)
    assert float(dm_loss(real, labels, groups, pooled, syn_labels, mode="vanilla", **kw)) == pytest.approx(
        0.0, abs=1e-12
    )
    assert float(dm_loss(real, labels, groups, pooled, syn_labels, mode="cobra", **kw)) > 1e-3


# --------------------------------------------------------------------------- errors / dtypes


def test_errors():
    real, labels, groups, syn, syn_labels = batch(0)
    with pytest.raises(ValueError, match="mode must be one of") as info:
        loss(real, labels, groups, syn, syn_labels, mode="dc")
    assert "'dc'" in str(info.value) and "cobra" in str(info.value)
    with pytest.raises(ValueError, match="same feature size"):
        loss(real, labels, groups, syn[:, :3], syn_labels, mode="vanilla")


@pytest.mark.parametrize("mode", MEAN_MODES)
def test_float32_output_dtype(mode):
    real, labels, groups, syn, syn_labels = batch(0, dtype=torch.float32)
    out = loss(real, labels, groups, syn, syn_labels, mode=mode)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(),
        naive_loss(real.double(), labels, groups, syn.double(), syn_labels, 3, 3, mode),
        rtol=1e-5,
        atol=1e-5,
    )
