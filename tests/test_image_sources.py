"""The image-benchmark loaders on tiny fixtures in the real on-disk formats (fdd.datasets.image_sources)."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from image_fixtures import CIFAR_CLASSES, write_bffhq, write_celeba, write_cifar10, write_folder, write_utkface
from torchvision.transforms.v2 import functional as F

from fdd.config import ConfigError, DataConfig, parse_config
from fdd.datasets.image_sources import (
    CIFAR10S_GROUPS,
    DEFAULT_NORMALIZATION,
    ERR_CELEBA_ATTR,
    ERR_FOLDER_COLUMNS,
    ERR_FOLDER_MISSING,
    ERR_FOLDER_PATH,
    ERR_MALFORMED,
    ERR_MISSING,
    ERR_UNSAFE_PICKLE,
    DatasetFilesError,
    SkippedFilesWarning,
    age_class_names,
    prepare_image_dataset,
    read_images,
)


def _data(**raw) -> DataConfig:
    return parse_config({"data": raw}).data


def _counts(split) -> np.ndarray:
    cells = torch.zeros(split.num_classes, split.num_groups, dtype=torch.int64)
    cells.index_put_((split.labels, split.groups), torch.ones_like(split.labels), accumulate=True)
    return cells.numpy()


def _pattern(template: str) -> str:
    """A regex matching a message template with any values in its fields."""
    parts = re.split(r"\{[^}]*\}", template)
    return ".*".join(re.escape(p) for p in parts)


# --------------------------------------------------------------------------- CIFAR10-S


@pytest.mark.parametrize("skew", [0.9, 0.75])
def test_cifar10s_skew_groups_and_doubled_test_set(tmp_path: Path, skew: float) -> None:
    raw = write_cifar10(tmp_path / "data/raw", train_per_class=20, test_per_class=6)
    splits = prepare_image_dataset(_data(dataset="cifar10s", cifar10s={"skew": skew}), workspace=tmp_path)
    train, test = splits.train, splits.test
    assert train.class_names == CIFAR_CLASSES and train.group_names == CIFAR10S_GROUPS == ("grayscale", "color")
    major = math.floor(skew * 20)
    expected = np.array([[major, 20 - major]] * 5 + [[20 - major, major]] * 5)
    np.testing.assert_array_equal(_counts(train), expected)
    # grayscale images have equal channels and are the luma of the original; colour ones are untouched
    original = torch.from_numpy(raw["train_data"]).view(-1, 3, 32, 32)
    assert torch.equal(train.labels, torch.from_numpy(raw["train_labels"]).long())
    gray = train.groups == 0
    assert torch.equal(train.images[gray], F.rgb_to_grayscale(original[gray], num_output_channels=3))
    assert torch.equal(train.images[~gray], original[~gray])
    assert (train.images[gray][:, 0] == train.images[gray][:, 2]).all()
    assert not (original[~gray][:, 0] == original[~gray][:, 2]).all()
    # the test set holds every test image twice: once grayscale, once in colour
    n_test = len(raw["test_labels"])
    assert len(test) == 2 * n_test
    np.testing.assert_array_equal(_counts(test), np.full((10, 2), 6))
    test_original = torch.from_numpy(raw["test_data"]).view(-1, 3, 32, 32)
    assert torch.equal(test.images[test.groups == 1], test_original)
    assert torch.equal(test.images[test.groups == 0], F.rgb_to_grayscale(test_original, num_output_channels=3))
    assert (train.mean, train.std) == DEFAULT_NORMALIZATION["cifar10s"]
    assert "unverified" in splits.source  # the fixture's MD5s are not the release's


def test_cifar10s_seed_changes_which_images_are_gray_but_not_the_counts(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data/raw")
    a = prepare_image_dataset(_data(dataset="cifar10s", seed=0), workspace=tmp_path).train
    b = prepare_image_dataset(_data(dataset="cifar10s", seed=1), workspace=tmp_path).train
    np.testing.assert_array_equal(_counts(a), _counts(b))
    assert not torch.equal(a.groups, b.groups)


def test_cifar10s_resize_and_normalisation_override(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data/raw", train_per_class=4, test_per_class=2)
    splits = prepare_image_dataset(
        _data(dataset="cifar10s", image_size=16, mean=[0.1, 0.2, 0.3], std=[1, 2, 3]), workspace=tmp_path
    )
    assert splits.train.image_shape == (3, 16, 16) and splits.test.image_shape == (3, 16, 16)
    assert splits.train.mean == (0.1, 0.2, 0.3) and splits.test.std == (1.0, 2.0, 3.0)


def test_cifar10_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    root = tmp_path / "data/raw"
    write_cifar10(root, train_per_class=2, test_per_class=1)
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetFilesError, match=r"lacks \['data_batch_3'\]; expected the python version of CIFAR-10"):
        prepare_image_dataset(_data(dataset="cifar10s", download=False), workspace=tmp_path)
    (folder / "data_batch_3").write_bytes(
        pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_MALFORMED)) as info:
        prepare_image_dataset(_data(dataset="cifar10s", download=False), workspace=tmp_path)
    assert "data_batch_3" in str(info.value) and "3072" in str(info.value)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFilesError, match="data_batch_3 is malformed"):
        prepare_image_dataset(_data(dataset="cifar10s", download=False), workspace=tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_cifar10_pickles_cannot_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data/raw"
    write_cifar10(root, train_per_class=2, test_per_class=1)
    (root / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps({"data": _Evil()}, protocol=2))
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_UNSAFE_PICKLE)):
        prepare_image_dataset(_data(dataset="cifar10s", download=False), workspace=tmp_path)
    assert "owned" not in capsys.readouterr().out


# --------------------------------------------------------------------------- CelebA

CELEBA_CELLS = {
    "train": {(0, 0): 5, (0, 1): 9, (1, 0): 7, (1, 1): 3},
    "valid": {(0, 0): 1, (1, 1): 1},
    "test": {(0, 0): 2, (0, 1): 3, (1, 0): 3, (1, 1): 2},
}


def test_celeba_target_and_group_by_name_crop_and_resize(tmp_path: Path) -> None:
    write_celeba(tmp_path / "data/raw", cells=CELEBA_CELLS)
    splits = prepare_image_dataset(_data(dataset="celeba"), workspace=tmp_path)
    train, test = splits.train, splits.test
    assert train.class_names == ("not Attractive", "Attractive") and train.group_names == ("not Male", "Male")
    np.testing.assert_array_equal(_counts(train), [[5, 9], [7, 3]])
    np.testing.assert_array_equal(_counts(test), [[2, 3], [3, 2]])
    assert train.image_shape == (3, 64, 64) and train.images.dtype == torch.uint8
    valid = prepare_image_dataset(
        _data(dataset="celeba", celeba={"test_split": "valid", "crop": 100}, image_size=32), workspace=tmp_path
    )
    np.testing.assert_array_equal(_counts(valid.test), [[1, 0], [0, 1]])
    assert valid.train.image_shape == (3, 32, 32)


def test_celeba_crop_is_the_centre(tmp_path: Path) -> None:
    write_celeba(tmp_path / "data/raw", cells={"train": {(1, 1): 1}, "test": {(0, 0): 1}})
    path = tmp_path / "data/raw/celeba/img_align_celeba/000001.jpg"
    full = read_images([path], size=178, crop=178)
    from PIL import Image

    raw = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
    assert raw.shape[-2:] == (218, 178)
    assert torch.equal(full[0], raw[:, 20:198, :])


def test_celeba_other_attributes_and_bad_files(tmp_path: Path) -> None:
    cells = {"train": {(0, 0): 3, (1, 1): 4, (0, 1): 2}, "test": {(1, 0): 2}}
    write_celeba(tmp_path / "data/raw", cells=cells, target="Smiling", group="Young")
    splits = prepare_image_dataset(
        _data(dataset="celeba", celeba={"target": "Smiling", "group": "Young"}), workspace=tmp_path
    )
    np.testing.assert_array_equal(_counts(splits.train), [[3, 2], [0, 4]])
    assert splits.train.group_names == ("not Young", "Young")
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_CELEBA_ATTR)) as info:
        prepare_image_dataset(_data(dataset="celeba", celeba={"target": "Happy"}), workspace=tmp_path)
    assert "'Happy'" in str(info.value) and "Smiling" in str(info.value)
    folder = tmp_path / "data/raw/celeba"
    (folder / "img_align_celeba/000002.jpg").unlink()
    with pytest.raises(DatasetFilesError, match=r"000002\.jpg is missing; expected every image listed"):
        prepare_image_dataset(
            _data(dataset="celeba", celeba={"target": "Smiling", "group": "Young"}), workspace=tmp_path
        )
    attr = folder / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:2] + [lines[2].replace("-1", " 0", 1)] + lines[3:]) + "\n")
    with pytest.raises(
        DatasetFilesError, match=r"list_attr_celeba\.txt is malformed \(attribute values other than -1 and 1\)"
    ):
        prepare_image_dataset(_data(dataset="celeba"), workspace=tmp_path)
    attr.write_text("\n".join(["7"] + lines[1:]) + "\n")
    with pytest.raises(DatasetFilesError, match=r"first line '7' is not the number of rows"):
        prepare_image_dataset(_data(dataset="celeba"), workspace=tmp_path)
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(
        DatasetFilesError, match=r"list_eval_partition\.txt is missing; expected list_eval_partition\.txt: one line"
    ):
        prepare_image_dataset(_data(dataset="celeba", download=False), workspace=tmp_path)


# --------------------------------------------------------------------------- UTKFace

UTK_CELLS = {(5, 0): 6, (12, 1): 2, (25, 0): 4, (30, 2): 5, (39, 3): 3, (45, 1): 5, (70, 3): 4, (50, 4): 3}


def test_utkface_age_buckets_races_and_balanced_test_split(tmp_path: Path) -> None:
    write_utkface(
        tmp_path / "data/raw", cells=UTK_CELLS, extra_names=("39_1_20170116174525125.jpg.chip.jpg", "notes.png")
    )
    with pytest.warns(SkippedFilesWarning, match=r"skipped 2 file\(s\)"):
        splits = prepare_image_dataset(_data(dataset="utkface", utkface={"test_per_cell": 3}), workspace=tmp_path)
    train, test = splits.train, splits.test
    assert train.class_names == ("<20", "20-39", ">=40") == age_class_names((20, 40))
    assert train.group_names == ("White", "Black", "Asian", "Indian")  # race 4 (Others) dropped
    # full cells: <20 White 6, <20 Black 2, 20-39 White 4, 20-39 Asian 5, 20-39 Indian 3, >=40 Black 5, >=40 Indian 4
    full = np.array([[6, 2, 0, 0], [4, 0, 5, 3], [0, 5, 0, 4]])
    np.testing.assert_array_equal(_counts(test), np.minimum(full, 3))
    np.testing.assert_array_equal(_counts(train), full - np.minimum(full, 3))
    assert splits.params["dropped_others"] == 3 and splits.params["skipped_files"] == 2
    assert train.image_shape == (3, 64, 64)
    with pytest.warns(SkippedFilesWarning):
        others = prepare_image_dataset(
            _data(dataset="utkface", utkface={"test_per_cell": 1, "include_others": True}), workspace=tmp_path
        )
    assert others.train.group_names[-1] == "Others" and int((others.test.groups == 4).sum()) == 1
    assert int((others.train.groups == 4).sum()) == 2


def test_utkface_missing_folder_and_empty_train_class(tmp_path: Path) -> None:
    with pytest.raises(DatasetFilesError, match=r"UTKFace is missing; expected a folder of the UTKFace images named"):
        prepare_image_dataset(_data(dataset="utkface"), workspace=tmp_path)
    write_utkface(tmp_path / "data/raw", cells={(5, 0): 5, (30, 0): 5, (60, 1): 1})
    with pytest.raises(DatasetFilesError, match=r"class\(es\) \['>=40'\] have no train images"):
        prepare_image_dataset(_data(dataset="utkface", utkface={"test_per_cell": 2}), workspace=tmp_path)


# --------------------------------------------------------------------------- BFFHQ


def test_bffhq_align_conflict_and_test_folders(tmp_path: Path) -> None:
    write_bffhq(
        tmp_path / "data/raw",
        train={(0, 0): 8, (1, 1): 7, (0, 1): 2, (1, 0): 1},
        test={(0, 0): 3, (0, 1): 3, (1, 0): 2, (1, 1): 2},
    )
    splits = prepare_image_dataset(_data(dataset="bffhq"), workspace=tmp_path)
    assert splits.train.class_names == ("young", "old") and splits.train.group_names == ("female", "male")
    np.testing.assert_array_equal(_counts(splits.train), [[8, 2], [1, 7]])
    np.testing.assert_array_equal(_counts(splits.test), [[3, 3], [2, 2]])
    assert splits.params["aligned"] == 15 and splits.params["conflicting"] == 3
    assert splits.train.image_shape == (3, 64, 64)


def test_bffhq_bad_layout_is_named(tmp_path: Path) -> None:
    root = tmp_path / "data/raw"
    write_bffhq(root, train={(0, 0): 2, (1, 1): 2, (0, 1): 1}, test={(0, 0): 1})
    misplaced = root / "bffhq/0.5pct/align/0/99_0_1.png"
    (root / "bffhq/0.5pct/conflict/0").joinpath("4_0_1.png").rename(misplaced)
    with pytest.raises(
        DatasetFilesError, match=r"99_0_1\.png is malformed \(a file in align/ whose label and bias differ\)"
    ):
        prepare_image_dataset(_data(dataset="bffhq"), workspace=tmp_path)
    misplaced.rename(root / "bffhq/0.5pct/conflict/0/oops.png")
    with pytest.raises(DatasetFilesError, match=r"do not encode label and bias, e\.g\. \['oops\.png'\]"):
        prepare_image_dataset(_data(dataset="bffhq"), workspace=tmp_path)
    with pytest.raises(DatasetFilesError, match=r"no image files .* under .*bffhq/1pct/align"):
        prepare_image_dataset(_data(dataset="bffhq", bffhq={"conflict": "1pct"}), workspace=tmp_path)


# --------------------------------------------------------------------------- your own folder

FOLDER_CELLS = {("benign", "F"): 10, ("benign", "M"): 5, ("malignant", "F"): 4, ("malignant", "M"): 6}
FOLDER_KEYS = {
    "csv": "my_labels.csv",
    "images": "my_images",
    "path_column": "file",
    "label_column": "diagnosis",
    "group_column": "sex",
}


def test_folder_names_from_csv_and_stratified_split(tmp_path: Path) -> None:
    write_folder(tmp_path, cells=FOLDER_CELLS)
    splits = prepare_image_dataset(_data(dataset="folder", folder=FOLDER_KEYS, image_size=24), workspace=tmp_path)
    train, test = splits.train, splits.test
    assert train.class_names == ("benign", "malignant") and train.group_names == ("F", "M")
    full = np.array([[10, 5], [4, 6]])
    expected_test = np.round(full * 0.2).astype(int)
    np.testing.assert_array_equal(_counts(test), expected_test)
    np.testing.assert_array_equal(_counts(train), full - expected_test)
    assert train.image_shape == (3, 24, 24)  # 48x40 (and grayscale) files cropped square, resized, RGB


def test_folder_split_column(tmp_path: Path) -> None:
    rows = write_folder(tmp_path, cells=FOLDER_CELLS, split_column=True)
    splits = prepare_image_dataset(
        _data(dataset="folder", folder={**FOLDER_KEYS, "split_column": "split"}), workspace=tmp_path
    )
    assert len(splits.test) == sum(r["split"] == "test" for r in rows)
    assert len(splits.train) == sum(r["split"] == "train" for r in rows)


def test_folder_bad_csv_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path, cells=FOLDER_CELLS)
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_FOLDER_COLUMNS)) as info:
        prepare_image_dataset(
            _data(dataset="folder", folder={**FOLDER_KEYS, "group_column": "gender"}), workspace=tmp_path
        )
    assert "['gender']" in str(info.value) and "sex" in str(info.value)
    csv = tmp_path / "my_labels.csv"
    text = csv.read_text()
    csv.write_text(text.replace("benign/F_3.png", "benign/F_99.png"))
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_FOLDER_MISSING)) as info:
        prepare_image_dataset(_data(dataset="folder", folder=FOLDER_KEYS), workspace=tmp_path)
    assert "benign/F_99.png" in str(info.value)
    csv.write_text(text.replace("benign/F_3.png", "../../etc/passwd"))
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_FOLDER_PATH)):
        prepare_image_dataset(_data(dataset="folder", folder=FOLDER_KEYS), workspace=tmp_path)
    (tmp_path / "my_images/benign/F_3.png").write_bytes(b"not an image")
    csv.write_text(text)
    with pytest.raises(
        DatasetFilesError, match=r"F_3\.png could not be read as an image .*expected a JPEG or PNG file"
    ):
        prepare_image_dataset(_data(dataset="folder", folder=FOLDER_KEYS), workspace=tmp_path)
    (tmp_path / "my_labels.csv").unlink()
    with pytest.raises(DatasetFilesError, match=_pattern(ERR_MISSING)):
        prepare_image_dataset(_data(dataset="folder", folder=FOLDER_KEYS), workspace=tmp_path)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"dataset": "utkface", "celeba": {"target": "Smiling"}}, "data.celeba is set but data.dataset is 'utkface'"),
        ({"dataset": "celeba", "idx_dir": "x"}, "data.idx_dir only applies to the datasets"),
        ({"dataset": "cmnist", "image_size": 64}, "data.image_size must be 32"),
        ({"dataset": "folder"}, "needs data.folder.csv and data.folder.images"),
        (
            {"dataset": "folder", "folder": {"csv": "/etc/x.csv", "images": "im"}},
            "data.folder.csv must be a relative path",
        ),
        ({"dataset": "celeba", "mean": [0.5, 0.5, 0.5]}, "data.mean and data.std must be given together"),
        ({"dataset": "celeba", "mean": [0.5, 0.5, 0.5], "std": [1, 0, 1]}, "data.std must be positive"),
        ({"dataset": "utkface", "utkface": {"age_edges": [40, 20]}}, "strictly increasing"),
        ({"dataset": "imagenet"}, "data.dataset"),
        # settings the chosen dataset would silently ignore
        ({"dataset": "cifar10s", "bias": "background"}, "data.bias only applies to the datasets ['cmnist', 'cfmnist']"),
        ({"dataset": "adult", "shading": "intensity"}, "data.shading only applies to the datasets"),
        ({"dataset": "celeba", "train_correlation": 0.5}, "data.train_correlation only applies to the datasets"),
        (
            {"dataset": "cmnist", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "data.mean only applies to the datasets",
        ),
        (
            {"dataset": "cmnist", "tabular": {"protected": "race"}},
            "data.tabular only applies to the datasets ['adult']",
        ),
    ],
)
def test_bad_dataset_configs_are_rejected(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"data": raw})


def test_network_depth_auto_follows_the_image_size() -> None:
    network = parse_config({"network": {"depth": "auto"}}).network
    assert [network.resolved_depth(s) for s in (28, 32, 64, 128)] == [3, 3, 4, 5]
    assert parse_config({"network": {"depth": 2}}).network.resolved_depth(64) == 2
    with pytest.raises(ConfigError, match="network.depth"):
        parse_config({"network": {"depth": 0}})
