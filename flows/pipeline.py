"""The distillation flows: one Prefect flow chaining the cached stage tasks.

    ingest -> partition -> features -> barycenters -> synthesize[mode] -> audit[mode] -> report

``compare_flow`` runs every mode of ``synthesis.modes`` on the same prepared data and
writes one side-by-side table; ``distill_flow`` runs a single mode. The stage list
below is the single definition that ``dvc.yaml`` must match (a test checks it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prefect import flow

from fdd.datasets.image_sources import user_files_digest
from flows.configuration import (  # noqa: F401  (re-exported for callers of the flows)
    ERR_NO_CUDA,
    FlowConfig,
    load_config,
    resolve_device,
    with_modes,
)
from flows.lock import holds_workspace_lock
from tasks.audit import audit_set
from tasks.barycenters import compute_barycenters
from tasks.base import STAGE_FOLDERS, call_stage
from tasks.features import extract_features
from tasks.ingest import ingest
from tasks.partition import partition
from tasks.report import write_report
from tasks.synthesize import synthesize_set

STAGES: tuple[str, ...] = ("ingest", "partition", "features", "barycenters", "synthesize", "audit", "report")
PER_MODE_STAGES: tuple[str, ...] = ("synthesize", "audit")


def _pick(outputs: dict[str, str], *names: str) -> dict[str, str]:
    return {path: digest for path, digest in outputs.items() if Path(path).name in names}


def _folder(name: str, mode: str | None) -> str:
    return f"{STAGE_FOLDERS[name]}/{mode}" if mode else STAGE_FOLDERS[name]


def stage_call(
    name: str,
    mode: str | None,
    *,
    config: FlowConfig,
    workspace: str,
    device: str,
    modes: tuple[str, ...],
    outputs: Callable[[str], dict[str, str]],
) -> tuple[Any, dict[str, Any]]:
    """The task of stage ``name`` and its arguments: the one wiring of the pipeline.

    ``outputs(folder)`` gives an upstream stage's ``{path: sha256}``: the task results
    inside the flow, the stages' manifests under ``dvc repro``. Each stage receives
    exactly the files it reads as ``inputs``, so its cache key covers them.
    """
    if name == "ingest":
        return ingest, {
            "workspace": workspace,
            "data": config.data,
            "raw_digest": user_files_digest(config.data, workspace=workspace),
        }
    prepared = outputs("prepared")
    if name == "partition":
        return partition, {"workspace": workspace, "inputs": _pick(prepared, "train.pt")}
    if name == "features":
        return extract_features, {
            "workspace": workspace,
            "inputs": _pick(prepared, "train.pt"),
            "features": config.features,
            "network": config.network,
            "device": device,
        }
    if name == "barycenters":
        return compute_barycenters, {
            "workspace": workspace,
            "inputs": {**_pick(outputs("features"), "features.pt"), **_pick(prepared, "dataset.json")},
            "barycenters": config.barycenters,
        }
    if name == "synthesize":
        return synthesize_set, {
            "workspace": workspace,
            "inputs": _pick(prepared, "train.pt", "dataset.json"),
            "mode": mode,
            "synthesis": config.synthesis,
            "network": config.network,
            "seed": config.runtime.seed,
            "device": device,
        }
    if name == "audit":
        return audit_set, {
            "workspace": workspace,
            "inputs": {**_pick(outputs(f"synthetic/{mode}"), "synthetic.pt"), **_pick(prepared, "test.pt")},
            "mode": mode,
            "audit": config.audit,
            "network": config.network,
            "device": device,
        }
    inputs = {**prepared, **outputs("partition"), **outputs("features"), **outputs("barycenters")}
    for m in modes:
        inputs.update(outputs(f"synthetic/{m}"))
        inputs.update(outputs(f"audit/{m}"))
    return write_report, {"workspace": workspace, "inputs": inputs, "modes": modes, "config": config}


def stage_order(modes: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(stage, mode) in run order: shared stages, then synthesize and audit per mode, then the report."""
    per_mode: list[tuple[str, str | None]] = [(stage, mode) for mode in modes for stage in PER_MODE_STAGES]
    shared: list[tuple[str, str | None]] = [(s, None) for s in STAGES[:4]]
    return shared + per_mode + [("report", None)]


