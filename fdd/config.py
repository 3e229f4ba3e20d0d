"""The typed configuration: one pydantic model per section of ``params.yaml``.

Every model forbids unknown keys, so a typo such as ``synthesis.iteration`` is an
error naming the key and the allowed ones instead of a silently ignored setting.
The configuration is validated once at the entry point (``flows/``) and passed down
as sub-configs; nothing mutates it during a run (the models are frozen).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ARCHITECTURES",
    "AUDIT_AUGMENTATIONS",
    "ArchitectureSpec",
    "AUDIT_INTERVENTIONS",
    "AuditConfig",
    "BACKBONES",
    "BACKBONE_MODES",
    "BASELINE_MODES",
    "BFFHQConfig",
    "Backbone",
    "BarycenterConfig",
    "Bias",
    "CAFEConfig",
    "COLORED_DATASETS",
    "DATASETS",
    "DEFAULT_NORMS",
    "COLORED_KEYS",
    "DC_AUGMENT_FAMILIES",
    "DEFAULT_DSA_STRATEGY",
    "DSA_FAMILIES",
    "REFERENCE_AUGMENTATION",
    "CelebAConfig",
    "Cifar10sConfig",
    "ConfigError",
    "DataConfig",
    "Dataset",
    "FeaturesConfig",
    "DISTILLED_AS",
    "FolderConfig",
    "GROUP_MODES",
    "GradientMatchingConfig",
    "GroupNoiseConfig",
    "IDCConfig",
    "IMAGE_DATASETS",
    "MODES",
    "MTTConfig",
    "Mode",
    "NetworkConfig",
    "PipelineConfig",
    "REAL_SET_MODES",
    "RuntimeConfig",
    "Section",
    "SynthesisConfig",
    "TABULAR_DATASETS",
    "TabularConfig",
    "UTKFaceConfig",
    "deep_merge",
    "parse_architecture",
    "parse_config",
]

Dataset = Literal["cmnist", "cfmnist", "cifar10s", "celeba", "utkface", "bffhq", "folder", "adult"]
#: The colour-biased digit datasets built from 28x28 grayscale sources (MNIST, Fashion-MNIST, idx_dir).
COLORED_DATASETS: tuple[str, ...] = ("cmnist", "cfmnist")
#: The datasets read from image files (fdd.datasets.image_sources); each has its own sub-section of ``data``.
IMAGE_DATASETS: tuple[str, ...] = ("cifar10s", "celeba", "utkface", "bffhq", "folder")
#: Datasets of rows rather than images (stored as (N, F, 1, 1) tensors; see fdd/datasets/adult.py).
TABULAR_DATASETS: tuple[str, ...] = ("adult",)
DATASETS: tuple[str, ...] = get_args(Dataset)
Bias = Literal["foreground", "background"]
Mode = Literal[
    "vanilla",
    "fairdd",
    "cobra",
    "cobra-w2",
    "cobra-bures",
    "random-real",
    "stratified-real",
    "full-data",
    "uniform-subgroup",
    "cui-reweight",
    "vanilla-gdro",
]
Backbone = Literal["dm", "dc", "idc", "cafe", "mtt"]
BACKBONES: tuple[str, ...] = ("dm", "dc", "idc", "cafe", "mtt")
MODES: tuple[str, ...] = get_args(Mode)
#: The baselines (docs/evaluation.md, "Baselines"): modes compared with the distillation modes in the same
#: tables. The real-set baselines pick real training images and optimise nothing (so they take no backbone:
#: every backbone accepts them and ignores itself); the others are DM variants or an audit intervention.
REAL_SET_MODES: tuple[str, ...] = ("random-real", "stratified-real", "full-data")
BASELINE_MODES: tuple[str, ...] = (*REAL_SET_MODES, "uniform-subgroup", "cui-reweight", "vanilla-gdro")
#: Modes that need the train split's group labels (at least two labelled groups; checked when the stage runs).
GROUP_MODES: tuple[str, ...] = ("stratified-real", "uniform-subgroup", "vanilla-gdro")
#: Modes whose synthetic set is that of another mode (same settings, same seed: the same images); the
#: audit then trains on it differently (:data:`AUDIT_INTERVENTIONS`).
DISTILLED_AS: dict[str, str] = {"vanilla-gdro": "vanilla"}
#: Modes whose audit trains with an in-training fairness intervention (fdd.fairness.gdro).
AUDIT_INTERVENTIONS: dict[str, str] = {"vanilla-gdro": "gdro"}
# modes each backbone implements; a backbone missing here implements every mode of MODES
BACKBONE_MODES: dict[str, tuple[str, ...]] = {
    b: ("vanilla", "fairdd", "cobra", *REAL_SET_MODES) for b in ("dc", "idc", "cafe", "mtt")
}

ERR_OUTSIDE_WORKSPACE = "{field} must be a relative path inside the workspace (no leading '/', no '..'); got {value!r}"
ERR_NOISE_SUM = "data.group_noise: flip_fraction + hide_fraction must be at most 1; got {flip} + {hide}"
ERR_DUPLICATE_MODES = "synthesis.modes lists {dupes} more than once; list each of {allowed} at most once"
ERR_OTHER_DATASET_SECTION = (
    "data.{section} is set but data.dataset is {dataset!r}; data.{section} only applies to "
    "data.dataset: {section} (remove it, or set data.dataset: {section})"
)
ERR_NOT_FOR_DATASET = (
    "data.{key} only applies to the datasets {allowed}; data.dataset is {dataset!r} (remove data.{key}, "
    "or choose one of those datasets)"
)
#: data keys that only the colour-biased datasets read (fdd.datasets.prepare -> fdd.datasets.colored).
COLORED_KEYS: tuple[str, ...] = ("bias", "shading", "train_correlation", "test_correlation", "num_confusing_colors")
ERR_IDX_DIR_DATASET = "data.idx_dir only applies to the datasets {allowed}; data.dataset is {dataset!r}"
ERR_COLORED_SIZE = (
    "data.image_size must be 32 (or null) for {dataset!r}: C-MNIST images are 28x28 padded to 32x32; got {size}"
)
ERR_NORM_PAIR = (
    "data.mean and data.std must be given together (3 values each, one per RGB channel); got mean={mean}, std={std}"
)
ERR_FOLDER_PATHS = "data.dataset 'folder' needs data.folder.csv and data.folder.images (paths inside the workspace); got csv={csv!r}, images={images!r}"
ERR_BACKBONE_MODES = "synthesis.backbone={backbone!r} supports modes {allowed}; synthesis.modes lists {bad}"
ERR_IDC_INIT = (
    "synthesis.backbone='idc' supports synthesis.init 'real' or 'noise' (it encodes factor^2 real images per "
    "stored image); got {init!r}"
)
ERR_LAMBDA_SCOPE = (
    "synthesis.barycenter_lambda applies to synthesis.backbone 'dm' in mode 'cobra' only; got backbone {backbone!r} "
    "and modes {modes} (leave it at 1.0, or use backbone dm with mode cobra)"
)
ERR_GDRO_INIT = (
    "synthesis.modes lists 'vanilla-gdro', whose audit needs each synthetic image's group: it is the group of the "
    "real image the image starts from, so synthesis.init must be 'real', 'stratified' or 'barycenter'; got {init!r}"
)
ERR_MTT_EPOCHS = (
    "synthesis.mtt: max_start_epoch ({start}) + expert_epochs ({span}) must not exceed train_epochs ({train}), "
    "the length of the saved expert trajectories"
)


ERR_TABULAR_SETTINGS = (
    "data.dataset={dataset!r} is tabular (rows, not images) and needs {fixes}; "
    "flows/presets/adult.yaml sets them (fdd run --preset adult)"
)
ERR_MLP_NORM = "network.architecture='mlp' supports only network.norm='none'; got {norm!r}"
ERR_MLP_DEPTH = "network.architecture='mlp' needs an integer network.depth (hidden layers, 1..8); got 'auto'"


class _Section(BaseModel):
    # allow_inf_nan=False: every float setting must be a finite number (an infinite learning rate
    # passes `> 0` and trains to a constant classifier whose DEO of 0 reads as perfectly fair)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: keys that change how a run is carried out, logged or checkpointed, never what it
    #: writes; :meth:`output_settings` leaves them out (stage cache keys, provenance, and
    #: the ``params:`` of ``dvc.yaml``, which a test keeps in step)
    NON_OUTPUT_KEYS: ClassVar[tuple[str, ...]] = ()

    def digest(self) -> str:
        """Stable hash of this section's values (all of them)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def output_settings(self) -> dict[str, Any]:
        """The values that can change a stage's outputs, as JSON data.

        Every field except :attr:`NON_OUTPUT_KEYS`, recursively through sub-sections;
        two configurations with equal ``output_settings()`` give the same artifacts.
        """
        dump = self.model_dump(mode="json")
        settings: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name in self.NON_OUTPUT_KEYS:
                continue
            value = getattr(self, name)
            settings[name] = value.output_settings() if isinstance(value, _Section) else dump[name]
        return settings

    def output_digest(self) -> str:
        """Stable hash of :meth:`output_settings`."""
        text = json.dumps(self.output_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


#: The base of every section: frozen, unknown keys rejected (the flows' sections extend it too).
Section = _Section


class RuntimeConfig(_Section):
    """Where and how to run: device, base seed, threads."""

    NON_OUTPUT_KEYS: ClassVar[tuple[str, ...]] = ("device", "num_threads")  # stages take the device as an argument

    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="'auto' picks CUDA when present")
    seed: int = Field(0, ge=0)
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU")


