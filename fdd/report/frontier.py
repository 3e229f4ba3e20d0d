"""The fairness-accuracy frontier: accuracy against DEO_M per mode, and cobra's lambda curve.

``synthesis.barycenter_lambda`` moves cobra's target from vanilla's pooled class mean
(:math:`\\lambda = 0`) to the uniform barycenter of the groups (:math:`\\lambda = 1`); a sweep
over lambda (``sweep.lambdas``) traces the curve between them. This module gathers the points:
one per (panel, mode, lambda), with the mean and sample standard deviation over the seeds,

.. math::

    \\bar m = \\frac1S \\sum_s m_s, \\qquad \\sigma_m = \\sqrt{\\frac1{S-1} \\sum_s (m_s - \\bar m)^2}

(blank for one seed), for accuracy and DEO_M. Every mode present is a point (baselines
included: nothing here names a mode); the cells of one mode at several lambdas form a curve.
:func:`fdd.report.plots.frontier_figure` draws the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = [
    "FRONTIER_COLUMNS",
    "FRONTIER_METRICS",
    "LAMBDA_COLUMN",
    "frontier_from_metrics",
    "frontier_table",
]

#: The cell column holding cobra's barycenter_lambda (blank where the cell has none).
LAMBDA_COLUMN = "lambda"
#: The two axes of the frontier: x is DEO_M, y accuracy (both in %).
FRONTIER_METRICS: tuple[str, ...] = ("deo_m", "accuracy")
#: The columns after the panel keys.
FRONTIER_COLUMNS: tuple[str, ...] = (
    "mode",
    LAMBDA_COLUMN,
    "seeds",
    "accuracy_mean",
    "accuracy_std",
    "deo_m_mean",
    "deo_m_std",
)
ERR_FRONTIER_COLUMNS = "frontier_table: the cells lack the columns {missing}; each row needs {needed}"


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def frontier_table(cells: pd.DataFrame, *, panels: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (panel, mode, lambda): seeds, mean and sample std of accuracy and DEO_M.

    Parameters
    ----------
    cells : DataFrame
        One row per finished cell (synthesis seed) with ``mode``, ``accuracy`` and ``deo_m`` (in %),
        and optionally :data:`LAMBDA_COLUMN` (blank or NaN where the cell has no lambda) and
        ``status`` (only ``ok`` rows count). Rows whose DEO_M is missing (one group) are left out.
    panels : sequence of str
        Columns that separate panels (e.g. dataset, ipc, backbone); the rows of each panel keep
        the order in which their modes first appear, and a mode's lambdas are sorted.

    Returns
    -------
    DataFrame with the ``panels`` columns, then :data:`FRONTIER_COLUMNS`; ``lambda`` is NaN
    for a mode's point without a lambda.
    """
    needed = [*panels, "mode", *FRONTIER_METRICS]
    missing = [c for c in needed if c not in cells.columns]
    if missing:
        raise ValueError(ERR_FRONTIER_COLUMNS.format(missing=missing, needed=needed))
    done = cells[cells["status"].eq("ok")] if "status" in cells.columns else cells
    done = done.assign(
        **{
            LAMBDA_COLUMN: pd.to_numeric(done[LAMBDA_COLUMN], errors="coerce")
            if LAMBDA_COLUMN in done.columns
            else math.nan,
            "accuracy": pd.to_numeric(done["accuracy"], errors="coerce"),
            "deo_m": pd.to_numeric(done["deo_m"], errors="coerce"),
        }
    ).dropna(subset=list(FRONTIER_METRICS))
    rows: list[dict[str, Any]] = []
    groups = done.groupby(list(panels), sort=False) if panels else [((), done)]
    for key, panel in groups:
        key = key if isinstance(key, tuple) else (key,)
        for mode in dict.fromkeys(panel["mode"]):
            part = panel[panel["mode"] == mode]
            lambdas = part[LAMBDA_COLUMN]
            values: list[float] = sorted(set(lambdas.dropna()))
            for lam in ([math.nan] if lambdas.isna().any() else []) + values:
                point = part[lambdas.isna()] if math.isnan(lam) else part[lambdas == lam]
                rows.append(
                    {
                        **dict(zip(panels, key)),
                        "mode": mode,
                        LAMBDA_COLUMN: lam,
                        "seeds": len(point),
                        "accuracy_mean": float(point["accuracy"].mean()),
                        "accuracy_std": _std(point["accuracy"]),
                        "deo_m_mean": float(point["deo_m"].mean()),
                        "deo_m_std": _std(point["deo_m"]),
                    }
                )
    return pd.DataFrame(rows, columns=[*panels, *FRONTIER_COLUMNS])


def frontier_from_metrics(
    metrics: Mapping[str, Mapping[str, Any]], *, lambdas: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """The frontier of one run's modes (the report stage): each mode's audit as one point.

    ``metrics`` maps a mode to its ``metrics.json`` (headline architecture); the error bars are
    the standard deviations over its evaluations (``<metric>_std``), ``seeds`` its ``num_eval``.
    ``lambdas`` gives the barycenter_lambda of the modes that have one (e.g. cobra's).
    Modes whose DEO_M is None (one group in the test split) are left out.
    """
    rows = []
    for mode, values in metrics.items():
        if values.get("deo_m") is None:
            continue
        rows.append(
            {
                "mode": mode,
                LAMBDA_COLUMN: (lambdas or {}).get(mode, math.nan),
                "seeds": int(values.get("num_eval", 1)),
                "accuracy_mean": float(values["accuracy"]),
                "accuracy_std": float(values.get("accuracy_std", math.nan)),
                "deo_m_mean": float(values["deo_m"]),
                "deo_m_std": float(values.get("deo_m_std", math.nan)),
            }
        )
    return pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))
