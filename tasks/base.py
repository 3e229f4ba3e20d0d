"""What every stage task shares: file hashing, atomic writes, manifests, cache keys.

A stage reads input files, calls one ``fdd`` function and writes its outputs under
``<workspace>/data/<stage>/``. Its result is a mapping ``{relative path: sha256}`` of
the files it wrote, which the next stage receives as its ``inputs``.

Caching. The cache key of a stage run is the SHA-256 of

* the stage name (and the mode, for per-mode stages),
* the JSON of the config sections the stage reads,
* the content hashes of its input files,
* a hash of the ``fdd/`` and ``tasks/`` sources (a changed library invalidates every
  stage; ``TASK_SOURCE`` alone would hash only the task body).

Prefect skips a stage when a persisted result exists for that key. Because the key
cannot see the outputs themselves, each stage also writes ``manifest.json`` with its
key and the hashes of its outputs; :func:`call_stage` refreshes the cache entry when
the outputs on disk no longer match (deleted, truncated, edited by hand), so the stage
runs again instead of handing back files that are not what the cache remembers.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from fdd.files import atomic_write_bytes, sha256_file

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
HASHED_SOURCE_DIRS = ("fdd", "tasks")
MANIFEST = "manifest.json"

ERR_OUTSIDE_WORKSPACE = "{what} {path} lies outside the workspace {workspace}; stages only write inside it"
ERR_MISSING_INPUT = (
    "input file {path} (recorded with sha256 {expected}) is missing; "
    "rerun the upstream stage (fdd run, or dvc repro)"
)
ERR_CHANGED_INPUT = (
    "input file {path} changed since the upstream stage wrote it "
    "(sha256 {actual}, expected {expected}); rerun the upstream stage instead of using it"
)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over the ``fdd/`` and ``tasks/`` Python sources (path and content)."""
    digest = hashlib.sha256()
    for folder in HASHED_SOURCE_DIRS:
        for path in sorted((PACKAGE_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


STAGE_FOLDERS = {
    "ingest": "prepared",
    "partition": "partition",
    "features": "features",
    "barycenters": "barycenters",
    "synthesize": "synthetic",
    "audit": "audit",
    "report": "report",
}


def stage_dir(workspace: str | os.PathLike[str], stage: str, mode: str | None = None) -> Path:
    """``<workspace>/data/<folder of stage>[/<mode>]``, where the stage writes."""
    path = Path(workspace) / "data" / STAGE_FOLDERS[stage]
    return path / mode if mode else path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot hash a {type(value).__name__} in a cache key")


def verify_inputs(workspace: str | os.PathLike[str], inputs: dict[str, str]) -> None:
    """Raise if an input file is missing or differs from the hash its producer recorded."""
    root = Path(workspace)
    for rel, expected in inputs.items():
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(ERR_MISSING_INPUT.format(path=path, expected=expected[:12]))
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(ERR_CHANGED_INPUT.format(path=path, actual=actual[:12], expected=expected[:12]))


def record_outputs(
    workspace: str | os.PathLike[str], folder: Path, files: Iterable[Path], *, key: str
) -> dict[str, str]:
    """Hash the stage's output files and write ``manifest.json`` next to them."""
    root = Path(workspace).resolve()
    outputs = {}
    for path in files:
        resolved = path.resolve()
        if root not in resolved.parents:
            raise ValueError(ERR_OUTSIDE_WORKSPACE.format(what="output", path=resolved, workspace=root))
        outputs[str(resolved.relative_to(root))] = sha256_file(resolved)
    atomic_write_json(folder / MANIFEST, {"cache_key": key, "outputs": outputs})
    return outputs


def manifest_matches(workspace: str | os.PathLike[str], folder: Path, key: str) -> bool:
    """True when ``folder`` holds the outputs of a run with ``key``, unaltered."""
    manifest = folder / MANIFEST
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if record.get("cache_key") != key:
        return False
    root = Path(workspace)
    for rel, expected in record.get("outputs", {}).items():
        path = root / rel
        if not path.exists() or sha256_file(path) != expected:
            return False
    return True


def stage_key(stage: str, parameters: dict[str, Any]) -> str:
    """The content key of a stage run (see the module docstring)."""
    hashed = {k: v for k, v in parameters.items() if k not in ("workspace", "device")}
    payload = json.dumps(
        {"stage": stage, "params": hashed, "source": source_digest()},
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def make_cache_key_fn(stage: str) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` for ``stage``: the content key of its parameters."""

    def cache_key(_context: Any, parameters: dict[str, Any]) -> str:
        return f"{stage}-{stage_key(stage, parameters)}"

    return cache_key


def outputs_current(stage_task: Any, /, **kwargs: Any) -> bool:
    """Whether the files on disk are the outputs of this exact stage call, unaltered."""
    bound = inspect.signature(stage_task.fn).bind(**kwargs)
    bound.apply_defaults()
    params = dict(bound.arguments)
    key = stage_key(stage_task.name, params)
    return manifest_matches(params["workspace"], stage_dir(params["workspace"], stage_task.name, params.get("mode")), key)


def call_stage(stage_task: Any, /, **kwargs: Any) -> dict[str, str]:
    """Call a stage task, letting Prefect's cache skip it only if its outputs are intact.

    A cached result is only worth its files: when they were deleted, truncated or
    edited since, the call refreshes the cache entry (the stage runs again).
    """
    if outputs_current(stage_task, **kwargs):
        return stage_task(**kwargs)
    return stage_task.with_options(refresh_cache=True)(**kwargs)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, the module logger otherwise."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("fdd")


def in_prefect_run() -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A Prefect markdown artifact when running under Prefect (no-op under plain DVC)."""
    if in_prefect_run():
        create_markdown_artifact(key=key, markdown=markdown, description=description)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A Prefect table artifact when running under Prefect (no-op under plain DVC)."""
    if in_prefect_run():
        create_table_artifact(key=key, table=rows, description=description)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)


def stage(name: str, *, retries: int = 0, retry_delay_seconds: float = 2.0) -> Callable[[Callable[..., list[Path]]], Any]:
    """Turn ``fn(workspace, ..., [mode], ...) -> [output paths]`` into a cached Prefect task.

    The wrapped function verifies its ``inputs`` (``{path: sha256}`` from upstream
    stages), runs, then hashes its outputs into ``manifest.json`` and returns them.
    ``task.fn`` is the same callable without Prefect (used by ``dvc repro``).
    """

    def decorate(fn: Callable[..., list[Path]]) -> Any:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> dict[str, str]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
            workspace = params["workspace"]
            verify_inputs(workspace, params.get("inputs") or {})
            key = stage_key(name, params)
            folder = stage_dir(workspace, name, params.get("mode"))
            files = fn(*args, **kwargs)
            outputs = record_outputs(workspace, folder, files, key=key)
            run_logger().info("stage %s%s wrote %d files", name, f"[{params['mode']}]" if params.get("mode") else "", len(outputs))
            return outputs

        return task(  # type: ignore[call-overload]  # prefect's overloads do not cover every keyword combination
            run,
            name=name,
            cache_key_fn=make_cache_key_fn(name),
            persist_result=True,
            result_serializer="json",  # results are {path: sha256}; nothing is unpickled on a cache hit
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            retry_condition_fn=_retry_transient_only,
            task_run_name=(lambda: _task_run_name(name)),
        )

    return decorate


def _task_run_name(name: str) -> str:
    context = TaskRunContext.get()
    mode = context.parameters.get("mode") if context else None
    return f"{name}[{mode}]" if mode else name


def _retry_transient_only(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry file-system and network hiccups, never bad input (ValueError and friends)."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError) as exc:
        return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
    except BaseException:  # noqa: BLE001  (any other failure is not transient: no retry)
        return False
    return False
