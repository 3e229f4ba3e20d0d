"""Stage ``report``: one side-by-side table of the modes and a markdown report."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pandas as pd

from fdd.config import PipelineConfig
from fdd.plots import loss_curves, save_figure
from tasks.base import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    publish_markdown,
    publish_table,
    stage,
    stage_dir,
)

COLUMNS = {
    "accuracy": "Acc (%)",
    "deo_m": "DEO_M (%)",
    "deo_a": "DEO_A (%)",
    "worst_group_accuracy": "worst-group acc (%)",
}


def comparison_table(metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per mode: mean +/- std of the headline metrics."""
    rows = []
    for mode, values in metrics.items():
        row = {"mode": mode}
        for key, label in COLUMNS.items():
            row[label] = f"{values[key]:.2f} ± {values[key + '_std']:.2f}"
        row["evaluations"] = values["num_eval"]
        rows.append(row)
    return pd.DataFrame(rows)


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


FIGURES_MARKER = "<!-- figures -->"


def report_figures(root: Path, modes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(caption, PNG) of the report: loss curves, then per mode the synthetic grid and recall heatmap."""
    figures = [("Matching loss per mode (scaled by its first value)", root / "data/report/loss_curves.png")]
    for m in modes:
        figures.append((f"{m}: synthetic images, one row per class", root / "data/synthetic" / m / "grid.png"))
        figures.append((f"{m}: test recall per group and class (%)", root / "data/audit" / m / "group_recall.png"))
    return figures


def figure_markdown(figures: list[tuple[str, Path]], *, base: Path | None) -> str:
    """Markdown images: linked relative to ``base`` (the report's folder), or inline PNG data when None."""
    parts = []
    for caption, path in figures:
        if base is None:
            target = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            target = Path(os.path.relpath(path, base)).as_posix()
        parts.append(f"**{caption}**\n\n![{caption}]({target})")
    return "\n\n".join(parts)


@stage("report")
def write_report(workspace: str, inputs: dict[str, str], modes: tuple[str, ...], config: PipelineConfig) -> list[Path]:
    """Write ``data/report/{report.md, comparison.csv, loss_curves.png}``, ``data/metrics.json`` and ``data/plots/``."""
    root = Path(workspace)
    out = stage_dir(workspace, "report")
    metrics = {m: json.loads((root / "data/audit" / m / "metrics.json").read_text()) for m in modes}
    table = comparison_table(metrics)
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    atomic_write_json(root / "data/metrics.json", metrics)
    curves = {m: pd.read_csv(root / "data/synthetic" / m / "losses.csv")["loss"].tolist() for m in modes}
    plot_files = []
    for m in modes:  # DVC plots: one series file per mode
        losses = pd.read_csv(root / "data/synthetic" / m / "losses.csv")
        recall = pd.read_csv(root / "data/audit" / m / "group_recall.csv")
        recall.insert(0, "cell", recall["class"].astype(str) + " / " + recall["group"].astype(str))
        for kind, frame in (("losses", losses), ("group_recall", recall)):
            path = root / "data/plots" / kind / f"{m}.csv"
            atomic_write_text(path, frame.to_csv(index=False))
            plot_files.append(path)
    atomic_write_bytes(out / "loss_curves.png", save_figure(loss_curves(curves)))
    dataset = json.loads((root / "data/prepared/dataset.json").read_text())
    classes = pd.read_csv(root / "data/partition/classes.csv")
    separation = pd.read_csv(root / "data/features/separation.csv")
    diagnostics = pd.read_csv(root / "data/barycenters/classes.csv")
    timing = {m: json.loads((root / "data/synthetic" / m / "timing.json").read_text()) for m in modes}
    unit = "rows" if "feature_names" in dataset else "images"  # tabular data (docs/tabular.md)
    net_name = "MLP" if config.network.architecture == "mlp" else "ConvNet"
    sections = [
        "# Fair dataset distillation report",
        f"Dataset **{dataset['dataset']}** ({dataset.get('description') or str(dataset['bias']) + ' bias'}; "
        f"{dataset['train_images']} train / "
        f"{dataset['test_images']} test {unit}; source: {dataset['source']}). Backbone "
        f"**{config.synthesis.backbone.upper()}**, {config.synthesis.ipc} {unit} per class, "
        f"{config.synthesis.iterations} iterations, {net_name} width {config.network.width}"
        + (f", depth {config.network.resolved_depth(dataset['image_shape'][-1])} on "
           f"{dataset['image_shape'][-2]}x{dataset['image_shape'][-1]} images."
           if "image_shape" in dataset and unit == "images" else ".")
        + f"\n\nClasses: {', '.join(dataset['class_names'])}. Protected groups: {', '.join(dataset['group_names'])}.",
        "## Results (mean ± std over evaluation seeds)",
        *([f"**{summary}**"] if (summary := headline(metrics)) else []),
        table.to_markdown(index=False),
        "## Figures",
        FIGURES_MARKER,
        "## Synthesis time",
        pd.DataFrame(
            [{"mode": m, "seconds": round(t["seconds"], 1), "s/iteration": round(t["seconds_per_iteration"], 4),
              "device": t["device"]} for m, t in timing.items()]
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
        "```json\n" + json.dumps(config.model_dump(mode="json"), indent=2) + "\n```",
    ]
    markdown = "\n\n".join(sections) + "\n"
    figures = report_figures(root, modes)
    atomic_write_text(out / "report.md", markdown.replace(FIGURES_MARKER, figure_markdown(figures, base=out)))
    # the Prefect UI cannot read local files: its copy of the report carries the PNGs inline
    publish_markdown("report", markdown.replace(FIGURES_MARKER, figure_markdown(figures, base=None)),
                     "fair distillation report")
    publish_table("comparison", table.to_dict("records"), summary or "modes side by side")
    return [out / "report.md", out / "comparison.csv", out / "loss_curves.png", root / "data/metrics.json", *plot_files]
