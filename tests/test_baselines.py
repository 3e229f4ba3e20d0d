"""The baselines (docs/evaluation.md, "Baselines"): real-image sets, uniform-subgroup, cui-reweight, vanilla-gdro."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fdd.config import (
    AUDIT_INTERVENTIONS,
    BASELINE_MODES,
    MODES,
    REAL_SET_MODES,
    AuditConfig,
    ConfigError,
    NetworkConfig,
    SynthesisConfig,
    parse_config,
)
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.distillation import synthesis as S
from fdd.distillation.baselines import real_baseline_set, real_set_indices
from fdd.distillation.dm import dm_loss, kde_weights
from fdd.distillation.run import synthesize
from fdd.distillation.training import train_network
from fdd.fairness import audit as A
from fdd.fairness.gdro import GroupDRO
from flows.configuration import load_config, sweep_cell_configs
from flows.pipeline import STAGES, run_single_stage
from flows.sweep import cell_fingerprint

TINY_NET = NetworkConfig(width=8, depth=2)


def grouped(
    per_cell: tuple[int, ...] = (9, 3), num_classes: int = 3, groups: torch.Tensor | None = None
) -> GroupedImages:
    """``num_classes`` classes, group ``g`` holding ``per_cell[g]`` images of each; channel 0 encodes the group."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat_interleave(sum(per_cell))
    if groups is None:
        groups = torch.cat([torch.full((n,), g) for g, n in enumerate(per_cell)]).repeat(num_classes)
    images = torch.randint(0, 256, (labels.numel(), 3, 8, 8), generator=gen, dtype=torch.uint8)
    images[:, 0] = (groups.clamp_min(0) * 100).to(torch.uint8).view(-1, 1, 1)
    return GroupedImages(
        images=images,
        labels=labels,
        groups=groups,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(len(per_cell))),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )


def row_of(train: GroupedImages, image: torch.Tensor) -> int:
    """The index of the train row equal to ``image`` (normalised), or -1."""
    hits = torch.nonzero((train.normalized() == image).flatten(1).all(dim=1)).flatten()
    return int(hits[0]) if hits.numel() else -1


# --- configuration ----------------------------------------------------------------------------


def test_baselines_are_modes_and_follow_the_backbones() -> None:
    assert set(BASELINE_MODES) <= set(MODES)
    for mode in BASELINE_MODES:  # every baseline runs on DM
        parse_config({"synthesis": {"modes": [mode]}})
    for mode in REAL_SET_MODES:  # the real-image sets take no backbone: every backbone accepts them
        parse_config({"synthesis": {"backbone": "dc", "modes": [mode]}})
    for mode in ("uniform-subgroup", "cui-reweight", "vanilla-gdro"):
        with pytest.raises(ConfigError, match=r"synthesis.backbone='dc' supports modes .*lists \['" + mode):
            parse_config({"synthesis": {"backbone": "dc", "modes": [mode]}})
    with pytest.raises(ConfigError, match="vanilla-gdro.*synthesis.init must be 'real'"):
        parse_config({"synthesis": {"modes": ["vanilla-gdro"], "init": "noise"}})
    assert AuditConfig(epochs=300, full_data_epochs=7).epochs_for("full-data") == 7
    assert AuditConfig(epochs=300, full_data_epochs=7).epochs_for("random-real") == 300


def test_new_settings_leave_the_recorded_fingerprints_alone_at_their_defaults() -> None:
    base = load_config_dict({})
    explicit = load_config_dict(
        {"audit": {"full_data_epochs": 20, "gdro_step_size": 0.01}, "synthesis": {"cui_bandwidth": 0.5}}
    )
    assert cell_fingerprint(base) == cell_fingerprint(explicit)
    assert cell_fingerprint(base) != cell_fingerprint(load_config_dict({"audit": {"full_data_epochs": 5}}))


def load_config_dict(raw: dict):
    from flows.configuration import parse_params

    return parse_params(raw)


