"""The image benchmarks beyond C-MNIST: CIFAR10-S, CelebA, UTKFace, BFFHQ and your own folder.

Each loader reads a dataset from its usual on-disk layout under ``root`` and returns the
train and test splits as :class:`~fdd.datasets.containers.GroupedImages` (uint8, 3 x S x S, class and
group names attached, so they reach every table and plot):

========== ============================================== ======================= ====================
dataset    files (under ``root``)                          class                   group
========== ============================================== ======================= ====================
cifar10s   ``cifar-10-batches-py/`` (the python pickles)   the 10 CIFAR-10 classes grayscale / color
celeba     ``celeba/list_attr_celeba.txt``,                ``data.celeba.target``  ``data.celeba.group``
           ``celeba/list_eval_partition.txt``,
           ``celeba/img_align_celeba/*.jpg``
utkface    ``UTKFace/[age]_[gender]_[race]_[date].jpg``    age bucket              race
bffhq      ``bffhq/<conflict>/{align,conflict}/**``,       age (young / old)       gender
           ``bffhq/test/**`` (``<idx>_<label>_<bias>``)
folder     a CSV (path, label, group) + an image folder    CSV values              CSV values
========== ============================================== ======================= ====================

Every image is centre-cropped to a square (CelebA: the ``crop`` x ``crop`` centre, 178 in
the benchmark) and resized to ``image_size`` with antialiasing.

Why not torchvision's ``CIFAR10`` / ``CelebA`` readers: both refuse any file whose MD5
differs from the official release (and ``CelebA`` also wants three annotation files that
are not used here), so a re-exported attribute file, a subset, or the small fixtures the
tests build in the same format could not be read. The files are therefore parsed here,
in the same formats; torchvision is used to *download* them (``download=True``), and the
CIFAR-10 pickles' MD5s are checked against torchvision's list to record in the provenance
whether the official files were used. Pickles are read with an unpickler that only
admits numpy arrays, lists, dicts and bytes, never arbitrary objects.

Bad or missing files raise :class:`DatasetFilesError` naming the file and what was
expected.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.transforms.v2 import functional as F

from fdd.config import COLORED_DATASETS, TABULAR_DATASETS, DataConfig
from fdd.datasets.containers import GroupedImages
from fdd.datasets.sources import check_idx_folder
from fdd.files import sha256_file

logger = logging.getLogger(__name__)

#: Standard side of each dataset's images when ``data.image_size`` is None.
DEFAULT_IMAGE_SIZE: dict[str, int] = {"cifar10s": 32, "celeba": 64, "utkface": 64, "bffhq": 64, "folder": 64}
#: Standard normalisation (mean, std) when ``data.mean`` / ``data.std`` are None: the CIFAR-10
#: statistics of the DC / DSA / DM code for CIFAR10-S, 0.5 / 0.5 for the face datasets.
DEFAULT_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10s": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "celeba": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "utkface": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "bffhq": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "folder": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

CIFAR_FOLDER = datasets.CIFAR10.base_folder
CIFAR_TRAIN_FILES: tuple[tuple[str, str], ...] = tuple((n, m) for n, m in datasets.CIFAR10.train_list)
CIFAR_TEST_FILES: tuple[tuple[str, str], ...] = tuple((n, m) for n, m in datasets.CIFAR10.test_list)
CIFAR_META: tuple[str, str] = (datasets.CIFAR10.meta["filename"], datasets.CIFAR10.meta["md5"])
CIFAR10S_GROUPS: tuple[str, str] = ("grayscale", "color")

CELEBA_FOLDER = datasets.CelebA.base_folder
CELEBA_ATTR = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_IMAGES = "img_align_celeba"
CELEBA_PARTITIONS = {"train": 0, "valid": 1, "test": 2}

UTKFACE_FOLDER = "UTKFace"
UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_")
UTKFACE_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")

BFFHQ_FOLDER = "bffhq"
BFFHQ_NAME = re.compile(r"_([01])_([01])$")
BFFHQ_CLASSES: tuple[str, str] = ("young", "old")
BFFHQ_GROUPS: tuple[str, str] = ("female", "male")

ERR_MISSING = "{dataset}: {path} is missing; expected {expected}"
ERR_MALFORMED = "{dataset}: {path} is malformed ({problem}); expected {expected}"
ERR_NO_IMAGES = "{dataset}: no image files ({suffixes}) under {folder}; expected {expected}"
ERR_DECODE = "{path} could not be read as an image ({error}); expected a JPEG or PNG file"
ERR_CROP = "{path} is {height}x{width}, smaller than the centre crop of {crop}x{crop}"
ERR_CIFAR_MISSING = (
    "cifar10s: {folder} lacks {missing}; expected the python version of CIFAR-10 (cifar-10-python.tar.gz "
    "extracted under data.root), or set data.download: true to let torchvision fetch it"
)
ERR_CELEBA_ATTR = "celeba: data.celeba.{field}={name!r} is not an attribute of {path}; available: {available}"
ERR_CELEBA_SAME = "celeba: data.celeba.target and data.celeba.group must differ; both are {name!r}"
ERR_UNSAFE_PICKLE = (
    "{path}: refusing to unpickle {module}.{name}; a CIFAR-10 batch holds only numpy arrays, lists and bytes"
)
ERR_FOLDER_COLUMNS = "folder: {path} lacks the column(s) {missing}; found {found} (set data.folder.*_column)"
ERR_FOLDER_EMPTY = "folder: {path} row(s) {rows} have an empty {column}; every row needs a path, a label and a group"
ERR_FOLDER_SPLIT = "folder: {path} column {column!r} must hold 'train' or 'test'; rows {rows} hold {values}"
ERR_FOLDER_PATH = "folder: {path} row {row}: image path {value!r} must be relative and stay inside {images}"
ERR_FOLDER_OUTSIDE = (
    "folder: {path} row {row}: image path {value!r} resolves (through a symbolic link) to {target}, outside {images}; "
    "every image must lie inside data.folder.images"
)
ERR_FOLDER_MISSING = "folder: {count} image file(s) listed in {path} do not exist under {images}, e.g. {examples}"
ERR_CLASS_WITHOUT_TRAIN = "{dataset}: class(es) {names} have no train images; every class needs some"
ERR_EMPTY_SPLIT = "{dataset}: the {split} split is empty; {hint}"


class DatasetFilesError(ValueError):
    """A dataset file that is missing or not in the expected format; the message names both."""


class SkippedFilesWarning(UserWarning):
    """Some files of a dataset were left out (their names do not encode the attributes)."""


@dataclass(frozen=True)
class ImageSplits:
    """Train and test splits of an image benchmark, with how they were made.

    Parameters
    ----------
    train, test : GroupedImages
        uint8 images (N, 3, S, S); class and group names attached.
    source : str
        Where the files came from (for provenance records).
    description : str
        One line on the target and protected attribute (for the report).
    params : dict
        Construction parameters and counts (skew, skipped files, ...).
    """

    train: GroupedImages
    test: GroupedImages
    source: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- images


def read_images(paths: Sequence[Path], *, size: int, crop: int | None = None, threads: int = 4) -> Tensor:
    """Decode image files, centre-crop them square and resize to ``size`` x ``size``.

    Parameters
    ----------
    paths : sequence of Path
        JPEG or PNG files (any size; grayscale and RGBA are converted to RGB).
    size : int
        Output side.
    crop : int, optional
        Side of the centre crop taken first; None: the largest centred square
        (``min(H, W)``).
    threads : int
        Decoding threads (Pillow's decoders release the GIL).

    Returns
    -------
    Tensor, shape (N, 3, size, size), uint8
    """

    def one(path: Path) -> Tensor:
        try:
            with Image.open(path) as handle:
                pixels = np.asarray(handle.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise DatasetFilesError(
                ERR_DECODE.format(path=path, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            ) from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
        height, width = image.shape[-2:]
        side = min(height, width) if crop is None else crop
        if side > min(height, width):
            raise DatasetFilesError(ERR_CROP.format(path=path, height=height, width=width, crop=crop))
        image = F.center_crop(image, [side, side])
        if side != size:
            image = F.resize(image, [size, size], antialias=True)
        return image

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for index, image in enumerate(pool.map(one, paths)):  # file decoding is per file; filled in place
            out[index] = image
    return out


def _resize_batch(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    side = min(images.shape[-2:])
    return F.resize(F.center_crop(images, [side, side]), [size, size], antialias=True)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _rank_in_cell(cell: Tensor, generator: torch.Generator) -> Tensor:
    """Each item's rank within its cell, in a random (seeded) order of the items."""
    n = cell.numel()
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.argsort(cell[perm], stable=True)]
    counts = torch.bincount(cell, minlength=int(cell.max()) + 1 if n else 0)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[cell[order]]
    return rank