def run_stages(config: FlowConfig, workspace: str, modes: tuple[str, ...]) -> dict[str, Any]:
    """Call the stage tasks in order; each one is skipped when its cache key is known."""
    device = resolve_device(config.runtime.device)
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    done: dict[str, dict[str, str]] = {}
    for name, mode in stage_order(modes):
        stage_task, kwargs = stage_call(
            name, mode, config=config, workspace=workspace, device=device, modes=modes, outputs=done.__getitem__
        )
        done[_folder(name, mode)] = call_stage(stage_task, **kwargs)
    return json.loads((Path(workspace) / "data/metrics.json").read_text())


@flow(name="fdd-compare", log_prints=True)
@holds_workspace_lock
def compare_flow(config: FlowConfig, workspace: str = ".") -> dict[str, Any]:
    """Distil with every mode of ``config.synthesis.modes`` and compare them side by side."""
    return run_stages(config, workspace, tuple(config.synthesis.modes))


@flow(name="fdd-distill", log_prints=True)
@holds_workspace_lock
def distill_flow(config: FlowConfig, mode: str = "cobra", workspace: str = ".") -> dict[str, Any]:
    """Distil with one fairness mode and audit the result."""
    return run_stages(with_modes(config, (mode,)), workspace, (mode,))


def _manifest(workspace: str, folder: str) -> dict[str, str]:
    path = Path(workspace) / "data" / folder / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the upstream stage first (dvc repro runs them in order)")
    return json.loads(path.read_text())["outputs"]


SETTINGS_DIR = "data/settings"


def write_stage_settings(config: FlowConfig, workspace: str) -> list[Path]:
    """Write ``data/settings/<stage>.json`` for every stage: what its key holds besides inputs and mode.

    ``dvc.yaml``'s first stage (``settings``) runs this when ``params.yaml`` or the
    sources change, and every stage depends on its own file instead of on ``params.yaml``
    sections and source folders: DVC then reruns a stage exactly when the flow's key
    changes (a new mode, ``log_every`` or the report's code leave synthesis alone).
    Files whose content is unchanged are not rewritten.
    """
    from tasks.base import atomic_write_text, stage_settings

    modes = tuple(config.synthesis.modes)
    written = []
    for name in STAGES:
        mode = modes[0] if name in PER_MODE_STAGES else None  # the settings are the same for every mode
        stage_task, kwargs = stage_call(
            name, mode, config=config, workspace=workspace, device="cpu", modes=modes, outputs=lambda _folder: {}
        )
        text = json.dumps(stage_settings(name, kwargs), indent=2, sort_keys=True) + "\n"
        path = Path(workspace) / SETTINGS_DIR / f"{name}.json"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        written.append(path)
    return written


def run_single_stage(name: str, config: FlowConfig, workspace: str, mode: str | None = None) -> dict[str, str]:
    """Run one stage without Prefect (what each ``dvc.yaml`` stage calls).

    The inputs are read from the upstream stages' manifests, so the stage verifies
    their hashes exactly as inside the flow.
    """
    if name not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}; got {name!r}")
    if (name in PER_MODE_STAGES) != (mode is not None):
        raise ValueError(f"stage {name!r} {'needs' if name in PER_MODE_STAGES else 'takes no'} --mode")
    stage_task, kwargs = stage_call(
        name,
        mode,
        config=config,
        workspace=workspace,
        device=resolve_device(config.runtime.device),
        modes=tuple(config.synthesis.modes),
        outputs=lambda folder: _manifest(workspace, folder),
    )
    return stage_task.fn(**kwargs)
