"""Tests of fdd.audit: training fresh networks on a synthetic set and auditing them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fdd import audit as A
from fdd.audit import AuditResult, audit_synthetic, predict
from fdd.config import AuditConfig, NetworkConfig
from fdd.data import GroupedImages, SyntheticSet
from fdd.metrics import FairnessReport

TINY_NET = NetworkConfig(width=8, depth=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadrant_data(per_cell: int, seed: int, num_classes: int = 3, num_groups: int = 2, size: int = 8) -> GroupedImages:
    """Class c lights up quadrant c; group g adds a tint. Linearly separable by class."""
    gen = torch.Generator().manual_seed(seed)
    images, labels, groups = [], [], []
    h = size // 2
    for c in range(num_classes):
        for g in range(num_groups):
            x = torch.rand(per_cell, 3, size, size, generator=gen) * 0.2
            r, q = divmod(c, 2)
            x[:, :, r * h:(r + 1) * h, q * h:(q + 1) * h] += 0.7
            x[:, g] += 0.1
            images.append(x.clamp(0, 1))
            labels += [c] * per_cell
            groups += [g] * per_cell
    return GroupedImages(
        images=(torch.cat(images) * 255).round().to(torch.uint8), labels=torch.tensor(labels),
        groups=torch.tensor(groups), class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)), mean=(0.5,) * 3, std=(0.5,) * 3,
    )


def synthetic_from(data: GroupedImages) -> SyntheticSet:
    return SyntheticSet(images=data.normalized(), labels=data.labels, class_names=data.class_names,
                        mean=data.mean, std=data.std)


def tiny_audit(**kw) -> AuditConfig:
    args = dict(num_eval=1, epochs=30, lr=0.05, batch_size=16, dsa=False, test_batch_size=7)
    args.update(kw)
    return AuditConfig(**args)


def test_audit_on_separable_problem(monkeypatch):
    train = quadrant_data(per_cell=4, seed=0)
    test = quadrant_data(per_cell=10, seed=1)
    captured = []
    real_predict = A.predict

    def spy(net, images, *, batch_size):
        out = real_predict(net, images, batch_size=batch_size)
        captured.append(out.cpu())
        return out

    monkeypatch.setattr(A, "predict", spy)
    result = audit_synthetic(synthetic_from(train), test, config=tiny_audit(), network=TINY_NET)
    assert isinstance(result, AuditResult) and len(result.reports) == 1
    report = result.reports[0]
    assert isinstance(report, FairnessReport)
    assert report.accuracy > 100 / 3 + 20  # well above chance
    # the report describes the predictions on the test split
    pred = captured[0]
    assert pred.shape == (len(test),)
    assert report.accuracy == pytest.approx(100 * float((pred == test.labels).double().mean()))
    assert report.num_samples == len(test) and report.num_classes == 3 and report.num_groups == 2
    assert report.class_names == test.class_names and report.group_names == test.group_names
    assert report.recall.shape == (2, 3) and int(report.support.sum()) == len(test)
    assert np.array_equal(report.support, np.full((2, 3), 10))
    assert 0 <= report.deo_a <= report.deo_m <= 100
    assert report.worst_group_accuracy <= report.accuracy + 1e-9
    assert report.worst_group_accuracy == pytest.approx(float(np.nanmin(report.group_accuracy)))
    for g in range(2):
        mask = test.groups == g
        assert report.group_accuracy[g] == pytest.approx(100 * float((pred[mask] == test.labels[mask]).double().mean()))
    # JSON-ready
    json.dumps(result.to_dict(), allow_nan=False)
    assert result.to_dict()["summary"]["num_runs"] == 1


def test_num_eval_reports_and_summary(monkeypatch):
    train = quadrant_data(per_cell=3, seed=0)
    test = quadrant_data(per_cell=5, seed=1)
    seeds = []
    real_build = A.build_convnet

    def spy(**kwargs):
        seeds.append(kwargs["seed"])
        return real_build(**kwargs)

    monkeypatch.setattr(A, "build_convnet", spy)
    done = []
    config = tiny_audit(num_eval=3, epochs=3, seed=2, dsa=True)
    result = audit_synthetic(synthetic_from(train), test, config=config, network=TINY_NET, progress=done.append)
    assert len(result.reports) == 3 and done == [1, 2, 3]
    assert seeds == [2000, 2001, 2002]  # one distinct seed per evaluation
    summary = result.summary
    assert summary["num_runs"] == 3
    for key in ("accuracy", "deo_m", "deo_a", "worst_group_accuracy"):
        values = [getattr(r, key) for r in result.reports]
        assert summary[key]["mean"] == pytest.approx(float(np.mean(values)))
        assert summary[key]["std"] == pytest.approx(float(np.std(values)))
    runs = result.to_dict()["runs"]
    assert len(runs) == 3 and runs[1]["accuracy"] == pytest.approx(result.reports[1].accuracy)


def test_evaluation_protocol_arguments(monkeypatch):
    """epochs + 1 epochs, lr x0.1 after epoch epochs // 2 + 1, the config's optimiser, DSA on."""
    train = quadrant_data(per_cell=2, seed=0)
    test = quadrant_data(per_cell=2, seed=1)
    calls = []
    real_train = A.train_network

    def spy(net, images, labels, **kwargs):
        calls.append(kwargs)
        assert images.dtype == torch.float32 and torch.equal(labels, train.labels)
        return real_train(net, images, labels, **kwargs)

    monkeypatch.setattr(A, "train_network", spy)
    config = tiny_audit(num_eval=2, epochs=5, lr=0.02, momentum=0.8, weight_decay=1e-3, batch_size=8, dsa=True)
    audit_synthetic(synthetic_from(train), test, config=config, network=TINY_NET)
    assert len(calls) == 2
    for kwargs in calls:
        assert kwargs["epochs"] == 6 and kwargs["lr_decay_epoch"] == 3
        assert kwargs["lr"] == 0.02 and kwargs["momentum"] == 0.8 and kwargs["weight_decay"] == 1e-3
        assert kwargs["batch_size"] == 8 and kwargs["dsa"] is not None
    calls.clear()
    audit_synthetic(synthetic_from(train), test, config=tiny_audit(epochs=2, dsa=False), network=TINY_NET)
    assert calls[0]["dsa"] is None


