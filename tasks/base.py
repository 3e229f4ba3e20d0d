"""What every stage task shares: file hashing, atomic writes, manifests, cache keys.

A stage reads input files, calls one ``fdd`` function and writes its outputs under
``<workspace>/data/<stage>/``. Its result is a mapping ``{relative path: sha256}`` of
the files it wrote, which the next stage receives as its ``inputs``.

When is a stage done? One rule, whoever runs it (the Prefect flow, ``dvc repro``
through ``fdd stage NAME``, or nobody: ``dvc pull`` restored the files): the stage
folder's ``manifest.json`` records the stage's **cache key** and the sha256 of every
output, and when the key equals the key of the call and every output on disk still has
its recorded hash, the stage is done and computes nothing. The key is the SHA-256 of

* the stage name (and the mode, for per-mode stages),
* the stage's settings: the config sections it takes, without the keys that cannot
  change its outputs (``NON_OUTPUT_KEYS`` of each section in ``fdd/config.py``:
  ``synthesis.modes``, ``log_every``, ``checkpoint_every``, the device, ...),
* the content hashes of its input files,
* a hash of the source files of the code the stage runs: the import closure of its
  task module among the project's own packages (``fdd``, ``tasks``), found by reading
  the ``import`` statements (:func:`stage_sources`); editing the report's code leaves
  the synthesis key unchanged.

Prefect's own result cache is not used: nothing under ``.prefect/storage`` is read, so
a record there (tampered or not) can neither skip a stage nor run code on a cache hit.
Inside a flow a stage that is done ends in a ``Cached`` state; a stage whose outputs
were deleted or altered since (or whose manifest cannot be read) runs again, with a
warning naming the file.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.states import Completed
from pydantic import BaseModel

from fdd.files import atomic_write_bytes, sha256_file

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: the project's own top-level packages: the import closure of a stage is followed inside them
SOURCE_PACKAGES = ("fdd", "tasks")
MANIFEST = "manifest.json"
#: stage parameters that say where or on what device to run, never what to compute
UNHASHED_PARAMETERS = ("workspace", "device")
#: parameters of one call that are not settings: the files it reads (``inputs``; ``raw_digest``,
#: the hash of the user's own data files) and the mode (DVC sees them as deps and stage names)
CALL_PARAMETERS = ("inputs", "raw_digest", "mode")

ERR_OUTSIDE_WORKSPACE = "{what} {path} lies outside the workspace {workspace}; stages only write inside it"
ERR_MISSING_INPUT = (
    "input file {path} (recorded with sha256 {expected}) is missing; rerun the upstream stage (fdd run, or dvc repro)"
)
ERR_CHANGED_INPUT = (
    "input file {path} changed since the upstream stage wrote it "
    "(sha256 {actual}, expected {expected}); rerun the upstream stage instead of using it"
)
ERR_UNKNOWN_STAGE = "no stage task named {name!r} is defined (known: {known}); import its tasks module first"
WARN_BAD_MANIFEST = "stage {stage}: {path} cannot be read ({reason}); running the stage again"
WARN_ALTERED_OUTPUT = "stage {stage}: output {path} {what}; running the stage again"
INFO_OTHER_KEY = "stage {stage}: {path} was written with other settings, inputs or code; running the stage again"

#: stage name -> module of its task function (filled by :func:`stage`)
_STAGE_MODULES: dict[str, str] = {}


def _module_file(name: str) -> Path | None:
    """The source file of the project module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    parts = name.split(".")
    if parts[0] not in SOURCE_PACKAGES:
        return None
    base = PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


#: ``ast.parse`` is not thread-safe on CPython 3.11: two threads parsing at once can raise
#: ``SystemError: AST constructor recursion depth mismatch`` (seen with a sweep's Dask thread
#: workers computing their stages' keys together), so the parses take turns.
_PARSE_LOCK = threading.Lock()


def _imported_modules(name: str, path: Path) -> list[str]:
    """The modules that the file of module ``name`` imports by name (anywhere in it, lazy imports included).

    ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b`` (``c`` is
    an attribute of it); relative imports are resolved against ``name``'s package.
    """
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[str] = []
    with _PARSE_LOCK:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(submodule if _module_file(submodule) is not None else base)
    return found


