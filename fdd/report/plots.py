"""Figures for reports: synthetic-image grids, loss curves, per-group recall heatmaps.

Pure functions returning matplotlib figures, built with :class:`matplotlib.figure.Figure`
directly (no pyplot, no global backend choice, no display needed); the caller saves them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from fdd.datasets.containers import SyntheticSet

__all__ = ["loss_curves", "recall_heatmap", "save_figure", "synthetic_grid", "synthetic_rows"]


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
