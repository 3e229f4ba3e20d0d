"""Tests of fdd.fairness.audit: training fresh networks on a synthetic set and auditing them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fdd.config import AuditConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation.training import train_network
from fdd.fairness import audit as A
from fdd.fairness.audit import AuditResult, audit_synthetic, predict
from fdd.fairness.metrics import FairnessReport

TINY_NET = NetworkConfig(width=8, depth=2)


def quadrant_data(per_cell: int, seed: int, num_classes: int = 3, num_groups: int = 2, size: int = 8) -> GroupedImages:
    """Class c lights up quadrant c; group g adds a tint. Linearly separable by class."""
    gen = torch.Generator().manual_seed(seed)
    images, labels, groups = [], [], []
    h = size // 2
    for c in range(num_classes):
        for g in range(num_groups):
            x = torch.rand(per_cell, 3, size, size, generator=gen) * 0.2
            r, q = divmod(c, 2)
            x[:, :, r * h : (r + 1) * h, q * h : (q + 1) * h] += 0.7
            x[:, g] += 0.1
            images.append(x.clamp(0, 1))
            labels += [c] * per_cell
            groups += [g] * per_cell
    return GroupedImages(
        images=(torch.cat(images) * 255).round().to(torch.uint8),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )


def synthetic_from(data: GroupedImages) -> SyntheticSet:
    return SyntheticSet(
        images=data.normalized(), labels=data.labels, class_names=data.class_names, mean=data.mean, std=data.std
    )


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
    real_build = A.build_architecture

    def spy(*args, **kwargs):
        seeds.append(kwargs["seed"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(A, "build_architecture", spy)
    done = []
    config = tiny_audit(num_eval=3, epochs=3, seed=2, dsa=True)
    assert config.stack_models  # the default path
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


def spy_training(monkeypatch, train):
    calls = []
    real_train, real_stacked = A.train_network, A.train_stacked

    def spy_one(net, images, labels, **kwargs):
        calls.append(("one", kwargs))
        assert images.dtype == torch.float32 and torch.equal(labels, train.labels)
        return real_train(net, images, labels, **kwargs)

    def spy_stacked(nets, images, labels, **kwargs):
        calls.append(("stacked", dict(kwargs, models=len(nets))))
        return real_stacked(nets, images, labels, **kwargs)

    monkeypatch.setattr(A, "train_network", spy_one)
    monkeypatch.setattr(A, "train_stacked", spy_stacked)
    return calls


def check_schedule(kwargs, config):
    assert kwargs["epochs"] == config.epochs + 1 and kwargs["lr_decay_epoch"] == config.epochs // 2 + 1
    assert kwargs["lr"] == config.lr and kwargs["momentum"] == config.momentum
    assert kwargs["weight_decay"] == config.weight_decay and kwargs["batch_size"] == config.batch_size
    assert (kwargs["dsa"] is not None) == config.dsa


def test_evaluation_protocol_arguments(monkeypatch):
    """epochs + 1 epochs, lr x0.1 after epoch epochs // 2 + 1, the config's optimiser, DSA on."""
    train = quadrant_data(per_cell=2, seed=0)
    test = quadrant_data(per_cell=2, seed=1)
    calls = spy_training(monkeypatch, train)
    config = tiny_audit(
        num_eval=2, epochs=5, lr=0.02, momentum=0.8, weight_decay=1e-3, batch_size=8, dsa=True, stack_models=False
    )
    audit_synthetic(synthetic_from(train), test, config=config, network=TINY_NET)
    assert [kind for kind, _ in calls] == ["one", "one"]
    for _, kwargs in calls:
        check_schedule(kwargs, config)
    calls.clear()
    config = tiny_audit(num_eval=3, epochs=4, lr=0.03, batch_size=8, dsa=True, stack_models=True)
    audit_synthetic(synthetic_from(train), test, config=config, network=TINY_NET)
    assert [kind for kind, _ in calls] == ["stacked"] and calls[0][1]["models"] == 3
    check_schedule(calls[0][1], config)
    calls.clear()
    # one evaluation, or batch norm (running statistics cannot be stacked): one network at a time
    audit_synthetic(
        synthetic_from(train), test, config=tiny_audit(epochs=2, dsa=False, stack_models=True), network=TINY_NET
    )
    assert [kind for kind, _ in calls] == ["one"] and calls[0][1]["dsa"] is None
    calls.clear()
    audit_synthetic(
        synthetic_from(train),
        test,
        config=tiny_audit(num_eval=2, epochs=2, stack_models=True),
        network=NetworkConfig(width=8, depth=2, norm="batchnorm"),
    )
    assert [kind for kind, _ in calls] == ["one", "one"]