class Cifar10sConfig(_Section):
    """CIFAR10-S (docs/method.md section 4): CIFAR-10 with a grayscale / colour skew."""

    skew: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="share of each class in its majority group: grayscale for classes 0-4, colour for 5-9",
    )


class CelebAConfig(_Section):
    """CelebA through its standard files (``<root>/celeba/``): target and group attributes by name."""

    target: str = Field("Attractive", description="attribute predicted (one of the 40 of list_attr_celeba.txt)")
    group: str = Field("Male", description="protected attribute (another of the 40)")
    crop: int = Field(178, ge=8, description="side of the centre crop applied before resizing")
    test_split: Literal["test", "valid"] = Field(
        "test", description="partition of list_eval_partition.txt used as test split"
    )


class UTKFaceConfig(_Section):
    """UTKFace (``<root>/UTKFace/[age]_[gender]_[race]_[date&time].jpg``): age buckets by race."""

    age_edges: tuple[int, ...] = Field(
        (20, 40), min_length=1, description="bucket edges: (20, 40) gives the classes <20, 20-39, >=40"
    )
    include_others: bool = Field(
        False, description="keep race 4 (Others) as a fifth group; the benchmark uses races 0-3"
    )
    test_per_cell: int = Field(
        100, ge=1, description="balanced test split: min(cell size, this) images per (age, race) cell"
    )

    @field_validator("age_edges")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(b <= a for a, b in zip(value, value[1:])) or value[0] <= 0:
            raise ValueError(f"data.utkface.age_edges must be positive and strictly increasing; got {value}")
        return value


