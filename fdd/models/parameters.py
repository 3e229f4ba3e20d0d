"""Re-drawing a network's parameters in place, shared by every architecture of :mod:`fdd.models`."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["reset_parameters_"]


@torch.no_grad()
def reset_parameters_(net: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw every parameter of ``net`` in place, as a fresh construction would.

    Convolutions and linear layers get PyTorch's default ``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))`` for weights and biases (the bound of ``kaiming_uniform_(a=sqrt(5))``);
    norm layers get weight 1 and bias 0. Drawing on the parameters' own device with
    ``generator`` lets the synthesis loop use a fresh random network every iteration
    without allocating a new module.
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / fan_in**0.5
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
            if module.weight is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
    return net
