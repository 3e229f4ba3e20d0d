"""``fdd audit PATH`` and the per-architecture audit files: external sets read safely, the same outputs as the pipeline."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.datasets.external import LABELS_CSV, load_external_set
from flows.pipeline import STAGES, load_config, run_single_stage
from tests.test_audit import quadrant_data

TEST = quadrant_data(per_cell=2, seed=1, size=16)


def _reference_file(path: Path, runs: list[tuple[torch.Tensor, torch.Tensor]]) -> Path:
    """A result file as the COBRA / FairDD reference's train_dm.py saves it."""
    torch.save(
        {"data": [[images, labels] for images, labels in runs], "accs_all_exps": {"ConvNet": [61.2, 60.8]}}, path
    )
    return path


def test_reference_result_file_reads_the_chosen_experiment(tmp_path: Path):
    runs = [(torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])) for _ in range(2)]
    path = _reference_file(tmp_path / "res_DM_CMNIST_ConvNet_2ipc_cobra.pt", runs)
    first = load_external_set(path, test=TEST)
    second = load_external_set(path, test=TEST, experiment=1)
    assert torch.equal(first.images, runs[0][0]) and torch.equal(second.images, runs[1][0])
    assert torch.equal(second.labels, runs[1][1]) and second.class_names == TEST.class_names
    assert (second.mean, second.std) == (TEST.mean, TEST.std)
    assert second.provenance == {"source": str(path), "format": "reference res_*.pt", "experiment": 1}
    with pytest.raises(ValueError, match="holds 2 experiment\\(s\\) under 'data'; experiment must be in 0..1; got 2"):
        load_external_set(path, test=TEST, experiment=2)


def test_reference_images_are_renormalised_from_the_source_statistics(tmp_path: Path):
    pixels = torch.rand(3, 3, 16, 16)
    mean, std = (0.1, 0.2, 0.3), (0.3, 0.2, 0.1)
    source = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    path = tmp_path / "set.pt"
    torch.save({"image_syn": source, "label_syn": torch.tensor([0, 1, 2])}, path)
    loaded = load_external_set(path, test=TEST, source_mean=mean, source_std=std)
    assert torch.allclose(loaded.images, (pixels - 0.5) / 0.5, atol=1e-5)  # the test split's (0.5, 0.5) normalisation
    with pytest.raises(ValueError, match="source_mean and source_std must be given together"):
        load_external_set(path, test=TEST, source_mean=mean)


def test_files_needing_arbitrary_unpickling_or_of_unknown_layout_are_refused(tmp_path: Path):
    unsafe = tmp_path / "res_unsafe.pt"
    torch.save(
        {"data": [[torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])]], "args": argparse.Namespace(ipc=1)}, unsafe
    )
    with pytest.raises(ValueError, match="cannot be read safely: torch.load\\(weights_only=True\\) refused it"):
        load_external_set(unsafe, test=TEST)
    odd = tmp_path / "odd.pt"
    torch.save({"images": torch.randn(2, 3, 16, 16)}, odd)
    with pytest.raises(ValueError, match="holds a dict with keys \\['images'\\]; expected fdd's synthetic.pt"):
        load_external_set(odd, test=TEST)
    labels = tmp_path / "labels.pt"
    torch.save({"image_syn": torch.randn(2, 3, 16, 16), "label_syn": torch.tensor([0, 7])}, labels)
    with pytest.raises(ValueError, match="labels must be class indices in 0..2 .* got \\[7\\]"):
        load_external_set(labels, test=TEST)
    with pytest.raises(ValueError, match="does not exist"):
        load_external_set(tmp_path / "nope.pt", test=TEST)


def _image_folder(folder: Path, labels: list[str]) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(len(labels), 16, 16, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"img_{i}.png")
    pd.DataFrame({"path": [f"img_{i}.png" for i in range(len(labels))], "label": labels}).to_csv(
        folder / LABELS_CSV, index=False
    )
    return pixels


