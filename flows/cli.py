"""The ``fdd`` command line.

    fdd run                 the default pipeline: every mode of synthesis.modes, side by side
    fdd distill --mode M    one mode (or baseline: random-real, stratified-real, full-data,
                            uniform-subgroup, cui-reweight, vanilla-gdro; docs/evaluation.md)
    fdd data fetch          acquire and prepare the dataset only
    fdd stage NAME          one stage without Prefect (used by dvc.yaml); NAME 'settings' writes
                            data/settings/<stage>.json, what dvc.yaml's stages depend on
    fdd show                print the last comparison table
    fdd server              the Prefect server and UI on 127.0.0.1 for this workspace
    fdd serve               register the deployments of the schedules section and serve them
    fdd sweep               the grid of the sweep section on a Dask cluster (local by default)
    fdd config              print the resolved configuration and where each value came from
    fdd --version           the versions of fdd and of the libraries it runs on
    fdd audit PATH          audit any synthetic set (synthetic.pt, a reference res_*.pt, an image folder)

Settings come from ``params.yaml`` (``--params``), optionally merged with a preset
(``--preset full``) and ``--set section.key=value`` overrides.

Exit codes: 0 done; 1 an unexpected error (a bug: the traceback is printed); 2 a user error
(bad settings, data, files, disk or device: one or two lines naming the file or key and what
is allowed; ``--debug`` adds the traceback); 3 the workspace is in use by another fdd run;
4 no Prefect server answers at ``PREFECT_API_URL`` / ``--api-url``; 130 interrupted. The table:
:data:`EXIT_CODES` (shown by ``fdd --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sqlite3
import sys
import time
import traceback
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from fdd.config import MODES
from flows.configuration import FlowConfig
from flows.lock import workspace_lock
from flows.settings import configure_environment
from flows.workspace import init_workspace, preset_file

EXIT_BUG, EXIT_USER_ERROR, EXIT_BUSY, EXIT_NO_API = 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # SIGTERM / Ctrl-C during synthesis: the checkpoint was saved; run again to resume
ERR_SET_FORM = "--set expects section.key=value (e.g. --set synthesis.ipc=50); got {item!r}"
ERR_SET_YAML = (
    "--set {key}: the value {value!r} is not valid YAML ({problem}); e.g. --set synthesis.modes=[vanilla,cobra]"
)
ERR_SET_CONFLICT = (
    "--set {key}: {parent} was already set to a value, not a section; set {parent}.KEY or {parent}, not both"
)
ERR_NO_SPACE = (
    "no space left on the device holding {path}; free some space (or use --workspace on another disk) and run again"
)
ERR_READ_ONLY = "{path} is on a read-only file system; use --workspace on a writable disk"
ERR_OS = "{path}: {reason}"
ERR_PREFECT_DB = (
    "{path} is not a usable SQLite database ({reason}); it holds only Prefect's run history and cache "
    "records: move it away (or delete {folder}) and run again"
)
ERR_PREFECT_DB_FULL = "Prefect's database cannot be written ({reason}); free some space on the disk holding {folder}"
ERR_UNEXPECTED = "unexpected {kind}: {message} (this is a bug in fdd; the traceback is above)"


class PrefectDatabaseError(RuntimeError):
    """The workspace's Prefect database (``.prefect/prefect.db``) is damaged or cannot be written."""


class PrefectUnreachableError(RuntimeError):
    """``PREFECT_API_URL`` names a Prefect server that does not answer."""


def _overrides(items: list[str]) -> dict[str, Any]:
    from fdd.config import ConfigError
    from flows.configuration import _yaml_problem

    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(ERR_SET_FORM.format(item=item))
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(ERR_SET_YAML.format(key=key, value=value, problem=_yaml_problem(exc))) from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(ERR_SET_CONFLICT.format(key=key, parent=".".join(parts[: depth + 1])))
        node[parts[-1]] = parsed
    return result