class BFFHQConfig(_Section):
    """BFFHQ in the LfF / DFA release layout (``<root>/bffhq/``): age label, gender bias."""

    conflict: str = Field("0.5pct", description="train folder under bffhq/ holding align/ and conflict/")
    test_split: Literal["test", "valid"] = Field("test", description="folder of bffhq/ used as test split")


class FolderConfig(_Section):
    """Your own images: a folder of image files and a CSV naming each file's label and group."""

    csv: str | None = Field(None, description="CSV file (inside the workspace) with one row per image")
    images: str | None = Field(None, description="folder (inside the workspace) the CSV's paths are relative to")
    path_column: str = "path"
    label_column: str = "label"
    group_column: str = "group"
    split_column: str | None = Field(
        None, description="column with 'train' / 'test' per row; None: a stratified random split by test_fraction"
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @field_validator("csv")
    @classmethod
    def _csv_inside(cls, value: str | None) -> str | None:
        return _inside_workspace(value, "data.folder.csv")

    @field_validator("images")
    @classmethod
    def _images_inside(cls, value: str | None) -> str | None:
        return _inside_workspace(value, "data.folder.images")


class TabularConfig(_Section):
    """Tabular data (``data.dataset: adult``): protected attribute, files and preprocessing.

    See ``fdd/datasets/adult.py`` and ``docs/tabular.md``: numeric columns are standardised with the
    train statistics, categorical ones one-hot encoded over the train categories.
    """

    protected: Literal["sex", "race"] = Field("sex", description="protected group: sex (2) or race (5 groups)")
    group_feature: bool = Field(False, description="also give the protected column to the models as a one-hot feature")
    missing: Literal["drop", "category"] = Field(
        "drop", description="rows with '?' values: drop them, or keep '?' as its own category"
    )
    csv: str | None = Field(
        None, description="your own Adult-format CSV with a header row (None: the UCI files; docs/tabular.md)"
    )
    test_csv: str | None = Field(
        None, description="test split for csv; None splits csv by test_fraction, stratified by class and group"
    )
    test_fraction: float = Field(1 / 3, gt=0.0, lt=1.0)

    @field_validator("csv", "test_csv")
    @classmethod
    def _csv_inside(cls, value: str | None, info: Any) -> str | None:
        return _inside_workspace(value, f"data.tabular.{info.field_name}")


class GroupNoiseConfig(_Section):
    """Imperfect group labels in the training split (``fdd/datasets/group_noise.py``); the test split is untouched."""

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
    shading: Literal["binary", "intensity", "reference"] = Field(
        "binary",
        description=(
            "C-MNIST / C-FMNIST pixels: 'binary' (x >= 128, as docs/method.md states), 'intensity' (grey level "
            "scales the colour, as the public FairDD-line C-FMNIST builder does; keeps Fashion-MNIST texture) or "
            "'reference' (that builder's exact output: intensity foreground, and its uint8-overflowing background, "
            "on which the published C-FMNIST background numbers were measured; fdd.datasets.colored.reference_background_table)"
        ),
    )
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
    tabular: TabularConfig = TabularConfig()

    image_size: int | None = Field(
        None,
        ge=8,
        le=512,
        description="side of the square images after centre crop and resize; None: the dataset's "
        "standard (32 for C-MNIST and CIFAR10-S, 64 for CelebA, UTKFace, BFFHQ and folder)",
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="per-channel normalisation mean; None: the dataset's standard (fdd.datasets.image_sources)"
    )
    std: tuple[float, float, float] | None = Field(None, description="per-channel normalisation std (with mean)")
    cifar10s: Cifar10sConfig = Cifar10sConfig()
    celeba: CelebAConfig = CelebAConfig()
    utkface: UTKFaceConfig = UTKFaceConfig()
    bffhq: BFFHQConfig = BFFHQConfig()
    folder: FolderConfig = FolderConfig()
    group_noise: GroupNoiseConfig = GroupNoiseConfig()

    @field_validator("root")
    @classmethod
    def _root_inside(cls, value: str) -> str:
        return _inside_workspace(value, "data.root")  # type: ignore[return-value]

    @field_validator("idx_dir")
    @classmethod
    def _idx_inside(cls, value: str | None) -> str | None:
        return _inside_workspace(value, "data.idx_dir")

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and any(not s > 0 for s in value):
            raise ValueError(f"data.std must be positive for every channel; got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        for section in IMAGE_DATASETS:  # a non-default sub-section of another dataset is a mistake
            value = getattr(self, section)
            if section != self.dataset and value != type(value)():
                raise ValueError(ERR_OTHER_DATASET_SECTION.format(section=section, dataset=self.dataset))
        if self.dataset not in COLORED_DATASETS:  # settings the chosen dataset would silently ignore
            for key in COLORED_KEYS:
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(
                        ERR_NOT_FOR_DATASET.format(key=key, allowed=list(COLORED_DATASETS), dataset=self.dataset)
                    )
        if self.dataset not in IMAGE_DATASETS and self.mean is not None:
            raise ValueError(ERR_NOT_FOR_DATASET.format(key="mean", allowed=list(IMAGE_DATASETS), dataset=self.dataset))
        if self.dataset not in TABULAR_DATASETS and self.tabular != TabularConfig():
            raise ValueError(
                ERR_NOT_FOR_DATASET.format(key="tabular", allowed=list(TABULAR_DATASETS), dataset=self.dataset)
            )
        if self.idx_dir is not None and self.dataset not in COLORED_DATASETS:
            raise ValueError(ERR_IDX_DIR_DATASET.format(allowed=list(COLORED_DATASETS), dataset=self.dataset))
        if self.dataset in COLORED_DATASETS and self.image_size not in (None, 32):
            raise ValueError(ERR_COLORED_SIZE.format(dataset=self.dataset, size=self.image_size))
        if (self.mean is None) != (self.std is None):
            raise ValueError(ERR_NORM_PAIR.format(mean=self.mean, std=self.std))
        if self.dataset == "folder" and (self.folder.csv is None or self.folder.images is None):
            raise ValueError(ERR_FOLDER_PATHS.format(csv=self.folder.csv, images=self.folder.images))
        return self


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
    depth: int | Literal["auto"] = Field(
        3, description="conv blocks; 'auto': log2(image side) - 2 (3 for 32x32, 4 for 64x64: 4x4 final maps)"
    )
    norm: Literal["instancenorm", "batchnorm", "none"] = "instancenorm"
    pooling: Literal["avgpooling", "maxpooling", "none"] = "avgpooling"
    architecture: Literal["convnet", "mlp"] = Field(
        "convnet", description="mlp: depth hidden layers of width units on flattened inputs (tabular data)"
    )

    @field_validator("depth")
    @classmethod
    def _depth_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 8:
            raise ValueError(f"network.depth must be 'auto' or an integer in 1..8; got {value}")
        return value

    def resolved_depth(self, image_size: int) -> int:
        """``depth``, or for ``'auto'``: :math:`\\max(1, \\mathrm{round}(\\log_2 s) - 2)` for side ``s``.

        The reference networks pool down to 4x4 maps: ConvNet-3 on 32x32, ConvNet-4
        ("ConvNetD4") on 64x64, so the embedding stays ``width * 16`` values.
        """
        if self.depth != "auto":
            return int(self.depth)
        return max(1, round(math.log2(image_size)) - 2)


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


class GradientMatchingConfig(_Section):
    """DC's schedule (docs/method.md section 2): outer loops of matching, inner loops of network training.

    ``None`` loops follow the IPC: 1 -> (1, 1), <= 10 -> (10, 50), <= 50 -> (50, 10), else (100, 10).
    """

    outer_loop: int | None = Field(None, ge=1, description="matching steps per fresh network; None: by IPC")
    inner_loop: int | None = Field(None, ge=0, description="network epochs on the synthetic set between them")
    lr_net: float = Field(0.01, gt=0, description="SGD learning rate of the inner-loop network training")
    batch_train: int = Field(256, ge=1, description="batch size of the inner-loop network training")

    def resolved_loops(self, ipc: int) -> tuple[int, int]:
        """(outer_loop, inner_loop) of DC for ``ipc`` unless set explicitly."""
        outer, inner = (1, 1) if ipc == 1 else (10, 50) if ipc <= 10 else (50, 10) if ipc <= 50 else (100, 10)
        return (self.outer_loop or outer, inner if self.inner_loop is None else self.inner_loop)


class IDCConfig(GradientMatchingConfig):
    """IDC: DC on a multi-formation decoding of the stored images."""

    factor: int = Field(2, ge=1, le=8, description="each stored image decodes into factor**2 images")


class CAFEConfig(GradientMatchingConfig):
    """CAFE: layer-wise feature alignment with DC's outer/inner schedule."""


class MTTConfig(_Section):
    """MTT: trajectory matching against expert networks trained on the real data."""

    num_experts: int = Field(3, ge=1, le=100)
    train_epochs: int = Field(6, ge=1, description="epochs of each expert trajectory (saved after every epoch)")
    lr_teacher: float = Field(0.01, gt=0)
    expert_batch: int = Field(256, ge=1)
    expert_epochs: int = Field(2, ge=1, description="M: the student matches the expert M epochs ahead")
    max_start_epoch: int = Field(4, ge=1, description="start epochs are drawn from [0, max_start_epoch)")
    syn_steps: int = Field(20, ge=1, description="N: unrolled student steps on the synthetic set")
    batch_syn: int | None = Field(None, ge=1, description="synthetic mini-batch of a student step; None: all")
    lr_lr: float = Field(1e-5, gt=0, description="SGD learning rate of the learnable student learning rate")
    syn_lr_init: float = Field(0.01, gt=0, description="initial student learning rate (lr_teacher in MTT)")

    @model_validator(mode="after")
    def _trajectory_long_enough(self) -> MTTConfig:
        if self.max_start_epoch + self.expert_epochs > self.train_epochs:
            raise ValueError(
                ERR_MTT_EPOCHS.format(start=self.max_start_epoch, span=self.expert_epochs, train=self.train_epochs)
            )
        return self


class SynthesisConfig(_Section):
    """Synthetic-set optimisation (docs/method.md section 2); ``dc`` / ``idc`` / ``cafe`` / ``mtt`` hold backbone settings."""

    #: a mode's synthetic set does not depend on the other modes listed, nor on the
    #: progress and checkpoint cadence: adding a mode runs only that mode's stages
    NON_OUTPUT_KEYS: ClassVar[tuple[str, ...]] = ("modes", "log_every", "checkpoint_every")

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
        "support of the uniform W2 barycenter of the groups (fdd/distillation/initialisation.py); stratified: "
        "real images drawn round-robin over the groups",
    )
    dsa: bool = True
    warmup_epochs: int | None = Field(
        None,
        ge=0,
        description="DM in cobra, cobra-w2 and cobra-bures: embedder training epochs before matching; None: 10 / 50 / 100 by IPC",
    )
    barycenter_lambda: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="DM in mode cobra: the target's group weights, (1 - lambda) x proportional (0: vanilla's pooled "
        "target) + lambda x uniform (1, the default: COBRA's barycenter); the fairness-accuracy frontier",
    )
    cui_bandwidth: float = Field(
        0.5,
        gt=0,
        le=100,
        description="cui-reweight (DM): the Gaussian kernel's squared bandwidth as a share of the class's mean "
        "squared embedding distance (fdd.distillation.dm.kde_weights); smaller: sharper density, stronger reweighting",
    )
    w2_solver: Literal["emd", "sinkhorn"] = Field(
        "emd", description="cobra-w2: exact OT (POT network simplex, CPU) or debiased Sinkhorn (batched, on the device)"
    )
    w2_reg: float = Field(0.05, gt=0, description="cobra-w2 with sinkhorn: epsilon relative to the mean cost")
    w2_reduction: Literal["sum", "mean"] = Field(
        "sum",
        description="cobra-w2/-bures: sum over groups (FairDD's scale, default) or mean (1/G weights); same minimiser",
    )
    warmup_lr: float = Field(0.01, gt=0)
    warmup_batch: int = Field(256, ge=1)
    warmup_momentum: float = Field(
        0.0, ge=0, lt=1, description="momentum of cobra's warm-up SGD (the reference code: plain SGD, 0)"
    )
    warmup_weight_decay: float = Field(0.0, ge=0, description="weight decay of cobra's warm-up SGD (reference: 0)")
    log_every: int = Field(10, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: embeddings under bfloat16 autocast (CUDA); losses stay in fp32"
    )
    channels_last: bool = Field(False, description="channels-last memory format for the convolutions")
    compile: bool = Field(False, description="torch.compile the embedding network (pays on GPUs for long runs)")
    cuda_graph: bool = Field(
        False,
        description=(
            "replay captured CUDA graphs (fdd.distillation.cuda_graph): DM in vanilla / fairdd / cobra, each whole iteration "
            "after the first three (when every class fills batch_real); DM in cobra-w2 / cobra-bures, the embedder "
            "warm-up; DC / IDC / CAFE, the inner loop. The whole DM iteration is also captured with precision bf16 "
            "and channels_last; the other captures apply with fp32 and contiguous format only. CPU runs ignore it"
        ),
    )
    checkpoint_every: int = Field(
        50, ge=0, description="save a resumable checkpoint every N iterations (0: never; also on SIGTERM/SIGINT)"
    )
    dc: GradientMatchingConfig = GradientMatchingConfig()
    idc: IDCConfig = IDCConfig()
    cafe: CAFEConfig = CAFEConfig()
    mtt: MTTConfig = MTTConfig()

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({m for m in value if value.count(m) > 1})
        if dupes:
            raise ValueError(ERR_DUPLICATE_MODES.format(dupes=dupes, allowed=list(MODES)))
        if not value:
            raise ValueError(f"synthesis.modes must list at least one of {list(MODES)}")
        return value

    @model_validator(mode="after")
    def _modes_of_backbone(self) -> SynthesisConfig:
        allowed = BACKBONE_MODES.get(self.backbone, MODES)
        bad = [m for m in self.modes if m not in allowed]
        if bad:
            raise ValueError(ERR_BACKBONE_MODES.format(backbone=self.backbone, allowed=list(allowed), bad=bad))
        if self.backbone == "idc" and self.init not in ("real", "noise"):
            raise ValueError(ERR_IDC_INIT.format(init=self.init))
        if self.barycenter_lambda != 1.0 and (self.backbone != "dm" or "cobra" not in self.modes):
            raise ValueError(ERR_LAMBDA_SCOPE.format(backbone=self.backbone, modes=list(self.modes)))
        if "vanilla-gdro" in self.modes and self.init == "noise":
            raise ValueError(ERR_GDRO_INIT.format(init=self.init))
        return self

    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 10 if self.ipc <= 10 else 50 if self.ipc <= 50 else 100


