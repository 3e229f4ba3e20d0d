"""Tests of fdd.distillation.initialisation: group-covering starting images (stratified, barycenter)."""

from __future__ import annotations

import pytest
import torch

from fdd.config import NetworkConfig
from fdd.datasets.containers import GroupedImages
from fdd.distillation import initialisation as I
from fdd.distillation.initialisation import covering_indices, stratified_indices
from fdd.distillation.synthesis import initial_synthetic_images
from fdd.models.networks import build_convnet

TINY_NET = NetworkConfig(width=8, depth=2)


def imbalanced(num_classes: int = 3, num_groups: int = 4, majority: int = 30, minority: int = 3, seed: int = 0):
    """Group c % G is the majority of class c (like C-MNIST); the other groups are small."""
    gen = torch.Generator().manual_seed(seed)
    labels, groups = [], []
    for c in range(num_classes):
        for g in range(num_groups):
            n = majority if g == c % num_groups else minority
            labels += [c] * n
            groups += [g] * n
    n = len(labels)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    groups_t = torch.tensor(groups)
    images[:, 0] = (groups_t * 60).to(torch.uint8).view(-1, 1, 1)  # group = red channel level
    return GroupedImages(
        images=images,
        labels=torch.tensor(labels),
        groups=groups_t,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )


def embedder(data: GroupedImages):
    return build_convnet(channels=3, num_classes=data.num_classes, image_size=8, width=8, depth=2, seed=0).eval().embed


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("method", I.COVERING_INITS)
@pytest.mark.parametrize("ipc", [4, 6, 9])
def test_covers_every_group_when_ipc_at_least_groups(method, ipc):
    data = imbalanced()
    index = covering_indices(data, ipc=ipc, method=method, generator=gen(), embed=embedder(data))
    assert index.shape == (3 * ipc,) and index.unique().numel() == index.numel()  # no repetition
    labels, groups = data.labels[index].view(3, ipc), data.groups[index].view(3, ipc)
    assert torch.equal(labels, torch.arange(3).unsqueeze(1).expand(3, ipc))
    counts = torch.stack([torch.bincount(groups[c], minlength=4) for c in range(3)])
    assert bool((counts >= 1).all())
    if method == "stratified" or ipc <= 4 * 3:  # round robin: quotas differ by at most one (minority cells hold 3)
        assert int(counts.max() - counts.min()) <= 1 or ipc > 12


def test_stratified_round_robin_skips_exhausted_groups():
    # class 0: group 0 has 10 images, group 1 only 1: ipc 5 -> 1 of group 1 and 4 of group 0
    labels = torch.zeros(11, dtype=torch.long)
    groups = torch.tensor([0] * 10 + [1])
    pos = stratified_indices(labels, groups, num_classes=1, num_groups=2, ipc=5, generator=gen())
    assert sorted(groups[pos].tolist()) == [0, 0, 0, 0, 1]
    assert pos.unique().numel() == 5


