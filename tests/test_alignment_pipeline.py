"""The stages end to end (without Prefect) with cobra-w2 / cobra-bures, covering inits and noisy groups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from fdd.config import NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation import synthesis as S
from fdd.distillation.run import synthesize
from flows.pipeline import STAGES, load_config, run_single_stage

TINY_NET = NetworkConfig(width=8, depth=2)


def tiny_data(num_classes: int = 3, num_groups: int = 2, per_cell: tuple[int, ...] = (6, 3)) -> GroupedImages:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat_interleave(sum(per_cell))
    groups = torch.cat([torch.full((n,), g) for g, n in enumerate(per_cell)]).repeat(num_classes)
    images = torch.randint(0, 256, (labels.numel(), 3, 8, 8), generator=gen, dtype=torch.uint8)
    images[:, 0] = (groups * 120).to(torch.uint8).view(-1, 1, 1)
    return GroupedImages(
        images=images,
        labels=labels,
        groups=groups,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )


@pytest.mark.parametrize(("mode", "solver"), [("cobra-w2", "emd"), ("cobra-w2", "sinkhorn"), ("cobra-bures", "emd")])
def test_synthesize_distributional_modes_warm_up_and_are_deterministic(monkeypatch, mode, solver):
    data = tiny_data()
    calls: list[int] = []
    real_train = S.train_network

    def spy(*args, **kwargs):
        calls.append(kwargs["epochs"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(S, "train_network", spy)
    cfg = SynthesisConfig(ipc=2, iterations=3, batch_real=6, warmup_epochs=2, warmup_batch=4, w2_solver=solver)
    a = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=0)
    assert calls == [2, 2, 2]  # like cobra, the embedder is trained before each matching step
    b = synthesize(data, mode=mode, config=cfg, network=TINY_NET, seed=0)
    cobra = synthesize(data, mode="cobra", config=cfg, network=TINY_NET, seed=0)
    assert torch.equal(a.synthetic.images, b.synthetic.images) and a.losses == b.losses
    assert all(math.isfinite(v) for v in a.losses)
    assert not torch.equal(a.synthetic.images, cobra.synthetic.images)
    assert a.synthetic.provenance["mode"] == mode


def test_stages_with_distributional_modes_noisy_groups_and_barycenter_init(tiny_workspace: Path) -> None:
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    params["synthesis"].update({"modes": ["cobra-w2", "cobra-bures"], "init": "barycenter", "iterations": 2})
    params["data"]["group_noise"] = {"flip_fraction": 0.1, "hide_fraction": 0.2, "seed": 1}
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(tiny_workspace / "params.yaml")
    ws = str(tiny_workspace)
    for stage in STAGES:
        if stage in ("synthesize", "audit"):
            for mode in config.synthesis.modes:
                run_single_stage(stage, config, ws, mode)
        else:
            run_single_stage(stage, config, ws)
    train = GroupedImages.load(tiny_workspace / "data/prepared/train.pt")
    test = GroupedImages.load(tiny_workspace / "data/prepared/test.pt")
    summary = json.loads((tiny_workspace / "data/prepared/dataset.json").read_text())
    assert summary["groups_hidden"] == round(0.2 * len(train)) == int((train.groups == -1).sum())
    assert summary["groups_flipped"] == round(0.1 * len(train))
    assert bool((test.groups >= 0).all())  # the test split keeps its true groups
    metrics = json.loads((tiny_workspace / "data/metrics.json").read_text())
    assert set(metrics) == {"cobra-w2", "cobra-bures"}
    for mode in ("cobra-w2", "cobra-bures"):
        syn = SyntheticSet.load(tiny_workspace / f"data/synthetic/{mode}/synthetic.pt")
        assert syn.provenance["mode"] == mode and torch.isfinite(syn.images).all()
        assert 0.0 <= metrics[mode]["accuracy"] <= 100.0
