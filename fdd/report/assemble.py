"""The run report: the modes side by side, the data, the diagnostics and the settings, as markdown.

Pure functions of what the earlier stages wrote (already read by the caller): the
``report`` stage reads the files, calls :func:`comparison_table` and
:func:`report_markdown`, and writes the results.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fdd.config import NetworkConfig, SynthesisConfig

__all__ = [
    "BASELINE_MODE",
    "headline",
    "COLUMNS",
    "FIGURES_MARKER",
    "audit_markdown",
    "comparison_table",
    "figure_markdown",
    "recall_series",
    "report_markdown",
]

#: The headline metrics of the comparison table and their column labels.
COLUMNS = {
    "accuracy": "Acc (%)",
    "deo_m": "DEO_M (%)",
    "deo_a": "DEO_A (%)",
    "worst_group_accuracy": "worst-group acc (%)",
    "suff_m": "suff gap (%)",
}
#: Where :func:`report_markdown` leaves room for the figures (:func:`figure_markdown`).
FIGURES_MARKER = "<!-- figures -->"


def comparison_table(metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per mode and evaluation architecture: mean +/- std of the headline metrics.

    ``metrics`` maps a mode (or any label) to its ``metrics.json``; the architectures are those
    of its ``architectures`` entry in the order of ``architecture_names``, else the one it names
    in ``architecture`` (``matching`` for a metrics.json written before evaluation
    architectures existed).
    """
    rows = []
    for mode, values in metrics.items():
        per_architecture = values.get("architectures") or {values.get("architecture", "matching"): values}
        for architecture in values.get("architecture_names") or list(per_architecture):
            figures = per_architecture[architecture]
            row: dict[str, Any] = {"mode": mode, "architecture": architecture}
            for key, label in COLUMNS.items():
                if key not in figures:  # metrics.json of an older fdd has no sufficiency gap
                    continue
                if figures[key] is None:  # fairness not measurable (one group in the test split)
                    row[label] = "n/a (one group)"
                    continue
                row[label] = f"{figures[key]:.2f} ± {figures[key + '_std']:.2f}"
            row["evaluations"] = figures["num_eval"]
            rows.append(row)
    return pd.DataFrame(rows)


def recall_series(recall: pd.DataFrame) -> pd.DataFrame:
    """The per-(class, group) recall table with a ``cell`` label first (``class / group``), for DVC plots."""
    series = recall.copy()
    series.insert(0, "cell", series["class"].astype(str) + " / " + series["group"].astype(str))
    return series


def figure_markdown(figures: Sequence[tuple[str, Path]], *, base: Path | None) -> str:
    """Markdown images: linked relative to ``base`` (the report's folder), or inline PNG data when None."""
    parts = []
    for caption, path in figures:
        if base is None:
            target = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            target = Path(os.path.relpath(path, base)).as_posix()
        parts.append(f"**{caption}**\n\n![{caption}]({target})")
    return "\n\n".join(parts)


BASELINE_MODE = "vanilla"


def headline(metrics: dict[str, dict[str, float]], *, baseline: str = BASELINE_MODE) -> str | None:
    """One sentence saying what each mode changed against ``baseline`` (None without a baseline to compare).

    E.g. "Against vanilla, cobra raised accuracy from 52.35% to 89.67% and cut the
    worst-class gap DEO_M from 100.00 to 16.89 points." Means over the evaluations,
    compared at the two decimals the table shows.
    """
    if baseline not in metrics or len(metrics) < 2:
        return None
    base = metrics[baseline]
    parts = []
    for mode, values in metrics.items():
        if mode == baseline:
            continue
        old_acc, new_acc = round(base["accuracy"], 2), round(values["accuracy"], 2)
        old_deo, new_deo = round(base["deo_m"], 2), round(values["deo_m"], 2)
        if new_acc == old_acc:
            accuracy = f"kept accuracy at {new_acc:.2f}%"
        else:
            accuracy = f"{'raised' if new_acc > old_acc else 'lowered'} accuracy from {old_acc:.2f}% to {new_acc:.2f}%"
        if new_deo == old_deo:
            gap = f"left the worst-class gap DEO_M at {new_deo:.2f} points"
        else:
            gap = f"{'cut' if new_deo < old_deo else 'widened'} the worst-class gap DEO_M from {old_deo:.2f} to {new_deo:.2f} points"
        parts.append(f"{mode} {accuracy} and {gap}")
    return f"Against {baseline}, " + "; ".join(parts) + "."


