"""Tests of fdd.transport.barycenter: cell statistics, first-moment and W2 barycenters."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fdd.transport import barycenter as B
from fdd.transport.barycenter import (
    BarycenterConvergenceWarning,
    CellStatistics,
    ClassBarycenters,
    FairnessWarning,
    MissingGroupWarning,
    barycenter_weights,
    cell_statistics,
    distances_to_targets,
    free_support_barycenter,
    gaussian_barycenter,
    mean_barycenter,
    per_class_barycenters,
)

PROPERTY = settings(max_examples=25, deadline=None)


def make_data(seed: int, n: int, num_classes: int, num_groups: int, dim: int, dtype=torch.float64):
    """Random features; every class gets at least one sample."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=gen, dtype=dtype)
    labels = torch.randint(num_classes, (n,), generator=gen)
    labels[:num_classes] = torch.arange(num_classes)
    groups = torch.randint(num_groups, (n,), generator=gen)
    return features, labels, groups


def naive_stats(features, labels, groups, num_classes, num_groups):
    dim = features.shape[1]
    sums = torch.zeros(num_classes, num_groups, dim, dtype=features.dtype)
    counts = torch.zeros(num_classes, num_groups, dtype=features.dtype)
    covs = torch.zeros(num_classes, num_groups, dim, dim, dtype=features.dtype)
    for c in range(num_classes):
        for g in range(num_groups):
            x = features[(labels == c) & (groups == g)]
            counts[c, g] = len(x)
            sums[c, g] = x.sum(0)
            if len(x):
                xc = x - x.mean(0)
                covs[c, g] = xc.T @ xc / len(x)
    means = sums / counts.clamp_min(1)[..., None]
    return sums, counts, means, covs


data_params = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 4),  # classes
    st.integers(1, 4),  # groups
    st.integers(1, 5),  # dim
)


# --------------------------------------------------------------------------- cell statistics


@PROPERTY
@given(params=data_params, extra=st.integers(0, 30))
def test_cell_statistics_matches_naive_loop(params, extra):
    seed, num_classes, num_groups, dim = params
    features, labels, groups = make_data(seed, num_classes + extra, num_classes, num_groups, dim)
    stats = cell_statistics(features, labels, groups, num_classes=num_classes, num_groups=num_groups, covariance=True)
    sums, counts, means, covs = naive_stats(features, labels, groups, num_classes, num_groups)
    assert isinstance(stats, CellStatistics)
    torch.testing.assert_close(stats.sums, sums)
    torch.testing.assert_close(stats.counts, counts)
    torch.testing.assert_close(stats.means, means)
    torch.testing.assert_close(stats.covariances, covs)
    assert torch.equal(stats.present, counts > 0)
    assert stats.counts.dtype == features.dtype
    assert (stats.num_classes, stats.num_groups) == (num_classes, num_groups)


def test_cell_statistics_follows_dtype_and_skips_covariance_by_default():
    features, labels, groups = make_data(0, 20, 2, 3, 4, dtype=torch.float32)
    stats = cell_statistics(features, labels, groups, num_classes=2, num_groups=3)
    assert stats.means.dtype == stats.counts.dtype == torch.float32
    assert stats.covariances is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cell_statistics_follows_device():
    features, labels, groups = make_data(0, 20, 2, 3, 4, dtype=torch.float32)
    stats = cell_statistics(features.cuda(), labels.cuda(), groups.cuda(), num_classes=2, num_groups=3, covariance=True)
    assert stats.means.is_cuda and stats.covariances.is_cuda
    ref = cell_statistics(features, labels, groups, num_classes=2, num_groups=3, covariance=True)
    torch.testing.assert_close(stats.covariances.cpu(), ref.covariances)


def test_cell_statistics_gradcheck():
    features, labels, groups = make_data(1, 9, 2, 2, 3)
    features.requires_grad_(True)

    def fn(x):
        s = cell_statistics(x, labels, groups, num_classes=2, num_groups=2, covariance=True)
        return s.means, s.covariances

    assert torch.autograd.gradcheck(fn, (features,))