def test_a_sweep_over_baselines_validates_and_names_cells_a_backbone_lacks() -> None:
    config = load_config_dict({"sweep": {"backbones": ["dm", "dc"], "modes": ["random-real", "full-data"]}})
    assert len(sweep_cell_configs(config)) == 2 * 2 * 3
    bad = load_config_dict({"sweep": {"backbones": ["dm", "dc"], "modes": ["cui-reweight"], "seeds": [0]}})
    with pytest.raises(ConfigError, match=r"(?s)1 of the 2 sweep cells.*ipc10-dc-cui-reweight-seed0"):
        sweep_cell_configs(bad)


# --- real-image sets ------------------------------------------------------------------------


def test_random_real_takes_ipc_distinct_train_rows_per_class_seeded() -> None:
    train = grouped()
    a = real_baseline_set(train, mode="random-real", ipc=4, seed=3)
    rows = [row_of(train, image) for image in a.images]
    assert -1 not in rows and len(set(rows)) == len(rows)  # exactly rows of the train set, distinct
    assert torch.equal(train.labels[rows], a.labels) and torch.equal(train.groups[rows], a.groups)
    assert torch.bincount(a.labels).tolist() == [4, 4, 4]
    assert torch.equal(real_baseline_set(train, mode="random-real", ipc=4, seed=3).images, a.images)
    assert not torch.equal(real_baseline_set(train, mode="random-real", ipc=4, seed=4).images, a.images)
    assert a.provenance["iterations"] == 0 and a.provenance["mode"] == "random-real"
    with pytest.raises(ValueError, match="ipc=13 distinct real images per class, but class 'c0' has 12"):
        real_set_indices(train, mode="random-real", ipc=13, generator=torch.Generator())


