"""Reading ``params.yaml`` (plus a preset and overrides) into the validated configuration.

Kept free of Prefect so that a bad configuration is rejected before anything starts or
writes (no Prefect home, no workspace folder, no lock).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fdd.config import ConfigError, PipelineConfig, SweepConfig, deep_merge, parse_config

CELL_KEYS: tuple[str, ...] = ("dataset", "ipc", "backbone", "mode", "seed")
ERR_SWEEP_CELLS = (
    "{count} of the {total} sweep cells do not validate (fix the sweep or data sections; nothing was run):\n{problems}"
)


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


def with_modes(config: PipelineConfig, modes: Sequence[str]) -> PipelineConfig:
    """``config`` distilling only ``modes``, validated again (a mode must suit the backbone)."""
    raw = config.model_dump(mode="json")
    raw["synthesis"]["modes"] = list(modes)
    return parse_config(raw)


def sweep_cells(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every cell of the grid, in the order dataset, ipc, backbone, mode, seed."""
    grid = itertools.product(sweep.datasets, sweep.ipcs, sweep.backbones, sweep.modes, sweep.seeds)
    return [dict(zip(CELL_KEYS, values)) for values in grid]


def cell_id(cell: dict[str, Any]) -> str:
    """A folder name for a cell, e.g. ``ipc10-dm-cobra-seed0``."""
    return f"ipc{cell['ipc']}-{cell['backbone']}-{cell['mode']}-seed{cell['seed']}"


def cell_config(config: PipelineConfig, cell: dict[str, Any]) -> PipelineConfig:
    """``config`` with the cell's dataset, IPC, backbone, mode and seed."""
    raw = config.model_dump(mode="json")
    raw["data"]["dataset"] = cell["dataset"]
    raw["synthesis"].update(ipc=cell["ipc"], backbone=cell["backbone"], modes=[cell["mode"]])
    raw["runtime"]["seed"] = cell["seed"]
    raw["audit"]["seed"] = cell["seed"]
    return parse_config(raw)


def sweep_cell_configs(config: PipelineConfig) -> list[tuple[dict[str, Any], PipelineConfig]]:
    """Every cell of the grid with its validated configuration, or one error naming every bad cell.

    The whole grid is checked before anything runs, so a sweep never stops half-way on a
    cell whose dataset, backbone and mode do not go together.
    """
    cells, problems = [], []
    for cell in sweep_cells(config.sweep):
        try:
            cells.append((cell, cell_config(config, cell)))
        except ConfigError as exc:
            reasons = [line.strip(" -").split(" (got {")[0] for line in str(exc).splitlines() if line.startswith("  - ")]
            problems.append(f"  - {cell['dataset']}-{cell_id(cell)}: {'; '.join(reasons) or str(exc)}")
    if problems:
        raise ConfigError(ERR_SWEEP_CELLS.format(count=len(problems), total=len(problems) + len(cells),
                                                 problems="\n".join(problems)))
    return cells


DEFAULT_SOURCE = "default"
OVERRIDE_SOURCE = "--set"
_MISSING = object()


def config_layers(
    path: str | Path = "params.yaml",
    *,
    preset: Sequence[str | Path] = (),
    preset_names: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The layers :func:`load_config` merges, in order, each with a label saying where it came from.

    ``params.yaml`` first, then each preset (labelled ``preset NAME`` with ``preset_names``,
    else by its path), then the ``--set`` overrides.
    """
    names = list(preset_names) if preset_names is not None else [str(p) for p in preset]
    layers = [(str(path), yaml.safe_load(Path(path).read_text()) or {})]
    layers += [(f"preset {name}", yaml.safe_load(Path(one).read_text()) or {}) for name, one in zip(names, preset)]
    if overrides:
        layers.append((OVERRIDE_SOURCE, overrides))
    return layers


def value_sources(config: PipelineConfig, layers: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """``{section.key: label}`` for every value of ``config``: the last layer that set it, else 'default'.

    Nested sections (``data.group_noise.seed``) are walked; lists (``synthesis.modes``,
    ``schedules``) are single values.
    """
    sources: dict[str, str] = {}

    def walk(resolved: Any, prefix: str) -> None:
        if isinstance(resolved, dict) and resolved:
            for key, value in resolved.items():
                walk(value, f"{prefix}.{key}" if prefix else key)
            return
        label = DEFAULT_SOURCE
        for name, raw in layers:
            node: Any = raw
            for part in prefix.split("."):
                node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is not _MISSING:
                label = name
        sources[prefix] = label

    walk(config.model_dump(mode="json"), "")
    return sources


def render_config(config: PipelineConfig, sources: dict[str, str]) -> str:
    """The resolved configuration as YAML, each value followed by ``# <where it came from>``.

    The text parses back (``yaml.safe_load``) to ``config.model_dump(mode='json')``.
    """
    lines: list[str] = []

    def scalar(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
        return text.removesuffix("\n").removesuffix("\n...").strip()

    def walk(node: dict[str, Any], prefix: str, indent: int) -> None:
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict) and value:
                lines.append(" " * indent + f"{key}:")
                walk(value, dotted, indent + 2)
            elif isinstance(value, list) and any(isinstance(item, dict) for item in value):  # e.g. schedules
                lines.append(" " * indent + f"{key}:  # {sources.get(dotted, DEFAULT_SOURCE)}")
                block = yaml.safe_dump(value, default_flow_style=False, width=10**9, sort_keys=False)
                lines.extend(" " * (indent + 2) + line for line in block.splitlines())
            else:
                lines.append(" " * indent + f"{key}: {scalar(value)}  # {sources.get(dotted, DEFAULT_SOURCE)}")

    walk(config.model_dump(mode="json"), "", 0)
    return "\n".join(lines) + "\n"
