"""Fairness of a distilled set: group features and separation, barycenter diagnostics, the audit.

- :mod:`~fdd.fairness.features`: per-(class, group) embeddings under a reference network.
- :mod:`~fdd.fairness.diagnostics`: each group's distance to the uniform barycenter and to
  the pooled (vanilla) target.
- :mod:`~fdd.fairness.metrics`: accuracy, DEO_M, DEO_A, worst-group and per-group figures.
- :mod:`~fdd.fairness.gdro`: Group DRO, the in-training intervention of the ``vanilla-gdro`` baseline.
- :mod:`~fdd.fairness.audit`: train fresh networks on a synthetic set and measure them on
  the real test split.
"""

from fdd.fairness.audit import AuditResult, audit_synthetic, train_stacked
from fdd.fairness.diagnostics import BarycenterDiagnostics, barycenter_diagnostics
from fdd.fairness.features import GroupFeatures, group_features, separation_table
from fdd.fairness.metrics import FairnessReport, RecallTable, fairness_report, group_class_recall, summarize_runs

__all__ = [
    "AuditResult",
    "BarycenterDiagnostics",
    "FairnessReport",
    "GroupFeatures",
    "RecallTable",
    "audit_synthetic",
    "barycenter_diagnostics",
    "fairness_report",
    "group_class_recall",
    "group_features",
    "separation_table",
    "summarize_runs",
    "train_stacked",
]
