"""Tests of fdd.models.networks: the ConvNet, build_convnet and reset_parameters_."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fdd.models import networks as N
from fdd.models.networks import ConvNet, build_convnet, reset_parameters_


def small(**kwargs) -> ConvNet:
    args = dict(channels=3, num_classes=4, image_size=8, width=8, depth=2)
    args.update(kwargs)
    return ConvNet(**args)


@pytest.mark.parametrize(
    "width, size, depth, expected",
    [
        (128, 32, 3, 2048),
        (8, 8, 2, 8 * 2 * 2),
        (8, 16, 3, 8 * 2 * 2),
        (4, 16, 1, 4 * 8 * 8),
        (8, 8, 3, 8),
        (8, 28, 3, 8 * 3 * 3),
    ],
)
def test_embedding_dim_formula(width, size, depth, expected):
    net = ConvNet(channels=3, num_classes=10, image_size=size, width=width, depth=depth)
    assert net.embedding_dim == expected == width * (size // 2**depth) ** 2
    assert net.classifier.in_features == expected
    x = torch.randn(2, 3, size, size)
    assert net.embed(x).shape == (2, expected)
    assert net(x).shape == (2, 10)


def test_reference_architecture_layers():
    net = ConvNet(channels=3, num_classes=10, image_size=32)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, nn.GroupNorm)]
    pools = [m for m in net.features if isinstance(m, N.AvgPool2x2)]
    relus = [m for m in net.features if isinstance(m, nn.ReLU)]
    assert len(convs) == len(norms) == len(pools) == len(relus) == 3
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.out_channels == 128 for c in convs)
    assert convs[0].in_channels == 3 and convs[1].in_channels == 128
    # instance norm: one group per channel, affine
    assert all(n.num_groups == 128 and n.num_channels == 128 and n.affine for n in norms)
    assert net.embedding_dim == 2048


def test_forward_is_classifier_of_embedding():
    net = small()
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(net(x), net.classifier(net.embed(x)))


@pytest.mark.parametrize(
    "norm, cls", [("instancenorm", nn.GroupNorm), ("batchnorm", nn.BatchNorm2d), ("none", nn.Identity)]
)
def test_norm_choices(norm, cls):
    net = small(norm=norm)
    assert isinstance(net.features[1], cls)
    assert net.embed(torch.randn(2, 3, 8, 8)).shape == (2, net.embedding_dim)


def test_instancenorm_normalises_each_channel_per_image():
    net = small(depth=1, norm="instancenorm", pooling="none")
    x = torch.randn(2, 3, 8, 8)
    h = net.features[1](net.features[0](x))  # conv -> norm, default affine (1, 0)
    torch.testing.assert_close(h.mean(dim=(2, 3)), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(dim=(2, 3), unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)


def _affine_instance_norm(channels: int = 6) -> tuple[N.InstanceNorm, nn.GroupNorm]:
    norm = N.InstanceNorm(channels)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, channels))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    plain = nn.GroupNorm(channels, channels, affine=True)
    plain.load_state_dict(norm.state_dict())
    return norm, plain


def test_instance_norm_is_group_norm_in_fp32():
    norm, plain = _affine_instance_norm()
    x = torch.randn(3, 6, 5, 7) * 4 + 2
    assert torch.equal(norm(x), plain(x))
    assert list(norm.state_dict()) == ["weight", "bias"]  # checkpoints of the GroupNorm era still load


def test_instance_norm_keeps_bf16_activations_with_fp32_statistics(monkeypatch):
    """A bf16 input is normalised in fp32 (the statistics and the affine map) and handed on in
    bf16. nn.GroupNorm on the CPU would normalise the bf16 tensor itself, and CUDA autocast
    would hand fp32 on (tests/test_cuda.py checks that case)."""
    norm, plain = _affine_instance_norm()
    seen = []
    group_norm = torch.nn.functional.group_norm

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return group_norm(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "group_norm", spy)
    x = (torch.randn(3, 6, 5, 7) * 4 + 200).bfloat16()
    out = norm(x)
    assert seen == [torch.float32]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, plain(x.float()).bfloat16())  # the fp32 norm of the bf16 values, rounded once
    out.float().sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.dtype == torch.float32
    seen.clear()
    full = norm(x.float())  # fp32: GroupNorm's own path
    assert seen == [torch.float32] and torch.equal(full, plain(x.float()))


def test_instance_norm_with_bf16_parameters():
    norm, plain = _affine_instance_norm()
    low = norm.to(torch.bfloat16)
    x = torch.randn(2, 6, 4, 4).bfloat16()
    assert low(x).dtype == torch.bfloat16


def test_convnet_under_bf16_autocast_stays_close_to_fp32():
    """Equivalence, not the dtype path (the CPU's autocast leaves group_norm in bf16 either way)."""
    net = build_convnet(channels=3, num_classes=4, image_size=16, width=8, depth=2, seed=0)
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.embed(x)
    assert low.dtype == torch.bfloat16
    full = net.embed(x)
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize(
    "pooling, cls, dim",
    [
        ("avgpooling", N.AvgPool2x2, 8 * 2 * 2),
        ("maxpooling", nn.MaxPool2d, 8 * 2 * 2),
        ("none", nn.Identity, 8 * 8 * 8),
    ],
)
def test_pooling_choices(pooling, cls, dim):
    net = small(pooling=pooling)
    assert isinstance(net.features[3], cls)
    assert net.embedding_dim == dim
    assert net.embed(torch.randn(2, 3, 8, 8)).shape == (2, dim)


def test_avg_vs_max_pooling_values():
    x = torch.randn(1, 3, 8, 8)
    avg = build_convnet(channels=3, num_classes=2, image_size=8, width=8, depth=1, norm="none", seed=0)
    mx = build_convnet(
        channels=3, num_classes=2, image_size=8, width=8, depth=1, norm="none", pooling="maxpooling", seed=0
    )
    h = torch.relu(avg.features[0](x))
    torch.testing.assert_close(avg.embed(x), nn.functional.avg_pool2d(h, 2).flatten(1))
    torch.testing.assert_close(mx.embed(x), nn.functional.max_pool2d(h, 2).flatten(1))


@pytest.mark.parametrize("name", ["channels", "num_classes", "image_size", "width", "depth"])
@pytest.mark.parametrize("value", [0, -2, 2.0, "3"])
def test_positive_int_errors(name, value):
    args = dict(channels=3, num_classes=4, image_size=8, width=8, depth=2)
    args[name] = value
    with pytest.raises(ValueError, match=re.escape(N.ERR_POSITIVE.format(name=name, value=value))):
        ConvNet(**args)


def test_choice_errors():
    with pytest.raises(ValueError, match="norm must be one of") as info:
        small(norm="layernorm")
    assert "'layernorm'" in str(info.value) and "instancenorm" in str(info.value)
    with pytest.raises(ValueError, match="pooling must be one of") as info:
        small(pooling="avg")
    assert "'avg'" in str(info.value)


def test_too_deep_error():
    with pytest.raises(ValueError, match="depth=4 pooling layers shrink a 8x8") as info:
        small(image_size=8, depth=4)
    assert "depth <= 3" in str(info.value)
    # no pooling: any depth is fine
    assert small(image_size=8, depth=4, pooling="none").embedding_dim == 8 * 64


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_build_convnet_seed_is_deterministic_and_isolated():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_convnet(channels=3, num_classes=4, image_size=8, width=8, depth=2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    b = build_convnet(channels=3, num_classes=4, image_size=8, width=8, depth=2, seed=7)
    c = build_convnet(channels=3, num_classes=4, image_size=8, width=8, depth=2, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b)))
    assert not all(torch.equal(p, q) for p, q in zip(params(a), params(c)))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


