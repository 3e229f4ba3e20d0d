"""The sweep flow: a grid ``dataset x ipc x backbone x mode x seed`` on a Dask cluster.

    ingest[dataset] -> cell[dataset, ipc, backbone, mode, seed] = synthesize -> audit

Each cell is one Prefect task run through ``prefect-dask``'s ``DaskTaskRunner``: on a
local ``distributed.LocalCluster`` by default (``sweep.n_workers`` workers, one thread
each, one GPU each when the device is CUDA) or on an existing cluster given its
scheduler address (``sweep.address``). Inside a cell, the synthesize and audit stage
tasks are the pipeline's own cached tasks, so a cell computed before (same data,
settings and ``fdd/`` source) is skipped. The cells are gathered into one table with
the mean and standard deviation over the seeds (``data/sweep/summary.{csv,md}``).

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

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from fdd.config import DataConfig, PipelineConfig, SweepConfig
from flows.configuration import CELL_KEYS, cell_id, sweep_cell_configs  # the grid is read without Prefect
from flows.lock import holds_workspace_lock
from flows.pipeline import resolve_device, stage_call
from tasks.base import (
    atomic_write_text,
    call_stage,
    outputs_current,
    publish_markdown,
    publish_table,
    run_logger,
)

SWEEP_DIR = "data/sweep"
METRICS: tuple[str, ...] = ("accuracy", "deo_m", "deo_a", "worst_group_accuracy")
ERR_NO_PREPARED = "cell {cell} has no prepared data at {path}; the dataset's ingest must run first"
ERR_CELLS_FAILED = (
    "{failed} of {cells} sweep cells failed: {names}; the other cells finished and the tables are written "
    "({table}: status and error of each cell)"
)
STATUS_OK, STATUS_FAILED = "ok", "failed"


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


def dataset_workspace(workspace: str, config: PipelineConfig, dataset: str) -> Path:
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


@task(name="sweep-cell", task_run_name="cell[{cell_name}]", cache_policy=NO_CACHE, persist_result=False)
def run_cell(
    cell_name: str, cell: dict[str, Any], config: PipelineConfig, workspace: str, device: str, local_gpus: int = 0
) -> dict[str, Any]:
    """Synthesize and audit one cell (each stage skipped when cached); its metrics and where and when it ran.

    Raises :class:`CellFailedError` (the error, with the cell's device, worker and times)
    when a stage raises.
    """
    device = _cell_device(device, local_gpus=local_gpus)
    record = {"device": device, "worker": _worker_name(), "started": _now()}
    try:
        row = _cell_metrics(cell_name, cell, config, Path(workspace), device)
    except Exception as exc:
        raise CellFailedError(_one_line(exc), {**record, "finished": _now()}) from exc
    return {**row, "status": STATUS_OK, "error": "", **record, "finished": _now()}


def _cell_metrics(cell_name: str, cell: dict[str, Any], config: PipelineConfig, folder: Path, device: str) -> dict[str, Any]:
    """The cell's row: its keys, the audit's metrics and whether both stages were cached."""
    if not (folder / "data/prepared/train.pt").exists():
        raise FileNotFoundError(ERR_NO_PREPARED.format(cell=cell_name, path=folder / "data/prepared"))
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    mode = cell["mode"]
    done: dict[str, dict[str, str]] = {"prepared": json.loads((folder / "data/prepared/manifest.json").read_text())["outputs"]}
    cached = True
    for name in ("synthesize", "audit"):
        stage_task, kwargs = stage_call(
            name, mode, config=config, workspace=str(folder), device=device, modes=(mode,), outputs=done.__getitem__
        )
        cached = cached and outputs_current(stage_task, **kwargs)
        done[f"{'synthetic' if name == 'synthesize' else 'audit'}/{mode}"] = call_stage(stage_task, **kwargs)
    metrics = json.loads((folder / "data/audit" / mode / "metrics.json").read_text())
    run_logger().info("cell %s: accuracy %.2f, DEO_M %.2f%s", cell_name, metrics["accuracy"], metrics["deo_m"],
                      " (cached)" if cached else "")
    return {**cell, **{k: metrics[k] for k in METRICS}, "cached": cached}


def _cell_row(cell: dict[str, Any], future: Any) -> dict[str, Any]:
    """The row of a submitted cell: its metrics, or its error (``status`` ``failed``)."""
    try:
        value = future.result(raise_on_failure=False)  # a failed task run gives its exception back
    except Exception as exc:  # the Dask future itself failed, e.g. KilledWorker after repeated worker deaths
        value = exc
    if isinstance(value, dict):
        return value
    if isinstance(value, CellFailedError):
        error, record = str(value), value.record
    elif isinstance(value, BaseException):
        error, record = _one_line(value), {}
    else:
        error, record = f"the task run ended without a result: {value!r}", {}
    return {**cell, **dict.fromkeys(METRICS, float("nan")), "cached": False, "status": STATUS_FAILED, "error": error,
            **{k: record.get(k) for k in ("device", "worker", "started", "finished")}}


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of each metric over the seeds of a cell."""
    keys = [k for k in CELL_KEYS if k != "seed"]
    grouped = _finished(cells).groupby(keys, sort=False)[list(METRICS)]
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
    info = notes.groupby(keys, sort=False).agg(_failed=("_failed", "sum"), error=("_note", lambda s: " | ".join(s.dropna())))
    out = info[[]].join(summary, how="left")  # every group, even one whose seeds all failed
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out["status"] = [STATUS_OK if not n else ("partial" if seeds else STATUS_FAILED)
                     for n, seeds in zip(info["_failed"], out["seeds"])]
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
        "n_workers": workers, "threads_per_worker": 1, "processes": sweep.processes, "dashboard_address": None,
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


def _sweep_body(config: PipelineConfig, workspace: str, local_gpus: int) -> pd.DataFrame:
    import contextlib

    import dask

    sweep = config.sweep
    device = resolve_device(config.runtime.device)
    configured = sweep_cell_configs(config)
    one_gpu_each = local_gpus > 0 or (sweep.address is not None and _cluster_declares_gpus(sweep.address))
    submitted = []
    for dataset in sweep.datasets:
        home = dataset_workspace(workspace, config, dataset)
        cells = [(cell, cell_cfg) for cell, cell_cfg in configured if cell["dataset"] == dataset]
        # the flow's own ingest wiring: the cache key covers the user's files (raw_digest)
        ingest_task, kwargs = stage_call(
            "ingest", None, config=cells[0][1], workspace=str(home), device=device, modes=(),
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
                future = run_cell.submit(f"{dataset}-{name}", cell, cell_cfg, str(cell_home), device, local_gpus)
            submitted.append((cell, future))
    return pd.DataFrame([_cell_row(cell, future) for cell, future in submitted])


@flow(name="fdd-sweep-grid", log_prints=True)
def grid_flow(config: PipelineConfig, workspace: str = ".", local_gpus: int = 0) -> dict[str, Any]:
    """The cells of ``config.sweep`` on this flow's task runner, then the tables.

    ``local_gpus``: GPUs of the local Dask cluster the runner started (one per cell), 0 otherwise.
    Raises :class:`SweepCellsFailedError` after writing the tables when a cell failed.
    """
    cells = _sweep_body(config, workspace, local_gpus)
    result = write_tables(cells, workspace)
    failed = cells[cells["status"].ne(STATUS_OK)]
    if len(failed):
        names = [f"{cell['dataset']}-{cell_id(cell)}" for cell in failed[list(CELL_KEYS)].to_dict(orient="records")]
        raise SweepCellsFailedError(ERR_CELLS_FAILED.format(
            failed=len(failed), cells=len(cells), names=", ".join(names), table=Path(workspace) / SWEEP_DIR / "cells.csv"))
    return result


@flow(name="fdd-sweep", log_prints=True)
@holds_workspace_lock
def sweep_flow(config: PipelineConfig, workspace: str = ".", gpus: int | None = None) -> dict[str, Any]:
    """Run every cell of ``config.sweep`` on Dask (a local cluster or ``sweep.address``).

    The grid runs as a subflow whose task runner is ``prefect-dask``'s
    ``DaskTaskRunner``, so the flow uses Dask however it is started (CLI or deployment).
    ``gpus``: GPUs of the local cluster (see :func:`_task_runner`; default: those of the machine).
    """
    runner, local_gpus = _task_runner(config.sweep, resolve_device(config.runtime.device), gpus=gpus)
    return grid_flow.with_options(task_runner=runner)(config, workspace=workspace, local_gpus=local_gpus)


def write_tables(cells: pd.DataFrame, workspace: str) -> dict[str, Any]:
    """``data/sweep/cells.csv`` (one row per cell) and ``summary.{csv,md}`` (mean/std over seeds)."""
    out = Path(workspace) / SWEEP_DIR
    summary = summarize(cells)
    atomic_write_text(out / "cells.csv", cells.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    markdown = "# Sweep: mean and std over seeds\n\n" + summary.round(2).to_markdown(index=False) + "\n"
    atomic_write_text(out / "summary.md", markdown)
    publish_markdown("sweep", markdown, "sweep summary (mean and std over seeds)")
    publish_table("sweep-cells", json.loads(cells.to_json(orient="records")), "one row per sweep cell")
    finished = cells["status"].eq(STATUS_OK) if "status" in cells else pd.Series(True, index=cells.index)
    return {"cells": len(cells), "computed": int((finished & ~cells["cached"].astype(bool)).sum()),
            "failed": int((~finished).sum()), "summary": str(out / "summary.csv")}


def run_sweep(config: PipelineConfig, workspace: str = ".", *, gpus: int | None = None) -> dict[str, Any]:
    """Check every cell, then run :func:`sweep_flow` (the entry point of ``fdd sweep``)."""
    sweep_cell_configs(config)
    return sweep_flow(config, workspace=workspace, gpus=gpus)