def _preset_path(preset: str) -> Path:
    """A preset given as a path, or the name of one shipped with fdd (flows/presets/)."""
    from fdd.config import ConfigError

    path = Path(preset)
    if path.exists():
        return path  # a folder, non-UTF-8 or non-mapping file is refused when read (flows.configuration)
    try:
        return preset_file(preset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean a problem with the user's settings, data, files, disk or device."""
    from PIL import Image

    from fdd.config import ConfigError
    from fdd.datasets.sources import DatasetUnavailableError
    from flows.lock import WorkspaceBusyError

    return (
        ConfigError,
        PrefectDatabaseError,
        PrefectUnreachableError,
        WorkspaceBusyError,
        DatasetUnavailableError,
        ValueError,
        OSError,
        Image.DecompressionBombError,
        sqlite3.DatabaseError,
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps (causes, contexts, members of exception groups), outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        members = getattr(current, "exceptions", None)  # an exception group (Python 3.11+, or the backport)
        todo.extend(members if isinstance(members, (list, tuple)) else ())
        todo.extend([current.__cause__, current.__context__])
    return seen


def user_error(exc: BaseException) -> BaseException | None:
    """The user error inside ``exc`` (Prefect and Dask re-raise or wrap what a task raised), or None."""
    kinds = _user_errors()
    for inner in _chain(exc):
        if _is_disk_full(inner) or _is_database_error(inner):
            return inner
    for inner in _chain(exc):
        if isinstance(inner, kinds):
            return inner
    return None


def _is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "database or disk is full" in str(exc)
    )


#: what SQLite says about a damaged database file or a full disk (sqlite3 or SQLAlchemy errors)
DATABASE_PROBLEMS: tuple[str, ...] = ("file is not a database", "malformed", "disk is full", "disk I/O error")


def _is_database_error(exc: BaseException) -> bool:
    return (
        type(exc).__module__.startswith(("sqlite3", "sqlalchemy"))
        and isinstance(exc, Exception)
        and any(text in str(exc) for text in DATABASE_PROBLEMS)
    )


def describe(exc: BaseException, workspace: str | Path = ".") -> str:
    """The one- or two-line message for a user error: what is wrong, with which file or key."""
    prefect_home = Path(workspace) / ".prefect"
    if _is_database_error(exc):
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        if "disk is full" in reason:
            return ERR_PREFECT_DB_FULL.format(reason=reason, folder=prefect_home)
        return ERR_PREFECT_DB.format(path=prefect_home / "prefect.db", reason=reason, folder=prefect_home)
    if isinstance(exc, OSError) and exc.errno is not None:
        path = exc.filename or workspace
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ERR_NO_SPACE.format(path=path)
        if exc.errno == errno.EROFS:
            return ERR_READ_ONLY.format(path=path)
        if exc.filename is not None:
            return ERR_OS.format(path=exc.filename, reason=exc.strerror or type(exc).__name__)
    text = str(exc).strip() or type(exc).__name__
    return text


#: What ``fdd`` exits with (also in ``fdd --help`` and the README).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (
        1,
        "an unexpected error (a bug: the traceback is printed), or `fdd sweep` with failed cells (the others finished)",
    ),
    (
        2,
        "a user error: settings, data, files, disk or device; one or two lines name the file or key (--debug adds "
        "the traceback); nothing is half-written",
    ),
    (3, "the workspace is busy: another fdd process holds its lock (`<workspace>/.fdd.lock`)"),
    (4, "no Prefect server answers at PREFECT_API_URL (or `fdd serve --api-url`)"),
    (130, "interrupted (SIGINT or SIGTERM); run the command again to continue"),
)
VERSION_LIBRARIES = ("torch", "prefect", "dvc", "pot")