# --------------------------------------------------------------------------- train_stacked


def fresh_nets(count: int, norm: str = "instancenorm"):
    from fdd.models.networks import build_convnet

    return [
        build_convnet(channels=3, num_classes=3, image_size=8, width=8, depth=2, norm=norm, seed=10 + i)
        for i in range(count)
    ]


@pytest.mark.parametrize("norm", ["instancenorm", "none"])
def test_train_stacked_equals_training_one_by_one(norm):
    """Without shuffling (batch >= N) and without DSA there is no randomness: the stacked
    models must end where M separate runs of train_network end (momentum, weight decay
    and the lr decay included)."""
    data = quadrant_data(per_cell=3, seed=0)
    x, y = data.normalized(), data.labels
    schedule = dict(epochs=4, lr=0.05, momentum=0.9, weight_decay=5e-3, batch_size=64, dsa=None, lr_decay_epoch=1)
    stacked = A.train_stacked(fresh_nets(3, norm), x, y, generator=torch.Generator().manual_seed(0), **schedule)
    single = [
        train_network(net, x, y, generator=torch.Generator().manual_seed(0), **schedule) for net in fresh_nets(3, norm)
    ]
    initial = fresh_nets(3, norm)
    for a, b, init in zip(stacked, single, initial):
        for (name, p), q, p0 in zip(a.named_parameters(), b.parameters(), init.parameters()):
            torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)
            assert not torch.equal(p, p0), name  # really trained


def test_train_stacked_with_shuffling_and_dsa_trains_each_model():
    data = quadrant_data(per_cell=4, seed=0)
    x, y = data.normalized(), data.labels
    from fdd.distillation.augment import DSAConfig

    nets = fresh_nets(2)
    # (conv biases before instance norm get no gradient: compare weights)
    before = [[p.detach().clone() for name, p in n.named_parameters() if name.endswith("weight")] for n in nets]
    with torch.no_grad():
        loss_before = [float(torch.nn.functional.cross_entropy(n(x), y)) for n in nets]
    out = A.train_stacked(
        nets,
        x,
        y,
        epochs=15,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=8,
        dsa=DSAConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    assert out is nets
    with torch.no_grad():
        loss_after = [float(torch.nn.functional.cross_entropy(n(x), y)) for n in nets]
    assert all(a < b for a, b in zip(loss_after, loss_before))
    for n, b in zip(nets, before):
        weights = [p for name, p in n.named_parameters() if name.endswith("weight")]
        assert all(not torch.equal(p, q) for p, q in zip(weights, b))
    # the two models stay different (own init, own batches)
    assert not torch.equal(nets[0].classifier.weight, nets[1].classifier.weight)
    again = fresh_nets(2)
    A.train_stacked(
        again,
        x,
        y,
        epochs=15,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=8,
        dsa=DSAConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.equal(p, q) for p, q in zip(again[1].parameters(), nets[1].parameters()))


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_train_stacked_compiled_trains_like_eager(norm):
    """audit.compile: the compiled forward pass and DSA (and the backward compiled with them)
    give the eager training's weights up to rounding, DSA, batches and lr decay included; with
    batch norm (the loop forward) the running statistics too."""
    from fdd.distillation.augment import DSAConfig

    x, y = torch.randn(9, 3, 8, 8), torch.arange(3).repeat_interleave(3)
    schedule = dict(epochs=4, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=5, dsa=DSAConfig(), lr_decay_epoch=2)

    def trained(compile: bool) -> list[torch.Tensor]:
        nets = A.train_stacked(
            fresh_nets(2, norm),
            x,
            y,
            generator=torch.Generator().manual_seed(0),
            stack_forward="loop",
            compile=compile,
            **schedule,
        )
        return [t.detach().float() for net in nets for t in net.state_dict().values()]

    initial = [t.float() for net in fresh_nets(2, norm) for t in net.state_dict().values()]
    compiled, eager = trained(True), trained(False)
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(p, p0) for p, p0 in zip(compiled, initial))


