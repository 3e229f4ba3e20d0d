"""Typed containers for grouped image sets and distilled synthetic sets.

A :class:`GroupedImages` holds a labelled image set with one protected-group id per
image (colour, gender, race, ...). It replaces the positional ``(x, y, group)`` tuples
of the research code: every field is named, validated once on construction, and
saved in a format that ``torch.load(..., weights_only=True)`` reads back.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fdd.files import atomic_write

__all__ = [
    "GroupedImages",
    "SyntheticSet",
    "UNKNOWN_GROUP",
    "atomic_save",
    "stratified_subset",
    "tensor_digest",
]

ERR_IMAGES_RANK = "images must have shape (N, C, H, W); got shape {shape}"
ERR_IMAGES_DTYPE = "images must be uint8 (0-255) or a floating dtype; got {dtype}"
ERR_IMAGES_NONFINITE = "images contain {count} NaN or Inf values; all pixels must be finite"
ERR_INDEX_SHAPE = "{name} must be a 1-D tensor of length N={n} (one per image); got shape {shape}"
ERR_INDEX_DTYPE = "{name} must be an integer tensor; got dtype {dtype}"
ERR_INDEX_RANGE = "{name} must lie in [0, {limit}) (one entry of {names_field} per id); got values in [{low}, {high}]"
UNKNOWN_GROUP = -1  # group id of a sample whose protected group is hidden (fdd/datasets/group_noise.py)
ERR_GROUP_RANGE = (
    "groups must lie in [0, {limit}) (one entry of group_names per id) or be -1 (unknown group); "
    "got values in [{low}, {high}]"
)
ERR_SYN_GROUPS = "a synthetic set's groups must be group ids >= 0 or -1 (unknown); got a minimum of {low}"
ERR_EMPTY = "a grouped image set needs at least one image; got N=0"
ERR_NAMES_EMPTY = "{name} must name at least one {what}; got an empty tuple"
ERR_NORM_LENGTH = "{name} must have one entry per channel (C={channels}); got {value}"
ERR_STD_POSITIVE = "std must be positive for every channel; got {value}"
ERR_FILE_FORMAT = "{path} is not a {kind} file: missing keys {missing}"


def _check_index(name: str, values: Tensor, n: int, limit: int, names_field: str, *, unknown_ok: bool = False) -> None:
    if values.dim() != 1 or values.shape[0] != n:
        raise ValueError(ERR_INDEX_SHAPE.format(name=name, n=n, shape=tuple(values.shape)))
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.is_complex():
        raise ValueError(ERR_INDEX_DTYPE.format(name=name, dtype=values.dtype))
    low, high = int(values.min()), int(values.max())
    if unknown_ok and (low < UNKNOWN_GROUP or high >= limit):
        raise ValueError(ERR_GROUP_RANGE.format(limit=limit, low=low, high=high))
    if not unknown_ok and (low < 0 or high >= limit):
        raise ValueError(ERR_INDEX_RANGE.format(name=name, limit=limit, names_field=names_field, low=low, high=high))


def _check_images(images: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(ERR_IMAGES_RANK.format(shape=tuple(images.shape)))
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(ERR_IMAGES_DTYPE.format(dtype=images.dtype))
    if images.dtype.is_floating_point:
        bad = int((~torch.isfinite(images)).sum())
        if bad:
            raise ValueError(ERR_IMAGES_NONFINITE.format(count=bad))


def _check_normalisation(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> None:
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != channels:
            raise ValueError(ERR_NORM_LENGTH.format(name=name, channels=channels, value=value))
    if any(not (s > 0) for s in std):
        raise ValueError(ERR_STD_POSITIVE.format(value=std))


class _ContentPickler(pickle.Pickler):
    """A pickler without memo: an object is written by value wherever it occurs.

    The standard memo writes a repeated object as a back-reference, so two equal
    payloads pickle to different bytes when one holds two references to one string or
    tuple and the other two equal copies (which depends on interning, on how a config
    was loaded, on the process). Artifacts hold no cycles, so the memo is not needed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = True


#: what :func:`torch.save` takes as ``pickle_module``: only ``Pickler`` is used for saving
_CONTENT_PICKLE = types.SimpleNamespace(__name__="fdd.data.content_pickle", Pickler=_ContentPickler)


