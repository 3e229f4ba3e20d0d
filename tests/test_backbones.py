"""Tests of fdd.distillation.backbones: DC, IDC, CAFE and MTT losses, schedules, state, and their pipeline runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fdd.config import ConfigError, GradientMatchingConfig, NetworkConfig, parse_config
from fdd.distillation.backbones import SYNTHESIZERS, build_synthesizer
from fdd.distillation.backbones import dc as DC
from fdd.distillation.backbones import mtt as MTT
from fdd.distillation.backbones.cafe import cafe_loss, layer_features
from fdd.distillation.backbones.dc import class_gradients, layerwise_distance, matched_parameters
from fdd.distillation.backbones.idc import decode, encode
from fdd.distillation.backbones.weights import cell_weights, group_balanced_weights
from fdd.distillation.run import synthesize
from fdd.models.networks import build_convnet
from tests.test_synthesis import TINY_NET, tiny_config, tiny_data

MODES = ("vanilla", "fairdd", "cobra")
FAST = {
    "dc": {"outer_loop": 2, "inner_loop": 1},
    "idc": {"outer_loop": 2, "inner_loop": 1},
    "cafe": {"outer_loop": 2, "inner_loop": 1},
    "mtt": {
        "num_experts": 2,
        "train_epochs": 3,
        "max_start_epoch": 1,
        "expert_epochs": 2,
        "syn_steps": 3,
        "expert_batch": 16,
    },
}


def backbone_config(backbone: str, **kw):
    return tiny_config(backbone=backbone, **{backbone: FAST[backbone]} if backbone in FAST else {}, **kw)


def tiny_net(seed: int = 0, classes: int = 3):
    return build_convnet(channels=3, num_classes=classes, image_size=8, width=4, depth=2, seed=seed).double()


# --------------------------------------------------------------------------- DC distance


def test_layerwise_distance_hand_example_and_identity():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])  # rows: parallel, orthogonal, opposite
    got = layerwise_distance([a], [b], batch_dims=0)
    assert float(got) == pytest.approx(0.0 + 1.0 + 2.0, abs=1e-5)
    conv = torch.randn(4, 3, 3, 3)  # (out, in, k, k): one cosine per output channel
    assert float(layerwise_distance([conv, a], [2.5 * conv, a], batch_dims=0)) == pytest.approx(0.0, abs=1e-5)
    rows = conv.flatten(1)
    other = torch.randn(4, 3, 3, 3)
    expected = (1 - F.cosine_similarity(rows, other.flatten(1), dim=1, eps=0)).sum()
    assert float(layerwise_distance([conv], [other], batch_dims=0)) == pytest.approx(float(expected), rel=1e-4)
    batched = layerwise_distance(
        [torch.stack([conv, other]).unsqueeze(1)], [other.expand(2, 3, 4, 3, 3, 3)], batch_dims=2
    )
    assert batched.shape == (2, 3) and torch.allclose(batched[0], expected.expand(3), rtol=1e-4)
    assert torch.allclose(batched[1], torch.zeros(3), atol=1e-5)
    with pytest.raises(ValueError, match="same layers"):
        layerwise_distance([a], [a, a], batch_dims=0)


def test_matched_parameters_skip_bias_and_norm():
    net = build_convnet(channels=3, num_classes=3, image_size=8, width=4, depth=2)
    assert matched_parameters(net) == ["features.0.weight", "features.4.weight", "classifier.weight"]


def test_loops_by_ipc():
    cfg = GradientMatchingConfig()
    assert [cfg.resolved_loops(i) for i in (1, 10, 50, 100)] == [(1, 1), (10, 50), (50, 10), (100, 10)]
    assert GradientMatchingConfig(outer_loop=3, inner_loop=0).resolved_loops(10) == (3, 0)


# --------------------------------------------------------------------------- weights


def test_cell_weights_per_mode():
    groups = torch.tensor([[0, 0, 0, 1, 1, 0], [2, 2, 2, 2, 0, 0]])
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # class 1 padded: 4 real images, all group 2
    w, present = cell_weights(groups, valid, num_groups=3, mode="vanilla")
    assert w.shape == (2, 1, 6) and torch.allclose(w.sum(-1), torch.ones(2, 1)) and float(w[1, 0, 4:].sum()) == 0
    w, present = cell_weights(groups, valid, num_groups=3, mode="cobra")
    per_group = [float(w[0, 0][groups[0] == g].sum()) for g in (0, 1)]
    assert per_group == pytest.approx([0.5, 0.5])  # 4 vs 2 images: equal total weight
    assert float(w[1, 0, :4].sum()) == pytest.approx(1.0) and float(w[1, 0, 4:].sum()) == 0
    w, present = cell_weights(groups, valid, num_groups=3, mode="fairdd")
    assert w.shape == (2, 3, 6)
    assert present.tolist() == [[True, True, False], [False, False, True]]
    assert torch.allclose(w.sum(-1), present.float())
    assert torch.allclose(w[0, 1], torch.tensor([0, 0, 0, 0.5, 0.5, 0]))
    with pytest.raises(ValueError, match="mode must be one of"):
        cell_weights(groups, valid, num_groups=3, mode="dm")


def test_group_balanced_weights_make_groups_equal_within_each_class():
    labels = torch.tensor([0] * 9 + [1] * 5)
    groups = torch.tensor([0] * 6 + [1] * 2 + [2] + [1] * 4 + [0])
    w = group_balanced_weights(labels, groups, num_classes=2, num_groups=3)
    assert float(w.mean()) == pytest.approx(1.0)
    for c, n_c, present in ((0, 9, (0, 1, 2)), (1, 5, (0, 1))):
        totals = [float(w[(labels == c) & (groups == g)].sum()) for g in present]
        assert totals == pytest.approx([n_c / len(present)] * len(present))  # uniform over groups
        assert float(w[labels == c].sum()) == pytest.approx(n_c)  # class keeps its share


# --------------------------------------------------------------------------- batched gradients


def _naive_grads(net, names, x, y, create_graph=False):
    loss = F.cross_entropy(net(x), y)
    params = dict(net.named_parameters())
    return list(torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph))


def _problem(seed=0, classes=3, batch=6, groups=2):
    gen = torch.Generator().manual_seed(seed)
    net = tiny_net(seed, classes)
    real = torch.randn(classes, batch, 3, 8, 8, generator=gen, dtype=torch.float64)
    labels = torch.arange(classes).unsqueeze(1).expand(classes, batch)
    group = torch.randint(groups, (classes, batch), generator=gen)
    group[:, 0], group[:, 1] = 0, 1
    return net, real, labels, group


@pytest.mark.parametrize("mode", MODES)
def test_class_gradients_match_per_class_per_group_autograd(mode):
    net, real, labels, group = _problem()
    names = matched_parameters(net)
    params = {n: p.detach() for n, p in net.named_parameters()}
    valid = torch.ones_like(group, dtype=torch.bool)
    weights, _ = cell_weights(group, valid, num_groups=2, mode=mode)
    got = class_gradients(net, params, names, real, labels, weights.double())
    for c in range(3):
        per_group = [_naive_grads(net, names, real[c][group[c] == g], labels[c][group[c] == g]) for g in (0, 1)]
        if mode == "vanilla":
            expected = [_naive_grads(net, names, real[c], labels[c])]
        elif mode == "cobra":  # the layer-wise mean over groups of the per-group gradients
            expected = [[(a + b) / 2 for a, b in zip(*per_group)]]
        else:
            expected = per_group
        for k, exp in enumerate(expected):
            for layer, e in zip(got, exp):
                assert torch.allclose(layer[c, k], e, atol=1e-10), (mode, c, k)


def test_dc_loss_and_its_pixel_gradient_equal_the_reference_loops():
    """fairdd: sum over groups of the distance to each group's gradient; the pixel gradient goes
    through the synthetic gradient (double backward) exactly as with per-class autograd."""
    net, real, labels, group = _problem(seed=1)
    names = matched_parameters(net)
    params = {n: p.detach() for n, p in net.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    syn = torch.randn(3, 2, 3, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    syn_labels = torch.arange(3).unsqueeze(1).expand(3, 2)
    weights, present = cell_weights(group, torch.ones_like(group, dtype=torch.bool), num_groups=2, mode="fairdd")
    target = class_gradients(net, params, names, real, labels, weights.double())
    syn_grads = class_gradients(net, params, names, syn, syn_labels, torch.full((3, 1, 2), 0.5, dtype=torch.float64))
    loss = (layerwise_distance(syn_grads, target, batch_dims=2) * present).sum()
    (pixel_grad,) = torch.autograd.grad(loss, syn)

    syn2 = syn.detach().clone().requires_grad_(True)
    naive = torch.zeros((), dtype=torch.float64)
    for c in range(3):
        gs = _naive_grads(net, names, syn2[c], syn_labels[c], create_graph=True)
        for g in (0, 1):
            gr = _naive_grads(net, names, real[c][group[c] == g], labels[c][group[c] == g])
            for a, b in zip(gs, gr):
                a2, b2 = a.flatten(1), b.flatten(1)
                naive = naive + (1 - (a2 * b2).sum(1) / (a2.norm(dim=1) * b2.norm(dim=1) + 1e-6)).sum()
    (naive_grad,) = torch.autograd.grad(naive, syn2)
    assert float(loss.detach()) == pytest.approx(float(naive.detach()), rel=1e-9)
    assert torch.allclose(pixel_grad, naive_grad, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------- DC schedule


def test_dc_schedule_outer_steps_and_inner_training(monkeypatch):
    data = tiny_data()
    epochs: list[int] = []
    real_train = DC.train_network
    monkeypatch.setattr(DC, "train_network", lambda *a, **k: epochs.append(k["epochs"]) or real_train(*a, **k))
    cfg = tiny_config(backbone="dc", iterations=2, dc={"outer_loop": 3, "inner_loop": 2})
    loop = build_synthesizer(data, mode="cobra", config=cfg, network=TINY_NET, seed=0)
    steps = []
    original = loop.optimizer.step
    loop.optimizer.step = lambda *a, **k: steps.append(1) or original(*a, **k)
    for _ in range(2):
        loop.step()
    assert len(steps) == 2 * 3  # outer_loop pixel updates per iteration
    assert epochs == [2, 2] * 2  # inner training between outer loops, not after the last one


def test_gradient_backbones_refuse_batchnorm():
    with pytest.raises(ValueError, match="network.norm must be 'instancenorm' or 'none'"):
        build_synthesizer(
            tiny_data(),
            mode="vanilla",
            config=backbone_config("dc"),
            network=NetworkConfig(width=8, depth=2, norm="batchnorm"),
            seed=0,
        )


# --------------------------------------------------------------------------- IDC


def test_idc_decode_shapes_and_encode_round_trip_of_constant_tiles():
    stored = torch.randn(5, 3, 8, 8)
    assert decode(stored, factor=2).shape == (20, 3, 8, 8)
    assert torch.equal(decode(stored, factor=1), stored)
    values = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 8, 8)  # 8 constant images -> 2 stored
    packed = encode(values.contiguous(), factor=2)
    assert packed.shape == (2, 3, 8, 8)
    assert torch.allclose(packed[0, :, :4, 4:], torch.ones(3, 4, 4))  # tile (0, 1) holds image 1
    assert torch.allclose(decode(packed, factor=2), values)  # bilinear upsampling of constants is exact
    with pytest.raises(ValueError, match="must divide the image size"):
        decode(torch.randn(1, 3, 9, 9), factor=2)


def test_idc_synthetic_set_is_decoded_and_initialised_from_real_tiles():
    data = tiny_data()
    result = synthesize(data, mode="vanilla", config=backbone_config("idc", iterations=0), network=TINY_NET, seed=0)
    syn = result.synthetic
    assert syn.images.shape == (2 * 3 * 4, 3, 8, 8) and syn.images_per_class == 8
    assert torch.equal(syn.labels, torch.arange(3).repeat_interleave(8)) and syn.provenance["idc_factor"] == 2
    # every decoded tile is a 2x-downsampled real image of its class, upsampled back
    real = decode(F.avg_pool2d(data.normalized(), 2).repeat(1, 1, 2, 2), factor=2)[::4]  # one decoded per image
    for image, label in zip(syn.images, syn.labels):
        match = (real - image).flatten(1).abs().max(dim=1).values < 1e-5
        assert bool(match.any()) and bool((data.labels[match] == label).all())


# --------------------------------------------------------------------------- CAFE


def test_layer_features_are_block_outputs_spatially_averaged():
    net = build_convnet(channels=3, num_classes=3, image_size=8, width=4, depth=2, seed=0)
    x = torch.randn(5, 3, 8, 8)
    feats = layer_features(net, x)
    assert feats.shape == (5, 2, 4)
    assert torch.allclose(feats[:, 0], net.features[:4](x).mean(dim=(2, 3)))
    assert torch.allclose(feats[:, 1], net.features(x).mean(dim=(2, 3)))


def test_cafe_loss_per_mode_against_loops():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(30, 2, 4, generator=gen, dtype=torch.float64)
    labels = torch.arange(30) % 2
    groups = torch.tensor([0] * 20 + [1] * 10)
    syn = torch.randn(4, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    syn_labels = torch.tensor([0, 0, 1, 1])
    losses = {m: cafe_loss(real, labels, groups, syn, syn_labels, num_classes=2, num_groups=2, mode=m) for m in MODES}
    expected = {m: 0.0 for m in MODES}
    for c in range(2):
        s = syn.detach()[syn_labels == c].mean(0)
        means = [real[(labels == c) & (groups == g)].mean(0) for g in (0, 1)]
        expected["vanilla"] += float(((real[labels == c].mean(0) - s) ** 2).sum())
        expected["fairdd"] += sum(float(((m - s) ** 2).sum()) for m in means)
        expected["cobra"] += float((((means[0] + means[1]) / 2 - s) ** 2).sum())
    for m in MODES:
        assert float(losses[m]) == pytest.approx(expected[m], rel=1e-9), m
    # sum_g ||m_g - s||^2 = G ||b - s||^2 + const: fairdd's gradient is G times cobra's
    (g_fair,) = torch.autograd.grad(losses["fairdd"], syn)
    (g_cobra,) = torch.autograd.grad(losses["cobra"], syn)
    assert torch.allclose(g_fair, 2 * g_cobra)


# --------------------------------------------------------------------------- MTT


def _hand_trajectories(loop, experts=2, epochs=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = MTT.flat_parameters(loop.net).numel()
    return torch.randn(experts, epochs + 1, p, generator=gen) * 0.1


def test_mtt_one_step_trajectory_loss(monkeypatch):
    data = tiny_data()
    cfg = tiny_config(
        backbone="mtt",
        iterations=1,
        dsa=False,
        mtt={
            "num_experts": 2,
            "train_epochs": 3,
            "max_start_epoch": 1,
            "expert_epochs": 2,
            "syn_steps": 1,
            "syn_lr_init": 0.05,
        },
    )
    monkeypatch.setattr(MTT, "train_experts", lambda train, **k: torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="expert trajectories must have shape"):
        build_synthesizer(data, mode="vanilla", config=cfg, network=TINY_NET, seed=0)
    holder = {}

    def fake(train, **kwargs):
        net = build_convnet(channels=3, num_classes=3, image_size=8, width=8, depth=2)
        holder["t"] = torch.randn(2, 4, MTT.flat_parameters(net).numel(), generator=torch.Generator().manual_seed(0))
        return holder["t"]

    monkeypatch.setattr(MTT, "train_experts", fake)
    loop = build_synthesizer(data, mode="vanilla", config=cfg, network=TINY_NET, seed=0)
    images = loop.syn_images.detach().clone()
    gen = torch.Generator().manual_seed(0)
    gen.set_state(loop.generator.get_state())
    expert = int(torch.randint(2, (1,), generator=gen))
    start_epoch = int(torch.randint(1, (1,), generator=gen))
    order = torch.randperm(6, generator=gen)
    start, target = holder["t"][expert, start_epoch], holder["t"][expert, start_epoch + 2]
    theta = start.clone().requires_grad_(True)
    ce = F.cross_entropy(
        torch.func.functional_call(loop.net, MTT.unflatten(loop.net, theta), (images[order],)), loop.syn_labels[order]
    )
    (grad,) = torch.autograd.grad(ce, theta)
    expected = ((start - 0.05 * grad - target) ** 2).sum() / ((start - target) ** 2).sum()
    assert float(loop.step()) == pytest.approx(float(expected), rel=1e-5)
    assert float(loop.syn_lr) != 0.05  # the learning rate is learned


def test_mtt_expert_objectives_and_cache(tmp_path, monkeypatch):
    data = tiny_data()
    assert MTT.OBJECTIVE_OF_MODE == {"vanilla": "plain", "cobra": "balanced_weights", "fairdd": "balanced_sampling"}
    settings = parse_config({"synthesis": {"mtt": FAST["mtt"]}}).synthesis.mtt
    runs = {
        o: MTT.train_experts(data, objective=o, settings=settings, network=TINY_NET, dsa=None, seed=0)
        for o in MTT.EXPERT_OBJECTIVES
    }
    assert runs["plain"].shape == (
        2,
        4,
        MTT.flat_parameters(build_convnet(channels=3, num_classes=3, image_size=8, width=8, depth=2)).numel(),
    )
    assert torch.equal(runs["plain"][:, 0], runs["balanced_weights"][:, 0])  # same initialisations
    assert not torch.allclose(runs["plain"][:, -1], runs["balanced_weights"][:, -1])  # different objectives
    assert not torch.allclose(runs["balanced_weights"][:, -1], runs["balanced_sampling"][:, -1])
    with pytest.raises(ValueError, match="objective must be one of"):
        MTT.train_experts(data, objective="fair", settings=settings, network=TINY_NET, dsa=None, seed=0)
    calls = []
    real = MTT.train_experts
    monkeypatch.setattr(MTT, "train_experts", lambda *a, **k: calls.append(k["objective"]) or real(*a, **k))
    cfg = backbone_config("mtt", iterations=1)
    first = synthesize(data, mode="cobra", config=cfg, network=TINY_NET, seed=0, cache_dir=tmp_path)
    assert calls == ["balanced_weights"] and len(list(tmp_path.glob("experts-balanced_weights-*.pt"))) == 1
    again = synthesize(data, mode="cobra", config=cfg, network=TINY_NET, seed=0, cache_dir=tmp_path)
    assert calls == ["balanced_weights"]  # loaded from the cache, same result
    assert torch.equal(first.synthetic.images, again.synthetic.images)
    synthesize(data, mode="vanilla", config=cfg, network=TINY_NET, seed=0, cache_dir=tmp_path)
    assert calls == ["balanced_weights", "plain"]


# --------------------------------------------------------------------------- every backbone x mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backbone", ["dc", "idc", "cafe", "mtt"])
def test_backbone_end_to_end_deterministic_and_resumable(backbone, mode):
    data = tiny_data()
    cfg = backbone_config(backbone, iterations=3)
    result = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=0)
    assert len(result.losses) == 3 and all(math.isfinite(v) and v >= 0 for v in result.losses)
    syn = result.synthetic
    assert (
        torch.isfinite(syn.images).all() and syn.provenance["backbone"] == backbone and syn.provenance["mode"] == mode
    )
    init = synthesize(data, mode=mode, config=backbone_config(backbone, iterations=0), network=TINY_NET, seed=0)
    assert float((syn.images - init.synthetic.images).abs().max()) > 1e-6  # the pixels were optimised
    # two steps, a state round trip into a new object, one more step == three steps
    loop = build_synthesizer(data, mode=mode, config=cfg, network=TINY_NET, seed=0)
    losses = [float(loop.step()) for _ in range(2)]
    state = loop.state_dict()
    resumed = build_synthesizer(data, mode=mode, config=cfg, network=TINY_NET, seed=0)
    resumed.load_state_dict(state)
    losses.append(float(resumed.step()))
    assert losses == pytest.approx(result.losses, rel=1e-6)
    assert torch.allclose(resumed.synthetic_set().images, syn.images, atol=1e-6)


def test_backbone_modes_differ():
    data = tiny_data()
    for backbone in ("dc", "cafe"):
        out = {
            m: synthesize(
                data, mode=m, config=backbone_config(backbone, iterations=1), network=TINY_NET, seed=0
            ).synthetic.images
            for m in MODES
        }
        assert not torch.equal(out["vanilla"], out["fairdd"]) and not torch.equal(out["vanilla"], out["cobra"])


def test_config_errors_for_backbones():
    assert set(SYNTHESIZERS) == {"dm", "dc", "idc", "cafe", "mtt"}
    with pytest.raises(ConfigError, match="synthesis.backbone"):
        parse_config({"synthesis": {"backbone": "kip"}})
    with pytest.raises(ConfigError, match=r"max_start_epoch \(5\) \+ expert_epochs \(2\) must not exceed"):
        parse_config({"synthesis": {"mtt": {"max_start_epoch": 5}}})
    with pytest.raises(ConfigError, match="synthesis.dc.outer"):
        parse_config({"synthesis": {"dc": {"outer": 3}}})
    for init in ("stratified", "barycenter"):
        with pytest.raises(ConfigError, match=f"supports synthesis.init 'real' or 'noise' .*got '{init}'"):
            parse_config({"synthesis": {"backbone": "idc", "init": init}})
    assert parse_config({"synthesis": {"backbone": "idc", "init": "noise"}}).synthesis.init == "noise"
    for backbone in ("cafe", "idc"):
        with pytest.raises(ValueError, match="network.architecture must be 'convnet', got 'mlp'"):
            build_synthesizer(
                tiny_data(),
                mode="vanilla",
                config=backbone_config(backbone),
                network=NetworkConfig(architecture="mlp", width=8, depth=1, norm="none"),
                seed=0,
            )
    with pytest.raises(ValueError, match="idc.factor=3 must divide the image size 8x8"):
        build_synthesizer(
            tiny_data(), mode="vanilla", config=tiny_config(backbone="idc", idc={"factor": 3}), network=TINY_NET, seed=0
        )


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["dc", "idc", "cafe", "mtt"])
def test_backbone_through_the_pipeline_stages(tiny_workspace, backbone):
    """ingest -> synthesize[mode] -> audit[mode] with every mode, as the CLI / DVC stages run them."""
    from flows.pipeline import load_config, run_single_stage

    overrides = {"synthesis": {"backbone": backbone, "modes": list(MODES), "iterations": 2, backbone: FAST[backbone]}}
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    ws = str(tiny_workspace)
    run_single_stage("ingest", config, ws)
    for mode in MODES:
        outputs = run_single_stage("synthesize", config, ws, mode)
        assert f"data/synthetic/{mode}/synthetic.pt" in outputs
        saved = torch.load(tiny_workspace / f"data/synthetic/{mode}/synthetic.pt", weights_only=True)
        assert saved["provenance"]["backbone"] == backbone and saved["provenance"]["mode"] == mode
        run_single_stage("audit", config, ws, mode)
        metrics = json.loads((tiny_workspace / f"data/audit/{mode}/metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 100.0 and 0.0 <= metrics["deo_m"] <= 100.0
    if backbone == "mtt":  # the expert trajectories are kept in the workspace cache, outside the DVC output
        assert list((tiny_workspace / "data/cache/experts").glob("experts-balanced_weights-*.pt"))
        assert not list((tiny_workspace / "data/synthetic/cobra").glob("experts-*.pt"))  # not in the DVC output


def test_backbone_presets_validate_and_match_the_recommended_settings():
    from pathlib import Path

    from fdd.distillation.backbones import RECOMMENDED
    from flows.pipeline import load_config

    root = Path(__file__).resolve().parent.parent
    for backbone in ("dc", "idc", "cafe", "mtt"):
        cfg = load_config(root / "params.yaml", preset=root / f"flows/presets/{backbone}.yaml").synthesis
        assert cfg.backbone == backbone and cfg.modes == ("vanilla", "fairdd", "cobra")
        for key, value in RECOMMENDED[backbone].items():
            if key != "batch_real" or backbone != "mtt":  # MTT draws no real batches
                assert getattr(cfg, key) == value, (backbone, key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backbone", ["dc", "idc", "cafe"])
def test_captured_inner_loop_matches_eager_on_cuda(backbone):
    data = tiny_data()
    runs = {}
    for graph in (False, True):
        cfg = backbone_config(backbone, iterations=2, cuda_graph=graph)
        loop = build_synthesizer(data, mode="cobra", config=cfg, network=TINY_NET, seed=0, device="cuda")
        assert (loop.captured_inner is not None) == graph
        runs[graph] = ([float(loop.step()) for _ in range(2)], loop.syn_images.detach().cpu())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    assert torch.allclose(runs[True][1], runs[False][1], atol=1e-4)


@pytest.mark.parametrize("objective", ["plain", "balanced_weights"])
def test_mtt_expert_step_minimises_the_group_balanced_risk(objective):
    """One full-batch epoch: theta_1 = theta_0 - lr * grad of mean(w_i * l_i), w = n_c / (G_c n_cg) for cobra."""
    data = tiny_data(per_cell=(7, 2))  # imbalanced groups: balancing changes the step
    settings = parse_config(
        {
            "synthesis": {
                "mtt": {
                    "num_experts": 1,
                    "train_epochs": 3,
                    "max_start_epoch": 1,
                    "expert_epochs": 2,
                    "expert_batch": 1000,
                    "lr_teacher": 0.1,
                }
            }
        }
    ).synthesis.mtt
    traj = MTT.train_experts(data, objective=objective, settings=settings, network=TINY_NET, dsa=None, seed=0)
    net = build_convnet(channels=3, num_classes=3, image_size=8, width=8, depth=2)
    theta = traj[0, 0].clone().requires_grad_(True)
    losses = F.cross_entropy(
        torch.func.functional_call(net, MTT.unflatten(net, theta), (data.normalized(),)), data.labels, reduction="none"
    )
    weights = group_balanced_weights(data.labels, data.groups, num_classes=3, num_groups=2)
    loss = (losses * weights).mean() if objective == "balanced_weights" else losses.mean()
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.allclose(traj[0, 1], traj[0, 0] - 0.1 * grad, atol=1e-6)


def test_unknown_groups_count_for_vanilla_and_are_left_out_of_group_targets():
    groups = torch.tensor([[0, 0, -1, 1]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    w, _ = cell_weights(groups, valid, num_groups=2, mode="vanilla")
    assert torch.allclose(w[0, 0], torch.full((4,), 0.25))
    w, _ = cell_weights(groups, valid, num_groups=2, mode="cobra")
    assert torch.allclose(w[0, 0], torch.tensor([0.25, 0.25, 0.0, 0.5]))
    w, present = cell_weights(groups, valid, num_groups=2, mode="fairdd")
    assert torch.allclose(w[0], torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0, 1.0]])) and present.all()
    bw = group_balanced_weights(torch.tensor([0, 0, 0, 0]), groups[0], num_classes=1, num_groups=2)
    assert torch.allclose(bw, torch.tensor([0.75, 0.75, 0.0, 1.5]))  # 3 labelled: 1.5 per group
    real = torch.randn(4, 2, 3, dtype=torch.float64)
    syn = torch.zeros(1, 2, 3, dtype=torch.float64)
    got = cafe_loss(
        real,
        torch.zeros(4, dtype=torch.long),
        groups[0],
        syn,
        torch.tensor([0]),
        num_classes=1,
        num_groups=2,
        mode="cobra",
    )
    target = (real[:2].mean(0) + real[3]) / 2
    assert float(got) == pytest.approx(float((target**2).sum()))


def test_cafe_fairdd_is_cobra_times_the_groups_present():
    """Squared distance: sum_g ||m_g - s||^2 = |P_c| ||b - s||^2 + const, so FairDD's
    gradient is |P_c| times COBRA's, class by class (docs/backbones.md)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = torch.tensor([0, 1, 2, 2, 0, 0, 1, 1, 1])  # class 0: 3 groups present, class 1: 2
    real = torch.randn(9, 2, 4, generator=g)
    syn = torch.randn(4, 2, 4, generator=g, requires_grad=True)
    syn_labels = torch.tensor([0, 0, 1, 1])
    grads = {}
    for mode in ("fairdd", "cobra"):
        loss = cafe_loss(real, labels, groups, syn, syn_labels, num_classes=2, num_groups=3, mode=mode)
        (grads[mode],) = torch.autograd.grad(loss, syn)
    present = torch.tensor([3.0, 3.0, 2.0, 2.0]).view(4, 1, 1)
    torch.testing.assert_close(grads["fairdd"], present * grads["cobra"])
