"""The ConvNet used for distillation and evaluation in this field.

``ConvNet(depth=3, width=128)`` is the network of DC/DSA/DM/FairDD/COBRA: ``depth``
blocks of 3x3 convolution (padding 1) -> instance norm -> ReLU -> 2x2 average pooling,
then a linear classifier on the flattened features. Instance norm is a ``GroupNorm``
with one group per channel and affine parameters, as in the reference code
(:class:`InstanceNorm`, which also keeps bfloat16 activations in bfloat16).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fdd.config import NetworkConfig
from fdd.models.mlp import MLP, build_mlp
from fdd.models.parameters import reset_parameters_

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "AvgPool2x2",
    "ConvNet",
    "InstanceNorm",
    "NORMS",
    "Norm",
    "POOLINGS",
    "Pooling",
    "build_convnet",
    "build_network",
    "reset_parameters_",
]


Norm = Literal["instancenorm", "batchnorm", "none"]
Pooling = Literal["avgpooling", "maxpooling", "none"]
Activation = Literal["relu", "sigmoid", "leakyrelu"]
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "leakyrelu")
NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "none")
POOLINGS: tuple[str, ...] = ("avgpooling", "maxpooling", "none")

ERR_CHOICE = "{name} must be one of {allowed}; got {value!r}"
ERR_MLP_DEPTH = "network.architecture='mlp' needs an integer network.depth (hidden layers, 1..8); got 'auto'"
ERR_POSITIVE = "{name} must be a positive integer; got {value!r}"
ERR_TOO_DEEP = (
    "depth={depth} pooling layers shrink a {size}x{size} image below one pixel; "
    "use depth <= {max_depth} for this image size"
)


class InstanceNorm(nn.GroupNorm):
    """Instance norm as the reference builds it: ``GroupNorm(channels, channels)``, affine.

    In fp32 it is ``nn.GroupNorm`` itself. A bfloat16 or float16 input (a convolution's output
    under autocast) is normalised with fp32 statistics and fp32 affine parameters and returned
    in the input's dtype, where autocast would run ``group_norm`` in fp32 and hand fp32
    activations to the ReLU, the pooling and the next convolution's cast. Under
    ``torch.compile`` the cast, the reduction and the affine map fuse, so the block reads and
    writes 16-bit activations: the "bf16 activations, fp32 statistics" of ``precision: bf16``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(device_type=x.device.type, enabled=False):
                weight = None if self.weight is None else self.weight.float()  # no copy when fp32
                bias = None if self.bias is None else self.bias.float()
                out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
            return out.to(x.dtype)
        return super().forward(x)


def _norm_layer(norm: str, width: int) -> nn.Module:
    if norm == "instancenorm":
        return InstanceNorm(width)
    if norm == "batchnorm":
        return nn.BatchNorm2d(width)
    return nn.Identity()


class AvgPool2x2(nn.Module):
    """``nn.AvgPool2d(kernel_size=2, stride=2)`` as a reshape and a mean.

    The same values (an odd last row or column is dropped, as the pooling layer drops
    it; sums of four in another order, so equal to rounding), but the backward pass is an
    element-wise broadcast instead of PyTorch's ``avg_pool2d_backward`` kernel, which
    took 16% of the kernel time of an evaluation epoch on an H200
    (``benchmarks/results/profile_cuda_h200_before_whole_step.md``).
    """

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2] // 2, x.shape[-1] // 2
        x = x[..., : 2 * height, : 2 * width]
        return x.unflatten(-1, (width, 2)).unflatten(-3, (height, 2)).mean(dim=(-3, -1))


def _activation_layer(activation: str) -> nn.Module:
    if activation == "sigmoid":
        return nn.Sigmoid()
    if activation == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.ReLU(inplace=True)


def _pool_layer(pooling: str) -> nn.Module:
    if pooling == "avgpooling":
        return AvgPool2x2()
    if pooling == "maxpooling":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Identity()