def report_markdown(
    *,
    table: pd.DataFrame,
    dataset: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    classes: pd.DataFrame,
    separation: pd.DataFrame,
    diagnostics: pd.DataFrame,
    network: NetworkConfig,
    synthesis: SynthesisConfig,
    settings: Mapping[str, Any],
    summary: str | None = None,
) -> str:
    """The report's markdown, with :data:`FIGURES_MARKER` where the figures go.

    Parameters
    ----------
    table : DataFrame
        :func:`comparison_table` of the audited modes.
    dataset : mapping
        The ingest summary (``data/prepared/dataset.json``).
    timing : mapping
        Per mode, the synthesis time record (``seconds``, ``seconds_per_iteration``, ``device``).
    classes, separation, diagnostics : DataFrame
        The per-class partition, the group separation under the reference embedder and the
        barycenter distances.
    network, synthesis : config sections
        The settings the summary line names.
    settings : mapping
        The settings that define the results (JSON-able), printed at the end.
    summary : str, optional
        One sentence above the table (:func:`headline`).
    """
    unit = "rows" if "feature_names" in dataset else "images"  # tabular data (docs/tabular.md)
    net_name = "MLP" if network.architecture == "mlp" else "ConvNet"
    sections = [
        "# Fair dataset distillation report",
        f"Dataset **{dataset['dataset']}** ({dataset.get('description') or str(dataset['bias']) + ' bias'}; "
        f"{dataset['train_images']} train / "
        f"{dataset['test_images']} test {unit}; source: {dataset['source']}). Backbone "
        f"**{synthesis.backbone.upper()}**, {synthesis.ipc} {unit} per class, "
        f"{synthesis.iterations} iterations, {net_name} width {network.width}"
        + (
            f", depth {network.resolved_depth(dataset['image_shape'][-1])} on "
            f"{dataset['image_shape'][-2]}x{dataset['image_shape'][-1]} images."
            if "image_shape" in dataset and unit == "images"
            else "."
        )
        + f"\n\nClasses: {', '.join(dataset['class_names'])}. Protected groups: {', '.join(dataset['group_names'])}.",
        "## Results (mean ± std over evaluation seeds)",
        *[f"**Warning:** {note}" for note in dataset.get("warnings", [])],
        *([f"**{summary}**"] if summary else []),
        table.to_markdown(index=False),
        "## Figures",
        FIGURES_MARKER,
        "## Synthesis time",
        pd.DataFrame(
            [
                {
                    "mode": m,
                    "seconds": round(t["seconds"], 1),
                    "s/iteration": round(t["seconds_per_iteration"], 4),
                    "device": t["device"],
                }
                for m, t in timing.items()
            ]
        ).to_markdown(index=False),
        "## Train-split partition (per class)",
        classes.round(3).to_markdown(index=False),
        "## Group separation under the reference embedder",
        separation.round(3).to_markdown(index=False),
        "## Distance of each group to the uniform barycenter vs to the pooled (vanilla) target",
        "Means over the groups of each class; `w2_*` are W2 distances of the groups' embedding clouds "
        "to the free-support barycenter with uniform and with proportional (vanilla) weights.",
        diagnostics.round(3).to_markdown(index=False),
        "## Configuration",
        "The settings that define these results (the stages' cache keys; `fdd/config.py` lists the others).",
        "```json\n" + json.dumps(dict(settings), indent=2) + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def audit_markdown(
    *, table: pd.DataFrame, name: str, source: str, dataset: Mapping[str, Any], figures: str = ""
) -> str:
    """The report of ``fdd audit PATH``: the results section of the pipeline's report for one set.

    Parameters
    ----------
    table : DataFrame
        :func:`comparison_table` of ``{name: metrics.json}`` (one row per architecture).
    name, source : str
        The set's label and where it was read from (file or folder, and its layout).
    dataset : mapping
        The ingest summary of the test split it was audited on (``data/prepared/dataset.json``).
    figures : str
        :func:`figure_markdown` of the recall heatmap, or empty.
    """
    sections = [
        f"# Audit of {name}",
        f"Synthetic set: {source}. Audited on the test split of **{dataset['dataset']}** "
        f"({dataset.get('description') or str(dataset.get('bias', '')) + ' bias'}; {dataset['test_images']} test images).",
        "## Results (mean ± std over evaluation seeds)",
        table.to_markdown(index=False),
    ]
    if figures:
        sections += ["## Figures", figures]
    return "\n\n".join(sections) + "\n"
