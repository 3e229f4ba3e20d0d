"""``sweep.results_table``: the compact per-architecture results (issue 17's tables) and the presets that write them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fdd.report.reproduction import RESULTS_COLUMNS, results_table
from flows.configuration import cell_id, load_config, sweep_cell_configs
from flows.sweep import (
    cell_fingerprint,
    network_identity,
    per_architecture,
    record_path,
    relabel_architectures,
    summarize,
    write_results_table,
)

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "flows/presets"


def cells_frame() -> pd.DataFrame:
    """Two seeds of vanilla and cobra, each audited on the matching network and AlexNet (headline: matching)."""
    rows = []
    for mode, base in (("vanilla", 20.0), ("cobra", 90.0)):
        for seed in (0, 1):
            per_arch = {
                "matching": {"accuracy": base + seed, "deo_m": 50.0 - 2 * seed, "deo_a": 10.0 + seed},
                "alexnet": {"accuracy": base - 5 + 3 * seed, "deo_m": 60.0, "deo_a": 20.0},
            }
            rows.append(
                {
                    "dataset": "cmnist-fg",
                    "data_dataset": "cmnist",
                    "bias": "foreground",
                    "shading": "binary",
                    "ipc": 10,
                    "backbone": "dm",
                    "mode": mode,
                    "seed": seed,
                    **per_arch["matching"],
                    "worst_group_accuracy": 1.0,
                    "suff_m": 1.0,
                    "suff_a": 1.0,
                    "architecture": "matching",
                    "architectures": json.dumps(per_arch),
                    "status": "ok",
                    "cached": False,
                    "device_name": "NVIDIA H200",
                    "fdd_commit": "abc1234",
                }
            )
    return pd.DataFrame(rows)


def test_results_table_has_the_issue_columns_and_the_means_and_stds_over_seeds():
    table = results_table(summarize(cells_frame()), matching="convnet")
    assert tuple(table.columns) == RESULTS_COLUMNS
    assert len(table) == 4 and set(table["architecture"]) == {"convnet", "alexnet"}
    row = table[(table["mode"] == "cobra") & (table["architecture"] == "alexnet")].iloc[0]
    assert row["dataset"] == "cmnist" and row["bias"] == "foreground" and row["seeds"] == 2
    assert row["acc_mean"] == pytest.approx(86.5) and row["acc_std"] == pytest.approx(np.std([85.0, 88.0], ddof=1))
    head = table[(table["mode"] == "vanilla") & (table["architecture"] == "convnet")].iloc[0]
    assert head["deo_m_mean"] == pytest.approx(49.0) and head["deo_m_std"] == pytest.approx(np.sqrt(2.0))
    assert head["deo_a_mean"] == pytest.approx(10.5)


def test_results_table_names_lambda_cells_and_refuses_a_summary_without_figures():
    cells = cells_frame().assign(**{"lambda": [np.nan, np.nan, 0.25, 0.25]})
    table = results_table(summarize(cells))
    assert set(table["mode"]) == {"vanilla", "cobra-lam0.25"}
    with pytest.raises(ValueError, match=r"lacks the columns \['accuracy_mean'"):
        results_table(summarize(cells_frame()).drop(columns="accuracy_mean"))


def test_write_results_table_writes_csv_and_markdown_with_devices_and_commits(tmp_path):
    config = load_config(ROOT / "params.yaml", preset=[PRESETS / "paper.yaml", PRESETS / "cross_architecture.yaml"])
    config = config.model_copy(update={"sweep": config.sweep.model_copy(update={"results_table": "out/table.csv"})})
    path = Path(write_results_table(cells_frame(), config, str(tmp_path)))
    assert path == tmp_path / "out/table.csv"
    assert tuple(pd.read_csv(path).columns) == RESULTS_COLUMNS
    markdown = path.with_suffix(".md").read_text()
    assert "NVIDIA H200" in markdown and "abc1234" in markdown and "| alexnet" in markdown


def test_the_results_table_path_stays_inside_the_workspace():
    from fdd.config import ConfigError

    with pytest.raises(ConfigError, match="results_table"):
        load_config(ROOT / "params.yaml", overrides={"sweep": {"results_table": "../outside.csv"}})


def test_cross_architecture_preset_audits_four_architectures_in_its_own_records():
    config = load_config(ROOT / "params.yaml", preset=[PRESETS / "paper.yaml", PRESETS / "cross_architecture.yaml"])
    assert config.audit.architectures == ("convnet", "alexnet", "vgg11", "resnet18")  # the reference's eval_mode M
    assert (
        config.sweep.paper_table is None and config.sweep.results_table == "benchmarks/results/cross_architecture.csv"
    )
    cells = sweep_cell_configs(config)
    assert len(cells) == 2 * 3 * 3 and {cfg.data.dataset for _, cfg in cells} == {"cmnist", "cfmnist"}
    assert {cfg.data.bias for _, cfg in cells} == {"foreground"}
    # other audits than the paper's: other fingerprints, so the records live apart from the paper table's
    assert config.sweep.records != load_config(ROOT / "params.yaml", preset=PRESETS / "paper.yaml").sweep.records


def test_the_committed_cross_architecture_records_are_those_of_the_preset():
    """Each cell of the preset finds its committed record (same fingerprint): the table is built from
    them with ``--from-records``, and a settings change that would silently drop them fails here."""
    config = load_config(ROOT / "params.yaml", preset=[PRESETS / "paper.yaml", PRESETS / "cross_architecture.yaml"])
    records = ROOT / config.sweep.records
    for cell, cfg in sweep_cell_configs(config):
        record = json.loads(record_path(records, cell["dataset"], cell).read_text())
        assert record["fingerprint"] == cell_fingerprint(cfg), cell_id(cell)
        assert set(json.loads(record["row"]["architectures"])) == set(config.audit.architectures)


def test_architectures_enter_the_fingerprint_as_the_networks_they_build():
    """``resnet18`` and ``resnet18-in`` are one network (one fingerprint); ``resnet18-bn`` another, so a
    record made when ``resnet18`` meant batch norm (fdd up to 74c9551) is not reused for today's."""
    from flows.configuration import parse_params

    def fingerprint(*architectures: str) -> str:
        return cell_fingerprint(parse_params({"audit": {"architectures": list(architectures)}}))

    assert network_identity("resnet18") == network_identity("resnet18-in") != network_identity("resnet18-bn")
    assert fingerprint("convnet", "resnet18") == fingerprint("convnet", "resnet18-in")
    assert fingerprint("convnet", "resnet18") != fingerprint("convnet", "resnet18-bn")
    assert fingerprint("convnet", "vgg11") == fingerprint("convnet-w128", "vgg11-in")
    assert fingerprint("convnet", "mlp") == fingerprint("convnet", "mlp-w128-d2") != fingerprint("convnet", "mlp-d3")
    assert fingerprint("convnet", "vgg11") != fingerprint("vgg11", "convnet")  # the first one is the headline