class ConvNet(nn.Module):
    """ConvNet-``depth`` of width ``width`` for ``channels`` x ``image_size`` x ``image_size``.

    Parameters
    ----------
    channels : int
        Input channels (3 for the coloured datasets).
    num_classes : int
        Outputs of the linear classifier.
    image_size : int
        Height and width of the (square) input images.
    width, depth : int
        Channels per convolution and number of conv blocks (128 and 3 in the papers).
    norm : {"instancenorm", "batchnorm", "none"}
    pooling : {"avgpooling", "maxpooling", "none"}
    activation : {"relu", "sigmoid", "leakyrelu"}
        The non-linearity of every block (the reference's ConvNet ablations: ReLU, sigmoid,
        leaky ReLU with slope 0.01).

    Notes
    -----
    :meth:`embed` returns the penultimate features, the flattened output of the last
    block (``width * (image_size / 2**depth)**2`` values, 2048 for 32x32 inputs); DM
    matches the means of these embeddings.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,
        depth: int = 3,
        norm: Norm = "instancenorm",
        pooling: Pooling = "avgpooling",
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        for name, value in (
            ("channels", channels),
            ("num_classes", num_classes),
            ("image_size", image_size),
            ("width", width),
            ("depth", depth),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(ERR_POSITIVE.format(name=name, value=value))
        if norm not in NORMS:
            raise ValueError(ERR_CHOICE.format(name="norm", allowed=NORMS, value=norm))
        if pooling not in POOLINGS:
            raise ValueError(ERR_CHOICE.format(name="pooling", allowed=POOLINGS, value=pooling))
        if activation not in ACTIVATIONS:
            raise ValueError(ERR_CHOICE.format(name="activation", allowed=ACTIVATIONS, value=activation))
        size = image_size
        layers: list[nn.Module] = []
        in_channels = channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
                _norm_layer(norm, width),
                _activation_layer(activation),
                _pool_layer(pooling),
            ]
            in_channels = width
            if pooling != "none":
                size //= 2
        if size < 1:
            max_depth = max(int(image_size).bit_length() - 1, 1)
            raise ValueError(ERR_TOO_DEEP.format(depth=depth, size=image_size, max_depth=max_depth))
        self.features = nn.Sequential(*layers)
        self.embedding_dim = width * size * size
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features, shape (N, embedding_dim)."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def build_convnet(
    *,
    channels: int,
    num_classes: int,
    image_size: int,
    width: int = 128,
    depth: int = 3,
    norm: Norm = "instancenorm",
    pooling: Pooling = "avgpooling",
    activation: Activation = "relu",
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> ConvNet:
    """A freshly initialised :class:`ConvNet`, deterministic when ``seed`` is given.

    With a seed the parameters are drawn by :func:`reset_parameters_` from a private
    generator, leaving the global CPU and CUDA random states untouched.
    """
    with torch.random.fork_rng(devices=[]):  # construction draws from the global CPU RNG: restore it
        net = ConvNet(
            channels=channels,
            num_classes=num_classes,
            image_size=image_size,
            width=width,
            depth=depth,
            norm=norm,
            pooling=pooling,
            activation=activation,
        )
    if seed is not None:
        reset_parameters_(net, generator=torch.Generator().manual_seed(seed))
    return net.to(device)


def build_network(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    network: NetworkConfig,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> ConvNet | MLP:
    """The network of ``network.architecture`` for inputs of shape ``(C, H, W)``.

    The ConvNet's depth is ``network.resolved_depth(W)`` (``'auto'`` follows the image side).

    ``"convnet"``: :class:`ConvNet` on ``C`` x ``H`` x ``H`` images; ``"mlp"``:
    :class:`fdd.models.mlp.MLP` on the ``C * H * W`` flattened values (tabular rows are stored
    as ``(F, 1, 1)``). Both expose ``embed`` (the penultimate features) and ``forward``.
    """
    if network.architecture == "mlp":
        if network.depth == "auto":
            raise ValueError(ERR_MLP_DEPTH)
        return build_mlp(
            in_features=math.prod(input_shape),
            num_classes=num_classes,
            width=network.width,
            depth=network.depth,
            norm=network.norm,
            seed=seed,
            device=device,
        )
    return build_convnet(
        channels=input_shape[0],
        num_classes=num_classes,
        image_size=input_shape[1],
        width=network.width,
        depth=network.resolved_depth(input_shape[-1]),
        norm=network.norm,
        pooling=network.pooling,
        seed=seed,
        device=device,
    )