def version_text() -> str:
    """``fdd X (Python Y; torch ..., prefect ..., dvc ..., pot ...)``, from the installed metadata."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {version(name)}" for name in VERSION_LIBRARIES)
    return f"fdd {version('fdd')} (Python {sys.version.split()[0]}; {libraries})"


def _exit_codes_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES)


def _floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (argparse type of --source-mean / --source-std)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.5,0.5,0.5; got {text!r}"
        ) from None


ERR_AUDIT_NAME = "--name must be letters, digits, '.', '_' or '-' (it names the output folder); got {name!r}"


def _audit(config: FlowConfig, workspace: str, args: argparse.Namespace) -> int:
    """``fdd audit PATH``: prepare the test split (cached), audit the set, print its table."""
    import re

    from flows import pipeline
    from tasks.audit import audit_external

    path = Path(args.path)
    name = args.name or (path.name if path.is_dir() else path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        print(f"error: {ERR_AUDIT_NAME.format(name=name)}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(workspace) / "data/audit_external" / name
    ingest_task, kwargs = pipeline.stage_call(
        "ingest", None, config=config, workspace=workspace, device="cpu", modes=(), outputs=lambda _folder: {}
    )
    pipeline.call_stage(ingest_task, **kwargs)
    try:
        audit_external(
            workspace,
            path,
            out,
            name=name,
            audit=config.audit,
            network=config.network,
            device=pipeline.resolve_device(config.runtime.device),
            experiment=args.experiment,
            source_mean=args.source_mean,
            source_std=args.source_std,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import pandas as pd

    print(pd.read_csv(out / "architectures.csv").round(2).to_markdown(index=False))
    print(f"\nreport: {out / 'report.md'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="configuration file (default: params.yaml)")
    common.add_argument(
        "--preset",
        action="append",
        default=[],
        help="preset merged over the params file: 'full', 'quick', a dataset ('cifar10s', 'celeba', "
        "'utkface', 'bffhq', 'folder'), a backbone ('dc', 'idc', 'cafe', 'mtt'), a GPU grid ('paper', 'frontier'; "
        "'cross_architecture' and 'baselines' over 'paper') or a YAML path; repeatable, merged in order",
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set synthesis.ipc=50 (repeatable)",
    )
    common.add_argument("--workspace", default=".", help="folder holding data/ and .prefect/ (default: .)")
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error (default: one or two lines naming the file or key)",
    )
    parser = argparse.ArgumentParser(
        prog="fdd",
        description="Fair dataset distillation (COBRA) pipeline",
        epilog=_exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write params.yaml and dvc.yaml into a new workspace")
    init.add_argument("directory", nargs="?", default=".", help="the workspace folder (default: .; created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite params.yaml / dvc.yaml / .dvcignore there")
    sub.add_parser("run", parents=[common], help="run the comparison pipeline (all modes in synthesis.modes)")
    distill = sub.add_parser(
        "distill", parents=[common], help="run the pipeline for one mode (a distillation mode or a baseline)"
    )
    distill.add_argument("--mode", required=True, choices=list(MODES))
    data = sub.add_parser("data", help="dataset commands")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("fetch", parents=[common], help="acquire and prepare the dataset (stage ingest)")
    one = sub.add_parser("stage", parents=[common], help="run one stage without Prefect (dvc.yaml uses this)")
    one.add_argument(
        "name",
        choices=[
            "settings",
            "inputs",
            "ingest",
            "partition",
            "features",
            "barycenters",
            "synthesize",
            "audit",
            "report",
        ],
        help="a stage of the pipeline; 'settings': write data/settings/<stage>.json, 'inputs': hash the "
        "user's own data files into data/inputs.json (both for dvc.yaml)",
    )
    one.add_argument("--mode", choices=list(MODES))
    show = sub.add_parser("show", parents=[common], help="print the last comparison table")
    del show
    sweep = sub.add_parser("sweep", parents=[common], help="run the sweep grid (sweep section) on a Dask cluster")
    sweep.add_argument(
        "--from-records",
        action="store_true",
        help="compute nothing: rebuild the tables from the cell records of sweep.records",
    )
    audit = sub.add_parser(
        "audit",
        parents=[common],
        help="audit any synthetic set on the dataset of the configuration",
        description="Train the networks of audit.architectures on a synthetic set and audit them on the prepared "
        "test split of the configured dataset (prepared first when missing). PATH: fdd's synthetic.pt, a COBRA / "
        "FairDD result file res_*.pt (read with torch.load(weights_only=True)), or a folder of images with a "
        "labels.csv (columns path,label). Writes metrics.json, runs.json, architectures.csv, the recall tables "
        "and heatmap, and report.md into --out.",
    )
    audit.add_argument("path", help="synthetic.pt, a reference res_*.pt file, or a folder of images with labels.csv")
    audit.add_argument(
        "--out",
        default=None,
        help="output folder (default: <workspace>/data/audit_external/<name>; outside data/audit, which the report stage of dvc.yaml reads)",
    )
    audit.add_argument("--name", default=None, help="label of the set in the report (default: the file or folder name)")
    audit.add_argument(
        "--experiment",
        type=int,
        default=0,
        help="which experiment of a res_*.pt file (its 'data' list, one per --num_exp; default 0)",
    )
    audit.add_argument(
        "--source-mean",
        type=_floats,
        default=None,
        metavar="M1,M2,M3",
        help="normalisation mean of a res_*.pt file's images, when not the test split's",
    )
    audit.add_argument(
        "--source-std",
        type=_floats,
        default=None,
        metavar="S1,S2,S3",
        help="normalisation std of a res_*.pt file's images (with --source-mean)",
    )
    serve = sub.add_parser("serve", parents=[common], help="serve the scheduled deployments of the schedules section")
    serve.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="serve only this schedule (repeatable)"
    )
    serve.add_argument(
        "--api-url",
        default=None,
        help="Prefect API of the server (default: $PREFECT_API_URL, else http://127.0.0.1:4200/api)",
    )
    server = sub.add_parser("server", parents=[common], help="start the Prefect server and UI for this workspace")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=4200)
    config = sub.add_parser(
        "config",
        parents=[common],
        help="print the resolved configuration (params file + presets + --set) and each value's source",
    )
    config.add_argument(
        "--json",
        action="store_true",
        help='print {"config": ..., "sources": {"section.key": source}} as JSON instead of YAML',
    )
    return parser


def _print_config(config: FlowConfig, args: argparse.Namespace, presets: list[Path]) -> int:
    """``fdd config``: the validated configuration, each value labelled with the layer that set it."""
    import json

    from flows.configuration import config_layers, render_config, value_sources

    layers = config_layers(args.params, preset=presets, preset_names=args.preset, overrides=_overrides(args.overrides))
    sources = value_sources(config, layers)
    if args.json:
        print(json.dumps({"config": config.model_dump(mode="json"), "sources": sources}, indent=2))
    else:
        print(f"# resolved configuration; each value's source: {' < '.join(['default', *(n for n, _ in layers)])}")
        print(render_config(config, sources), end="")
    return 0


def _print_headline(workspace: Path) -> None:
    """The report's one-sentence summary of the table (what each mode changed against vanilla)."""
    import json

    from fdd.report.assemble import headline

    metrics = workspace / "data/metrics.json"
    summary = headline(json.loads(metrics.read_text())) if metrics.exists() else None
    if summary:
        print("\n" + summary)


