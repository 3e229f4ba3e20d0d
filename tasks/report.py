"""Stage ``report``: one side-by-side table of the modes and a markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fdd.config import PipelineConfig
from fdd.report.assemble import (
    FIGURES_MARKER,
    comparison_table,
    figure_markdown,
    headline,
    recall_series,
    report_markdown,
)
from fdd.report.frontier import frontier_from_metrics
from fdd.report.plots import frontier_figure, loss_curves, save_figure
from tasks.base import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    publish_markdown,
    publish_table,
    stage,
    stage_dir,
)


def report_figures(root: Path, modes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(caption, PNG) of the report: loss curves, then per mode the synthetic grid and recall heatmap."""
    figures = [("Matching loss per mode (scaled by its first value)", root / "data/report/loss_curves.png")]
    if (root / "data/report/frontier.png").exists():
        figures.append(("Accuracy against DEO_M per mode (std over evaluations)", root / "data/report/frontier.png"))
    for m in modes:
        figures.append((f"{m}: synthetic images, one row per class", root / "data/synthetic" / m / "grid.png"))
        figures.append((f"{m}: test recall per group and class (%)", root / "data/audit" / m / "group_recall.png"))
    return figures


@stage("report")
def write_report(workspace: str, inputs: dict[str, str], modes: tuple[str, ...], config: PipelineConfig) -> list[Path]:
    """Write ``data/report/{report.md, comparison.csv, loss_curves.png}``, ``data/metrics.json`` and ``data/plots/``.

    Also ``data/report/frontier.{csv,png}``, accuracy against DEO_M of every mode (the
    frontier; cobra labelled with its ``synthesis.barycenter_lambda`` when that is not 1),
    unless no mode has a DEO_M (one group in the test split).
    """
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
        recall = recall_series(pd.read_csv(root / "data/audit" / m / "group_recall.csv"))
        for kind, frame in (("losses", losses), ("group_recall", recall)):
            path = root / "data/plots" / kind / f"{m}.csv"
            atomic_write_text(path, frame.to_csv(index=False))
            plot_files.append(path)
    atomic_write_bytes(out / "loss_curves.png", save_figure(loss_curves(curves)))
    lam = config.synthesis.barycenter_lambda
    frontier = frontier_from_metrics(metrics, lambdas={"cobra": lam} if lam != 1.0 else None)
    frontier_files = []
    if len(frontier):
        atomic_write_text(out / "frontier.csv", frontier.to_csv(index=False))
        figure = frontier_figure(frontier, title="accuracy against DEO_M (mean and std over evaluations)")
        atomic_write_bytes(out / "frontier.png", save_figure(figure))
        frontier_files = [out / "frontier.csv", out / "frontier.png"]
    summary = headline(metrics)
    markdown = report_markdown(
        table=table,
        dataset=json.loads((root / "data/prepared/dataset.json").read_text()),
        timing={m: json.loads((root / "data/synthetic" / m / "timing.json").read_text()) for m in modes},
        classes=pd.read_csv(root / "data/partition/classes.csv"),
        separation=pd.read_csv(root / "data/features/separation.csv"),
        diagnostics=pd.read_csv(root / "data/barycenters/classes.csv"),
        network=config.network,
        synthesis=config.synthesis,
        settings=config.output_settings(),
        summary=summary,
    )
    figures = report_figures(root, modes)
    atomic_write_text(out / "report.md", markdown.replace(FIGURES_MARKER, figure_markdown(figures, base=out)))
    # the Prefect UI cannot read local files: its copy of the report carries the PNGs inline
    publish_markdown(
        "report", markdown.replace(FIGURES_MARKER, figure_markdown(figures, base=None)), "fair distillation report"
    )
    publish_table("comparison", table.to_dict("records"), summary or "modes side by side")
    return [
        out / "report.md",
        out / "comparison.csv",
        out / "loss_curves.png",
        *frontier_files,
        root / "data/metrics.json",
        *plot_files,
    ]
