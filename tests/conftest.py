"""Shared fixtures: a tiny MNIST-like dataset in IDX files and a tiny pipeline config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fdd.datasets.sources import IDX_FILES, encode_idx

TINY_PARAMS = {
    "runtime": {"device": "cpu", "seed": 0},
    "data": {"dataset": "cmnist", "idx_dir": "tiny_idx", "download": False},
    "network": {"width": 8, "depth": 2},
    "features": {"max_per_cell": 6, "batch_size": 64, "projection_dim": 4},
    "barycenters": {"support_size": 3, "max_iter": 5},
    "synthesis": {
        "modes": ["vanilla", "cobra"],
        "ipc": 2,
        "iterations": 3,
        "batch_real": 8,
        "warmup_epochs": 1,
        "log_every": 1,
    },
    "audit": {"num_eval": 1, "epochs": 4, "test_batch_size": 64},
}


def write_tiny_idx(folder: Path, *, num_classes: int = 3, train_per_class: int = 40, test_per_class: int = 20) -> None:
    """A learnable toy dataset: class k is a bright bar at rows 4+6k (28x28, uint8)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes, dtype=np.uint8), per_class)
        images = rng.integers(0, 60, size=(labels.size, 28, 28), dtype=np.uint8)
        for k in range(num_classes):
            images[labels == k, 4 + 6 * k : 8 + 6 * k, 4:24] = 255
        order = rng.permutation(labels.size)
        return images[order], labels[order]

    train_images, train_labels = split(train_per_class)
    test_images, test_labels = split(test_per_class)
    for name, array in zip(IDX_FILES, (train_images, train_labels, test_images, test_labels)):
        (folder / name).write_bytes(encode_idx(array))


@pytest.fixture
def tiny_workspace(tmp_path: Path) -> Path:
    """A workspace with tiny IDX data and a params.yaml that runs in seconds."""
    write_tiny_idx(tmp_path / "tiny_idx")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    return tmp_path


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors run faster (and less noisily on a loaded 2-core machine) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test sees the environment as it was: `fdd` commands called in-process set
    PREFECT_HOME and other variables (flows.settings.configure_environment), which would
    otherwise point later tests, and their subprocesses, at another test's workspace."""
    import os

    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)