@pytest.mark.parametrize(("per_cell", "ipc"), [((9, 3), 4), ((9, 3, 5), 7), ((9, 1), 6)])
def test_stratified_real_splits_each_class_evenly_over_its_groups(per_cell, ipc) -> None:
    train = grouped(per_cell)
    syn = real_baseline_set(train, mode="stratified-real", ipc=ipc, seed=0)
    rows = [row_of(train, image) for image in syn.images]
    assert -1 not in rows and len(set(rows)) == len(rows)
    g = len(per_cell)
    for c in range(train.num_classes):
        counts = torch.bincount(syn.groups[syn.labels == c], minlength=g)
        assert int(counts.sum()) == ipc
        room = torch.tensor(per_cell)
        # as even as possible: every group gets its share ipc // G or all it has, and the groups
        # with images left differ by at most one
        left = counts < room
        assert bool((counts >= torch.minimum(room, torch.tensor(ipc // g))).all())
        assert bool(left.any()) and int(counts[left].max() - counts[left].min()) <= 1


def test_full_data_is_the_train_split() -> None:
    train = grouped()
    syn = real_baseline_set(train, mode="full-data", ipc=2, seed=0)
    assert torch.equal(syn.images, train.normalized()) and torch.equal(syn.labels, train.labels)
    assert torch.equal(syn.groups, train.groups) and syn.provenance["ipc"] is None


def test_modes_that_need_groups_refuse_data_without_them() -> None:
    hidden = grouped(groups=torch.full((36,), -1))
    one = grouped(groups=torch.zeros(36, dtype=torch.long))
    cfg = SynthesisConfig(ipc=2, iterations=1, batch_real=4)
    for mode in ("stratified-real", "uniform-subgroup", "vanilla-gdro"):
        with pytest.raises(ValueError, match=f"mode '{mode}' needs the train split's protected groups.*no labelled"):
            synthesize(hidden, mode=mode, config=cfg, network=TINY_NET, seed=0)
        with pytest.raises(ValueError, match="only group 'g0'"):
            synthesize(one, mode=mode, config=cfg, network=TINY_NET, seed=0)
    for mode in ("random-real", "full-data", "cui-reweight"):  # no groups needed
        synthesize(hidden, mode=mode, config=cfg, network=TINY_NET, seed=0)


def test_synthetic_groups_round_trip_and_stay_out_of_sets_without_them(tmp_path: Path) -> None:
    syn = real_baseline_set(grouped(), mode="random-real", ipc=2, seed=0)
    syn.save(tmp_path / "a.pt")
    assert torch.equal(SyntheticSet.load(tmp_path / "a.pt").groups, syn.groups)
    plain = SyntheticSet(images=syn.images, labels=syn.labels, class_names=syn.class_names, mean=syn.mean, std=syn.std)
    plain.save(tmp_path / "b.pt")
    assert "groups" not in torch.load(tmp_path / "b.pt", weights_only=True)  # existing modes' files unchanged
    assert SyntheticSet.load(tmp_path / "b.pt").groups is None


# --- uniform-subgroup -----------------------------------------------------------------------


def test_group_balanced_sampler_draws_the_same_number_of_every_group() -> None:
    groups = torch.cat([torch.full((9,), 0), torch.full((3,), 1), torch.full((2,), -1)]).repeat(3)
    train = grouped((9, 3, 2), groups=groups)  # 2 images of each class with unknown group
    sampler = S.GroupBalancedSampler(train.labels, train.groups, num_classes=3, num_groups=2)
    gen = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(5):
        index = sampler.sample(10, generator=gen)
        sizes.add(index.numel())
        assert bool((train.groups[index] >= 0).all())  # unknown groups never drawn
        for c in range(3):
            in_class = index[train.labels[index] == c]
            counts = torch.bincount(train.groups[in_class], minlength=2)
            assert counts.tolist() == [5, 5]  # batch 10 over 2 groups: 5 each
            minority = in_class[train.groups[in_class] == 1]
            assert set(minority.tolist()) == set(
                torch.nonzero((train.labels == c) & (train.groups == 1)).flatten().tolist()
            )
            majority = in_class[train.groups[in_class] == 0]
            assert len(set(majority.tolist())) == 5  # distinct where the cell is large enough
    assert sizes == {30} and sampler.fixed_size(10)


def test_uniform_subgroup_matches_vanilla_loss_on_a_balanced_batch(monkeypatch) -> None:
    train = grouped()
    cfg = SynthesisConfig(ipc=2, iterations=2, batch_real=6)
    seen: list[torch.Tensor] = []
    real = S.dm_loss

    def spy(*args, **kwargs):
        seen.append(args[2].clone())  # the real batch's groups
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "dm_loss", spy)
    result = synthesize(train, mode="uniform-subgroup", config=cfg, network=TINY_NET, seed=0)
    assert all(torch.bincount(g, minlength=2).tolist() == [9, 9] for g in seen)  # 3 per group and class
    vanilla = synthesize(train, mode="vanilla", config=cfg, network=TINY_NET, seed=0)
    assert not torch.equal(result.synthetic.images, vanilla.synthetic.images)
    f = torch.randn(6, 4)
    labels, groups = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 0, 0, 1])
    syn, syn_labels = torch.randn(2, 4), torch.tensor([0, 1])
    common = dict(num_classes=2, num_groups=2)
    assert torch.equal(
        dm_loss(f, labels, groups, syn, syn_labels, mode="uniform-subgroup", **common),
        dm_loss(f, labels, groups, syn, syn_labels, mode="vanilla", **common),
    )


# --- cui-reweight ---------------------------------------------------------------------------


def test_kde_weights_upweight_a_planted_rare_sample_and_ignore_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(9, 16, generator=gen) * 0.1
    rare = torch.full((1, 16), 3.0)
    other = torch.randn(5, 16, generator=gen)
    features = torch.cat([common, rare, other])
    labels = torch.tensor([0] * 10 + [1] * 5)
    w = kde_weights(features, labels, num_classes=2, bandwidth=0.5)
    assert int(w[:10].argmax()) == 9 and float(w[9]) > 5 * float(w[:9].max())
    assert torch.allclose(torch.stack([w[:10].sum(), w[10:].sum()]), torch.ones(2))
    assert torch.allclose(kde_weights(features * 10, labels, num_classes=2, bandwidth=0.5), w, atol=1e-6)
    same = kde_weights(torch.ones(4, 3), torch.zeros(4, dtype=torch.long), num_classes=1, bandwidth=0.5)
    assert torch.allclose(same, torch.full((4,), 0.25))
    # the target is the weighted class mean: matching the synthetic image to it costs nothing
    target = (w[:10].unsqueeze(1) * features[:10]).sum(0, keepdim=True)
    zero = dm_loss(
        features[:10], labels[:10], torch.zeros(10, dtype=torch.long), target, torch.tensor([0]),
        num_classes=1, num_groups=1, mode="cui-reweight", kde_bandwidth=0.5,
    )  # fmt: skip
    assert float(zero) < 1e-8
    vanilla_target = features[:10].mean(0, keepdim=True)
    assert float((target - rare).norm()) < float((vanilla_target - rare).norm())  # pulled towards the rare sample


# --- vanilla-gdro ---------------------------------------------------------------------------


def test_vanilla_gdro_is_the_vanilla_set_with_its_starting_groups() -> None:
    train = grouped()
    cfg = SynthesisConfig(ipc=3, iterations=2, batch_real=6)
    gdro = synthesize(train, mode="vanilla-gdro", config=cfg, network=TINY_NET, seed=0)
    vanilla = synthesize(train, mode="vanilla", config=cfg, network=TINY_NET, seed=0)
    assert torch.equal(gdro.synthetic.images, vanilla.synthetic.images) and gdro.losses == vanilla.losses
    assert vanilla.synthetic.groups is None and gdro.synthetic.provenance["mode"] == "vanilla-gdro"
    start = synthesize(
        train, mode="vanilla-gdro", config=cfg.model_copy(update={"iterations": 0}), network=TINY_NET, seed=0
    )
    rows = [row_of(train, image) for image in start.synthetic.images]
    assert -1 not in rows and torch.equal(start.synthetic.groups, train.groups[rows])
    assert torch.equal(gdro.synthetic.groups, start.synthetic.groups)
    assert AUDIT_INTERVENTIONS["vanilla-gdro"] == "gdro"


def hard_group_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group 0 is separable by its first feature; group 1 (small) has labels the features do not predict."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 2, 2, generator=gen)
    groups = (torch.arange(64) >= 48).long()
    labels = (x[:, 0, 0, 0] > 0).long()
    labels[groups == 1] = torch.randint(0, 2, (16,), generator=gen)
    return x, labels, groups


def test_group_dro_upweights_the_worst_group() -> None:
    logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 0, 0])  # group 1 (rows 2, 3) is predicted wrong: larger loss
    dro = GroupDRO(torch.tensor([0, 0, 1, 1]), num_groups=3, step_size=0.1)
    dro(logits, labels, torch.arange(4))
    q = dro.weights[0]
    assert float(q[1]) > float(q[0]) > float(q[2]) and float(q.sum()) == pytest.approx(1.0)  # group 2 absent: loss 0
    x, y, g = hard_group_data()
    for stacked in (False, True):
        torch.manual_seed(0)
        nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)) for _ in range(2 if stacked else 1)]
        dro = GroupDRO(g, num_groups=2, step_size=0.05, num_models=len(nets))
        schedule = dict(epochs=30, lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=16, dsa=None)
        if stacked:
            A.train_stacked(nets, x, y, generator=torch.Generator().manual_seed(0), loss_fn=dro, **schedule)
        else:
            train_network(nets[0], x, y, generator=torch.Generator().manual_seed(0), loss_fn=dro, **schedule)
        assert dro.weights.shape == (len(nets), 2)
        assert bool((dro.weights[:, 1] > 0.7).all())  # the hard group holds most of the weight


