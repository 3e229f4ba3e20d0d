"""Tests of fdd.fairness.metrics: hand-computed cases, fairlearn agreement, edge cases, errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fdd.fairness import metrics as M
from fdd.fairness.metrics import (
    FairnessReport,
    RecallTable,
    fairness_report,
    group_class_recall,
    summarize_runs,
)

nan = math.nan


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern matching ``message`` literally and fully."""
    return "^" + re.escape(message) + "$"


# ---------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------

# Case 1: two classes, two groups, every cell populated.
#   group 0, class 0: y=0 x4, pred [0, 0, 0, 1] -> A(0,0) = 3/4
#   group 0, class 1: y=1 x4, pred [1, 1, 1, 1] -> A(0,1) = 4/4
#   group 1, class 0: y=0 x2, pred [0, 1]       -> A(1,0) = 1/2
#   group 1, class 1: y=1 x2, pred [0, 0]       -> A(1,1) = 0/2
CASE1 = dict(
    y_true=[0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1],
    y_pred=[0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0],
    groups=[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
)


def case1_report(**kwargs) -> FairnessReport:
    return fairness_report(
        np.array(CASE1["y_pred"]),
        np.array(CASE1["y_true"]),
        sensitive_features=np.array(CASE1["groups"]),
        num_classes=2,
        num_groups=2,
        **kwargs,
    )


def test_case1_recall_table():
    table = group_class_recall(
        torch.tensor(CASE1["y_pred"]),
        torch.tensor(CASE1["y_true"]),
        sensitive_features=torch.tensor(CASE1["groups"]),
        num_classes=2,
        num_groups=2,
    )
    assert isinstance(table, RecallTable)
    assert (table.num_groups, table.num_classes) == (2, 2)
    assert table.recall.dtype == torch.float64
    expected = torch.tensor([[0.75, 1.0], [0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(table.recall, expected)
    assert table.support.tolist() == [[4, 4], [2, 2]]
    assert table.true_positives.tolist() == [[3, 4], [1, 0]]


def test_case1_report():
    r = case1_report()
    # 8 correct out of 12 (3 + 4 + 1 + 0)
    assert r.accuracy == pytest.approx(100 * 8 / 12)
    np.testing.assert_allclose(r.recall, [[75.0, 100.0], [50.0, 0.0]])
    # gap(0) = 75 - 50, gap(1) = 100 - 0
    np.testing.assert_allclose(r.class_gap, [25.0, 100.0])
    assert r.deo_m == pytest.approx(100.0)
    assert r.deo_a == pytest.approx(62.5)
    # predictions: group 0 -> 0 x3 (3 right), 1 x5 (4 right);
    #              group 1 -> 0 x3 (1 right), 1 x1 (0 right)
    assert r.predicted.tolist() == [[3, 5], [3, 1]]
    np.testing.assert_allclose(r.precision, [[100.0, 80.0], [100 / 3, 0.0]])
    np.testing.assert_allclose(r.sufficiency_gap, [100 - 100 / 3, 80.0])
    assert r.suff_m == pytest.approx(80.0)
    assert r.suff_a == pytest.approx((200 / 3 + 80) / 2)
    # group 0: 7 / 8, group 1: 1 / 4
    np.testing.assert_allclose(r.group_accuracy, [87.5, 25.0])
    assert r.worst_group_accuracy == pytest.approx(25.0)
    assert r.worst_group == 1
    # class 0: (3 + 1) / 6, class 1: (4 + 0) / 6
    np.testing.assert_allclose(r.class_accuracy, [400 / 6, 400 / 6])
    assert r.notes == ()
    assert (r.num_samples, r.num_classes, r.num_groups) == (12, 2, 2)


# Case 2: three classes, two groups, with missing cells.
#   class 0: group 0 pred [0, 0] -> 1.0 ; group 1 pred [0, 2] -> 0.5    gap 50
#   class 1: group 0 pred [1, 0] -> 0.5 ; group 1 no sample (NaN)       gap 0 (one group)
#   class 2: no sample at all                                           gap NaN, excluded
CASE2 = dict(
    y_true=[0, 0, 1, 1, 0, 0],
    y_pred=[0, 0, 1, 0, 0, 2],
    groups=[0, 0, 0, 0, 1, 1],
)


def case2_report() -> FairnessReport:
    return fairness_report(
        torch.tensor(CASE2["y_pred"]),
        torch.tensor(CASE2["y_true"]),
        sensitive_features=torch.tensor(CASE2["groups"]),
        num_classes=3,
        num_groups=2,
        class_names=["zero", "one", "two"],
        group_names=["red", "green"],
    )


def test_case2_conventions_for_missing_cells():
    r = case2_report()
    np.testing.assert_allclose(r.recall, [[100.0, 50.0, nan], [50.0, nan, nan]])
    assert r.support.tolist() == [[2, 2, 0], [2, 0, 0]]
    np.testing.assert_allclose(r.class_gap, [50.0, 0.0, nan])
    assert r.deo_m == pytest.approx(50.0)
    # mean over the two classes with support, not over all three
    assert r.deo_a == pytest.approx(25.0)
    # precision: group 0 predicts 0 x3 (2 right), 1 x1 (1 right);
    #            group 1 predicts 0 x1 (1 right), 2 x1 (0 right)
    np.testing.assert_allclose(r.precision, [[200 / 3, 100.0, nan], [100.0, nan, 0.0]])
    np.testing.assert_allclose(r.sufficiency_gap, [100 / 3, 0.0, 0.0])
    assert r.suff_m == pytest.approx(100 / 3)
    assert r.suff_a == pytest.approx(100 / 9)
    np.testing.assert_allclose(r.group_accuracy, [75.0, 50.0])
    assert r.worst_group_accuracy == pytest.approx(50.0)
    assert r.worst_group == 1
    np.testing.assert_allclose(r.class_accuracy, [75.0, 50.0, nan])
    assert r.accuracy == pytest.approx(100 * 4 / 6)
    joined = " | ".join(r.notes)
    assert "without any sample (two)" in joined
    assert "one group only (one)" in joined
    assert "predicted in one group only (one, two)" in joined


def test_empty_group_excluded_from_worst_group():
    r = fairness_report([0, 1, 1], [0, 1, 0], sensitive_features=[0, 0, 2], num_classes=2, num_groups=3)
    np.testing.assert_allclose(r.group_accuracy, [100.0, nan, 0.0])
    assert r.worst_group_accuracy == 0.0 and r.worst_group == 2
    assert any("groups without any sample (1)" in note for note in r.notes)


def test_to_dict_is_strict_json():
    d = case2_report().to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["deo_m"] == pytest.approx(50.0)
    assert back["class_gap"] == [pytest.approx(50.0), 0.0, None]
    assert back["recall"][1] == [pytest.approx(50.0), None, None]
    assert back["support"] == [[2, 2, 0], [2, 0, 0]]
    assert back["class_names"] == ["zero", "one", "two"]
    assert isinstance(back["notes"], list) and back["notes"]
    assert set(back) == set(FairnessReport.__dataclass_fields__)


def test_frames():
    r = case2_report()
    rec = r.recall_frame()
    assert list(rec.index) == ["red", "green"] and rec.index.name == "group"
    assert list(rec.columns) == ["zero", "one", "two"] and rec.columns.name == "class"
    assert rec.loc["green", "zero"] == pytest.approx(50.0)
    assert math.isnan(rec.loc["green", "one"])
    gaps = r.gap_frame()
    assert list(gaps.index) == ["zero", "one", "two"]
    assert gaps["support"].tolist() == [4, 2, 0]
    assert gaps["groups_with_support"].tolist() == [2, 1, 0]
    assert gaps.loc["zero", "eo_gap"] == pytest.approx(50.0)
    assert gaps.loc["zero", "best_group"] == "red"
    assert gaps.loc["zero", "worst_group"] == "green"
    assert gaps.loc["one", "best_group"] == "red" == gaps.loc["one", "worst_group"]
    assert pd.isna(gaps.loc["two", "best_group"]) and pd.isna(gaps.loc["two", "worst_group"])
    assert math.isnan(gaps.loc["two", "eo_gap"])


def test_default_names_and_readonly_arrays():
    r = case1_report()
    assert r.class_names == ("0", "1") and r.group_names == ("0", "1")
    with pytest.raises(ValueError):
        r.recall[0, 0] = 1.0
    with pytest.raises(AttributeError):
        r.deo_m = 0.0  # frozen


# ---------------------------------------------------------------------------------------
# agreement with fairlearn and with a naive loop
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_agrees_with_fairlearn(seed):
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import recall_score

    rng = np.random.default_rng(seed)
    n, num_classes, num_groups = 400, 5, 4
    y_true = rng.integers(0, num_classes, n)
    groups = rng.integers(0, num_groups, n)
    # a biased-but-not-trivial predictor: right with a group-dependent probability
    right = rng.random(n) < np.array([0.9, 0.7, 0.5, 0.3])[groups]
    y_pred = np.where(right, y_true, rng.integers(0, num_classes, n))

    table = group_class_recall(
        y_pred, y_true, sensitive_features=groups, num_classes=num_classes, num_groups=num_groups
    )
    report = fairness_report(y_pred, y_true, sensitive_features=groups, num_classes=num_classes, num_groups=num_groups)
    for label in range(num_classes):
        frame = MetricFrame(
            metrics=recall_score,
            y_true=(y_true == label).astype(int),
            y_pred=(y_pred == label).astype(int),
            sensitive_features=groups,
        )
        expected = frame.by_group.to_numpy(dtype=float)
        got = table.recall[:, label].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        # fairlearn's between-group difference is the per-class gap
        between = frame.difference(method="between_groups")
        assert report.class_gap[label] == pytest.approx(100 * between)
    assert report.deo_m == pytest.approx(report.class_gap.max())
    assert report.deo_a == pytest.approx(report.class_gap.mean())


def _naive(y_pred, y_true, groups, num_classes, num_groups):
    support = np.zeros((num_groups, num_classes), dtype=np.int64)
    tp = np.zeros_like(support)
    predicted = np.zeros_like(support)
    for p, t, g in zip(y_pred, y_true, groups):
        support[g, t] += 1
        predicted[g, p] += 1
        tp[g, t] += int(p == t)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
    return support, tp, predicted, recall, precision


def _naive_gap(rates, valid):
    out = []
    for label in range(rates.shape[1]):
        vals = rates[valid[:, label], label]
        out.append(vals.max() - vals.min() if len(vals) else np.nan)
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    num_classes=st.integers(1, 5),
    num_groups=st.integers(1, 4),
    n=st.integers(1, 40),
)
def test_report_matches_naive_loop(data, num_classes, num_groups, n):
    ids = lambda k: st.lists(st.integers(0, k - 1), min_size=n, max_size=n)  # noqa: E731
    y_true = np.array(data.draw(ids(num_classes)))
    y_pred = np.array(data.draw(ids(num_classes)))
    groups = np.array(data.draw(ids(num_groups)))
    r = fairness_report(y_pred, y_true, sensitive_features=groups, num_classes=num_classes, num_groups=num_groups)
    support, tp, predicted, recall, precision = _naive(y_pred, y_true, groups, num_classes, num_groups)
    np.testing.assert_array_equal(r.support, support)
    np.testing.assert_array_equal(r.predicted, predicted)
    np.testing.assert_allclose(r.recall, 100 * recall)
    np.testing.assert_allclose(r.precision, 100 * precision)
    gap = 100 * _naive_gap(recall, support > 0)
    np.testing.assert_allclose(r.class_gap, gap)
    assert r.deo_m == pytest.approx(np.nanmax(gap))
    assert r.deo_a == pytest.approx(np.nanmean(gap))
    assert 0.0 <= r.deo_a <= r.deo_m <= 100.0
    suff = 100 * _naive_gap(precision, predicted > 0)
    assert r.suff_m == pytest.approx(np.nanmax(suff))
    assert r.suff_a == pytest.approx(np.nanmean(suff))
    assert r.accuracy == pytest.approx(100 * np.mean(y_pred == y_true))
    group_acc = [100 * np.mean((y_pred == y_true)[groups == g]) for g in np.unique(groups)]
    assert r.worst_group_accuracy == pytest.approx(min(group_acc))


def test_torch_numpy_list_inputs_agree():
    a = case1_report().to_dict()
    b = fairness_report(
        torch.tensor(CASE1["y_pred"], dtype=torch.int32),
        torch.tensor(CASE1["y_true"], dtype=torch.uint8),
        sensitive_features=np.array(CASE1["groups"], dtype=np.uint16),
        num_classes=2,
        num_groups=2,
    ).to_dict()
    c = fairness_report(
        CASE1["y_pred"],
        CASE1["y_true"],
        sensitive_features=CASE1["groups"],
        num_classes=2,
        num_groups=2,
    ).to_dict()
    assert a == b == c


# ---------------------------------------------------------------------------------------
# extreme classifiers
# ---------------------------------------------------------------------------------------


def test_perfect_classifier():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 500)
    groups = rng.integers(0, 10, 500)
    r = fairness_report(y, y, sensitive_features=groups, num_classes=10, num_groups=10)
    assert r.accuracy == 100.0
    assert r.deo_m == 0.0 and r.deo_a == 0.0
    assert r.suff_m == 0.0 and r.suff_a == 0.0
    assert r.worst_group_accuracy == 100.0
    np.testing.assert_array_equal(r.class_accuracy, 100.0)


def test_classifier_predicting_the_group_has_deo_m_100():
    # the C-MNIST failure mode: the model predicts the colour, not the digit
    num = 10
    y = np.repeat(np.arange(num), num)  # every (class, group) cell has one sample
    groups = np.tile(np.arange(num), num)
    r = fairness_report(groups, y, sensitive_features=groups, num_classes=num, num_groups=num)
    # A(g, l) = 1 if g == l else 0
    np.testing.assert_array_equal(r.recall, 100 * np.eye(num))
    assert r.deo_m == 100.0
    assert r.deo_a == 100.0
    assert r.accuracy == pytest.approx(100 / num)
    np.testing.assert_allclose(r.group_accuracy, 100 / num)


# ---------------------------------------------------------------------------------------
# summarize_runs
# ---------------------------------------------------------------------------------------


def _random_reports(k: int) -> list[FairnessReport]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(k):
        y = rng.integers(0, 3, 60)
        groups = rng.integers(0, 2, 60)
        pred = np.where(rng.random(60) < 0.7, y, rng.integers(0, 3, 60))
        out.append(fairness_report(pred, y, sensitive_features=groups, num_classes=3, num_groups=2))
    return out


@pytest.mark.parametrize("std, ddof", [("population", 0), ("sample", 1)])
def test_summarize_runs_matches_numpy(std, ddof):
    reports = _random_reports(5)
    summary = summarize_runs(reports, std=std)
    assert summary["num_runs"] == 5 and summary["std"] == std and summary["ddof"] == ddof
    for key in M.SUMMARY_METRICS:
        values = np.array([getattr(r, key) for r in reports])
        assert summary[key]["mean"] == pytest.approx(np.mean(values))
        assert summary[key]["std"] == pytest.approx(np.std(values, ddof=ddof))
    json.dumps(summary, allow_nan=False)


def test_summarize_runs_default_is_population_std():
    reports = _random_reports(4)
    default = summarize_runs(reports)
    values = np.array([r.accuracy for r in reports])
    assert default["std"] == "population"
    assert default["accuracy"]["std"] == pytest.approx(np.std(values))
    assert set(M.SUMMARY_METRICS) <= set(default)


def test_summarize_single_run():
    (report,) = _random_reports(1)
    assert summarize_runs([report])["deo_m"] == {"mean": report.deo_m, "std": 0.0}
    assert summarize_runs([report], std="sample")["deo_m"]["std"] is None


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

GOOD = dict(
    y_pred=np.array([0, 1, 1]),
    y_true=np.array([0, 1, 0]),
    sensitive_features=np.array([0, 1, 1]),
)


def call(fn=fairness_report, num_classes=2, num_groups=2, **overrides):
    kwargs = {**GOOD, **overrides}
    return fn(
        kwargs.pop("y_pred"),
        kwargs.pop("y_true"),
        num_classes=num_classes,
        num_groups=num_groups,
        **kwargs,
    )


@pytest.mark.parametrize("fn", [fairness_report, group_class_recall])
def test_error_length_mismatch(fn):
    msg = M.ERR_LENGTH_MISMATCH.format(n_pred=3, n_true=2, n_group=3)
    with pytest.raises(ValueError, match=exact(msg)):
        call(fn, y_true=np.array([0, 1]))


@pytest.mark.parametrize("fn", [fairness_report, group_class_recall])
def test_error_empty(fn):
    empty = np.array([], dtype=np.int64)
    with pytest.raises(ValueError, match=exact(M.ERR_EMPTY)):
        call(fn, y_pred=empty, y_true=empty, sensitive_features=empty)
    with pytest.raises(ValueError, match=exact(M.ERR_EMPTY)):
        call(fn, y_pred=[], y_true=[], sensitive_features=[])


def test_error_not_1d():
    logits = torch.zeros(3, 2)
    msg = M.ERR_NOT_1D.format(name="y_pred", shape=(3, 2))
    with pytest.raises(ValueError, match=exact(msg)):
        call(y_pred=logits)


def test_error_nan():
    msg = M.ERR_NAN.format(name="y_true", count=1)
    with pytest.raises(ValueError, match=exact(msg)):
        call(y_true=np.array([0.0, nan, 1.0]))


@pytest.mark.parametrize(
    "name, value, dtype",
    [
        ("y_pred", torch.tensor([0.0, 1.0, 1.0]), torch.float32),
        ("y_true", np.array([True, False, True]), torch.bool),
        ("sensitive_features", np.array([0.0, 1.0, 1.0]), torch.float64),
        ("sensitive_features", np.array(["a", "b", "b"]), np.dtype("<U1")),
    ],
)
def test_error_dtype(name, value, dtype):
    msg = M.ERR_DTYPE.format(name=name, dtype=dtype)
    with pytest.raises(ValueError, match=exact(msg)):
        call(**{name: value})


@pytest.mark.parametrize(
    "name, value, limit_name, low, high",
    [
        ("y_pred", np.array([0, 2, 1]), "num_classes", 0, 2),
        ("y_true", np.array([-1, 1, 0]), "num_classes", -1, 1),
        ("sensitive_features", torch.tensor([0, 5, 1]), "num_groups", 0, 5),
    ],
)
def test_error_out_of_range(name, value, limit_name, low, high):
    msg = M.ERR_RANGE.format(name=name, limit_name=limit_name, limit=2, low=low, high=high)
    with pytest.raises(ValueError, match=exact(msg)):
        call(**{name: value})


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, None])
def test_error_bad_counts(bad):
    with pytest.raises(ValueError, match=exact(M.ERR_COUNT.format(name="num_classes", value=bad))):
        call(num_classes=bad)
    with pytest.raises(ValueError, match=exact(M.ERR_COUNT.format(name="num_groups", value=bad))):
        call(group_class_recall, num_groups=bad)


