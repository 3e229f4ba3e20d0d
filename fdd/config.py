"""The typed configuration: one pydantic model per section of ``params.yaml``.

Every model forbids unknown keys, so a typo such as ``synthesis.iteration`` is an
error naming the key and the allowed ones instead of a silently ignored setting.
The configuration is validated once at the entry point (``flows/``) and passed down
as sub-configs; nothing mutates it during a run (the models are frozen).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Dataset = Literal["cmnist", "cfmnist"]
Bias = Literal["foreground", "background"]
Mode = Literal["vanilla", "fairdd", "cobra", "cobra-w2", "cobra-bures"]
Backbone = Literal["dm"]
MODES: tuple[str, ...] = ("vanilla", "fairdd", "cobra", "cobra-w2", "cobra-bures")

ERR_OUTSIDE_WORKSPACE = (
    "{field} must be a relative path inside the workspace (no leading '/', no '..'); got {value!r}"
)
ERR_NOISE_SUM = "data.group_noise: flip_fraction + hide_fraction must be at most 1; got {flip} + {hide}"
ERR_DUPLICATE_MODES = "synthesis.modes lists {dupes} more than once; list each of {allowed} at most once"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def digest(self) -> str:
        """Stable hash of this section's values (used in cache keys and provenance)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class RuntimeConfig(_Section):
    """Where and how to run: device, base seed, threads."""

    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="'auto' picks CUDA when present")
    seed: int = Field(0, ge=0)
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU")


class GroupNoiseConfig(_Section):
    """Imperfect group labels in the training split (``fdd/group_noise.py``); the test split is untouched."""

    flip_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of train samples moved to another group")
    hide_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of train samples whose group becomes -1")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _disjoint(self) -> GroupNoiseConfig:
        if self.flip_fraction + self.hide_fraction > 1.0:
            raise ValueError(ERR_NOISE_SUM.format(flip=self.flip_fraction, hide=self.hide_fraction))
        return self


class DataConfig(_Section):
    """Dataset ingestion (the ``ingest`` stage)."""

    dataset: Dataset = "cmnist"
    bias: Bias = "foreground"
    train_correlation: float = Field(0.9, ge=0.0, le=1.0)
    test_correlation: float = Field(0.1, ge=0.0, le=1.0)
    num_confusing_colors: int = Field(9, ge=1, le=9)
    root: str = Field("data/raw", description="where raw downloads are cached")
    download: bool = True
    idx_dir: str | None = Field(
        None,
        description="your own 28x28 grayscale data: a folder with the four MNIST-named IDX files "
        "(read as is, no checksum); None uses MNIST / Fashion-MNIST",
    )
    seed: int = Field(0, ge=0, description="seed of the colour assignment")
    test_limit: int | None = Field(
        None, ge=100, description="keep only this many test images (stratified by class); None keeps all"
    )
    group_noise: GroupNoiseConfig = GroupNoiseConfig()

    @field_validator("root")
    @classmethod
    def _root_inside(cls, value: str) -> str:
        return _inside_workspace(value, "data.root")  # type: ignore[return-value]

    @field_validator("idx_dir")
    @classmethod
    def _idx_inside(cls, value: str | None) -> str | None:
        return _inside_workspace(value, "data.idx_dir")


def _inside_workspace(value: str | None, field: str) -> str | None:
    if value is None:
        return value
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value.strip():
        raise ValueError(ERR_OUTSIDE_WORKSPACE.format(field=field, value=value))
    return value


class NetworkConfig(_Section):
    """The ConvNet used for matching, warm-up and evaluation."""

    width: int = Field(128, ge=1, le=4096)
    depth: int = Field(3, ge=1, le=8)
    norm: Literal["instancenorm", "batchnorm", "none"] = "instancenorm"
    pooling: Literal["avgpooling", "maxpooling", "none"] = "avgpooling"


class FeaturesConfig(_Section):
    """Per-(class, group) statistics under a fixed random reference embedder."""

    embedder_seed: int = Field(0, ge=0)
    max_per_cell: int = Field(500, ge=2, description="images per (class, group) cell embedded")
    batch_size: int = Field(512, ge=1)
    projection_dim: int = Field(
        32, ge=1, description="embeddings are projected on their top principal directions for W2"
    )