def test_a_record_made_with_another_spelling_is_relabelled_as_this_run_spells_its_networks():
    figures = {"convnet": {"accuracy": 90.0}, "resnet18-in": {"accuracy": 70.0}}
    row = {"architecture": "convnet", "architectures": json.dumps(figures), "accuracy": 90.0}
    relabelled = relabel_architectures(row, ("convnet-w128", "resnet18"))
    assert relabelled["architecture"] == "convnet-w128" and relabelled["accuracy"] == 90.0
    assert json.loads(relabelled["architectures"]) == {
        "convnet-w128": {"accuracy": 90.0},
        "resnet18": {"accuracy": 70.0},
    }
    # other networks (or another count) are left as recorded: the fingerprint would not have matched
    assert relabel_architectures(row, ("convnet", "resnet18-bn")) == row
    assert relabel_architectures(row, ("convnet",)) == row
    assert per_architecture(pd.DataFrame([relabelled]))["architecture"].tolist() == ["convnet-w128", "resnet18"]


def test_baselines_preset_reuses_the_paper_records_of_the_three_modes():
    paper = load_config(ROOT / "params.yaml", preset=PRESETS / "paper.yaml")
    config = load_config(ROOT / "params.yaml", preset=[PRESETS / "paper.yaml", PRESETS / "baselines.yaml"])
    assert config.sweep.records == paper.sweep.records and config.sweep.paper_table is None
    modes = set(config.sweep.modes)
    assert {"random-real", "stratified-real", "full-data", "uniform-subgroup", "cui-reweight", "vanilla-gdro"} <= modes
    expected = {
        cell_id(c): cell_fingerprint(cfg) for c, cfg in sweep_cell_configs(paper) if c["dataset"] == "cmnist-fg"
    }
    shared = [
        (cell_id(c), cell_fingerprint(cfg))
        for c, cfg in sweep_cell_configs(config)
        if c["mode"] in ("vanilla", "fairdd", "cobra")
    ]
    assert len(shared) == 9 and all(expected[name] == fp for name, fp in shared)