def test_error_names_length():
    msg = M.ERR_NAMES_LENGTH.format(name="group_names", expected=2, what="group", got=3, value=("a", "b", "c"))
    with pytest.raises(ValueError, match=exact(msg)):
        call(group_names=["a", "b", "c"])


def test_keyword_only_sensitive_features():
    with pytest.raises(TypeError):
        fairness_report(  # type: ignore[misc]
            GOOD["y_pred"], GOOD["y_true"], GOOD["sensitive_features"], 2, 2
        )


def test_summarize_errors():
    reports = _random_reports(2)
    with pytest.raises(ValueError, match=exact(M.ERR_NO_REPORTS)):
        summarize_runs([])
    msg = M.ERR_STD_KIND.format(allowed=("population", "sample"), value="unbiased")
    with pytest.raises(ValueError, match=exact(msg)):
        summarize_runs(reports, std="unbiased")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=exact(M.ERR_REPORT_TYPE.format(index=1, type_name="dict"))):
        summarize_runs([reports[0], reports[1].to_dict()])  # type: ignore[list-item]
    other = call()  # 2 classes, 2 groups
    msg = M.ERR_REPORT_SHAPE.format(c0=3, g0=2, index=1, c=2, g=2)
    with pytest.raises(ValueError, match=exact(msg)):
        summarize_runs([reports[0], other])


def test_frames_are_pandas():
    r = case1_report()
    assert isinstance(r.recall_frame(), pd.DataFrame)
    assert isinstance(r.gap_frame(), pd.DataFrame)
