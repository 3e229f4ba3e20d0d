"""The reference's evaluation protocol per backbone (docs/evaluation.md): augmentation, DSA strategy, MTT's lr."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fdd.config import (
    DEFAULT_DSA_STRATEGY,
    REFERENCE_AUGMENTATION,
    AuditConfig,
    ConfigError,
    NetworkConfig,
    parse_config,
)
from fdd.distillation.augment import DCAugmentConfig, DSAConfig, dc_augment
from fdd.fairness.audit import audit_synthetic, evaluation_protocol, reference_dc_strategy
from tests.test_audit import TINY_NET, quadrant_data, spy_training, synthetic_from, tiny_audit


def with_backbone(synthetic, backbone, **extra):
    return dataclasses.replace(synthetic, provenance={"backbone": backbone, **extra})


def test_auto_follows_the_reference_per_backbone():
    audit = AuditConfig()
    assert audit.augmentation == "auto" and audit.dsa_strategy == DEFAULT_DSA_STRATEGY
    expected = {"dm": "dsa", "mtt": "dsa", "dc": "dc", "cafe": "dc", "idc": "none", None: "dsa", "other": "dsa"}
    assert {b: audit.resolved_augmentation(b) for b in expected} == expected
    assert set(REFERENCE_AUGMENTATION) == {"dm", "dc", "idc", "cafe", "mtt"}  # every backbone has its entry
    for explicit in ("dsa", "dc", "none"):
        chosen = AuditConfig(augmentation=explicit)
        assert {chosen.resolved_augmentation(b) for b in expected} == {explicit}
    assert {AuditConfig(dsa=False).resolved_augmentation(b) for b in expected} == {"none"}


def test_bad_audit_augmentation_settings_are_refused():
    with pytest.raises(ConfigError, match="audit.augmentation"):
        parse_config({"audit": {"augmentation": "dsa-ish"}})
    with pytest.raises(ConfigError, match="audit.dsa_strategy 'color_blur' names unknown families \\['blur'\\]"):
        parse_config({"audit": {"dsa_strategy": "color_blur"}})
    with pytest.raises(ConfigError, match="audit.dc_strategy 'crop_flip' names unknown families \\['flip'\\]"):
        parse_config({"audit": {"dc_strategy": "crop_flip"}})
    with pytest.raises(ConfigError, match="audit.augmentation='dc' needs audit.dsa: true"):
        parse_config({"audit": {"augmentation": "dc", "dsa": False}})
    assert (
        parse_config({"audit": {"dsa_strategy": "crop_flip", "dc_strategy": "none"}}).audit.dsa_strategy == "crop_flip"
    )


def test_reference_dc_strategy_is_crop_noise_only_for_a_batchnorm_convnet():
    assert reference_dc_strategy("matching", TINY_NET) == "none"
    assert reference_dc_strategy("matching", NetworkConfig(norm="batchnorm")) == "crop_noise"
    assert reference_dc_strategy("convnet-bn", TINY_NET) == "crop_noise"
    assert reference_dc_strategy("convnet-w64", NetworkConfig(norm="batchnorm")) == "none"  # its own norm: instance
    assert reference_dc_strategy("alexnet-bn", TINY_NET) == "none"  # get_daparam names ConvNetBN only


def test_protocol_of_each_kind_of_set():
    synthetic = synthetic_from(quadrant_data(per_cell=1, seed=0))
    audit = AuditConfig(lr=0.02)
    dm = evaluation_protocol(with_backbone(synthetic, "dm"), config=audit, network=TINY_NET)
    assert (dm.augmentation, dm.strategy, dm.lr, dm.lr_source) == ("dsa", DEFAULT_DSA_STRATEGY, 0.02, "audit.lr")
    assert DSAConfig(strategy=dm.strategy) == DSAConfig()  # DM sets train exactly as before
    external = evaluation_protocol(synthetic, config=audit, network=TINY_NET)  # no provenance: DSA
    assert external == dm
    dc = evaluation_protocol(with_backbone(synthetic, "dc"), config=audit, network=NetworkConfig(norm="batchnorm"))
    assert (dc.augmentation, dc.strategy) == ("dc", "crop_noise")
    mine = AuditConfig(dc_strategy="crop_scale_rotate")
    assert evaluation_protocol(with_backbone(synthetic, "cafe"), config=mine, network=TINY_NET).strategy == (
        "crop_scale_rotate"
    )
    assert evaluation_protocol(with_backbone(synthetic, "idc"), config=audit, network=TINY_NET).augmentation == "none"
    mtt = with_backbone(synthetic, "mtt", mtt_syn_lr=0.0123)
    learned = evaluation_protocol(mtt, config=audit, network=TINY_NET)
    assert (learned.augmentation, learned.lr, learned.lr_source) == ("dsa", 0.0123, "mtt_syn_lr")
    assert evaluation_protocol(mtt, config=AuditConfig(lr=0.02, learned_lr=False), network=TINY_NET).lr == 0.02
    broken = with_backbone(synthetic, "mtt", mtt_syn_lr=-1.0)  # a diverged rate is not used
    assert evaluation_protocol(broken, config=audit, network=TINY_NET).lr == 0.02
    custom = evaluation_protocol(synthetic, config=AuditConfig(dsa_strategy="crop_flip"), network=TINY_NET)
    assert custom.strategy == "crop_flip"


def test_audit_trains_with_the_resolved_protocol(monkeypatch):
    train, test = quadrant_data(per_cell=2, seed=0), quadrant_data(per_cell=2, seed=1)
    calls = spy_training(monkeypatch, train)
    synthetic = synthetic_from(train)
    config = tiny_audit(num_eval=2, epochs=2, dsa=True, stack_models=True, dsa_strategy="crop_flip")
    result = audit_synthetic(with_backbone(synthetic, "mtt", mtt_syn_lr=0.07), test, config=config, network=TINY_NET)
    kwargs = calls[-1][1]
    assert kwargs["lr"] == 0.07 and kwargs["dsa"] == DSAConfig(strategy="crop_flip") and kwargs["transform"] is None
    assert result.protocol is not None and result.protocol.lr_source == "mtt_syn_lr"
    calls.clear()
    config = tiny_audit(num_eval=2, epochs=2, dsa=True, stack_models=True, dc_strategy="crop_noise")
    audit_synthetic(with_backbone(synthetic, "dc"), test, config=config, network=TINY_NET)
    kwargs = calls[-1][1]
    assert kwargs["dsa"] is None and kwargs["transform"] is not None and kwargs["lr"] == config.lr
    calls.clear()
    audit_synthetic(with_backbone(synthetic, "dc"), test, config=tiny_audit(epochs=2, dsa=True), network=TINY_NET)
    assert calls[-1][1]["dsa"] is None and calls[-1][1]["transform"] is None  # get_daparam: 'none' on this ConvNet
    calls.clear()
    audit_synthetic(with_backbone(synthetic, "dm"), test, config=tiny_audit(epochs=2, dsa=True), network=TINY_NET)
    assert calls[-1][1]["dsa"] == DSAConfig() and calls[-1][1]["transform"] is None


def test_dc_crop_is_a_shift_within_the_reference_range_with_mean_fill():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 12, 12, generator=gen)
    out = dc_augment(x, config=DCAugmentConfig(strategy="crop", crop=2), generator=gen)
    mean = x.mean(dim=(0, 2, 3)).view(3, 1, 1)
    shifts = set()
    for i in range(x.shape[0]):
        padded = mean.expand(3, 16, 16).clone()
        padded[:, 2:14, 2:14] = x[i]
        found = [(r, c) for r in range(4) for c in range(4) if torch.equal(out[i], padded[:, r : r + 12, c : c + 12])]
        assert found, f"image {i} is not a window of the mean-padded image"
        shifts.update(found)
    assert len(shifts) > 3  # offsets are drawn per image


def test_dc_scale_rotate_noise_and_none():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 10, 10, generator=gen)
    assert torch.equal(dc_augment(x, config=DCAugmentConfig(strategy="none"), generator=gen), x)
    assert torch.equal(dc_augment(x, config=DCAugmentConfig(strategy="scale", scale=0.0), generator=gen), x)
    scaled = dc_augment(x, config=DCAugmentConfig(strategy="scale", scale=0.2), generator=gen)
    assert scaled.shape == x.shape and not torch.equal(scaled, x)
    # values come from the image or the zero canvas (nearest resizing): no new values
    assert all(set(scaled[i].unique().tolist()) <= set(x[i].unique().tolist()) | {0.0} for i in range(8))
    still = dc_augment(x, config=DCAugmentConfig(strategy="rotate", rotate=1), generator=gen)  # angles in {-1, 0}
    assert (still - x).abs().mean() < 0.1
    noisy = dc_augment(x, config=DCAugmentConfig(strategy="noise", noise=0.001), generator=gen)
    assert 0 < (noisy - x).abs().max() < 0.01
    mixed = dc_augment(x, config=DCAugmentConfig(strategy="crop_noise"), generator=gen)
    is_noise = ((mixed - x).abs().amax(dim=(1, 2, 3)) < 0.01) & ~torch.all(mixed == x, dim=(1, 2, 3))
    assert mixed.shape == x.shape and 0 < int(is_noise.sum()) < 8  # one family per image
    with pytest.raises(ValueError, match="unknown families \\['flip'\\]"):
        dc_augment(x, config=DCAugmentConfig(strategy="flip"))


def test_protocol_enters_the_fingerprint_only_where_it_changes_the_result():
    from flows.configuration import parse_params
    from flows.sweep import cell_fingerprint

    def fp(**sections):
        return cell_fingerprint(parse_params(sections))

    dm = fp()
    assert fp(audit={"augmentation": "dsa"}) == dm  # the same protocol as before: the records count
    assert fp(audit={"dc_strategy": "crop"}) == dm  # DM sets do not read it
    assert fp(audit={"dsa_strategy": "crop_flip"}) != dm
    dc = {"backbone": "dc", "modes": ["cobra"]}
    dc_auto, dc_dsa = fp(synthesis=dc), fp(synthesis=dc, audit={"augmentation": "dsa"})
    assert dc_auto != dc_dsa  # DC sets: auto means DC's augmentation now, not DSA as records made before assume
    mtt = {"backbone": "mtt", "modes": ["cobra"]}
    assert fp(synthesis=mtt) != fp(synthesis=mtt, audit={"learned_lr": False})