#: The evaluation architectures of ``audit.architectures`` (docs/evaluation.md): the base names of
#: :func:`parse_architecture`'s specs, and per base the options it accepts.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "matching": (),
    "convnet": (
        "w<width>",
        "d<depth>",
        "in",
        "bn",
        "nonorm",
        "avgpool",
        "maxpool",
        "nopool",
        "relu",
        "sigmoid",
        "leakyrelu",
    ),
    "alexnet": ("in", "bn", "nonorm"),
    "vgg11": ("in", "bn", "nonorm"),
    "resnet18": ("in", "bn", "nonorm"),
    "mlp": ("w<width>", "d<depth>"),
}
#: The norm each base uses when its spec names none: the reference's network of that name (its AlexNet has
#: none, its VGG11 and ResNet18 instance norm); ``-bn`` is then the reference's ``...BN`` network.
DEFAULT_NORMS: dict[str, str] = {
    "convnet": "instancenorm",
    "alexnet": "none",
    "vgg11": "instancenorm",
    "resnet18": "instancenorm",
    "mlp": "none",
}
#: The width and depth a spec leaves to its base (a ConvNet's depth follows the image side, as
#: ``network.depth: auto``, so it has none here).
DEFAULT_WIDTHS: dict[str, int] = {"convnet": 128, "mlp": 128}
DEFAULT_DEPTHS: dict[str, int] = {"mlp": 2}
_NORM_OPTIONS = {"in": "instancenorm", "bn": "batchnorm", "nonorm": "none"}
_POOL_OPTIONS = {"avgpool": "avgpooling", "maxpool": "maxpooling", "nopool": "none"}
_ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
ERR_ARCHITECTURE = (
    "audit.architectures: {name!r} is not an evaluation architecture: {why}; a spec is a base of {bases} "
    "followed by '-'-separated options, per base: {options} (e.g. 'convnet-w64-d4-bn-maxpool', 'resnet18-bn')"
)
ERR_DUPLICATE_ARCHITECTURES = (
    "audit.architectures lists one network more than once: {dupes}; list each architecture once "
    "(an option equal to the base's default names the same network, e.g. 'resnet18' and 'resnet18-in')"
)
ERR_TABULAR_ARCHITECTURES = (
    "data.dataset={dataset!r} is tabular: audit.architectures may list only 'matching' and 'mlp[-w<width>][-d<depth>]'; "
    "got {bad}"
)


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """A parsed ``audit.architectures`` entry (:func:`parse_architecture`).

    ``width`` / ``depth`` are None where the spec leaves them to the base's default (the
    ConvNet's depth then follows the image side, as ``network.depth: auto``).
    """

    name: str
    base: str
    width: int | None = None
    depth: int | None = None
    norm: str = "none"
    pooling: str = "avgpooling"
    activation: str = "relu"

    @property
    def network(self) -> tuple[str, int | None, int | None, str, str, str]:
        """The network this spec builds, whatever its spelling: base, width, depth, norm, pooling and
        activation, the base's defaults filled in (``resnet18`` and ``resnet18-in``, ``convnet`` and
        ``convnet-w128`` are one network; a ConvNet depth left to the image side stays None)."""
        width = self.width if self.width is not None else DEFAULT_WIDTHS.get(self.base)
        depth = self.depth if self.depth is not None else DEFAULT_DEPTHS.get(self.base)
        return (self.base, width, depth, self.norm, self.pooling, self.activation)


