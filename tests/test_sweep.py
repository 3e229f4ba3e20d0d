"""The sweep flow on a local Dask cluster: its grid, its table, and cached cells skipped."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from fdd.config import ConfigError
from flows.configuration import (
    ERR_DUPLICATE_AXIS,
    ERR_EMPTY_AXIS,
    SweepConfig,
    cell_config,
    cell_id,
    load_config,
    sweep_cell_configs,
    sweep_cells,
)
from flows.configuration import parse_params as parse_config
from flows.sweep import (
    ERR_CELLS_FAILED,
    StaleRecordsError,
    _cell_device,
    _task_runner,
    run_sweep,
    summarize,
    sweep_flow,
)


def test_grid_is_the_product_of_the_axes() -> None:
    sweep = SweepConfig(
        datasets=("cmnist", "cfmnist"), ipcs=(1, 10), backbones=("dm",), modes=("vanilla", "cobra"), seeds=(0, 1, 2)
    )
    cells = sweep_cells(sweep)
    assert len(cells) == 2 * 2 * 1 * 2 * 3
    assert len({tuple(c.values()) for c in cells}) == len(cells)
    assert cells[0] == {"dataset": "cmnist", "ipc": 1, "backbone": "dm", "mode": "vanilla", "seed": 0}
    assert len({cell_id(c) for c in cells if c["dataset"] == "cmnist"}) == 12


def test_cell_config_sets_the_cell_and_keeps_the_rest() -> None:
    base = parse_config({"synthesis": {"iterations": 7}, "audit": {"epochs": 3}})
    config = cell_config(base, {"dataset": "cfmnist", "ipc": 3, "backbone": "dm", "mode": "cobra", "seed": 4})
    assert config.data.dataset == "cfmnist" and config.synthesis.ipc == 3 and config.synthesis.modes == ("cobra",)
    assert config.runtime.seed == 4 and config.audit.seed == 4
    assert config.synthesis.iterations == 7 and config.audit.epochs == 3


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"seeds": []}, ERR_EMPTY_AXIS.format(axis="seeds")),
        ({"modes": ["cobra", "cobra"]}, ERR_DUPLICATE_AXIS.format(axis="modes", dupes=["cobra"])),
        ({"backbones": ["nope"]}, "sweep.backbones.0"),
        ({"ipcs": [0]}, "sweep.ipcs must lie in [1, 1000]"),
    ],
)
def test_bad_sweep_settings_are_named(sweep: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"sweep": sweep})
    assert message in str(info.value)


def test_summary_mean_and_sample_std_over_seeds() -> None:
    cells = pd.DataFrame(
        [
            {
                "dataset": "cmnist",
                "ipc": 1,
                "backbone": "dm",
                "mode": "cobra",
                "seed": s,
                "accuracy": a,
                "deo_m": 10.0 * s,
                "deo_a": 1.0,
                "worst_group_accuracy": 5.0,
                "suff_m": 4.0 + s,
                "suff_a": 2.0,
            }
            for s, a in ((0, 50.0), (1, 60.0), (2, 70.0))
        ]
        + [
            {
                "dataset": "cmnist",
                "ipc": 1,
                "backbone": "dm",
                "mode": "vanilla",
                "seed": 0,
                "accuracy": 40.0,
                "deo_m": 3.0,
                "deo_a": 2.0,
                "worst_group_accuracy": 1.0,
                "suff_m": 9.0,
                "suff_a": 3.0,
            }
        ]
    )
    summary = summarize(cells).set_index("mode")
    assert summary.loc["cobra", "seeds"] == 3 and summary.loc["vanilla", "seeds"] == 1
    assert summary.loc["cobra", "accuracy_mean"] == pytest.approx(60.0)
    assert summary.loc["cobra", "accuracy_std"] == pytest.approx(10.0)  # sample std of 50, 60, 70
    assert summary.loc["cobra", "deo_m_std"] == pytest.approx(10.0)
    assert summary.loc["cobra", "deo_a_std"] == 0.0
    assert summary.loc["cobra", "suff_m_mean"] == pytest.approx(5.0) and summary.loc["cobra", "suff_m_std"] == 1.0
    assert math.isnan(summary.loc["vanilla", "accuracy_std"]) and summary.loc["vanilla", "accuracy_mean"] == 40.0


def test_task_runner_is_a_local_dask_cluster_or_the_given_address() -> None:
    from prefect_dask import DaskTaskRunner

    local, gpus = _task_runner(SweepConfig(n_workers=3, processes=False), "cpu")
    assert isinstance(local, DaskTaskRunner) and gpus == 0
    assert local.cluster_class == "distributed.LocalCluster"
    assert local.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": False,
        "dashboard_address": None,
    }
    remote, _ = _task_runner(SweepConfig(address="tcp://10.0.0.5:8786"), "cpu")
    assert remote.address == "tcp://10.0.0.5:8786" and remote.cluster_class is None


def test_summary_reports_failed_seeds_and_averages_the_finished_ones() -> None:
    """A group with a failed seed is 'partial' (its mean over the seeds that finished), a group
    whose seeds all failed still has a row ('failed', no metrics), each with its errors."""

    def row(mode: str, seed: int, accuracy: float, status: str = "ok", error: str = "") -> dict:
        return {
            "dataset": "cmnist",
            "ipc": 1,
            "backbone": "dm",
            "mode": mode,
            "seed": seed,
            "accuracy": accuracy,
            "deo_m": 1.0,
            "deo_a": 1.0,
            "worst_group_accuracy": 1.0,
            "status": status,
            "error": error,
        }

    cells = pd.DataFrame(
        [
            row("cobra", 0, 50.0),
            row("cobra", 1, math.nan, "failed", "ValueError: boom"),
            row("cobra", 2, 70.0),
            row("vanilla", 0, 40.0),
            row("fairdd", 0, math.nan, "failed", "RuntimeError: a"),
            row("fairdd", 1, math.nan, "failed", "KilledWorker: b"),
        ]
    )
    summary = summarize(cells).set_index("mode")
    assert list(summary.index) == ["cobra", "vanilla", "fairdd"]  # the grid's order, failed group included
    assert summary.loc["cobra", "seeds"] == 2 and summary.loc["cobra", "accuracy_mean"] == pytest.approx(60.0)
    assert summary.loc["cobra", "status"] == "partial" and summary.loc["cobra", "error"] == "seed 1: ValueError: boom"
    assert summary.loc["vanilla", "status"] == "ok" and summary.loc["vanilla", "error"] == ""
    assert summary.loc["fairdd", "seeds"] == 0 and summary.loc["fairdd", "status"] == "failed"
    assert math.isnan(summary.loc["fairdd", "accuracy_mean"])
    assert summary.loc["fairdd", "error"] == "seed 0: RuntimeError: a | seed 1: KilledWorker: b"


def test_cell_device_is_its_workers_gpu() -> None:
    """Worker k of a local cluster of G GPUs runs on <kind>:<k mod G>; the kind is injected
    (cuda on a GPU host, cpu for a cluster declaring fake GPUs), so the mapping is checked here."""
    assert [_cell_device("cuda", local_gpus=4, worker=str(k)) for k in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
    ]
    assert _cell_device("cpu", local_gpus=2, worker="1") == "cpu:1"  # fake GPUs on the CPU
    assert _cell_device("cuda", local_gpus=0, worker="1") == "cuda"  # no local GPUs: the configured device
    assert _cell_device("cuda", local_gpus=2, worker="tcp://10.0.0.5:4000") == "cuda"  # a separately started worker
    assert _cell_device("cuda", local_gpus=2) == "cuda"  # outside Dask


def test_a_cell_that_failed_or_that_dask_gave_up_on_becomes_a_failed_row() -> None:
    """A cell's error comes back from its worker pickled, with where and when it ran; a cell
    whose workers kept dying (Dask's KilledWorker) is reported with what is known."""
    import pickle

    from distributed.scheduler import KilledWorker

    from flows.sweep import CellFailedError, _cell_row

    cell = {"dataset": "cmnist", "ipc": 2, "backbone": "dm", "mode": "cobra", "seed": 1}
    record = {
        "device": "cuda:1",
        "worker": "1",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:09+00:00",
    }
    error = pickle.loads(pickle.dumps(CellFailedError("ValueError: boom", record)))
    assert str(error) == "ValueError: boom" and error.record == record

    class Done:  # what PrefectDaskFuture.result gives: a failed run's exception, or raises what Dask raised
        def __init__(self, outcome: object) -> None:
            self.outcome = outcome

        def result(self, raise_on_failure: bool = True) -> object:
            assert raise_on_failure is False
            if isinstance(self.outcome, KilledWorker):
                raise self.outcome
            return self.outcome

    row = _cell_row(cell, Done(error))
    assert row == {**cell, **row, "status": "failed", "error": "ValueError: boom", "cached": False, **record}
    assert all(math.isnan(row[m]) for m in ("accuracy", "deo_m", "deo_a", "worst_group_accuracy"))
    from types import SimpleNamespace

    gone = KilledWorker("run_cell-1", SimpleNamespace(address="tcp://127.0.0.1:4000"), 3)  # the scheduler's WorkerState
    row = _cell_row(cell, Done(gone))
    assert row["status"] == "failed" and row["worker"] is None
    assert row["error"].startswith("KilledWorker: Attempted to run task 'run_cell-1' on 4 different workers")
    ok = {**cell, "accuracy": 90.0, "status": "ok"}
    assert _cell_row(cell, Done(ok)) is ok


def test_task_runner_declares_one_gpu_per_worker() -> None:
    runner, gpus = _task_runner(SweepConfig(n_workers=3, processes=False), "cpu", gpus=2)
    assert gpus == 2  # min(n_workers, GPUs) workers, each holding GPU=1
    assert runner.cluster_kwargs == {
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": False,
        "dashboard_address": None,
        "resources": {"GPU": 1},
    }


@pytest.mark.slow
def test_two_cell_sweep_on_a_local_dask_cluster(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two seeds of one (dataset, ipc, backbone, mode): two cells on two Dask workers.

    Thread workers (``processes: false``): a worker process would import torch and
    Prefect again (several seconds each on a small CPU) for cells that take seconds.
    """
    storage = tmp_path_factory.mktemp("prefect-results")
    overrides = {
        "sweep": {
            "datasets": ["cmnist"],
            "ipcs": [2],
            "backbones": ["dm"],
            "modes": ["cobra"],
            "seeds": [0, 1],
            "n_workers": 2,
            "processes": False,
        }
    }
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    ws = str(tiny_workspace)
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            first = run_sweep(config, workspace=ws)
            assert first == {
                "cells": 2,
                "computed": 2,
                "failed": 0,
                "not_run": 0,
                "summary": str(tiny_workspace / "data/sweep/summary.csv"),
                "frontier": str(tiny_workspace / "data/sweep/frontier.csv"),
            }
            home = tiny_workspace / "data/sweep/cmnist/cells"
            synthetic = {s: home / f"ipc2-dm-cobra-seed{s}" / "data/synthetic/cobra/synthetic.pt" for s in (0, 1)}
            stamps = {s: p.stat().st_mtime_ns for s, p in synthetic.items()}
            assert synthetic[0].read_bytes() != synthetic[1].read_bytes()  # the seed reaches the synthesis
            again = run_sweep(config, workspace=ws)
            assert again["computed"] == 0  # both cells skipped through the stage cache
            assert {s: p.stat().st_mtime_ns for s, p in synthetic.items()} == stamps
    cells = pd.read_csv(tiny_workspace / "data/sweep/cells.csv")
    assert sorted(cells["seed"]) == [0, 1] and set(cells["cached"]) == {True}
    assert set(cells["worker"].astype(str)) <= {"0", "1"}  # ran on the local cluster's two Dask workers
    per_cell = {
        s: json.loads((home / f"ipc2-dm-cobra-seed{s}" / "data/audit/cobra/metrics.json").read_text()) for s in (0, 1)
    }
    for _, row in cells.iterrows():
        for metric in ("accuracy", "deo_m", "deo_a", "worst_group_accuracy", "suff_m", "suff_a"):
            assert row[metric] == pytest.approx(per_cell[row["seed"]][metric])
    summary = pd.read_csv(tiny_workspace / "data/sweep/summary.csv")
    assert len(summary) == 1 and summary.loc[0, "seeds"] == 2
    values = [per_cell[s]["accuracy"] for s in (0, 1)]
    assert summary.loc[0, "accuracy_mean"] == pytest.approx(sum(values) / 2)
    assert summary.loc[0, "accuracy_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    markdown = (tiny_workspace / "data/sweep/summary.md").read_text()
    assert "accuracy_mean" in markdown and "cobra" in markdown


def test_a_grid_with_bad_cells_is_refused_before_anything_runs(tiny_workspace: Path) -> None:
    """adult needs the MLP and no DSA: its cells fail validation, and nothing is written."""
    from flows import cli
    from flows.configuration import ERR_SWEEP_CELLS, sweep_cell_configs

    overrides = {
        "sweep": {
            "datasets": ["cmnist", "adult"],
            "ipcs": [2],
            "backbones": ["dm"],
            "modes": ["vanilla", "cobra"],
            "seeds": [0],
        }
    }
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    with pytest.raises(ConfigError, match=ERR_SWEEP_CELLS.split("{")[1].split("}")[1].split("(")[0]) as info:
        sweep_cell_configs(config)
    message = str(info.value)
    assert message.startswith("2 of the 4 sweep cells")
    assert "adult-ipc2-dm-vanilla-seed0" in message and "adult-ipc2-dm-cobra-seed0" in message
    assert "cmnist-ipc" not in message and "data.dataset is 'adult'" in message  # the reason is named
    before = sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*"))
    code = cli.main(
        [
            "sweep",
            "--params",
            str(tiny_workspace / "params.yaml"),
            "--workspace",
            str(tiny_workspace),
            "--set",
            "sweep.datasets=[cmnist, adult]",
            "--set",
            "sweep.ipcs=[2]",
        ]
    )
    assert code == 2
    assert sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*")) == before  # nothing written


def test_dataset_workspace_links_every_user_path(tmp_path: Path) -> None:
    """A sweep's per-dataset folder sees the user's CSV and images at the same relative paths,
    and the ingest cache key computed there covers the same file contents."""
    from fdd.datasets.image_sources import user_files_digest
    from flows.sweep import dataset_workspace

    (tmp_path / "mine/images/a").mkdir(parents=True)
    (tmp_path / "mine/images/a/x.png").write_bytes(b"not really a png")
    (tmp_path / "mine/labels.csv").write_text("path,label,group\na/x.png,cat,g1\n")
    config = parse_config(
        {"data": {"dataset": "folder", "folder": {"csv": "mine/labels.csv", "images": "mine/images"}}}
    )
    home = dataset_workspace(str(tmp_path), config, "folder")
    assert (home / "mine/labels.csv").read_text() == (tmp_path / "mine/labels.csv").read_text()
    assert (home / "mine/images/a/x.png").read_bytes() == b"not really a png"
    digest = user_files_digest(config.data, workspace=home)
    assert digest is not None and digest == user_files_digest(config.data, workspace=tmp_path)
    (tmp_path / "mine/labels.csv").write_text("path,label,group\na/x.png,dog,g2\n")
    assert user_files_digest(config.data, workspace=home) != digest  # an edit reaches the cache key
    assert dataset_workspace(str(tmp_path), config, "folder") == home  # idempotent: links already there


def test_sweep_checks_do_not_import_prefect_before_the_workspace_sets_it_up():
    """Prefect reads its settings (home, result persistence) when imported; `fdd sweep` checks
    its grid before configure_environment, so the check must stay free of Prefect."""
    import subprocess
    import sys

    code = (
        "import argparse, sys\n"
        "from flows import cli\n"
        "from flows.configuration import load_config\n"
        "cli._check_command(load_config('params.yaml'), argparse.Namespace(command='sweep'))\n"
        "cli._check_command(load_config('params.yaml'), argparse.Namespace(command='distill', mode='cobra'))\n"
        "print('prefect' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_records_let_a_time_boxed_sweep_resume_and_feed_the_paper_table(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """compute_only runs part of the grid; the next run takes those cells from their committed
    records (no data prepared for them), computes the rest, and reruns a cell whose record
    was made with other settings. The paper table covers the whole grid each time."""
    storage = tmp_path_factory.mktemp("prefect-results")
    sweep = {
        "datasets": ["cmnist-fg", "cmnist-bg"],
        "ipcs": [2],
        "backbones": ["dm"],
        "modes": ["cobra"],
        "seeds": [0, 1],
        "n_workers": 1,
        "processes": False,
        "variants": {
            "cmnist-fg": {"dataset": "cmnist", "bias": "foreground"},
            "cmnist-bg": {"dataset": "cmnist", "bias": "background"},
        },
        "records": "results/cells",
        "paper_table": "results/paper_table.csv",
        "compute_only": {"datasets": ["cmnist-bg"]},
    }
    config = load_config(tiny_workspace / "params.yaml", overrides={"sweep": sweep})
    ws = str(tiny_workspace)
    records = tiny_workspace / "results/cells"
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            first = run_sweep(config, workspace=ws)
            assert (first["cells"], first["computed"], first["not_run"]) == (2, 2, 2)
            assert sorted(p.name for p in records.iterdir()) == [
                "cmnist-bg-ipc2-dm-cobra-seed0.json",
                "cmnist-bg-ipc2-dm-cobra-seed1.json",
            ]
            table = pd.read_csv(tiny_workspace / "results/paper_table.csv").set_index("bias")
            assert table.loc["background", "seeds"] == 2 and table.loc["foreground", "verdict"] == "not run"
            assert table.loc["background", "verdict"] == "unpublished"  # IPC 2 is not in the paper
            record = json.loads((records / "cmnist-bg-ipc2-dm-cobra-seed0.json").read_text())
            assert record["row"]["bias"] == "background" and record["config"]["data"]["bias"] == "background"
            # the background cells' working folders are gone (a fresh machine): their records count
            import shutil

            shutil.rmtree(tiny_workspace / "data/sweep/cmnist-bg")
            full = load_config(tiny_workspace / "params.yaml", overrides={"sweep": {**sweep, "compute_only": None}})
            second = run_sweep(full, workspace=ws)
            assert (second["cells"], second["computed"], second["not_run"]) == (4, 2, 0)
            assert not (tiny_workspace / "data/sweep/cmnist-bg").exists()
            # a record made with other settings does not count, and is not replaced unasked: the
            # sweep stops before any cell runs, naming it and the ways out
            stale = records / "cmnist-fg-ipc2-dm-cobra-seed1.json"
            payload = json.loads(stale.read_text())
            stale.write_text(json.dumps({**payload, "fingerprint": "0" * 64}))
            kept = stale.read_bytes()
            fresh = records / "cmnist-fg-ipc2-dm-cobra-seed0.json"
            stamp = fresh.stat().st_mtime_ns
            with pytest.raises(
                StaleRecordsError,
                match=r"1 cell\(s\).*cmnist-fg-ipc2-dm-cobra-seed1\.json \(made with other settings\).*replace_records",
            ):
                run_sweep(full, workspace=ws)
            with pytest.raises(StaleRecordsError):  # the check is the flow's own: a scheduled sweep starts there
                sweep_flow(full, workspace=ws)
            assert stale.read_bytes() == kept
            # sweep.replace_records: that cell goes through its stages again (served here by their
            # cache, since the settings did not really change) and its record is written anew
            replacing = load_config(
                tiny_workspace / "params.yaml",
                overrides={"sweep": {**sweep, "compute_only": None, "replace_records": True}},
            )
            third = run_sweep(replacing, workspace=ws)
            assert third["computed"] == 0 and json.loads(stale.read_text())["fingerprint"] == payload["fingerprint"]
            assert fresh.stat().st_mtime_ns == stamp  # a matching record is left as it is
            # a malformed sweep.paper_reasons file stops the run before its cells, not after them
            saved = fresh.read_bytes()
            fresh.unlink()
            (tiny_workspace / "results/reasons.csv").write_text("dataset,bias,ipc,mode\n")
            reasoned = load_config(
                tiny_workspace / "params.yaml",
                overrides={"sweep": {**sweep, "compute_only": None, "paper_reasons": "results/reasons.csv"}},
            )
            with pytest.raises(ValueError, match="results/reasons.csv: lacks \\['reason'\\]"):
                run_sweep(reasoned, workspace=ws)
            assert not fresh.exists()  # its cell was not computed
            fresh.write_bytes(saved)
            # --from-records computes nothing: a cell without a record is reported as not run
            (records / "cmnist-bg-ipc2-dm-cobra-seed1.json").unlink()
            # it needs no device: a GPU preset's tables rebuild on any machine
            on_gpu = load_config(
                tiny_workspace / "params.yaml",
                overrides={"runtime": {"device": "cuda"}, "sweep": {**sweep, "compute_only": None}},
            )
            tables_only = run_sweep(on_gpu, workspace=ws, compute=False)
            assert (tables_only["cells"], tables_only["computed"], tables_only["not_run"]) == (3, 0, 1)
            assert not (records / "cmnist-bg-ipc2-dm-cobra-seed1.json").exists()
            bg_only = pd.read_csv(tiny_workspace / "results/paper_table.csv").set_index("bias")
            assert bg_only.loc["background", "seeds"] == 1
            third = run_sweep(full, workspace=ws)  # the missing cell is computed again
            assert third["not_run"] == 0
    cells = pd.read_csv(tiny_workspace / "data/sweep/cells.csv")
    assert len(cells) == 4 and set(cells["bias"]) == {"foreground", "background"}
    table = pd.read_csv(tiny_workspace / "results/paper_table.csv").set_index("bias")
    assert (table["seeds"] == 2).all()
    bg = cells[cells["bias"] == "background"]
    assert table.loc["background", "acc_mean"] == pytest.approx(bg["accuracy"].mean(), abs=0.01)
    assert "paired over seeds" in (tiny_workspace / "results/paper_table.md").read_text()


def test_stale_records_are_refused_only_for_cells_this_run_computes(tmp_path: Path) -> None:
    """check_stale_records: a record with another fingerprint or unreadable, of a cell the run
    would compute, stops it; a matching record, a cell outside compute_only, or
    sweep.replace_records does not."""
    from flows.sweep import cell_fingerprint as fingerprint
    from flows.sweep import check_stale_records, record_path, write_record

    sweep = {
        "datasets": ["cmnist"],
        "ipcs": [2],
        "backbones": ["dm"],
        "modes": ["vanilla", "cobra"],
        "seeds": [0, 1],
        "records": "cells",
    }
    config = parse_config({"sweep": sweep})
    configured = sweep_cell_configs(config)
    records = tmp_path / "cells"
    paths = {cell_id(cell): (record_path(records, "cmnist", cell), cfg) for cell, cfg in configured}
    for path, cfg in paths.values():  # every cell recorded with its own settings: nothing to refuse
        write_record(path, {"accuracy": 1.0}, fingerprint(cfg), cfg)
    check_stale_records(configured, config.sweep, records)
    stale, _ = paths["ipc2-dm-cobra-seed1"]
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "fingerprint": "0" * 64}))
    broken, _ = paths["ipc2-dm-vanilla-seed0"]
    broken.write_text("{not json")
    with pytest.raises(StaleRecordsError, match=r"2 cell\(s\)") as info:
        check_stale_records(configured, config.sweep, records)
    assert "cmnist-ipc2-dm-cobra-seed1.json (made with other settings)" in str(info.value)
    assert "cmnist-ipc2-dm-vanilla-seed0.json (unreadable)" in str(info.value)
    only_cobra_seed0 = parse_config({"sweep": {**sweep, "compute_only": {"modes": ["cobra"], "seeds": [0]}}})
    check_stale_records(sweep_cell_configs(only_cobra_seed0), only_cobra_seed0.sweep, records)  # not computed
    replacing = parse_config({"sweep": {**sweep, "replace_records": True}})
    check_stale_records(sweep_cell_configs(replacing), replacing.sweep, records)
    assert broken.read_text() == "{not json"  # the check itself never writes


def test_sweep_variants_and_compute_only_are_validated() -> None:
    with pytest.raises(ConfigError, match="neither a dataset"):
        parse_config({"sweep": {"datasets": ["cmnist-bg"]}})
    with pytest.raises(ConfigError, match="must set dataset"):
        parse_config({"sweep": {"datasets": ["x"], "variants": {"x": {"bias": "background"}}}})
    with pytest.raises(ConfigError, match="are dataset names"):
        parse_config({"sweep": {"datasets": ["cmnist"], "variants": {"cmnist": {"dataset": "cmnist"}}}})
    with pytest.raises(ConfigError, match="compute_only.ipcs lists \\[50\\]"):
        parse_config({"sweep": {"ipcs": [10], "compute_only": {"ipcs": [50]}}})
    with pytest.raises(ConfigError, match="its keys must be among"):
        parse_config({"sweep": {"compute_only": {"bias": ["x"]}}})
    with pytest.raises(ConfigError, match="inside the workspace"):
        parse_config({"sweep": {"records": "/abs/cells"}})
    config = parse_config(
        {
            "data": {"shading": "intensity"},
            "sweep": {"datasets": ["cfm-bg"], "variants": {"cfm-bg": {"dataset": "cfmnist", "bias": "background"}}},
        }
    )
    cell = config_cell = sweep_cells(config.sweep)[0]
    resolved = cell_config(config, config_cell)
    assert cell["dataset"] == "cfm-bg"
    assert (resolved.data.dataset, resolved.data.bias, resolved.data.shading) == ("cfmnist", "background", "intensity")


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_finish(
    tiny_workspace: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`fdd sweep` where IPC 50 asks for more images per class than the tiny set has (40): that
    cell's synthesis raises; the IPC 2 cell still finishes, the tables carry the failure's row and
    error, and the command prints the summary and the error, and exits with status 1."""
    import yaml

    from fdd.distillation.synthesis import ERR_TOO_FEW_FOR_INIT
    from flows import cli
    from flows.settings import DEFAULTS

    for key, value in {**DEFAULTS, "PREFECT_HOME": str(tiny_workspace / ".prefect")}.items():
        monkeypatch.setenv(key, value)  # what the command sets, undone after the test
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["synthesis"]["init"] = "real"
    params["sweep"] = {
        "datasets": ["cmnist"],
        "ipcs": [2, 50],
        "backbones": ["dm"],
        "modes": ["cobra"],
        "seeds": [0],
        "n_workers": 2,
        "processes": False,
    }
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    storage = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            code = cli.main(
                ["sweep", "--params", str(tiny_workspace / "params.yaml"), "--workspace", str(tiny_workspace)]
            )
    out = capsys.readouterr()
    table = tiny_workspace / "data/sweep/cells.csv"
    assert code == 1
    assert (
        "error: " + ERR_CELLS_FAILED.format(failed=1, cells=2, names="cmnist-ipc50-dm-cobra-seed0", table=table)
        in out.err
    )
    assert (tiny_workspace / "data/sweep/summary.md").read_text() in out.out
    cells = pd.read_csv(table, dtype={"worker": str}).fillna({"error": ""}).set_index("ipc")
    good, bad = cells.loc[2], cells.loc[50]
    metrics = json.loads(
        (tiny_workspace / "data/sweep/cmnist/cells/ipc2-dm-cobra-seed0/data/audit/cobra/metrics.json").read_text()
    )
    assert good["status"] == "ok" and good["error"] == "" and good["accuracy"] == pytest.approx(metrics["accuracy"])
    assert bad["status"] == "failed" and math.isnan(bad["accuracy"])  # no metrics: blank in the CSV
    prefix = ERR_TOO_FEW_FOR_INIT.split("{")[0]
    assert bad["error"].startswith("ValueError: " + prefix), bad["error"]
    for row in (good, bad):  # where and when each cell ran, the failed one too
        assert row["device"] == "cpu" and row["worker"] in {"0", "1"}
        assert pd.Timestamp(row["started"]) <= pd.Timestamp(row["finished"])
    assert not (
        tiny_workspace / "data/sweep/cmnist/cells/ipc50-dm-cobra-seed0/data/synthetic/cobra/synthetic.pt"
    ).exists()
    summary = pd.read_csv(tiny_workspace / "data/sweep/summary.csv").fillna({"error": ""}).set_index("ipc")
    assert summary.loc[2, "status"] == "ok" and summary.loc[2, "seeds"] == 1
    assert summary.loc[50, "status"] == "failed" and summary.loc[50, "seeds"] == 0
    assert summary.loc[50, "error"] == "seed 0: " + bad["error"]


def test_paper_table_of_a_grid_without_any_cell_says_not_run(tmp_path: Path) -> None:
    """`fdd sweep --from-records` in a workspace without records: every row of the grid, `not run`."""
    from flows.sweep import write_paper_table

    config = parse_config(
        {
            "sweep": {
                "datasets": ["cmnist-bg"],
                "ipcs": [10],
                "modes": ["fairdd", "cobra"],
                "variants": {"cmnist-bg": {"dataset": "cmnist", "bias": "background"}},
                "paper_table": "out/paper.csv",
            }
        }
    )
    path = write_paper_table(pd.DataFrame(), config, str(tmp_path))
    table = pd.read_csv(path)
    assert list(table["mode"]) == ["fairdd", "cobra"] and set(table["verdict"]) == {"not run"}
    assert (table["seeds"] == 0).all() and table.loc[1, "published_deo_m"] == 12.6  # C-MNIST BG IPC 10 cobra


def test_paper_reasons_reach_the_table_and_a_missing_file_is_named(tmp_path: Path) -> None:
    from flows.sweep import paper_reasons, write_paper_table

    sweep = {
        "datasets": ["cmnist-fg"],
        "ipcs": [10],
        "modes": ["vanilla"],
        "variants": {"cmnist-fg": {"dataset": "cmnist", "bias": "foreground"}},
        "paper_table": "out/paper.csv",
        "paper_reasons": "out/reasons.csv",
    }
    config = parse_config({"sweep": sweep})
    cells = pd.DataFrame(
        [
            {"dataset": "cmnist-fg", "data_dataset": "cmnist", "bias": "foreground", "ipc": 10, "mode": "vanilla"}
            | {"backbone": "dm", "seed": seed, "status": "ok", "accuracy": acc, "deo_m": 100.0, "deo_a": 99.0}
            | {"suff_m": 90.0}
            for seed, acc in ((0, 20.0), (1, 21.0))
        ]
    )
    # a fresh workspace has no reasons file yet: the table goes without reasons, with a warning naming the file
    with pytest.warns(UserWarning, match="sweep.paper_reasons names .*out/reasons.csv, which does not exist"):
        assert paper_reasons(config.sweep, str(tmp_path)) is None
    with pytest.warns(UserWarning, match="which does not exist"):
        table = pd.read_csv(write_paper_table(cells, config, str(tmp_path)))
    assert table.loc[0, "verdict"].endswith("points from published")
    assert "reasons.csv" not in (tmp_path / "out/paper.md").read_text()  # named only once read
    (tmp_path / "out/reasons.csv").write_text(
        "dataset,bias,ipc,mode,reason\ncmnist,foreground,10,vanilla,schedule (reproduction.md)\n"
    )
    table = pd.read_csv(write_paper_table(cells, config, str(tmp_path)))
    assert table.loc[0, "verdict"].endswith("points from published: schedule (reproduction.md)")
    assert "out/reasons.csv" in (tmp_path / "out/paper.md").read_text()
    no_table = parse_config({"sweep": {**sweep, "paper_table": None}})  # an overlay without the table
    assert no_table.sweep.paper_reasons == "out/reasons.csv"  # kept, unused: no table to annotate
    with pytest.raises(ConfigError, match="sweep.paper_reasons must be a relative path inside the workspace"):
        parse_config({"sweep": {**sweep, "paper_reasons": "/etc/reasons.csv"}})