def test_a_real_image_baseline_of_another_backbone_keeps_its_audit_protocol_in_the_fingerprint():
    """A real-image set records no backbone, so it is audited with DSA whatever the cell's backbone:
    the DSA strategy must then be part of its fingerprint (a changed strategy must not reuse a record)."""
    from flows.configuration import parse_params

    def fingerprint(strategy: str | None) -> str:
        audit = {} if strategy is None else {"dsa_strategy": strategy}
        config = parse_params({"synthesis": {"backbone": "dc", "modes": ["random-real"]}, "audit": audit})
        return cell_fingerprint(config)

    assert fingerprint("crop") != fingerprint(None)


def test_a_grid_without_lambdas_reads_a_lambda_1_record_as_its_plain_cobra_cell(tmp_path):
    """The frontier preset shares the paper's records: its lambda-1 cobra records carry lambda 1.0
    in their rows; a grid without the axis must still see one cobra row, not a second one."""
    from flows.configuration import parse_params
    from flows.sweep import _sweep_body, data_columns, read_record, record_path, write_record

    params = {"sweep": {"datasets": ["cmnist"], "modes": ["cobra"], "seeds": [0, 1], "records": "records"}}
    plain = parse_params(params)
    with_axis = parse_params({"sweep": {**params["sweep"], "lambdas": [0.5, 1.0]}})
    records = tmp_path / "records"
    for cell, cfg in sweep_cell_configs(with_axis):
        if cell.get("lambda") == 1.0:
            row = {
                **cell,
                **data_columns(cfg),
                "accuracy": 90.0 + cell["seed"],
                "deo_m": 10.0,
                "deo_a": 5.0,
                "status": "ok",
            }
            write_record(record_path(records, "cmnist", cell), row, cell_fingerprint(cfg), cfg)
    (cell, cfg), *_ = sweep_cell_configs(plain)
    assert read_record(record_path(records, "cmnist", cell), cell_fingerprint(cfg)) is not None  # same record
    rows = _sweep_body(plain, str(tmp_path), local_gpus=0, compute=False)
    assert len(rows) == 2 and ("lambda" not in rows.columns or rows["lambda"].isna().all())
    table = results_table(summarize(rows))
    assert list(table["mode"]) == ["cobra"] and table["seeds"].tolist() == [2]


def test_a_grid_without_any_result_writes_the_header_and_says_so(tmp_path):
    """``--from-records`` before any record exists: the table is the header alone, not a crash."""
    config = load_config(ROOT / "params.yaml", preset=[PRESETS / "paper.yaml", PRESETS / "baselines.yaml"])
    path = Path(write_results_table(pd.DataFrame(), config, str(tmp_path)))
    table = pd.read_csv(path)
    assert tuple(table.columns) == RESULTS_COLUMNS and table.empty
    assert "Devices: -." in path.with_suffix(".md").read_text()
