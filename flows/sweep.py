"""The sweep flow: a grid ``dataset x ipc x backbone x mode x seed`` on a Dask cluster.

    ingest[dataset] -> cell[dataset, ipc, backbone, mode, seed] = synthesize -> audit

Each cell is one Prefect task run through ``prefect-dask``'s ``DaskTaskRunner``: on a
local ``distributed.LocalCluster`` by default (``sweep.n_workers`` workers, one thread
each, one GPU each when the device is CUDA) or on an existing cluster given its
scheduler address (``sweep.address``). Inside a cell, the synthesize and audit stage
tasks are the pipeline's own cached tasks, so a cell computed before (same data,
settings and ``fdd/`` source) is skipped. The cells are gathered into one table with
the mean and standard deviation over the seeds (``data/sweep/summary.{csv,md}``).

Folders. A dataset is prepared once under ``data/sweep/<dataset>/`` (its own workspace;
``data.root`` and ``data.idx_dir`` are linked from the main workspace), and each cell
is a workspace ``data/sweep/<dataset>/cells/<cell id>/`` whose ``data/prepared`` links
to the dataset's, so the stage tasks write each cell's files apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from fdd.config import DataConfig, PipelineConfig, SweepConfig
from flows.configuration import CELL_KEYS, cell_id, sweep_cell_configs  # the grid is read without Prefect
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


def _cell_device(device: str, *, local_gpus: int) -> str:
    """``cuda:<k>`` for the k-th worker of a local cluster on a multi-GPU machine."""
    name = _worker_name()
    if device != "cuda" or local_gpus <= 1 or name is None or not name.isdigit():
        return device
    return f"cuda:{int(name) % local_gpus}"


@task(name="sweep-cell", task_run_name="cell[{cell_name}]", cache_policy=NO_CACHE, persist_result=False)
def run_cell(
    cell_name: str, cell: dict[str, Any], config: PipelineConfig, workspace: str, device: str, local_gpus: int = 0
) -> dict[str, Any]:
    """Synthesize and audit one cell (each stage skipped when cached); its metrics."""
    folder = Path(workspace)
    if not (folder / "data/prepared/train.pt").exists():
        raise FileNotFoundError(ERR_NO_PREPARED.format(cell=cell_name, path=folder / "data/prepared"))
    device = _cell_device(device, local_gpus=local_gpus)
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
    deo_m = "n/a (one group)" if metrics["deo_m"] is None else f"{metrics['deo_m']:.2f}"
    run_logger().info("cell %s: accuracy %.2f, DEO_M %s%s", cell_name, metrics["accuracy"], deo_m,
                      " (cached)" if cached else "")
    return {**cell, **{k: metrics[k] for k in METRICS}, "cached": cached, "device": device,
            "worker": _worker_name()}


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of each metric over the seeds of a cell."""
    keys = [k for k in CELL_KEYS if k != "seed"]
    grouped = cells.groupby(keys, sort=False)[list(METRICS)]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def _task_runner(sweep: SweepConfig, device: str) -> tuple[Any, int]:
    from prefect_dask import DaskTaskRunner

    if sweep.address:
        return DaskTaskRunner(address=sweep.address), 0
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    workers = min(sweep.n_workers, gpus) if gpus else sweep.n_workers
    cluster_kwargs: dict[str, Any] = {
        "n_workers": workers, "threads_per_worker": 1, "processes": sweep.processes, "dashboard_address": None,
    }
    if gpus:
        cluster_kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs), gpus


def _sweep_body(config: PipelineConfig, workspace: str, local_gpus: int) -> pd.DataFrame:
    import contextlib

    import dask

    sweep = config.sweep
    device = resolve_device(config.runtime.device)
    configured = sweep_cell_configs(config)
    futures = []
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
            # one GPU per cell on a local multi-GPU cluster (its workers each hold GPU=1)
            with dask.annotate(resources={"GPU": 1}) if local_gpus else contextlib.nullcontext():
                futures.append(run_cell.submit(f"{dataset}-{name}", cell, cell_cfg, str(cell_home), device, local_gpus))
    rows = [future.result() for future in futures]
    return pd.DataFrame(rows)


@flow(name="fdd-sweep-grid", log_prints=True)
def grid_flow(config: PipelineConfig, workspace: str = ".", local_gpus: int = 0) -> dict[str, Any]:
    """The cells of ``config.sweep`` on this flow's task runner, then the tables.

    ``local_gpus``: GPUs of the local Dask cluster the runner started (one per cell), 0 otherwise.
    """
    cells = _sweep_body(config, workspace, local_gpus)
    return write_tables(cells, workspace)


@flow(name="fdd-sweep", log_prints=True)
def sweep_flow(config: PipelineConfig, workspace: str = ".") -> dict[str, Any]:
    """Run every cell of ``config.sweep`` on Dask (a local cluster or ``sweep.address``).

    The grid runs as a subflow whose task runner is ``prefect-dask``'s
    ``DaskTaskRunner``, so the flow uses Dask however it is started (CLI or deployment).
    """
    runner, local_gpus = _task_runner(config.sweep, resolve_device(config.runtime.device))
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
    return {"cells": len(cells), "computed": int((~cells["cached"]).sum()), "summary": str(out / "summary.csv")}


def run_sweep(config: PipelineConfig, workspace: str = ".") -> dict[str, Any]:
    """Check every cell, then run :func:`sweep_flow` (the entry point of ``fdd sweep``)."""
    sweep_cell_configs(config)
    return sweep_flow(config, workspace=workspace)
