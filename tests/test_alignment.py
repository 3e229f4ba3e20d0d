"""Tests of fdd.transport.alignment: the cobra-w2 / cobra-bures distributional alignment losses."""

from __future__ import annotations

import ot
import pytest
import torch

from fdd.distillation.dm import MATCHING_MODES, WARMUP_MODES, dm_loss
from fdd.transport import alignment as A
from fdd.transport.alignment import alignment_loss

F64 = torch.float64


def batch(
    seed: int,
    num_classes: int = 3,
    num_groups: int = 3,
    dim: int = 5,
    n_real: int = 60,
    ipc: int = 4,
    unlabelled: int = 0,
):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(n_real, dim, generator=gen, dtype=F64)
    labels = torch.randint(num_classes, (n_real,), generator=gen)
    labels[:num_classes] = torch.arange(num_classes)
    groups = torch.randint(num_groups, (n_real,), generator=gen)
    groups[num_classes : num_classes + unlabelled] = -1
    syn = torch.randn(num_classes * ipc, dim, generator=gen, dtype=F64, requires_grad=True)
    syn_labels = torch.arange(num_classes).repeat_interleave(ipc)
    return real, labels, groups, syn, syn_labels


def pot_w2(s, r):
    a = torch.full((len(s),), 1 / len(s), dtype=F64)
    b = torch.full((len(r),), 1 / len(r), dtype=F64)
    return ot.emd2(a, b, ot.dist(s, r))  # torch backend: differentiable through the cost


def pot_bures(s, r):
    ms, mr = s.mean(0), r.mean(0)
    cs, cr = (s - ms).T @ (s - ms) / len(s), (r - mr).T @ (r - mr) / len(r)
    return (ot.gaussian.bures_wasserstein_distance(ms, mr, cs, cr) ** 2).reshape(())


def naive(real, labels, groups, syn, syn_labels, num_classes, num_groups, distance):
    total = torch.zeros((), dtype=F64)
    for c in range(num_classes):
        present = [g for g in range(num_groups) if bool(((labels == c) & (groups == g)).any())]
        for g in present:
            total = total + distance(syn[syn_labels == c], real[(labels == c) & (groups == g)]) / len(present)
    return total


def loss(real, labels, groups, syn, syn_labels, mode, num_classes=3, num_groups=3, **kw):
    """The formula's 1/G_c weights unless the test asks for another reduction."""
    kw.setdefault("reduction", "mean")
    return alignment_loss(
        real, labels, groups, syn, syn_labels, num_classes=num_classes, num_groups=num_groups, mode=mode, **kw
    )


@pytest.mark.parametrize(("mode", "distance"), [("cobra-w2", pot_w2), ("cobra-bures", pot_bures)])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_per_cell_pot_values_and_gradients(mode, distance, seed):
    real, labels, groups, syn, syn_labels = batch(seed, unlabelled=6)
    got = loss(real, labels, groups, syn, syn_labels, mode)
    expected = naive(real, labels, groups, syn, syn_labels, 3, 3, distance)  # -1 samples in no cell
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    (g_got,) = torch.autograd.grad(got, syn)
    (g_exp,) = torch.autograd.grad(expected, syn)
    torch.testing.assert_close(g_got, g_exp, rtol=1e-6, atol=1e-6)


