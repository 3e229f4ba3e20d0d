"""Tests of fdd.config: the typed, frozen pipeline configuration."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from fdd.config import (
    AuditConfig,
    ConfigError,
    NetworkConfig,
    PipelineConfig,
    SynthesisConfig,
    deep_merge,
    parse_config,
)
from flows.configuration import parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_defaults():
    for raw in ({}, None):
        cfg = parse_config(raw)
        assert isinstance(cfg, PipelineConfig)
        assert cfg.synthesis.ipc == 10 and cfg.synthesis.iterations == 2600 and cfg.synthesis.batch_real == 600
        assert cfg.synthesis.modes == ("vanilla", "cobra") and cfg.synthesis.init == "real" and cfg.synthesis.dsa
        assert cfg.synthesis.lr_img == 1.0 and cfg.synthesis.momentum == 0.5
        assert cfg.network == NetworkConfig(width=128, depth=3, norm="instancenorm", pooling="avgpooling")
        assert cfg.audit.num_eval == 5 and cfg.audit.epochs == 1500 and cfg.audit.lr == 0.01
        assert cfg.audit.batch_size == 256 and cfg.audit.weight_decay == 5e-4 and cfg.audit.momentum == 0.9
        assert cfg.audit.stack_models is True and cfg.audit.dsa is True
        assert cfg.data.dataset == "cmnist" and cfg.data.train_correlation == 0.9 and cfg.data.test_correlation == 0.1
        assert cfg.barycenters.weights == "uniform"
        assert cfg.runtime.device == "cpu"


def test_repository_params_yaml_validates():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = parse_params(raw)
    assert cfg.synthesis.iterations == raw["synthesis"]["iterations"]
    assert cfg.network.width == raw["network"]["width"]


def test_values_are_taken():
    cfg = parse_config({"synthesis": {"ipc": 50, "modes": ["fairdd"]}, "network": {"width": 8}})
    assert cfg.synthesis.ipc == 50 and cfg.synthesis.modes == ("fairdd",)
    assert cfg.network.width == 8 and cfg.network.depth == 3


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"synthesis": {"iteration": 5}}, "synthesis.iteration"),
        ({"network": {"widht": 5}}, "network.widht"),
        ({"synthesise": {}}, "synthesise"),
        ({"audit": {"epochs": 2, "epoch": 3}}, "audit.epoch"),
    ],
)
def test_unknown_key_names_key(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert f"unknown key '{key}'" in message
    assert "sections: runtime, data, network, features, barycenters, synthesis, audit" in message


def test_every_bad_key_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config({"synthesis": {"iteration": 5, "ipc": 0}, "audit": {"num_eval": "many"}})
    message = str(info.value)
    assert "synthesis.iteration" in message and "'synthesis.ipc'" in message and "'audit.num_eval'" in message
    assert "got 0" in message and "got 'many'" in message


@pytest.mark.parametrize(
    "raw, where, allowed, received",
    [
        ({"synthesis": {"modes": ["vanila"]}}, "synthesis.modes.0", ["vanilla", "fairdd", "cobra"], "'vanila'"),
        ({"synthesis": {"init": "zeros"}}, "synthesis.init", ["real", "noise"], "'zeros'"),
        ({"network": {"norm": "layernorm"}}, "network.norm", ["instancenorm", "batchnorm", "none"], "'layernorm'"),
        ({"runtime": {"device": "gpu"}}, "runtime.device", ["cpu", "cuda", "auto"], "'gpu'"),
        ({"barycenters": {"weights": "equal"}}, "barycenters.weights", ["uniform", "proportional"], "'equal'"),
        ({"data": {"dataset": "mnist"}}, "data.dataset", ["cmnist", "cfmnist"], "'mnist'"),
    ],
)
def test_bad_literal_names_allowed_values(raw, where, allowed, received):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert f"'{where}'" in message
    for value in allowed:
        assert f"'{value}'" in message
    assert f"got {received}" in message


@pytest.mark.parametrize(
    "raw, where",
    [
        ({"synthesis": {"ipc": 0}}, "synthesis.ipc"),
        ({"synthesis": {"lr_img": 0}}, "synthesis.lr_img"),
        ({"synthesis": {"momentum": 1.0}}, "synthesis.momentum"),
        ({"data": {"train_correlation": 1.5}}, "data.train_correlation"),
        ({"audit": {"num_eval": 0}}, "audit.num_eval"),
        ({"features": {"max_per_cell": 1}}, "features.max_per_cell"),
    ],
)
def test_out_of_range_values(raw, where):
    with pytest.raises(ConfigError, match=f"'{where}'"):
        parse_config(raw)


def test_duplicate_modes_error():
    with pytest.raises(ConfigError) as info:
        parse_config({"synthesis": {"modes": ["cobra", "vanilla", "cobra"]}})
    message = str(info.value)
    assert "synthesis.modes" in message and "more than once" in message and "['cobra']" in message
    with pytest.raises(pydantic.ValidationError):
        SynthesisConfig(modes=("vanilla", "vanilla"))
    with pytest.raises(ConfigError, match="at least one"):
        parse_config({"synthesis": {"modes": []}})


def test_non_mapping_error():
    with pytest.raises(ConfigError, match="must be a mapping of sections; got list"):
        parse_config([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("ipc, expected", [(1, 10), (10, 10), (11, 50), (50, 50), (51, 100), (100, 100), (500, 100)])
def test_resolved_warmup_epochs_by_ipc(ipc, expected):
    assert SynthesisConfig(ipc=ipc).resolved_warmup_epochs() == expected
    assert SynthesisConfig(ipc=ipc, warmup_epochs=3).resolved_warmup_epochs() == 3
    assert SynthesisConfig(ipc=ipc, warmup_epochs=0).resolved_warmup_epochs() == 0


def test_deep_merge():
    base = {"synthesis": {"ipc": 10, "iterations": 100, "modes": ["vanilla"]}, "audit": {"epochs": 300}, "x": 1}
    override = {"synthesis": {"iterations": 5, "modes": ["cobra"]}, "network": {"width": 8}, "x": {"y": 2}}
    merged = deep_merge(base, override)
    assert merged == {
        "synthesis": {"ipc": 10, "iterations": 5, "modes": ["cobra"]},
        "audit": {"epochs": 300},
        "network": {"width": 8},
        "x": {"y": 2},
    }
    # inputs untouched
    assert base == {"synthesis": {"ipc": 10, "iterations": 100, "modes": ["vanilla"]}, "audit": {"epochs": 300}, "x": 1}
    assert override["synthesis"] == {"iterations": 5, "modes": ["cobra"]}
    # deeper nesting merges recursively
    assert deep_merge({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"d": 3}}}) == {"a": {"b": {"c": 1, "d": 3}}}
    cfg = parse_config(deep_merge({"synthesis": {"ipc": 50}}, {"synthesis": {"iterations": 7}}))
    assert cfg.synthesis.ipc == 50 and cfg.synthesis.iterations == 7


def test_frozen_models_cannot_be_mutated():
    cfg = parse_config({})
    with pytest.raises(pydantic.ValidationError):
        cfg.synthesis.ipc = 50  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.audit = AuditConfig()  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.network.width = 3  # type: ignore[misc]
    assert cfg.synthesis.ipc == 10 and cfg.network.width == 128
    assert hash(cfg.network) == hash(NetworkConfig())


def test_section_digest_stable_and_sensitive():
    a = parse_config({"synthesis": {"ipc": 10}}).synthesis
    b = parse_config({}).synthesis
    c = parse_config({"synthesis": {"ipc": 11}}).synthesis
    assert a.digest() == b.digest() and len(a.digest()) == 64
    assert a.digest() != c.digest()
    assert parse_config({}).digest() != parse_config({"audit": {"seed": 1}}).digest()


def test_a_check_across_one_sections_keys_names_them_without_echoing_the_section():
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"synthesis": {"backbone": "mtt", "mtt": {"max_start_epoch": 5, "expert_epochs": 3, "train_epochs": 6}}}
        )
    message = str(info.value)
    assert "max_start_epoch (5) + expert_epochs (3) must not exceed train_epochs (6)" in message
    assert "(got {" not in message


def test_every_float_setting_must_be_finite() -> None:
    """An infinite learning rate passes `> 0` and trains a constant classifier whose DEO of 0 reads as fair."""
    import inspect

    from pydantic import BaseModel, ValidationError

    import fdd.config as C

    sections = [
        cls
        for _, cls in inspect.getmembers(C, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == C.__name__ and not cls.__name__.startswith("_")
    ]
    checked = []
    for cls in sections:
        for name, field in cls.model_fields.items():
            if field.annotation in (float, float | None):
                for bad in (float("inf"), float("-inf"), float("nan")):
                    with pytest.raises(ValidationError, match="finite number"):
                        cls(**{name: bad})
                checked.append(f"{cls.__name__}.{name}")
    assert {
        "AuditConfig.lr",
        "SynthesisConfig.lr_img",
        "SynthesisConfig.warmup_lr",
        "MTTConfig.lr_teacher",
        "GradientMatchingConfig.lr_net",
    } <= set(checked)
