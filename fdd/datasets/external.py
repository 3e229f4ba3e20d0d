"""Synthetic sets made elsewhere, read as a :class:`fdd.datasets.containers.SyntheticSet` for ``fdd audit PATH``.

Three layouts are read (:func:`load_external_set`):

- fdd's own ``synthetic.pt`` (``format: fdd.SyntheticSet/1``);
- a result file of the COBRA / FairDD reference code (``res_*.pt``): ``train_dm.py`` saves
  ``torch.save({"data": [[image_syn, label_syn], ...one pair per experiment], "accs_all_exps": {...}})``;
  a plain ``{"image_syn": ..., "label_syn": ...}`` dictionary or an ``[images, labels]`` pair
  is read too. The images are in the normalised space of the reference's dataset
  statistics (``source_mean`` / ``source_std`` when they differ from the test split's);
- a folder of image files with a ``labels.csv`` (columns ``path`` and ``label``; a label is
  a class index or a class name), decoded, centre-cropped and resized to the test images'
  side, then normalised with the test split's statistics.

Files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
dictionaries only, never arbitrary pickled objects (a pickle can run code when loaded).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.datasets.image_sources import read_images

__all__ = ["LABELS_CSV", "load_external_set"]

#: The labels file of an image folder: one row per image, columns ``path`` (relative to the folder) and ``label``.
LABELS_CSV = "labels.csv"

ERR_MISSING = (
    "{path} does not exist: give a synthetic.pt, a reference res_*.pt file or a folder of images with labels.csv"
)
ERR_UNSAFE = (
    "{path} cannot be read safely: torch.load(weights_only=True) refused it ({error}); fdd reads only files of "
    "tensors, numbers, strings, lists and dicts, never arbitrary pickled objects. Re-save it from its own code as "
    "torch.save({{'image_syn': images, 'label_syn': labels}}, path)"
)
ERR_LAYOUT = (
    "{path} holds {found}; expected fdd's synthetic.pt, the reference's res_*.pt layout "
    "{{'data': [[image_syn, label_syn], ...]}}, a {{'image_syn', 'label_syn'}} dict or an [images, labels] pair"
)
ERR_EXPERIMENT = "{path} holds {count} experiment(s) under 'data'; experiment must be in 0..{last}; got {experiment}"
ERR_TENSORS = (
    "{path}: images must be a float tensor (N, C, H, W) and labels an integer tensor (N,); got {images} and {labels}"
)
ERR_LABEL_RANGE = "{path}: labels must be class indices in 0..{last} (classes {classes}); got {bad}"
ERR_NO_CSV = "the image folder {path} has no {csv}: add one with columns 'path' and 'label' (class index or name)"
ERR_CSV_COLUMNS = "{csv} must have the columns 'path' and 'label'; got {columns}"
ERR_CSV_LABELS = "{csv}: labels {bad} are neither class indices 0..{last} nor class names {classes}"
ERR_SOURCE_NORM = (
    "source_mean and source_std must be given together, one value per channel ({channels}); got {mean} and {std}"
)


def load_external_set(
    path: str | os.PathLike[str],
    *,
    test: GroupedImages,
    experiment: int = 0,
    source_mean: tuple[float, ...] | None = None,
    source_std: tuple[float, ...] | None = None,
) -> SyntheticSet:
    """Read a synthetic set made by fdd or elsewhere, in the normalised space of ``test``.

    Parameters
    ----------
    path : path
        fdd's ``synthetic.pt``, a reference ``res_*.pt`` file or a folder with ``labels.csv``.
    test : GroupedImages
        The test split the set is audited on: its class names, image side and normalisation.
    experiment : int
        Which experiment of a reference file (its ``data`` list holds one per ``--num_exp``).
    source_mean, source_std : tuple of float, optional
        The normalisation a reference file's images are in, when not the test split's:
        the images are mapped to pixels and normalised again with the test split's.

    Raises
    ------
    ValueError
        For a missing path, a file that would need arbitrary unpickling, an unknown layout,
        or labels outside the test split's classes.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(ERR_MISSING.format(path=path))
    if path.is_dir():
        return _from_folder(path, test)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(
            ERR_UNSAFE.format(path=path, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        ) from None
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("fdd.SyntheticSet"):
        own = SyntheticSet.load(path)
        return dataclasses.replace(
            own, provenance={**own.provenance, "source": str(path), "format": "fdd synthetic.pt"}
        )
    images, labels, source = _reference_tensors(payload, path, experiment)
    if not (
        isinstance(images, Tensor)
        and images.dtype.is_floating_point
        and images.dim() == 4
        and isinstance(labels, Tensor)
        and not labels.dtype.is_floating_point
        and labels.dim() == 1
    ):
        raise ValueError(ERR_TENSORS.format(path=path, images=_describe(images), labels=_describe(labels)))
    images = images.float()
    if (source_mean is None) != (source_std is None) or (
        source_mean is not None and not (len(source_mean) == len(source_std or ()) == images.shape[1])
    ):
        raise ValueError(ERR_SOURCE_NORM.format(channels=images.shape[1], mean=source_mean, std=source_std))
    if source_mean is not None and source_std is not None:
        shape = (1, -1, 1, 1)
        pixels = images * torch.tensor(source_std).view(shape) + torch.tensor(source_mean).view(shape)
        images = (pixels - torch.tensor(test.mean).view(shape)) / torch.tensor(test.std).view(shape)
    labels = labels.long()
    bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= test.num_classes)].tolist()})
    if bad:
        raise ValueError(
            ERR_LABEL_RANGE.format(path=path, last=test.num_classes - 1, classes=list(test.class_names), bad=bad)
        )
    return SyntheticSet(
        images=images,
        labels=labels,
        class_names=test.class_names,
        mean=test.mean,
        std=test.std,
        provenance={
            "source": str(path),
            "format": source,
            **({"experiment": experiment} if source == "reference res_*.pt" else {}),
        },
    )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _reference_tensors(payload: Any, path: Path, experiment: int) -> tuple[Any, Any, str]:
    if isinstance(payload, dict) and "data" in payload and isinstance(payload["data"], (list, tuple)):
        runs = payload["data"]
        if not 0 <= experiment < len(runs):
            raise ValueError(
                ERR_EXPERIMENT.format(path=path, count=len(runs), last=max(len(runs) - 1, 0), experiment=experiment)
            )
        run = runs[experiment]
        if isinstance(run, (list, tuple)) and len(run) == 2:
            return run[0], run[1], "reference res_*.pt"
    if isinstance(payload, dict) and {"image_syn", "label_syn"} <= set(payload):
        return payload["image_syn"], payload["label_syn"], "image_syn/label_syn dict"
    if isinstance(payload, (list, tuple)) and len(payload) == 2:
        return payload[0], payload[1], "[images, labels] pair"
    found = f"a dict with keys {sorted(map(str, payload))}" if isinstance(payload, dict) else _describe(payload)
    raise ValueError(ERR_LAYOUT.format(path=path, found=found))


