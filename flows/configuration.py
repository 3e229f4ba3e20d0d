"""Reading ``params.yaml`` (plus a preset and overrides) into the validated configuration.

The library's :class:`fdd.config.PipelineConfig` holds the sections a pipeline run reads;
:class:`FlowConfig` extends it with the orchestration sections that only the flows read
(``sweep``: the grid of ``fdd sweep``; ``schedules``: the deployments of ``fdd serve``).
``params.yaml`` is validated once, here, into a :class:`FlowConfig`.

Kept free of Prefect so that a bad configuration is rejected before anything starts or
writes (no Prefect home, no workspace folder, no lock).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator, model_validator

from fdd.config import DATASETS, Backbone, ConfigError, Mode, PipelineConfig, Section, deep_merge, parse_config

SWEEP_AXES: tuple[str, ...] = ("datasets", "ipcs", "backbones", "modes", "seeds", "lambdas")
#: The cell key of the ``sweep.lambdas`` axis (present only in the cells it applies to).
LAMBDA_KEY = "lambda"
#: The (backbone, mode) cells that ``sweep.lambdas`` multiplies: those synthesis.barycenter_lambda applies to.
LAMBDA_CELLS: tuple[tuple[str, str], ...] = (("dm", "cobra"),)
ERR_SWEEP_LAMBDAS = (
    "sweep.lambdas must list numbers in [0, 1] (synthesis.barycenter_lambda's range: 0 is vanilla's pooled "
    "target, 1 cobra's uniform barycenter), each once, at least one; got {value!r}"
)
ERR_EMPTY_AXIS = "sweep.{axis} must list at least one value"
ERR_SWEEP_DATASET = (
    "sweep.datasets lists {unknown}, which is neither a dataset ({datasets}) nor a name in sweep.variants ({variants})"
)
ERR_COMPUTE_ONLY_AXIS = "sweep.compute_only names {axis!r}; its keys must be among {axes}"
ERR_COMPUTE_ONLY_VALUE = "sweep.compute_only.{axis} lists {outside}, which sweep.{axis} does not ({allowed})"
ERR_VARIANT_NAME = (
    "sweep.variants names {names} are dataset names; give each variant a name of its own (e.g. cmnist-bg)"
)
ERR_VARIANT_DATASET = (
    "sweep.variants.{name} must set dataset (one of {datasets}), e.g. {{dataset: cmnist, bias: background}}"
)
ERR_SWEEP_PATH = "sweep.{field} must be a relative path inside the workspace (no leading '/', no '..'); got {value!r}"
ERR_DUPLICATE_AXIS = "sweep.{axis} lists {dupes} more than once; list each value at most once"
ERR_BAD_CRON = (
    "schedules[{name}].cron {value!r} is not a 5-field cron expression (minute hour day month weekday): {reason}"
)
ERR_BAD_TIMEZONE = "schedules[{name}].timezone {value!r} is not an IANA time zone name (e.g. 'UTC', 'Europe/Paris')"
ERR_DUPLICATE_SCHEDULES = "schedules lists the deployment name(s) {dupes} more than once; names must be unique"
ERR_MODE_NOT_DISTILL = "schedules[{name}].mode is only used by flow 'distill' (got flow {flow!r})"
SCHEDULE_FLOWS: tuple[str, ...] = ("compare", "distill", "sweep")


class SweepConfig(Section):
    """A grid of cells ``dataset x ipc x backbone x mode x seed`` (``fdd sweep``).

    Every cell distils the train split with one backbone and mode at one IPC and seed
    (``runtime.seed`` and ``audit.seed`` both set to the cell's seed), then audits it;
    the other settings come from the rest of ``params.yaml``. Results are summarised as
    mean and standard deviation over the seeds,
    :math:`\\bar m = \\frac1S\\sum_s m_s` and
    :math:`\\sigma = \\sqrt{\\frac1{S-1}\\sum_s (m_s-\\bar m)^2}` (sample std, blank for one seed).
    """

    datasets: tuple[str, ...] = Field(
        ("cmnist",),
        description="dataset names, or names of sweep.variants (a data-section override each, e.g. a bias)",
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named data-section overrides, e.g. {cmnist-bg: {dataset: cmnist, bias: background}}; "
        "a sweep.datasets entry that names one distils the data section merged with it",
    )
    ipcs: tuple[int, ...] = (10,)
    backbones: tuple[Backbone, ...] = ("dm",)
    modes: tuple[Mode, ...] = ("vanilla", "cobra")
    seeds: tuple[int, ...] = (0, 1, 2)
    n_workers: int = Field(2, ge=1, le=256, description="workers of the local Dask cluster (one GPU each on CUDA)")
    processes: bool = Field(
        False, description="local cluster workers as processes (True) or threads of this process (False)"
    )
    address: str | None = Field(
        None,
        description="scheduler address of an existing Dask cluster (e.g. tcp://10.0.0.5:8786); None starts a local one",
    )
    records: str | None = Field(
        None,
        description="folder (inside the workspace) of one JSON record per finished cell; a cell whose record "
        "matches its settings is not computed again, and the summary is built from the records (commit them "
        "to carry results across machines)",
    )
    replace_records: bool = Field(
        False,
        description="recompute the cells whose record in sweep.records was made with other settings and write "
        "their records anew; false (default): such a record stops the sweep before anything runs, naming it",
    )
    compute_only: dict[str, tuple[Any, ...]] | None = Field(
        None,
        description="compute only the missing cells on these axes, e.g. {ipcs: [10], datasets: [cmnist-bg]}; "
        "the other cells come from sweep.records or are reported as not run (for time-boxed runs)",
    )
    paper_table: str | None = Field(
        None,
        description="CSV path (inside the workspace) for the comparison with the published DM table "
        "(fdd.report.reproduction); a markdown rendering is written beside it",
    )
    paper_reasons: str | None = Field(
        None,
        description="CSV path (inside the workspace) of the reasons on record for rows of sweep.paper_table that "
        "differ from the published values: columns dataset,bias,ipc,mode,reason, each reason naming the measurement "
        "behind it (fdd.report.reproduction.read_reasons); appended to those rows' verdicts (unused without "
        "sweep.paper_table)",
    )
    results_table: str | None = Field(
        None,
        description="CSV path (inside the workspace) for the compact results table: one row per dataset, bias, IPC, "
        "mode and evaluation architecture, columns dataset,bias,ipc,mode,architecture,seeds,acc_mean,acc_std,"
        "deo_m_mean,deo_m_std,deo_a_mean (fdd.report.reproduction.results_table); a markdown rendering beside it",
    )
    frontier_table: str | None = Field(
        None,
        description="CSV path (inside the workspace) to publish the fairness-accuracy frontier to (data/sweep/"
        "frontier.csv: accuracy and DEO_M per mode and lambda, mean and std over seeds); its plot (.png) and a "
        "markdown rendering showing both are written beside it",
    )
    lambdas: tuple[float, ...] | None = Field(
        None,
        description="the frontier axis: the DM cobra cells run once per value as synthesis.barycenter_lambda "
        "(0: vanilla's pooled target, 1: cobra's uniform barycenter; e.g. [0, 0.25, 0.5, 0.75, 1]); the other "
        "cells are unchanged. None: no axis (cobra at synthesis.barycenter_lambda)",
    )

    @field_validator("lambdas", mode="before")
    @classmethod
    def _lambdas(cls, value: Any) -> Any:
        if value is None:
            return value
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in value
        )
        if not ok or len(set(value)) != len(value):
            raise ValueError(ERR_SWEEP_LAMBDAS.format(value=value))
        return tuple(float(v) for v in value)

    @field_validator("records", "paper_table", "paper_reasons", "results_table", "frontier_table")
    @classmethod
    def _inside_workspace(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            path = PurePosixPath(value)
            if path.is_absolute() or ".." in path.parts or not value.strip():
                raise ValueError(ERR_SWEEP_PATH.format(field=info.field_name, value=value))
        return value

    @model_validator(mode="after")
    def _known_datasets(self) -> SweepConfig:
        known = set(DATASETS) | set(self.variants)
        unknown = [d for d in self.datasets if d not in known]
        if unknown:
            raise ValueError(
                ERR_SWEEP_DATASET.format(unknown=unknown, datasets=list(DATASETS), variants=sorted(self.variants))
            )
        clash = sorted(set(self.variants) & set(DATASETS))
        if clash:
            raise ValueError(ERR_VARIANT_NAME.format(names=clash))
        for axis, values in (self.compute_only or {}).items():
            allowed = getattr(self, axis, None) if axis in SWEEP_AXES else None
            if allowed is None:
                raise ValueError(ERR_COMPUTE_ONLY_AXIS.format(axis=axis, axes=list(SWEEP_AXES)))
            outside = [v for v in values if v not in allowed]
            if outside:
                raise ValueError(ERR_COMPUTE_ONLY_VALUE.format(axis=axis, outside=outside, allowed=list(allowed)))
        for name, override in self.variants.items():
            if not override.get("dataset"):
                raise ValueError(ERR_VARIANT_DATASET.format(name=name, datasets=list(DATASETS)))
        return self

    @field_validator("datasets", "ipcs", "backbones", "modes", "seeds")
    @classmethod
    def _axis(cls, value: tuple[Any, ...], info: Any) -> tuple[Any, ...]:
        if not value:
            raise ValueError(ERR_EMPTY_AXIS.format(axis=info.field_name))
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise ValueError(ERR_DUPLICATE_AXIS.format(axis=info.field_name, dupes=dupes))
        if info.field_name == "ipcs" and not all(1 <= v <= 1000 for v in value):
            raise ValueError(f"sweep.ipcs must lie in [1, 1000]; got {list(value)}")
        if info.field_name == "seeds" and not all(v >= 0 for v in value):
            raise ValueError(f"sweep.seeds must be >= 0; got {list(value)}")
        return value


class ScheduleConfig(Section):
    """One scheduled deployment served by ``fdd serve``.

    ``parameters`` are ``params.yaml`` sections merged over the file for this deployment
    only (e.g. ``{synthesis: {ipc: 50}}``); the merged configuration is validated when
    the deployments are registered.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64, description="deployment name")
    flow: Literal["compare", "distill", "sweep"] = "compare"
    cron: str = Field(description="5-field cron expression, e.g. '0 2 * * *' (02:00 every day)")
    timezone: str = "UTC"
    mode: Mode | None = Field(None, description="the mode of a 'distill' deployment (default cobra)")
    parameters: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: Any) -> str:
        name = info.data.get("name", "?")
        if len(value.split()) != 5:
            raise ValueError(ERR_BAD_CRON.format(name=name, value=value, reason="expected 5 fields"))
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(ERR_BAD_CRON.format(name=name, value=value, reason=exc)) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str, info: Any) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(ERR_BAD_TIMEZONE.format(name=info.data.get("name", "?"), value=value)) from None
        return value

    @model_validator(mode="after")
    def _mode_only_for_distill(self) -> ScheduleConfig:
        if self.mode is not None and self.flow != "distill":
            raise ValueError(ERR_MODE_NOT_DISTILL.format(name=self.name, flow=self.flow))
        return self