def test_mean_barycenter_gradcheck_through_statistics():
    features, labels, groups = make_data(2, 10, 2, 3, 2)
    features.requires_grad_(True)

    def fn(x):
        s = cell_statistics(x, labels, groups, num_classes=2, num_groups=3)
        return mean_barycenter(s.means, s.counts, weights="uniform")

    assert torch.autograd.gradcheck(fn, (features,))


# --------------------------------------------------------------------------- first moment


@PROPERTY
@given(params=data_params, extra=st.integers(0, 30))
def test_uniform_is_plain_average_of_present_group_means(params, extra):
    seed, num_classes, num_groups, dim = params
    features, labels, groups = make_data(seed, num_classes + extra, num_classes, num_groups, dim)
    stats = cell_statistics(features, labels, groups, num_classes=num_classes, num_groups=num_groups)
    bary = mean_barycenter(stats.means, stats.counts, weights="uniform")
    for c in range(num_classes):
        group_means = [
            features[(labels == c) & (groups == g)].mean(0)
            for g in range(num_groups)
            if ((labels == c) & (groups == g)).any()
        ]
        torch.testing.assert_close(bary[c], torch.stack(group_means).mean(0))


@PROPERTY
@given(params=data_params, extra=st.integers(0, 30))
def test_proportional_is_pooled_class_mean(params, extra):
    seed, num_classes, num_groups, dim = params
    features, labels, groups = make_data(seed, num_classes + extra, num_classes, num_groups, dim)
    stats = cell_statistics(features, labels, groups, num_classes=num_classes, num_groups=num_groups)
    bary = mean_barycenter(stats.means, stats.counts, weights="proportional")
    for c in range(num_classes):
        torch.testing.assert_close(bary[c], features[labels == c].mean(0))


@PROPERTY
@given(params=data_params, extra=st.integers(0, 20), copies=st.integers(1, 3))
def test_uniform_invariant_to_duplicating_a_group(params, extra, copies):
    seed, num_classes, num_groups, dim = params
    features, labels, groups = make_data(seed, num_classes + extra, num_classes, num_groups, dim)
    dup = groups == 0
    f2 = torch.cat([features] + [features[dup]] * copies)
    l2 = torch.cat([labels] + [labels[dup]] * copies)
    g2 = torch.cat([groups] + [groups[dup]] * copies)
    kw = dict(num_classes=num_classes, num_groups=num_groups)
    s1, s2 = cell_statistics(features, labels, groups, **kw), cell_statistics(f2, l2, g2, **kw)
    torch.testing.assert_close(mean_barycenter(s1.means, s1.counts), mean_barycenter(s2.means, s2.counts))


def test_proportional_moves_when_a_group_is_duplicated():
    # class 0: group 0 around +1, group 1 around -1 -> the pooled mean depends on sizes
    features = torch.tensor([[1.0], [1.2], [-1.0]], dtype=torch.float64)
    labels = torch.zeros(3, dtype=torch.long)
    groups = torch.tensor([0, 0, 1])
    f2, l2, g2 = torch.cat([features, features[:2]]), torch.cat([labels, labels[:2]]), torch.cat([groups, groups[:2]])
    kw = dict(num_classes=1, num_groups=2)
    s1, s2 = cell_statistics(features, labels, groups, **kw), cell_statistics(f2, l2, g2, **kw)
    p1 = mean_barycenter(s1.means, s1.counts, weights="proportional")
    p2 = mean_barycenter(s2.means, s2.counts, weights="proportional")
    assert (p2 - p1).abs().item() > 0.1
    u1 = mean_barycenter(s1.means, s1.counts, weights="uniform")
    u2 = mean_barycenter(s2.means, s2.counts, weights="uniform")
    torch.testing.assert_close(u1, u2)
    torch.testing.assert_close(u1, torch.tensor([[0.05]], dtype=torch.float64))