@functools.cache
def stage_sources(module: str) -> tuple[str, ...]:
    """Workspace-relative paths (sorted) of the project sources that module ``module`` runs.

    The import closure of ``module`` inside :data:`SOURCE_PACKAGES`, computed from the
    ``import`` statements of the files (nothing is imported): every module it imports
    by name, recursively, plus the ``__init__.py`` of each enclosing package (whose own
    imports are followed only when the package itself is imported by name). Imports
    made through strings (``importlib.import_module``) are not seen.
    """
    files: dict[str, Path] = {}
    followed: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in followed:
            continue
        path = _module_file(name)
        if path is None:
            continue
        followed.add(name)
        files[name] = path
        parts = name.split(".")
        for i in range(1, len(parts)):  # running a.b.c runs a/__init__.py and a/b/__init__.py
            parent = _module_file(".".join(parts[:i]))
            if parent is not None:
                files.setdefault(".".join(parts[:i]), parent)
        todo.extend(_imported_modules(name, path))
    return tuple(sorted({p.relative_to(PACKAGE_ROOT).as_posix() for p in files.values()}))


@functools.cache
def source_digest(module: str) -> str:
    """SHA-256 over the path and content of each file of :func:`stage_sources` of ``module``."""
    digest = hashlib.sha256()
    for rel in stage_sources(module):
        digest.update(rel.encode() + b"\0")
        digest.update((PACKAGE_ROOT / rel).read_bytes())
    return digest.hexdigest()


def stage_module(stage: str) -> str:
    """The module of the task function of ``stage``."""
    try:
        return _STAGE_MODULES[stage]
    except KeyError:
        raise ValueError(ERR_UNKNOWN_STAGE.format(name=stage, known=sorted(_STAGE_MODULES))) from None


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
    if isinstance(value, BaseModel):  # a config section: only the settings that can change outputs
        output_settings = getattr(value, "output_settings", None)
        return output_settings() if callable(output_settings) else value.model_dump(mode="json")
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


def manifest_check(
    workspace: str | os.PathLike[str], folder: Path, key: str, *, stage: str = ""
) -> dict[str, str] | None:
    """The outputs recorded in ``folder``'s manifest when they are those of a run with ``key``, unaltered.

    None when there is no manifest, when it was written with another key, or when an
    output is missing or changed (logged: a warning for an unreadable manifest or an
    altered output, which nobody should see, and an info line for another key).
    """
    manifest = folder / MANIFEST
    label = stage or folder.name
    if not manifest.exists():
        return None
    logger = run_logger()
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        recorded_key, outputs = record["cache_key"], record["outputs"]
        if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
            raise TypeError("'outputs' is not a mapping of paths to sha256")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning(WARN_BAD_MANIFEST.format(stage=label, path=manifest, reason=exc))
        return None
    if recorded_key != key:
        logger.info(INFO_OTHER_KEY.format(stage=label, path=manifest))
        return None
    root = Path(workspace)
    for rel, expected in outputs.items():
        relative = PurePosixPath(rel)
        if relative.is_absolute() or ".." in relative.parts:
            logger.warning(
                WARN_BAD_MANIFEST.format(stage=label, path=manifest, reason=f"output {rel!r} is outside the workspace")
            )
            return None
        path = root / rel
        if not path.is_file():
            logger.warning(WARN_ALTERED_OUTPUT.format(stage=label, path=path, what="is missing"))
            return None
        if sha256_file(path) != expected:
            logger.warning(WARN_ALTERED_OUTPUT.format(stage=label, path=path, what="changed since the stage wrote it"))
            return None
    return dict(outputs)


def manifest_matches(workspace: str | os.PathLike[str], folder: Path, key: str) -> bool:
    """True when ``folder`` holds the outputs of a run with ``key``, unaltered."""
    return manifest_check(workspace, folder, key) is not None


