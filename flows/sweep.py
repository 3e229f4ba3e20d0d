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

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from fdd.config import COLORED_DATASETS, ConfigError, DataConfig
from fdd.report.reproduction import MATCH_ACC, MATCH_DEO_M, paired_comparison, paper_table
from flows.configuration import (  # the grid is read without Prefect
    CELL_KEYS,
    ERR_NO_RECORDS,
    FlowConfig,
    SweepConfig,
    cell_id,
    sweep_cell_configs,
)
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
METRICS: tuple[str, ...] = ("accuracy", "deo_m", "deo_a", "worst_group_accuracy", "suff_m", "suff_a")
#: What a cell's row adds to its grid keys: the data it distilled (a sweep.variants entry resolved).
DATA_COLUMNS: tuple[str, ...] = ("data_dataset", "bias", "shading")
RECORD_VERSION = 1
#: Settings that change how fast a cell runs or what it logs, never its result: left out of a
#: record's fingerprint, so a record made with CUDA graphs counts for a run without them.
NOT_IN_FINGERPRINT: dict[str, tuple[str, ...]] = {
    "runtime": ("device", "num_threads"),
    "synthesis": ("modes", "log_every", "checkpoint_every", "compile", "cuda_graph"),
    "audit": ("cuda_graph", "test_batch_size"),
}
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


def _cell_device(device: str, *, local_gpus: int) -> str:
    """``cuda:<k>`` for the k-th worker of a local cluster on a multi-GPU machine."""
    name = _worker_name()
    if device != "cuda" or local_gpus <= 1 or name is None or not name.isdigit():
        return device
    return f"cuda:{int(name) % local_gpus}"


