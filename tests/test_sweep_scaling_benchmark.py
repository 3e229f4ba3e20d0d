"""benchmarks/sweep_scaling.py on the CPU: fake GPUs, tiny params; its tables and its checks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks/sweep_scaling.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("sweep_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overlap_check_and_arguments() -> None:
    bench = _benchmark()
    t = pd.Timestamp("2026-01-01T00:00:00Z")
    s = pd.Timedelta(seconds=1)
    cells = pd.DataFrame(
        {
            "worker": ["0", "0", "1"],
            "seed": [0, 1, 2],
            "started": [t, t + s, t],
            "finished": [t + 2 * s, t + 3 * s, t + 3 * s],
        }
    )
    assert bench.overlaps(cells) == [("0", 0, 1)]
    cells.loc[1, "started"] = t + 2 * s  # back to back
    assert bench.overlaps(cells) == []
    assert bench.parse_args(["--gpus", "4,1,2"]).gpu_counts == [1, 2, 4]
    with pytest.raises(SystemExit):
        bench.parse_args(["--gpus", "0,1"])


@pytest.mark.slow
def test_scaling_benchmark_on_fake_gpus(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("results") / "sweep_scaling.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--params",
            str(tiny_workspace / "params.yaml"),
            "--workspace",
            str(tiny_workspace),
            "--workdir",
            str(tmp_path_factory.mktemp("work")),
            "--out",
            str(out),
            "--gpus",
            "1,2",
            "--cells",
            "2",
            "--fake-gpus",
            "--shared-gpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = pd.read_csv(out)
    assert list(table.columns) == ["gpus", "cells", "wall_s", "cells_per_hour", "device"]
    assert list(table["gpus"]) == [1, 2] and set(table["cells"]) == {2} and set(table["device"]) == {"cpu"}
    assert (table["wall_s"] > 0).all()
    assert table["cells_per_hour"].tolist() == pytest.approx((2 * 3600 / table["wall_s"]).tolist(), rel=1e-2)
    cells = pd.read_csv(out.with_name("sweep_scaling_cells.csv"), dtype={"worker": str})
    assert set(cells["status"]) == {"ok"}
    assert set(cells.loc[cells["gpus"] == 1, "device"]) == {"cpu:0"}
    two = cells[cells["gpus"] == 2]
    assert sorted(two["device"]) == ["cpu:0", "cpu:1"]  # one cell per fake GPU
    assert list(two["device"]) == [f"cpu:{w}" for w in two["worker"]]
    shared = pd.read_csv(
        out.with_name("sweep_scaling_shared_gpu.csv"), dtype={"worker": str}, parse_dates=["started", "finished"]
    )
    assert len(shared) == 2 and shared["worker"].nunique() == 1
    first, second = shared.sort_values("started").itertuples()
    assert second.started >= first.finished  # two threads, one GPU: one cell after the other
    assert "no two at once" in run.stdout
