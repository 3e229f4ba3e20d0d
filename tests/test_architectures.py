"""Evaluation architectures (audit.architectures): the spec grammar, the networks at 28/32/64 pixels, the audit on each."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock

from fdd.config import AuditConfig, ConfigError, NetworkConfig, parse_architecture, parse_config
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.fairness import audit as A
from fdd.fairness.audit import audit_architectures, audit_synthetic
from fdd.models.architectures import VGG11, AlexNet, build_architecture, has_buffers
from fdd.models.mlp import MLP
from fdd.models.networks import ConvNet
from tests.test_audit import quadrant_data, synthetic_from

IMAGE_ARCHITECTURES = (
    "convnet",
    "convnet-w16-d2",
    "convnet-bn",
    "convnet-nonorm-maxpool",
    "convnet-nopool-d1",
    "convnet-sigmoid",
    "convnet-leakyrelu",
    "alexnet",
    "alexnet-bn",
    "vgg11",
    "vgg11-bn",
    "resnet18",
    "resnet18-in",
    "resnet18-nonorm",
    "mlp",
)
NET = NetworkConfig(width=8, depth=2)


def test_spec_grammar_sets_each_option_and_the_base_defaults():
    spec = parse_architecture("convnet-w64-d4-bn-maxpool-sigmoid")
    assert (spec.base, spec.width, spec.depth, spec.norm, spec.pooling, spec.activation) == (
        "convnet",
        64,
        4,
        "batchnorm",
        "maxpooling",
        "sigmoid",
    )
    assert parse_architecture("convnet").norm == "instancenorm" and parse_architecture("convnet").depth is None
    assert parse_architecture("resnet18").norm == "instancenorm"  # the reference's ResNet18
    assert parse_architecture("resnet18-bn").norm == "batchnorm"  # the reference's ResNet18BN
    assert parse_architecture("vgg11").norm == "instancenorm" and parse_architecture("alexnet").norm == "none"
    assert parse_architecture("mlp-w32-d3").width == 32 and parse_architecture("mlp-w32-d3").depth == 3


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("resnet50", "unknown base 'resnet50'"),
        ("alexnet-maxpool", "option 'maxpool' does not apply to 'alexnet'"),
        ("convnet-bn-in", "sets the norm twice"),
        ("convnet-w0", "width must be in 1..4096"),
        ("mlp-sigmoid", "option 'sigmoid' does not apply to 'mlp'"),
    ],
)
def test_unknown_or_bad_specs_are_rejected_listing_the_allowed_ones(name, why):
    with pytest.raises(ConfigError) as info:
        parse_config({"audit": {"architectures": ["matching", name]}})
    message = str(info.value)
    assert repr(name) in message and why in message
    for base in ("matching", "convnet", "alexnet", "vgg11", "resnet18", "mlp"):
        assert base in message
    assert "w<width>" in message and "maxpool" in message


def test_architectures_config_default_duplicates_and_tabular_data():
    assert AuditConfig().architectures == ("matching",)
    with pytest.raises(ConfigError, match="more than once: 'alexnet' = 'alexnet'"):
        parse_config({"audit": {"architectures": ["alexnet", "alexnet"]}})
    # a spec spelling out its base's default is the same network, so it is a duplicate too
    with pytest.raises(ConfigError, match="more than once: 'resnet18' = 'resnet18-in'"):
        parse_config({"audit": {"architectures": ["resnet18", "vgg11-bn", "resnet18-in"]}})
    with pytest.raises(ConfigError, match="more than once: 'convnet' = 'convnet-w128'"):
        parse_config({"audit": {"architectures": ["convnet", "convnet-w128"]}})
    assert parse_config({"audit": {"architectures": ["resnet18", "resnet18-bn"]}}).audit.architectures == (
        "resnet18",
        "resnet18-bn",
    )
    tabular = {
        "data": {"dataset": "adult"},
        "network": {"architecture": "mlp", "norm": "none", "depth": 2},
        "synthesis": {"dsa": False},
        "audit": {"dsa": False, "architectures": ["matching", "mlp-w16", "vgg11"]},
    }
    with pytest.raises(ConfigError, match="is tabular: audit.architectures may list only") as info:
        parse_config(tabular)
    assert "['vgg11']" in str(info.value)
    tabular["audit"]["architectures"] = ["matching", "mlp-w16"]
    assert parse_config(tabular).audit.architectures == ("matching", "mlp-w16")


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("name", IMAGE_ARCHITECTURES)
def test_every_architecture_builds_for_every_image_size(name, size):
    before = torch.random.get_rng_state()
    net = build_architecture(name, input_shape=(3, size, size), num_classes=5, network=NET, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # construction leaves the global RNG alone
    assert net(torch.randn(2, 3, size, size)).shape == (2, 5)
    again = build_architecture(name, input_shape=(3, size, size), num_classes=5, network=NET, seed=3)
    other = build_architecture(name, input_shape=(3, size, size), num_classes=5, network=NET, seed=4)
    first = [p for p in net.parameters() if p.dim() > 1][0]
    assert torch.equal(first, [p for p in again.parameters() if p.dim() > 1][0])
    assert not torch.equal(first, [p for p in other.parameters() if p.dim() > 1][0])


def test_specs_build_the_networks_they_name():
    shape = (3, 32, 32)

    def build(name: str) -> nn.Module:
        return build_architecture(name, input_shape=shape, num_classes=4, network=NET, seed=0)

    conv = build("convnet-w16-d2-bn-maxpool-leakyrelu")
    assert isinstance(conv, ConvNet) and conv.embedding_dim == 16 * 8 * 8
    kinds = {type(m) for m in conv.modules()}
    assert {nn.BatchNorm2d, nn.MaxPool2d, nn.LeakyReLU} <= kinds and nn.ReLU not in kinds
    assert isinstance(build("convnet"), ConvNet) and len(build("convnet").features) == 4 * 3  # depth 3 at 32x32
    assert len(build_architecture("convnet", input_shape=(3, 64, 64), num_classes=4, network=NET).features) == 4 * 4
    assert isinstance(build("matching"), ConvNet) and len(build("matching").features) == 4 * 2  # network.depth=2
    assert isinstance(build("alexnet"), AlexNet) and build("alexnet").embedding_dim == 192 * 4 * 4
    assert (
        build_architecture("alexnet", input_shape=(3, 64, 64), num_classes=4, network=NET).embedding_dim == 192 * 8 * 8
    )
    vgg = build("vgg11-bn")
    assert isinstance(vgg, VGG11) and sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 8
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 8
    resnet = build("resnet18-bn")
    assert isinstance(resnet, ResNet) and sum(isinstance(m, BasicBlock) for m in resnet.modules()) == 8
    assert (
        resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1) and isinstance(resnet.maxpool, nn.Identity)
    )
    assert has_buffers(resnet) and not has_buffers(build("resnet18")) and not has_buffers(build("resnet18-nonorm"))
    assert any(isinstance(m, nn.GroupNorm) for m in build("resnet18").modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build("resnet18").modules())
    mlp = build("mlp-w12-d3")
    assert (
        isinstance(mlp, MLP) and mlp.embedding_dim == 12 and sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 4
    )


def test_image_networks_refuse_tabular_rows_with_a_clear_error():
    with pytest.raises(ValueError, match="alexnet needs images of at least 8x8 pixels; got 1x1"):
        build_architecture("alexnet", input_shape=(14, 1, 1), num_classes=2, network=NET)
    with pytest.raises(ValueError, match="input_shape must be"):
        build_architecture("mlp", input_shape=(14,), num_classes=2, network=NET)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize(
    "name", ["convnet-w8-d2", "convnet-bn-w8-d2", "alexnet", "vgg11-bn", "resnet18", "resnet18-bn", "mlp"]
)
def test_every_architecture_trains_and_is_audited(monkeypatch, name, size):
    """Two evaluations of a few steps each: stacked (vmap) unless the network has batch-norm buffers."""
    stacked, built = [], []
    train_stacked, build = A.train_stacked, A.build_architecture
    monkeypatch.setattr(
        A, "train_stacked", lambda nets, *a, **k: stacked.append(len(nets)) or train_stacked(nets, *a, **k)
    )
    monkeypatch.setattr(
        A, "build_architecture", lambda *a, **k: built.append((k["seed"], build(*a, **k))) or built[-1][1]
    )
    train = quadrant_data(per_cell=2, seed=0, size=size)
    test = quadrant_data(per_cell=2, seed=1, size=size)
    config = AuditConfig(num_eval=2, epochs=1, lr=0.01, batch_size=8, dsa=True, test_batch_size=5)
    result = audit_synthetic(synthetic_from(train), test, config=config, network=NET, architecture=name)
    assert len(result.reports) == 2
    assert all(0.0 <= r.accuracy <= 100.0 for r in result.reports)
    assert result.summary["accuracy"]["mean"] == pytest.approx(sum(r.accuracy for r in result.reports) / 2)
    assert [seed for seed, _ in built] == [0, 1]
    assert stacked == ([] if has_buffers(built[0][1]) else [2])
    for seed, net in built:  # each evaluated network was trained: its parameters left their initial values
        fresh = build(name, input_shape=test.image_shape, num_classes=3, network=NET, seed=seed)
        assert any(not torch.equal(a, b) for a, b in zip(net.parameters(), fresh.parameters()))


def test_mlp_audits_tabular_rows():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(60, 6, 1, 1, generator=gen)
    labels = (features[:, 0, 0, 0] > 0).long()
    groups = (features[:, 1, 0, 0] > 0).long()
    rows = GroupedImages(
        images=features,
        labels=labels,
        groups=groups,
        class_names=("no", "yes"),
        group_names=("a", "b"),
        mean=(0.0,) * 6,
        std=(1.0,) * 6,
    )
    synthetic = SyntheticSet(
        images=features[:40], labels=labels[:40], class_names=("no", "yes"), mean=(0.0,) * 6, std=(1.0,) * 6
    )
    config = AuditConfig(num_eval=2, epochs=60, lr=0.1, batch_size=64, dsa=False, architectures=("mlp-w16-d1",))
    results = audit_architectures(synthetic, rows, config=config, network=NET)
    assert list(results) == ["mlp-w16-d1"]
    assert results["mlp-w16-d1"].summary["accuracy"]["mean"] > 85  # the class is the sign of feature 0


def test_audit_architectures_audits_each_listed_network_in_order():
    train = quadrant_data(per_cell=3, seed=0)
    test = quadrant_data(per_cell=4, seed=1)
    config = AuditConfig(
        num_eval=1,
        epochs=30,
        lr=0.05,
        batch_size=16,
        dsa=False,
        architectures=("matching", "convnet-w8-d1-nonorm", "mlp-w32-d1"),
    )
    seen = []
    results = audit_architectures(
        synthetic_from(train), test, config=config, network=NET, progress=lambda arch, done: seen.append((arch, done))
    )
    assert list(results) == list(config.architectures) and seen == [(a, 1) for a in config.architectures]
    single = audit_synthetic(synthetic_from(train), test, config=config, network=NET, architecture="mlp-w32-d1")
    assert results["mlp-w32-d1"].summary == single.summary
    assert results["matching"].summary["accuracy"]["mean"] > 90  # the quadrants are linearly separable


def test_sweep_summary_has_one_row_per_mode_and_architecture():
    import json
    import math

    import pandas as pd

    from flows.sweep import summarize

    def figures(acc: float) -> dict:
        return {
            "accuracy": acc,
            "deo_m": acc / 10,
            "deo_a": 1.0,
            "worst_group_accuracy": 1.0,
            "suff_m": 1.0,
            "suff_a": 1.0,
        }

    def row(seed: int, matching: float, resnet: float, status: str = "ok") -> dict:
        listed = (
            {"matching": figures(matching), "resnet18": figures(resnet)}
            if status == "ok"
            else {"matching": {}, "resnet18": {}}
        )
        top = figures(matching) if status == "ok" else dict.fromkeys(figures(0.0), math.nan)
        return {
            "dataset": "cmnist",
            "ipc": 1,
            "backbone": "dm",
            "mode": "cobra",
            "seed": seed,
            **top,
            "architecture": "matching",
            "architectures": json.dumps(listed),
            "status": status,
            "error": "" if status == "ok" else "ValueError: boom",
        }

    cells = pd.DataFrame([row(0, 50.0, 30.0), row(1, 60.0, 40.0), row(2, math.nan, math.nan, "failed")])
    summary = summarize(cells)
    assert summary["architecture"].tolist() == ["matching", "resnet18"]
    assert list(summary.columns[:5]) == ["dataset", "ipc", "backbone", "mode", "architecture"]
    by_arch = summary.set_index("architecture")
    assert by_arch.loc["matching", "accuracy_mean"] == pytest.approx(55.0)
    assert by_arch.loc["resnet18", "accuracy_mean"] == pytest.approx(35.0)
    assert by_arch.loc["resnet18", "deo_m_mean"] == pytest.approx(3.5)
    assert (by_arch["seeds"] == 2).all() and (by_arch["status"] == "partial").all()  # the failed seed counts in each
    old = cells.drop(columns=["architecture", "architectures"]).iloc[:2]  # records of an fdd before architectures
    assert summarize(old)["architecture"].tolist() == ["matching"]