def test_image_folder_with_labels_csv(tmp_path: Path):
    pixels = _image_folder(tmp_path / "imgs", ["c0", "1", "c2", "0"])
    loaded = load_external_set(tmp_path / "imgs", test=TEST)
    assert loaded.labels.tolist() == [0, 1, 2, 0]  # class names and indices
    expected = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    assert torch.allclose(loaded.images, expected, atol=1e-6)
    pd.DataFrame({"path": ["img_0.png"], "label": ["cat"]}).to_csv(tmp_path / "imgs" / LABELS_CSV, index=False)
    with pytest.raises(ValueError, match="labels \\['cat'\\] are neither class indices 0..2 nor class names"):
        load_external_set(tmp_path / "imgs", test=TEST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no labels.csv"):
        load_external_set(tmp_path / "empty", test=TEST)


def _params(tiny_workspace: Path, architectures: list[str]) -> Path:
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["synthesis"]["modes"] = ["vanilla"]
    params["audit"]["architectures"] = architectures
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tiny_workspace / "params.yaml"


def test_audit_stage_and_report_write_one_row_per_architecture(tiny_workspace: Path):
    architectures = ["matching", "convnet-w8-d1-nonorm", "mlp-w16-d1"]
    config = load_config(_params(tiny_workspace, architectures))
    ws = str(tiny_workspace)
    for stage in STAGES:
        run_single_stage(stage, config, ws, "vanilla" if stage in ("synthesize", "audit") else None)
    out = tiny_workspace / "data/audit/vanilla"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["architecture"] == "matching" and metrics["architecture_names"] == architectures
    assert set(metrics["architectures"]) == set(architectures)
    for key in ("accuracy", "deo_m", "deo_a", "accuracy_std", "num_eval"):
        assert metrics[key] == metrics["architectures"]["matching"][key]  # the headline stays at the top level
    table = pd.read_csv(out / "architectures.csv")
    assert table["architecture"].tolist() == architectures
    for name, row in table.set_index("architecture").iterrows():
        assert row["deo_m"] == pytest.approx(metrics["architectures"][name]["deo_m"])
    runs = json.loads((out / "runs.json").read_text())
    assert (
        set(runs["architectures"]) == set(architectures)
        and runs["summary"] == runs["architectures"]["matching"]["summary"]
    )
    comparison = pd.read_csv(tiny_workspace / "data/report/comparison.csv")
    assert list(comparison[["mode", "architecture"]].itertuples(index=False, name=None)) == [
        ("vanilla", a) for a in architectures
    ]
    report = (tiny_workspace / "data/report/report.md").read_text()
    for name in architectures:
        assert re.search(rf"\| vanilla +\| {name} +\|", report), name


def test_fdd_audit_command_on_an_fdd_set_a_reference_file_and_an_image_folder(tiny_workspace: Path, monkeypatch):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows import cli

    with pytest.raises(SystemExit) as help_exit:
        cli.main(["audit", "--help"])
    assert help_exit.value.code == 0
    monkeypatch.setenv("PREFECT_HOME", str(tiny_workspace / ".prefect"))
    params = _params(tiny_workspace, ["matching", "mlp-w16-d1"])
    config = load_config(params)
    run_single_stage("ingest", config, str(tiny_workspace))
    test = GroupedImages.load(tiny_workspace / "data/prepared/test.pt")
    train = GroupedImages.load(tiny_workspace / "data/prepared/train.pt")
    pick = torch.cat([torch.nonzero(train.labels == c)[:2, 0] for c in range(train.num_classes)])
    synthetic = SyntheticSet(
        images=train.normalized()[pick],
        labels=train.labels[pick],
        class_names=train.class_names,
        mean=train.mean,
        std=train.std,
    )
    synthetic.save(tiny_workspace / "synthetic.pt")
    _reference_file(tiny_workspace / "res_DM_CMNIST_ConvNet_2ipc.pt", [(synthetic.images, synthetic.labels)])
    folder = tiny_workspace / "images"
    folder.mkdir()
    pixels = (train.images[pick].permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{i}.png")
    pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(len(pick))],
            "label": [train.class_names[c] for c in train.labels[pick].tolist()],
        }
    ).to_csv(folder / LABELS_CSV, index=False)
    common = ["--params", str(params), "--workspace", str(tiny_workspace)]
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tiny_workspace / "results"}),
    ):
        assert cli.main(["audit", str(tiny_workspace / "synthetic.pt"), *common]) == 0
        assert (
            cli.main(
                [
                    "audit",
                    str(tiny_workspace / "res_DM_CMNIST_ConvNet_2ipc.pt"),
                    *common,
                    "--out",
                    str(tiny_workspace / "ref_out"),
                ]
            )
            == 0
        )
        assert cli.main(["audit", str(folder), *common, "--name", "folder-set"]) == 0
        assert cli.main(["audit", str(tiny_workspace / "missing.pt"), *common]) == 2
    own = json.loads((tiny_workspace / "data/audit_external/synthetic/metrics.json").read_text())
    reference = json.loads((tiny_workspace / "ref_out/metrics.json").read_text())
    images = json.loads((tiny_workspace / "data/audit_external/folder-set/metrics.json").read_text())
    assert own["architecture_names"] == ["matching", "mlp-w16-d1"]
    assert own == reference  # the same tensors, read from either layout, audited with the same seeds
    assert images["architectures"]["matching"]["num_eval"] == 1 and math.isfinite(images["accuracy"])
    for out in (
        tiny_workspace / "data/audit_external/synthetic",
        tiny_workspace / "ref_out",
        tiny_workspace / "data/audit_external/folder-set",
    ):
        assert {
            "metrics.json",
            "runs.json",
            "architectures.csv",
            "group_recall.csv",
            "class_gaps.csv",
            "group_recall.png",
            "report.md",
        } <= {p.name for p in out.iterdir()}
    report = (tiny_workspace / "ref_out/report.md").read_text()
    assert "reference res_*.pt" in report and re.search(r"\| res_DM_CMNIST_ConvNet_2ipc +\| mlp-w16-d1 +\|", report)
    assert f"{len(test)} test images" in report