def test_audit_deterministic():
    train = quadrant_data(per_cell=3, seed=0)
    test = quadrant_data(per_cell=4, seed=1)
    config = tiny_audit(num_eval=1, epochs=4, dsa=True)
    a = audit_synthetic(synthetic_from(train), test, config=config, network=TINY_NET)
    b = audit_synthetic(synthetic_from(train), test, config=config, network=TINY_NET)
    assert a.summary == b.summary
    assert np.array_equal(a.reports[0].recall, b.reports[0].recall, equal_nan=True)


def test_shape_mismatch_error():
    train = quadrant_data(per_cell=2, seed=0, size=8)
    test = quadrant_data(per_cell=2, seed=1, size=16)
    with pytest.raises(ValueError, match="the synthetic images have shape") as info:
        audit_synthetic(synthetic_from(train), test, config=tiny_audit(), network=TINY_NET)
    assert "(3, 8, 8)" in str(info.value) and "(3, 16, 16)" in str(info.value)


def test_class_names_mismatch_error():
    train = quadrant_data(per_cell=2, seed=0)
    test = quadrant_data(per_cell=2, seed=1)
    syn = SyntheticSet(images=train.normalized(), labels=train.labels, class_names=("a", "b", "c"),
                       mean=train.mean, std=train.std)
    with pytest.raises(ValueError, match="the synthetic set has classes") as info:
        audit_synthetic(syn, test, config=tiny_audit(), network=TINY_NET)
    assert "c0" in str(info.value)


def test_predict_batches_match_single_pass():
    from fdd.networks import build_convnet

    net = build_convnet(channels=3, num_classes=5, image_size=8, width=8, depth=2, seed=0)
    x = torch.randn(23, 3, 8, 8)
    full = predict(net, x, batch_size=100)
    assert torch.equal(predict(net, x, batch_size=4), full)
    with torch.no_grad():
        assert torch.equal(full, net(x).argmax(dim=1))
    assert not net.training
