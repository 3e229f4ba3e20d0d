"""Sweep throughput on 1..N GPUs of one host, and two workers sharing one GPU.

    python benchmarks/sweep_scaling.py --gpus 1,2,4 --cells 8 --preset full
    python benchmarks/sweep_scaling.py --gpus 1 --cells 4 --shared-gpu          # one GPU, two worker threads
    python benchmarks/sweep_scaling.py --gpus 1,2 --cells 2 --fake-gpus \\
        --params tiny/params.yaml                                               # the same path on the CPU

A slice of the sweep: ``--cells`` seeds (0, 1, ...) of one (dataset, ipc, backbone, mode),
the first value of each ``sweep`` axis after ``--params``, ``--preset`` and ``--set`` (so
every cell is the same amount of work). For each GPU count ``g`` the slice runs through
``fdd``'s own sweep flow (:func:`flows.sweep.sweep_flow`) on a local Dask cluster of ``g``
workers, one GPU each (resource ``GPU=1``, cells on ``cuda:<k>``), in a fresh workspace
``<workdir>/gpus<g>`` (so no cell is cached; the dataset's files are linked from
``--workspace``). ``wall_s`` is the span of the cells, from the first start to the last
end recorded in their rows (cluster start-up and the dataset's ingest left out), and
``cells_per_hour = cells * 3600 / wall_s``. Writes:

* ``--out`` (default ``benchmarks/results/sweep_scaling.csv``):
  ``gpus,cells,wall_s,cells_per_hour,device``, one row per GPU count;
* ``<out stem>_cells.csv``: one row per cell and GPU count (device, worker, started,
  finished, metrics), to check that each cell ran on its worker's GPU and that a cell's
  metrics do not depend on the GPU count (printed: the largest difference to the run on
  the fewest GPUs);
* with ``--shared-gpu``, ``<out stem>_shared_gpu.csv``: the slice on one GPU held by one
  worker with two threads (``GPU=1`` in all: the two threads never run two cells at once).

It exits with status 1 when a cell failed, when two cells overlapped on one worker (one
GPU) or when a cell's device is not its worker's. ``--fake-gpus`` declares ``g`` fake GPUs
on the CPU (device ``cpu:<k>``): the scheduling is the same, for a check without GPUs.

Needs what ``fdd sweep`` needs (torch, prefect, prefect-dask, distributed, pandas, the
fdd source tree; no internet): on a bare GPU host, install the carried wheels and put the
raw data at ``<workspace>/data/raw`` (``data.root``) beforehand. ``--processes`` makes the
workers processes (no GIL shared between GPUs); a temporary Prefect server then serves
the flow and its workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.settings import configure_environment

COLUMNS = ("gpus", "cells", "wall_s", "cells_per_hour", "device")
CELL_COLUMNS = (
    "gpus",
    "seed",
    "status",
    "error",
    "device",
    "worker",
    "started",
    "finished",
    "accuracy",
    "deo_m",
    "deo_a",
    "worst_group_accuracy",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="1,2", help="GPU counts, comma-separated (default 1,2)")
    parser.add_argument("--cells", type=int, default=4, help="cells of the slice: seeds 0..cells-1 (default 4)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preset", action="append", default=[], help="preset merged over --params (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workspace", default=".", help="where the dataset's files are (data.root, data.idx_dir)")
    parser.add_argument("--workdir", default=None, help="the runs' workspaces (default: a temporary folder)")
    parser.add_argument("--out", default="benchmarks/results/sweep_scaling.csv")
    parser.add_argument("--fake-gpus", action="store_true", help="declare the GPUs on the CPU (device cpu:<k>)")
    parser.add_argument(
        "--shared-gpu",
        action="store_true",
        help="also run the slice with two worker threads sharing one GPU (GPU=1 in all)",
    )
    parser.add_argument("--processes", action="store_true", help="workers as processes (a temporary Prefect server)")
    args = parser.parse_args(argv)
    try:
        args.gpu_counts = sorted({int(g) for g in args.gpus.split(",")})
    except ValueError:
        parser.error(f"--gpus expects comma-separated counts such as 1,2,4; got {args.gpus!r}")
    if not args.gpu_counts or min(args.gpu_counts) < 1 or args.cells < 1:
        parser.error(f"--gpus counts and --cells must be >= 1; got --gpus {args.gpus} --cells {args.cells}")
    return args


def slice_config(args: argparse.Namespace):  # -> PipelineConfig
    """The configuration of the slice: ``--cells`` seeds of one (dataset, ipc, backbone, mode)."""
    from fdd.config import deep_merge
    from flows.cli import _overrides, _preset_path
    from flows.configuration import load_config, sweep_cell_configs

    presets = [_preset_path(p) for p in args.preset]
    sweep = load_config(args.params, preset=presets, overrides=_overrides(args.overrides)).sweep
    overrides = {
        "sweep": {
            "datasets": [sweep.datasets[0]],
            "ipcs": [sweep.ipcs[0]],
            "backbones": [sweep.backbones[0]],
            "modes": [sweep.modes[0]],
            "seeds": list(range(args.cells)),
            "processes": args.processes,
            "address": None,
        }
    }
    if args.fake_gpus:
        overrides["runtime"] = {"device": "cpu"}
    config = load_config(args.params, preset=presets, overrides=deep_merge(_overrides(args.overrides), overrides))
    sweep_cell_configs(config)  # every cell valid before anything runs
    return config


def link_dataset(config, source: Path, workspace: Path) -> None:
    """Link the dataset's files (raw folder, idx folder, the user's CSVs) of ``source`` into ``workspace``."""
    from flows.sweep import _link, user_paths

    for rel in sorted(user_paths(config.data), key=lambda p: len(Path(p).parts)):
        if (source / rel).exists():
            _link(workspace / rel, source / rel)


def overlaps(cells) -> list[tuple[str, int, int]]:
    """(worker, seed, seed) for two cells of one worker whose [started, finished] overlap."""
    found = []
    for worker, group in cells.groupby("worker"):
        spans = sorted(zip(group["started"], group["finished"], group["seed"]))
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                found.append((str(worker), int(first), int(second)))
    return found


def device_name(config, fake: bool) -> str:
    import torch

    from flows.pipeline import resolve_device

    if fake or resolve_device(config.runtime.device) != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(0)


def run_slice(config, workspace: Path, *, gpus: int | None, address: str | None = None):  # -> DataFrame
    """Run the slice in ``workspace`` (local cluster of ``gpus`` GPUs, or the cluster at ``address``)."""
    import pandas as pd

    from flows.sweep import SWEEP_DIR, SweepCellsFailedError, sweep_flow

    if address is not None:
        config = config.model_copy(update={"sweep": config.sweep.model_copy(update={"address": address})})
    try:
        sweep_flow(config, workspace=str(workspace), gpus=gpus)
    except SweepCellsFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
    cells = pd.read_csv(workspace / SWEEP_DIR / "cells.csv", dtype={"worker": str})
    for column in ("started", "finished"):
        cells[column] = pd.to_datetime(cells[column])
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.workspace).resolve()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sweep_scaling_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    configure_environment(workdir)
    import contextlib

    import pandas as pd

    from fdd.files import atomic_write_bytes

    config = slice_config(args)
    server = contextlib.nullcontext()
    if args.processes:  # worker processes import fdd from here and report to the same (temporary) Prefect server
        root = str(Path(__file__).resolve().parent.parent)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        from prefect.testing.utilities import prefect_test_harness

        server = prefect_test_harness(server_startup_timeout=120)
    rows, per_cell, problems = [], [], []
    device = device_name(config, args.fake_gpus)
    with server:
        if args.processes:
            from prefect.settings import PREFECT_API_URL

            os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        for g in args.gpu_counts:
            workspace = workdir / f"gpus{g}"
            link_dataset(config, source, workspace)
            run = config.model_copy(update={"sweep": config.sweep.model_copy(update={"n_workers": g})})
            cells = run_slice(run, workspace, gpus=g if args.fake_gpus else None)
            wall = (cells["finished"].max() - cells["started"].min()).total_seconds()
            rows.append(
                {
                    "gpus": g,
                    "cells": len(cells),
                    "wall_s": round(wall, 2),
                    "cells_per_hour": round(len(cells) * 3600 / wall, 1),
                    "device": device,
                }
            )
            per_cell.append(cells.assign(gpus=g))
            expected = [f"{'cpu' if args.fake_gpus else 'cuda'}:{int(w)}" for w in cells["worker"]]
            if list(cells["device"]) != expected:
                problems.append(f"{g} GPUs: devices {list(cells['device'])} are not their workers' {expected}")
            if cells["worker"].nunique() != min(g, len(cells)):
                problems.append(f"{g} GPUs: the cells ran on workers {sorted(set(cells['worker']))}, not on {g}")
            problems += [f"{g} GPUs: cells {a} and {b} overlapped on worker {w}" for w, a, b in overlaps(cells)]
            problems += [
                f"{g} GPUs: cell seed {s} failed: {e}"
                for s, e in zip(cells["seed"], cells["error"])
                if isinstance(e, str) and e
            ]
            print(
                f"{g} GPU(s): {len(cells)} cells in {wall:.1f} s ({rows[-1]['cells_per_hour']} cells/hour)", flush=True
            )
        if args.shared_gpu:
            from distributed import LocalCluster

            workspace = workdir / "shared_gpu"
            link_dataset(config, source, workspace)
            with LocalCluster(
                n_workers=1,
                threads_per_worker=2,
                processes=args.processes,
                resources={"GPU": 1},
                dashboard_address=None,
            ) as cluster:
                shared = run_slice(config, workspace, gpus=None, address=cluster.scheduler_address)
            found = overlaps(shared)
            problems += [f"shared GPU: cells {a} and {b} ran at once on worker {w}" for w, a, b in found]
            print(
                f"shared GPU (two worker threads, GPU=1): {len(shared)} cells, "
                f"{'no two at once' if not found else f'{len(found)} overlaps'}",
                flush=True,
            )
    out = Path(args.out)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    atomic_write_bytes(out, table.to_csv(index=False).encode())
    cells = pd.concat(per_cell)[list(CELL_COLUMNS)]
    atomic_write_bytes(out.with_name(f"{out.stem}_cells.csv"), cells.to_csv(index=False).encode())
    if args.shared_gpu:
        atomic_write_bytes(
            out.with_name(f"{out.stem}_shared_gpu.csv"),
            shared[[c for c in CELL_COLUMNS if c != "gpus"]].to_csv(index=False).encode(),
        )
    fewest = cells[cells["gpus"] == args.gpu_counts[0]].set_index("seed")
    for g, group in cells.groupby("gpus"):
        diff = (group.set_index("seed")[["accuracy", "deo_m"]] - fewest[["accuracy", "deo_m"]]).abs().max()
        print(
            f"{g} GPU(s) vs {args.gpu_counts[0]}: largest |difference| accuracy {diff['accuracy']:.3f}, "
            f"DEO_M {diff['deo_m']:.3f}"
        )
    print(table.to_markdown(index=False))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"finished in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