def stage_settings(stage: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """What a stage's key holds besides its inputs and mode, as JSON data.

    ``{"stage", "settings", "source"}``: the stage's settings (its parameters without
    :data:`UNHASHED_PARAMETERS` and :data:`CALL_PARAMETERS`, config sections reduced to
    their ``output_settings()``) and :func:`source_digest` of its task module. The same
    for every mode of a per-mode stage; ``fdd stage settings`` writes it to
    ``data/settings/<stage>.json`` for ``dvc.yaml``, so DVC reruns a stage exactly when
    this (or a dependency file) changes, like the flow.
    """
    settings = {k: v for k, v in parameters.items() if k not in UNHASHED_PARAMETERS + CALL_PARAMETERS}
    normalised = json.loads(json.dumps(settings, sort_keys=True, default=_json_default))
    return {"stage": stage, "settings": normalised, "source": source_digest(stage_module(stage))}


def stage_key(stage: str, parameters: dict[str, Any]) -> str:
    """The content key of a stage run (see the module docstring): its settings, inputs and mode."""
    call = {k: parameters[k] for k in CALL_PARAMETERS if k in parameters}
    payload = json.dumps({**stage_settings(stage, parameters), "call": call}, sort_keys=True, default=_json_default)
    return hashlib.sha256(payload.encode()).hexdigest()


def outputs_current(stage_task: Any, /, **kwargs: Any) -> bool:
    """Whether the files on disk are the outputs of this exact stage call, unaltered (the stage is done)."""
    bound = inspect.signature(stage_task.fn).bind(**kwargs)
    bound.apply_defaults()
    params = dict(bound.arguments)
    key = stage_key(stage_task.name, params)
    folder = stage_dir(params["workspace"], stage_task.name, params.get("mode"))
    return manifest_matches(params["workspace"], folder, key)


def call_stage(stage_task: Any, /, **kwargs: Any) -> dict[str, str]:
    """Call a stage task and return its outputs; it computes nothing when its manifest says it is done.

    (A stage that is done returns a ``Cached`` state inside a flow; Prefect hands that
    state back to the caller as is, so its data is unpacked here.)
    """
    result = stage_task(**kwargs)
    return result.result() if isinstance(result, State) else result


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


def stage(
    name: str, *, retries: int = 0, retry_delay_seconds: float = 2.0
) -> Callable[[Callable[..., list[Path]]], Any]:
    """Turn ``fn(workspace, ..., [mode], ...) -> [output paths]`` into a Prefect task that runs only when needed.

    The wrapped function verifies its ``inputs`` (``{path: sha256}`` from upstream
    stages); when the stage folder's manifest holds this call's key and unaltered
    outputs it returns them without running ``fn`` (a ``Cached`` state inside a flow),
    else it runs ``fn``, hashes the outputs into ``manifest.json`` and returns them.
    ``task.fn`` is the same callable without Prefect (``fdd stage``, used by ``dvc repro``).
    """

    def decorate(fn: Callable[..., list[Path]]) -> Any:
        signature = inspect.signature(fn)
        _STAGE_MODULES[name] = fn.__module__

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
            workspace = params["workspace"]
            label = f"{name}[{params['mode']}]" if params.get("mode") else name
            verify_inputs(workspace, params.get("inputs") or {})
            key = stage_key(name, params)
            folder = stage_dir(workspace, name, params.get("mode"))
            done = manifest_check(workspace, folder, key, stage=label)
            if done is not None:
                message = f"stage {label}: outputs match {folder / MANIFEST}; nothing to compute"
                run_logger().info(message)
                # as this Prefect task's run, it ends as Cached (no result is persisted or read back);
                # called as plain ``task.fn`` (fdd stage, or inside another task) it returns the outputs
                context = TaskRunContext.get()
                in_own_run = context is not None and getattr(context.task, "fn", None) is run
                return Completed(name="Cached", data=done, message=message) if in_own_run else done
            files = fn(*args, **kwargs)
            outputs = record_outputs(workspace, folder, files, key=key)
            run_logger().info("stage %s wrote %d files", label, len(outputs))
            return outputs

        return task(  # type: ignore[call-overload]  # prefect's overloads do not cover every keyword combination
            run,
            name=name,
            # "done" is decided by the stage's manifest (above), never by a record under
            # .prefect/storage: Prefect takes a record's deserialiser from the record itself
            cache_policy=NO_CACHE,
            persist_result=False,
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
