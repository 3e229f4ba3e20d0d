"""Group fairness metrics for classifiers evaluated on a protected attribute.

Every function here is pure: it takes predicted labels, true labels and one
protected-group id per sample (``sensitive_features``), counts them with
:func:`torch.bincount` (no Python loop over samples, classes or groups) and returns a
small immutable result object.

The central quantity is the per-group true-positive rate (recall) of each class,

.. math::

    A(g, l) = \\frac{\\#\\{\\hat y = l,\\ y = l,\\ a = g\\}}{\\#\\{y = l,\\ a = g\\}},

from which the benchmark's equalised-opportunity figures follow:

.. math::

    \\mathrm{gap}(l) = \\max_g A(g, l) - \\min_g A(g, l), \\qquad
    \\mathrm{DEO_M} = \\max_l \\mathrm{gap}(l), \\qquad
    \\mathrm{DEO_A} = \\operatorname{mean}_l \\mathrm{gap}(l).

Conventions (the same everywhere in this module)
------------------------------------------------
* A cell ``(g, l)`` without any sample of class ``l`` in group ``g`` has an undefined
  recall, stored as NaN; its support (count) is 0.
* ``gap(l)`` is taken over the groups that have support in class ``l``. With exactly one
  such group the gap is 0; with none the gap is NaN and class ``l`` is left out of
  ``DEO_M`` and ``DEO_A`` (the mean runs over the classes with support, not over all
  ``num_classes``). Every such case is listed in :attr:`FairnessReport.notes`.
* The sufficiency (precision) gap uses the same rule with "groups that received at least
  one prediction of class ``l``" in place of "groups with support".
* :class:`RecallTable` holds fractions in [0, 1]; every rate in :class:`FairnessReport`
  (accuracy, recalls, precisions, gaps, DEO) is a percentage in [0, 100].
* :func:`summarize_runs` uses the population standard deviation (``ddof=0``) by default,
  which is what the research code reports (``numpy.std``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "RecallTable",
    "FairnessReport",
    "group_class_recall",
    "fairness_report",
    "summarize_runs",
]

ArrayLike = Tensor | np.ndarray | Sequence[int]
StdKind = Literal["population", "sample"]

ERR_NOT_1D = (
    "{name} must be a 1-D array of integer ids (one per sample); got shape {shape}. "
    "Pass class predictions (e.g. logits.argmax(dim=1)), not scores."
)
ERR_LENGTH_MISMATCH = (
    "y_pred, y_true and sensitive_features must have the same length; "
    "got y_pred={n_pred}, y_true={n_true}, sensitive_features={n_group}"
)
ERR_EMPTY = "fairness metrics need at least one sample; got N=0"
ERR_NAN = "{name} contains {count} NaN values; ids must be integers"
ERR_DTYPE = "{name} must have an integer dtype; got {dtype}"
ERR_RANGE = "{name} must lie in [0, {limit_name}={limit}); got values in [{low}, {high}]"
ERR_COUNT = "{name} must be a positive int; got {value!r}"
ERR_NAMES_LENGTH = "{name} must have {expected} entries (one per {what}); got {got}: {value!r}"
ERR_STD_KIND = "std must be one of {allowed}; got {value!r}"
ERR_NO_REPORTS = "summarize_runs needs at least one FairnessReport; got an empty list"
ERR_REPORT_TYPE = "reports[{index}] must be a FairnessReport; got {type_name}"
#: A split whose samples all lie in one protected group: every gap is 0 by construction.
NOTE_ONE_GROUP = (
    "only one protected group ({groups}) has samples in the {split} split, so DEO_M and DEO_A are 0 "
    "by construction and measure nothing: fairness cannot be assessed on this data (it needs at least two groups)"
)


class SingleGroupWarning(UserWarning):
    """The data has samples of one protected group only; the fairness figures are empty."""


def groups_with_samples(groups: Tensor, group_names: Sequence[str]) -> list[str]:
    """Names of the groups that have at least one sample in ``groups`` (ids; -1, unknown, is ignored)."""
    present = torch.unique(groups[groups >= 0]).tolist()
    return [str(group_names[int(g)]) for g in present]


ERR_REPORT_SHAPE = (
    "all reports must share num_classes and num_groups; reports[0] has "
    "(num_classes={c0}, num_groups={g0}), reports[{index}] has "
    "(num_classes={c}, num_groups={g})"
)

#: Scalar metrics aggregated by :func:`summarize_runs`, in output order.
SUMMARY_METRICS: tuple[str, ...] = (
    "accuracy",
    "deo_m",
    "deo_a",
    "worst_group_accuracy",
    "suff_m",
    "suff_a",
)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(ERR_COUNT.format(name=name, value=value))
    return int(value)


def _as_tensor(name: str, values: ArrayLike) -> Tensor:
    if isinstance(values, Tensor):
        tensor = values.detach()
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "biufc":
            raise ValueError(ERR_DTYPE.format(name=name, dtype=array.dtype))
        if array.dtype.kind in "iu":
            array = array.astype(np.int64, copy=False)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dim() != 1:
        raise ValueError(ERR_NOT_1D.format(name=name, shape=tuple(tensor.shape)))
    return tensor


def _check_ids(name: str, values: Tensor, limit_name: str, limit: int) -> Tensor:
    if values.dtype.is_floating_point or values.is_complex():
        nan_count = int(torch.isnan(values).sum())
        if nan_count:
            raise ValueError(ERR_NAN.format(name=name, count=nan_count))
    if values.dtype.is_floating_point or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(ERR_DTYPE.format(name=name, dtype=values.dtype))
    values = values.long()
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= limit:
        raise ValueError(ERR_RANGE.format(name=name, limit_name=limit_name, limit=limit, low=low, high=high))
    return values


def _validate(
    y_pred: ArrayLike,
    y_true: ArrayLike,
    sensitive_features: ArrayLike,
    num_classes: Any,
    num_groups: Any,
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    num_classes = _check_count("num_classes", num_classes)
    num_groups = _check_count("num_groups", num_groups)
    pred = _as_tensor("y_pred", y_pred)
    true = _as_tensor("y_true", y_true)
    group = _as_tensor("sensitive_features", sensitive_features)
    if not (pred.shape[0] == true.shape[0] == group.shape[0]):
        raise ValueError(ERR_LENGTH_MISMATCH.format(n_pred=pred.shape[0], n_true=true.shape[0], n_group=group.shape[0]))
    if pred.shape[0] == 0:
        raise ValueError(ERR_EMPTY)
    device = pred.device
    pred = _check_ids("y_pred", pred, "num_classes", num_classes).to(device)
    true = _check_ids("y_true", true, "num_classes", num_classes).to(device)
    group = _check_ids("sensitive_features", group, "num_groups", num_groups).to(device)
    return pred, true, group, num_classes, num_groups


def _check_names(name: str, names: Sequence[str] | None, expected: int, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(str(i) for i in range(expected))
    names = tuple(str(n) for n in names)
    if len(names) != expected:
        raise ValueError(ERR_NAMES_LENGTH.format(name=name, expected=expected, what=what, got=len(names), value=names))
    return names


# ---------------------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counts:
    support: Tensor  # (G, L) #{y = l, a = g}
    true_positives: Tensor  # (G, L) #{pred = l, y = l, a = g}
    predicted: Tensor  # (G, L) #{pred = l, a = g}


def _count(pred: Tensor, true: Tensor, group: Tensor, num_classes: int, num_groups: int) -> _Counts:
    cells = num_groups * num_classes
    true_cell = group * num_classes + true
    pred_cell = group * num_classes + pred
    support = torch.bincount(true_cell, minlength=cells)
    true_positives = torch.bincount(true_cell[pred == true], minlength=cells)
    predicted = torch.bincount(pred_cell, minlength=cells)
    shape = (num_groups, num_classes)
    return _Counts(support.view(shape), true_positives.view(shape), predicted.view(shape))


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` in float64, NaN where the denominator is 0."""
    num = numerator.to(torch.float64)
    den = denominator.to(torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def _spread(rates: Tensor, valid: Tensor, dim: int) -> Tensor:
    """``max - min`` of ``rates`` along ``dim`` over the ``valid`` entries; NaN if none."""
    high = torch.where(valid, rates, torch.full_like(rates, -math.inf)).amax(dim=dim)
    low = torch.where(valid, rates, torch.full_like(rates, math.inf)).amin(dim=dim)
    return torch.where(valid.any(dim=dim), high - low, torch.full_like(high, math.nan))


# ---------------------------------------------------------------------------------------
# per-(group, class) recall
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RecallTable:
    """Per-(group, class) recall and the counts it is made of.

    Attributes
    ----------
    recall : Tensor, shape (G, L), float64
        ``A(g, l)`` as a fraction in [0, 1]; NaN where ``support[g, l] == 0``.
    support : Tensor, shape (G, L), int64
        ``#{y = l, a = g}``, the number of samples of class ``l`` in group ``g``.
    true_positives : Tensor, shape (G, L), int64
        ``#{pred = l, y = l, a = g}``.

    All three live on the device of ``y_pred``.
    """

    recall: Tensor
    support: Tensor
    true_positives: Tensor

    @property
    def num_groups(self) -> int:
        """G, the number of groups (rows)."""
        return int(self.recall.shape[0])

    @property
    def num_classes(self) -> int:
        """L, the number of classes (columns)."""
        return int(self.recall.shape[1])


def group_class_recall(
    y_pred: ArrayLike,
    y_true: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    num_classes: int,
    num_groups: int,
) -> RecallTable:
    """Recall of every class within every protected group.

    .. math::

        A(g, l) = \\frac{\\#\\{\\hat y = l,\\ y = l,\\ a = g\\}}{\\#\\{y = l,\\ a = g\\}}

    Parameters
    ----------
    y_pred : Tensor or ndarray, shape (N,)
        Predicted class ids, integers in ``[0, num_classes)``.
    y_true : Tensor or ndarray, shape (N,)
        True class ids, integers in ``[0, num_classes)``.
    sensitive_features : Tensor or ndarray, shape (N,)
        Protected-group id ``a`` of each sample, integers in ``[0, num_groups)``.
    num_classes : int
        L. Classes absent from the data still get a column (all NaN).
    num_groups : int
        G. Groups absent from the data still get a row (all NaN).

    Returns
    -------
    RecallTable
        ``recall`` (G, L) float64 with NaN where a cell has no sample, ``support`` and
        ``true_positives`` (G, L) int64, on the device of ``y_pred``.

    Raises
    ------
    ValueError
        On non-1-D input, length mismatch, empty input, NaN, non-integer dtype or ids
        outside their range (messages ``ERR_*`` of this module).
    """
    pred, true, group, num_classes, num_groups = _validate(y_pred, y_true, sensitive_features, num_classes, num_groups)
    counts = _count(pred, true, group, num_classes, num_groups)
    return RecallTable(
        recall=_ratio(counts.true_positives, counts.support),
        support=counts.support,
        true_positives=counts.true_positives,
    )


# ---------------------------------------------------------------------------------------
# full report
# ---------------------------------------------------------------------------------------


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _json_list(array: np.ndarray) -> list[Any]:
    if array.dtype.kind in "iu":
        return array.tolist()
    if array.ndim == 1:
        return [_json_float(v) for v in array.tolist()]
    return [_json_list(row) for row in array]


def _index_list(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


@dataclass(frozen=True, eq=False)
class FairnessReport:
    """Accuracy and group-fairness figures of one classifier on one labelled test set.

    Every rate is a percentage in [0, 100]; NaN marks an undefined value (see the module
    docstring for the conventions). Arrays are read-only numpy arrays on the CPU.

    Attributes
    ----------
    num_samples, num_classes, num_groups : int
        N, L and G.
    class_names, group_names : tuple of str
        Names of the L classes and the G groups (``"0", "1", ...`` when not given).
    accuracy : float
        ``100 * #{pred = y} / N``.
    recall : ndarray, shape (G, L)
        ``100 * A(g, l)``; NaN where ``support[g, l] == 0``.
    precision : ndarray, shape (G, L)
        ``100 * P(g, l)`` with ``P(g, l) = #{pred = l, y = l, a = g} / #{pred = l, a = g}``;
        NaN where ``predicted[g, l] == 0``.
    support : ndarray, shape (G, L), int64
        ``#{y = l, a = g}``.
    predicted : ndarray, shape (G, L), int64
        ``#{pred = l, a = g}``.
    class_gap : ndarray, shape (L,)
        Equal-opportunity gap ``gap(l) = max_g A(g, l) - min_g A(g, l)`` over the groups
        with support in class ``l``; 0 with one such group, NaN with none.
    deo_m : float
        ``DEO_M = max_l gap(l)`` over classes with a defined gap.
    deo_a : float
        ``DEO_A = mean_l gap(l)`` over classes with a defined gap.
    sufficiency_gap : ndarray, shape (L,)
        ``gap_suff(l) = max_g P(g, l) - min_g P(g, l)`` over the groups that received a
        prediction of class ``l``; 0 with one such group, NaN with none.
    suff_m, suff_a : float
        Max and mean of ``sufficiency_gap`` over the classes where it is defined.
    group_accuracy : ndarray, shape (G,)
        Accuracy within each group; NaN for a group without samples.
    worst_group_accuracy : float
        Minimum of ``group_accuracy`` over the groups with samples.
    worst_group : int
        Index of that group (the lowest index on a tie).
    class_accuracy : ndarray, shape (L,)
        Recall of each class over all groups, ``#{pred = l, y = l} / #{y = l}``; NaN for a
        class without samples.
    notes : tuple of str
        Human-readable remarks on every convention that was applied (classes left out of
        DEO, single-group classes, empty groups, ...). Empty when none applied.
    """

    num_samples: int
    num_classes: int
    num_groups: int
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    accuracy: float
    recall: np.ndarray
    precision: np.ndarray
    support: np.ndarray
    predicted: np.ndarray
    class_gap: np.ndarray
    deo_m: float
    deo_a: float
    sufficiency_gap: np.ndarray
    suff_m: float
    suff_a: float
    group_accuracy: np.ndarray
    worst_group_accuracy: float
    worst_group: int
    class_accuracy: np.ndarray
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-serialisable Python values.

        Floats stay floats, arrays become (nested) lists, and NaN becomes ``None`` so that
        ``json.dumps(report.to_dict(), allow_nan=False)`` succeeds.
        """
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if isinstance(value, np.ndarray):
                out[key] = _json_list(value)
            elif isinstance(value, float):
                out[key] = _json_float(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out

    def recall_frame(self) -> pd.DataFrame:
        """Recall ``100 * A(g, l)`` as a DataFrame: one row per group, one column per class."""
        frame = pd.DataFrame(
            np.array(self.recall),
            index=pd.Index(self.group_names, name="group"),
            columns=pd.Index(self.class_names, name="class"),
        )
        return frame

    def gap_frame(self) -> pd.DataFrame:
        """Per-class table: support, groups with support, class accuracy and both gaps.

        Columns: ``support`` (samples of the class), ``groups_with_support``,
        ``class_accuracy`` (%), ``eo_gap`` (%, ``gap(l)``), ``best_group`` and
        ``worst_group`` (names of the groups attaining ``max_g A`` and ``min_g A``, the
        lowest group index on a tie; missing, i.e. ``pd.isna``, where the class has no
        support) and ``sufficiency_gap`` (%).
        """
        has_support = self.support > 0
        masked = np.where(has_support, self.recall, np.nan)
        defined = has_support.any(axis=0)
        best = np.where(defined, np.argmax(np.where(has_support, masked, -np.inf), axis=0), -1)
        worst = np.where(defined, np.argmin(np.where(has_support, masked, np.inf), axis=0), -1)
        names = np.array(self.group_names, dtype=object)
        return pd.DataFrame(
            {
                "support": self.support.sum(axis=0),
                "groups_with_support": has_support.sum(axis=0),
                "class_accuracy": np.array(self.class_accuracy),
                "eo_gap": np.array(self.class_gap),
                "best_group": np.where(defined, names[best], None),  # type: ignore[call-overload]  # numpy stubs reject None
                "worst_group": np.where(defined, names[worst], None),  # type: ignore[call-overload]
                "sufficiency_gap": np.array(self.sufficiency_gap),
            },
            index=pd.Index(self.class_names, name="class"),
        )


def _notes(counts: _Counts, class_names: tuple[str, ...], group_names: tuple[str, ...]) -> tuple[str, ...]:
    support = counts.support.cpu().numpy()
    predicted = counts.predicted.cpu().numpy()
    groups_per_class = (support > 0).sum(axis=0)
    predicting_groups = (predicted > 0).sum(axis=0)
    notes = []

    def named(indices: list[int], names: tuple[str, ...]) -> str:
        return ", ".join(names[i] for i in indices)

    if absent := _index_list(groups_per_class == 0):
        notes.append(
            f"classes without any sample ({named(absent, class_names)}) have an undefined "
            "gap and are left out of DEO_M and DEO_A"
        )
    if single := _index_list(groups_per_class == 1):
        notes.append(f"classes with samples in one group only ({named(single, class_names)}) have gap 0")
    if empty := _index_list(support.sum(axis=1) == 0):
        notes.append(
            f"groups without any sample ({named(empty, group_names)}) are left out of every "
            "gap and of the worst-group accuracy"
        )
    if never := _index_list(predicting_groups == 0):
        notes.append(
            f"classes never predicted ({named(never, class_names)}) have an undefined "
            "sufficiency gap and are left out of its max and mean"
        )
    if one := _index_list(predicting_groups == 1):
        notes.append(f"classes predicted in one group only ({named(one, class_names)}) have sufficiency gap 0")
    return tuple(notes)


def fairness_report(
    y_pred: ArrayLike,
    y_true: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    num_classes: int,
    num_groups: int,
    class_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
) -> FairnessReport:
    """Accuracy, equal-opportunity gaps (DEO) and sufficiency gaps of a classifier.

    With ``A(g, l)`` the recall of class ``l`` within group ``g`` (see
    :func:`group_class_recall`) and ``P(g, l)`` its precision,

    .. math::

        \\mathrm{gap}(l) &= \\max_{g \\in S_l} A(g, l) - \\min_{g \\in S_l} A(g, l),
        \\quad S_l = \\{g : \\#\\{y = l, a = g\\} > 0\\} \\\\
        \\mathrm{DEO_M} &= 100 \\max_{l : S_l \\neq \\emptyset} \\mathrm{gap}(l), \\qquad
        \\mathrm{DEO_A} = 100 \\operatorname{mean}_{l : S_l \\neq \\emptyset} \\mathrm{gap}(l) \\\\
        P(g, l) &= \\frac{\\#\\{\\hat y = l,\\ y = l,\\ a = g\\}}{\\#\\{\\hat y = l,\\ a = g\\}},
        \\quad \\mathrm{gap_{suff}}(l) = \\max_{g \\in R_l} P(g, l) - \\min_{g \\in R_l} P(g, l),
        \\quad R_l = \\{g : \\#\\{\\hat y = l, a = g\\} > 0\\}

    A class whose samples all lie in one group has gap 0; a class with no sample at all
    has an undefined (NaN) gap and is excluded from DEO_M and DEO_A, so DEO_A averages
    over the classes present in the test set. The sufficiency gap follows the same rule
    with predictions in place of samples. Each applied rule is listed in ``notes``.

    Parameters
    ----------
    y_pred : Tensor or ndarray, shape (N,)
        Predicted class ids, integers in ``[0, num_classes)``.
    y_true : Tensor or ndarray, shape (N,)
        True class ids, integers in ``[0, num_classes)``.
    sensitive_features : Tensor or ndarray, shape (N,)
        Protected-group id of each sample, integers in ``[0, num_groups)``.
    num_classes : int
        L.
    num_groups : int
        G.
    class_names : sequence of str, length L, optional
        Names used in the frames and in ``notes``; default ``"0", ..., "L-1"``.
    group_names : sequence of str, length G, optional
        Names of the groups; default ``"0", ..., "G-1"``.

    Returns
    -------
    FairnessReport
        All rates in percent; see :class:`FairnessReport`.

    Raises
    ------
    ValueError
        On invalid inputs (see :func:`group_class_recall`) or names of the wrong length
        (``ERR_NAMES_LENGTH``).

    References
    ----------
    .. [1] Hardt, Price and Srebro, "Equality of Opportunity in Supervised Learning",
       NeurIPS 2016.
    .. [2] Zhou et al., "FairDD: Fair Dataset Distillation via Synchronized Matching",
       arXiv 2411.19623 (DEO_M / DEO_A as used in the fair distillation benchmark).
    """
    pred, true, group, num_classes, num_groups = _validate(y_pred, y_true, sensitive_features, num_classes, num_groups)
    class_names = _check_names("class_names", class_names, num_classes, "class")
    group_names = _check_names("group_names", group_names, num_groups, "group")
    counts = _count(pred, true, group, num_classes, num_groups)

    recall = _ratio(counts.true_positives, counts.support)
    precision = _ratio(counts.true_positives, counts.predicted)
    class_gap = _spread(recall, counts.support > 0, dim=0)
    suff_gap = _spread(precision, counts.predicted > 0, dim=0)
    group_accuracy = _ratio(counts.true_positives.sum(dim=1), counts.support.sum(dim=1))
    class_accuracy = _ratio(counts.true_positives.sum(dim=0), counts.support.sum(dim=0))
    n = int(pred.shape[0])
    correct = int(counts.true_positives.sum())

    def to_np(t: Tensor, scale: float = 100.0) -> np.ndarray:
        return _readonly(t.cpu().numpy() * scale)

    class_gap_np = to_np(class_gap)
    suff_gap_np = to_np(suff_gap)
    group_accuracy_np = to_np(group_accuracy)
    worst_group = int(np.nanargmin(group_accuracy_np))

    return FairnessReport(
        num_samples=n,
        num_classes=num_classes,
        num_groups=num_groups,
        class_names=class_names,
        group_names=group_names,
        accuracy=100.0 * correct / n,
        recall=to_np(recall),
        precision=to_np(precision),
        support=_readonly(counts.support.cpu().numpy()),
        predicted=_readonly(counts.predicted.cpu().numpy()),
        class_gap=class_gap_np,
        deo_m=float(np.nanmax(class_gap_np)),
        deo_a=float(np.nanmean(class_gap_np)),
        sufficiency_gap=suff_gap_np,
        suff_m=float(np.nanmax(suff_gap_np)),
        suff_a=float(np.nanmean(suff_gap_np)),
        group_accuracy=group_accuracy_np,
        worst_group_accuracy=float(group_accuracy_np[worst_group]),
        worst_group=worst_group,
        class_accuracy=to_np(class_accuracy),
        notes=_notes(counts, class_names, group_names),
    )


# ---------------------------------------------------------------------------------------
# several evaluation runs
# ---------------------------------------------------------------------------------------


def summarize_runs(reports: Sequence[FairnessReport], *, std: StdKind = "population") -> dict[str, Any]:
    """Mean and standard deviation of the headline metrics over evaluation runs.

    For each metric ``m`` in :data:`SUMMARY_METRICS` (accuracy, DEO_M, DEO_A,
    worst-group accuracy, sufficiency max and mean gap) over ``R`` runs:

    .. math::

        \\bar m = \\frac{1}{R} \\sum_r m_r, \\qquad
        s_m = \\sqrt{\\frac{1}{R - d} \\sum_r (m_r - \\bar m)^2}

    with ``d = 0`` for ``std="population"`` (the default, as ``numpy.std`` in the
    research code) and ``d = 1`` for ``std="sample"`` (NaN when ``R = 1``).

    Parameters
    ----------
    reports : sequence of FairnessReport
        One report per evaluation run (e.g. one per evaluation seed), all with the same
        ``num_classes`` and ``num_groups``.
    std : {"population", "sample"}, default "population"
        Which standard deviation to report.

    Returns
    -------
    dict
        ``{"num_runs": R, "std": std, "ddof": d, <metric>: {"mean": float, "std": float},
        ...}``; all values JSON-serialisable (a sample std of one run is ``None``).

    Raises
    ------
    ValueError
        On an empty list (``ERR_NO_REPORTS``), an unknown ``std`` (``ERR_STD_KIND``) or
        reports of different shapes (``ERR_REPORT_SHAPE``).
    TypeError
        On an element that is not a :class:`FairnessReport` (``ERR_REPORT_TYPE``).
    """
    allowed = get_args(StdKind)
    if std not in allowed:
        raise ValueError(ERR_STD_KIND.format(allowed=allowed, value=std))
    reports = list(reports)
    if not reports:
        raise ValueError(ERR_NO_REPORTS)
    for index, report in enumerate(reports):
        if not isinstance(report, FairnessReport):
            raise TypeError(ERR_REPORT_TYPE.format(index=index, type_name=type(report).__name__))
        first = reports[0]
        if (report.num_classes, report.num_groups) != (first.num_classes, first.num_groups):
            raise ValueError(
                ERR_REPORT_SHAPE.format(
                    c0=first.num_classes,
                    g0=first.num_groups,
                    index=index,
                    c=report.num_classes,
                    g=report.num_groups,
                )
            )
    ddof = 0 if std == "population" else 1
    values = torch.tensor([[getattr(r, key) for key in SUMMARY_METRICS] for r in reports], dtype=torch.float64)
    means = values.mean(dim=0)
    if values.shape[0] - ddof > 0:
        stds = values.std(dim=0, correction=ddof)
    else:
        stds = torch.full_like(means, math.nan)
    summary: dict[str, Any] = {"num_runs": len(reports), "std": std, "ddof": ddof}
    for key, mean, spread in zip(SUMMARY_METRICS, means.tolist(), stds.tolist()):
        summary[key] = {"mean": _json_float(mean), "std": _json_float(spread)}
    return summary
