"""Stage ``audit``: train fresh networks on a synthetic set and measure fairness."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fdd.config import AUDIT_INTERVENTIONS, AuditConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.datasets.external import load_external_set
from fdd.fairness.audit import AuditResult, audit_architectures
from fdd.fairness.metrics import NOTE_ONE_GROUP, groups_with_samples
from fdd.report.assemble import audit_markdown, comparison_table, figure_markdown
from fdd.report.plots import recall_heatmap, save_figure
from tasks.base import (
    artifact_key,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    publish_table,
    run_logger,
    stage,
    stage_dir,
)

#: metrics.json's figures (mean over evaluations, and ``<name>_std``); suff_m / suff_a are the
#: max and mean sufficiency (precision) gaps of fdd.metrics.
HEADLINE = ("accuracy", "deo_m", "deo_a", "worst_group_accuracy", "suff_m", "suff_a")
#: What the audit writes into its folder (:func:`write_audit`).
AUDIT_FILES = (
    "metrics.json",
    "runs.json",
    "architectures.csv",
    "group_recall.csv",
    "class_gaps.csv",
    "group_recall.png",
)


def headline(result: AuditResult, num_eval: int, test: GroupedImages | None = None) -> dict[str, Any]:
    """The mean and ``<name>_std`` of each :data:`HEADLINE` figure over the evaluations, and ``num_eval``.

    When ``test`` has fewer than two protected groups with samples, DEO_M and DEO_A are None
    and ``note`` says why: a gap of 0 over one group would read as perfectly fair.
    """
    summary = result.summary
    metrics: dict[str, Any] = {name: summary[name]["mean"] for name in HEADLINE}
    metrics.update({f"{name}_std": summary[name]["std"] for name in HEADLINE})
    metrics["num_eval"] = num_eval
    if test is not None:
        present = groups_with_samples(test.groups, test.group_names)
        if len(present) < 2:
            for name in ("deo_m", "deo_a"):
                metrics[name] = metrics[f"{name}_std"] = None
            metrics["note"] = NOTE_ONE_GROUP.format(groups=", ".join(present) or "none", split="test")
    return metrics


def _rounded(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if v is None or isinstance(v, str) else round(float(v), 3) for k, v in metrics.items()}


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_audit(
    out: Path, results: Mapping[str, AuditResult], test: GroupedImages, *, title: str, num_eval: int
) -> list[Path]:
    """Write the audit's files (:data:`AUDIT_FILES`) for ``results`` (architecture -> result) into ``out``.

    ``metrics.json`` keeps the first architecture's figures at the top level (the matching
    network by default, as before evaluation architectures existed), names it in
    ``architecture``, holds every architecture's figures under ``architectures`` and their
    order (that of ``audit.architectures``) in ``architecture_names``, and each one's
    :class:`fdd.fairness.audit.EvaluationProtocol` under ``evaluation_protocol``;
    ``architectures.csv`` has one row per architecture; ``runs.json`` the per-seed reports
    (the first architecture's at the top level, each under ``architectures``). The recall
    table, gap table and heatmap are the first architecture's first evaluation.
    """
    first_name, first = next(iter(results.items()))
    figures = {name: headline(result, num_eval, test) for name, result in results.items()}
    metrics = {
        **figures[first_name],
        "architecture": first_name,
        "architectures": figures,
        "architecture_names": list(figures),
        # how each architecture was trained: augmentation, its families, learning rate (docs/evaluation.md)
        "evaluation_protocol": {
            name: result.protocol.to_dict() for name, result in results.items() if result.protocol is not None
        },
    }  # JSON keys are written sorted: this keeps the listed order
    runs = {**first.to_dict(), "architectures": {name: result.to_dict() for name, result in results.items()}}
    table = pd.DataFrame([{"architecture": name, **values} for name, values in figures.items()])
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "runs.json", runs)
    atomic_write_text(out / "architectures.csv", table.to_csv(index=False))
    report = first.reports[0]
    recall = report.recall_frame()
    long = recall.reset_index(names="group").melt(id_vars="group", var_name="class", value_name="recall")
    atomic_write_text(out / "group_recall.csv", long.to_csv(index=False))
    atomic_write_text(out / "class_gaps.csv", report.gap_frame().to_csv(index=True, index_label="class"))
    atomic_write_bytes(
        out / "group_recall.png",
        save_figure(
            recall_heatmap(
                report.recall,
                group_names=test.group_names,
                class_names=test.class_names,
                title=f"{title}: recall per group and class (%)",
            )
        ),
    )
    return [out / name for name in AUDIT_FILES]


@stage("audit")
def audit_set(
    workspace: str, inputs: dict[str, str], mode: str, audit: AuditConfig, network: NetworkConfig, device: str = "cpu"
) -> list[Path]:
    """Write ``data/audit/<mode>/``: :data:`AUDIT_FILES`, one set of figures per ``audit.architectures`` entry.

    ``full-data`` trains for ``audit.full_data_epochs``; a mode of ``AUDIT_INTERVENTIONS``
    (``vanilla-gdro``) trains with its intervention (docs/evaluation.md, "Baselines").
    """
    root = Path(workspace)
    synthetic = SyntheticSet.load(root / "data/synthetic" / mode / "synthetic.pt")
    test = GroupedImages.load(root / "data/prepared/test.pt")
    out = stage_dir(workspace, "audit", mode)
    logger = run_logger()
    results = audit_architectures(
        synthetic,
        test,
        config=audit,
        network=network,
        device=device,
        progress=lambda name, done: logger.info("%s on %s: evaluation %d/%d done", mode, name, done, audit.num_eval),
        epochs=audit.epochs_for(mode),
        intervention=AUDIT_INTERVENTIONS.get(mode, "none"),
    )
    written = write_audit(out, results, test, title=mode, num_eval=audit.num_eval)
    rows = []
    for name, result in results.items():
        metrics = headline(result, audit.num_eval, test)
        if "note" in metrics:
            logger.warning("%s: %s", mode, metrics["note"])
        logger.info(
            "%s on %s: accuracy %.2f, DEO_M %s, DEO_A %s (mean of %d)",
            mode,
            name,
            metrics["accuracy"],
            _figure(metrics["deo_m"]),
            _figure(metrics["deo_a"]),
            audit.num_eval,
        )
        rows.append({"mode": mode, "architecture": name, **_rounded(metrics)})
    publish_table(artifact_key("metrics", mode), rows, f"fairness metrics of the {mode} synthetic set")
    return written


def audit_external(
    workspace: str,
    path: str | Path,
    out: Path,
    *,
    name: str,
    audit: AuditConfig,
    network: NetworkConfig,
    device: str = "cpu",
    experiment: int = 0,
    source_mean: tuple[float, ...] | None = None,
    source_std: tuple[float, ...] | None = None,
) -> list[Path]:
    """``fdd audit PATH``: audit a synthetic set made anywhere on the workspace's prepared test split.

    Reads the set with :func:`fdd.datasets.external.load_external_set`, audits it on every
    ``audit.architectures`` entry and writes :data:`AUDIT_FILES` and ``report.md`` (the
    pipeline report's results section for this set) into ``out``. Not a cached stage: the
    set is outside the workspace's DVC-tracked data.
    """
    root = Path(workspace)
    test = GroupedImages.load(root / "data/prepared/test.pt")
    synthetic = load_external_set(
        path, test=test, experiment=experiment, source_mean=source_mean, source_std=source_std
    )
    logger = run_logger()
    results = audit_architectures(
        synthetic,
        test,
        config=audit,
        network=network,
        device=device,
        progress=lambda arch, done: logger.info("%s on %s: evaluation %d/%d done", name, arch, done, audit.num_eval),
    )
    written = write_audit(out, results, test, title=name, num_eval=audit.num_eval)
    metrics = json.loads((out / "metrics.json").read_text())
    source = f"{path} ({synthetic.provenance['format']}, {synthetic.images.shape[0]} images)"
    markdown = audit_markdown(
        table=comparison_table({name: metrics}),
        name=name,
        source=source,
        dataset=json.loads((root / "data/prepared/dataset.json").read_text()),
        figures=figure_markdown([(f"{name}: test recall per group and class (%)", out / "group_recall.png")], base=out),
    )
    atomic_write_text(out / "report.md", markdown)
    return [*written, out / "report.md"]