def test_default_real_init_is_majority_heavy_and_covering_is_not():
    data = imbalanced(majority=60, minority=2)
    real_rows = data.normalized().flatten(1)

    def groups_covered(images: torch.Tensor) -> float:
        match = torch.cdist(images.flatten(1), real_rows, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
        return sum(len(set(row.tolist())) for row in data.groups[match].view(3, 4)) / 3

    cpu = torch.device("cpu")
    real = [
        groups_covered(initial_synthetic_images(data, ipc=4, init="real", generator=gen(s), device=cpu)[0])
        for s in range(5)
    ]
    strat = [
        groups_covered(initial_synthetic_images(data, ipc=4, init="stratified", generator=gen(s), device=cpu)[0])
        for s in range(5)
    ]
    assert strat == [4.0] * 5 and sum(real) / 5 < 2.5


@pytest.mark.parametrize("method", I.COVERING_INITS)
def test_deterministic_per_seed(method):
    data = imbalanced()
    a = covering_indices(data, ipc=5, method=method, generator=gen(1), embed=embedder(data))
    b = covering_indices(data, ipc=5, method=method, generator=gen(1), embed=embedder(data))
    assert torch.equal(a, b)
    others = [covering_indices(data, ipc=5, method=method, generator=gen(s), embed=embedder(data)) for s in (2, 3, 4)]
    assert any(not torch.equal(a, o) for o in others)


def test_barycenter_picks_nearest_images_to_support():
    """With one group and ipc = 1 the barycenter is the mean, so the pick is the image nearest to it."""
    data = imbalanced(num_classes=1, num_groups=1, majority=20)
    embed = embedder(data)
    index = covering_indices(data, ipc=1, method="barycenter", generator=gen(), embed=embed, max_per_cell=100)
    with torch.no_grad():
        feats = embed(data.normalized())
    nearest = torch.cdist(feats.mean(0, keepdim=True), feats).argmin()
    assert int(index[0]) == int(nearest)


def test_unlabelled_never_chosen_unless_class_has_no_labels():
    data = imbalanced()
    groups = data.groups.clone()
    groups[data.labels == 1] = torch.where(groups[data.labels == 1] == 1, -1, groups[data.labels == 1])
    groups[data.labels == 2] = -1  # class 2 has no labelled image: falls back to its images
    noisy = GroupedImages(
        images=data.images,
        labels=data.labels,
        groups=groups,
        class_names=data.class_names,
        group_names=data.group_names,
        mean=data.mean,
        std=data.std,
    )
    for method in I.COVERING_INITS:
        index = covering_indices(noisy, ipc=4, method=method, generator=gen(), embed=embedder(noisy))
        chosen = groups[index].view(3, 4)
        assert bool((chosen[:2] >= 0).all())
        assert bool((noisy.labels[index].view(3, 4)[2] == 2).all())


@pytest.mark.parametrize("method", I.COVERING_INITS)
def test_class_with_few_labelled_images_fills_up_with_its_own_unknown_ones(method):
    """Class 0 has 3 labelled images and 20 of unknown group; ipc 5 takes 2 of the unknown
    ones, never images of another class."""
    data = imbalanced(majority=20, minority=1)
    groups = data.groups.clone()
    groups[(data.labels == 0) & (data.groups == 0)] = -1  # class 0: only its 3 minority images keep a group
    noisy = GroupedImages(
        images=data.images,
        labels=data.labels,
        groups=groups,
        class_names=data.class_names,
        group_names=data.group_names,
        mean=data.mean,
        std=data.std,
    )
    for ipc in (5, 23):
        index = covering_indices(noisy, ipc=ipc, method=method, generator=gen(), embed=embedder(noisy))
        assert torch.equal(noisy.labels[index], torch.arange(3).repeat_interleave(ipc))
        assert int((groups[index[:ipc]] >= 0).sum()) == 3  # every labelled image of class 0, then unknown ones


@pytest.mark.parametrize("init", ["stratified", "barycenter"])
def test_synthesis_init_option(init):
    data = imbalanced()
    images, labels = initial_synthetic_images(
        data, ipc=4, init=init, generator=gen(), device=torch.device("cpu"), network=TINY_NET
    )
    assert images.shape == (12, 3, 8, 8) and torch.equal(labels, torch.arange(3).repeat_interleave(4))
    # every image is one of the real images of its class
    real = data.normalized()
    dist = torch.cdist(images.flatten(1), real.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    match = dist.argmin(dim=1)
    assert bool((dist.min(dim=1).values < 1e-5).all())
    assert torch.equal(data.labels[match], labels)
    assert data.groups[match].view(3, 4).sort(dim=1).values.tolist() == [[0, 1, 2, 3]] * 3


def test_bad_input_errors():
    data = imbalanced()
    with pytest.raises(ValueError, match="init method must be one of"):
        covering_indices(data, ipc=2, method="random", generator=gen())
    with pytest.raises(ValueError, match=I.ERR_EMBED.replace("(", r"\(").replace(")", r"\)")):
        covering_indices(data, ipc=2, method="barycenter", generator=gen())
    with pytest.raises(ValueError, match="needs ipc=100 distinct real images per class"):
        covering_indices(data, ipc=100, method="stratified", generator=gen())
