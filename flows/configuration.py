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
ERR_NO_RECORDS = "fdd sweep --from-records needs sweep.records (the folder of the cells' records); it is not set"
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
    """``config`` with the cell's dataset (or ``sweep.variants`` entry), IPC, backbone, mode and seed."""
    raw = config.model_dump(mode="json")
    variant = config.sweep.variants.get(cell["dataset"])
    if variant is None:
        raw["data"]["dataset"] = cell["dataset"]
    else:
        raw["data"] = deep_merge(raw["data"], variant)
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
