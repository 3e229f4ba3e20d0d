"""Tests of fdd.fairness.features (reference-embedder statistics) and fdd.fairness.diagnostics (barycenter distances)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fdd.config import BarycenterConfig, FeaturesConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages
from fdd.fairness.diagnostics import BarycenterDiagnostics, barycenter_diagnostics
from fdd.fairness.features import GroupFeatures, embed_images, group_features, sample_cells, separation_table
from fdd.models.networks import build_convnet

TINY_NET = NetworkConfig(width=8, depth=2)


def cell_data(
    sizes: dict[tuple[int, int], int],
    *,
    num_classes: int = 2,
    num_groups: int = 2,
    seed: int = 0,
    tint: float = 0.0,
    size: int = 8,
) -> GroupedImages:
    """Random images; group g gets +tint*g on every pixel."""
    gen = torch.Generator().manual_seed(seed)
    images, labels, groups = [], [], []
    for (c, g), n in sizes.items():
        x = torch.rand(n, 3, size, size, generator=gen) * 0.5 + tint * g
        images.append(x.clamp(0, 1))
        labels += [c] * n
        groups += [g] * n
    return GroupedImages(
        images=torch.cat(images),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )


# --------------------------------------------------------------------------- sample_cells


def test_sample_cells_caps_each_cell():
    sizes = {(0, 0): 10, (0, 1): 3, (1, 1): 7, (2, 0): 1}
    data = cell_data(sizes, num_classes=3)
    idx = sample_cells(data, max_per_cell=5, generator=torch.Generator().manual_seed(0))
    assert idx.unique().numel() == len(idx)
    for (c, g), n in sizes.items():
        got = int(((data.labels[idx] == c) & (data.groups[idx] == g)).sum())
        assert got == min(n, 5)
    assert len(idx) == 5 + 3 + 5 + 1
    # deterministic with the generator, random otherwise
    again = sample_cells(data, max_per_cell=5, generator=torch.Generator().manual_seed(0))
    other = sample_cells(data, max_per_cell=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)
    assert set(idx.tolist()) != set(other.tolist())
    # a cap above every cell keeps everything
    assert sorted(sample_cells(data, max_per_cell=100, generator=torch.Generator()).tolist()) == list(range(len(data)))


def test_sample_cells_is_uniform_within_cell():
    data = cell_data({(0, 0): 10, (1, 1): 2})
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(data))
    for _ in range(200):
        counts[sample_cells(data, max_per_cell=2, generator=gen)] += 1
    big = counts[:10]
    assert float(big.min()) > 20 and float(big.max()) < 60  # expected 40 each
    assert torch.equal(counts[10:], torch.full((2,), 200.0))


# --------------------------------------------------------------------------- group_features


def naive_embeddings(data: GroupedImages, seed: int) -> torch.Tensor:
    net = build_convnet(
        channels=3, num_classes=data.num_classes, image_size=data.image_shape[1], width=8, depth=2, seed=seed
    ).eval()
    with torch.no_grad():
        return net.embed(data.normalized()).double()


def test_group_features_match_naive_computation():
    sizes = {(0, 0): 6, (0, 1): 2, (1, 0): 3, (1, 1): 5}
    data = cell_data(sizes, tint=0.3)
    config = FeaturesConfig(embedder_seed=4, max_per_cell=50, batch_size=4, projection_dim=5)
    stats = group_features(data, config=config, network=TINY_NET)
    assert isinstance(stats, GroupFeatures)
    emb = naive_embeddings(data, seed=4)
    dim = emb.shape[1]
    assert stats.means.shape == (2, 2, dim) and stats.means.dtype == torch.float32
    for (c, g), n in sizes.items():
        cell = emb[(data.labels == c) & (data.groups == g)]
        torch.testing.assert_close(stats.means[c, g].double(), cell.mean(0), atol=1e-5, rtol=1e-5)
        assert float(stats.counts[c, g]) == n and int(stats.population[c, g]) == n
        spread = math.sqrt(float(((cell - cell.mean(0)) ** 2).sum(1).mean()))
        assert float(stats.spread[c, g]) == pytest.approx(spread, rel=1e-4)
    # PCA projection: k = projection_dim columns, centred, ordered by variance, distances kept in the span
    assert stats.projected.shape == (16, 5)
    torch.testing.assert_close(stats.projected.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    var = stats.projected.double().var(0)
    assert bool((var[:-1] >= var[1:] - 1e-6).all())
    assert torch.equal(
        torch.sort(stats.labels * 2 + stats.groups).values, torch.sort(data.labels * 2 + data.groups).values
    )


def test_group_features_projection_full_rank_preserves_distances():
    data = cell_data({(0, 0): 4, (1, 1): 3})
    config = FeaturesConfig(max_per_cell=10, batch_size=512, projection_dim=64)
    stats = group_features(data, config=config, network=TINY_NET)
    assert stats.projected.shape == (7, 7)  # k = min(projection_dim, D, M)
    emb = naive_embeddings(data, seed=0)
    # same multiset of points up to the sample order: compare sorted pairwise distances
    d_proj = torch.pdist(stats.projected.double()).sort().values
    d_full = torch.pdist(emb).sort().values
    torch.testing.assert_close(d_proj, d_full, atol=1e-3, rtol=1e-3)


def test_group_features_with_cap_and_missing_cell():
    sizes = {(0, 0): 9, (0, 1): 2, (1, 0): 4}  # cell (1, 1) empty
    data = cell_data(sizes)
    config = FeaturesConfig(max_per_cell=3, batch_size=2, projection_dim=3)
    stats = group_features(data, config=config, network=TINY_NET)
    assert stats.counts.tolist() == [[3.0, 2.0], [3.0, 0.0]]
    assert stats.population.tolist() == [[9, 2], [4, 0]]
    assert math.isnan(float(stats.spread[1, 1])) and torch.equal(stats.means[1, 1], torch.zeros_like(stats.means[1, 1]))
    assert stats.labels.shape == (8,) and stats.projected.shape == (8, 3)
    # the embedded images are the sampled ones: means match the naive mean over the sample
    features, index = embed_images(data, config=config, network=TINY_NET)
    emb = naive_embeddings(data, seed=0)
    torch.testing.assert_close(features, emb[index], atol=1e-5, rtol=1e-5)
    saved = stats.to_dict()
    assert set(saved) == {"means", "counts", "population", "spread", "projected", "labels", "groups"}


# --------------------------------------------------------------------------- separation_table


def constructed_stats(means, counts, spread) -> GroupFeatures:
    means = torch.tensor(means, dtype=torch.float32)
    counts = torch.tensor(counts, dtype=torch.float64)
    return GroupFeatures(
        means=means,
        counts=counts,
        population=counts.long(),
        spread=torch.tensor(spread, dtype=torch.float32),
        projected=torch.zeros(1, 1),
        labels=torch.zeros(1, dtype=torch.long),
        groups=torch.zeros(1, dtype=torch.long),
    )


def test_separation_table_constructed_clusters():
    nan = float("nan")
    stats = constructed_stats(
        means=[
            [[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]],  # two groups 5 apart (third absent)
            [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],  # identical groups
            [[0.0, 0.0], [0.0, 3.0], [4.0, 0.0]],  # three groups: distances 3, 4, 5
            [[2.0, 2.0], [0.0, 0.0], [0.0, 0.0]],  # one group
        ],
        counts=[[10, 2, 0], [5, 5, 5], [1, 1, 1], [4, 0, 0]],
        spread=[[1.0, 3.0, nan], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [1.0, nan, nan]],
    )
    table = separation_table(stats, class_names=("a", "b", "c", "d"))
    assert isinstance(table, pd.DataFrame)
    assert table["class_name"].tolist() == ["a", "b", "c", "d"]
    assert table["groups_present"].tolist() == [2, 3, 3, 1]
    assert table["between_group_distance"][0] == pytest.approx(5.0)
    assert table["within_group_spread"][0] == pytest.approx(2.0)
    assert table["separation"][0] == pytest.approx(2.5)
    assert table["separation"][1] == pytest.approx(0.0, abs=1e-12)
    assert table["between_group_distance"][2] == pytest.approx(4.0)
    assert table["separation"][2] == pytest.approx(4.0)
    assert math.isnan(table["separation"][3])


def test_separation_from_images():
    # well-separated groups: strongly tinted group 1
    separated = cell_data({(0, 0): 8, (0, 1): 8, (1, 0): 8, (1, 1): 8}, tint=0.5, seed=1)
    # identical groups: group 1 holds pixel copies of group 0
    base = cell_data({(0, 0): 8, (1, 0): 8}, seed=2)
    same = GroupedImages(
        images=torch.cat([base.images, base.images]),
        labels=torch.cat([base.labels, base.labels]),
        groups=torch.cat([base.groups, torch.ones_like(base.groups)]),
        class_names=base.class_names,
        group_names=("g0", "g1"),
        mean=base.mean,
        std=base.std,
    )
    config = FeaturesConfig(max_per_cell=20, batch_size=64, projection_dim=4)
    far = separation_table(
        group_features(separated, config=config, network=TINY_NET), class_names=separated.class_names
    )
    near = separation_table(group_features(same, config=config, network=TINY_NET), class_names=same.class_names)
    assert (far["separation"] > 1).all()
    assert (near["separation"].abs() < 1e-4).all()
    assert (near["within_group_spread"] > 0).all()


# --------------------------------------------------------------------------- barycenter_diagnostics


def imbalanced_stats(seed: int = 0) -> dict:
    """Two classes, two groups 10 apart in a 2-D space; 90 % / 10 % population."""
    rng = np.random.default_rng(seed)
    centres = {(0, 0): (0.0, 0.0), (0, 1): (10.0, 0.0), (1, 0): (0.0, 5.0), (1, 1): (0.0, -5.0)}
    samples = {(0, 0): 20, (0, 1): 6, (1, 0): 20, (1, 1): 6}
    population = torch.tensor([[90, 10], [90, 10]])
    projected, labels, groups = [], [], []
    means = torch.zeros(2, 2, 2, dtype=torch.float64)
    for (c, g), n in samples.items():
        pts = rng.normal(size=(n, 2)) * 0.5 + np.array(centres[(c, g)])
        projected.append(pts)
        labels += [c] * n
        groups += [g] * n
        means[c, g] = torch.tensor(centres[(c, g)], dtype=torch.float64)
    return {
        "means": means.float(),
        "counts": torch.tensor([[20.0, 6.0], [20.0, 6.0]]),
        "population": population,
        "projected": torch.tensor(np.concatenate(projected), dtype=torch.float32),
        "labels": torch.tensor(labels),
        "groups": torch.tensor(groups),
    }


def test_barycenter_diagnostics_imbalanced_two_groups():
    stats = imbalanced_stats()
    diag = barycenter_diagnostics(
        stats, class_names=("a", "b"), group_names=("maj", "min"), config=BarycenterConfig(support_size=6, max_iter=20)
    )
    assert isinstance(diag, BarycenterDiagnostics)
    table = diag.table
    assert len(table) == 4 and table["group_name"].tolist() == ["maj", "min", "maj", "min"]
    assert table["share"].tolist() == pytest.approx([0.9, 0.1, 0.9, 0.1])
    assert table["count"].tolist() == [90, 10, 90, 10]
    minority = table[table["group"] == 1]
    majority = table[table["group"] == 0]
    # the uniform barycenter sits halfway: both groups at 5 (first moment)
    assert minority["mean_to_barycenter"].tolist() == pytest.approx([5.0, 5.0], rel=1e-5)
    assert majority["mean_to_barycenter"].tolist() == pytest.approx([5.0, 5.0], rel=1e-5)
    # the pooled target sits next to the majority: 1 from it, 9 from the minority
    assert majority["mean_to_pooled"].tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert minority["mean_to_pooled"].tolist() == pytest.approx([9.0, 9.0], rel=1e-5)
    assert (minority["mean_to_pooled"] > minority["mean_to_barycenter"]).all()
    assert (majority["mean_to_pooled"] < majority["mean_to_barycenter"]).all()
    # same picture in W2
    assert (minority["w2_to_pooled"].to_numpy() > minority["w2_to_barycenter"].to_numpy()).all()
    assert (majority["w2_to_pooled"].to_numpy() < majority["w2_to_barycenter"].to_numpy()).all()
    assert (minority["w2_to_pooled"] > 6).all() and (minority["w2_to_barycenter"] < 6.5).all()
    # per-class table
    ct = diag.class_table
    assert ct["class_name"].tolist() == ["a", "b"] and ct["groups"].tolist() == [2, 2]
    assert ct["majority_share"].tolist() == pytest.approx([0.9, 0.9])
    assert ct["mean_to_pooled"].tolist() == pytest.approx([5.0, 5.0], rel=1e-5)  # (1 + 9) / 2
    assert (ct["worst_w2_to_pooled"] > ct["worst_w2_to_barycenter"]).all()
    # tensors
    t = diag.tensors
    torch.testing.assert_close(t["uniform_mean"][0], torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(t["pooled_mean"][0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(t["uniform_mean"][1], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(t["pooled_mean"][1], torch.tensor([0.0, 4.0]))
    assert len(t["support_uniform"]) == 2 and t["support_uniform"][0].shape == (6, 2)
    # the W2 barycenter supports have the weighted means of the group clouds
    clouds = [stats["projected"][(stats["labels"] == 0) & (stats["groups"] == g)].double() for g in range(2)]
    fair_mean = (clouds[0].mean(0) + clouds[1].mean(0)) / 2
    pooled_mean = 0.9 * clouds[0].mean(0) + 0.1 * clouds[1].mean(0)
    torch.testing.assert_close(t["support_uniform"][0].double().mean(0), fair_mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(t["support_pooled"][0].double().mean(0), pooled_mean, atol=1e-4, rtol=0)


def test_barycenter_diagnostics_missing_group():
    stats = imbalanced_stats()
    keep = ~((stats["labels"] == 1) & (stats["groups"] == 1))
    stats = dict(stats)
    stats["population"] = torch.tensor([[90, 10], [90, 0]])
    for key in ("projected", "labels", "groups"):
        stats[key] = stats[key][keep]
    diag = barycenter_diagnostics(
        stats, class_names=("a", "b"), group_names=("maj", "min"), config=BarycenterConfig(support_size=4, max_iter=10)
    )
    table = diag.table
    assert table[table["class"] == 1]["group"].tolist() == [0]
    row = table[table["class"] == 1].iloc[0]
    assert row["share"] == 1.0 and row["mean_to_barycenter"] == pytest.approx(0.0, abs=1e-6)
    assert row["mean_to_pooled"] == pytest.approx(0.0, abs=1e-6)
    assert diag.class_table["groups"].tolist() == [2, 1]


def test_end_to_end_features_to_diagnostics():
    data = cell_data({(0, 0): 12, (0, 1): 3, (1, 0): 3, (1, 1): 12}, tint=0.4, seed=3)
    stats = group_features(data, config=FeaturesConfig(max_per_cell=20, projection_dim=4), network=TINY_NET)
    diag = barycenter_diagnostics(
        stats.to_dict(),
        class_names=data.class_names,
        group_names=data.group_names,
        config=BarycenterConfig(support_size=3, max_iter=10),
    )
    table = diag.table.set_index(["class", "group"])
    for c, minority in ((0, 1), (1, 0)):
        row = table.loc[(c, minority)]
        assert row["mean_to_pooled"] > row["mean_to_barycenter"]
        assert row["mean_to_pooled"] == pytest.approx(0.8 * 2 * row["mean_to_barycenter"], rel=1e-4)
