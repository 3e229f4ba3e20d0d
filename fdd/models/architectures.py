"""The evaluation networks of ``audit.architectures``: ConvNet variants, AlexNet, VGG11, ResNet18, MLP.

The reference codebases (DC/DM's ``utils.get_network``, used by COBRA and FairDD) evaluate a
distilled set on networks other than the one it was matched with. :func:`build_architecture`
builds one from a spec of :func:`fdd.config.parse_architecture` (``convnet-w64-bn``,
``resnet18-bn``, ...; the grammar and defaults are in docs/evaluation.md) for any input shape
``(C, H, W)``: every head is sized from the input, so 28x28, 32x32 and 64x64 images all work
(the COBRA reference's AlexNet and ResNet18 heads are fixed for 64x64 inputs).

- ``convnet``: :class:`fdd.models.networks.ConvNet` (width 128, depth following the image
  side as ``network.depth: auto``, instance norm, average pooling, ReLU unless the spec says
  otherwise).
- ``alexnet``: the reference's 32x32 AlexNet (five convolutions 128-192-256-192-192, three
  2x2 max-pools, one linear layer), its linear layer sized from the input. torchvision's
  AlexNet is the ImageNet network (11x11 stride-4 stem, 4096-unit head, adaptive 6x6 pool),
  which on 32x32 images keeps almost nothing of the input; it is not what the field evaluates.
- ``vgg11``: the reference's VGG11 (configuration A of Simonyan and Zisserman, one linear
  layer on the 512 final channels), with a norm after each convolution (instance norm by
  default, as the reference's ``VGG11``; ``bn`` is its ``VGG11BN``). torchvision's
  ``vgg.make_layers`` is not used: it fixes 3 input channels and offers batch norm or
  nothing, not the reference's instance norm, and its VGG head is the ImageNet one.
- ``resnet18``: :class:`torchvision.models.ResNet` with :class:`torchvision.models.resnet.BasicBlock`
  and layers (2, 2, 2, 2), its stem replaced by the CIFAR one of the reference (3x3 stride-1
  convolution, no max-pool); adaptive average pooling before the linear layer. Instance norm
  by default, as the reference's ``ResNet18`` (its cross-architecture network); ``resnet18-bn``
  is the reference's ``ResNet18BN``, ``resnet18-nonorm`` has none.
- ``mlp``: :class:`fdd.models.mlp.MLP` on the flattened input (the network of tabular data).
- ``matching``: the network of the ``network`` section, i.e. the one synthesis matched with.

Max-pools use ``ceil_mode=True``: identical to the reference's pools on even sides, and a
28x28 input still reaches VGG11's fifth pool (28, 14, 7, 4, 2, 1) instead of vanishing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock

from fdd.config import DEFAULT_DEPTHS, DEFAULT_WIDTHS, ArchitectureSpec, NetworkConfig, parse_architecture
from fdd.models.mlp import build_mlp
from fdd.models.networks import InstanceNorm, build_convnet, build_network

__all__ = ["AlexNet", "VGG11", "VGG11_LAYERS", "build_architecture", "has_buffers", "resnet18"]

ERR_INPUT_SHAPE = "input_shape must be (channels, height, width) of positive sizes; got {shape}"
ERR_TOO_SMALL = "{name} needs images of at least {minimum}x{minimum} pixels; got {height}x{width}"

#: VGG11's layers (configuration A): output channels of each 3x3 convolution, "M" a 2x2 max-pool.
VGG11_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _norm(norm: str) -> Callable[[int], nn.Module]:
    """A factory ``channels -> layer`` for a norm name (instance norm as in fdd's ConvNet: GroupNorm, one group per channel)."""
    if norm == "instancenorm":
        return InstanceNorm
    if norm == "batchnorm":
        return nn.BatchNorm2d
    return lambda c: nn.Identity()


def _pooled(size: int, pools: int) -> int:
    for _ in range(pools):
        size = math.ceil(size / 2)
    return size


class AlexNet(nn.Module):
    """The reference's AlexNet for small images, its linear layer sized for ``image_size``.

    Parameters
    ----------
    channels, num_classes : int
    image_size : tuple of int
        (height, width) of the inputs.
    norm : {"none", "instancenorm", "batchnorm"}
        Applied after each convolution ("none" in the reference's ``AlexNet``, batch norm in
        its ``AlexNetBN``).
    """

    def __init__(self, *, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "none") -> None:
        super().__init__()
        make = _norm(norm)
        pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=5, padding=2),
            make(128),
            nn.ReLU(inplace=True),
            pool,
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            make(192),
            nn.ReLU(inplace=True),
            pool,
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            make(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            make(192),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            make(192),
            nn.ReLU(inplace=True),
            pool,
        )
        height, width = (_pooled(s, 3) for s in image_size)
        self.embedding_dim = 192 * height * width
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class VGG11(nn.Module):
    """The reference's VGG11: :data:`VGG11_LAYERS` with a norm after each convolution, one linear layer.

    The linear layer reads ``512 x h x w`` values, ``h x w`` the final map of the input
    (1x1 for 28x28 and 32x32 images, as in the reference; 2x2 for 64x64).
    """

    def __init__(
        self, *, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        make = _norm(norm)
        layers: list[nn.Module] = []
        in_channels = channels
        for item in VGG11_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                out = int(item)
                layers += [nn.Conv2d(in_channels, out, kernel_size=3, padding=1), make(out), nn.ReLU(inplace=True)]
                in_channels = out
        self.features = nn.Sequential(*layers)
        pools = VGG11_LAYERS.count("M")
        height, width = (_pooled(s, pools) for s in image_size)
        self.embedding_dim = in_channels * height * width
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def resnet18(*, channels: int, num_classes: int, norm: str = "instancenorm") -> ResNet:
    """torchvision's ResNet-18 with the CIFAR stem of the reference (3x3 stride-1 conv, no max-pool).

    The head is torchvision's adaptive average pool and linear layer, so any input side of
    at least 8 pixels works.
    """
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=_norm(norm))
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises conv1
    net.maxpool = nn.Identity()
    return net


