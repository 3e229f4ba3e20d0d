"""fdd: fair dataset distillation (COBRA, cross-group barycenter alignment).

Distil a dataset with a protected attribute into a small synthetic set whose models are
accurate and fair across the groups (docs/method.md). From Python::

    import fdd

    config = fdd.parse_config({"synthesis": {"ipc": 10, "modes": ["cobra"]}})
    data = fdd.prepare_dataset(config.data, workspace=".")
    result = fdd.synthesize(data.train, mode="cobra", config=config.synthesis, network=config.network, seed=0)
    audit = fdd.audit_synthetic(result.synthetic, data.test, config=config.audit, network=config.network)
    print(audit.summary["deo_m"]["mean"])  # DEO_M (%), mean over the evaluation models

The subpackages, bottom to top (docs/architecture.md): :mod:`fdd.datasets`,
:mod:`fdd.models`, :mod:`fdd.transport`, :mod:`fdd.distillation`, :mod:`fdd.fairness`,
:mod:`fdd.report`; :mod:`fdd.config` holds the typed settings. ``__all__`` of a module is
its public API; everything else (the ``ERR_*`` message templates included) may change.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fdd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The public names and the module each lives in. They are loaded on first use (PEP 562):
# `import fdd.config` (what `fdd --help` needs) then does not pull in torch, torchvision,
# matplotlib and POT through this file.
_EXPORTS: dict[str, str] = {
    "AuditConfig": "fdd.config",
    "ConfigError": "fdd.config",
    "DataConfig": "fdd.config",
    "NetworkConfig": "fdd.config",
    "PipelineConfig": "fdd.config",
    "SynthesisConfig": "fdd.config",
    "parse_config": "fdd.config",
    "GroupedImages": "fdd.datasets",
    "PreparedDataset": "fdd.datasets",
    "SyntheticSet": "fdd.datasets",
    "prepare_dataset": "fdd.datasets",
    "build_network": "fdd.models",
    "free_support_barycenter": "fdd.transport",
    "SynthesisResult": "fdd.distillation",
    "build_synthesizer": "fdd.distillation",
    "synthesize": "fdd.distillation",
    "AuditResult": "fdd.fairness",
    "FairnessReport": "fdd.fairness",
    "audit_synthetic": "fdd.fairness",
    "fairness_report": "fdd.fairness",
}

__all__ = [
    "__version__",
    "AuditConfig",
    "ConfigError",
    "DataConfig",
    "NetworkConfig",
    "PipelineConfig",
    "SynthesisConfig",
    "parse_config",
    "GroupedImages",
    "PreparedDataset",
    "SyntheticSet",
    "prepare_dataset",
    "build_network",
    "free_support_barycenter",
    "SynthesisResult",
    "build_synthesizer",
    "synthesize",
    "AuditResult",
    "FairnessReport",
    "audit_synthetic",
    "fairness_report",
]

if TYPE_CHECKING:
    from fdd.config import (
        AuditConfig,
        ConfigError,
        DataConfig,
        NetworkConfig,
        PipelineConfig,
        SynthesisConfig,
        parse_config,
    )
    from fdd.datasets import GroupedImages, PreparedDataset, SyntheticSet, prepare_dataset
    from fdd.distillation import SynthesisResult, build_synthesizer, synthesize
    from fdd.fairness import AuditResult, FairnessReport, audit_synthetic, fairness_report
    from fdd.models import build_network
    from fdd.transport import free_support_barycenter


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fdd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