class FlowConfig(PipelineConfig):
    """The whole ``params.yaml``: the pipeline's sections plus ``sweep`` and ``schedules``."""

    NON_OUTPUT_KEYS: ClassVar[tuple[str, ...]] = ("sweep", "schedules")  # other commands' settings: in no stage's key

    sweep: SweepConfig = SweepConfig()
    schedules: tuple[ScheduleConfig, ...] = ()

    @field_validator("schedules")
    @classmethod
    def _unique_schedules(cls, value: tuple[ScheduleConfig, ...]) -> tuple[ScheduleConfig, ...]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(ERR_DUPLICATE_SCHEDULES.format(dupes=dupes))
        return value


def parse_params(raw: dict[str, Any] | None) -> FlowConfig:
    """Validate a parsed ``params.yaml`` (every section) into a :class:`FlowConfig`.

    Raises
    ------
    fdd.config.ConfigError
        Naming every offending key, the allowed values and the value received.
    """
    return parse_config(raw, schema=FlowConfig)


ERR_NO_CUDA = "runtime.device is 'cuda' but torch.cuda.is_available() is False on this machine; use 'cpu' or 'auto'"
CELL_KEYS: tuple[str, ...] = ("dataset", "ipc", "backbone", "mode", "seed")
ERR_NO_RECORDS = "fdd sweep --from-records needs sweep.records (the folder of the cells' records); it is not set"
ERR_SWEEP_CELLS = (
    "{count} of the {total} sweep cells do not validate (fix the sweep or data sections; nothing was run):\n{problems}"
)