def _from_folder(folder: Path, test: GroupedImages) -> SyntheticSet:
    csv = folder / LABELS_CSV
    if not csv.is_file():
        raise ValueError(ERR_NO_CSV.format(path=folder, csv=LABELS_CSV))
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if not {"path", "label"} <= set(table.columns):
        raise ValueError(ERR_CSV_COLUMNS.format(csv=csv, columns=list(table.columns)))
    names = {name: index for index, name in enumerate(test.class_names)}
    labels, bad = [], []
    for value in table["label"]:
        text = value.strip()
        if text in names:
            labels.append(names[text])
        elif text.isdigit() and int(text) < test.num_classes:
            labels.append(int(text))
        else:
            bad.append(value)
    if bad:
        raise ValueError(
            ERR_CSV_LABELS.format(
                csv=csv, bad=sorted(set(bad)), last=test.num_classes - 1, classes=list(test.class_names)
            )
        )
    side = test.image_shape[-1]
    pixels = read_images(
        [folder / p for p in table["path"]], size=side
    )  # (N, 3, side, side) uint8; decode errors name the file
    shape = (1, -1, 1, 1)
    images = (pixels.float() / 255 - torch.tensor(test.mean).view(shape)) / torch.tensor(test.std).view(shape)
    return SyntheticSet(
        images=images,
        labels=torch.tensor(labels, dtype=torch.long),
        class_names=test.class_names,
        mean=test.mean,
        std=test.std,
        provenance={"source": str(folder), "format": "image folder"},
    )
