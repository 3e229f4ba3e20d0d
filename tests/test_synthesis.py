"""Tests of fdd.distillation.synthesis: the class sampler, initialisation, training and the DM loop."""

from __future__ import annotations

import math

import pytest
import torch

from fdd.config import NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation import synthesis as S
from fdd.distillation.run import synthesize
from fdd.distillation.synthesis import ClassSampler, initial_synthetic_images
from fdd.distillation.training import train_network
from fdd.models.networks import build_convnet

TINY_NET = NetworkConfig(width=8, depth=2)


def tiny_data(
    num_classes: int = 3, num_groups: int = 2, per_cell=(6, 3), size: int = 8, seed: int = 0
) -> GroupedImages:
    """Class c is a bright blob in a class-specific quadrant; group g tints a channel."""
    gen = torch.Generator().manual_seed(seed)
    images, labels, groups = [], [], []
    for c in range(num_classes):
        for g in range(num_groups):
            n = per_cell[g % len(per_cell)]
            x = torch.rand(n, 3, size, size, generator=gen) * 0.3
            r, q = divmod(c % 4, 2)
            h = size // 2
            x[:, :, r * h : (r + 1) * h, q * h : (q + 1) * h] += 0.6
            x[:, g % 3] += 0.1
            images.append(x.clamp(0, 1))
            labels += [c] * n
            groups += [g] * n
    return GroupedImages(
        images=(torch.cat(images) * 255).round().to(torch.uint8),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def tiny_config(**kw) -> SynthesisConfig:
    args = dict(ipc=2, iterations=3, batch_real=4, warmup_epochs=1, warmup_batch=4, log_every=1)
    args.update(kw)
    return SynthesisConfig(**args)


# --------------------------------------------------------------------------- ClassSampler


def test_class_sampler_batches():
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 0, 2, 1, 0, 2])  # counts 4, 3, 5
    sampler = ClassSampler(labels, num_classes=3)
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 2, 3):
        idx = sampler.sample(batch, generator=gen)
        assert idx.shape == (3 * batch,)
        per_class = idx.view(3, batch)
        for c in range(3):
            assert bool((labels[per_class[c]] == c).all())  # class-major, right class
            assert per_class[c].unique().numel() == batch  # no duplicates
    # larger than some classes: each class gives min(batch, n_c) distinct images, class-major
    idx = sampler.sample(4, generator=gen)
    assert labels[idx].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert idx.unique().numel() == idx.numel()


def test_class_sampler_deterministic_and_covers_all():
    labels = torch.arange(30) % 3
    sampler = ClassSampler(labels, num_classes=3)
    a = sampler.sample(4, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(4, generator=torch.Generator().manual_seed(1))
    c = sampler.sample(4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([sampler.sample(4, generator=gen) for _ in range(40)])
    assert seen.unique().numel() == 30  # every image gets drawn eventually
    counts = torch.bincount(seen, minlength=30).double()
    assert float(counts.min()) > 0.4 * float(counts.mean())  # roughly uniform within a class


def test_class_sampler_full_batch_is_permutation():
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    idx = ClassSampler(labels, num_classes=2).sample(3, generator=torch.Generator().manual_seed(0))
    assert sorted(idx[:3].tolist()) == [1, 3, 5] and sorted(idx[3:].tolist()) == [0, 2, 4]


def test_class_sampler_per_class_batch_like_reference():
    labels = torch.tensor([0] * 2 + [1] * 5 + [2] * 8)
    idx = ClassSampler(labels, num_classes=3).sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx], minlength=3).tolist() == [2, 4, 4]


def test_class_sampler_empty_class_error():
    with pytest.raises(ValueError, match="has no training images") as info:
        ClassSampler(torch.tensor([0, 0, 2, 2]), num_classes=4)
    assert "[1, 3]" in str(info.value)


# --------------------------------------------------------------------------- initialisation


