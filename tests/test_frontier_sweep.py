"""The frontier sweep: ``sweep.lambdas`` cells, their records and summary, frontier.{csv,png}, the preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from fdd.config import ConfigError
from fdd.distillation.dm import class_means, mean_matching_loss
from fdd.report.frontier import frontier_from_metrics, frontier_table
from fdd.transport.barycenter import cell_statistics, mean_barycenter
from flows.configuration import cell_id, load_config, parse_params, sweep_cell_configs, sweep_cells
from flows.sweep import cell_fingerprint, summarize, write_frontier_table, write_paper_table, write_tables

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "flows/presets"


def grid(**sweep):
    return parse_params({"sweep": {"modes": ["vanilla", "cobra"], "seeds": [0, 1], **sweep}})


def test_lambdas_multiply_the_dm_cobra_cells_only():
    plain = grid()
    assert all("lambda" not in c for c in sweep_cells(plain.sweep))  # no axis: the cells of before
    config = grid(lambdas=[0, 0.5, 1])
    cells = sweep_cells(config.sweep)
    assert len(cells) == 2 + 3 * 2
    assert [c.get("lambda") for c in cells if c["mode"] == "cobra"] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert all("lambda" not in c for c in cells if c["mode"] == "vanilla")
    names = [cell_id(c) for c in cells]
    assert "ipc10-dm-cobra-lam0-seed0" in names and "ipc10-dm-cobra-lam0.5-seed1" in names
    assert "ipc10-dm-cobra-seed0" in names  # lambda 1: the name (and record) of the cell without the axis
    configured = dict((cell_id(c), cfg) for c, cfg in sweep_cell_configs(config))
    assert configured["ipc10-dm-cobra-lam0.5-seed0"].synthesis.barycenter_lambda == 0.5
    before = dict((cell_id(c), cfg) for c, cfg in sweep_cell_configs(plain))
    for name in ("ipc10-dm-cobra-seed0", "ipc10-dm-vanilla-seed1"):  # unchanged fingerprints
        assert cell_fingerprint(configured[name]) == cell_fingerprint(before[name])
    assert cell_fingerprint(configured["ipc10-dm-cobra-lam0-seed0"]) != cell_fingerprint(before["ipc10-dm-cobra-seed0"])


@pytest.mark.parametrize("bad", [[1.5], [-0.1], [], [0.5, 0.5], [True], [float("nan")], "0.5"])
def test_invalid_lambda_lists_are_refused_naming_the_key_and_range(bad):
    with pytest.raises(ConfigError, match=r"sweep.lambdas.*must list numbers in \[0, 1\]|sweep.lambdas"):
        grid(lambdas=bad)
    with pytest.raises(ConfigError) as info:
        grid(lambdas=bad)
    assert "sweep.lambdas" in str(info.value) and "[0, 1]" in str(info.value)


def test_the_lambda_0_cell_matches_vanillas_target():
    config = grid(lambdas=[0, 1])
    lam = next(cfg for c, cfg in sweep_cell_configs(config) if c.get("lambda") == 0.0).synthesis.barycenter_lambda
    gen = torch.Generator().manual_seed(3)
    n, classes, groups = 120, 3, 3
    labels = torch.arange(n) % classes
    group = torch.where(torch.rand(n, generator=gen) < 0.8, 0, torch.randint(1, groups, (n,), generator=gen))
    features = torch.randn(n, 6, generator=gen) + group.unsqueeze(1).float()
    stats = cell_statistics(features, labels, group, num_classes=classes, num_groups=groups)
    pooled = class_means(features, labels, num_classes=classes)  # vanilla's target
    assert torch.allclose(mean_barycenter(stats.means, stats.counts, lam=lam), pooled, atol=1e-5)
    syn, syn_labels = torch.randn(6, 6, generator=gen), torch.arange(classes).repeat_interleave(2)
    common = dict(num_classes=classes, num_groups=groups, barycenter_distance="squared")
    vanilla = mean_matching_loss(features, labels, group, syn, syn_labels, mode="vanilla", **common)
    cell = mean_matching_loss(features, labels, group, syn, syn_labels, mode="cobra", barycenter_lambda=lam, **common)
    assert cell.item() == pytest.approx(vanilla.item(), rel=1e-5)


def frontier_cells() -> pd.DataFrame:
    rows = []
    for seed in (0, 1, 2):
        rows.append({"mode": "vanilla", "seed": seed, "accuracy": 30 + seed, "deo_m": 100.0})
        for lam in (0.0, 0.5, 1.0):
            rows.append(
                {"mode": "cobra", "lambda": lam, "seed": seed, "accuracy": 60 + 30 * lam + seed, "deo_m": 80 - 60 * lam}
            )
    rows.append({"mode": "cobra", "lambda": 0.5, "seed": 3, "accuracy": 0.0, "deo_m": 0.0, "status": "failed"})
    cells = pd.DataFrame(rows)
    cells["status"] = cells["status"].fillna("ok") if "status" in cells else "ok"
    return cells.assign(dataset="cmnist", ipc=10, backbone="dm")


def test_frontier_table_has_one_point_per_lambda_with_the_mean_over_seeds():
    table = frontier_table(frontier_cells(), panels=["dataset", "ipc", "backbone"])
    cobra = table[table["mode"] == "cobra"]
    assert list(cobra["lambda"]) == [0.0, 0.5, 1.0] and set(cobra["seeds"]) == {3}  # the failed seed is left out
    for _, row in cobra.iterrows():
        assert row["accuracy_mean"] == pytest.approx(60 + 30 * row["lambda"] + 1)  # mean of +0, +1, +2
        assert row["accuracy_std"] == pytest.approx(1.0) and row["deo_m_std"] == pytest.approx(0.0)
    vanilla = table[table["mode"] == "vanilla"].iloc[0]
    assert math.isnan(vanilla["lambda"]) and vanilla["accuracy_mean"] == pytest.approx(31)
    with pytest.raises(ValueError, match="lack the columns \\['deo_m'\\]"):
        frontier_table(frontier_cells().drop(columns="deo_m"))


def test_sweep_tables_write_the_frontier_and_key_the_summary_by_lambda(tmp_path):
    cells = frontier_cells().assign(cached=True, error="")
    result = write_tables(cells, str(tmp_path))
    out = tmp_path / "data/sweep"
    assert result["frontier"] == str(out / "frontier.csv")
    assert (out / "frontier.png").read_bytes().startswith(b"\x89PNG")
    frontier = pd.read_csv(out / "frontier.csv")
    cobra = frontier[frontier["mode"] == "cobra"]
    assert len(cobra) == 3 and list(cobra["accuracy_mean"]) == pytest.approx([61.0, 76.0, 91.0])
    summary = summarize(cells)
    assert list(summary.columns[: summary.columns.get_loc("lambda") + 1])[-2:] == ["mode", "lambda"]
    assert len(summary) == 4 and list(summary["lambda"]) == ["", 0.0, 0.5, 1.0]
    assert list(summary["status"]) == ["ok", "ok", "partial", "ok"]
    # the published table's cobra is cobra at lambda 1 only
    config = parse_params({"sweep": {"modes": ["vanilla", "cobra"], "seeds": [0, 1, 2], "lambdas": [0, 0.5, 1]}})
    data = {"data_dataset": "cmnist", "bias": "foreground", "shading": "binary", "suff_m": 1.0, "deo_a": 1.0}
    config = config.model_copy(update={"sweep": config.sweep.model_copy(update={"paper_table": "paper.csv"})})
    write_paper_table(cells.assign(**data), config, str(tmp_path))
    paper = pd.read_csv(tmp_path / "paper.csv")
    assert paper.set_index("mode").loc["cobra", "acc_mean"] == pytest.approx(91.0)


def test_the_sweep_page_shows_the_frontier_plot_once_a_cell_finished(tmp_path):
    write_tables(frontier_cells().assign(cached=True, error=""), str(tmp_path))
    assert "![accuracy against DEO_M](frontier.png)" in (tmp_path / "data/sweep/summary.md").read_text()
    write_tables(frontier_cells().assign(status="failed", cached=False, error="boom"), str(tmp_path / "none"))
    assert "frontier.png" not in (tmp_path / "none/data/sweep/summary.md").read_text()


def test_frontier_table_publishes_csv_plot_and_page(tmp_path):
    config = load_config(ROOT / "params.yaml", preset=PRESETS / "frontier.yaml")
    assert config.sweep.frontier_table == "benchmarks/results/frontier.csv"
    config = config.model_copy(update={"sweep": config.sweep.model_copy(update={"frontier_table": "out/front.csv"})})
    cells = frontier_cells().assign(device_name="NVIDIA H200", fdd_commit="abc1234")
    path = Path(write_frontier_table(cells, config, str(tmp_path)))
    assert path == tmp_path / "out/front.csv"
    table = pd.read_csv(path)
    cobra = table[table["mode"] == "cobra"]
    assert list(cobra["lambda"]) == [0.0, 0.5, 1.0] and list(cobra["accuracy_mean"]) == pytest.approx([61, 76, 91])
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    page = path.with_suffix(".md").read_text()
    assert "![accuracy against DEO_M](front.png)" in page and "NVIDIA H200" in page and "abc1234" in page
    # nothing finished: the header alone, no plot, and the page says so
    empty = Path(write_frontier_table(cells.assign(status="failed"), config, str(tmp_path / "empty")))
    assert pd.read_csv(empty).empty and "mode" in pd.read_csv(empty).columns
    assert not empty.with_suffix(".png").exists() and "No cell has finished" in empty.with_suffix(".md").read_text()
    with pytest.raises(ConfigError, match="frontier_table"):
        load_config(ROOT / "params.yaml", overrides={"sweep": {"frontier_table": "/tmp/outside.csv"}})


def test_the_reports_frontier_has_one_point_per_mode():
    metrics = {
        "vanilla": {"accuracy": 30.0, "accuracy_std": 1.0, "deo_m": 100.0, "deo_m_std": 0.0, "num_eval": 5},
        "cobra": {"accuracy": 90.0, "accuracy_std": 0.5, "deo_m": 20.0, "deo_m_std": 2.0, "num_eval": 5},
        "one-group": {"accuracy": 50.0, "deo_m": None},
    }
    table = frontier_from_metrics(metrics, lambdas={"cobra": 0.5})
    assert list(table["mode"]) == ["vanilla", "cobra"] and list(table["seeds"]) == [5, 5]
    assert table.set_index("mode").loc["cobra", "lambda"] == 0.5 and math.isnan(table.loc[0, "lambda"])


def test_frontier_preset_is_a_gpu_run_of_five_lambdas_and_three_seeds():
    config = load_config(ROOT / "params.yaml", preset=PRESETS / "frontier.yaml")
    sweep = config.sweep
    assert config.runtime.device == "cuda" and sweep.ipcs == (10,) and sweep.seeds == (0, 1, 2)
    assert len(sweep.lambdas or ()) >= 5 and {0.0, 1.0} <= set(sweep.lambdas or ())
    cells = sweep_cell_configs(config)
    assert {cfg.data.dataset for _, cfg in cells} == {"cmnist"} and {cfg.data.bias for _, cfg in cells} == {
        "foreground"
    }
    # the lambda-1 cobra cells are the paper table's own cmnist-fg IPC 10 cobra cells (same name, same fingerprint)
    paper = {
        cell_id(c): cell_fingerprint(cfg)
        for c, cfg in sweep_cell_configs(load_config(ROOT / "params.yaml", preset=PRESETS / "paper.yaml"))
        if c["dataset"] == "cmnist-fg" and c["ipc"] == 10
    }
    at_one = {cell_id(c): cell_fingerprint(cfg) for c, cfg in cells if c.get("lambda") == 1.0}
    assert at_one and all(paper[name] == fp for name, fp in at_one.items())


def test_quick_cpu_frontier_sweep(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The frontier preset's grid shrunk for a CPU: cobra at lambdas 0 and 1 and vanilla, two seeds."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import run_sweep

    overrides = {
        "sweep": {
            "datasets": ["cmnist"],
            "ipcs": [2],
            "modes": ["vanilla", "cobra"],
            "lambdas": [0, 1],
            "seeds": [0, 1],
            "n_workers": 1,
            "records": "records",
        }
    }
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    storage = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            result = run_sweep(config, workspace=str(tiny_workspace))
    assert result["cells"] == 6 and result["failed"] == 0
    out = tiny_workspace / "data/sweep"
    assert (out / "frontier.png").read_bytes().startswith(b"\x89PNG")
    cells = pd.read_csv(out / "cells.csv")
    frontier = pd.read_csv(out / "frontier.csv")
    cobra = frontier[frontier["mode"] == "cobra"].set_index("lambda")
    assert list(cobra.index) == [0.0, 1.0] and set(cobra["seeds"]) == {2}
    for lam in (0.0, 1.0):
        part = cells[(cells["mode"] == "cobra") & (cells["lambda"] == lam)]
        assert cobra.loc[lam, "accuracy_mean"] == pytest.approx(part["accuracy"].mean())
    records = sorted(p.name for p in (tiny_workspace / "records").iterdir())
    assert "cmnist-ipc2-dm-cobra-lam0-seed1.json" in records and "cmnist-ipc2-dm-cobra-seed1.json" in records
    record = json.loads((tiny_workspace / "records/cmnist-ipc2-dm-cobra-lam0-seed0.json").read_text())
    assert record["config"]["synthesis"]["barycenter_lambda"] == 0.0 and record["row"]["lambda"] == 0.0
