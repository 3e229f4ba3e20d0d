"""The published DM table (docs/method.md section 5) and the comparison of measured cells with it.

A *cell* is one synthesis seed of one (dataset, bias, IPC, mode): its metrics are the mean
of its evaluations. The comparison aggregates cells over synthesis seeds,

.. math::

    \\bar m = \\frac1S \\sum_s m_s, \\qquad
    \\sigma_m = \\sqrt{\\frac1{S-1} \\sum_s (m_s - \\bar m)^2}

(sample standard deviation, blank for one seed), and gives each row a verdict:
``match`` when :math:`|\\bar{acc} - acc_{pub}| \\le 1` and
:math:`|\\bar{DEO_M} - DEO_{M,pub}| \\le 3` points, ``unpublished`` where the paper has no
value, ``not run`` without cells, otherwise the differences to the published values, followed
by the reason for them where one is on record (:func:`read_reasons`: a CSV of ``dataset, bias,
ipc, mode, reason``, each reason naming the measurement behind it).

The paired comparison of two modes uses the seeds both were run with: the difference
:math:`d_s = m^{a}_s - m^{b}_s` per seed, its mean and sample standard deviation, and the
two-sided paired t-test (``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "CELL_COLUMNS",
    "MATCH_ACC",
    "MATCH_DEO_M",
    "PAIRED_COLUMNS",
    "PAPER_COLUMNS",
    "PUBLISHED_DM",
    "REASON_COLUMNS",
    "RESULTS_COLUMNS",
    "Reasons",
    "paired_comparison",
    "paper_table",
    "read_reasons",
    "results_table",
    "verdict",
]

#: Published DM numbers, ConvNet, ``(acc, DEO_M, DEO_A)`` in %, keyed by
#: ``(dataset, bias, ipc, mode)`` (docs/method.md section 5; COBRA's pre-publication runs).
PUBLISHED_DM: dict[tuple[str, str, int, str], tuple[float, float, float]] = {
    ("cmnist", "foreground", 10, "vanilla"): (25.8, 100.0, 99.9),
    ("cmnist", "foreground", 10, "fairdd"): (94.4, 17.8, 8.0),
    ("cmnist", "foreground", 10, "cobra"): (94.6, 15.7, 7.5),
    ("cmnist", "foreground", 50, "vanilla"): (56.7, 100.0, 90.5),
    ("cmnist", "foreground", 50, "fairdd"): (96.3, 9.8, 5.5),
    ("cmnist", "foreground", 50, "cobra"): (96.7, 9.3, 5.4),
    ("cmnist", "foreground", 100, "vanilla"): (71.0, 100.0, 73.4),
    ("cmnist", "foreground", 100, "fairdd"): (97.1, 8.5, 4.7),
    ("cmnist", "foreground", 100, "cobra"): (97.4, 8.8, 5.1),
    ("cmnist", "background", 10, "vanilla"): (23.5, 100.0, 99.9),
    ("cmnist", "background", 10, "fairdd"): (94.7, 16.0, 7.4),
    ("cmnist", "background", 10, "cobra"): (94.5, 12.6, 6.7),
    ("cfmnist", "foreground", 10, "vanilla"): (33.2, 100.0, 99.2),
    ("cfmnist", "foreground", 10, "fairdd"): (76.2, 29.3, 17.7),
    ("cfmnist", "foreground", 10, "cobra"): (76.2, 27.2, 16.9),
    ("cfmnist", "background", 50, "vanilla"): (36.6, 100.0, 99.6),
    ("cfmnist", "background", 50, "fairdd"): (78.7, 24.3, 14.2),
    ("cfmnist", "background", 50, "cobra"): (80.0, 20.8, 13.4),
}

#: Tolerances of a ``match`` verdict, in points.
MATCH_ACC = 1.0
MATCH_DEO_M = 3.0

#: The columns of the comparison table, in order.
PAPER_COLUMNS: tuple[str, ...] = (
    "dataset",
    "bias",
    "ipc",
    "mode",
    "seeds",
    "acc_mean",
    "acc_std",
    "deo_m_mean",
    "deo_m_std",
    "deo_a_mean",
    "deo_a_std",
    "suff_gap_mean",
    "published_acc",
    "published_deo_m",
    "published_deo_a",
    "verdict",
)
#: The columns of a reasons file (:func:`read_reasons`).
REASON_COLUMNS: tuple[str, ...] = ("dataset", "bias", "ipc", "mode", "reason")
#: Why a row differs from the published value, keyed by ``(dataset, bias, ipc, mode)``.
Reasons = Mapping[tuple[str, str, int, str], str]
#: Columns a frame of cells must have (one row per synthesis seed).
CELL_COLUMNS: tuple[str, ...] = ("dataset", "bias", "ipc", "mode", "seed", "accuracy", "deo_m", "deo_a", "suff_m")
PAIRED_COLUMNS: tuple[str, ...] = (
    "dataset",
    "bias",
    "ipc",
    "pair",
    "seeds",
    "acc_diff_mean",
    "acc_diff_std",
    "acc_p",
    "deo_m_diff_mean",
    "deo_m_diff_std",
    "deo_m_p",
    "deo_m_lower_in",
)

#: The columns of a sweep's compact results table (``sweep.results_table``; issue 17's
#: ``cross_architecture.csv`` and ``baselines.csv``): one row per dataset, bias, IPC, mode and
#: evaluation architecture, mean and sample std over the synthesis seeds.
RESULTS_COLUMNS: tuple[str, ...] = (
    "dataset",
    "bias",
    "ipc",
    "mode",
    "architecture",
    "seeds",
    "acc_mean",
    "acc_std",
    "deo_m_mean",
    "deo_m_std",
    "deo_a_mean",
)
ERR_SUMMARY_COLUMNS = "results_table: the sweep summary lacks the columns {missing}; it needs {needed}"
ERR_CELL_COLUMNS = "cells lack the columns {missing}; each row needs {needed}"
ERR_REASONS_FILE = "reasons file {path}: {detail}; it needs the columns {columns}, one row per table row"
WARN_REASON_UNUSED = "reasons file: {keys} {why}; the reason is not shown (remove it, or check the row's key)"


def verdict(
    acc: float,
    deo_m: float,
    seeds: int,
    published: tuple[float, float, float] | None,
    *,
    acc_values: Sequence[float] = (),
    deo_m_values: Sequence[float] = (),
) -> str:
    """``match``, ``unpublished``, ``not run``, or the differences to the published values.

    Parameters
    ----------
    acc, deo_m : float
        Means over the seeds, in %.
    seeds : int
        How many synthesis seeds were measured (0: not run).
    published : (acc, DEO_M, DEO_A) or None
    acc_values, deo_m_values : sequence of float, optional
        The seeds' own values: with two or more, a difference beyond the tolerance also says
        whether the published value lies inside the seeds' range ``[min, max]`` (a spread
        between seeds wider than the tolerance) or outside it.

    Returns
    -------
    str
    """
    if seeds == 0:
        return "not run"
    if published is None:
        return "unpublished"
    d_acc, d_deo = acc - published[0], deo_m - published[1]
    if abs(d_acc) <= MATCH_ACC and abs(d_deo) <= MATCH_DEO_M:
        return "match"
    parts = []
    for name, diff, tolerance, target, values in (
        ("acc", d_acc, MATCH_ACC, published[0], acc_values),
        ("DEO_M", d_deo, MATCH_DEO_M, published[1], deo_m_values),
    ):
        if abs(diff) <= tolerance:
            continue
        part = f"{name} {diff:+.1f}"
        if len(values) > 1:
            low, high = min(values), max(values)
            where = "inside" if low <= target <= high else "outside"
            part += f" (published {where} the seeds' {low:.1f}-{high:.1f})"
        parts.append(part)
    return " and ".join(parts) + " points from published"


def read_reasons(path: str | Path) -> dict[tuple[str, str, int, str], str]:
    """The reasons on record for rows that differ from the published table.

    ``path`` is a CSV with the header :data:`REASON_COLUMNS` (in any order, other columns
    allowed): ``dataset``, ``bias`` and ``mode`` as fdd names them, ``ipc`` a positive integer,
    ``reason`` a short text naming the measurement that backs it, quoted when it holds a comma
    (e.g. ``"schedule: 52.5 on FairDD's 20000 x 256, reproduction.md"``). One row per key. Read
    with the standard :mod:`csv` module, strictly: a row with more or fewer fields than the header
    is an error naming its line (pandas would take an unquoted comma's extra field as an index
    column and report the wrong fault).

    Raises
    ------
    ValueError
        Naming the file, the line and what it needs: unreadable or not UTF-8, missing or repeated
        columns, a row of the wrong length, an IPC that is not a positive integer, an empty reason
        or one holding ``|`` or a line break (both break the markdown table), a key listed twice.
    """

    def bad(detail: str) -> ValueError:
        return ValueError(ERR_REASONS_FILE.format(path=path, detail=detail, columns=list(REASON_COLUMNS)))

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, skipinitialspace=True)
            rows = [(reader.line_num, row) for row in reader]  # line_num: the line the row ends on
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise bad(f"cannot be read as UTF-8 CSV ({error})") from error
    if not rows:
        raise bad("is empty")
    header = [name.strip() for name in rows[0][1]]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise bad(f"names the columns {repeated} more than once")
    missing = [c for c in REASON_COLUMNS if c not in header]
    if missing:
        raise bad(f"lacks {missing} (header: {header})")
    where = {name: header.index(name) for name in REASON_COLUMNS}
    reasons: dict[tuple[str, str, int, str], str] = {}
    for line, row in rows[1:]:
        if not any(field.strip() for field in row):
            continue  # a blank line
        if len(row) != len(header):
            raise bad(f"line {line} has {len(row)} fields, the header {len(header)}; quote a reason that holds a comma")
        value = {name: row[index].strip() for name, index in where.items()}
        ipc = int(value["ipc"]) if value["ipc"].isdecimal() and value["ipc"].isascii() else 0
        if ipc <= 0:
            raise bad(f"line {line}: ipc {value['ipc']!r} is not a positive integer")
        reason = value["reason"]
        if not reason:
            raise bad(f"line {line}: the reason is empty")
        if "|" in reason or "\n" in reason or "\r" in reason:
            raise bad(f"line {line}: the reason holds '|' or a line break, which break the markdown table")
        key = (value["dataset"], value["bias"], ipc, value["mode"])
        if key in reasons:
            raise bad(f"line {line}: {key} is listed twice")
        reasons[key] = reason
    return reasons


def _check_cells(cells: pd.DataFrame) -> None:
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(ERR_CELL_COLUMNS.format(missing=missing, needed=list(CELL_COLUMNS)))


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def paper_table(
    cells: pd.DataFrame, grid: Sequence[tuple[str, str, int, str]] = (), reasons: Reasons | None = None
) -> pd.DataFrame:
    """One row per ``(dataset, bias, ipc, mode)``: mean and std over seeds, published values, verdict.

    Parameters
    ----------
    cells : DataFrame
        One row per synthesis seed with :data:`CELL_COLUMNS` (metrics in %, each the mean of
        the seed's evaluations).
    grid : sequence of (dataset, bias, ipc, mode)
        Rows to include even without cells (``seeds`` 0, verdict ``not run``), in order;
        rows of ``cells`` outside it follow.
    reasons : mapping, optional
        Why a row differs from the published value (:func:`read_reasons`): appended to the
        verdict of a row that differs, as ``"<differences>: <reason>"``. A reason for a row
        that matches, is unpublished or not run, or is not in the table, is not shown, with a
        warning naming it (a stale or mistyped reason).

    Returns
    -------
    DataFrame with :data:`PAPER_COLUMNS`.
    """
    _check_cells(cells)
    keys = list(
        dict.fromkeys([*grid, *((r.dataset, r.bias, int(r.ipc), r.mode) for r in cells.itertuples(index=False))])
    )
    rows = []
    used: set[tuple[str, str, int, str]] = set()
    for dataset, bias, ipc, mode in keys:
        part = cells[
            (cells["dataset"] == dataset) & (cells["bias"] == bias) & (cells["ipc"] == ipc) & (cells["mode"] == mode)
        ]
        published = PUBLISHED_DM.get((dataset, bias, ipc, mode))
        seeds = int(part["seed"].nunique())
        acc, deo_m = float(part["accuracy"].mean()), float(part["deo_m"].mean())
        judged = verdict(
            acc,
            deo_m,
            seeds,
            published,
            acc_values=part["accuracy"].tolist(),
            deo_m_values=part["deo_m"].tolist(),
        )
        reason = (reasons or {}).get((dataset, bias, ipc, mode))
        if reason is not None and judged not in ("match", "unpublished", "not run"):
            judged = f"{judged}: {reason}"
            used.add((dataset, bias, ipc, mode))
        rows.append(
            {
                "dataset": dataset,
                "bias": bias,
                "ipc": ipc,
                "mode": mode,
                "seeds": seeds,
                "acc_mean": acc,
                "acc_std": _std(part["accuracy"]),
                "deo_m_mean": deo_m,
                "deo_m_std": _std(part["deo_m"]),
                "deo_a_mean": float(part["deo_a"].mean()),
                "deo_a_std": _std(part["deo_a"]),
                "suff_gap_mean": float(part["suff_m"].mean()),
                "published_acc": published[0] if published else math.nan,
                "published_deo_m": published[1] if published else math.nan,
                "published_deo_a": published[2] if published else math.nan,
                "verdict": judged,
            }
        )
    unused = [key for key in (reasons or {}) if key not in used]
    if unused:
        in_table = [key for key in unused if key in keys]
        elsewhere = [key for key in unused if key not in keys]
        if in_table:
            warnings.warn(
                WARN_REASON_UNUSED.format(keys=in_table, why="match, are unpublished or not run"), stacklevel=2
            )
        if elsewhere:
            axes = [sorted({str(key[i]) for key in keys}) for i in range(4)]
            why = (
                f"are not rows of this table (its datasets {axes[0]}, biases {axes[1]}, IPCs {axes[2]}, "
                f"modes {axes[3]})"
            )
            warnings.warn(WARN_REASON_UNUSED.format(keys=elsewhere, why=why), stacklevel=2)
    return pd.DataFrame(rows, columns=list(PAPER_COLUMNS))


def paired_comparison(cells: pd.DataFrame, a: str = "cobra", b: str = "fairdd") -> pd.DataFrame:
    """Mode ``a`` against mode ``b`` on the seeds both were run with, per (dataset, bias, ipc).

    Returns
    -------
    DataFrame with :data:`PAIRED_COLUMNS`: mean and sample std of the per-seed differences
    ``a - b`` of accuracy and DEO_M, the paired t-test p-values (NaN below 2 seeds or for
    identical differences), and on how many seeds ``a`` had the lower DEO_M.
    """
    _check_cells(cells)
    rows = []
    for (dataset, bias, ipc), part in cells.groupby(["dataset", "bias", "ipc"], sort=False):
        left = part[part["mode"] == a].set_index("seed")
        right = part[part["mode"] == b].set_index("seed")
        seeds = left.index.intersection(right.index)
        if len(seeds) == 0:
            continue
        row: dict[str, object] = {
            "dataset": dataset,
            "bias": bias,
            "ipc": int(ipc),
            "pair": f"{a} - {b}",
            "seeds": len(seeds),
        }
        for metric, name in (("accuracy", "acc"), ("deo_m", "deo_m")):
            x, y = left.loc[seeds, metric].to_numpy(float), right.loc[seeds, metric].to_numpy(float)
            diff = x - y
            row[f"{name}_diff_mean"] = float(diff.mean())
            row[f"{name}_diff_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else math.nan
            defined = len(diff) > 1 and float(np.ptp(diff)) > 0
            row[f"{name}_p"] = float(stats.ttest_rel(x, y).pvalue) if defined else math.nan
        row["deo_m_lower_in"] = f"{int((left.loc[seeds, 'deo_m'] < right.loc[seeds, 'deo_m']).sum())}/{len(seeds)}"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def results_table(summary: pd.DataFrame, *, matching: str = "convnet") -> pd.DataFrame:
    """The compact results table (:data:`RESULTS_COLUMNS`) of a sweep summary.

    Parameters
    ----------
    summary : DataFrame
        The sweep's ``summary.csv``: one row per (sweep dataset, data_dataset, bias, ipc,
        backbone, mode, [lambda,] architecture) with ``seeds`` and ``<metric>_mean`` /
        ``<metric>_std`` over the synthesis seeds (each seed's value the mean of its evaluations).
    matching : str
        The name written for the architecture ``matching`` (the network synthesis matched with).

    Returns
    -------
    DataFrame
        ``dataset`` is fdd's dataset name (``data_dataset``, else ``dataset``), ``bias`` blank for
        datasets without one; an empty summary gives the header alone; a mode run at a ``lambda`` other than blank is named ``<mode>-lam<lambda>``; rows
        without a finished seed keep ``seeds`` 0 and blank figures.
    """
    if summary.empty:  # no cell has a result yet: the header alone
        return pd.DataFrame(columns=list(RESULTS_COLUMNS))
    if "data_dataset" not in summary.columns and "dataset" in summary.columns:  # no sweep variants: the same name
        summary = summary.assign(data_dataset=summary["dataset"])
    needed = ["data_dataset", "ipc", "mode", "architecture", "seeds", "accuracy_mean", "deo_m_mean", "deo_a_mean"]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise ValueError(ERR_SUMMARY_COLUMNS.format(missing=missing, needed=needed))
    mode = summary["mode"].astype(str)
    if "lambda" in summary.columns:
        lam = pd.to_numeric(summary["lambda"], errors="coerce")
        mode = mode.where(lam.isna(), mode + "-lam" + lam.map(lambda v: f"{v:g}"))
    nan = pd.Series(float("nan"), index=summary.index)
    table = pd.DataFrame(
        {
            "dataset": summary["data_dataset"],
            "bias": summary["bias"].fillna("") if "bias" in summary.columns else "",
            "ipc": summary["ipc"],
            "mode": mode,
            "architecture": summary["architecture"].replace({"matching": matching}),
            "seeds": pd.to_numeric(summary["seeds"], errors="coerce").fillna(0).astype(int),
            "acc_mean": summary["accuracy_mean"],
            "acc_std": summary.get("accuracy_std", nan),
            "deo_m_mean": summary["deo_m_mean"],
            "deo_m_std": summary.get("deo_m_std", nan),
            "deo_a_mean": summary["deo_a_mean"],
        }
    )
    return table[list(RESULTS_COLUMNS)].reset_index(drop=True)