ERR_PARAMS_MISSING = (
    "configuration file {path} does not exist; pass --params PATH (default: params.yaml in the current folder)"
)
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


def read_yaml_mapping(
    path: str | Path, *, what: str = "configuration file", allow_empty: bool = True
) -> dict[str, Any]:
    """The mapping in the YAML file ``path``, or a :class:`ConfigError` naming the file and what is wrong.

    ``what`` names the file's role in messages (``configuration file``, ``preset``); an empty
    file is ``{}`` when ``allow_empty`` and an error otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            ERR_PARAMS_MISSING.format(path=path) if what == "configuration file" else f"{what} {path} does not exist"
        )
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
) -> FlowConfig:
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
    return parse_params(raw)


def resolve_device(choice: str) -> str:
    """The device of ``runtime.device``: 'auto' is CUDA when present, else CPU; 'cuda' without one is an error."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(ERR_NO_CUDA)
    return choice


def with_modes(config: FlowConfig, modes: Sequence[str]) -> FlowConfig:
    """``config`` distilling only ``modes``, validated again (a mode must suit the backbone)."""
    raw = config.model_dump(mode="json")
    raw["synthesis"]["modes"] = list(modes)
    return parse_params(raw)


def sweep_cells(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every cell of the grid, in the order dataset, ipc, backbone, mode, (lambda,) seed.

    With ``sweep.lambdas`` each cell of :data:`LAMBDA_CELLS` (DM in mode cobra) comes once per
    lambda, with the key :data:`LAMBDA_KEY`; the other cells have no such key.
    """
    cells: list[dict[str, Any]] = []
    for dataset, ipc, backbone, mode in itertools.product(sweep.datasets, sweep.ipcs, sweep.backbones, sweep.modes):
        lambdas: tuple[float | None, ...] = (None,)
        if sweep.lambdas is not None and (backbone, mode) in LAMBDA_CELLS:
            lambdas = sweep.lambdas
        for lam in lambdas:
            for seed in sweep.seeds:
                cell: dict[str, Any] = dict(zip(CELL_KEYS, (dataset, ipc, backbone, mode, seed)))
                if lam is not None:
                    cell[LAMBDA_KEY] = lam
                cells.append(cell)
    return cells


def cell_id(cell: dict[str, Any]) -> str:
    """A folder name for a cell, e.g. ``ipc10-dm-cobra-seed0``, ``ipc10-dm-cobra-lam0.25-seed0``.

    A cell at lambda 1 (cobra's own target) has the name of the cell without the axis, so its
    record and stage cache are the same.
    """
    lam = cell.get(LAMBDA_KEY)
    suffix = f"-lam{lam:g}" if isinstance(lam, (int, float)) and not math.isnan(lam) and lam != 1.0 else ""
    return f"ipc{cell['ipc']}-{cell['backbone']}-{cell['mode']}{suffix}-seed{cell['seed']}"


def cell_config(config: FlowConfig, cell: dict[str, Any]) -> FlowConfig:
    """``config`` with the cell's dataset (or ``sweep.variants`` entry), IPC, backbone, mode, seed and lambda."""
    raw = config.model_dump(mode="json")
    variant = config.sweep.variants.get(cell["dataset"])
    if variant is None:
        raw["data"]["dataset"] = cell["dataset"]
    else:
        raw["data"] = deep_merge(raw["data"], variant)
    raw["synthesis"].update(ipc=cell["ipc"], backbone=cell["backbone"], modes=[cell["mode"]])
    if cell.get(LAMBDA_KEY) is not None:
        raw["synthesis"]["barycenter_lambda"] = cell[LAMBDA_KEY]
    raw["runtime"]["seed"] = cell["seed"]
    raw["audit"]["seed"] = cell["seed"]
    return parse_params(raw)


def sweep_cell_configs(config: FlowConfig) -> list[tuple[dict[str, Any], FlowConfig]]:
    """Every cell of the grid with its validated configuration, or one error naming every bad cell.

    The whole grid is checked before anything runs, so a sweep never stops half-way on a
    cell whose dataset, backbone and mode do not go together.
    """
    cells, problems = [], []
    for cell in sweep_cells(config.sweep):
        try:
            cells.append((cell, cell_config(config, cell)))
        except ConfigError as exc:
            reasons = [
                line.strip(" -").split(" (got {")[0] for line in str(exc).splitlines() if line.startswith("  - ")
            ]
            problems.append(f"  - {cell['dataset']}-{cell_id(cell)}: {'; '.join(reasons) or str(exc)}")
    if problems:
        raise ConfigError(
            ERR_SWEEP_CELLS.format(count=len(problems), total=len(problems) + len(cells), problems="\n".join(problems))
        )
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
