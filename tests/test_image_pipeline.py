"""Every image benchmark end to end through the pipeline stages, on its tiny on-disk fixture.

The stages run through ``run_single_stage`` (the wiring shared by the Prefect flow and
``dvc repro``), so each dataset goes ingest -> partition -> features -> barycenters ->
synthesize -> audit -> report exactly as in ``fdd run``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from image_fixtures import write_bffhq, write_celeba, write_cifar10, write_folder, write_utkface

from fdd.datasets.containers import GroupedImages, SyntheticSet
from flows.pipeline import STAGES, load_config, run_single_stage

TINY = {
    "runtime": {"device": "cpu", "seed": 0},
    "network": {"width": 8, "depth": "auto"},
    "features": {"max_per_cell": 4, "batch_size": 64, "projection_dim": 3},
    "barycenters": {"support_size": 2, "max_iter": 3},
    "synthesis": {
        "modes": ["vanilla", "cobra"],
        "ipc": 2,
        "iterations": 2,
        "batch_real": 6,
        "warmup_epochs": 1,
        "log_every": 1,
        "checkpoint_every": 0,
    },
    "audit": {"num_eval": 1, "epochs": 2, "test_batch_size": 64},
}


def _cifar(ws: Path) -> dict:
    write_cifar10(ws / "data/raw", train_per_class=8, test_per_class=3)
    return {"dataset": "cifar10s", "download": False}


def _celeba(ws: Path) -> dict:
    write_celeba(
        ws / "data/raw",
        cells={
            "train": {(0, 0): 4, (0, 1): 6, (1, 0): 5, (1, 1): 3},
            "test": {(0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2},
        },
    )
    return {"dataset": "celeba", "download": False}


def _utkface(ws: Path) -> dict:
    write_utkface(ws / "data/raw", cells={(10, 0): 5, (15, 1): 4, (25, 2): 5, (33, 3): 4, (50, 0): 5, (61, 2): 4})
    return {"dataset": "utkface", "image_size": 32, "utkface": {"test_per_cell": 1}}


def _bffhq(ws: Path) -> dict:
    write_bffhq(
        ws / "data/raw",
        train={(0, 0): 6, (1, 1): 6, (0, 1): 2, (1, 0): 2},
        test={(0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2},
    )
    return {"dataset": "bffhq", "image_size": 32}


def _folder(ws: Path) -> dict:
    write_folder(ws, cells={("benign", "F"): 8, ("benign", "M"): 5, ("malignant", "F"): 5, ("malignant", "M"): 8})
    return {
        "dataset": "folder",
        "image_size": 32,
        "folder": {
            "csv": "my_labels.csv",
            "images": "my_images",
            "path_column": "file",
            "label_column": "diagnosis",
            "group_column": "sex",
            "test_fraction": 0.25,
        },
    }


CASES: dict[str, tuple[Callable[[Path], dict], tuple[str, ...], tuple[str, ...], int]] = {
    # dataset: (fixture builder, class names to find, group names to find, image side)
    "cifar10s": (_cifar, ("airplane", "truck"), ("grayscale", "color"), 32),
    "celeba": (_celeba, ("not Attractive", "Attractive"), ("not Male", "Male"), 64),
    "utkface": (_utkface, ("<20", "20-39", ">=40"), ("White", "Black", "Asian", "Indian"), 32),
    "bffhq": (_bffhq, ("young", "old"), ("female", "male"), 32),
    "folder": (_folder, ("benign", "malignant"), ("F", "M"), 32),
}


@pytest.mark.parametrize("dataset", list(CASES))
def test_dataset_runs_end_to_end(tmp_path: Path, dataset: str) -> None:
    build, classes, groups, side = CASES[dataset]
    params = {**TINY, "data": build(tmp_path)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(tmp_path / "params.yaml")
    ws = str(tmp_path)
    for stage in STAGES:
        for mode in config.synthesis.modes if stage in ("synthesize", "audit") else (None,):
            run_single_stage(stage, config, ws, mode)

    data = tmp_path / "data"
    train = GroupedImages.load(data / "prepared/train.pt")
    assert train.image_shape == (3, side, side)
    assert set(classes) <= set(train.class_names) and set(groups) <= set(train.group_names)
    summary = json.loads((data / "prepared/dataset.json").read_text())
    assert summary["dataset"] == dataset and summary["class_names"] == list(train.class_names)
    # names reach the partition table, the audit tables, the synthetic set and the report
    partition = pd.read_csv(data / "partition/partition.csv", keep_default_na=False)
    assert set(groups) <= set(partition["group_name"]) and set(classes) <= set(partition["class_name"])
    assert int(partition["count"].sum()) == len(train)
    recall = pd.read_csv(data / "audit/cobra/group_recall.csv", keep_default_na=False)
    assert set(groups) <= set(recall["group"]) and set(classes) <= set(recall["class"])
    synthetic = SyntheticSet.load(data / "synthetic/cobra/synthetic.pt")
    assert synthetic.images.shape == (2 * train.num_classes, 3, side, side)
    assert synthetic.class_names == train.class_names and synthetic.mean == train.mean
    report = (data / "report/report.md").read_text()
    assert f"Dataset **{dataset}**" in report and summary["description"] in report
    assert f"Classes: {', '.join(train.class_names)}. Protected groups: {', '.join(train.group_names)}." in report
    depth = 4 if side == 64 else 3
    assert f"ConvNet width 8, depth {depth} on {side}x{side} images." in report
    metrics = json.loads((data / "metrics.json").read_text())
    assert set(metrics) == {"vanilla", "cobra"}
    assert all(0.0 <= m["accuracy"] <= 100.0 and 0.0 <= m["deo_m"] <= 100.0 for m in metrics.values())


def test_celeba_64px_uses_a_depth_4_convnet(tmp_path: Path) -> None:
    """depth 'auto' pools a 64x64 image to 4x4 maps (ConvNet-4), like ConvNet-3 on 32x32."""
    from fdd.config import NetworkConfig
    from fdd.models.networks import build_convnet

    network = NetworkConfig(width=8, depth="auto")
    net = build_convnet(channels=3, num_classes=2, image_size=64, width=8, depth=network.resolved_depth(64))
    assert net.embedding_dim == 8 * 4 * 4
    assert net.embed(torch.zeros(1, 3, 64, 64)).shape == (1, 128)


@pytest.mark.parametrize("dataset", ["cifar10s", "celeba", "utkface", "bffhq", "folder"])
def test_dataset_presets_validate_and_stack_with_the_schedules(dataset: str) -> None:
    root = Path(__file__).resolve().parent.parent
    preset = root / "flows" / "presets" / f"{dataset}.yaml"
    quick = load_config(root / "params.yaml", preset=preset)
    full = load_config(root / "params.yaml", preset=[preset, root / "flows/presets/full.yaml"])
    side = 32 if dataset == "cifar10s" else 64
    for config in (quick, full):
        assert config.data.dataset == dataset and config.data.image_size == side
        assert config.network.resolved_depth(side) == (3 if side == 32 else 4)
        assert config.data.mean is not None and config.synthesis.ipc == 10
    shipped = yaml.safe_load((root / "flows/presets/quick.yaml").read_text())["synthesis"]["iterations"]
    assert (quick.synthesis.iterations, full.synthesis.iterations) == (shipped, 2600)
    assert full.audit.num_eval == 5 and full.network.width == 128


def test_cli_stacks_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import cli

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    root = Path(__file__).resolve().parent.parent
    write_cifar10(tmp_path / "data/raw", train_per_class=2, test_per_class=1)
    code = cli.main(
        [
            "stage",
            "ingest",
            "--params",
            str(root / "params.yaml"),
            "--preset",
            "cifar10s",
            "--preset",
            "full",
            "--workspace",
            str(tmp_path),
            "--set",
            "data.download=false",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    assert summary["dataset"] == "cifar10s" and summary["train_images"] == 20 and summary["test_images"] == 20
    assert summary["group_names"] == ["grayscale", "color"]


def test_ingest_cache_key_follows_the_users_own_files(tmp_path: Path) -> None:
    from flows.pipeline import stage_call
    from tasks.base import stage_key

    params = {**TINY, "data": _folder(tmp_path)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(tmp_path / "params.yaml")

    def key() -> str:
        _task, kwargs = stage_call(
            "ingest", None, config=config, workspace=str(tmp_path), device="cpu", modes=(), outputs=lambda _folder: {}
        )
        return stage_key("ingest", kwargs)

    first = key()
    assert key() == first
    image = tmp_path / "my_images/benign/F_1.png"
    image.write_bytes(image.read_bytes()[:-1] + b"\x00")
    second = key()
    assert second != first
    (tmp_path / "my_labels.csv").write_text(
        (tmp_path / "my_labels.csv").read_text().replace("benign/F_1.png,benign", "benign/F_1.png,malignant")
    )
    assert key() not in (first, second)
    from fdd.config import parse_config

    cifar = parse_config({**TINY, "data": {"dataset": "cifar10s"}})
    assert (
        stage_call(
            "ingest", None, config=cifar, workspace=str(tmp_path), device="cpu", modes=(), outputs=lambda _folder: {}
        )[1]["raw_digest"]
        is None
    )


@pytest.mark.slow
def test_cli_data_fetch_under_prefect_reruns_when_the_users_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fdd data fetch` on the folder dataset: cached when nothing changed, rerun when an image changed."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows import cli

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    params = {**TINY, "data": _folder(tmp_path)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    argv = ["data", "fetch", "--params", str(tmp_path / "params.yaml"), "--workspace", str(tmp_path)]
    train = tmp_path / "data/prepared/train.pt"
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}),
    ):
        assert cli.main(argv) == 0
        first = GroupedImages.load(train)
        stamp = train.stat().st_mtime_ns
        assert cli.main(argv) == 0
        assert train.stat().st_mtime_ns == stamp  # cached: not rewritten
        csv = tmp_path / "my_labels.csv"
        csv.write_text(csv.read_text().replace("benign/F_0.png,benign", "benign/F_0.png,malignant"))
        assert cli.main(argv) == 0
    second = GroupedImages.load(train)
    assert second.digest() != first.digest()
    assert (
        int((second.labels == 1).sum())
        + int((GroupedImages.load(tmp_path / "data/prepared/test.pt").labels == 1).sum())
        == 14
    )