def has_buffers(net: nn.Module) -> bool:
    """Whether ``net`` keeps buffers (batch norm's running statistics): such networks stack only in
    the loop forward (:func:`fdd.fairness.audit.train_stacked`), else they train one at a time."""
    return any(True for _ in net.buffers())


def build_architecture(
    name: str | ArchitectureSpec,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    network: NetworkConfig,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A freshly initialised evaluation network of spec ``name`` for inputs of shape ``(C, H, W)``.

    Parameters
    ----------
    name : str or ArchitectureSpec
        A spec of :func:`fdd.config.parse_architecture` (``"matching"``, ``"convnet-w64"``,
        ``"resnet18-bn"``, ...).
    input_shape : tuple of int
        ``(C, H, W)``; tabular rows are ``(F, 1, 1)`` and take ``mlp`` or ``matching``.
    network : NetworkConfig
        The network section: what ``matching`` builds.
    seed : int, optional
        Deterministic parameters; the global random state is left untouched either way.

    Raises
    ------
    ValueError
        For an unknown spec (listing the allowed ones) or an input too small for the network.
    """
    spec = parse_architecture(name) if isinstance(name, str) else name
    if len(input_shape) != 3 or any(not isinstance(s, int) or s <= 0 for s in input_shape):
        raise ValueError(ERR_INPUT_SHAPE.format(shape=input_shape))
    channels, height, width = input_shape
    if spec.base == "matching":
        return build_network(
            input_shape=input_shape, num_classes=num_classes, network=network, seed=seed, device=device
        )
    if spec.base == "mlp":
        return build_mlp(
            in_features=math.prod(input_shape),
            num_classes=num_classes,
            width=spec.width or DEFAULT_WIDTHS["mlp"],
            depth=spec.depth or DEFAULT_DEPTHS["mlp"],
            seed=seed,
            device=device,
        )
    if spec.base == "convnet":
        depth = spec.depth or NetworkConfig(depth="auto").resolved_depth(width)
        return build_convnet(
            channels=channels,
            num_classes=num_classes,
            image_size=height,
            width=spec.width or DEFAULT_WIDTHS["convnet"],
            depth=depth,
            norm=spec.norm,  # type: ignore[arg-type]
            pooling=spec.pooling,  # type: ignore[arg-type]
            activation=spec.activation,  # type: ignore[arg-type]
            seed=seed,
            device=device,
        )
    if min(height, width) < 8:
        raise ValueError(ERR_TOO_SMALL.format(name=spec.name, minimum=8, height=height, width=width))
    with torch.random.fork_rng(devices=[]):  # construction draws from the global CPU RNG: restore it
        if seed is not None:
            torch.manual_seed(seed)
        net: nn.Module
        if spec.base == "alexnet":
            net = AlexNet(channels=channels, num_classes=num_classes, image_size=(height, width), norm=spec.norm)
        elif spec.base == "vgg11":
            net = VGG11(channels=channels, num_classes=num_classes, image_size=(height, width), norm=spec.norm)
        else:
            net = resnet18(channels=channels, num_classes=num_classes, norm=spec.norm)
    return net.to(device)
