"""The run report: comparison table, markdown assembly and figures (matplotlib, no pyplot), and the
comparison of sweep cells with the published DM table (:mod:`fdd.report.reproduction`)."""

from fdd.report.assemble import comparison_table, figure_markdown, recall_series, report_markdown
from fdd.report.plots import loss_curves, recall_heatmap, save_figure, synthetic_grid, synthetic_rows
from fdd.report.reproduction import PUBLISHED_DM, paired_comparison, paper_table

__all__ = [
    "PUBLISHED_DM",
    "comparison_table",
    "figure_markdown",
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