def test_bures_rank_deficient_high_dim_matches_pot():
    # k = 4 synthetic points in D = 40: rank-3 covariance, no regularisation needed
    real, labels, groups, syn, syn_labels = batch(2, dim=40, n_real=90, ipc=4)
    got = loss(real, labels, groups, syn, syn_labels, "cobra-bures")
    expected = naive(real, labels, groups, syn, syn_labels, 3, 3, pot_bures)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_group_is_plain_w2_matching():
    real, labels, groups, syn, syn_labels = batch(3, num_groups=1)
    got = loss(real, labels, groups, syn, syn_labels, "cobra-w2", num_groups=1)
    plain = sum(pot_w2(syn[syn_labels == c], real[labels == c]) for c in range(3))
    torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)
    # and bures with one group is the plain Gaussian W2 of the class clouds
    got_b = loss(real, labels, groups, syn, syn_labels, "cobra-bures", num_groups=1)
    plain_b = sum(pot_bures(syn[syn_labels == c], real[labels == c]) for c in range(3))
    torch.testing.assert_close(got_b, plain_b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", A.ALIGNMENT_MODES)
def test_mean_term_reduces_to_cobra_barycenter(mode):
    """Diracs (one synthetic point, each group one point at its mean): the loss is
    ||s - b||^2 + (1/G) sum_g ||m_g - b||^2 with b the uniform mean barycenter of cobra,
    so its gradient is 2 (s - b) where cobra's L1 loss ||b - s||_1 has gradient sign(s - b)."""
    gen = torch.Generator().manual_seed(5)
    means = torch.randn(4, 6, generator=gen, dtype=F64)  # G = 4 group means of one class
    labels, groups = torch.zeros(4, dtype=torch.long), torch.arange(4)
    s = torch.randn(1, 6, generator=gen, dtype=F64, requires_grad=True)
    s_labels = torch.zeros(1, dtype=torch.long)
    b = means.mean(0)
    got = loss(means, labels, groups, s, s_labels, mode, num_classes=1, num_groups=4)
    expected = (s[0] - b).pow(2).sum() + (means - b).pow(2).sum(1).mean()
    torch.testing.assert_close(got, expected)
    (grad,) = torch.autograd.grad(got, s)
    torch.testing.assert_close(grad[0], 2 * (s[0] - b).detach())
    cobra = dm_loss(means, labels, groups, s, s_labels, num_classes=1, num_groups=4, mode="cobra")
    torch.testing.assert_close(cobra, (s[0] - b).abs().sum())
    (g_cobra,) = torch.autograd.grad(cobra, s)
    torch.testing.assert_close(g_cobra[0], torch.sign(s[0] - b).detach())
    # reduction="sum" (the default scale) is G times the objective: exactly the fairdd loss
    summed = loss(means, labels, groups, s, s_labels, mode, num_classes=1, num_groups=4, reduction="sum")
    fairdd = dm_loss(means, labels, groups, s, s_labels, num_classes=1, num_groups=4, mode="fairdd")
    torch.testing.assert_close(summed, fairdd)
    torch.testing.assert_close(summed, 4 * got)


@pytest.mark.parametrize("mode", A.ALIGNMENT_MODES)
def test_sum_reduction_is_unweighted_sum_over_present_groups(mode):
    real, labels, groups, syn, syn_labels = batch(13, unlabelled=4)
    distance = pot_w2 if mode == "cobra-w2" else pot_bures
    expected = torch.zeros((), dtype=F64)
    for c in range(3):
        for g in range(3):
            cell = (labels == c) & (groups == g)
            if bool(cell.any()):
                expected = expected + distance(syn[syn_labels == c], real[cell])
    got = alignment_loss(real, labels, groups, syn, syn_labels, num_classes=3, num_groups=3, mode=mode)  # default
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", A.ALIGNMENT_MODES)
def test_uniform_weights_ignore_group_sizes(mode):
    real, labels, groups, syn, syn_labels = batch(6)
    base = loss(real, labels, groups, syn, syn_labels, mode)
    pick = groups == 1  # duplicate every sample of group 1 three times
    real2 = torch.cat([real] + [real[pick]] * 3)
    labels2 = torch.cat([labels] + [labels[pick]] * 3)
    groups2 = torch.cat([groups] + [groups[pick]] * 3)
    torch.testing.assert_close(loss(real2, labels2, groups2, syn, syn_labels, mode), base)
    # whereas a pooled (group-size-weighted) W2 changes
    pooled = sum(pot_w2(syn[syn_labels == c], real[labels == c]) for c in range(3))
    pooled2 = sum(pot_w2(syn[syn_labels == c], real2[labels2 == c]) for c in range(3))
    assert abs(float((pooled2 - pooled).detach())) > 1e-3


def test_bures_gradcheck():
    real, labels, groups, syn, syn_labels = batch(7, dim=3, n_real=30, ipc=3)
    assert torch.autograd.gradcheck(
        lambda x: loss(real, labels, groups, x, syn_labels, "cobra-bures"), (syn,), eps=1e-6, atol=1e-5
    )


def test_w2_emd_gradient_matches_finite_difference():
    real, labels, groups, syn, syn_labels = batch(8, dim=3, n_real=30, ipc=3)
    value = loss(real, labels, groups, syn, syn_labels, "cobra-w2")
    (grad,) = torch.autograd.grad(value, syn)
    direction = torch.randn(syn.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    h = 1e-6
    with torch.no_grad():
        plus = loss(real, labels, groups, syn + h * direction, syn_labels, "cobra-w2")
        minus = loss(real, labels, groups, syn - h * direction, syn_labels, "cobra-w2")
    assert float((plus - minus) / (2 * h)) == pytest.approx(float((grad * direction).sum()), rel=1e-5)


def test_sinkhorn_close_to_emd_and_debiased():
    real, labels, groups, syn, syn_labels = batch(9, dim=3, n_real=60, ipc=4)
    exact = loss(real, labels, groups, syn, syn_labels, "cobra-w2")
    approx = loss(real, labels, groups, syn, syn_labels, "cobra-w2", solver="sinkhorn", reg=0.005)
    assert float(approx.detach()) == pytest.approx(float(exact.detach()), rel=0.05)
    (grad,) = torch.autograd.grad(approx, syn)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    # debiased: a synthetic cloud equal to the (single) group cloud is a stationary point,
    # where plain entropic OT (no -1/2 OT(nu, nu) term) still pushes the points inward
    cloud = real[:4].clone().requires_grad_(True)
    zeros = torch.zeros(4, dtype=torch.long)
    value = loss(
        real[:4], zeros, zeros, cloud, zeros, "cobra-w2", num_classes=1, num_groups=1, solver="sinkhorn", reg=0.1
    )
    (grad,) = torch.autograd.grad(value, cloud)
    assert float(grad.abs().max()) < 1e-6
    from ot.batch import solve_batch

    cost = torch.cdist(cloud, real[:4]).pow(2)
    eps = 0.1 * float(cost.detach().mean())
    biased = solve_batch(cost[None], reg=eps, method="log_sinkhorn", grad="envelope").value.sum()
    (grad_biased,) = torch.autograd.grad(biased, cloud)
    assert float(grad_biased.abs().max()) > 1e-4  # 1000x the debiased residual


@pytest.mark.parametrize(("mode", "solver"), [("cobra-w2", "emd"), ("cobra-w2", "sinkhorn"), ("cobra-bures", "emd")])
def test_empty_cells_give_finite_values_and_gradients(mode, solver):
    real, labels, groups, syn, syn_labels = batch(14, num_groups=4, n_real=30)
    groups[labels == 0] = 0  # class 0: groups 1-3 empty
    for reduction in ("sum", "mean"):
        value = loss(real, labels, groups, syn, syn_labels, mode, num_groups=4, solver=solver, reduction=reduction)
        (grad,) = torch.autograd.grad(value, syn)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_unlabelled_only_class_contributes_nothing():
    real, labels, groups, syn, syn_labels = batch(10)
    groups = torch.where(labels == 2, torch.full_like(groups, -1), groups)
    for mode in A.ALIGNMENT_MODES:
        full = loss(real, labels, groups, syn, syn_labels, mode)
        keep = labels != 2
        two = loss(real[keep], labels[keep], groups[keep], syn, syn_labels, mode)
        torch.testing.assert_close(full, two)


def test_float32_follows_input_dtype():
    real, labels, groups, syn, syn_labels = batch(11)
    for mode in A.ALIGNMENT_MODES:
        out = loss(real.float(), labels, groups, syn.detach().float().requires_grad_(), syn_labels, mode)
        assert out.dtype == torch.float32


def test_modes_registered_everywhere():
    from fdd.config import MODES, SynthesisConfig

    for mode in A.ALIGNMENT_MODES:
        assert mode in MATCHING_MODES and mode in MODES and mode in WARMUP_MODES
    assert SynthesisConfig(modes=("cobra", "cobra-w2", "cobra-bures")).modes[1] == "cobra-w2"


def test_bad_input_errors():
    real, labels, groups, syn, syn_labels = batch(12)
    with pytest.raises(
        ValueError,
        match=A.ERR_MODE.format(allowed=A.ALIGNMENT_MODES, value="cobra").replace("(", r"\(").replace(")", r"\)"),
    ):
        loss(real, labels, groups, syn, syn_labels, "cobra")
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss(real, labels, groups, syn, syn_labels, "cobra-w2", reduction="none")
    with pytest.raises(ValueError, match="solver must be one of"):
        loss(real, labels, groups, syn, syn_labels, "cobra-w2", solver="exact")
    with pytest.raises(ValueError, match="reg must be a finite number > 0"):
        loss(real, labels, groups, syn, syn_labels, "cobra-w2", solver="sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="same feature size"):
        loss(real[:, :3], labels, groups, syn, syn_labels, "cobra-w2")
    with pytest.raises(ValueError, match="same number of images for every class"):
        loss(real, labels, groups, syn[:-1], syn_labels[:-1], "cobra-bures")