def parse_architecture(name: str) -> ArchitectureSpec:
    """Parse an evaluation-architecture spec: ``base[-option]...``.

    ``base`` is a key of :data:`ARCHITECTURES`; the options (any order, each at most once per
    kind) are ``w<int>`` (width: channels of the ConvNet, hidden units of the MLP), ``d<int>``
    (depth: conv blocks / hidden layers), a norm (``in`` instance norm, ``bn`` batch norm,
    ``nonorm``), a pooling (``avgpool``, ``maxpool``, ``nopool``) and an activation (``relu``,
    ``sigmoid``, ``leakyrelu``), each only where :data:`ARCHITECTURES` lists it for the base.

    Raises
    ------
    ValueError
        Naming the spec, what is wrong and every base with its options.
    """

    def bad(why: str) -> ValueError:
        options = "; ".join(f"{b}: {', '.join(o) or '(none)'}" for b, o in ARCHITECTURES.items())
        return ValueError(ERR_ARCHITECTURE.format(name=name, why=why, bases=list(ARCHITECTURES), options=options))

    if not isinstance(name, str) or not name:
        raise bad("empty")
    base, *options = name.split("-")
    if base not in ARCHITECTURES:
        raise bad(f"unknown base {base!r}")
    allowed = ARCHITECTURES[base]
    values: dict[str, Any] = {"norm": DEFAULT_NORMS.get(base, "none")}
    seen: set[str] = set()
    for option in options:
        kind: str
        value: int | str
        if (
            option[:1] in ("w", "d")
            and option[1:].isdigit()
            and f"{option[0]}<{'width' if option[0] == 'w' else 'depth'}>" in allowed
        ):
            kind, value = ("width", int(option[1:])) if option[0] == "w" else ("depth", int(option[1:]))
            limit = 4096 if kind == "width" else 8
            if not 1 <= value <= limit:
                raise bad(f"{kind} must be in 1..{limit}, got {value}")
        elif option in _NORM_OPTIONS and option in allowed:
            kind, value = "norm", _NORM_OPTIONS[option]
        elif option in _POOL_OPTIONS and option in allowed:
            kind, value = "pooling", _POOL_OPTIONS[option]
        elif option in _ACTIVATIONS and option in allowed:
            kind, value = "activation", option
        else:
            raise bad(f"option {option!r} does not apply to {base!r}")
        if kind in seen:
            raise bad(f"it sets the {kind} twice")
        seen.add(kind)
        values[kind] = value
    return ArchitectureSpec(name=name, base=base, **values)