def canonical_payload(obj: Any) -> Any:
    """``obj`` with the same content in a form whose :func:`torch.save` bytes depend only on it.

    * a tensor that views a larger storage (a slice, a non-contiguous view) or shares
      its storage with another tensor of ``obj`` is copied into a storage of its own:
      :func:`torch.save` writes whole storages, so a view would carry the bytes it does
      not show and two shared tensors one storage record instead of two;
    * plain ``dict`` s with string keys are sorted by key (equal dicts, equal bytes);
      other mappings (``OrderedDict``, e.g. a ``state_dict``) keep their order.

    Lists, tuples and dicts are walked recursively; other objects are kept as they are.
    """
    seen: set[tuple[str, int]] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, Tensor):
            storage = value.untyped_storage()
            key = (str(storage.device), storage.data_ptr())
            owns = (
                value.is_contiguous()
                and value.storage_offset() == 0
                and storage.nbytes() == value.numel() * value.element_size()
                and key not in seen
            )
            if owns:
                seen.add(key)
                return value
            copy = value.detach().clone(memory_format=torch.contiguous_format)
            copy.requires_grad_(value.requires_grad and copy.is_leaf)
            seen.add((str(copy.untyped_storage().device), copy.untyped_storage().data_ptr()))
            return copy
        if type(value) is dict:
            keys = list(value)
            if all(isinstance(k, str) for k in keys):
                keys = sorted(keys)
            return {k: walk(value[k]) for k in keys}
        if isinstance(value, OrderedDict):
            return type(value)((k, walk(v)) for k, v in value.items())
        if type(value) in (list, tuple):
            return type(value)(walk(v) for v in value)
        return value

    return walk(obj)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Save ``obj`` with :func:`torch.save` to ``path`` atomically, as bytes that depend only on its content.

    The object is written to a temporary file in the same folder, flushed to disk and
    renamed over ``path``, so a crash never leaves a half-written file behind. It is
    first brought to :func:`canonical_payload` form and pickled without memo, so the
    same content saved by any process (the Prefect flow, ``dvc repro``'s fresh stage
    process, a test) gives the same file, byte for byte, and the same sha256 in the
    stage manifests and in ``dvc.lock``. ``torch.load(path, weights_only=True)`` reads
    it as usual.
    """
    payload = canonical_payload(obj)
    atomic_write(path, lambda handle: torch.save(payload, handle, pickle_module=_CONTENT_PICKLE))


def _load_dict(path: str | os.PathLike[str], required: set[str], kind: str) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    missing = required - set(payload) if isinstance(payload, dict) else required
    if missing:
        raise ValueError(ERR_FILE_FORMAT.format(path=path, kind=kind, missing=sorted(missing)))
    return payload


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 of the raw bytes, shapes and dtypes of ``tensors`` (CPU, contiguous)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class GroupedImages:
    """A labelled image set with one protected-group id per image.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W)
        uint8 pixels in 0-255 (as acquired) or floats in [0, 1].
    labels : Tensor, shape (N,)
        Class ids in ``[0, len(class_names))``.
    groups : Tensor, shape (N,)
        Protected-group ids in ``[0, len(group_names))``, or ``-1`` (:data:`UNKNOWN_GROUP`)
        where the group is hidden (training splits with ``data.group_noise``; the losses
        and stages that need groups skip such samples, see ``docs/alignment.md``).
    class_names, group_names : tuple of str
        Human-readable names; they flow into every table and plot.
    mean, std : tuple of float, length C
        Per-channel normalisation applied by :meth:`normalized`:
        ``x = (pixels / 255 - mean) / std``.
    """

    images: Tensor
    labels: Tensor
    groups: Tensor
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_images(self.images)
        n = self.images.shape[0]
        if n == 0:
            raise ValueError(ERR_EMPTY)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "group_names", tuple(str(g) for g in self.group_names))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        for name, what in (("class_names", "class"), ("group_names", "group")):
            if not getattr(self, name):
                raise ValueError(ERR_NAMES_EMPTY.format(name=name, what=what))
        _check_index("labels", self.labels, n, len(self.class_names), "class_names")
        _check_index("groups", self.groups, n, len(self.group_names), "group_names", unknown_ok=True)
        object.__setattr__(self, "labels", self.labels.long())
        object.__setattr__(self, "groups", self.groups.long())
        _check_normalisation(self.mean, self.std, self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def normalized(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Images as ``dtype`` on ``device`` in the normalised space ``(x/255 - mean) / std``."""
        x = self.images.to(device=device)
        x = x.to(dtype) / 255.0 if self.images.dtype == torch.uint8 else x.to(dtype)
        mean = torch.tensor(self.mean, device=x.device, dtype=dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def subset(self, index: Tensor) -> GroupedImages:
        """The images selected by ``index`` (integer indices or a boolean mask)."""
        return GroupedImages(
            images=self.images[index],
            labels=self.labels[index],
            groups=self.groups[index],
            class_names=self.class_names,
            group_names=self.group_names,
            mean=self.mean,
            std=self.std,
        )

    def digest(self) -> str:
        """Content hash of pixels, labels, groups and names (stable across saves)."""
        names = "|".join(self.class_names) + "#" + "|".join(self.group_names)
        norm = f"{self.mean}{self.std}"
        tensors = tensor_digest(self.images, self.labels, self.groups)
        return hashlib.sha256(f"{tensors}{names}{norm}".encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "fdd.GroupedImages/1",
            "images": self.images.contiguous(),
            "labels": self.labels.contiguous(),
            "groups": self.groups.contiguous(),
            "class_names": list(self.class_names),
            "group_names": list(self.group_names),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GroupedImages:
        fields = {"images", "labels", "groups", "class_names", "group_names", "mean", "std"}
        payload = _load_dict(path, fields, "GroupedImages")
        return cls(**{k: payload[k] for k in fields})


@dataclass(frozen=True)
class SyntheticSet:
    """A distilled synthetic training set, usable without fdd.

    ``images`` are floats in the normalised space (``(x - mean) / std``), one row per
    synthetic image; ``labels`` their classes. ``provenance`` records how it was made
    (config and data hashes, backbone, mode, iterations) for audits. ``groups``, where
    known, holds one protected-group id per image (the group of the real image it is, or
    starts from: the real-image baselines and ``vanilla-gdro``, whose audit trains with
    Group DRO); ``None`` otherwise, and then not written to the file.
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        _check_images(self.images)
        if not self.images.dtype.is_floating_point:
            raise ValueError(ERR_IMAGES_DTYPE.format(dtype=self.images.dtype))
        if self.images.shape[0] == 0:
            raise ValueError(ERR_EMPTY)
        _check_index("labels", self.labels, self.images.shape[0], len(self.class_names), "class_names")
        _check_normalisation(tuple(self.mean), tuple(self.std), self.images.shape[1])
        if self.groups is not None:
            if self.groups.dim() != 1 or self.groups.shape[0] != self.images.shape[0]:
                raise ValueError(
                    ERR_INDEX_SHAPE.format(name="groups", n=self.images.shape[0], shape=tuple(self.groups.shape))
                )
            if self.groups.dtype.is_floating_point or self.groups.dtype == torch.bool:
                raise ValueError(ERR_INDEX_DTYPE.format(name="groups", dtype=self.groups.dtype))
            if int(self.groups.min()) < UNKNOWN_GROUP:
                raise ValueError(ERR_SYN_GROUPS.format(low=int(self.groups.min())))
            object.__setattr__(self, "groups", self.groups.long())

    @property
    def images_per_class(self) -> int:
        return int(torch.bincount(self.labels, minlength=len(self.class_names)).max())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "fdd.SyntheticSet/1",
            "images": self.images.detach().to("cpu", torch.float32).contiguous(),
            "labels": self.labels.detach().to("cpu").contiguous(),
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "provenance": dict(self.provenance),
        } | ({} if self.groups is None else {"groups": self.groups.detach().to("cpu").contiguous()})

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SyntheticSet:
        fields = {"images", "labels", "class_names", "mean", "std", "provenance"}
        payload = _load_dict(path, fields, "SyntheticSet")
        return cls(
            images=payload["images"],
            labels=payload["labels"],
            class_names=tuple(payload["class_names"]),
            mean=tuple(payload["mean"]),
            std=tuple(payload["std"]),
            provenance=dict(payload["provenance"]),
            groups=payload.get("groups"),
        )


ERR_SUBSET_SIZE = "size must be between 1 and the number of images ({n}); got {size}"


def stratified_subset(data: GroupedImages, *, size: int, seed: int) -> GroupedImages:
    """A random subset of ``size`` images keeping every (class, group) cell's share.

    Each cell keeps ``round(size * n_cell / N)`` images (at least one for non-empty
    cells), drawn at random with ``seed``; used to shrink test splits for quick runs.
    """
    n = len(data)
    if not 1 <= size <= n:
        raise ValueError(ERR_SUBSET_SIZE.format(n=n, size=size))
    generator = torch.Generator().manual_seed(seed)
    cell = data.labels * data.num_groups + data.groups
    counts = torch.bincount(cell, minlength=data.num_classes * data.num_groups)
    keep = torch.where(counts > 0, (counts.double() * size / n).round().long().clamp_min(1), 0)
    order = torch.argsort(cell.double() * 2.0 + torch.rand(n, generator=generator, dtype=torch.float64))
    sorted_cell = cell[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[sorted_cell]
    chosen = order[rank < keep[sorted_cell]]
    return data.subset(torch.sort(chosen).values)
