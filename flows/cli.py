"""The ``fdd`` command line.

    fdd run                 the default pipeline: every mode of synthesis.modes, side by side
    fdd distill --mode M    one mode
    fdd data fetch          acquire and prepare the dataset only
    fdd stage NAME          one stage without Prefect (used by dvc.yaml)
    fdd show                print the last comparison table
    fdd server              the Prefect server and UI on 127.0.0.1 for this workspace
    fdd serve               register the deployments of the schedules section and serve them
    fdd sweep               the grid of the sweep section on a Dask cluster (local by default)
    fdd config              print the resolved configuration and where each value came from
    fdd --version           the versions of fdd and of the libraries it runs on

Settings come from ``params.yaml`` (``--params``), optionally merged with a preset
(``--preset full``) and ``--set section.key=value`` overrides. Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from fdd.config import MODES, PipelineConfig
from flows.lock import WorkspaceBusyError, workspace_lock
from flows.settings import configure_environment

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def _overrides(items: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects section.key=value; got {item!r}")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return result


def _preset_path(preset: str | None) -> Path | None:
    if preset is None:
        return None
    path = Path(preset)
    if path.exists():
        return path
    candidate = PRESETS_DIR / f"{preset}.yaml"
    if not candidate.exists():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise SystemExit(f"unknown preset {preset!r}; known presets: {known} (or a path to a YAML file)")
    return candidate


#: What ``fdd`` exits with (also in ``fdd --help`` and the README).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "the run failed (a stage raised an error), or `fdd show` found no results yet"),
    (2, "bad command line or configuration (params.yaml, --preset, --set): nothing was run or written"),
    (3, "the workspace is busy: another fdd process holds its lock (`<workspace>/.fdd.lock`)"),
    (4, "`fdd serve`: no Prefect server answers at the API URL"),
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


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="configuration file (default: params.yaml)")
    common.add_argument("--preset", action="append", default=[],
                        help="preset merged over the params file: 'full', 'quick', a dataset ('cifar10s', 'celeba', "
                        "'utkface', 'bffhq', 'folder') or a YAML path; repeatable, merged in order")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set synthesis.ipc=50 (repeatable)")
    common.add_argument("--workspace", default=".", help="folder holding data/ and .prefect/ (default: .)")
    parser = argparse.ArgumentParser(prog="fdd", description="Fair dataset distillation (COBRA) pipeline",
                                     epilog=_exit_codes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the comparison pipeline (all modes in synthesis.modes)")
    distill = sub.add_parser("distill", parents=[common], help="run the pipeline for one mode")
    distill.add_argument("--mode", required=True, choices=list(MODES))
    data = sub.add_parser("data", help="dataset commands")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("fetch", parents=[common], help="acquire and prepare the dataset (stage ingest)")
    one = sub.add_parser("stage", parents=[common], help="run one stage without Prefect (dvc.yaml uses this)")
    one.add_argument("name", choices=["ingest", "partition", "features", "barycenters", "synthesize", "audit", "report"])
    one.add_argument("--mode", choices=list(MODES))
    show = sub.add_parser("show", parents=[common], help="print the last comparison table")
    del show
    sub.add_parser("sweep", parents=[common], help="run the sweep grid (sweep section) on a Dask cluster")
    serve = sub.add_parser("serve", parents=[common], help="serve the scheduled deployments of the schedules section")
    serve.add_argument("--only", action="append", default=[], metavar="NAME", help="serve only this schedule (repeatable)")
    serve.add_argument("--api-url", default=None,
                       help="Prefect API of the server (default: $PREFECT_API_URL, else http://127.0.0.1:4200/api)")
    server = sub.add_parser("server", parents=[common], help="start the Prefect server and UI for this workspace")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=4200)
    config = sub.add_parser("config", parents=[common],
                            help="print the resolved configuration (params file + presets + --set) and each value's source")
    config.add_argument("--json", action="store_true",
                        help='print {"config": ..., "sources": {"section.key": source}} as JSON instead of YAML')
    return parser


def _print_config(config: PipelineConfig, args: argparse.Namespace, presets: list[Path]) -> int:
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

    from tasks.report import headline

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


def _check_command(config: PipelineConfig, args: argparse.Namespace) -> None:
    """What the command adds to the configuration, validated before anything runs (without
    importing Prefect: its settings are read at import, before the workspace sets them)."""
    from flows.configuration import sweep_cell_configs, with_modes

    if args.command == "sweep":
        sweep_cell_configs(config)
    elif args.command == "distill" or (args.command == "stage" and args.mode is not None):
        with_modes(config, [args.mode])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workspace = str(Path(args.workspace).resolve())
    from fdd.config import ConfigError
    from flows.configuration import load_config

    if args.command == "server":
        import os
        import subprocess

        Path(workspace).mkdir(parents=True, exist_ok=True)
        configure_environment(workspace)
        print(f"Prefect UI: http://{args.host}:{args.port} (runs use it with PREFECT_API_URL=http://{args.host}:{args.port}/api)")
        return subprocess.call(server_command(args.host, args.port), env=os.environ.copy())
    if args.command == "show":
        table = Path(workspace) / "data/report/comparison.csv"
        if not table.exists():
            print(f"no results yet: {table} is missing; run `fdd run` first", file=sys.stderr)
            return 1
        import pandas as pd

        print(pd.read_csv(table).to_markdown(index=False))
        _print_headline(Path(workspace))
        return 0
    try:
        presets = [_preset_path(p) for p in args.preset]
        config = load_config(args.params, preset=[p for p in presets if p is not None], overrides=_overrides(args.overrides))
        _check_command(config, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        return _print_config(config, args, [p for p in presets if p is not None])
    Path(workspace).mkdir(parents=True, exist_ok=True)
    configure_environment(workspace)
    if args.command == "serve":
        return _serve(config, workspace, args)
    from flows import pipeline

    start = time.perf_counter()
    try:
        with workspace_lock(workspace):
            if args.command == "stage":
                with _stage_logging():
                    pipeline.run_single_stage(args.name, config, workspace, args.mode)
                return 0
            if args.command == "data":
                ingest_task, kwargs = pipeline.stage_call(
                    "ingest", None, config=config, workspace=workspace, device="cpu", modes=(), outputs=lambda _folder: {}
                )
                pipeline.call_stage(ingest_task, **kwargs)  # cached like in the flow
                print(f"prepared data under {Path(workspace) / 'data/prepared'}")
                return 0
            if args.command == "sweep":
                from flows.sweep import SWEEP_DIR, run_sweep

                result = run_sweep(config, workspace=workspace)
                print((Path(workspace) / SWEEP_DIR / "summary.md").read_text())
                print(f"{result['cells']} cells ({result['computed']} computed, the rest cached) in "
                      f"{time.perf_counter() - start:.0f} s; table: {result['summary']}")
                return 0
            if args.command == "distill":
                pipeline.distill_flow(config, mode=args.mode, workspace=workspace)
            else:
                pipeline.compare_flow(config, workspace=workspace)
    except WorkspaceBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    import pandas as pd

    table = pd.read_csv(Path(workspace) / "data/report/comparison.csv")
    print("\n" + table.to_markdown(index=False))
    _print_headline(Path(workspace))
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; report: {Path(workspace) / 'data/report/report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
