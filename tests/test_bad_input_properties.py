"""Property-based bad input: every configuration or dataset is accepted or rejected by name.

Hypothesis generates broken configurations (one key changed to an arbitrary value, or an
unknown key added) and grouped datasets (random shapes, dtypes, value ranges, label and
group ranges). Each one is either accepted, with the value in place, or rejected with an
error that names the offending field. A rejected command-line run leaves no output
behind.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from fdd.config import ConfigError
from fdd.datasets.containers import GroupedImages
from flows import cli
from flows.configuration import FlowConfig
from flows.configuration import parse_params as parse_config

SECTIONS = {  # the mapping sections (``schedules``, a list of entries, is tested in test_server.py)
    name: field.annotation.model_fields
    for name, field in FlowConfig.model_fields.items()
    if hasattr(field.annotation, "model_fields")
}
KEYS = sorted((section, key) for section, fields in SECTIONS.items() for key in fields)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.sampled_from(["/etc/passwd", "../../outside", "cuda", "vanilla", "cobra", "background", "auto"]),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=ANY_VALUE)
@example(key=("audit", "stack_models"), value="0")  # pydantic reads the string "0" as False
@example(key=("audit", "lr"), value="1e-3")
def test_one_changed_key_is_accepted_or_named(key: tuple[str, str], value: object) -> None:
    section, name = key
    try:
        config = parse_config({section: {name: value}})
    except ConfigError as exc:
        assert f"{section}.{name}" in str(exc)  # field errors quote it; cross-field errors name it in the text
        return
    accepted = getattr(getattr(config, section), name)
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(accepted, float) and math.isnan(accepted)
    elif isinstance(value, list):
        assert list(accepted) == value
    elif isinstance(value, str) and isinstance(accepted, (bool, int, float)):
        # a string read as a number or a flag ("0" -> False, "1e-3" -> 0.001): the value stored is
        # what pydantic makes of the string for that type, not another one
        assert accepted == TypeAdapter(type(accepted)).validate_python(value)
    else:
        assert accepted == value or (value is not None and str(accepted) == str(value))


@settings(max_examples=100, deadline=None)
@given(
    section=st.sampled_from(sorted(SECTIONS)),
    name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10),
)
def test_unknown_keys_are_named(section: str, name: str) -> None:
    if name in SECTIONS[section]:
        return
    with pytest.raises(ConfigError, match=f"unknown key '{section}.{name}'"):
        parse_config({section: {name: 1}})


FIELDS = ("images", "labels", "groups", "class_names", "group_names", "mean", "std", "N=0")


@st.composite
def grouped_inputs(draw):
    n = draw(st.integers(min_value=0, max_value=12))
    rank = draw(st.sampled_from([1, 2, 3, 4, 4, 4, 5]))
    channels = draw(st.integers(min_value=1, max_value=3))
    shape = (n, channels, 4, 4)[:rank] if rank <= 4 else (n, channels, 4, 4, 1)
    dtype = draw(st.sampled_from([torch.uint8, torch.float32, torch.float64, torch.int32, torch.bool]))
    if dtype.is_floating_point:
        images = torch.rand(shape, dtype=dtype)
        if n and draw(st.booleans()):
            images.view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    else:
        images = torch.zeros(shape, dtype=dtype)
    num_classes = draw(st.integers(min_value=0, max_value=3))
    num_groups = draw(st.integers(min_value=0, max_value=3))
    length = draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1]))
    labels = torch.tensor(draw(st.lists(st.integers(-1, 4), min_size=length, max_size=length)), dtype=torch.long)
    groups = torch.tensor(draw(st.lists(st.integers(-1, 4), min_size=length, max_size=length)), dtype=torch.long)
    norm_len = draw(st.sampled_from([channels, channels, channels + 1]))
    std = tuple(draw(st.sampled_from([0.5, 0.5, 0.0, -1.0])) for _ in range(norm_len))
    return dict(
        images=images,
        labels=labels,
        groups=groups,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        group_names=tuple(f"g{i}" for i in range(num_groups)),
        mean=(0.5,) * norm_len,
        std=std,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=grouped_inputs())
def test_grouped_images_valid_or_rejected_by_field(kwargs: dict) -> None:
    try:
        data = GroupedImages(**kwargs)
    except ValueError as exc:
        assert any(field in str(exc) for field in FIELDS), str(exc)
        return
    assert data.images.dim() == 4 and len(data) == data.labels.numel() == data.groups.numel() > 0
    assert int(data.labels.max()) < data.num_classes and int(data.groups.max()) < data.num_groups
    assert torch.isfinite(data.normalized()).all()


BAD_OVERRIDES = [
    "synthesis.ipc=-3",
    "synthesis.ipc=100000",
    "synthesis.iterations=-1",
    "synthesis.modes=[cobra, cobra]",
    "synthesis.mode=cobra",
    "data.dataset=imagenet",
    "data.root=/etc",
    "data.idx_dir=../../elsewhere",
    "audit.num_eval=0",
    "network.width=0",
    "runtime.device=tpu",
    "barycenters.weights=sizes",
]


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_rejected_cli_run_names_the_key_and_writes_nothing(
    override: str, tiny_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*"))
    code = cli.main(
        ["run", "--params", str(tiny_workspace / "params.yaml"), "--workspace", str(tiny_workspace), "--set", override]
    )
    assert code == 2
    assert override.split("=")[0] in capsys.readouterr().err
    after = sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*"))
    assert after == before  # no data/, no .prefect/, no lock left behind
