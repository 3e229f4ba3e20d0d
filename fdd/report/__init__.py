"""The run report: comparison table, markdown assembly and figures (matplotlib, no pyplot)."""

from fdd.report.assemble import comparison_table, figure_markdown, recall_series, report_markdown
from fdd.report.plots import loss_curves, recall_heatmap, save_figure, synthetic_grid, synthetic_rows

__all__ = [
    "comparison_table",
    "figure_markdown",
    "loss_curves",
    "recall_heatmap",
    "recall_series",
    "report_markdown",
    "save_figure",
    "synthetic_grid",
    "synthetic_rows",
]