def test_initial_real_images_come_from_their_class():
    data = tiny_data()
    gen = torch.Generator().manual_seed(0)
    images, labels = initial_synthetic_images(data, ipc=3, init="real", generator=gen, device=torch.device("cpu"))
    assert images.shape == (9, 3, 8, 8) and images.dtype == torch.float32
    assert torch.equal(labels, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    real = data.normalized()
    for i in range(9):
        match = (real == images[i]).flatten(1).all(dim=1).nonzero().flatten()
        assert len(match) >= 1, i
        assert int(data.labels[match[0]]) == int(labels[i])
    for c in range(3):  # distinct images per class
        block = images[3 * c : 3 * c + 3].flatten(1)
        assert torch.unique(block, dim=0).shape[0] == 3
    again, _ = initial_synthetic_images(
        data, ipc=3, init="real", generator=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert torch.equal(images, again)


def test_initial_noise_images():
    data = tiny_data()
    images, labels = initial_synthetic_images(
        data, ipc=2, init="noise", generator=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert images.shape == (6, 3, 8, 8) and torch.equal(labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3


def test_initial_real_too_few_images_error():
    data = tiny_data(per_cell=(2, 1))  # 3 images per class
    with pytest.raises(ValueError, match="needs ipc=4 distinct real images per class") as info:
        initial_synthetic_images(data, ipc=4, init="real", generator=torch.Generator(), device=torch.device("cpu"))
    assert "'c0'" in str(info.value) and "has 3" in str(info.value)
    # exactly enough is fine
    images, _ = initial_synthetic_images(
        data, ipc=3, init="real", generator=torch.Generator(), device=torch.device("cpu")
    )
    assert images.shape[0] == 9


# --------------------------------------------------------------------------- train_network


def test_train_network_fits_and_decays_lr(monkeypatch):
    data = tiny_data()
    x, y = data.normalized(), data.labels
    net = build_convnet(channels=3, num_classes=3, image_size=8, width=8, depth=2, seed=0)
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(net(x), y))
    seen_lrs: list[float] = []
    real_sgd = torch.optim.SGD

    class RecordingSGD(real_sgd):
        def step(self, closure=None):
            seen_lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    train_network(
        net,
        x,
        y,
        epochs=4,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=32,
        dsa=None,
        generator=torch.Generator().manual_seed(0),
        lr_decay_epoch=1,
    )
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(net(x), y))
    assert after < before
    batches = math.ceil(len(data) / 32)
    assert len(seen_lrs) == 4 * batches
    assert seen_lrs[: 2 * batches] == [0.05] * (2 * batches)  # epochs 0 and 1 at the base rate
    assert all(lr == pytest.approx(0.005) for lr in seen_lrs[2 * batches :])


# --------------------------------------------------------------------------- synthesize


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_synthesize_end_to_end(mode):
    data = tiny_data()
    calls: list[tuple[int, float]] = []
    result = synthesize(
        data,
        mode=mode,
        config=tiny_config(),
        network=TINY_NET,
        seed=0,
        provenance={"data": "abc"},
        progress=lambda it, loss: calls.append((it, loss)),
    )
    syn = result.synthetic
    assert isinstance(syn, SyntheticSet)
    assert syn.images.shape == (6, 3, 8, 8) and syn.images.dtype == torch.float32
    assert torch.equal(syn.labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert syn.images_per_class == 2
    assert torch.isfinite(syn.images).all()
    assert syn.class_names == data.class_names and syn.mean == data.mean and syn.std == data.std
    assert syn.provenance == {"backbone": "dm", "mode": mode, "ipc": 2, "iterations": 3, "seed": 0, "data": "abc"}
    assert len(result.losses) == 3 and all(math.isfinite(v) and v > 0 for v in result.losses)
    assert [it for it, _ in calls] == [1, 2, 3]
    assert [loss for _, loss in calls] == pytest.approx(result.losses)
    assert result.seconds > 0 and result.seconds_per_iteration == pytest.approx(result.seconds / 3)
    assert not syn.images.requires_grad


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_synthesize_deterministic_and_seed_dependent(mode):
    data = tiny_data()
    cfg = tiny_config(iterations=2)
    a = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=3)
    b = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=3)
    c = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=4)
    assert torch.equal(a.synthetic.images, b.synthetic.images)
    assert a.losses == b.losses
    assert not torch.equal(a.synthetic.images, c.synthetic.images)


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_synthesize_changes_images_from_init(mode):
    data = tiny_data()
    cfg = tiny_config(iterations=2)
    start = synthesize(data, mode=mode, config=tiny_config(iterations=0), network=TINY_NET, seed=1)
    assert start.losses == []
    init, _ = initial_synthetic_images(
        data, ipc=2, init="real", generator=torch.Generator().manual_seed(1), device=torch.device("cpu")
    )
    assert torch.equal(start.synthetic.images, init)  # 0 iterations: the initialisation
    end = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=1)
    delta = (end.synthetic.images - start.synthetic.images).abs()
    assert float(delta.max()) > 1e-4


def test_modes_give_different_results():
    data = tiny_data()
    cfg = tiny_config(iterations=2)
    out = {
        m: synthesize(data, mode=m, config=cfg, network=TINY_NET, seed=0).synthetic.images
        for m in ("vanilla", "fairdd", "cobra")
    }
    assert not torch.equal(out["vanilla"], out["fairdd"])
    assert not torch.equal(out["vanilla"], out["cobra"])