STAGE_LOG_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


@contextlib.contextmanager
def _stage_logging() -> Iterator[None]:
    """INFO lines of the ``fdd`` loggers on stderr while ``fdd stage`` runs (no Prefect logger there)."""
    logger = logging.getLogger("fdd")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(STAGE_LOG_FORMAT, datefmt="%H:%M:%S"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Prefect's root handlers would print each line twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


LOOPBACK = ("127.0.0.1", "localhost", "::1")
WARN_EXPOSED = (
    "warning: binding the Prefect server to {host}, not loopback: anyone who can reach this "
    "machine on port {port} can read and start runs (Prefect's open-source server has no login)"
)


def server_command(host: str, port: int) -> list[str]:
    """The ``prefect server start`` command for ``host:port``, warning when not loopback."""
    if host not in LOOPBACK and not host.startswith("127."):
        print(WARN_EXPOSED.format(host=host, port=port), file=sys.stderr)
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]


DEFAULT_API_URL = "http://127.0.0.1:4200/api"
ERR_NO_API = "no Prefect server answers at {url}; start one with `fdd server` (or pass --api-url / set PREFECT_API_URL)"


def _serve(config: Any, workspace: str, args: argparse.Namespace) -> int:
    """Register the deployments of ``config.schedules`` and serve them until interrupted."""
    import os

    from fdd.config import ConfigError

    url = args.api_url or os.environ.get("PREFECT_API_URL") or DEFAULT_API_URL
    from flows.deployments import api_reachable, build_deployments

    try:
        deployments = build_deployments(config, workspace, only=args.only, params=args.params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not api_reachable(url):
        print(f"error: {ERR_NO_API.format(url=url)}", file=sys.stderr)
        return 4
    os.environ["PREFECT_API_URL"] = url
    import prefect

    prefect.serve(*deployments, limit=1)
    return 0


def _check_command(config: FlowConfig, args: argparse.Namespace) -> None:
    """What the command adds to the configuration, validated before anything runs (without
    importing Prefect: its settings are read at import, before the workspace sets them)."""
    from fdd.config import ConfigError
    from flows.configuration import ERR_NO_RECORDS, sweep_cell_configs, with_modes

    if args.command == "sweep":
        sweep_cell_configs(config)
        if getattr(args, "from_records", False) and not config.sweep.records:
            raise ConfigError(ERR_NO_RECORDS)
    elif args.command == "distill" or (args.command == "stage" and args.mode is not None):
        with_modes(config, [args.mode])


class _OneLineErrors(logging.Filter):
    """Drops tracebacks from console log records (Prefect logs a failed task or flow run with
    its traceback; the error itself is reported once, in one or two lines, by :func:`main`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _quiet_tracebacks() -> None:
    """Install :class:`_OneLineErrors` on the console handlers Prefect configured."""
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _OneLineErrors) for f in handler.filters
            ):
                handler.addFilter(_OneLineErrors())


def check_prefect_database(workspace: str | Path) -> None:
    """Refuse a damaged ``<PREFECT_HOME>/prefect.db`` before Prefect starts on it (it would log
    dozens of tracebacks and then time out); when ``PREFECT_API_URL`` names a server, check
    that it answers instead (:class:`PrefectUnreachableError`, exit code 4)."""
    import os

    if url := os.environ.get("PREFECT_API_URL"):
        from flows.deployments import api_reachable

        if not api_reachable(url):
            raise PrefectUnreachableError(ERR_NO_API.format(url=url))
        return
    home = Path(os.environ.get("PREFECT_HOME") or Path(workspace) / ".prefect")
    path = home / "prefect.db"
    if not path.exists():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            result = connection.execute("PRAGMA quick_check").fetchone()
        connection.close()
    except sqlite3.DatabaseError as exc:
        raise PrefectDatabaseError(ERR_PREFECT_DB.format(path=path, reason=exc, folder=home)) from None
    if result is None or result[0] != "ok":
        reason = result[0] if result else "no answer to PRAGMA quick_check"
        raise PrefectDatabaseError(ERR_PREFECT_DB.format(path=path, reason=reason, folder=home))


def _preflight(config: FlowConfig, workspace: str, args: argparse.Namespace) -> None:
    """Cheap checks of what a run would otherwise find minutes later inside the flow: the
    device, the user's own data files, and the Prefect database."""
    from fdd.datasets.image_sources import check_user_files
    from flows.configuration import resolve_device, sweep_cell_configs

    if not getattr(args, "from_records", False):  # rebuilding the sweep's tables needs no device
        resolve_device(config.runtime.device)
    if args.command == "sweep":
        datas = {cell_cfg.data for _cell, cell_cfg in sweep_cell_configs(config)}
    elif args.command == "stage" and args.name not in ("ingest", "inputs"):
        datas = set()
    else:
        datas = {config.data}
    for data in datas:
        check_user_files(data, workspace=workspace)
    if args.command in ("run", "distill", "data", "sweep"):
        check_prefect_database(workspace)


def main(argv: list[str] | None = None) -> int:
    """Run the ``fdd`` command ``argv``; user errors become one or two lines and exit code 2.

    Without ``argv`` this is the process's entry point (the ``fdd`` script, ``python -m
    flows.cli``), and the exit is bounded: threads the command left running get
    ``FDD_EXIT_GRACE_S`` seconds (:func:`flows.processes.bounded_exit`), after which fdd warns,
    runs its exit handlers and leaves with the status; after an interrupt it leaves at once.
    """
    if argv is not None:
        return _command(argv)
    from flows.processes import bounded_exit, exit_grace, leave_now

    grace = exit_grace()  # a bad FDD_EXIT_GRACE_S is reported now, not after a long run
    status = _command(sys.argv[1:])
    if status == EXIT_INTERRUPTED:  # every child was stopped; threads of Dask or Prefect may
        leave_now(status)  # still wait on them, so leave without joining them
    return bounded_exit(status, grace=grace)


def _command(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init":
        try:
            written = init_workspace(args.directory, force=args.force)
        except (FileExistsError, NotADirectoryError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("wrote " + ", ".join(str(p) for p in written))
        print(f"next: cd {args.directory} && fdd run   (or: git init && dvc init && dvc repro)")
        return 0
    workspace = str(Path(args.workspace).resolve())
    debug = getattr(args, "debug", False)
    try:
        return _main(args, workspace)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under flows.processes.stop_on_signals
        if debug:
            raise
        from flows.processes import MSG_STOPPED

        print(MSG_STOPPED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        from fdd.distillation.run import SynthesisInterrupted
        from flows.lock import WorkspaceBusyError

        if isinstance(exc, SynthesisInterrupted) and not debug:
            print(f"stopped: {exc}", file=sys.stderr)
            return EXIT_INTERRUPTED
        inner = user_error(exc)
        if debug or inner is None:
            traceback.print_exception(exc)
        if inner is None:
            print(
                f"error: {ERR_UNEXPECTED.format(kind=type(exc).__name__, message=str(exc).splitlines()[0] if str(exc) else '')}",
                file=sys.stderr,
            )
            return EXIT_BUG
        print(f"error: {describe(inner, workspace)}", file=sys.stderr)
        if isinstance(inner, (WorkspaceBusyError, PrefectUnreachableError)):
            return EXIT_BUSY if isinstance(inner, WorkspaceBusyError) else EXIT_NO_API
        return EXIT_USER_ERROR


def _main(args: argparse.Namespace, workspace: str) -> int:
    from flows.configuration import load_config

    if args.command == "server":
        import os

        from flows.processes import run_group

        Path(workspace).mkdir(parents=True, exist_ok=True)
        configure_environment(workspace)
        print(
            f"Prefect UI: http://{args.host}:{args.port} (runs use it with PREFECT_API_URL=http://{args.host}:{args.port}/api)"
        )
        return run_group(server_command(args.host, args.port), env=os.environ.copy())
    if args.command == "show":
        table = Path(workspace) / "data/report/comparison.csv"
        if not table.exists():
            raise FileNotFoundError(errno.ENOENT, "no results yet; run `fdd run` first", str(table))
        import pandas as pd

        print(pd.read_csv(table).to_markdown(index=False))
        _print_headline(Path(workspace))
        return 0
    presets = [_preset_path(p) for p in args.preset]
    config = load_config(args.params, preset=presets, overrides=_overrides(args.overrides))
    _check_command(config, args)
    if args.command == "config":
        return _print_config(config, args, presets)
    Path(workspace).mkdir(parents=True, exist_ok=True)
    configure_environment(workspace)
    if args.command == "serve":
        from flows.processes import stop_on_signals

        with stop_on_signals():
            return _serve(config, workspace, args)
    _preflight(config, workspace, args)
    from flows import pipeline
    from flows.processes import reap_temporary_server, stop_on_signals

    reap_temporary_server()
    if not getattr(args, "debug", False):
        _quiet_tracebacks()
    start = time.perf_counter()
    with workspace_lock(workspace):
        if args.command == "stage" and args.name == "settings":
            pipeline.write_stage_settings(config, workspace)
            return 0
        if args.command == "stage" and args.name == "inputs":
            from tasks.ingest import write_inputs_fingerprint

            write_inputs_fingerprint(workspace, config.data)
            return 0
        if args.command == "stage":
            with _stage_logging():
                pipeline.run_single_stage(args.name, config, workspace, args.mode)
            return 0
        if args.command == "audit":
            return _audit(config, workspace, args)
        if args.command == "data":
            ingest_task, kwargs = pipeline.stage_call(
                "ingest", None, config=config, workspace=workspace, device="cpu", modes=(), outputs=lambda _folder: {}
            )
            pipeline.call_stage(ingest_task, **kwargs)  # cached like in the flow
            print(f"prepared data under {Path(workspace) / 'data/prepared'}")
            return 0
        if args.command == "sweep":
            from flows.sweep import SWEEP_DIR, SweepCellsFailedError, run_sweep

            try:
                with stop_on_signals():
                    result = run_sweep(config, workspace=workspace, compute=not args.from_records)
            except SweepCellsFailedError as exc:  # the other cells finished: their table, then the failures
                print((Path(workspace) / SWEEP_DIR / "summary.md").read_text())
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print((Path(workspace) / SWEEP_DIR / "summary.md").read_text())
            print(
                f"{result['cells']} cells ({result['computed']} computed, the rest cached or recorded; "
                f"{result['not_run']} not run) in {time.perf_counter() - start:.0f} s; table: {result['summary']}"
            )
            if "paper_table" in result:
                print(f"published-table comparison: {result['paper_table']}")
            if "results_table" in result:
                print(f"results table: {result['results_table']}")
            return 0
        if args.command == "distill":
            pipeline.distill_flow(config, mode=args.mode, workspace=workspace)
        else:
            pipeline.compare_flow(config, workspace=workspace)
    import pandas as pd

    table = pd.read_csv(Path(workspace) / "data/report/comparison.csv")
    print("\n" + table.to_markdown(index=False))
    _print_headline(Path(workspace))
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; report: {Path(workspace) / 'data/report/report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
