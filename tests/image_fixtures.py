"""Builders of tiny image datasets in the real on-disk formats (shared by the loader and pipeline tests).

Each builder writes random images in the layout of the real release and returns what it
wrote (counts per cell, the arrays), so tests can check the constructed splits against it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpeg(image: torch.Tensor, path: str, *, quality: int = 90) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=quality)


def write_png(image: torch.Tensor, path: str) -> None:
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def _image(rng: np.random.Generator, height: int, width: int, tint: int = 0) -> torch.Tensor:
    """A random RGB image (3, H, W) uint8 with a class-dependent bright band (learnable)."""
    pixels = rng.integers(0, 80, size=(3, height, width), dtype=np.uint8)
    band = height // 8
    top = (tint % 6) * band + band
    pixels[tint % 3, top : top + band, :] = 255
    return torch.from_numpy(pixels)


def write_cifar10(
    root: Path, *, train_per_class: int = 20, test_per_class: int = 6, seed: int = 0
) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py/`` with data_batch_1..5, test_batch and batches.meta (python pickles).

    The train images are spread over the five batches as in the release; each batch is a
    dict with 'batch_label', 'labels' (list of int), 'data' (N x 3072 uint8, channel-major
    rows) and 'filenames'.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        data = np.stack([_image(rng, 32, 32, int(k)).numpy().reshape(-1) for k in labels])
        return data.astype(np.uint8), labels

    def dump(name: str, data: np.ndarray, labels: np.ndarray) -> None:
        batch = {
            "batch_label": f"{name} of 5",
            "labels": [int(v) for v in labels],
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    train_data, train_labels = split(train_per_class)
    for i, chunk in enumerate(np.array_split(np.arange(len(train_labels)), 5)):
        dump(f"data_batch_{i + 1}", train_data[chunk], train_labels[chunk])
    test_data, test_labels = split(test_per_class)
    dump("test_batch", test_data, test_labels)
    meta = {"num_cases_per_batch": 10000, "label_names": list(CIFAR_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"train_data": train_data, "train_labels": train_labels, "test_data": test_data, "test_labels": test_labels}


def write_celeba(
    root: Path,
    *,
    cells: Mapping[str, Mapping[tuple[int, int], int]],
    target: str = "Attractive",
    group: str = "Male",
    seed: int = 0,
) -> None:
    """``root/celeba/`` with list_attr_celeba.txt, list_eval_partition.txt and img_align_celeba/*.jpg.

    ``cells[split][(target value, group value)]`` images of each split ('train', 'valid',
    'test') are written as 178x218 JPEGs; the other 38 attributes are random.
    """
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rows, parts = [], []
    index = 0
    ti, gi = CELEBA_ATTRIBUTES.index(target), CELEBA_ATTRIBUTES.index(group)
    for split_id, split in enumerate(("train", "valid", "test")):
        for (t, g), count in cells.get(split, {}).items():
            for _ in range(count):
                index += 1
                name = f"{index:06d}.jpg"
                values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
                values[ti], values[gi] = 2 * t - 1, 2 * g - 1
                rows.append(name + " " + " ".join(f"{v:2d}" for v in values))
                parts.append(f"{name} {split_id}")
                write_jpeg(_image(rng, 218, 178, t), str(folder / "img_align_celeba" / name), quality=90)
    header = f"{len(rows)}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n"
    (folder / "list_attr_celeba.txt").write_text(header + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


def write_utkface(
    root: Path, *, cells: Mapping[tuple[int, int], int], extra_names: tuple[str, ...] = (), seed: int = 0
) -> None:
    """``root/UTKFace/[age]_[gender]_[race]_[date&time].jpg.chip.jpg`` (200x200), as in the aligned release.

    ``cells[(age, race)]`` images of that age and race (gender alternates); ``extra_names``
    are written as-is (malformed names, for instance).
    """
    rng = np.random.default_rng(seed)
    folder = root / "UTKFace"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = 20170109150557335
    for (age, race), count in cells.items():
        for i in range(count):
            stamp += 1
            name = f"{age}_{i % 2}_{race}_{stamp}.jpg.chip.jpg"
            write_jpeg(_image(rng, 200, 200, age // 20), str(folder / name), quality=90)
    for name in extra_names:
        write_jpeg(_image(rng, 200, 200), str(folder / name), quality=90)


def write_bffhq(
    root: Path, *, train: Mapping[tuple[int, int], int], test: Mapping[tuple[int, int], int], seed: int = 0
) -> None:
    """``root/bffhq/0.5pct/{align,conflict}/<label>/<idx>_<label>_<bias>.png`` and ``root/bffhq/test/``.

    ``train[(label, bias)]`` images go to align/ when label == bias, else to conflict/.
    """
    rng = np.random.default_rng(seed)
    base = root / "bffhq"
    index = 0
    for cells, where in ((train, None), (test, base / "test")):
        for (label, bias), count in cells.items():
            folder = where or base / "0.5pct" / ("align" if label == bias else "conflict") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                write_png(_image(rng, 128, 128, label), str(folder / f"{index}_{label}_{bias}.png"))
                index += 1


def write_folder(
    workspace: Path, *, cells: Mapping[tuple[str, str], int], split_column: bool = False, seed: int = 0
) -> list[dict[str, str]]:
    """``workspace/my_images/<label>/*.png`` (48x40, some grayscale) and ``workspace/my_labels.csv``.

    ``cells[(label, group)]`` images; with ``split_column`` every third image of a cell is
    marked 'test'. Returns the CSV rows.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for (label, group), count in cells.items():
        folder = workspace / "my_images" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{group}_{i}.png"
            image = _image(rng, 48, 40, len(rows) % 3)
            write_png(image[:1] if i % 4 == 0 else image, str(folder / name))
            row = {"file": f"{label}/{name}", "diagnosis": label, "sex": group}
            if split_column:
                row["split"] = "test" if i % 3 == 2 else "train"
            rows.append(row)
    import pandas as pd

    pd.DataFrame(rows).to_csv(workspace / "my_labels.csv", index=False)
    return rows