@pytest.mark.parametrize("draw_slots", [2**20, 150])  # every epoch in one draw; chunks of 2 epochs
def test_train_stacked_dsa_one_family_per_model_and_step(monkeypatch, draw_slots):
    from fdd.distillation.augment import DSAConfig

    data = quadrant_data(per_cell=4, seed=0)  # 24 images, batches of 8
    import fdd.distillation.training as S  # train_stacked draws its chunks with draw_training_plan

    draws, used = [], []
    real_draw, real_apply = S.draw_dsa, A.apply_dsa

    def spy_draw(*args, **kwargs):
        out = real_draw(*args, **kwargs)
        draws.append(
            dataclasses.replace(out, **{f.name: getattr(out, f.name).clone() for f in dataclasses.fields(out)})
        )
        return out

    def spy_apply(x, slots, draw, **kwargs):
        used.append((len(draws) - 1, slots.clone()))
        return real_apply(x, slots, draw, **kwargs)

    monkeypatch.setattr(S, "draw_dsa", spy_draw)
    monkeypatch.setattr(A, "apply_dsa", spy_apply)
    monkeypatch.setattr(A, "STACKED_DRAW_SLOTS", draw_slots)
    A.train_stacked(
        fresh_nets(3),
        data.normalized(),
        data.labels,
        epochs=3,
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=8,
        dsa=DSAConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    per_epoch = 3 * 3 * 8  # batches x models x batch size
    chunks = [3] if draw_slots > 3 * per_epoch else [2, 1]
    assert [d.num_slots for d in draws] == [c * per_epoch for c in chunks]
    assert len(used) == 3 * 3  # epochs x batches
    mixed = 0
    seen: dict[int, set] = {}
    for chunk, slots in used:
        draw = draws[chunk]  # (a copy: later chunks are copied into the first draw's tensors)
        assert int(slots.max()) < draw.num_slots
        family = draw.family[slots].view(3, 8)
        assert bool((family == family[:, :1]).all())  # one family per model in a step
        mixed += int(family[:, 0].unique().numel() > 1)
        assert draw.brightness[slots].unique().numel() == 24  # per-image parameters
        chunk_seen = seen.setdefault(chunk, set())
        assert chunk_seen.isdisjoint(slots.tolist())  # no slot is read twice within a chunk
        chunk_seen.update(slots.tolist())
    assert mixed > 0  # models draw their families independently


def test_train_stacked_graph_switch_is_ignored_on_the_cpu():
    from fdd.distillation.augment import DSAConfig
    from fdd.distillation.cuda_graph import CapturedStep

    data = quadrant_data(per_cell=4, seed=0)
    trained = []
    for graph in (False, True):
        nets = fresh_nets(2)
        A.train_stacked(
            nets,
            data.normalized(),
            data.labels,
            epochs=3,
            lr=0.01,
            momentum=0.9,
            weight_decay=0.0,
            batch_size=8,
            dsa=DSAConfig(),
            generator=torch.Generator().manual_seed(0),
            cuda_graph=graph,
        )
        trained.append([p.detach() for n in nets for p in n.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*trained))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CapturedStep(lambda: None, device=torch.device("cpu"))


def test_train_stacked_loop_trains_batchnorm_networks_like_one_by_one():
    """The loop forward stacks networks with batch norm: without shuffling (batch >= N) and DSA
    the stacked models end where separate train_network runs end, running statistics included."""
    data = quadrant_data(per_cell=3, seed=0)
    x, y = data.normalized(), data.labels
    schedule = dict(epochs=4, lr=0.05, momentum=0.9, weight_decay=5e-3, batch_size=64, dsa=None, lr_decay_epoch=1)
    stacked = A.train_stacked(
        fresh_nets(3, "batchnorm"), x, y, generator=torch.Generator().manual_seed(0), stack_forward="loop", **schedule
    )
    single = [
        train_network(net, x, y, generator=torch.Generator().manual_seed(0), **schedule)
        for net in fresh_nets(3, "batchnorm")
    ]
    initial = fresh_nets(3, "batchnorm")
    for a, b, init in zip(stacked, single, initial):
        for (name, p), q, p0 in zip(a.named_parameters(), b.parameters(), init.parameters()):
            torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)
            assert not torch.equal(p, p0) or "bias" in name, name  # trained (conv biases before batch norm get none)
        buffers = list(a.named_buffers())
        assert any(name.endswith("running_mean") for name, _ in buffers)
        for (name, u), v, v0 in zip(buffers, b.buffers(), init.buffers()):
            torch.testing.assert_close(u, v, atol=2e-5, rtol=1e-4, msg=name)
            assert not torch.equal(u, v0), name  # updated: 4 batches seen, statistics moved
    # the three models stay apart (own init): model 0's running mean is not model 1's
    assert not torch.equal(
        dict(stacked[0].named_buffers())["features.1.running_mean"],
        dict(stacked[1].named_buffers())["features.1.running_mean"],
    )