#: The augmentations of the audit's training (``audit.augmentation``; docs/evaluation.md).
AUDIT_AUGMENTATIONS: tuple[str, ...] = ("auto", "dsa", "dc", "none")
#: The DSA families (fdd.distillation.augment) and the reference's default strategy string.
DSA_FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: The families of DC's (non-differentiable) evaluation augmentation (fdd.distillation.augment.dc_augment).
DC_AUGMENT_FAMILIES: tuple[str, ...] = ("crop", "scale", "rotate", "noise")
#: ``audit.augmentation: auto``: the augmentation the reference code evaluates each backbone's sets with
#: (docs/evaluation.md): DSA for DM and MTT, DC's ``get_daparam`` augmentation for DC and CAFE, none for IDC.
#: A set without a recorded backbone (a file made elsewhere) is audited with DSA.
REFERENCE_AUGMENTATION: dict[str, str] = {"dm": "dsa", "mtt": "dsa", "dc": "dc", "cafe": "dc", "idc": "none"}
ERR_STRATEGY_FAMILIES = "{key} {value!r} names unknown families {unknown}; a strategy joins with '_' some of {allowed}"
ERR_AUGMENTATION_WITHOUT_DSA = (
    "audit.augmentation={augmentation!r} needs audit.dsa: true (audit.dsa: false turns every evaluation "
    "augmentation off); set audit.augmentation to 'none' or 'auto', or audit.dsa to true"
)