def test_audit_trains_with_the_intervention_and_the_full_data_epochs(monkeypatch) -> None:
    train = grouped()
    test = grouped()
    syn = real_baseline_set(train, mode="random-real", ipc=2, seed=0)
    calls: list[tuple[int, object]] = []

    def spy(net, images, labels, **kwargs):
        calls.append((kwargs["epochs"], kwargs.get("loss_fn")))
        return net

    monkeypatch.setattr(A, "train_network", spy)
    config = AuditConfig(num_eval=1, epochs=9, full_data_epochs=3)
    A.audit_synthetic(syn, test, config=config, network=TINY_NET, epochs=config.epochs_for("full-data"))
    A.audit_synthetic(syn, test, config=config, network=TINY_NET, intervention="gdro")
    assert calls[0] == (4, None)  # epochs + 1, as the reference's range(Epoch + 1)
    assert calls[1][0] == 10 and isinstance(calls[1][1], GroupDRO)
    plain = SyntheticSet(images=syn.images, labels=syn.labels, class_names=syn.class_names, mean=syn.mean, std=syn.std)
    with pytest.raises(ValueError, match="records none"):
        A.audit_synthetic(plain, test, config=config, network=TINY_NET, intervention="gdro")
    with pytest.raises(ValueError, match="intervention must be one of"):
        A.audit_synthetic(syn, test, config=config, network=TINY_NET, intervention="dro")


