"""Stage ``synthesize``: distil the train split in one fairness mode."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm.auto import tqdm

from fdd.config import TABULAR_DATASETS, NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages
from fdd.distillation.run import synthesize
from fdd.report.plots import save_figure, synthetic_grid, synthetic_rows
from tasks.base import (
    artifact_key,
    atomic_write_bytes,
    atomic_write_text,
    in_prefect_run,
    publish_markdown,
    run_logger,
    stage,
    stage_dir,
)

EXPERTS_CACHE = "data/cache/experts"


@stage("synthesize")
def synthesize_set(
    workspace: str,
    inputs: dict[str, str],
    mode: str,
    synthesis: SynthesisConfig,
    network: NetworkConfig,
    seed: int,
    device: str = "cpu",
) -> list[Path]:
    """Write ``data/synthetic/<mode>/synthetic.pt``, ``losses.csv`` and ``grid.png``."""
    root = Path(workspace)
    train = GroupedImages.load(root / "data/prepared/train.pt")
    dataset = json.loads((root / "data/prepared/dataset.json").read_text())
    out = stage_dir(workspace, "synthesize", mode)
    logger = run_logger()
    progress_id = (
        create_progress_artifact(
            0.0,
            key=artifact_key("synthesis", mode),
            description=f"synthesis progress of {mode}: % of {synthesis.iterations} iterations done",
        )
        if in_prefect_run()
        else None
    )

    bar = tqdm(total=synthesis.iterations, desc=f"synthesize[{mode}]", unit="it", disable=None, leave=False)

    def report_progress(iteration: int, loss: float) -> None:
        bar.update(iteration - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")
        logger.info("%s: iteration %d/%d, loss %.4f", mode, iteration, synthesis.iterations, loss)
        if progress_id is not None:
            update_progress_artifact(progress_id, 100.0 * iteration / max(synthesis.iterations, 1))  # type: ignore[arg-type]  # the id of a sync create_progress_artifact

    result = synthesize(
        train,
        mode=mode,
        config=synthesis,
        network=network,
        seed=seed,
        device=device,
        provenance={
            "train_digest": dataset["train_digest"],
            # the settings that define the set (not modes, log_every, checkpoint_every): the same
            # set made by `fdd run`, `fdd distill` or `dvc repro` carries the same record, byte for byte
            "synthesis_config": synthesis.output_settings(),
            "synthesis_config_digest": synthesis.output_digest(),
            "network_config": network.model_dump(mode="json"),
            "dataset": dataset["dataset"],
        },
        progress=report_progress,
        checkpoint=out / "checkpoint.pt",
        # MTT's expert trajectories (experts-*.pt), reused by later runs: outside the DVC-tracked output
        cache_dir=root / EXPERTS_CACHE,
    )
    bar.close()
    result.synthetic.save(out / "synthetic.pt")
    losses = pd.DataFrame({"iteration": range(1, len(result.losses) + 1), "loss": result.losses})
    atomic_write_text(out / "losses.csv", losses.to_csv(index=False))
    if dataset["dataset"] in TABULAR_DATASETS:  # rows: a rows x features heatmap instead of an image grid
        figure = synthetic_rows(
            result.synthetic, feature_names=dataset.get("feature_names", ()), title=f"{mode}: synthetic rows"
        )
    else:
        figure = synthetic_grid(result.synthetic, title=f"{mode}: synthetic set")
    atomic_write_bytes(out / "grid.png", save_figure(figure))
    timing = {"seconds": result.seconds, "seconds_per_iteration": result.seconds_per_iteration, "device": str(device)}
    atomic_write_text(out / "timing.json", json.dumps(timing, indent=2) + "\n")
    iterations = len(result.losses)  # 0 for the real-image baselines, which optimise nothing
    logger.info(
        "%s: %d iterations in %.1f s (%.3f s/iteration)",
        mode,
        iterations,
        result.seconds,
        result.seconds_per_iteration,
    )
    publish_markdown(
        artifact_key("synthesis", mode, "summary"),
        f"# Synthesis ({mode})\n\n{result.synthetic.images_per_class} images per class, {iterations} iterations, "
        f"{result.seconds:.1f} s on {device}; final loss {result.losses[-1] if result.losses else float('nan'):.4f}\n",
        f"synthesis summary for {mode}",
    )
    return [out / "synthetic.pt", out / "losses.csv", out / "grid.png", out / "timing.json"]
