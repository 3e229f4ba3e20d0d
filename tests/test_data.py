"""Tests of fdd.datasets.containers: GroupedImages, SyntheticSet, atomic_save, stratified_subset."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from fdd.datasets import containers as D
from fdd.datasets.containers import GroupedImages, SyntheticSet, atomic_save, stratified_subset, tensor_digest


def make_grouped(
    n: int = 12,
    channels: int = 3,
    size: int = 4,
    num_classes: int = 3,
    num_groups: int = 2,
    seed: int = 0,
    dtype=torch.uint8,
    **overrides,
) -> GroupedImages:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    else:
        images = torch.rand(n, channels, size, size, generator=gen, dtype=dtype)
    labels = torch.arange(n) % num_classes
    groups = (torch.arange(n) // num_classes) % num_groups
    kwargs = dict(
        images=images,
        labels=labels,
        groups=groups,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
    kwargs.update(overrides)
    return GroupedImages(**kwargs)


def message_regex(template: str) -> str:
    """A regex matching ``template`` with every ``{field}`` replaced by anything."""
    parts = re.split(r"\{[^}]*\}", template)
    return ".*".join(re.escape(p) for p in parts)


# --------------------------------------------------------------------------- validation


def test_valid_construction_casts_fields():
    data = make_grouped(labels=(torch.arange(12) % 3).int(), class_names=["a", "b", "c"], mean=[0, 0, 0], std=[1, 1, 1])
    assert data.labels.dtype == torch.long and data.groups.dtype == torch.long
    assert data.class_names == ("a", "b", "c")
    assert data.mean == (0.0, 0.0, 0.0) and all(isinstance(m, float) for m in data.mean)
    assert len(data) == 12 and data.num_classes == 3 and data.num_groups == 2
    assert data.image_shape == (3, 4, 4)


@pytest.mark.parametrize("shape", [(12, 4, 4), (12, 3, 4, 4, 1), (48,)])
def test_images_rank_error(shape):
    with pytest.raises(ValueError, match=message_regex(D.ERR_IMAGES_RANK)) as info:
        make_grouped(images=torch.zeros(shape, dtype=torch.uint8))
    assert str(shape) in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.int8])
def test_images_dtype_error(dtype):
    with pytest.raises(ValueError, match=message_regex(D.ERR_IMAGES_DTYPE)):
        make_grouped(images=torch.zeros(12, 3, 4, 4, dtype=dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_images_nonfinite_error(bad):
    images = torch.rand(12, 3, 4, 4)
    images[0, 0, 0, 0] = bad
    images[3, 1, 2, 2] = bad
    with pytest.raises(ValueError, match=message_regex(D.ERR_IMAGES_NONFINITE)) as info:
        make_grouped(images=images)
    assert "2 NaN or Inf" in str(info.value)


def test_float_images_accepted():
    data = make_grouped(dtype=torch.float64)
    assert data.images.dtype == torch.float64


@pytest.mark.parametrize("field", ["labels", "groups"])
def test_index_out_of_range(field):
    good = make_grouped()
    bad = getattr(good, field).clone()
    bad[5] = 7
    with pytest.raises(
        ValueError, match=message_regex(D.ERR_INDEX_RANGE if field == "labels" else D.ERR_GROUP_RANGE)
    ) as info:
        make_grouped(**{field: bad})
    assert field in str(info.value) and "7" in str(info.value)
    bad = getattr(good, field).clone()
    bad[0] = -1 if field == "labels" else -2  # groups may be -1 (unknown group), never below
    with pytest.raises(ValueError, match=message_regex(D.ERR_INDEX_RANGE if field == "labels" else D.ERR_GROUP_RANGE)):
        make_grouped(**{field: bad})


@pytest.mark.parametrize("field", ["labels", "groups"])
def test_index_length_and_rank_mismatch(field):
    with pytest.raises(ValueError, match=message_regex(D.ERR_INDEX_SHAPE)) as info:
        make_grouped(**{field: torch.zeros(11, dtype=torch.long)})
    assert field in str(info.value) and "N=12" in str(info.value)
    with pytest.raises(ValueError, match=message_regex(D.ERR_INDEX_SHAPE)):
        make_grouped(**{field: torch.zeros(12, 1, dtype=torch.long)})


@pytest.mark.parametrize("field", ["labels", "groups"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_index_dtype_error(field, dtype):
    with pytest.raises(ValueError, match=message_regex(D.ERR_INDEX_DTYPE)):
        make_grouped(**{field: torch.zeros(12, dtype=dtype)})


def test_empty_error():
    with pytest.raises(ValueError, match=re.escape(D.ERR_EMPTY)):
        make_grouped(
            images=torch.zeros(0, 3, 4, 4, dtype=torch.uint8),
            labels=torch.zeros(0, dtype=torch.long),
            groups=torch.zeros(0, dtype=torch.long),
        )


@pytest.mark.parametrize("field", ["class_names", "group_names"])
def test_empty_names_error(field):
    with pytest.raises(ValueError, match=message_regex(D.ERR_NAMES_EMPTY)) as info:
        make_grouped(**{field: ()})
    assert field in str(info.value)


@pytest.mark.parametrize("field", ["mean", "std"])
@pytest.mark.parametrize("value", [(0.5,), (0.5, 0.5), (0.5,) * 4])
def test_normalisation_length_error(field, value):
    with pytest.raises(ValueError, match=message_regex(D.ERR_NORM_LENGTH)) as info:
        make_grouped(**{field: value})
    assert field in str(info.value) and "C=3" in str(info.value)


@pytest.mark.parametrize("std", [(0.5, 0.0, 0.5), (0.5, -1.0, 0.5), (float("nan"), 0.5, 0.5)])
def test_std_positive_error(std):
    with pytest.raises(ValueError, match=message_regex(D.ERR_STD_POSITIVE)):
        make_grouped(std=std)


def test_frozen():
    data = make_grouped()
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.labels = torch.zeros(12, dtype=torch.long)  # type: ignore[misc]


# --------------------------------------------------------------------------- normalized / subset


def test_normalized_uint8_math():
    data = make_grouped(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    x = data.normalized()
    assert x.dtype == torch.float32 and x.shape == data.images.shape
    expected = torch.empty(x.shape, dtype=torch.float64)
    for ch, (m, s) in enumerate(zip((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))):
        expected[:, ch] = (data.images[:, ch].double() / 255.0 - m) / s
    torch.testing.assert_close(x.double(), expected, atol=1e-6, rtol=1e-6)
    # 0 and 255 map to the ends of the range
    raw = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    one = GroupedImages(
        images=raw,
        labels=torch.tensor([0, 0]),
        groups=torch.tensor([0, 0]),
        class_names=("a",),
        group_names=("g",),
        mean=(0.5,),
        std=(0.5,),
    )
    torch.testing.assert_close(one.normalized().flatten(), torch.tensor([-1.0, 1.0]))


def test_normalized_float_images_not_rescaled_and_dtype():
    data = make_grouped(dtype=torch.float32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = data.normalized(dtype=torch.float64)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, (data.images.double() - 0.5) / 0.5)


def test_subset_by_index_and_mask():
    data = make_grouped()
    idx = torch.tensor([4, 0, 7])
    sub = data.subset(idx)
    assert len(sub) == 3
    assert torch.equal(sub.images, data.images[idx])
    assert torch.equal(sub.labels, data.labels[idx]) and torch.equal(sub.groups, data.groups[idx])
    assert sub.class_names == data.class_names and sub.mean == data.mean and sub.std == data.std
    mask = data.labels == 1
    sub = data.subset(mask)
    assert len(sub) == int(mask.sum()) and bool((sub.labels == 1).all())


# --------------------------------------------------------------------------- save / load / digest


def test_save_load_round_trip(tmp_path: Path):
    data = make_grouped(mean=(0.1, 0.2, 0.3))
    path = tmp_path / "sub" / "train.pt"
    data.save(path)
    raw = torch.load(path, weights_only=True)  # must not need pickled classes
    assert raw["format"] == "fdd.GroupedImages/1"
    assert torch.equal(raw["images"], data.images)
    loaded = GroupedImages.load(path)
    assert torch.equal(loaded.images, data.images) and loaded.images.dtype == torch.uint8
    assert torch.equal(loaded.labels, data.labels) and torch.equal(loaded.groups, data.groups)
    assert loaded.class_names == data.class_names and loaded.group_names == data.group_names
    assert loaded.mean == data.mean and loaded.std == data.std
    assert loaded.digest() == data.digest()
    assert [p.name for p in path.parent.iterdir()] == ["train.pt"]


def test_load_missing_keys_error(tmp_path: Path):
    path = tmp_path / "x.pt"
    torch.save({"images": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=message_regex(D.ERR_FILE_FORMAT)) as info:
        GroupedImages.load(path)
    assert "labels" in str(info.value)
    with pytest.raises(ValueError, match=message_regex(D.ERR_FILE_FORMAT)):
        SyntheticSet.load(path)


def test_digest_stable_and_sensitive():
    a, b = make_grouped(), make_grouped()
    assert a.digest() == b.digest()
    assert re.fullmatch(r"[0-9a-f]{64}", a.digest())
    images = a.images.clone()
    images[3, 1, 2, 0] ^= 1
    assert make_grouped(images=images).digest() != a.digest()
    labels = a.labels.clone()
    labels[0] = (labels[0] + 1) % 3
    assert make_grouped(labels=labels).digest() != a.digest()
    assert make_grouped(group_names=("x", "y")).digest() != a.digest()
    assert make_grouped(mean=(0.4, 0.5, 0.5)).digest() != a.digest()


def test_tensor_digest_depends_on_shape_and_dtype():
    x = torch.arange(6, dtype=torch.int32)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.view(2, 3))
    assert tensor_digest(x) != tensor_digest(x.to(torch.float32))


# --------------------------------------------------------------------------- SyntheticSet


def make_synthetic(**overrides) -> SyntheticSet:
    gen = torch.Generator().manual_seed(1)
    kwargs = dict(
        images=torch.randn(6, 3, 4, 4, generator=gen),
        labels=torch.tensor([0, 0, 1, 1, 2, 2]),
        class_names=("a", "b", "c"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        provenance={"mode": "cobra", "iterations": 3, "seed": 0, "nested": {"x": [1, 2]}},
    )
    kwargs.update(overrides)
    return SyntheticSet(**kwargs)


def test_synthetic_round_trip_plain_torch_load(tmp_path: Path):
    syn = make_synthetic()
    path = tmp_path / "synthetic.pt"
    syn.save(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fdd.SyntheticSet/1"
    assert raw["images"].dtype == torch.float32
    assert torch.equal(raw["images"], syn.images)
    assert torch.equal(raw["labels"], syn.labels)
    assert raw["mean"] == [0.5, 0.5, 0.5] and raw["std"] == [0.5, 0.5, 0.5]
    assert raw["class_names"] == ["a", "b", "c"]
    assert raw["provenance"] == {"mode": "cobra", "iterations": 3, "seed": 0, "nested": {"x": [1, 2]}}
    loaded = SyntheticSet.load(path)
    assert torch.equal(loaded.images, syn.images) and torch.equal(loaded.labels, syn.labels)
    assert loaded.class_names == ("a", "b", "c") and loaded.mean == (0.5,) * 3 and loaded.std == (0.5,) * 3
    assert loaded.provenance == syn.provenance
    assert loaded.images_per_class == 2


def test_synthetic_saves_float32_from_float64(tmp_path: Path):
    syn = make_synthetic(images=torch.randn(6, 3, 4, 4, dtype=torch.float64))
    syn.save(tmp_path / "s.pt")
    raw = torch.load(tmp_path / "s.pt", weights_only=True)
    assert raw["images"].dtype == torch.float32
    torch.testing.assert_close(raw["images"].double(), syn.images, atol=1e-6, rtol=1e-6)


def test_synthetic_validation():
    with pytest.raises(ValueError, match=message_regex(D.ERR_IMAGES_DTYPE)):
        make_synthetic(images=torch.zeros(6, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=message_regex(D.ERR_INDEX_RANGE)):
        make_synthetic(labels=torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match=message_regex(D.ERR_NORM_LENGTH)):
        make_synthetic(mean=(0.5,))
    bad = torch.randn(6, 3, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=message_regex(D.ERR_IMAGES_NONFINITE)):
        make_synthetic(images=bad)


def test_synthetic_empty_error():
    with pytest.raises(ValueError):
        make_synthetic(images=torch.zeros(0, 3, 4, 4), labels=torch.zeros(0, dtype=torch.long))


def test_images_per_class_is_max_count():
    syn = make_synthetic(labels=torch.tensor([0, 0, 0, 1, 2, 2]))
    assert syn.images_per_class == 3


# --------------------------------------------------------------------------- atomic_save


def test_atomic_save_no_temp_left(tmp_path: Path):
    path = tmp_path / "deep" / "out.pt"
    atomic_save({"x": torch.arange(3)}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    atomic_save({"x": torch.arange(5)}, path)  # overwrite
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.pt"]


def test_atomic_save_file_is_readable_by_others(tmp_path: Path):
    # mkstemp creates 0600 files; a saved artifact must be readable like a plain torch.save output
    import stat

    path = tmp_path / "out.pt"
    atomic_save({"x": 1}, path)
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044


def test_atomic_save_failure_keeps_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "out.pt"
    atomic_save({"x": torch.arange(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"half-written garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"x": torch.arange(100)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]
    # and a failed first save leaves nothing at all
    with pytest.raises(RuntimeError):
        atomic_save({"x": 1}, tmp_path / "new.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]


def test_grouped_save_failure_keeps_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "train.pt"
    old = make_grouped(seed=0)
    old.save(path)

    def broken_save(obj, handle, *args, **kwargs):
        raise OSError("boom")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        make_grouped(seed=1).save(path)
    monkeypatch.undo()
    assert GroupedImages.load(path).digest() == old.digest()


# --------------------------------------------------------------------------- stratified_subset


def imbalanced(n_per_cell: dict[tuple[int, int], int]) -> GroupedImages:
    labels, groups = [], []
    for (c, g), k in n_per_cell.items():
        labels += [c] * k
        groups += [g] * k
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous() / n
    return GroupedImages(
        images=images,
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        class_names=("a", "b"),
        group_names=("x", "y"),
        mean=(0.0,),
        std=(1.0,),
    )


def test_stratified_subset_keeps_shares():
    cells = {(0, 0): 400, (0, 1): 100, (1, 0): 200, (1, 1): 300}
    data = imbalanced(cells)
    sub = stratified_subset(data, size=100, seed=3)
    for (c, g), k in cells.items():
        got = int(((sub.labels == c) & (sub.groups == g)).sum())
        assert got == round(100 * k / 1000)
    # a subset of distinct images of the original (images encode their index)
    idx = (sub.images[:, 0, 0, 0] * len(data)).round().long()
    assert idx.unique().numel() == len(sub)
    assert torch.equal(data.labels[idx], sub.labels) and torch.equal(data.groups[idx], sub.groups)
    assert bool((idx[1:] > idx[:-1]).all())  # original order kept


def test_stratified_subset_keeps_small_cells_and_is_seeded():
    cells = {(0, 0): 990, (0, 1): 3, (1, 0): 7}
    data = imbalanced(cells)
    sub = stratified_subset(data, size=10, seed=0)
    assert int(((sub.labels == 0) & (sub.groups == 1)).sum()) == 1  # rounds to 0, kept at 1
    assert int(((sub.labels == 1) & (sub.groups == 0)).sum()) == 1
    again = stratified_subset(data, size=10, seed=0)
    other = stratified_subset(data, size=10, seed=1)
    assert torch.equal(sub.images, again.images)
    assert not torch.equal(sub.images, other.images)


@pytest.mark.parametrize("size", [0, -1, 1001])
def test_stratified_subset_size_error(size):
    data = imbalanced({(0, 0): 500, (1, 1): 500})
    with pytest.raises(ValueError, match=message_regex(D.ERR_SUBSET_SIZE)):
        stratified_subset(data, size=size, seed=0)


def test_stratified_subset_full_size_is_identity():
    data = imbalanced({(0, 0): 5, (0, 1): 2, (1, 0): 3})
    sub = stratified_subset(data, size=len(data), seed=0)
    assert torch.equal(sub.images, data.images) and torch.equal(sub.labels, data.labels)
