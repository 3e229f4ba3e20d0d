"""The sweep flow: a grid ``dataset x ipc x backbone x mode x seed`` on a Dask cluster.

    ingest[dataset] -> cell[dataset, ipc, backbone, mode, seed] = synthesize -> audit

Each cell is one Prefect task run through ``prefect-dask``'s ``DaskTaskRunner``: on a
local ``distributed.LocalCluster`` by default (``sweep.n_workers`` workers, one thread
each, one GPU each when the device is CUDA) or on an existing cluster given its
scheduler address (``sweep.address``). Inside a cell, the synthesize and audit stage
tasks are the pipeline's own cached tasks, so a cell computed before (same data,
settings and ``fdd/`` source) is skipped. The cells are gathered into one table with
the mean and standard deviation over the seeds (``data/sweep/summary.{csv,md}``), and the
fairness-accuracy frontier, accuracy against DEO_M of every mode (``data/sweep/frontier.{csv,png}``).

``sweep.lambdas`` adds an axis to the DM cobra cells: one cell per value of
``synthesis.barycenter_lambda`` (``cell[..., cobra, lambda, seed]``, named ``...-cobra-lam0.25-seed0``;
at lambda 1 the name and record of the cell without the axis), which the frontier draws as a curve.

A cell that fails (its stage raises, or Dask gives up on it after its worker died
``distributed.scheduler.allowed-failures`` times; a cell whose worker dies is first run
again on another worker) does not stop the others: its row in ``cells.csv`` has
``status`` ``failed`` and its ``error``, its group's summary row says how many seeds
failed, and once the tables are written the flow fails naming the failed cells. Each row
also records where and when the cell ran: its ``device``, Dask ``worker``, and
``started`` / ``finished`` (UTC, ISO 8601).

GPUs. On a local cluster with GPUs each worker declares the Dask resource ``GPU=1`` and
each cell asks for it, so a worker runs one cell at a time, on its own GPU (worker ``k``
on ``cuda:<k mod GPUs>``). On a cluster given by ``sweep.address``, cells ask for
``GPU=1`` when its workers declare that resource (``dask worker --resources GPU=1``),
and run on the device the worker sees (``CUDA_VISIBLE_DEVICES`` picks it).

Folders. A dataset is prepared once under ``data/sweep/<dataset>/`` (its own workspace;
``data.root`` and ``data.idx_dir`` are linked from the main workspace), and each cell
is a workspace ``data/sweep/<dataset>/cells/<cell id>/`` whose ``data/prepared`` links
to the dataset's, so the stage tasks write each cell's files apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from fdd.config import (
    COLORED_DATASETS,
    DEFAULT_DSA_STRATEGY,
    REAL_SET_MODES,
    ConfigError,
    DataConfig,
    parse_architecture,
)
from fdd.report.frontier import FRONTIER_COLUMNS, frontier_table
from fdd.report.plots import frontier_figure, save_figure
from fdd.report.reproduction import (
    CELL_COLUMNS,
    MATCH_ACC,
    MATCH_DEO_M,
    paired_comparison,
    paper_table,
    read_reasons,
    results_table,
)
from flows.configuration import (  # the grid is read without Prefect
    CELL_KEYS,
    ERR_NO_RECORDS,
    LAMBDA_KEY,
    FlowConfig,
    SweepConfig,
    cell_id,
    sweep_cell_configs,
)
from flows.lock import holds_workspace_lock
from flows.pipeline import resolve_device, stage_call
from flows.processes import allow_threads, interrupt_threads, interruptible
from tasks.base import (
    atomic_write_bytes,
    atomic_write_text,
    call_stage,
    outputs_current,
    publish_markdown,
    publish_table,
    run_logger,
)

SWEEP_DIR = "data/sweep"
METRICS: tuple[str, ...] = ("accuracy", "deo_m", "deo_a", "worst_group_accuracy", "suff_m", "suff_a")
#: What a cell's row adds to its grid keys: the data it distilled (a sweep.variants entry resolved).
DATA_COLUMNS: tuple[str, ...] = ("data_dataset", "bias", "shading")
RECORD_VERSION = 1
#: Settings that change how fast a cell runs or what it logs, never its result: left out of a
#: record's fingerprint, so a record made with CUDA graphs counts for a run without them.
NOT_IN_FINGERPRINT: dict[str, tuple[str, ...]] = {
    "runtime": ("device", "num_threads"),
    "synthesis": ("modes", "log_every", "checkpoint_every", "compile", "cuda_graph"),
    "audit": ("cuda_graph", "test_batch_size", "stack_forward", "compile"),
}
#: Settings added after records were first kept: left out of the fingerprint while at these defaults
#: (what every earlier record was computed with), so adding them does not invalidate the records.
FINGERPRINT_DEFAULTS: dict[str, dict[str, Any]] = {
    "audit": {"architectures": ["matching"], "precision": "fp32", "full_data_epochs": 20, "gdro_step_size": 0.01},
    "synthesis": {"barycenter_lambda": 1.0, "cui_bandwidth": 0.5},
}
#: Audit settings that enter the fingerprint through the protocol they resolve to (:func:`evaluation_fingerprint`).
PROTOCOL_KEYS: tuple[str, ...] = ("augmentation", "dsa_strategy", "dc_strategy", "learned_lr")
WARN_NO_REASONS = (
    "sweep.paper_reasons names {path}, which does not exist: the paper table's verdicts go without reasons "
    "(create it with the columns dataset,bias,ipc,mode,reason, or unset sweep.paper_reasons)"
)
ERR_NO_PREPARED = "cell {cell} has no prepared data at {path}; the dataset's ingest must run first"
ERR_CELLS_FAILED = (
    "{failed} of {cells} sweep cells failed: {names}; the other cells finished and the tables are written "
    "({table}: status and error of each cell)"
)
ERR_STALE_RECORDS = (
    "{count} cell(s) to compute already have a record in {records} that this run would replace: {names}. "
    "Point sweep.records at another folder for these settings, limit sweep.compute_only to other cells, "
    "or set sweep.replace_records=true to recompute them and replace their records"
)
STATUS_OK, STATUS_FAILED = "ok", "failed"


class StaleRecordsError(ValueError):
    """Cells to compute hold records made with other settings, and sweep.replace_records is off."""


def check_stale_records(configured: list[tuple[dict[str, Any], FlowConfig]], sweep: SweepConfig, records: Path) -> None:
    """Raise :class:`StaleRecordsError` when a cell this run would compute has a record that it
    would replace (one made with other settings, or one that cannot be read), unless
    ``sweep.replace_records``."""
    if sweep.replace_records:
        return
    stale = []
    for cell, cell_cfg in configured:
        if selected(sweep, cell):
            path = record_path(records, cell["dataset"], cell)
            _, why = load_record(path, cell_fingerprint(cell_cfg))
            if why is not None:
                stale.append(f"{path.name} ({why})")
    if stale:
        names = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
        raise StaleRecordsError(ERR_STALE_RECORDS.format(count=len(stale), records=records, names=names))


class CellFailedError(RuntimeError):
    """A sweep cell raised; the message is its error, ``record`` where and when it ran."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message, record)  # both in args: the error pickles back from a Dask worker
        self.record = record

    def __str__(self) -> str:
        return str(self.args[0])