def _normalization(data: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if data.mean is not None and data.std is not None:
        return tuple(data.mean), tuple(data.std)
    return DEFAULT_NORMALIZATION[data.dataset]


def _grouped(
    images: Tensor,
    labels: Tensor,
    groups: Tensor,
    classes: Sequence[str],
    group_names: Sequence[str],
    norm: tuple[tuple[float, ...], tuple[float, ...]],
) -> GroupedImages:
    return GroupedImages(
        images=images.contiguous(),
        labels=labels.long(),
        groups=groups.long(),
        class_names=tuple(classes),
        group_names=tuple(group_names),
        mean=norm[0],
        std=norm[1],
    )


def _check_train_classes(dataset: str, labels: Tensor, class_names: Sequence[str]) -> None:
    counts = torch.bincount(labels, minlength=len(class_names))
    empty = [class_names[k] for k in range(len(class_names)) if counts[k] == 0]
    if empty:
        raise DatasetFilesError(ERR_CLASS_WITHOUT_TRAIN.format(dataset=dataset, names=empty))


# --------------------------------------------------------------------------- CIFAR10-S


class _ArrayUnpickler(pickle.Unpickler):
    """Admits numpy arrays (and the builtins pickle needs for bytes), nothing else."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, handle: io.BufferedIOBase, path: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DatasetFilesError(ERR_UNSAFE_PICKLE.format(path=self.path, module=module, name=name))
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


def _unpickle(path: Path, expected: str) -> dict[Any, Any]:
    if not path.is_file():
        raise DatasetFilesError(ERR_MISSING.format(dataset="cifar10s", path=path, expected=expected))
    try:
        with path.open("rb") as handle:
            payload = _ArrayUnpickler(handle, path).load()
    except DatasetFilesError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a malformed file
        raise DatasetFilesError(
            ERR_MALFORMED.format(
                dataset="cifar10s", path=path, problem=f"{type(exc).__name__}: {exc}", expected=expected
            )
        ) from None
    if not isinstance(payload, dict):
        raise DatasetFilesError(
            ERR_MALFORMED.format(
                dataset="cifar10s", path=path, problem=f"a pickled {type(payload).__name__}", expected=expected
            )
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in payload.items()}


BATCH_EXPECTED = "a CIFAR-10 python batch: a pickled dict with 'data' (N x 3072 uint8) and 'labels' (N ints in 0..9)"


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    batch = _unpickle(path, BATCH_EXPECTED)
    data, labels = batch.get("data"), batch.get("labels")
    problem = None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        problem = f"'data' is {type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
    else:
        labels_array = np.asarray(labels if labels is not None else [])
        if (
            labels_array.shape != (data.shape[0],)
            or labels_array.dtype.kind not in "iu"
            or (labels_array.size and (labels_array.min() < 0 or labels_array.max() > 9))
        ):
            problem = f"'labels' has shape {labels_array.shape}, dtype {labels_array.dtype} for {data.shape[0]} images"
    if problem:
        raise DatasetFilesError(
            ERR_MALFORMED.format(dataset="cifar10s", path=path, problem=problem, expected=BATCH_EXPECTED)
        )
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.as_tensor(labels_array, dtype=torch.int64)


def read_cifar10(
    root: str | Path, *, download: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...], str]:
    """The CIFAR-10 python pickles under ``root/cifar-10-batches-py/``.

    With ``download=True`` and files missing, torchvision downloads (and MD5-checks) them.

    Returns
    -------
    train_images, train_labels, test_images, test_labels, class_names, source
        Images (N, 3, 32, 32) uint8; labels int64; class names from ``batches.meta``;
        ``source`` says whether the files are the official ones (MD5 of torchvision's list).
    """
    root = Path(root)
    folder = root / CIFAR_FOLDER
    names = [n for n, _ in CIFAR_TRAIN_FILES + CIFAR_TEST_FILES] + [CIFAR_META[0]]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download:
        datasets.CIFAR10(str(root), train=True, download=True)
    elif missing:
        raise DatasetFilesError(ERR_CIFAR_MISSING.format(folder=folder, missing=missing))
    meta = _unpickle(folder / CIFAR_META[0], "batches.meta: a pickled dict with 'label_names' (10 names)")
    label_names = meta.get("label_names")
    if not isinstance(label_names, list) or len(label_names) != 10:
        raise DatasetFilesError(
            ERR_MALFORMED.format(
                dataset="cifar10s",
                path=folder / CIFAR_META[0],
                problem=f"'label_names' is {label_names!r:.80}",
                expected="a list of the 10 class names",
            )
        )
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in label_names)
    train = [_read_cifar_batch(folder / n) for n, _ in CIFAR_TRAIN_FILES]
    test_images, test_labels = _read_cifar_batch(folder / CIFAR_TEST_FILES[0][0])
    official = all(
        check_integrity(str(folder / n), md5) for n, md5 in (*CIFAR_TRAIN_FILES, *CIFAR_TEST_FILES, CIFAR_META)
    )
    source = f"{'official (MD5-verified)' if official else 'unverified (MD5 differs from the release)'} CIFAR-10 files in {folder}"
    return (
        torch.cat([t[0] for t in train]),
        torch.cat([t[1] for t in train]),
        test_images,
        test_labels,
        class_names,
        source,
    )


def skew_groups(labels: Tensor, *, majority: Tensor, skew: float, generator: torch.Generator) -> Tensor:
    """Binary group of each image: :math:`\\lfloor \\text{skew}\\, n_c \\rfloor` images of class c get ``majority[c]``.

    Parameters
    ----------
    labels : Tensor, shape (N,)
        Class ids in ``[0, K)``.
    majority : Tensor, shape (K,)
        The majority group (0 or 1) of each class.
    skew : float in [0, 1]
        Share of each class in its majority group (truncated per class); the other
        :math:`n_c - \\lfloor \\text{skew}\\, n_c \\rfloor` images get ``1 - majority[c]``.
    generator : torch.Generator
        Which images of a class are in the majority (a seeded CPU generator).

    Returns
    -------
    Tensor, shape (N,), int64
    """
    labels = labels.to("cpu", torch.int64)
    counts = torch.bincount(labels, minlength=majority.numel())
    n_major = torch.floor(counts.to(torch.float64) * skew).to(torch.int64)
    rank = _rank_in_cell(labels, generator)
    in_major = rank < n_major[labels]
    major = majority.to(torch.int64)[labels]
    return torch.where(in_major, major, 1 - major)


def build_cifar10s(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    class_names: Sequence[str],
    skew: float,
    seed: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[GroupedImages, GroupedImages]:
    """CIFAR10-S (docs/method.md section 4) from the CIFAR-10 splits.

    Group 0 is grayscale (torchvision's ``rgb_to_grayscale``, ITU-R 601-2 luma
    :math:`0.299 R + 0.587 G + 0.114 B` repeated over the 3 channels), group 1 colour.
    Train: classes :math:`0..\\lfloor K/2 \\rfloor - 1` have
    :math:`\\lfloor \\text{skew}\\, n_c \\rfloor` grayscale images and the rest in colour,
    the other classes the reverse (4500 / 500 per class at skew 0.9). Test: every test image
    twice, once grayscale and once in colour (20000 images), so every cell is balanced.
    """
    num_classes = len(class_names)
    majority = (torch.arange(num_classes) >= num_classes // 2).to(torch.int64)  # 0: grayscale for the first half
    generator = torch.Generator().manual_seed(seed)
    groups = skew_groups(train_labels, majority=majority, skew=skew, generator=generator)
    gray = F.rgb_to_grayscale(train_images, num_output_channels=3)
    train_x = torch.where((groups == 0).view(-1, 1, 1, 1), gray, train_images)
    test_x = torch.cat([F.rgb_to_grayscale(test_images, num_output_channels=3), test_images])
    test_y = torch.cat([test_labels, test_labels])
    test_g = torch.cat([torch.zeros_like(test_labels), torch.ones_like(test_labels)])
    norm = (tuple(mean), tuple(std))
    train = _grouped(_resize_batch(train_x, image_size), train_labels, groups, class_names, CIFAR10S_GROUPS, norm)
    test = _grouped(_resize_batch(test_x, image_size), test_y, test_g, class_names, CIFAR10S_GROUPS, norm)
    return train, test


def load_cifar10s(data: DataConfig, *, root: Path, image_size: int) -> ImageSplits:
    train_x, train_y, test_x, test_y, classes, source = read_cifar10(root, download=data.download)
    mean, std = _normalization(data)
    train, test = build_cifar10s(
        train_x,
        train_y,
        test_x,
        test_y,
        class_names=classes,
        skew=data.cifar10s.skew,
        seed=data.seed,
        image_size=image_size,
        mean=mean,
        std=std,
    )
    return ImageSplits(
        train=train,
        test=test,
        source=source,
        description=f"grayscale/color skew {data.cifar10s.skew} (classes 0-4 mostly grayscale, 5-9 mostly color); "
        "test set doubled (every image in both versions)",
        params={"skew": data.cifar10s.skew, "seed": data.seed},
    )


# --------------------------------------------------------------------------- CelebA

CELEBA_ATTR_EXPECTED = (
    "list_attr_celeba.txt: a first line with the image count, a second with the 40 attribute names, "
    "then one line per image: file name and 40 values in {-1, 1}, separated by spaces"
)
CELEBA_PARTITION_EXPECTED = (
    "list_eval_partition.txt: one line per image: file name and 0 (train), 1 (valid) or 2 (test)"
)


def read_celeba_tables(folder: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The attribute table (index: file name; columns: attributes; values 0/1) and the partition."""
    attr_path, part_path = folder / CELEBA_ATTR, folder / CELEBA_PARTITION
    for path, expected in ((attr_path, CELEBA_ATTR_EXPECTED), (part_path, CELEBA_PARTITION_EXPECTED)):
        if not path.is_file():
            raise DatasetFilesError(ERR_MISSING.format(dataset="celeba", path=path, expected=expected))

    def bad(path: Path, problem: str, expected: str) -> DatasetFilesError:
        return DatasetFilesError(ERR_MALFORMED.format(dataset="celeba", path=path, problem=problem, expected=expected))

    try:
        with attr_path.open() as handle:
            count_line = handle.readline().strip()
            attrs = pd.read_csv(handle, sep=r"\s+", header=0, index_col=0)
    except (ValueError, pd.errors.ParserError) as exc:
        raise bad(attr_path, str(exc).splitlines()[0], CELEBA_ATTR_EXPECTED) from None
    if not count_line.isdigit() or int(count_line) != len(attrs):
        raise bad(
            attr_path, f"first line {count_line!r} is not the number of rows ({len(attrs)})", CELEBA_ATTR_EXPECTED
        )
    values = attrs.to_numpy()
    if attrs.empty or values.dtype.kind not in "iu" or not np.isin(values, (-1, 1)).all():
        raise bad(attr_path, "attribute values other than -1 and 1", CELEBA_ATTR_EXPECTED)
    try:
        part = pd.read_csv(part_path, sep=r"\s+", header=None, names=["file", "partition"], index_col=0)["partition"]
    except (ValueError, pd.errors.ParserError) as exc:
        raise bad(part_path, str(exc).splitlines()[0], CELEBA_PARTITION_EXPECTED) from None
    if part.dtype.kind not in "iu" or not part.isin((0, 1, 2)).all():
        raise bad(part_path, "partition values other than 0, 1 and 2", CELEBA_PARTITION_EXPECTED)
    if not part.index.equals(attrs.index):
        unlisted = attrs.index.difference(part.index)[:3].tolist()
        raise bad(
            part_path,
            f"its file names differ from {CELEBA_ATTR}'s (e.g. {unlisted or part.index.difference(attrs.index)[:3].tolist()})",
            CELEBA_PARTITION_EXPECTED + ", the same files in the same order as " + CELEBA_ATTR,
        )
    return (attrs + 1) // 2, part


def load_celeba(data: DataConfig, *, root: Path, image_size: int) -> ImageSplits:
    folder = root / CELEBA_FOLDER
    cfg = data.celeba
    if data.download and not (folder / CELEBA_ATTR).is_file():
        datasets.CelebA(str(root), split="all", download=True)
    attrs, part = read_celeba_tables(folder)
    for field_name, name in (("target", cfg.target), ("group", cfg.group)):
        if name not in attrs.columns:
            raise DatasetFilesError(
                ERR_CELEBA_ATTR.format(
                    field=field_name, name=name, path=folder / CELEBA_ATTR, available=list(attrs.columns)
                )
            )
    if cfg.target == cfg.group:
        raise DatasetFilesError(ERR_CELEBA_SAME.format(name=cfg.target))
    classes = (f"not {cfg.target}", cfg.target)
    group_names = (f"not {cfg.group}", cfg.group)
    norm = _normalization(data)
    splits = []
    for split in ("train", cfg.test_split):
        rows = attrs[part.to_numpy() == CELEBA_PARTITIONS[split]]
        if rows.empty:
            raise DatasetFilesError(
                ERR_EMPTY_SPLIT.format(
                    dataset="celeba",
                    split=split,
                    hint=f"{folder / CELEBA_PARTITION} lists no image with partition {CELEBA_PARTITIONS[split]}",
                )
            )
        paths = [folder / CELEBA_IMAGES / name for name in rows.index]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetFilesError(
                ERR_MISSING.format(
                    dataset="celeba",
                    path=missing[0],
                    expected=f"every image listed in {CELEBA_ATTR} under {folder / CELEBA_IMAGES} ({len(missing)} missing)",
                )
            )
        labels = torch.tensor(rows[cfg.target].to_numpy(), dtype=torch.int64)
        if split == "train":  # before decoding tens of thousands of images
            _check_train_classes("celeba", labels, classes)
        images = read_images(paths, size=image_size, crop=cfg.crop)
        groups = torch.tensor(rows[cfg.group].to_numpy(), dtype=torch.int64)
        splits.append(_grouped(images, labels, groups, classes, group_names, norm))
    return ImageSplits(
        train=splits[0],
        test=splits[1],
        source=f"CelebA files in {folder}",
        description=f"target {cfg.target}, group {cfg.group}; centre crop {cfg.crop}, resized to {image_size}",
        params={"target": cfg.target, "group": cfg.group, "crop": cfg.crop, "test_split": cfg.test_split},
    )


# --------------------------------------------------------------------------- UTKFace


def age_class_names(edges: Sequence[int]) -> tuple[str, ...]:
    """``(20, 40)`` -> ``("<20", "20-39", ">=40")``."""
    inner = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    return (f"<{edges[0]}", *inner, f">={edges[-1]}")


def split_per_cell(
    labels: Tensor, groups: Tensor, num_groups: int, *, test_per_cell: Tensor | int, generator: torch.Generator
) -> Tensor:
    """Boolean test mask: ``test_per_cell`` random images of every (class, group) cell.

    ``test_per_cell`` is one count for all cells or a tensor with one per image's cell
    (``min`` with the cell size is implied: a cell smaller than it goes to test entirely).
    """
    cell = labels * num_groups + groups
    rank = _rank_in_cell(cell, generator)
    quota = test_per_cell[cell] if isinstance(test_per_cell, Tensor) else torch.full_like(cell, int(test_per_cell))
    return rank < quota


def load_utkface(data: DataConfig, *, root: Path, image_size: int) -> ImageSplits:
    folder = root / UTKFACE_FOLDER
    cfg = data.utkface
    expected = "the UTKFace images named [age]_[gender]_[race]_[date&time].jpg (race 0-4)"
    if not folder.is_dir():
        raise DatasetFilesError(ERR_MISSING.format(dataset="utkface", path=folder, expected=f"a folder of {expected}"))
    files = _list_images(folder)
    if not files:
        raise DatasetFilesError(
            ERR_NO_IMAGES.format(dataset="utkface", suffixes=IMAGE_SUFFIXES, folder=folder, expected=expected)
        )
    parsed = [(p, UTKFACE_NAME.match(p.name)) for p in files]
    skipped = [p.name for p, m in parsed if m is None]
    if skipped:
        warnings.warn(
            f"utkface: skipped {len(skipped)} file(s) whose names do not follow {expected}: {skipped[:10]}",
            SkippedFilesWarning,
            stacklevel=2,
        )
    kept = [(p, m) for p, m in parsed if m is not None]
    ages = torch.tensor([int(m.group(1)) for _, m in kept], dtype=torch.int64)
    races = torch.tensor([int(m.group(3)) for _, m in kept], dtype=torch.int64)
    num_groups = 5 if cfg.include_others else 4
    keep = races < num_groups
    paths = [p for (p, _), k in zip(kept, keep.tolist()) if k]
    ages, races = ages[keep], races[keep]
    if not paths:
        raise DatasetFilesError(
            ERR_NO_IMAGES.format(dataset="utkface", suffixes=IMAGE_SUFFIXES, folder=folder, expected=expected)
        )
    labels = torch.bucketize(ages, torch.tensor(cfg.age_edges, dtype=torch.int64), right=True)
    classes = age_class_names(cfg.age_edges)
    group_names = UTKFACE_RACES[:num_groups]
    test_mask = split_per_cell(
        labels, races, num_groups, test_per_cell=cfg.test_per_cell, generator=torch.Generator().manual_seed(data.seed)
    )
    train_idx, test_idx = torch.nonzero(~test_mask).flatten(), torch.nonzero(test_mask).flatten()
    _check_train_classes("utkface", labels[train_idx], classes)
    images = read_images(paths, size=image_size)
    norm = _normalization(data)
    train = _grouped(images[train_idx], labels[train_idx], races[train_idx], classes, group_names, norm)
    test = _grouped(images[test_idx], labels[test_idx], races[test_idx], classes, group_names, norm)
    return ImageSplits(
        train=train,
        test=test,
        source=f"UTKFace files in {folder}",
        description=f"target age bucket {list(classes)}, group race {list(group_names)}; balanced test split of "
        f"min(cell size, {cfg.test_per_cell}) per (age, race) cell",
        params={
            "age_edges": list(cfg.age_edges),
            "include_others": cfg.include_others,
            "test_per_cell": cfg.test_per_cell,
            "skipped_files": len(skipped),
            "dropped_others": int((~keep).sum()),
            "seed": data.seed,
        },
    )


# --------------------------------------------------------------------------- BFFHQ

BFFHQ_EXPECTED = (
    "image files named <index>_<label>_<bias>.png with label 0 (young) / 1 (old) and bias 0 (female) / 1 (male)"
)


def _bffhq_attributes(folder: Path) -> tuple[list[Path], Tensor, Tensor]:
    files = _list_images(folder) if folder.is_dir() else []
    if not files:
        raise DatasetFilesError(
            ERR_NO_IMAGES.format(dataset="bffhq", suffixes=IMAGE_SUFFIXES, folder=folder, expected=BFFHQ_EXPECTED)
        )
    matches = [BFFHQ_NAME.search(p.stem) for p in files]
    bad = [p.name for p, m in zip(files, matches) if m is None]
    if bad:
        raise DatasetFilesError(
            ERR_MALFORMED.format(
                dataset="bffhq",
                path=folder / bad[0],
                problem=f"{len(bad)} file name(s) do not encode label and bias, e.g. {bad[:3]}",
                expected=BFFHQ_EXPECTED,
            )
        )
    labels = torch.tensor([int(m.group(1)) for m in matches], dtype=torch.int64)  # type: ignore[union-attr]
    biases = torch.tensor([int(m.group(2)) for m in matches], dtype=torch.int64)  # type: ignore[union-attr]
    return files, labels, biases


def load_bffhq(data: DataConfig, *, root: Path, image_size: int) -> ImageSplits:
    base = root / BFFHQ_FOLDER
    cfg = data.bffhq
    parts = {}
    for kind in ("align", "conflict"):
        files, labels, biases = _bffhq_attributes(base / cfg.conflict / kind)
        wrong = (labels == biases) if kind == "conflict" else (labels != biases)
        if bool(wrong.any()):
            first = files[int(torch.nonzero(wrong)[0])]
            raise DatasetFilesError(
                ERR_MALFORMED.format(
                    dataset="bffhq",
                    path=first,
                    problem=f"a file in {kind}/ whose label and bias {'agree' if kind == 'conflict' else 'differ'}",
                    expected=f"bias-aligned files (label == bias) in align/ and bias-conflicting ones in conflict/; {BFFHQ_EXPECTED}",
                )
            )
        parts[kind] = (files, labels, biases)
    train_files = parts["align"][0] + parts["conflict"][0]
    train_y = torch.cat([parts["align"][1], parts["conflict"][1]])
    train_g = torch.cat([parts["align"][2], parts["conflict"][2]])
    test_files, test_y, test_g = _bffhq_attributes(base / cfg.test_split)
    _check_train_classes("bffhq", train_y, BFFHQ_CLASSES)
    norm = _normalization(data)
    train = _grouped(read_images(train_files, size=image_size), train_y, train_g, BFFHQ_CLASSES, BFFHQ_GROUPS, norm)
    test = _grouped(read_images(test_files, size=image_size), test_y, test_g, BFFHQ_CLASSES, BFFHQ_GROUPS, norm)
    return ImageSplits(
        train=train,
        test=test,
        source=f"BFFHQ files in {base}",
        description=f"target age (young/old), group gender (female/male); train {cfg.conflict} "
        f"({len(parts['align'][0])} aligned + {len(parts['conflict'][0])} conflicting), test {cfg.test_split}/",
        params={
            "conflict": cfg.conflict,
            "aligned": len(parts["align"][0]),
            "conflicting": len(parts["conflict"][0]),
            "test_split": cfg.test_split,
        },
    )


# --------------------------------------------------------------------------- your own folder


def _sorted_names(values: pd.Series) -> tuple[str, ...]:
    """Unique values as names, numerically sorted when they are all integers."""
    unique = values.unique().tolist()
    if all(re.fullmatch(r"-?\d+", v) for v in unique):
        return tuple(sorted(unique, key=int))
    return tuple(sorted(unique))


def load_folder(data: DataConfig, *, workspace: Path, image_size: int) -> ImageSplits:
    cfg = data.folder
    assert cfg.csv is not None and cfg.images is not None  # DataConfig checks it
    csv_path, images_dir = workspace / cfg.csv, workspace / cfg.images
    if not csv_path.is_file():
        raise DatasetFilesError(
            ERR_MISSING.format(
                dataset="folder",
                path=csv_path,
                expected=f"a CSV with columns {cfg.path_column}, {cfg.label_column}, {cfg.group_column}",
            )
        )
    if not images_dir.is_dir():
        raise DatasetFilesError(
            ERR_MISSING.format(dataset="folder", path=images_dir, expected="the folder of the images the CSV lists")
        )
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetFilesError(
            ERR_MALFORMED.format(
                dataset="folder",
                path=csv_path,
                problem=str(exc).splitlines()[0],
                expected="a comma-separated file with a header row",
            )
        ) from None
    columns = [cfg.path_column, cfg.label_column, cfg.group_column] + ([cfg.split_column] if cfg.split_column else [])
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetFilesError(ERR_FOLDER_COLUMNS.format(path=csv_path, missing=missing, found=list(table.columns)))
    if table.empty:
        raise DatasetFilesError(ERR_EMPTY_SPLIT.format(dataset="folder", split="whole", hint=f"{csv_path} has no rows"))
    for column in columns:
        table[column] = table[column].str.strip()
        empty = np.flatnonzero(table[column].to_numpy() == "")
        if empty.size:
            raise DatasetFilesError(
                ERR_FOLDER_EMPTY.format(path=csv_path, rows=(empty[:5] + 2).tolist(), column=column)
            )
    paths = []
    for row, value in enumerate(table[cfg.path_column].tolist()):
        rel = PurePosixPath(value.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts:
            raise DatasetFilesError(ERR_FOLDER_PATH.format(path=csv_path, row=row + 2, value=value, images=images_dir))
        paths.append(images_dir / rel)
    inside = images_dir.resolve()
    for row, path in enumerate(paths):  # a symlink must not lead out of the folder the user named
        target = path.resolve()
        if target != inside and inside not in target.parents:
            raise DatasetFilesError(
                ERR_FOLDER_OUTSIDE.format(
                    path=csv_path, row=row + 2, value=table[cfg.path_column].iloc[row], target=target, images=images_dir
                )
            )
    absent = [str(p.relative_to(images_dir)) for p in paths if not p.is_file()]
    if absent:
        raise DatasetFilesError(
            ERR_FOLDER_MISSING.format(count=len(absent), path=csv_path, images=images_dir, examples=absent[:3])
        )
    classes, group_names = _sorted_names(table[cfg.label_column]), _sorted_names(table[cfg.group_column])
    labels = torch.tensor(
        table[cfg.label_column].map({n: i for i, n in enumerate(classes)}).to_numpy(), dtype=torch.int64
    )
    groups = torch.tensor(
        table[cfg.group_column].map({n: i for i, n in enumerate(group_names)}).to_numpy(), dtype=torch.int64
    )
    if cfg.split_column:
        split = table[cfg.split_column].str.lower()
        bad = np.flatnonzero(~split.isin(("train", "test")).to_numpy())
        if bad.size:
            raise DatasetFilesError(
                ERR_FOLDER_SPLIT.format(
                    path=csv_path,
                    column=cfg.split_column,
                    rows=(bad[:5] + 2).tolist(),
                    values=sorted(set(split.iloc[bad]))[:5],
                )
            )
        test_mask = torch.tensor((split == "test").to_numpy())
    else:
        cell = labels * len(group_names) + groups
        counts = torch.bincount(cell, minlength=len(classes) * len(group_names))
        quota = torch.round(counts.to(torch.float64) * cfg.test_fraction).to(torch.int64)
        quota = torch.minimum(quota, (counts - 1).clamp_min(0))  # a cell of one image stays in train
        test_mask = split_per_cell(
            labels, groups, len(group_names), test_per_cell=quota, generator=torch.Generator().manual_seed(data.seed)
        )
    train_idx, test_idx = torch.nonzero(~test_mask).flatten(), torch.nonzero(test_mask).flatten()
    _check_train_classes("folder", labels[train_idx], classes)
    if test_idx.numel() == 0:
        raise DatasetFilesError(
            ERR_EMPTY_SPLIT.format(
                dataset="folder",
                split="test",
                hint="mark rows 'test' in the split column or raise data.folder.test_fraction",
            )
        )
    images = read_images(paths, size=image_size)
    norm = _normalization(data)
    train = _grouped(images[train_idx], labels[train_idx], groups[train_idx], classes, group_names, norm)
    test = _grouped(images[test_idx], labels[test_idx], groups[test_idx], classes, group_names, norm)
    how = f"column {cfg.split_column!r}" if cfg.split_column else f"a stratified {cfg.test_fraction:.0%} test split"
    return ImageSplits(
        train=train,
        test=test,
        source=f"your images in {images_dir}, labels in {csv_path}",
        description=f"target {cfg.label_column!r}, group {cfg.group_column!r}; train/test from {how}",
        params={
            "csv": cfg.csv,
            "images": cfg.images,
            "split_column": cfg.split_column,
            "test_fraction": cfg.test_fraction,
            "seed": data.seed,
        },
    )


# --------------------------------------------------------------------------- dispatch


def user_files_digest(data: DataConfig, *, workspace: str | Path) -> str | None:
    """SHA-256 over the content of the user's own data files, or None for the published releases.

    For ``folder``: the CSV and every file under ``data.folder.images``; with ``data.idx_dir``:
    every file of that folder; for ``adult``: ``data.tabular.csv`` and ``test_csv``. The ``ingest`` stage takes it as a parameter, so its cache key
    changes when these files do (the published releases are fixed and not re-hashed).
    Missing files are skipped here; ``ingest`` reports them.
    """
    workspace = Path(workspace)
    tabular_files = [f for f in (data.tabular.csv, data.tabular.test_csv) if f is not None]
    if data.dataset == "adult" and tabular_files:
        files = [workspace / f for f in tabular_files]
    elif data.dataset == "folder" and data.folder.csv is not None and data.folder.images is not None:
        files = [workspace / data.folder.csv] + sorted(
            p for p in (workspace / data.folder.images).rglob("*") if p.is_file()
        )
    elif data.idx_dir is not None:
        files = sorted(p for p in (workspace / data.idx_dir).rglob("*") if p.is_file())
    else:
        return None
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(f"{path.relative_to(workspace).as_posix()}|{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def check_user_files(data: DataConfig, *, workspace: str | Path) -> None:
    """Fail fast, naming the file, when the user's own data files of ``data`` are missing or malformed.

    Cheap checks only (existence; IDX headers and sizes, :func:`fdd.sources.check_idx_folder`),
    run before a pipeline starts; the ``ingest`` stage checks everything again when it reads them.
    """
    workspace = Path(workspace)
    if data.dataset in COLORED_DATASETS and data.idx_dir is not None:
        check_idx_folder(workspace / data.idx_dir)
    elif data.dataset == "folder" and data.folder.csv is not None and data.folder.images is not None:
        if not (workspace / data.folder.csv).is_file():
            raise DatasetFilesError(
                ERR_MISSING.format(
                    dataset="folder",
                    path=workspace / data.folder.csv,
                    expected="the CSV of data.folder.csv (one row per image)",
                )
            )
        if not (workspace / data.folder.images).is_dir():
            raise DatasetFilesError(
                ERR_MISSING.format(
                    dataset="folder", path=workspace / data.folder.images, expected="the folder of data.folder.images"
                )
            )
    elif data.dataset in TABULAR_DATASETS:
        for key in ("csv", "test_csv"):
            value = getattr(data.tabular, key)
            if value is not None and not (workspace / value).is_file():
                raise DatasetFilesError(
                    ERR_MISSING.format(
                        dataset=data.dataset, path=workspace / value, expected=f"the CSV of data.tabular.{key}"
                    )
                )


_LOADERS: dict[str, Callable[..., ImageSplits]] = {
    "cifar10s": load_cifar10s,
    "celeba": load_celeba,
    "utkface": load_utkface,
    "bffhq": load_bffhq,
}


def prepare_image_dataset(data: DataConfig, *, workspace: str | Path) -> ImageSplits:
    """The train and test splits of ``data.dataset`` (one of the image benchmarks).

    Raw files are read under ``workspace / data.root`` (``data.folder.*`` for ``folder``);
    images get side ``data.image_size`` (default :data:`DEFAULT_IMAGE_SIZE`) and the
    normalisation ``data.mean`` / ``data.std`` (default :data:`DEFAULT_NORMALIZATION`).
    """
    workspace = Path(workspace)
    if data.dataset not in DEFAULT_IMAGE_SIZE:
        raise ValueError(f"data.dataset must be one of {sorted(DEFAULT_IMAGE_SIZE)} here; got {data.dataset!r}")
    size = data.image_size or DEFAULT_IMAGE_SIZE[data.dataset]
    if data.dataset == "folder":
        return load_folder(data, workspace=workspace, image_size=size)
    return _LOADERS[data.dataset](data, root=workspace / data.root, image_size=size)


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NORMALIZATION",
    "DatasetFilesError",
    "ImageSplits",
    "SkippedFilesWarning",
    "age_class_names",
    "build_cifar10s",
    "prepare_image_dataset",
    "read_celeba_tables",
    "read_cifar10",
    "read_images",
    "skew_groups",
    "split_per_cell",
    "user_files_digest",
]
