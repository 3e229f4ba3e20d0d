"""The fairness-accuracy frontier of cobra's target: group weights from proportional (vanilla) to uniform (cobra)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from fdd.config import ConfigError, parse_config
from fdd.distillation.dm import class_means, dm_loss, mean_matching_loss
from fdd.transport.barycenter import barycenter_weights, cell_statistics, frontier_weights, mean_barycenter


def _batch(seed: int = 0, classes: int = 3, groups: int = 3, n: int = 90):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    groups_ = torch.where(
        torch.rand(n, generator=gen) < 0.7, 0, torch.randint(1, groups, (n,), generator=gen)
    )  # imbalanced
    features = torch.randn(n, 5, generator=gen) + groups_.unsqueeze(1).float() * 2.0
    syn = torch.randn(classes * 2, 5, generator=gen, requires_grad=True)
    syn_labels = torch.arange(classes).repeat_interleave(2)
    return features, labels, groups_, syn, syn_labels


def test_frontier_weights_run_from_proportional_to_uniform():
    counts = torch.tensor([[8.0, 2.0, 0.0], [1.0, 1.0, 2.0]])
    assert torch.allclose(frontier_weights(counts, lam=0.0), barycenter_weights(counts, weights="proportional"))
    assert torch.equal(frontier_weights(counts, lam=1.0), barycenter_weights(counts, weights="uniform"))
    half = frontier_weights(counts, lam=0.5)
    assert torch.allclose(half[0], torch.tensor([0.5 * 0.8 + 0.25, 0.5 * 0.2 + 0.25, 0.0]))
    assert torch.allclose(half.sum(dim=1), torch.ones(2))
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="lam must be a number in \\[0, 1\\]"):
            frontier_weights(counts, lam=bad)


def test_target_is_vanillas_at_zero_and_cobras_at_one():
    features, labels, groups, _, _ = _batch()
    stats = cell_statistics(features, labels, groups, num_classes=3, num_groups=3)
    pooled = class_means(features, labels, num_classes=3)  # vanilla's target
    uniform = mean_barycenter(stats.means, stats.counts, weights="uniform")  # cobra's target
    assert torch.allclose(mean_barycenter(stats.means, stats.counts, lam=0.0), pooled, atol=1e-5)
    assert torch.allclose(mean_barycenter(stats.means, stats.counts, lam=1.0), uniform)
    assert torch.allclose(
        mean_barycenter(stats.means, stats.counts, lam=0.25), 0.75 * pooled + 0.25 * uniform, atol=1e-5
    )
    assert not torch.allclose(pooled, uniform, atol=1e-2)  # the groups are imbalanced: the two targets differ


def test_cobra_loss_follows_lambda_and_reproduces_vanillas_loss_at_zero():
    features, labels, groups, syn, syn_labels = _batch(1)
    common = dict(num_classes=3, num_groups=3)
    vanilla = mean_matching_loss(
        features, labels, groups, syn, syn_labels, mode="vanilla", barycenter_distance="squared", **common
    )
    at_zero = mean_matching_loss(
        features,
        labels,
        groups,
        syn,
        syn_labels,
        mode="cobra",
        barycenter_distance="squared",
        barycenter_lambda=0.0,
        **common,
    )
    assert at_zero.item() == pytest.approx(vanilla.item(), rel=1e-5)  # same target, same (squared) distance
    cobra = dm_loss(features, labels, groups, syn, syn_labels, mode="cobra", **common)
    assert (
        dm_loss(features, labels, groups, syn, syn_labels, mode="cobra", barycenter_lambda=1.0, **common).item()
        == cobra.item()
    )
    middle = dm_loss(features, labels, groups, syn, syn_labels, mode="cobra", barycenter_lambda=0.5, **common)
    assert middle.item() != pytest.approx(cobra.item())


def test_barycenter_lambda_setting_is_checked():
    assert parse_config({}).synthesis.barycenter_lambda == 1.0
    assert parse_config({"synthesis": {"barycenter_lambda": 0.3}}).synthesis.barycenter_lambda == 0.3
    with pytest.raises(ConfigError, match="barycenter_lambda"):
        parse_config({"synthesis": {"barycenter_lambda": 1.2}})
    with pytest.raises(ConfigError, match="applies to synthesis.backbone 'dm' in mode 'cobra' only"):
        parse_config({"synthesis": {"barycenter_lambda": 0.5, "modes": ["vanilla", "fairdd"]}})
    with pytest.raises(ConfigError, match="got backbone 'dc'"):
        parse_config({"synthesis": {"barycenter_lambda": 0.5, "backbone": "dc", "modes": ["cobra"]}})


def test_new_settings_at_their_defaults_keep_the_sweep_records_fingerprint():
    from flows.configuration import FlowConfig
    from flows.configuration import parse_params as parse_flow_config
    from flows.sweep import NOT_IN_FINGERPRINT, cell_fingerprint

    config = parse_flow_config({})
    assert isinstance(config, FlowConfig)
    raw = config.model_dump(mode="json")
    kept = {s: raw[s] for s in ("runtime", "data", "network", "synthesis", "audit")}
    for section, keys in NOT_IN_FINGERPRINT.items():
        for key in keys:
            kept[section].pop(key, None)
    del kept["audit"]["architectures"], kept["synthesis"]["barycenter_lambda"]  # what an fdd without them hashed
    del kept["audit"]["full_data_epochs"], kept["audit"]["gdro_step_size"], kept["synthesis"]["cui_bandwidth"]
    del kept["audit"]["precision"]
    for key in ("augmentation", "dsa_strategy", "dc_strategy", "learned_lr"):  # the audit protocol settings too
        del kept["audit"][key]
    assert cell_fingerprint(config) == hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    other = parse_flow_config({"audit": {"architectures": ["matching", "alexnet"]}})
    lam = parse_flow_config({"synthesis": {"barycenter_lambda": 0.5}})
    assert len({cell_fingerprint(config), cell_fingerprint(other), cell_fingerprint(lam)}) == 3


def test_synthesis_passes_the_setting_to_the_matching_loss(tmp_path, monkeypatch):
    import fdd
    from fdd.distillation import synthesis as S
    from tests.conftest import TINY_PARAMS, write_tiny_idx

    write_tiny_idx(tmp_path / "tiny_idx")
    params = {**TINY_PARAMS, "synthesis": {**TINY_PARAMS["synthesis"], "iterations": 2, "barycenter_lambda": 0.0}}
    config = fdd.parse_config(params)
    data = fdd.prepare_dataset(config.data, workspace=tmp_path)
    seen = []
    real = S.dm_loss
    monkeypatch.setattr(S, "dm_loss", lambda *a, **k: seen.append(k["barycenter_lambda"]) or real(*a, **k))
    at_zero = fdd.synthesize(data.train, mode="cobra", config=config.synthesis, network=config.network, seed=0)
    assert seen == [0.0, 0.0]
    at_one = fdd.synthesize(
        data.train,
        mode="cobra",
        config=config.synthesis.model_copy(update={"barycenter_lambda": 1.0}),
        network=config.network,
        seed=0,
    )
    assert seen[2:] == [1.0, 1.0]
    assert not torch.equal(at_zero.synthetic.images, at_one.synthetic.images)
