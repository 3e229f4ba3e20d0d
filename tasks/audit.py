"""Stage ``audit``: train fresh networks on a synthetic set and measure fairness."""

from __future__ import annotations

from pathlib import Path

from fdd.config import AuditConfig, NetworkConfig
from fdd.datasets.containers import GroupedImages, SyntheticSet
from fdd.fairness.audit import audit_synthetic
from fdd.fairness.metrics import NOTE_ONE_GROUP, groups_with_samples
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


@stage("audit")
def audit_set(
    workspace: str, inputs: dict[str, str], mode: str, audit: AuditConfig, network: NetworkConfig, device: str = "cpu"
) -> list[Path]:
    """Write ``data/audit/<mode>/metrics.json``, ``group_recall.csv``, ``class_gaps.csv`` and a heatmap."""
    root = Path(workspace)
    synthetic = SyntheticSet.load(root / "data/synthetic" / mode / "synthetic.pt")
    test = GroupedImages.load(root / "data/prepared/test.pt")
    out = stage_dir(workspace, "audit", mode)
    logger = run_logger()
    result = audit_synthetic(
        synthetic, test, config=audit, network=network, device=device,
        progress=lambda done: logger.info("%s: evaluation %d/%d done", mode, done, audit.num_eval),
    )
    summary = result.summary
    metrics = {name: summary[name]["mean"] for name in HEADLINE}
    metrics.update({f"{name}_std": summary[name]["std"] for name in HEADLINE})
    metrics["num_eval"] = audit.num_eval
    present = groups_with_samples(test.groups, test.group_names)
    if len(present) < 2:  # DEO of 0 would read as perfectly fair: empty figures and a note instead
        for name in ("deo_m", "deo_a"):
            metrics[name] = metrics[f"{name}_std"] = None
        metrics["note"] = NOTE_ONE_GROUP.format(groups=", ".join(present) or "none", split="test")
        logger.warning("%s: %s", mode, metrics["note"])
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "runs.json", result.to_dict())
    first = result.reports[0]
    recall = first.recall_frame()
    long = recall.reset_index(names="group").melt(id_vars="group", var_name="class", value_name="recall")
    atomic_write_text(out / "group_recall.csv", long.to_csv(index=False))
    atomic_write_text(out / "class_gaps.csv", first.gap_frame().to_csv(index=True, index_label="class"))
    atomic_write_bytes(
        out / "group_recall.png",
        save_figure(recall_heatmap(first.recall, group_names=test.group_names, class_names=test.class_names,
                                   title=f"{mode}: recall per group and class (%)")),
    )
    logger.info(
        "%s: accuracy %.2f, DEO_M %s, DEO_A %s (mean of %d)", mode, metrics["accuracy"],
        *("n/a" if metrics[k] is None else f"{metrics[k]:.2f}" for k in ("deo_m", "deo_a")), audit.num_eval,
    )
    publish_table(
        artifact_key("metrics", mode),
        [{"mode": mode, **{k: v if v is None or isinstance(v, str) else round(float(v), 3) for k, v in metrics.items()}}],
        f"fairness metrics of the {mode} synthetic set",
    )
    return [out / "metrics.json", out / "runs.json", out / "group_recall.csv", out / "class_gaps.csv", out / "group_recall.png"]
