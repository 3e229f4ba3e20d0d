"""Figures for reports: synthetic-image grids, loss curves, per-group recall heatmaps.

Pure functions returning matplotlib figures, built with :class:`matplotlib.figure.Figure`
directly (no pyplot, no global backend choice, no display needed); the caller saves them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from fdd.datasets.containers import SyntheticSet

__all__ = ["frontier_figure", "loss_curves", "recall_heatmap", "save_figure", "synthetic_grid", "synthetic_rows"]


def synthetic_grid(synthetic: SyntheticSet, *, max_per_class: int = 10, title: str = "") -> Figure:
    """One row per class, up to ``max_per_class`` images, in pixel space."""
    mean = torch.tensor(synthetic.mean).view(1, -1, 1, 1)
    std = torch.tensor(synthetic.std).view(1, -1, 1, 1)
    pixels = (synthetic.images.float() * std + mean).clamp(0, 1)
    num_classes = len(synthetic.class_names)
    per_class = min(max_per_class, synthetic.images_per_class)
    rows = []
    for c in range(num_classes):
        chosen = pixels[synthetic.labels == c][:per_class]
        pad = torch.zeros(per_class - chosen.shape[0], *pixels.shape[1:])
        rows.append(torch.cat([chosen, pad]))
    grid = make_grid(torch.cat(rows), nrow=per_class, padding=1, pad_value=1.0)
    fig = Figure(figsize=(per_class * 0.6 + 1, num_classes * 0.6 + 0.6))
    ax = fig.subplots()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_yticks([(i + 0.5) * (grid.shape[1] / num_classes) for i in range(num_classes)])
    ax.set_yticklabels(synthetic.class_names)
    ax.set_xticks([])
    ax.set_title(title or f"synthetic set ({synthetic.images_per_class} per class)")
    fig.tight_layout()
    return fig


def loss_curves(curves: Mapping[str, Sequence[float]], *, title: str = "matching loss") -> Figure:
    """One line per mode (each scaled by its first value, so modes compare)."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for name, values in curves.items():
        series = np.asarray(values, dtype=float)
        if series.size:
            ax.plot(np.arange(1, series.size + 1), series / (series[0] or 1.0), label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss / first-iteration loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def recall_heatmap(recall: np.ndarray, *, group_names: Sequence[str], class_names: Sequence[str], title: str) -> Figure:
    """Per-(group, class) recall in percent; NaN cells blank."""
    fig = Figure(figsize=(0.55 * len(class_names) + 2, 0.4 * len(group_names) + 1.2))
    ax = fig.subplots()
    image = ax.imshow(np.asarray(recall, dtype=float), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(class_names)), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(len(group_names)), labels=list(group_names))
    ax.set_xlabel("class")
    ax.set_ylabel("group")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="recall (%)")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure) -> bytes:
    """PNG bytes of ``fig``, for atomic writes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def synthetic_rows(synthetic: SyntheticSet, *, feature_names: Sequence[str] = (), title: str = "") -> Figure:
    """Synthetic tabular rows (``(N, F, 1, 1)``, standardised space) as a rows x features heatmap.

    Rows are sorted by class; colour is the standardised value clipped to [-3, 3].
    """
    order = torch.argsort(synthetic.labels, stable=True)
    values = synthetic.images.float().flatten(1)[order].clamp(-3, 3).numpy()
    labels = synthetic.labels[order].numpy()
    fig = Figure(figsize=(min(0.12 * values.shape[1] + 3, 16), min(0.18 * values.shape[0] + 2.5, 12)))
    ax = fig.subplots()
    image = ax.imshow(values, vmin=-3, vmax=3, cmap="coolwarm", aspect="auto", interpolation="nearest")
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ax.set_yticks(starts, labels=[synthetic.class_names[labels[s]] for s in starts])
    if feature_names and len(feature_names) == values.shape[1] and values.shape[1] <= 40:
        ax.set_xticks(range(values.shape[1]), labels=list(feature_names), rotation=90)
    else:
        ax.set_xlabel("feature")
    ax.set_title(title or f"synthetic rows ({synthetic.images_per_class} per class)")
    fig.colorbar(image, ax=ax, label="standardised value")
    fig.tight_layout()
    return fig


def _nan_to_zero(values: pd.Series) -> np.ndarray:
    return np.nan_to_num(values.to_numpy(dtype=float), nan=0.0)


def frontier_figure(table: pd.DataFrame, *, panels: Sequence[str] = (), title: str = "") -> Figure:
    """Accuracy against DEO_M, one subplot per panel (:func:`fdd.report.frontier.frontier_table`).

    Each mode's point without a lambda is a marker with error bars (std over seeds; none for one
    seed); a mode's points at several lambdas are joined in lambda order and labelled with
    their lambda. A mode keeps its colour in every panel. Up-left is better: accurate and fair.
    """
    keys = list(panels)
    groups = list(table.groupby(keys, sort=False)) if keys else [((), table)]
    modes = list(dict.fromkeys(table["mode"]))
    colours = {mode: f"C{i % 10}" for i, mode in enumerate(modes)}
    columns = min(len(groups), 3) or 1
    rows = -(-max(len(groups), 1) // columns)
    fig = Figure(figsize=(5.2 * columns, 4.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (key, panel) in zip(axes, groups):
        key = key if isinstance(key, tuple) else (key,)
        for mode in dict.fromkeys(panel["mode"]):
            part = panel[panel["mode"] == mode]
            lam = pd.to_numeric(part["lambda"], errors="coerce")
            single, curve = part[lam.isna()], part[lam.notna()].sort_values("lambda")
            style = dict(color=colours[mode], capsize=3, elinewidth=1)
            if len(single):
                ax.errorbar(
                    single["deo_m_mean"],
                    single["accuracy_mean"],
                    xerr=_nan_to_zero(single["deo_m_std"]),
                    yerr=_nan_to_zero(single["accuracy_std"]),
                    fmt="o",
                    label=mode,
                    **style,
                )
            if len(curve):
                ax.errorbar(
                    curve["deo_m_mean"],
                    curve["accuracy_mean"],
                    xerr=_nan_to_zero(curve["deo_m_std"]),
                    yerr=_nan_to_zero(curve["accuracy_std"]),
                    fmt="-s",
                    markersize=4,
                    label=f"{mode}, lambda {', '.join(f'{v:g}' for v in curve['lambda'])}",
                    **style,
                )
                for x, y, value in zip(curve["deo_m_mean"], curve["accuracy_mean"], curve["lambda"]):
                    if not math.isnan(float(x)) and not math.isnan(float(y)):
                        ax.annotate(f"{value:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("DEO_M (%, lower is fairer)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(", ".join(f"{k} {v}" for k, v in zip(keys, key)) or title or "fairness-accuracy frontier")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    if title and keys:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
