"""``torch.compile`` as the synthesis loops and the stacked audit use it.

Every compiled callable is built with ``dynamic=False``: one specialised build per input shape,
all made in the first, eager calls, so that a CUDA-graph capture never triggers a rebuild.
TorchDynamo keeps those builds per code object and, past ``torch._dynamo.config.recompile_limit``
(8 by default), runs that code object eagerly from then on, with only a warning. One process
of a sweep meets more shapes than that for the same code: :func:`fdd.distillation.augment.apply_dsa`
is compiled by the synthesis (real batch, synthetic set, warm-up batches) and by the audit (its
stacked batches), at every IPC of the grid (IPC 10, 50 and 100 give over a dozen shapes).
:func:`compile_static` therefore raises the limit to :data:`RECOMPILE_LIMIT` first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["RECOMPILE_LIMIT", "compile_static"]

#: The builds TorchDynamo keeps per code object once fdd compiles (its default: 8).
RECOMPILE_LIMIT = 64

F = TypeVar("F", bound=Callable[..., Any])


def compile_static(fn: F) -> F:
    """``torch.compile(fn, dynamic=False)``, with Dynamo's recompile limit raised to at least
    :data:`RECOMPILE_LIMIT` (never lowered)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # its name before torch 2.6
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(fn, dynamic=False)  # type: ignore[return-value]