def _check_strategy(value: str, *, key: str, allowed: tuple[str, ...]) -> str:
    names = [] if value.lower() == "none" else value.split("_")
    unknown = [n for n in names if n not in allowed]
    if unknown or not value:
        raise ValueError(ERR_STRATEGY_FAMILIES.format(key=key, value=value, unknown=unknown, allowed=list(allowed)))
    return value


class AuditConfig(_Section):
    """Evaluation of a synthetic set: train fresh ConvNets, test on the real test split."""

    num_eval: int = Field(5, ge=1, le=100)
    epochs: int = Field(1500, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1)
    dsa: bool = Field(True, description="augment the evaluation training at all (false: never, e.g. on tabular data)")
    test_batch_size: int = Field(2048, ge=1)
    seed: int = Field(0, ge=0)
    stack_models: bool = Field(
        True, description="train the num_eval networks together as one vectorised model (torch.func)"
    )
    cuda_graph: bool = Field(
        False,
        description="replay each epoch of the stacked training as one captured CUDA graph "
        "(stack_models only; CUDA devices; ignored on the CPU)",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: the evaluation models' forward passes under bfloat16 autocast (weights, gradients, "
        "losses and updates stay fp32); stacked training (stack_models) only",
    )
    stack_forward: Literal["auto", "vmap", "loop"] = Field(
        "auto",
        description="stacked training's forward pass: one torch.func.vmap over the models (grouped convolutions), "
        "or a loop over the models inside the step (plain convolutions; same gradients); auto: loop on a CUDA "
        "device with audit.cuda_graph (H200: 9% faster at IPC 10, 23% at IPC 50), vmap otherwise",
    )
    compile: bool = Field(
        False,
        description="torch.compile the stacked training's forward pass and its DSA (stack_models with num_eval > 1; "
        "pays on GPUs, where the compiled kernels fuse the norm, activation and pooling with their gradients; "
        "compiling takes tens of seconds once per process and batch shape)",
    )
    full_data_epochs: int = Field(
        20,
        ge=1,
        description="epochs of the audit's training in mode full-data (the whole train split, in minibatches of "
        "batch_size), in place of epochs, which is meant for sets of a few images per class (docs/evaluation.md)",
    )
    gdro_step_size: float = Field(
        0.01,
        gt=0,
        le=10,
        description="vanilla-gdro: the step size eta of Group DRO's exponentiated-gradient group weights "
        "(fdd.fairness.gdro; Sagawa et al. 2020)",
    )
    architectures: tuple[str, ...] = Field(
        ("matching",),
        min_length=1,
        description="networks trained on the synthetic set, each audited on its own: 'matching' (the network "
        "section's network, which synthesis matched with), or a spec of fdd.config.parse_architecture such as "
        "'convnet-w64', 'alexnet', 'vgg11-bn', 'resnet18', 'resnet18-bn', 'mlp' (docs/evaluation.md); the first one's "
        "figures are metrics.json's headline",
    )

    augmentation: Literal["auto", "dsa", "dc", "none"] = Field(
        "auto",
        description="augmentation of the evaluation training: 'auto' follows the reference per backbone of the "
        "set (DSA for DM and MTT sets, DC's get_daparam augmentation for DC and CAFE, none for IDC; DSA for a set "
        "of unknown backbone), or 'dsa', 'dc', 'none' for every set (docs/evaluation.md)",
    )
    dsa_strategy: str = Field(
        DEFAULT_DSA_STRATEGY,
        description="DSA families of the evaluation training, joined with '_' (the reference's --dsa_strategy)",
    )
    dc_strategy: str | None = Field(
        None,
        description="DC augmentation families (crop, scale, rotate, noise joined with '_', or 'none'); None: "
        "the reference's get_daparam choice ('crop_noise' for a batch-norm ConvNet, else 'none')",
    )
    learned_lr: bool = Field(
        True,
        description="train on a set that carries a learned learning rate (MTT's syn_lr, in synthetic.pt's "
        "provenance) with that rate instead of audit.lr, as the MTT reference evaluates",
    )

    @field_validator("dsa_strategy")
    @classmethod
    def _dsa_families(cls, value: str) -> str:
        return _check_strategy(value, key="audit.dsa_strategy", allowed=DSA_FAMILIES)

    @field_validator("dc_strategy")
    @classmethod
    def _dc_families(cls, value: str | None) -> str | None:
        return None if value is None else _check_strategy(value, key="audit.dc_strategy", allowed=DC_AUGMENT_FAMILIES)

    @model_validator(mode="after")
    def _augmentation_needs_dsa(self) -> AuditConfig:
        if not self.dsa and self.augmentation in ("dsa", "dc"):
            raise ValueError(ERR_AUGMENTATION_WITHOUT_DSA.format(augmentation=self.augmentation))
        return self

    def resolved_stack_forward(self, device_type: str) -> str:
        """``stack_forward`` on a device of ``device_type`` ('cuda', 'cpu', ...): 'auto' is 'loop' on
        CUDA with ``cuda_graph``, else 'vmap'.

        Measured on an H200 (benchmarks/results/speed_variants_h200): 5 stacked models of 1501
        epochs took 11.0 s with the loop against 12.2 s with vmap at IPC 10, 42.0 s against 54.9 s at
        IPC 50, both captured as CUDA graphs. Eagerly (no graph, the CPU) each model's forward in the
        loop is a launch of its own, so vmap's single grouped call stays the default there.
        """
        if self.stack_forward != "auto":
            return self.stack_forward
        return "loop" if device_type == "cuda" and self.cuda_graph else "vmap"

    def resolved_augmentation(self, backbone: str | None) -> str:
        """The augmentation a set of ``backbone`` (None: unknown) is audited with: 'dsa', 'dc' or 'none'.

        ``dsa: false`` turns it off; ``auto`` looks the backbone up in :data:`REFERENCE_AUGMENTATION`.
        """
        if not self.dsa:
            return "none"
        if self.augmentation != "auto":
            return self.augmentation
        return REFERENCE_AUGMENTATION.get(backbone or "", "dsa")

    def epochs_for(self, mode: str) -> int:
        """The training epochs of the audit of ``mode``: :attr:`full_data_epochs` for ``full-data``, else :attr:`epochs`."""
        return self.full_data_epochs if mode == "full-data" else self.epochs

    @field_validator("architectures")
    @classmethod
    def _known_architectures(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks: dict[tuple[Any, ...], list[str]] = {}
        for name in value:
            networks.setdefault(parse_architecture(name).network, []).append(name)
        dupes = [" = ".join(repr(n) for n in names) for names in networks.values() if len(names) > 1]
        if dupes:
            raise ValueError(ERR_DUPLICATE_ARCHITECTURES.format(dupes="; ".join(dupes)))
        return value


class PipelineConfig(_Section):
    """The settings of one pipeline run: every section of ``params.yaml`` that a stage reads.

    The orchestration sections (``sweep``, ``schedules``) belong to the flows, whose
    configuration extends this one (``flows.configuration.FlowConfig``).
    """

    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    features: FeaturesConfig = FeaturesConfig()
    barycenters: BarycenterConfig = BarycenterConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _tabular_settings(self) -> PipelineConfig:
        if self.network.architecture == "mlp" and self.network.norm != "none":
            raise ValueError(ERR_MLP_NORM.format(norm=self.network.norm))
        if self.network.architecture == "mlp" and self.network.depth == "auto":
            raise ValueError(ERR_MLP_DEPTH)
        if self.data.dataset in TABULAR_DATASETS:
            fixes = [
                text
                for text, ok in (
                    ("network.architecture=mlp", self.network.architecture == "mlp"),
                    ("synthesis.dsa=false", not self.synthesis.dsa),
                    ("audit.dsa=false", not self.audit.dsa),
                )
                if not ok
            ]
            if fixes:
                raise ValueError(ERR_TABULAR_SETTINGS.format(dataset=self.data.dataset, fixes=", ".join(fixes)))
            image_nets = [a for a in self.audit.architectures if parse_architecture(a).base not in ("matching", "mlp")]
            if image_nets:
                raise ValueError(ERR_TABULAR_ARCHITECTURES.format(dataset=self.data.dataset, bad=image_nets))
        return self


ConfigT = TypeVar("ConfigT", bound=PipelineConfig)


class ConfigError(ValueError):
    """A configuration that does not validate; the message lists every bad key."""


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}' (not a setting of this section)"
    if not error["loc"] or isinstance(error.get("input"), dict):  # a check across keys (model validator) of
        return f"{where}: {error['msg']}"  # the top level or one section: its message names the keys
    received = error.get("input")
    return f"'{where}': {error['msg']} (got {received!r})"


def parse_config(raw: dict[str, Any] | None, *, schema: type[ConfigT] = PipelineConfig) -> ConfigT:  # type: ignore[assignment]
    """Validate a plain mapping (e.g. parsed ``params.yaml``) into a :class:`PipelineConfig`.

    ``schema`` is the model to validate against: :class:`PipelineConfig` or a model
    extending it with more sections (the flows' configuration).

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
        return schema.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        sections = ", ".join(schema.model_fields)
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines) + f"\n(sections: {sections})") from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``, section by section."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
