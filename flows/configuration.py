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

ERR_NO_CUDA = "runtime.device is 'cuda' but torch.cuda.is_available() is False on this machine; use 'cpu' or 'auto'"
CELL_KEYS: tuple[str, ...] = ("dataset", "ipc", "backbone", "mode", "seed")
ERR_SWEEP_CELLS = (
    "{count} of the {total} sweep cells do not validate (fix the sweep or data sections; nothing was run):\n{problems}"
)


ERR_PARAMS_MISSING = "configuration file {path} does not exist; pass --params PATH (default: params.yaml in the current folder)"
ERR_PARAMS_EMPTY = (
    "configuration file {path} is empty; expected a mapping of sections ({sections}): copy the shipped "
    "params.yaml (the quick CPU settings), or write `{{}}` to take every default (the full published schedule, for a GPU)"
)
ERR_NOT_A_FILE = "{what} {path} is a folder; expected a YAML file"
ERR_NOT_UTF8 = "{what} {path} is not UTF-8 text ({reason}); save it as UTF-8"
ERR_BAD_YAML = "{what} {path} is not valid YAML: {problem}"
ERR_NOT_MAPPING = (
    "{what} {path} must hold a mapping of sections (e.g. `synthesis: {{ipc: 10}}`); it holds a YAML {kind}"
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and where (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml_mapping(path: str | Path, *, what: str = "configuration file", allow_empty: bool = True) -> dict[str, Any]:
    """The mapping in the YAML file ``path``, or a :class:`ConfigError` naming the file and what is wrong.

    ``what`` names the file's role in messages (``configuration file``, ``preset``); an empty
    file is ``{}`` when ``allow_empty`` and an error otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(ERR_PARAMS_MISSING.format(path=path) if what == "configuration file" else f"{what} {path} does not exist")
    if path.is_dir():
        raise ConfigError(ERR_NOT_A_FILE.format(what=what, path=path))
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
        raise ConfigError(ERR_NOT_UTF8.format(what=what, path=path, reason=reason)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(ERR_BAD_YAML.format(what=what, path=path, problem=_yaml_problem(exc))) from None
    if raw is None:
        if not allow_empty:
            raise ConfigError(ERR_PARAMS_EMPTY.format(path=path, sections=", ".join(PipelineConfig.model_fields)))
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(ERR_NOT_MAPPING.format(what=what, path=path, kind=type(raw).__name__))
    return raw


def load_config(
    path: str | Path = "params.yaml",
    *,
    preset: str | Path | Sequence[str | Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Read ``params.yaml``, merge optional preset files (in order) and overrides, validate once.

    An empty ``params.yaml`` is refused (:data:`ERR_PARAMS_EMPTY`): the models' defaults are the
    full published schedule, meant for a GPU, so an empty or truncated file must not silently
    select them; ``{}`` selects them explicitly. Every problem with a file (missing, a folder,
    not UTF-8, not YAML, not a mapping) is a :class:`ConfigError` naming the file.
    """
    raw = read_yaml_mapping(path, allow_empty=False)
    presets = [] if preset is None else [preset] if isinstance(preset, (str, Path)) else list(preset)
    for one in presets:
        raw = deep_merge(raw, read_yaml_mapping(one, what="preset"))
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_config(raw)


def resolve_device(choice: str) -> str:
    """The device of ``runtime.device``: 'auto' is CUDA when present, else CPU; 'cuda' without one is an error."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(ERR_NO_CUDA)
    return choice


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
