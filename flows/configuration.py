"""Reading ``params.yaml`` (plus a preset and overrides) into the validated configuration.

Kept free of Prefect so that a bad configuration is rejected before anything starts or
writes (no Prefect home, no workspace folder, no lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fdd.config import ConfigError, PipelineConfig, deep_merge, parse_config


def load_config(
    path: str | Path = "params.yaml",
    *,
    preset: str | Path | Sequence[str | Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Read ``params.yaml``, merge optional preset files (in order) and overrides, validate once."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        presets = [] if preset is None else [preset] if isinstance(preset, (str, Path)) else list(preset)
        for one in presets:
            raw = deep_merge(raw, yaml.safe_load(Path(one).read_text()) or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse YAML: {exc}") from None
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_config(raw)