def cell_fingerprint(config: FlowConfig) -> str:
    """SHA-256 of the settings that decide a cell's result (:data:`NOT_IN_FINGERPRINT` left out)."""
    raw = config.model_dump(mode="json")
    kept = {section: raw[section] for section in ("runtime", "data", "network", "synthesis", "audit")}
    for section, keys in NOT_IN_FINGERPRINT.items():
        for key in keys:
            kept[section].pop(key, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def data_columns(config: FlowConfig) -> dict[str, Any]:
    """The resolved data of a cell: dataset, bias and shading (blank where the dataset has none)."""
    colored = config.data.dataset in COLORED_DATASETS
    return {"data_dataset": config.data.dataset, "bias": config.data.bias if colored else "",
            "shading": config.data.shading if colored else ""}


def selected(sweep: SweepConfig, cell: dict[str, Any]) -> bool:
    """Whether ``sweep.compute_only`` lets this run compute ``cell`` (always, when it is unset)."""
    axes = {"datasets": "dataset", "ipcs": "ipc", "backbones": "backbone", "modes": "mode", "seeds": "seed"}
    return all(cell[axes[axis]] in values for axis, values in (sweep.compute_only or {}).items())


def record_path(records: Path, dataset: str, cell: dict[str, Any]) -> Path:
    return records / f"{dataset}-{cell_id(cell)}.json"


def read_record(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The row of a cell's record when it exists and was made with the same settings, else None."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        run_logger().warning("sweep record %s is unreadable; the cell runs again", path)
        return None
    if record.get("version") != RECORD_VERSION or record.get("fingerprint") != fingerprint:
        run_logger().info("sweep record %s was made with other settings; the cell runs again", path)
        return None
    return dict(record["row"])


def write_record(path: Path, row: dict[str, Any], fingerprint: str, config: FlowConfig) -> None:
    """A cell's row and the settings it was made with, written atomically (commit these files)."""
    record = {"version": RECORD_VERSION, "fingerprint": fingerprint, "row": row, "fdd_commit": source_commit(),
              "config": {k: v for k, v in config.model_dump(mode="json").items() if k not in ("sweep", "schedules")}}
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
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


@task(name="sweep-cell", task_run_name="cell[{cell_name}]", cache_policy=NO_CACHE, persist_result=False)
def run_cell(
    cell_name: str, cell: dict[str, Any], config: FlowConfig, workspace: str, device: str, local_gpus: int = 0,
    record: str | None = None,
) -> dict[str, Any]:
    """Synthesize and audit one cell (each stage skipped when cached); its metrics.

    ``record``: a path where the cell's row is kept (:func:`write_record`) once it is done.
    """
    folder = Path(workspace)
    if not (folder / "data/prepared/train.pt").exists():
        raise FileNotFoundError(ERR_NO_PREPARED.format(cell=cell_name, path=folder / "data/prepared"))
    device = _cell_device(device, local_gpus=local_gpus)
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    mode = cell["mode"]
    done: dict[str, dict[str, str]] = {"prepared": json.loads((folder / "data/prepared/manifest.json").read_text())["outputs"]}
    cached = True
    started = time.time()
    for name in ("synthesize", "audit"):
        stage_task, kwargs = stage_call(
            name, mode, config=config, workspace=str(folder), device=device, modes=(mode,), outputs=done.__getitem__
        )
        cached = cached and outputs_current(stage_task, **kwargs)
        done[f"{'synthetic' if name == 'synthesize' else 'audit'}/{mode}"] = call_stage(stage_task, **kwargs)
    metrics = json.loads((folder / "data/audit" / mode / "metrics.json").read_text())
    run_logger().info("cell %s: accuracy %.2f, DEO_M %.2f%s", cell_name, metrics["accuracy"], metrics["deo_m"],
                      " (cached)" if cached else "")
    row = {**cell, **data_columns(config), **{k: metrics.get(k) for k in METRICS},
           **{f"{k}_std": metrics.get(f"{k}_std") for k in METRICS}, "num_eval": metrics.get("num_eval"),
           "cached": cached, "device": device, "device_name": _device_name(device), "worker": _worker_name(),
           "seconds": round(time.time() - started, 1), "fdd_commit": source_commit()}
    if record is not None:
        write_record(Path(record), row, cell_fingerprint(config), config)
    return row


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of each metric over the seeds of a cell."""
    keys = [k for k in CELL_KEYS if k != "seed"]
    keys[1:1] = [c for c in DATA_COLUMNS if c in cells.columns]
    grouped = cells.groupby(keys, sort=False)[[m for m in METRICS if m in cells.columns]]
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


def _sweep_body(config: FlowConfig, workspace: str, local_gpus: int, compute: bool = True) -> pd.DataFrame:
    import contextlib

    import dask

    sweep = config.sweep
    device = resolve_device(config.runtime.device)
    configured = sweep_cell_configs(config)
    futures, rows = [], []
    records = Path(workspace) / sweep.records if sweep.records else None
    for dataset in sweep.datasets:
        cells = []
        for cell, cell_cfg in configured:
            if cell["dataset"] != dataset:
                continue
            recorded = read_record(record_path(records, dataset, cell), cell_fingerprint(cell_cfg)) if records else None
            if recorded is not None:
                rows.append({**recorded, "cached": True})
            elif compute and selected(sweep, cell):
                cells.append((cell, cell_cfg))
        if not cells:  # every cell of this dataset has its record: nothing to prepare
            continue
        home = dataset_workspace(workspace, config, dataset)
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
                record = str(record_path(records, dataset, cell)) if records else None
                futures.append(run_cell.submit(f"{dataset}-{name}", cell, cell_cfg, str(cell_home), device, local_gpus,
                                               record))
    rows.extend(future.result() for future in futures)
    order = {(c["dataset"], cell_id(c)): i for i, (c, _) in enumerate(configured)}
    rows.sort(key=lambda r: order.get((r["dataset"], cell_id(r)), len(order)))
    return pd.DataFrame(rows)


@flow(name="fdd-sweep-grid", log_prints=True)
def grid_flow(config: FlowConfig, workspace: str = ".", local_gpus: int = 0, compute: bool = True) -> dict[str, Any]:
    """The cells of ``config.sweep`` on this flow's task runner, then the tables.

    ``local_gpus``: GPUs of the local Dask cluster the runner started (one per cell), 0 otherwise.
    ``compute=False`` builds the tables from ``sweep.records`` alone (nothing is computed).
    """
    cells = _sweep_body(config, workspace, local_gpus, compute)
    result = write_tables(cells, workspace, grid_size=len(sweep_cell_configs(config)))
    if config.sweep.paper_table:
        result["paper_table"] = write_paper_table(cells, config, workspace)
    return result


@flow(name="fdd-sweep", log_prints=True)
def sweep_flow(config: FlowConfig, workspace: str = ".", compute: bool = True) -> dict[str, Any]:
    """Run every cell of ``config.sweep`` on Dask (a local cluster or ``sweep.address``).

    The grid runs as a subflow whose task runner is ``prefect-dask``'s
    ``DaskTaskRunner``, so the flow uses Dask however it is started (CLI or deployment).
    """
    if not compute:  # the tables from the records: no cluster, no device
        return grid_flow(config, workspace=workspace, compute=False)
    runner, local_gpus = _task_runner(config.sweep, resolve_device(config.runtime.device))
    return grid_flow.with_options(task_runner=runner)(config, workspace=workspace, local_gpus=local_gpus)


def write_tables(cells: pd.DataFrame, workspace: str, grid_size: int | None = None) -> dict[str, Any]:
    """``data/sweep/cells.csv`` (one row per cell) and ``summary.{csv,md}`` (mean/std over seeds).

    ``grid_size``: the number of cells in the grid; those without a row (left out by
    ``sweep.compute_only`` and without a record) are counted as not run.
    """
    out = Path(workspace) / SWEEP_DIR
    if cells.empty:
        cells = pd.DataFrame(columns=[*CELL_KEYS, *METRICS, "cached"])
    summary = summarize(cells)
    atomic_write_text(out / "cells.csv", cells.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    markdown = "# Sweep: mean and std over seeds\n\n" + summary.round(2).to_markdown(index=False) + "\n"
    atomic_write_text(out / "summary.md", markdown)
    publish_markdown("sweep", markdown, "sweep summary (mean and std over seeds)")
    publish_table("sweep-cells", json.loads(cells.to_json(orient="records")), "one row per sweep cell")
    computed = int((~cells["cached"].astype(bool)).sum())
    not_run = 0 if grid_size is None else grid_size - len(cells)
    return {"cells": len(cells), "computed": computed, "not_run": not_run, "summary": str(out / "summary.csv")}


def paper_grid(config: FlowConfig) -> list[tuple[str, str, int, str]]:
    """The (dataset, bias, ipc, mode) rows of the published-table comparison that the grid covers."""
    grid = []
    for cell, cell_cfg in sweep_cell_configs(config):
        if cell["backbone"] == "dm":
            data = data_columns(cell_cfg)
            grid.append((data["data_dataset"], data["bias"], cell["ipc"], cell["mode"]))
    return list(dict.fromkeys(grid))


def write_paper_table(cells: pd.DataFrame, config: FlowConfig, workspace: str) -> str:
    """``sweep.paper_table`` (CSV) and its markdown rendering: the DM cells against docs/method.md section 5."""
    path = Path(workspace) / str(config.sweep.paper_table)
    dm = cells[cells["backbone"] == "dm"].rename(columns={"dataset": "sweep_dataset", "data_dataset": "dataset"})
    table = paper_table(dm, paper_grid(config))
    paired = paired_comparison(dm, "cobra", "fairdd")
    atomic_write_text(path, table.to_csv(index=False, float_format="%.2f"))
    devices = ", ".join(sorted({str(d) for d in cells.get("device_name", pd.Series(dtype=str)).dropna()})) or "-"
    commits = ", ".join(sorted({str(c) for c in cells.get("fdd_commit", pd.Series(dtype=str)).dropna()})) or "-"
    markdown = "\n\n".join([
        "# The published DM table, reproduced with `fdd sweep`",
        "Mean and sample std over synthesis seeds (each seed: the mean of its evaluations), in %. "
        "`suff_gap_mean`: the max-over-classes sufficiency (precision) gap, mean over seeds. Verdict: `match` "
        f"within {MATCH_ACC:g} point of accuracy and {MATCH_DEO_M:g} of DEO_M of docs/method.md section 5.",
        f"Devices: {devices}. fdd commits: {commits}.",
        table.round(2).to_markdown(index=False),
        "## cobra against fairdd, paired over seeds",
        "Per-seed differences (cobra - fairdd); p: two-sided paired t-test.",
        paired.round(3).to_markdown(index=False) if len(paired) else "(no seed has both modes yet)",
    ]) + "\n"
    atomic_write_text(path.with_suffix(".md"), markdown)
    publish_markdown("paper-table", markdown, "the published DM table against fdd's sweep")
    return str(path)


def run_sweep(config: FlowConfig, workspace: str = ".", compute: bool = True) -> dict[str, Any]:
    """Check every cell, then run :func:`sweep_flow` (the entry point of ``fdd sweep``).

    ``compute=False`` (``fdd sweep --from-records``) only rebuilds the tables from the
    committed records of ``sweep.records``; cells without one are reported as not run.
    """
    sweep_cell_configs(config)
    if not compute and not config.sweep.records:
        raise ConfigError(ERR_NO_RECORDS)
    return sweep_flow(config, workspace=workspace, compute=compute)