def test_barycenter_weights_rows():
    counts = torch.tensor([[3, 1, 0], [0, 0, 5]])
    uni = barycenter_weights(counts, weights="uniform")
    prop = barycenter_weights(counts, weights="proportional")
    torch.testing.assert_close(uni, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(prop, torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]]))


def test_mean_barycenter_ignores_nan_in_absent_cells():
    means = torch.tensor([[[1.0, 2.0], [float("nan"), float("nan")], [3.0, 4.0]]])
    counts = torch.tensor([[2.0, 0.0, 1.0]])
    torch.testing.assert_close(mean_barycenter(means, counts), torch.tensor([[2.0, 3.0]]))


# --------------------------------------------------------------------------- W2 barycenters


@pytest.mark.parametrize("weights", ["uniform", "proportional", [0.2, 0.5, 0.3]])
def test_free_support_mean_is_weighted_mean_of_group_means(weights):
    rng = np.random.default_rng(0)
    samples = [rng.normal(loc, 1.0, size=(n, 2)) for loc, n in ((0.0, 5), (3.0, 12), (-2.0, 7))]
    result = free_support_barycenter(samples, weights=weights, support_size=6, seed=1)
    sizes = np.array([len(s) for s in samples], dtype=float)
    lam = {"uniform": np.full(3, 1 / 3), "proportional": sizes / sizes.sum()}.get(
        weights if isinstance(weights, str) else "", np.asarray(weights)
    )
    expected = sum(w * s.mean(0) for w, s in zip(lam, samples, strict=True))
    assert result.support.shape == (6, 2) and result.weights.shape == (6,)
    torch.testing.assert_close(result.group_weights, torch.as_tensor(lam))
    # exact OT plans have row marginals 1/k, so the identity holds to float64 round-off
    np.testing.assert_allclose(result.mean.numpy(), expected, atol=1e-9)
    assert result.iterations >= 1


def test_free_support_torch_input_and_init():
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randn(4, 3, generator=gen), torch.randn(9, 3, generator=gen) + 1]
    init = torch.zeros(2, 3)
    init[1] = 1.0
    result = free_support_barycenter(samples, support_size=2, init=init)
    assert result.support.dtype == torch.float32
    expected = (samples[0].mean(0) + samples[1].mean(0)) / 2
    torch.testing.assert_close(result.mean, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=re.escape("init must have shape (support_size, D) = (3, 3)")):
        free_support_barycenter(samples, support_size=3, init=init)


def test_gaussian_barycenter_mean_and_single_group():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    single = gaussian_barycenter(mean[None], cov[None])
    torch.testing.assert_close(single.mean, mean)
    torch.testing.assert_close(single.covariance, cov, atol=1e-8, rtol=0)

    means = torch.stack([mean, -mean, 2 * mean])
    covs = torch.stack([cov, torch.eye(3, dtype=torch.float64), 2 * cov])
    lam = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    res = gaussian_barycenter(means, covs, weights=lam)
    torch.testing.assert_close(res.mean, lam @ means)
    uni = gaussian_barycenter(means, covs)
    torch.testing.assert_close(uni.mean, means.mean(0))
    prop = gaussian_barycenter(means, covs, weights="proportional", counts=[1, 1, 2])
    torch.testing.assert_close(prop.mean, (means[0] + means[1] + 2 * means[2]) / 4)


def test_gaussian_barycenter_commuting_closed_form():
    s1 = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    s2 = torch.tensor([9.0, 1.0, 4.0], dtype=torch.float64)
    res = gaussian_barycenter(
        torch.zeros(2, 3, dtype=torch.float64), torch.stack([torch.diag(s1), torch.diag(s2)]), tolerance=1e-12
    )
    expected = torch.diag(((s1.sqrt() + s2.sqrt()) / 2) ** 2)
    torch.testing.assert_close(res.covariance, expected, atol=1e-8, rtol=0)