class BarycenterConfig(_Section):
    """Barycenters of the group feature distributions (diagnostics and targets)."""

    weights: Literal["uniform", "proportional"] = "uniform"
    support_size: int = Field(20, ge=1, description="support points of the W2 free-support barycenter")
    max_iter: int = Field(50, ge=1)


class SynthesisConfig(_Section):
    """Synthetic-set optimisation (DM backbone; METHOD.md section 2)."""

    backbone: Backbone = "dm"
    modes: tuple[Mode, ...] = ("vanilla", "cobra")
    ipc: int = Field(10, ge=1, le=1000)
    iterations: int = Field(2600, ge=0, le=1_000_000)
    batch_real: int = Field(600, ge=1, le=100_000)
    lr_img: float = Field(1.0, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1)
    init: Literal["real", "noise", "barycenter", "stratified"] = Field(
        "real",
        description="real: random real images; noise: N(0,1) pixels; barycenter: real images nearest to the "
        "support of the uniform W2 barycenter of the groups (fdd/initialisation.py); stratified: "
        "real images drawn round-robin over the groups",
    )
    dsa: bool = True
    warmup_epochs: int | None = Field(
        None, ge=0, description="cobra's embedder training epochs; None: 10 / 50 / 100 by IPC"
    )
    w2_solver: Literal["emd", "sinkhorn"] = Field(
        "emd", description="cobra-w2: exact OT (POT network simplex, CPU) or debiased Sinkhorn (batched, on the device)"
    )
    w2_reg: float = Field(0.05, gt=0, description="cobra-w2 with sinkhorn: epsilon relative to the mean cost")
    w2_reduction: Literal["sum", "mean"] = Field(
        "sum", description="cobra-w2/-bures: sum over groups (FairDD's scale, default) or mean (1/G weights); same minimiser"
    )
    warmup_lr: float = Field(0.01, gt=0)
    warmup_batch: int = Field(256, ge=1)
    warmup_momentum: float = Field(0.9, ge=0, lt=1)
    warmup_weight_decay: float = Field(5e-4, ge=0)
    log_every: int = Field(10, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: embeddings under bfloat16 autocast (CUDA); losses stay in fp32"
    )
    channels_last: bool = Field(False, description="channels-last memory format for the convolutions")
    compile: bool = Field(False, description="torch.compile the embedding network (pays on GPUs for long runs)")
    checkpoint_every: int = Field(
        50, ge=0, description="save a resumable checkpoint every N iterations (0: never; also on SIGTERM/SIGINT)"
    )

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({m for m in value if value.count(m) > 1})
        if dupes:
            raise ValueError(ERR_DUPLICATE_MODES.format(dupes=dupes, allowed=list(MODES)))
        if not value:
            raise ValueError(f"synthesis.modes must list at least one of {list(MODES)}")
        return value

    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 10 if self.ipc <= 10 else 50 if self.ipc <= 50 else 100


class AuditConfig(_Section):
    """Evaluation of a synthetic set: train fresh ConvNets, test on the real test split."""

    num_eval: int = Field(5, ge=1, le=100)
    epochs: int = Field(1500, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1)
    dsa: bool = True
    test_batch_size: int = Field(2048, ge=1)
    seed: int = Field(0, ge=0)
    stack_models: bool = Field(
        True, description="train the num_eval networks together as one vectorised model (torch.func)"
    )


class PipelineConfig(_Section):
    """The whole ``params.yaml``."""

    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    features: FeaturesConfig = FeaturesConfig()
    barycenters: BarycenterConfig = BarycenterConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    audit: AuditConfig = AuditConfig()


class ConfigError(ValueError):
    """A configuration that does not validate; the message lists every bad key."""


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}' (not a setting of this section)"
    received = error.get("input")
    return f"'{where}': {error['msg']} (got {received!r})"


def parse_config(raw: dict[str, Any] | None) -> PipelineConfig:
    """Validate a plain mapping (e.g. parsed ``params.yaml``) into a :class:`PipelineConfig`.

    Raises
    ------
    ConfigError
        Naming every offending key, the allowed values and the value received.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the configuration must be a mapping of sections; got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        sections = ", ".join(PipelineConfig.model_fields)
        raise ConfigError(
            "invalid configuration:\n  - " + "\n  - ".join(lines) + f"\n(sections: {sections})"
        ) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``, section by section."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