# --- through the pipeline's stages ----------------------------------------------------------


def test_every_baseline_through_the_stages(tiny_workspace: Path) -> None:
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    modes = ["vanilla", *BASELINE_MODES]
    params["synthesis"].update({"modes": modes, "iterations": 2})
    params["audit"].update({"full_data_epochs": 1})
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(tiny_workspace / "params.yaml")
    ws = str(tiny_workspace)
    for stage in STAGES:
        for mode in config.synthesis.modes if stage in ("synthesize", "audit") else [None]:
            run_single_stage(stage, config, ws, mode)
    root = tiny_workspace / "data"
    metrics = json.loads((root / "metrics.json").read_text())
    assert set(metrics) == set(modes)
    for mode in modes:
        one = json.loads((root / "audit" / mode / "metrics.json").read_text())
        assert 0.0 <= one["accuracy"] <= 100.0 and one["num_eval"] == 1
    table = pd.read_csv(root / "report/comparison.csv")
    assert set(table["mode"]) == set(modes)
    train = GroupedImages.load(root / "prepared/train.pt")
    full = SyntheticSet.load(root / "synthetic/full-data/synthetic.pt")
    assert torch.equal(full.images, train.normalized()) and torch.equal(full.labels, train.labels)
    assert pd.read_csv(root / "synthetic/full-data/losses.csv").empty  # nothing optimised
    vanilla = SyntheticSet.load(root / "synthetic/vanilla/synthetic.pt")
    gdro = SyntheticSet.load(root / "synthetic/vanilla-gdro/synthetic.pt")
    assert torch.equal(vanilla.images, gdro.images) and gdro.groups is not None and vanilla.groups is None
    stratified = SyntheticSet.load(root / "synthetic/stratified-real/synthetic.pt")
    assert stratified.groups is not None
    report = (root / "report/report.md").read_text()
    assert all(mode in report for mode in modes)


@pytest.mark.slow
def test_a_sweep_over_baselines_writes_their_rows(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import run_sweep

    storage = tmp_path_factory.mktemp("prefect-results")
    overrides = {
        "audit": {"full_data_epochs": 1},
        "sweep": {
            "ipcs": [2],
            "modes": ["random-real", "full-data", "vanilla-gdro"],
            "seeds": [0],
            "n_workers": 1,
            "processes": False,
        },
    }
    config = load_config(tiny_workspace / "params.yaml", overrides=overrides)
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            result = run_sweep(config, workspace=str(tiny_workspace))
    assert result["cells"] == 3 and result["failed"] == 0
    summary = pd.read_csv(tiny_workspace / "data/sweep/summary.csv")
    assert set(summary["mode"]) == {"random-real", "full-data", "vanilla-gdro"}
    assert summary["accuracy_mean"].between(0, 100).all()