def test_gaussian_barycenter_returns_input_dtype_and_warns_when_not_converged():
    covs = torch.stack([torch.diag(torch.tensor([1.0, 100.0])), torch.eye(2)])
    means = torch.zeros(2, 2)
    with pytest.warns(BarycenterConvergenceWarning, match="did not converge"):
        res = gaussian_barycenter(means, covs, num_iter=2, tolerance=1e-12)
    assert res.covariance.dtype == torch.float32 and res.iterations == 2


# --------------------------------------------------------------------------- per class


@pytest.mark.parametrize("kind", ["mean", "free_support", "gaussian"])
def test_per_class_barycenters_missing_group_warns(kind):
    features, labels, groups = make_data(3, 40, 2, 3, 2)
    groups[(labels == 1) & (groups == 2)] = 0  # class 1 lacks group 2
    with pytest.warns(MissingGroupWarning, match=re.escape("class 1 has no sample in group(s) [2]")) as rec:
        res = per_class_barycenters(
            features,
            labels,
            groups,
            num_classes=2,
            num_groups=3,
            kind=kind,
            support_size=4,
            covariance_reg=1e-6,
        )
    assert len([w for w in rec if issubclass(w.category, FairnessWarning)]) == 1
    assert isinstance(res, ClassBarycenters)
    assert res.missing_groups == {1: [2]}
    assert res.means.shape == (2, 2)
    torch.testing.assert_close(res.group_weights[1], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    stats = cell_statistics(features, labels, groups, num_classes=2, num_groups=3)
    torch.testing.assert_close(res.means, mean_barycenter(stats.means, stats.counts), atol=1e-7, rtol=0)
    if kind == "free_support":
        assert len(res.free_support) == 2 and res.free_support[0].support.shape == (4, 2)
    if kind == "gaussian":
        assert len(res.gaussian) == 2 and res.gaussian[1].covariance.shape == (2, 2)


def test_per_class_barycenters_no_warning_when_all_groups_present():
    features, labels, groups = make_data(4, 60, 2, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingGroupWarning)
        per_class_barycenters(features, labels, groups, num_classes=2, num_groups=2)


def test_empty_class_raises_naming_the_class():
    features, labels, groups = make_data(5, 20, 4, 2, 2)
    labels[labels == 2] = 0
    with pytest.raises(ValueError, match=re.escape(B.ERR_EMPTY_CLASS.format(classes=[2]))):
        per_class_barycenters(features, labels, groups, num_classes=4, num_groups=2)
    with pytest.raises(ValueError, match=re.escape("class index(es) [0, 2]")):
        barycenter_weights(torch.tensor([[0, 0], [1, 0], [0, 0]]))


def test_distances_to_targets():
    # class 0: group 0 (3 samples) at +1, group 1 (1 sample) at -1
    features = torch.tensor([[1.0], [1.0], [1.0], [-1.0], [2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1])
    groups = torch.tensor([0, 0, 0, 1, 0])
    stats = cell_statistics(features, labels, groups, num_classes=2, num_groups=2)
    d = distances_to_targets(stats.means, stats.counts)
    torch.testing.assert_close(d.barycenter[0], torch.tensor([0.0], dtype=torch.float64))
    torch.testing.assert_close(d.pooled[0], torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(d.to_barycenter[0], torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(d.to_pooled[0], torch.tensor([0.25, 2.25], dtype=torch.float64))
    assert torch.isnan(d.to_barycenter[1, 1]) and torch.isnan(d.to_pooled[1, 1])
    torch.testing.assert_close(d.barycenter_to_pooled, torch.tensor([0.25, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------- validation


def test_bad_weights_error_text():
    counts = torch.ones(2, 2)
    msg = B.ERR_CHOICE.format(name="weights", allowed=["uniform", "proportional"], value="balanced")
    with pytest.raises(ValueError, match=re.escape(msg)):
        mean_barycenter(torch.zeros(2, 2, 3), counts, weights="balanced")
    with pytest.raises(ValueError, match=re.escape(msg)):
        barycenter_weights(counts, weights="balanced")
    with pytest.raises(ValueError, match=re.escape(msg)):
        free_support_barycenter([np.zeros((2, 2))], weights="balanced", support_size=1)
    features, labels, groups = make_data(0, 10, 2, 2, 2)
    with pytest.raises(ValueError, match=re.escape(msg)):
        per_class_barycenters(features, labels, groups, num_classes=2, num_groups=2, weights="balanced")
    kind_msg = B.ERR_CHOICE.format(name="kind", allowed=["mean", "free_support", "gaussian"], value="median")
    with pytest.raises(ValueError, match=re.escape(kind_msg)):
        per_class_barycenters(features, labels, groups, num_classes=2, num_groups=2, kind="median")


def test_validation_errors():
    features, labels, groups = make_data(0, 10, 2, 2, 3)
    kw = dict(num_classes=2, num_groups=2)
    with pytest.raises(ValueError, match=re.escape("labels must be a 1-D tensor of length N=10")):
        cell_statistics(features, labels[:-1], groups, **kw)
    with pytest.raises(ValueError, match=re.escape("features must have shape (N, D)")):
        cell_statistics(features[0], labels, groups, **kw)
    with pytest.raises(ValueError, match=re.escape("groups must lie in [0, 2) (num_groups=2); got values in [0, 5]")):
        bad = groups.clone()
        bad[0] = 5
        cell_statistics(features, labels, bad, **kw)
    bad_f = features.clone()
    bad_f[1, 1] = float("nan")
    bad_f[2, 0] = float("inf")
    with pytest.raises(ValueError, match=re.escape(B.ERR_NONFINITE.format(name="features", count=2))):
        cell_statistics(bad_f, labels, groups, **kw)
    with pytest.raises(ValueError, match=re.escape("num_classes must be a positive integer; got 0")):
        cell_statistics(features, labels, groups, num_classes=0, num_groups=2)
    with pytest.raises(ValueError, match=re.escape("counts must be non-negative; got 1 negative entries")):
        mean_barycenter(torch.zeros(2, 2, 3), torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=re.escape("counts must have shape (C, G) = (2, 2); got shape (2, 3)")):
        mean_barycenter(torch.zeros(2, 2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=re.escape("means must have shape (C, G, D)")):
        mean_barycenter(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=re.escape("group_samples[1] must have shape (n_g, D) with n_g >= 1 and D=2")):
        free_support_barycenter([np.zeros((2, 2)), np.zeros((2, 3))], support_size=1)
    with pytest.raises(
        ValueError, match=re.escape("weights must be 'uniform', 'proportional' or an array of shape (2,)")
    ):
        free_support_barycenter([np.zeros((2, 2)), np.ones((2, 2))], weights=[1.0], support_size=1)
    with pytest.raises(ValueError, match=re.escape(B.ERR_SUPPORT_SIZE_REQUIRED)):
        per_class_barycenters(features, labels, groups, kind="free_support", **kw)
    with pytest.raises(ValueError, match=re.escape(B.ERR_PROPORTIONAL_COUNTS.format(func="gaussian_barycenter"))):
        gaussian_barycenter(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), weights="proportional")
    with pytest.raises(ValueError, match=re.escape("means must have shape (G, D) and covariances shape (G, D, D)")):
        gaussian_barycenter(torch.zeros(2, 2), torch.eye(3).expand(2, 3, 3))


def test_index_counts_is_bincount_without_a_host_read():
    from fdd.transport.barycenter import index_counts

    ids = torch.tensor([3, 0, 3, 5, 3, 0])
    assert torch.equal(index_counts(ids, 7), torch.bincount(ids, minlength=7))
    assert index_counts(ids, 7).dtype == torch.long
    assert torch.equal(index_counts(torch.zeros(0, dtype=torch.long), 3), torch.zeros(3, dtype=torch.long))