class SweepCellsFailedError(RuntimeError):
    """Some cells of a sweep failed (the others finished; the tables are written)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (for a table cell)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _link(link: Path, target: Path) -> None:
    """A symlink ``link -> target`` (replacing a stale one); nothing when ``link`` already leads there."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists() and link.resolve() == target.resolve():
        return
    if link.is_symlink():
        link.unlink()
    if link.exists():
        raise FileExistsError(f"{link} exists and is not a link to {target}; remove it")
    os.symlink(target.resolve(), link, target_is_directory=target.is_dir())


def user_paths(data: DataConfig) -> list[str]:
    """The workspace-relative paths a dataset reads: raw folder, idx folder, the user's CSVs and images."""
    candidates = (data.root, data.idx_dir, data.folder.csv, data.folder.images, data.tabular.csv, data.tabular.test_csv)
    return [p for p in candidates if p]


def dataset_workspace(workspace: str, config: FlowConfig, dataset: str) -> Path:
    """``data/sweep/<dataset>``, with every data path of ``workspace`` linked in (same relative paths)."""
    root = Path(workspace).resolve()
    folder = root / SWEEP_DIR / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for rel in sorted(user_paths(config.data), key=lambda p: len(Path(p).parts)):  # parents first
        if rel in (config.data.root, config.data.idx_dir):
            (root / rel).mkdir(parents=True, exist_ok=True)
        if (root / rel).exists():  # a missing user file is reported by ingest, by name
            _link(folder / rel, root / rel)
    return folder


def _worker_name() -> str | None:
    """The name of the Dask worker running this code (None outside Dask)."""
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:
        return None


def _cell_device(device: str, *, local_gpus: int, worker: str | None = None) -> str:
    """The device of a cell run by ``worker`` (default: this Dask worker).

    On a local cluster of ``local_gpus`` GPUs, worker ``k`` (a local cluster names its
    workers 0, 1, ...) holds ``<kind>:<k mod local_gpus>``, the kind being that of
    ``device`` (``cuda``; ``cpu`` when a test or benchmark declares fake GPUs on the
    CPU). Elsewhere (no GPUs, a named worker of a cluster started separately) ``device``.
    """
    name = _worker_name() if worker is None else worker
    if local_gpus < 1 or name is None or not name.isdigit():
        return device
    return f"{torch.device(device).type}:{int(name) % local_gpus}"


def evaluation_fingerprint(config: FlowConfig) -> dict[str, Any] | None:
    """The audit protocol a cell's set gets, where it differs from the one every earlier record used.

    The audit settings ``augmentation``, ``dsa_strategy``, ``dc_strategy`` and ``learned_lr``
    (:data:`PROTOCOL_KEYS`) came after records were first kept, when every set was audited with
    DSA's default strategy (or nothing, with ``audit.dsa: false``) at ``audit.lr``. They enter the
    fingerprint through what they resolve to for the cell's backbone: None when that is the earlier
    protocol (so a DM cell keeps its fingerprint), else the resolved augmentation, its families, and
    whether the learning rate is MTT's learned one.
    """
    audit = config.audit
    # real images: their set records no backbone, and the audit resolves it so too
    real_images = all(mode in REAL_SET_MODES for mode in config.synthesis.modes)
    backbone: str | None = None if real_images else config.synthesis.backbone
    augmentation = audit.resolved_augmentation(backbone)
    strategy = {"dsa": audit.dsa_strategy, "dc": audit.dc_strategy or "reference"}.get(augmentation, "none")
    learned = audit.learned_lr and backbone == "mtt"
    earlier = ("dsa", DEFAULT_DSA_STRATEGY) if audit.dsa else ("none", "none")
    if (augmentation, strategy) == earlier and not learned:
        return None
    return {"augmentation": augmentation, "strategy": strategy, "lr": "learned" if learned else "audit.lr"}


