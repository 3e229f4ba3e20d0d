"""A multilayer perceptron with the :class:`fdd.models.networks.ConvNet` interface, for tabular rows.

Rows are stored as ``(N, F, 1, 1)`` tensors (``F`` features as the channels of a 1x1
"image", see :mod:`fdd.datasets.adult`), so the data containers, the synthesis loop and the audit
work on them unchanged; the MLP flattens its input. With ``depth`` hidden layers of
``width`` units,

.. math::

    h_0 = \\operatorname{flatten}(x), \\qquad h_{i} = \\operatorname{ReLU}(W_i h_{i-1} + b_i),
    \\qquad \\operatorname{embed}(x) = h_{\\text{depth}}, \\qquad
    \\operatorname{forward}(x) = W_{\\text{out}}\\, h_{\\text{depth}} + b_{\\text{out}}

:meth:`MLP.embed` is the penultimate representation that DM matches, as for the ConvNet.
It has parameters only (no normalisation buffers), so :func:`fdd.fairness.audit.train_stacked`
trains several of them as one vectorised model, and
:func:`fdd.models.parameters.reset_parameters_` re-draws it as a fresh construction would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fdd.models.parameters import reset_parameters_

__all__ = ["MLP", "build_mlp"]

ERR_POSITIVE = "{name} must be a positive integer; got {value!r}"
ERR_NORM = "the MLP supports only norm='none'; got {value!r}"


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units, then a linear classifier.

    Parameters
    ----------
    in_features : int
        Input size after flattening (``F`` for rows stored as ``(N, F, 1, 1)``).
    num_classes : int
    width, depth : int
        Hidden units per layer and number of hidden layers.
    norm : {"none"}
        Accepted for symmetry with the ConvNet's settings; only "none" exists.
    """

    def __init__(
        self, *, in_features: int, num_classes: int, width: int = 128, depth: int = 2, norm: str = "none"
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_classes", num_classes),
            ("width", width),
            ("depth", depth),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(ERR_POSITIVE.format(name=name, value=value))
        if norm != "none":
            raise ValueError(ERR_NORM.format(value=norm))
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.features = nn.Sequential(*layers)
        self.embedding_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features, shape (N, width)."""
        return self.features(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def build_mlp(
    *,
    in_features: int,
    num_classes: int,
    width: int = 128,
    depth: int = 2,
    norm: str = "none",
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> MLP:
    """A freshly initialised :class:`MLP`, deterministic when ``seed`` is given.

    As :func:`fdd.models.networks.build_convnet`: construction leaves the global random state
    untouched, and a seed draws the parameters from a private generator.
    """
    with torch.random.fork_rng(devices=[]):
        net = MLP(in_features=in_features, num_classes=num_classes, width=width, depth=depth, norm=norm)
    if seed is not None:
        reset_parameters_(net, generator=torch.Generator().manual_seed(seed))
    return net.to(device)