def test_warmup_only_in_cobra(monkeypatch):
    data = tiny_data()
    calls: list[int] = []
    real_train = S.train_network

    def spy(*args, **kwargs):
        calls.append(kwargs["epochs"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(S, "train_network", spy)
    synthesize(data, mode="vanilla", config=tiny_config(iterations=2), network=TINY_NET, seed=0)
    synthesize(data, mode="fairdd", config=tiny_config(iterations=2), network=TINY_NET, seed=0)
    assert calls == []
    synthesize(data, mode="cobra", config=tiny_config(iterations=2, warmup_epochs=2), network=TINY_NET, seed=0)
    assert calls == [2, 2]
    calls.clear()
    # default schedule: 10 epochs at IPC <= 10; 0 disables it
    synthesize(data, mode="cobra", config=tiny_config(iterations=1, warmup_epochs=None), network=TINY_NET, seed=0)
    assert calls == [10]
    calls.clear()
    synthesize(data, mode="cobra", config=tiny_config(iterations=1, warmup_epochs=0), network=TINY_NET, seed=0)
    assert calls == []


def test_synthesize_noise_init_no_dsa_and_progress_every():
    data = tiny_data()
    calls = []
    result = synthesize(
        data,
        mode="cobra",
        config=tiny_config(iterations=5, init="noise", dsa=False, log_every=2),
        network=TINY_NET,
        seed=0,
        progress=lambda it, loss: calls.append(it),
    )
    assert calls == [2, 4, 5]
    assert torch.isfinite(result.synthetic.images).all()


def test_dm_synthesizer_steps_equal_synthesize():
    data = tiny_data()
    cfg = tiny_config(iterations=3)
    result = synthesize(data, mode="cobra", config=cfg, network=TINY_NET, seed=2)
    loop = S.DMSynthesizer(data, mode="cobra", config=cfg, network=TINY_NET, seed=2)
    losses = [float(loop.step()) for _ in range(3)]
    assert loop.iteration == 3
    assert losses == result.losses
    syn = loop.synthetic_set({"extra": 1})
    assert torch.equal(syn.images, result.synthetic.images)
    assert syn.provenance["iterations"] == 3 and syn.provenance["extra"] == 1
    loop.step()
    assert loop.synthetic_set().provenance["iterations"] == 4


def test_synthesize_unknown_mode_error():
    with pytest.raises(ValueError, match="mode must be one of") as info:
        synthesize(tiny_data(), mode="dc", config=tiny_config(), network=TINY_NET, seed=0)
    assert "'dc'" in str(info.value)


def test_synthesize_too_few_for_init():
    with pytest.raises(ValueError, match="init='real' needs ipc=5"):
        synthesize(tiny_data(per_cell=(2, 1)), mode="vanilla", config=tiny_config(ipc=5), network=TINY_NET, seed=0)


@pytest.mark.parametrize("dsa", [False, True])
@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_synthesize_first_loss_matches_manual_computation(dsa, mode):
    """Iteration 1: the logged loss is dm_loss on a network re-drawn from the run's generator,
    a class-balanced real batch, and one siamese DSA draw per class (real and synthetic alike)."""
    from fdd.distillation.augment import DSAConfig, apply_dsa, draw_dsa
    from fdd.distillation.dm import dm_loss
    from fdd.models.networks import reset_parameters_

    data = tiny_data()
    cfg = tiny_config(iterations=1, dsa=dsa, batch_real=3, warmup_epochs=0)
    result = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=5)
    gen = torch.Generator().manual_seed(5)
    syn, syn_labels = initial_synthetic_images(data, ipc=2, init="real", generator=gen, device=torch.device("cpu"))
    net = build_convnet(channels=3, num_classes=3, image_size=8, width=8, depth=2)
    reset_parameters_(net, generator=gen)
    index = ClassSampler(data.labels, num_classes=3).sample(3, generator=gen)
    real = data.normalized()[index]
    if dsa:
        draw = draw_dsa(3, image_size=(8, 8), config=DSAConfig(), generator=gen)
        real = apply_dsa(real, data.labels[index], draw)
        syn = apply_dsa(syn, syn_labels, draw)
    with torch.no_grad():
        expected = dm_loss(
            net.embed(real),
            data.labels[index],
            data.groups[index],
            net.embed(syn),
            syn_labels,
            num_classes=3,
            num_groups=2,
            mode=mode,
        )
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)