def network_identity(name: str) -> str:
    """An ``audit.architectures`` spec as the network it builds, whatever its spelling
    (:attr:`fdd.config.ArchitectureSpec.network`).

    ``resnet18`` and ``resnet18-in`` give the same identity, as ``convnet`` and ``convnet-w128``;
    and a record made when a base's default was different (fdd's ``resnet18`` had batch norm up to
    commit 74c9551) does not count for the network the same name builds today.
    """
    base, width, depth, norm, pooling, activation = parse_architecture(name).network
    return f"{base}(width={width}, depth={depth}, norm={norm}, pooling={pooling}, activation={activation})"


def relabel_architectures(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A recorded row with its architectures spelled as this run's ``audit.architectures`` spells them.

    A fingerprint holds networks, not spellings (:func:`network_identity`), so a record made with
    ``resnet18-in`` counts for ``resnet18``. Its figures are renamed position by position (the
    fingerprint fixes the order), so that one network never splits into two groups of the summary.
    A row whose architectures are not those networks is returned as it is.
    """
    listed = row.get("architectures")
    figures = json.loads(listed) if isinstance(listed, str) and listed else {}
    try:
        same = len(figures) == len(names) and all(
            network_identity(old) == network_identity(new) for old, new in zip(figures, names)
        )
    except ValueError:  # a name this fdd cannot parse
        same = False
    if not same or list(figures) == list(names):
        return row
    relabelled = {**row, "architectures": json.dumps(dict(zip(names, figures.values())))}
    if row.get("architecture") == next(iter(figures)):
        relabelled["architecture"] = names[0]
    return relabelled


def cell_fingerprint(config: FlowConfig) -> str:
    """SHA-256 of the settings that decide a cell's result (:data:`NOT_IN_FINGERPRINT` left out).

    Evaluation architectures enter as the networks they build (:func:`network_identity`).
    """
    raw = config.model_dump(mode="json")
    kept = {section: raw[section] for section in ("runtime", "data", "network", "synthesis", "audit")}
    for section, keys in NOT_IN_FINGERPRINT.items():
        for key in keys:
            kept[section].pop(key, None)
    for section, defaults in FINGERPRINT_DEFAULTS.items():
        for key, default in defaults.items():
            if kept[section].get(key, default) == default:
                kept[section].pop(key, None)
    if "architectures" in kept["audit"]:
        kept["audit"]["architectures"] = [network_identity(a) for a in kept["audit"]["architectures"]]
    for key in PROTOCOL_KEYS:
        kept["audit"].pop(key, None)
    protocol = evaluation_fingerprint(config)
    if protocol is not None:
        kept["audit"]["protocol"] = protocol
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def data_columns(config: FlowConfig) -> dict[str, Any]:
    """The resolved data of a cell: dataset, bias and shading (blank where the dataset has none)."""
    colored = config.data.dataset in COLORED_DATASETS
    return {
        "data_dataset": config.data.dataset,
        "bias": config.data.bias if colored else "",
        "shading": config.data.shading if colored else "",
    }


def selected(sweep: SweepConfig, cell: dict[str, Any]) -> bool:
    """Whether ``sweep.compute_only`` lets this run compute ``cell`` (always, when it is unset)."""
    axes = {"datasets": "dataset", "ipcs": "ipc", "backbones": "backbone", "modes": "mode", "seeds": "seed"}
    axes["lambdas"] = LAMBDA_KEY  # a cell without the lambda axis is not limited by it
    return all(
        axes[axis] not in cell or cell[axes[axis]] in values for axis, values in (sweep.compute_only or {}).items()
    )


def record_path(records: Path, dataset: str, cell: dict[str, Any]) -> Path:
    return records / f"{dataset}-{cell_id(cell)}.json"


RECORD_UNREADABLE, RECORD_OTHER_SETTINGS = "unreadable", "made with other settings"


def load_record(path: Path, fingerprint: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` when the record at ``path`` was made with the settings of ``fingerprint``;
    ``(None, None)`` when there is none; ``(None, why)`` when there is one that does not count
    (:data:`RECORD_UNREADABLE`, :data:`RECORD_OTHER_SETTINGS`)."""
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, RECORD_UNREADABLE
    if record.get("version") != RECORD_VERSION or record.get("fingerprint") != fingerprint:
        return None, RECORD_OTHER_SETTINGS
    return record, None


def read_record(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The row of a cell's record when it exists and was made with the same settings, else None."""
    record, why = load_record(path, fingerprint)
    if why == RECORD_UNREADABLE:
        run_logger().warning("sweep record %s is unreadable; the cell runs again", path)
    elif why == RECORD_OTHER_SETTINGS:
        run_logger().info("sweep record %s was made with other settings; the cell runs again", path)
    if record is None:
        return None
    return {"status": STATUS_OK, "error": "", **record["row"]}  # only finished cells have records


def write_record(path: Path, row: dict[str, Any], fingerprint: str, config: FlowConfig) -> None:
    """A cell's row and the settings it was made with, written atomically (commit these files)."""
    record = {
        "version": RECORD_VERSION,
        "fingerprint": fingerprint,
        "row": row,
        "fdd_commit": source_commit(),
        "config": {k: v for k, v in config.model_dump(mode="json").items() if k not in ("sweep", "schedules")},
    }
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def source_commit() -> str:
    """The git commit of the fdd source tree (with ``+dirty`` when it has uncommitted changes).

    The environment variable ``FDD_SOURCE_COMMIT``, when set, names it instead: a copy of the
    tree shipped to another machine (e.g. a GPU machine) may carry no ``.git``, or a stale one.
    Without either: ``unknown``.
    """
    root = Path(__file__).resolve().parent.parent
    if os.environ.get("FDD_SOURCE_COMMIT"):
        return os.environ["FDD_SOURCE_COMMIT"]
    if not (root / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


@task(name="sweep-cell", task_run_name="cell[{cell_name}]", cache_policy=NO_CACHE, persist_result=False)
def run_cell(
    cell_name: str,
    cell: dict[str, Any],
    config: FlowConfig,
    workspace: str,
    device: str,
    local_gpus: int = 0,
    record_file: str | None = None,
) -> dict[str, Any]:
    """Synthesize and audit one cell (each stage skipped when cached); its metrics and where and when it ran.

    Raises :class:`CellFailedError` (the error, with the cell's device, worker and times)
    when a stage raises. ``record_file``: where the finished cell's row is kept
    (:func:`write_record`).
    """
    device = _cell_device(device, local_gpus=local_gpus)
    record = {"device": device, "worker": _worker_name(), "started": _now()}
    started = time.time()
    try:
        with interruptible():  # stopped by interrupt_threads when the flow is interrupted (grid_flow)
            row = _cell_metrics(cell_name, cell, config, Path(workspace), device)
    except Exception as exc:
        raise CellFailedError(_one_line(exc), {**record, "finished": _now()}) from exc
    row = {
        **row,
        "status": STATUS_OK,
        "error": "",
        **record,
        "finished": _now(),
        "device_name": _device_name(device),
        "seconds": round(time.time() - started, 1),
        "fdd_commit": source_commit(),
    }
    if record_file is not None:
        write_record(Path(record_file), row, cell_fingerprint(config), config)
    return row


def _cell_metrics(
    cell_name: str, cell: dict[str, Any], config: FlowConfig, folder: Path, device: str
) -> dict[str, Any]:
    """The cell's row: its keys, the audit's metrics and whether both stages were cached."""
    if not (folder / "data/prepared/train.pt").exists():
        raise FileNotFoundError(ERR_NO_PREPARED.format(cell=cell_name, path=folder / "data/prepared"))
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    mode = cell["mode"]
    done: dict[str, dict[str, str]] = {
        "prepared": json.loads((folder / "data/prepared/manifest.json").read_text())["outputs"]
    }
    cached = True
    for name in ("synthesize", "audit"):
        stage_task, kwargs = stage_call(
            name, mode, config=config, workspace=str(folder), device=device, modes=(mode,), outputs=done.__getitem__
        )
        cached = cached and outputs_current(stage_task, **kwargs)
        done[f"{'synthetic' if name == 'synthesize' else 'audit'}/{mode}"] = call_stage(stage_task, **kwargs)
    metrics = json.loads((folder / "data/audit" / mode / "metrics.json").read_text())
    deo_m = "n/a (one group)" if metrics["deo_m"] is None else f"{metrics['deo_m']:.2f}"
    run_logger().info(
        "cell %s: accuracy %.2f, DEO_M %s%s", cell_name, metrics["accuracy"], deo_m, " (cached)" if cached else ""
    )
    return {
        **cell,
        **data_columns(config),
        "architecture": metrics.get("architecture", "matching"),
        **{k: metrics.get(k) for k in METRICS},
        **{f"{k}_std": metrics.get(f"{k}_std") for k in METRICS},
        "num_eval": metrics.get("num_eval"),
        "architectures": json.dumps(
            {
                name: metrics["architectures"][name]  # in the order of audit.architectures
                for name in metrics.get("architecture_names", metrics.get("architectures", {}))
            }
        ),
        "cached": cached,
    }


def _cell_row(cell: dict[str, Any], future: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of a submitted cell: its metrics, or its error (``status`` ``failed``).

    ``data``: the cell's :func:`data_columns`, kept on a failed row so it joins its group.
    """
    try:
        value = future.result(raise_on_failure=False)  # a failed task run gives its exception back
    except Exception as exc:  # noqa: BLE001 - any failure of the Dask future itself, e.g. KilledWorker after repeated worker deaths
        value = exc
    if isinstance(value, dict):
        return value
    if isinstance(value, CellFailedError):
        error, record = str(value), value.record
    elif isinstance(value, BaseException):
        error, record = _one_line(value), {}
    else:
        error, record = f"the task run ended without a result: {value!r}", {}
    return {
        **cell,
        **(data or {}),
        **dict.fromkeys(METRICS, float("nan")),
        "cached": False,
        "status": STATUS_FAILED,
        "error": error,
        **{k: record.get(k) for k in ("device", "worker", "started", "finished")},
    }


def per_architecture(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and evaluation architecture (``architecture``), from the cells' ``architectures`` JSON.

    A cell row holds its headline architecture's figures and, in ``architectures``, every
    audited architecture's (tasks/audit.py's metrics.json); a failed cell lists its
    architectures with no figures, so each one's group counts the failure. Rows without
    the column (records of an older fdd) are the matching network's.
    """
    if "architectures" not in cells.columns:
        return cells.assign(architecture=cells["architecture"] if "architecture" in cells else "matching")
    rows = []
    for row in cells.to_dict(orient="records"):
        listed = row.pop("architectures")
        figures = json.loads(listed) if isinstance(listed, str) and listed else {}
        if not figures:
            rows.append(
                {
                    **row,
                    "architecture": row.get("architecture") if isinstance(row.get("architecture"), str) else "matching",
                }
            )
            continue
        for name, values in figures.items():
            rows.append(
                {
                    **row,
                    "architecture": name,
                    **{k: values.get(k, float("nan")) for k in METRICS},
                    **{f"{k}_std": values.get(f"{k}_std", float("nan")) for k in METRICS},
                }
            )
    return pd.DataFrame(rows)


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of each metric over the seeds of a cell, per architecture.

    The cells are first expanded to one row per evaluation architecture (:func:`per_architecture`);
    ``architecture`` is a key of the summary, after ``mode``, and with ``sweep.lambdas`` so is
    ``lambda`` (blank for the cells without it).
    """
    cells = per_architecture(cells)
    keys = [k for k in CELL_KEYS if k != "seed"]
    keys[1:1] = [c for c in DATA_COLUMNS if c in cells.columns]
    keys.insert(keys.index("mode") + 1, "architecture")
    if LAMBDA_KEY in cells.columns:  # the sweep.lambdas axis: blank for the cells it does not apply to
        lam = pd.to_numeric(cells[LAMBDA_KEY], errors="coerce")
        cells = cells.assign(**{LAMBDA_KEY: lam.astype(object).where(lam.notna(), "")})
        keys.insert(keys.index("mode") + 1, LAMBDA_KEY)
    grouped = _finished(cells).groupby(keys, sort=False)[[m for m in METRICS if m in cells.columns]]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return _with_failures(summary, cells, keys).reset_index()


def _finished(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells that finished (all of them in a table without a ``status`` column)."""
    return cells[cells["status"].eq(STATUS_OK)] if "status" in cells else cells


def _with_failures(summary: pd.DataFrame, cells: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``summary`` with a row for every group, ``seeds`` counting the finished seeds only,
    ``status`` (``ok``; ``partial``: some seeds failed; ``failed``: all did) and ``error``
    (``seed <s>: <error>`` of each failed seed)."""
    failed = cells["status"].ne(STATUS_OK) if "status" in cells else pd.Series(False, index=cells.index)
    errors = cells["error"].fillna("").astype(str) if "error" in cells else pd.Series("", index=cells.index)
    notes = cells[keys].assign(
        _failed=failed, _note=("seed " + cells["seed"].astype(str) + ": " + errors).where(failed)
    )
    info = notes.groupby(keys, sort=False).agg(
        _failed=("_failed", "sum"), error=("_note", lambda s: " | ".join(s.dropna()))
    )
    out = info[[]].join(summary, how="left")  # every group, even one whose seeds all failed
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out["status"] = [
        STATUS_OK if not n else ("partial" if seeds else STATUS_FAILED)
        for n, seeds in zip(info["_failed"], out["seeds"])
    ]
    out["error"] = info["error"]
    return out


def _task_runner(sweep: SweepConfig, device: str, *, gpus: int | None = None) -> tuple[Any, int]:
    """The Dask task runner of the sweep and the GPUs of its local cluster (0 for ``sweep.address``).

    ``gpus``: the GPUs of the local cluster, one worker each (resource ``GPU=1``);
    default ``torch.cuda.device_count()`` on CUDA, 0 elsewhere. A test or benchmark may
    declare fake GPUs on the CPU: the scheduling is the same, each cell on ``cpu:<k>``.
    """
    from prefect_dask import DaskTaskRunner

    if sweep.address:
        return DaskTaskRunner(address=sweep.address), 0
    if gpus is None:
        gpus = torch.cuda.device_count() if device == "cuda" else 0
    workers = min(sweep.n_workers, gpus) if gpus else sweep.n_workers
    cluster_kwargs: dict[str, Any] = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": sweep.processes,
        "dashboard_address": None,
    }
    if gpus:
        cluster_kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs), gpus


def _cluster_declares_gpus(address: str) -> bool:
    """Whether a worker of the Dask cluster at ``address`` declares the resource ``GPU``."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    return any("GPU" in (info.get("resources") or {}) for info in workers.values())


def _sweep_body(config: FlowConfig, workspace: str, local_gpus: int, compute: bool = True) -> pd.DataFrame:
    import contextlib

    import dask

    sweep = config.sweep
    device = resolve_device(config.runtime.device) if compute else "cpu"  # from the records: no device needed
    configured = sweep_cell_configs(config)
    one_gpu_each = local_gpus > 0 or (sweep.address is not None and _cluster_declares_gpus(sweep.address))
    submitted, rows = [], []
    records = Path(workspace) / sweep.records if sweep.records else None
    if compute and records is not None:  # before any cell runs (fdd sweep and scheduled sweeps alike)
        check_stale_records(configured, sweep, records)
    reasons_file = Path(workspace) / sweep.paper_reasons if sweep.paper_table and sweep.paper_reasons else None
    if reasons_file is not None and reasons_file.exists():  # a bad one stops the run now, not after its cells
        read_reasons(reasons_file)  # (a missing one is reported with the table)
    for dataset in sweep.datasets:
        cells = []
        for cell, cell_cfg in configured:
            if cell["dataset"] != dataset:
                continue
            recorded = read_record(record_path(records, dataset, cell), cell_fingerprint(cell_cfg)) if records else None
            if recorded is not None:  # the grid's keys (a lambda-1 cell reads the record of the cell without the axis)
                recorded = relabel_architectures(recorded, cell_cfg.audit.architectures)
                if LAMBDA_KEY not in cell:  # nor the reverse: a grid without the axis has no lambda-1 cobra row
                    recorded.pop(LAMBDA_KEY, None)
                rows.append({**recorded, **cell, "cached": True})
            elif compute and selected(sweep, cell):
                cells.append((cell, cell_cfg))
        if not cells:  # every cell of this dataset has its record, or none is computed in this run
            continue
        home = dataset_workspace(workspace, config, dataset)
        # the flow's own ingest wiring: the cache key covers the user's files (raw_digest)
        ingest_task, kwargs = stage_call(
            "ingest",
            None,
            config=cells[0][1],
            workspace=str(home),
            device=device,
            modes=(),
            outputs=lambda _folder: {},
        )
        call_stage(ingest_task, **kwargs)
        for cell, cell_cfg in cells:
            name = cell_id(cell)
            cell_home = home / "cells" / name
            _link(cell_home / "data/prepared", home / "data/prepared")
            (home / "data/cache").mkdir(parents=True, exist_ok=True)
            _link(cell_home / "data/cache", home / "data/cache")  # MTT experts shared by the dataset's cells
            # one GPU per cell when the workers declare GPUs (each holds GPU=1): one cell at a time each
            with dask.annotate(resources={"GPU": 1}) if one_gpu_each else contextlib.nullcontext():
                record_file = str(record_path(records, dataset, cell)) if records else None
                future = run_cell.submit(
                    f"{dataset}-{name}", cell, cell_cfg, str(cell_home), device, local_gpus, record_file
                )
            architectures = {
                "architecture": cell_cfg.audit.architectures[0],  # kept on a failed row (_cell_row)
                "architectures": json.dumps(dict.fromkeys(cell_cfg.audit.architectures, {})),
            }
            submitted.append((cell, {**data_columns(cell_cfg), **architectures}, future))
    rows.extend(_cell_row(cell, future, data) for cell, data, future in submitted)
    order = {(c["dataset"], cell_id(c)): i for i, (c, _) in enumerate(configured)}
    rows.sort(key=lambda r: order.get((r["dataset"], cell_id(r)), len(order)))
    return pd.DataFrame(rows)


@flow(name="fdd-sweep-grid", log_prints=True)
def grid_flow(config: FlowConfig, workspace: str = ".", local_gpus: int = 0, compute: bool = True) -> dict[str, Any]:
    """The cells of ``config.sweep`` on this flow's task runner, then the tables.

    ``local_gpus``: GPUs of the local Dask cluster the runner started (one per cell), 0 otherwise.
    ``compute=False`` builds the tables from ``sweep.records`` alone (nothing is computed).
    Raises :class:`SweepCellsFailedError` after writing the tables when a cell failed.

    Interrupted (SIGTERM / SIGINT: Prefect's ``TerminationSignal`` or KeyboardInterrupt, raised
    in the main thread only) or failing while cells run, it interrupts the cells in flight on
    Dask thread workers (:func:`flows.processes.interrupt_threads`) before the task runner closes
    the cluster, which would otherwise wait 30 s for them while they go on computing; a cell that
    Dask starts after that (one that waited for a worker) ends at once, as it would otherwise run
    on the thread that the interrupted cell freed.
    """
    allow_threads()  # an earlier interrupted sweep of this process kept cells from starting until now
    try:
        cells = _sweep_body(config, workspace, local_gpus, compute)
    except BaseException:
        interrupt_threads()
        raise
    result = write_tables(cells, workspace, grid_size=len(sweep_cell_configs(config)))
    if config.sweep.paper_table:
        result["paper_table"] = write_paper_table(cells, config, workspace)
    if config.sweep.results_table:
        result["results_table"] = write_results_table(cells, config, workspace)
    if config.sweep.frontier_table:
        result["frontier_table"] = write_frontier_table(cells, config, workspace)
    failed = cells[cells["status"].ne(STATUS_OK)] if "status" in cells else cells.iloc[:0]
    if len(failed):
        names = [f"{cell['dataset']}-{cell_id(cell)}" for cell in failed.to_dict(orient="records")]
        raise SweepCellsFailedError(
            ERR_CELLS_FAILED.format(
                failed=len(failed),
                cells=len(cells),
                names=", ".join(names),
                table=Path(workspace) / SWEEP_DIR / "cells.csv",
            )
        )
    return result


@flow(name="fdd-sweep", log_prints=True)
@holds_workspace_lock
def sweep_flow(
    config: FlowConfig, workspace: str = ".", gpus: int | None = None, compute: bool = True
) -> dict[str, Any]:
    """Run every cell of ``config.sweep`` on Dask (a local cluster or ``sweep.address``).

    The grid runs as a subflow whose task runner is ``prefect-dask``'s
    ``DaskTaskRunner``, so the flow uses Dask however it is started (CLI or deployment).
    ``gpus``: GPUs of the local cluster (see :func:`_task_runner`; default: those of the machine).
    """
    if not compute:  # the tables from the records: no cluster, no device
        return grid_flow(config, workspace=workspace, compute=False)
    runner, local_gpus = _task_runner(config.sweep, resolve_device(config.runtime.device), gpus=gpus)
    return grid_flow.with_options(task_runner=runner)(config, workspace=workspace, local_gpus=local_gpus)


def write_tables(cells: pd.DataFrame, workspace: str, grid_size: int | None = None) -> dict[str, Any]:
    """``data/sweep/cells.csv`` (one row per cell) and ``summary.{csv,md}`` (mean/std over seeds).

    ``grid_size``: the number of cells in the grid; those without a row (left out by
    ``sweep.compute_only`` and without a record) are counted as not run.
    """
    out = Path(workspace) / SWEEP_DIR
    if cells.empty:
        cells = pd.DataFrame(columns=[*CELL_KEYS, *METRICS, "cached", "status", "error"])
    summary = summarize(cells)
    atomic_write_text(out / "cells.csv", cells.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    frontier = write_frontier(cells, out)
    markdown = "# Sweep: mean and std over seeds\n\n" + summary.round(2).to_markdown(index=False) + "\n"
    if frontier is not None:  # the plot beside the page: frontier.png
        markdown += "\n## Fairness-accuracy frontier\n\n![accuracy against DEO_M](frontier.png)\n"
    atomic_write_text(out / "summary.md", markdown)
    publish_markdown("sweep", markdown, "sweep summary (mean and std over seeds)")
    publish_table("sweep-cells", json.loads(cells.to_json(orient="records")), "one row per sweep cell")
    finished = cells["status"].eq(STATUS_OK) if "status" in cells else pd.Series(True, index=cells.index)
    not_run = 0 if grid_size is None else grid_size - len(cells)
    return {
        "cells": len(cells),
        "computed": int((finished & ~cells["cached"].astype(bool)).sum()),
        "failed": int((~finished).sum()),
        "not_run": not_run,
        "summary": str(out / "summary.csv"),
        **({"frontier": str(frontier)} if frontier is not None else {}),
    }


#: The frontier's panels: one subplot per dataset (a variant name), IPC and backbone.
FRONTIER_PANELS: tuple[str, ...] = ("dataset", "ipc", "backbone")


def write_frontier(cells: pd.DataFrame, out: Path) -> Path | None:
    """``frontier.csv`` and ``frontier.png`` in ``out``: accuracy against DEO_M of every mode, and the lambda curve.

    One point per (dataset, ipc, backbone, mode, lambda) with the mean and sample std over the
    finished seeds (:func:`fdd.report.frontier.frontier_table`; the headline architecture's
    figures). Nothing is written (None) before a cell finished.
    """
    finished = _finished(cells)
    if finished.empty or not {"accuracy", "deo_m"} <= set(finished.columns):
        return None
    table = frontier_table(finished, panels=[c for c in FRONTIER_PANELS if c in finished.columns])
    if table.empty:
        return None
    panels = [c for c in FRONTIER_PANELS if c in table.columns]
    atomic_write_text(out / "frontier.csv", table.to_csv(index=False))
    figure = frontier_figure(table, panels=panels, title="accuracy against DEO_M (mean and std over seeds)")
    atomic_write_bytes(out / "frontier.png", save_figure(figure))
    return out / "frontier.csv"


def paper_grid(config: FlowConfig) -> list[tuple[str, str, int, str]]:
    """The (dataset, bias, ipc, mode) rows of the published-table comparison that the grid covers."""
    grid = []
    for cell, cell_cfg in sweep_cell_configs(config):
        if cell["backbone"] == "dm":
            data = data_columns(cell_cfg)
            grid.append((data["data_dataset"], data["bias"], cell["ipc"], cell["mode"]))
    return list(dict.fromkeys(grid))


def paper_reasons(sweep: SweepConfig, workspace: str) -> dict[tuple[str, str, int, str], str] | None:
    """The reasons file of ``sweep.paper_reasons`` (:func:`fdd.report.reproduction.read_reasons`).

    None when unset, or, with a warning, when the file does not exist (a fresh workspace running
    the paper preset has none yet: the verdicts then go without reasons).

    Raises
    ------
    ValueError
        The file does not read as a reasons file (named, with what it needs).
    """
    if not sweep.paper_reasons:
        return None
    path = Path(workspace) / sweep.paper_reasons
    if not path.exists():
        warnings.warn(WARN_NO_REASONS.format(path=path), stacklevel=2)
        return None
    return read_reasons(path)


def write_paper_table(cells: pd.DataFrame, config: FlowConfig, workspace: str) -> str:
    """``sweep.paper_table`` (CSV) and its markdown rendering: the DM cells against docs/method.md section 5."""
    path = Path(workspace) / str(config.sweep.paper_table)
    dm = _finished(cells)
    if LAMBDA_KEY in dm:  # the published table's cobra is cobra's own target: lambda 1 (or no lambda axis)
        lam = pd.to_numeric(dm[LAMBDA_KEY], errors="coerce")
        dm = dm[lam.isna() | lam.eq(1.0)]
    if "backbone" in dm:
        dm = dm[dm["backbone"] == "dm"].rename(columns={"dataset": "sweep_dataset", "data_dataset": "dataset"})
    else:  # no cell computed and none recorded yet: every row of the grid is "not run"
        dm = pd.DataFrame(columns=list(CELL_COLUMNS))
    reasons = paper_reasons(config.sweep, workspace)
    table = paper_table(dm, paper_grid(config), reasons)
    paired = paired_comparison(dm, "cobra", "fairdd")
    atomic_write_text(path, table.to_csv(index=False, float_format="%.2f"))
    markdown = (
        "\n\n".join(
            [
                "# The published DM table, reproduced with `fdd sweep`",
                "Mean and sample std over synthesis seeds (each seed: the mean of its evaluations), in %. "
                "`suff_gap_mean`: the max-over-classes sufficiency (precision) gap, mean over seeds. Verdict: `match` "
                f"within {MATCH_ACC:g} point of accuracy and {MATCH_DEO_M:g} of DEO_M of docs/method.md section 5; "
                "otherwise the differences"
                + (
                    f", and after a colon the reason on record with the measurement behind it ({config.sweep.paper_reasons})."
                    if reasons is not None
                    else "."
                ),
                _provenance(cells),
                table.round(2).to_markdown(index=False),
                "## cobra against fairdd, paired over seeds",
                "Per-seed differences (cobra - fairdd); p: two-sided paired t-test.",
                paired.round(3).to_markdown(index=False) if len(paired) else "(no seed has both modes yet)",
            ]
        )
        + "\n"
    )
    atomic_write_text(path.with_suffix(".md"), markdown)
    publish_markdown("paper-table", markdown, "the published DM table against fdd's sweep")
    return str(path)


def _provenance(cells: pd.DataFrame) -> str:
    """ "Devices: ... fdd commits: ..." of the cells that name them."""
    devices = ", ".join(sorted({str(d) for d in cells.get("device_name", pd.Series(dtype=str)).dropna()})) or "-"
    commits = ", ".join(sorted({str(c) for c in cells.get("fdd_commit", pd.Series(dtype=str)).dropna()})) or "-"
    return f"Devices: {devices}. fdd commits: {commits}."


def write_results_table(cells: pd.DataFrame, config: FlowConfig, workspace: str) -> str:
    """``sweep.results_table`` (CSV) and its markdown rendering: the compact per-architecture results.

    Built from every cell of this grid (computed or recorded) through :func:`summarize` and
    :func:`fdd.report.reproduction.results_table`; the matching network is named by its
    architecture (``convnet`` for the ConvNet, ``mlp`` for the tabular network).
    """
    path = Path(workspace) / str(config.sweep.results_table)
    summary = summarize(cells) if len(cells) else pd.DataFrame()  # no cell computed or recorded yet
    table = results_table(summary, matching=config.network.architecture)
    atomic_write_text(path, table.to_csv(index=False, float_format="%.2f"))
    markdown = (
        "\n\n".join(
            [
                f"# Sweep results: {path.stem}",
                "Mean and sample std over synthesis seeds (each seed: the mean of its evaluations), in %; "
                "`seeds`: the finished synthesis seeds of the row.",
                _provenance(cells),
                table.round(2).to_markdown(index=False),
            ]
        )
        + "\n"
    )
    atomic_write_text(path.with_suffix(".md"), markdown)
    publish_markdown("results-table", markdown, "the sweep's compact results table")
    return str(path)


def write_frontier_table(cells: pd.DataFrame, config: FlowConfig, workspace: str) -> str:
    """``sweep.frontier_table`` (CSV), its plot (``.png``) and a markdown page showing both.

    The same table and figure as ``data/sweep/frontier.{csv,png}`` (:func:`write_frontier`),
    published where they can be committed. Before any cell has finished, the CSV holds the
    header alone, the page says so, and no plot is written.
    """
    path = Path(workspace) / str(config.sweep.frontier_table)
    finished = _finished(cells)
    has_metrics = not finished.empty and {"accuracy", "deo_m"} <= set(finished.columns)
    table = (
        frontier_table(finished, panels=[c for c in FRONTIER_PANELS if c in finished.columns]) if has_metrics else None
    )
    if table is None or table.empty:
        table = pd.DataFrame(columns=[*FRONTIER_PANELS, *FRONTIER_COLUMNS])
    atomic_write_text(path, table.to_csv(index=False, float_format="%.2f"))
    parts = [
        f"# Fairness-accuracy frontier: {path.stem}",
        "Accuracy against DEO_M (both in %), mean and sample std over synthesis seeds (each seed: the mean of "
        "its evaluations); cobra once per `lambda` (0: vanilla's pooled class mean as the target, 1: the "
        "uniform barycenter of the groups, COBRA's own).",
        _provenance(cells),
    ]
    if len(table):
        panels = [c for c in FRONTIER_PANELS if c in table.columns]
        figure = frontier_figure(table, panels=panels, title="accuracy against DEO_M (mean and std over seeds)")
        atomic_write_bytes(path.with_suffix(".png"), save_figure(figure))
        parts += [
            f"![accuracy against DEO_M]({path.with_suffix('.png').name})",
            table.round(2).astype(object).fillna("-").to_markdown(index=False),
        ]
    else:
        parts.append("No cell has finished yet: no point to plot.")
    markdown = "\n\n".join(parts) + "\n"
    atomic_write_text(path.with_suffix(".md"), markdown)
    publish_markdown("frontier-table", markdown, "the fairness-accuracy frontier (mean and std over seeds)")
    return str(path)


def run_sweep(
    config: FlowConfig, workspace: str = ".", compute: bool = True, *, gpus: int | None = None
) -> dict[str, Any]:
    """Check every cell, then run :func:`sweep_flow` (the entry point of ``fdd sweep``).

    ``compute=False`` (``fdd sweep --from-records``) only rebuilds the tables from the
    committed records of ``sweep.records``; cells without one are reported as not run.
    """
    sweep_cell_configs(config)
    if not compute and not config.sweep.records:
        raise ConfigError(ERR_NO_RECORDS)
    return sweep_flow(config, workspace=workspace, gpus=gpus, compute=compute)