def test_build_convnet_passes_architecture():
    net = build_convnet(
        channels=1,
        num_classes=5,
        image_size=16,
        width=4,
        depth=3,
        norm="batchnorm",
        pooling="maxpooling",
        seed=0,
        device="cpu",
    )
    assert net.embedding_dim == 4 * 2 * 2
    assert isinstance(net.features[1], nn.BatchNorm2d) and isinstance(net.features[3], nn.MaxPool2d)
    assert net.classifier.out_features == 5
    assert net.features[0].in_channels == 1


def test_reset_parameters_deterministic_fresh_and_bounded():
    net = small(norm="instancenorm")
    # perturb the norm parameters to check they are reset
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.fill_(3.0)
                m.bias.fill_(-2.0)
    g = torch.Generator().manual_seed(5)
    reset_parameters_(net, generator=g)
    first = params(net)
    reset_parameters_(net, generator=g)  # same generator, advanced: fresh values
    second = params(net)
    g2 = torch.Generator().manual_seed(5)
    reset_parameters_(net, generator=g2)
    third = params(net)
    assert all(torch.equal(p, q) for p, q in zip(first, third))
    conv_and_linear = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = [n for n, _ in net.named_parameters()]
    for name, p, q in zip(names, first, second):
        owner = net.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(owner, (nn.Conv2d, nn.Linear)):
            assert not torch.equal(p, q), name
    for m in conv_and_linear:
        fan_in = m.weight[0].numel()
        bound = 1.0 / fan_in**0.5
        for t in (m.weight.detach(), m.bias.detach()):
            assert float(t.abs().max()) <= bound
            # values spread over the range, not degenerate
            assert float(t.abs().max()) > 0.5 * bound
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_reset_parameters_matches_default_init_bounds_statistically():
    # PyTorch's default init of a Conv2d has the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)) law
    conv = nn.Conv2d(8, 16, 3)
    fan_in = 8 * 9
    reset_parameters_(conv, generator=torch.Generator().manual_seed(0))
    w = conv.weight.detach()
    # uniform on [-b, b] has variance b^2/3
    torch.testing.assert_close(w.var(), torch.tensor(1.0 / fan_in / 3), rtol=0.15, atol=0)


def test_reset_parameters_batchnorm_running_stats():
    net = small(norm="batchnorm")
    net.train()
    net(torch.randn(4, 3, 8, 8) * 5 + 3)
    bn = net.features[1]
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, torch.zeros(8))
    with torch.no_grad():
        bn.weight.fill_(2.0)
    reset_parameters_(net, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))


def test_reset_parameters_returns_net_and_no_grad_tracking():
    net = small()
    out = reset_parameters_(net, generator=torch.Generator().manual_seed(0))
    assert out is net
    assert all(p.grad_fn is None and p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_avg_pool_2x2_equals_torch_avg_pool(size):
    from fdd.models.networks import AvgPool2x2

    x = torch.randn(3, 4, *size, requires_grad=True)
    ours, theirs = AvgPool2x2()(x), nn.AvgPool2d(kernel_size=2, stride=2)(x)
    assert ours.shape == theirs.shape == (3, 4, size[0] // 2, size[1] // 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    weights = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_theirs,) = torch.autograd.grad((torch.nn.functional.avg_pool2d(x, 2, 2) * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-6, atol=1e-6)
