"""The networks that embed, match and are evaluated: the ConvNet of the field and an MLP for rows.

:func:`build_network` builds the architecture a :class:`fdd.config.NetworkConfig` names;
:func:`reset_parameters_` re-draws any of them in place.
"""

from fdd.models.mlp import MLP, build_mlp
from fdd.models.networks import ConvNet, build_convnet, build_network
from fdd.models.parameters import reset_parameters_

__all__ = ["MLP", "ConvNet", "build_convnet", "build_mlp", "build_network", "reset_parameters_"]
