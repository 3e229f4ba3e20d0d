"""The run report: comparison table, markdown assembly and figures (matplotlib, no pyplot), and the
comparison of sweep cells with the published DM table (:mod:`fdd.report.reproduction`), the
fairness-accuracy frontier (:mod:`fdd.report.frontier`)."""

from fdd.report.assemble import comparison_table, figure_markdown, recall_series, report_markdown
from fdd.report.frontier import frontier_from_metrics, frontier_table
from fdd.report.plots import frontier_figure, loss_curves, recall_heatmap, save_figure, synthetic_grid, synthetic_rows
from fdd.report.reproduction import PUBLISHED_DM, paired_comparison, paper_table

__all__ = [
    "PUBLISHED_DM",
    "comparison_table",
    "figure_markdown",
    "frontier_figure",
    "frontier_from_metrics",
    "frontier_table",
    "loss_curves",
    "paired_comparison",
    "paper_table",
    "recall_heatmap",
    "recall_series",
    "report_markdown",
    "save_figure",
    "synthetic_grid",
    "synthetic_rows",
]