def test_audit_compile_reaches_the_stacked_training(monkeypatch):
    """audit.compile is handed to train_stacked, which then compiles its forward pass and DSA
    (counted here without compiling: the spy returns the eager callables)."""
    calls, compiled = [], []
    real = A.train_stacked

    def spy(*args, **kwargs):
        calls.append(kwargs.get("compile"))
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "train_stacked", spy)
    monkeypatch.setattr(A, "compile_static", lambda fn: compiled.append(fn) or fn)
    train, test = quadrant_data(per_cell=3, seed=0), quadrant_data(per_cell=3, seed=1)
    for flag in (True, False):
        A.audit_synthetic(
            synthetic_from(train), test, config=tiny_audit(num_eval=2, epochs=2, compile=flag), network=TINY_NET
        )
    assert calls == [True, False]
    assert len(compiled) == 2 and compiled[1] is A.apply_dsa  # the forward pass, then the DSA; none for False


def test_compile_static_raises_dynamos_recompile_limit(monkeypatch):
    from fdd.distillation.compilation import RECOMPILE_LIMIT, compile_static

    config = torch._dynamo.config
    monkeypatch.setattr(config, "recompile_limit", 8)
    compile_static(lambda x: x + 1)
    assert config.recompile_limit == RECOMPILE_LIMIT >= 32  # a sweep's shapes of apply_dsa fit
    monkeypatch.setattr(config, "recompile_limit", 1000)
    compile_static(lambda x: x + 1)
    assert config.recompile_limit == 1000  # never lowered


def test_audit_stacks_batchnorm_networks_only_with_the_loop_forward(monkeypatch):
    calls = []
    real = A.train_stacked

    def spy(*args, **kwargs):
        calls.append(kwargs["stack_forward"])
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "train_stacked", spy)
    train = quadrant_data(per_cell=3, seed=0)
    test = quadrant_data(per_cell=3, seed=1)
    net = TINY_NET.model_copy(update={"norm": "batchnorm"})
    audit_synthetic(synthetic_from(train), test, config=tiny_audit(num_eval=2, epochs=2), network=net)
    assert calls == []  # auto on the CPU: vmap, which cannot stack batch norm; one by one
    result = audit_synthetic(
        synthetic_from(train), test, config=tiny_audit(num_eval=2, epochs=2, stack_forward="loop"), network=net
    )
    assert calls == ["loop"] and len(result.reports) == 2


def test_train_stacked_rejects_batchnorm():
    data = quadrant_data(per_cell=2, seed=0)
    with pytest.raises(ValueError, match="vectorises .* networks without buffers only") as info:
        A.train_stacked(
            fresh_nets(2, "batchnorm"),
            data.normalized(),
            data.labels,
            epochs=1,
            lr=0.1,
            momentum=0.0,
            weight_decay=0.0,
            batch_size=4,
            dsa=None,
            generator=None,
        )
    assert "running_mean" in str(info.value)


def test_stacked_and_sequential_audit_agree_without_randomness():
    train = quadrant_data(per_cell=3, seed=0)
    test = quadrant_data(per_cell=6, seed=1)
    common = dict(num_eval=2, epochs=6, lr=0.05, batch_size=64, dsa=False)
    a = audit_synthetic(synthetic_from(train), test, config=tiny_audit(stack_models=True, **common), network=TINY_NET)
    b = audit_synthetic(synthetic_from(train), test, config=tiny_audit(stack_models=False, **common), network=TINY_NET)
    for ra, rb in zip(a.reports, b.reports):
        assert ra.accuracy == pytest.approx(rb.accuracy, abs=100 / len(test) + 1e-9)


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
    syn = SyntheticSet(
        images=train.normalized(), labels=train.labels, class_names=("a", "b", "c"), mean=train.mean, std=train.std
    )
    with pytest.raises(ValueError, match="the synthetic set has classes") as info:
        audit_synthetic(syn, test, config=tiny_audit(), network=TINY_NET)
    assert "c0" in str(info.value)


def test_predict_batches_match_single_pass():
    from fdd.models.networks import build_convnet

    net = build_convnet(channels=3, num_classes=5, image_size=8, width=8, depth=2, seed=0)
    x = torch.randn(23, 3, 8, 8)
    full = predict(net, x, batch_size=100)
    assert torch.equal(predict(net, x, batch_size=4), full)
    with torch.no_grad():
        assert torch.equal(full, net(x).argmax(dim=1))
    assert not net.training
