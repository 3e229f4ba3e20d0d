"""The ``fdd`` command line.

    fdd run                 the default pipeline: every mode of synthesis.modes, side by side
    fdd distill --mode M    one mode
    fdd data fetch          acquire and prepare the dataset only
    fdd stage NAME          one stage without Prefect (used by dvc.yaml)
    fdd show                print the last comparison table
    fdd server              the Prefect server and UI on 127.0.0.1 for this workspace
    fdd serve               register the deployments of the schedules section and serve them
    fdd sweep               the grid of the sweep section on a Dask cluster (local by default)
    fdd audit PATH          audit any synthetic set (synthetic.pt, a reference res_*.pt, an image folder)

Settings come from ``params.yaml`` (``--params``), optionally merged with a preset
(``--preset full``) and ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fdd.config import MODES
from flows.configuration import FlowConfig
from flows.lock import WorkspaceBusyError, workspace_lock
from flows.settings import configure_environment
from flows.workspace import init_workspace, preset_file


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


def _preset_path(preset: str) -> Path:
    """A preset given as a path, or the name of one shipped with fdd (flows/presets/)."""
    path = Path(preset)
    if path.exists():
        return path
    try:
        return preset_file(preset)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (argparse type of --source-mean / --source-std)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.5,0.5; got {text!r}") from None


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
            workspace, path, out, name=name, audit=config.audit, network=config.network,
            device=pipeline.resolve_device(config.runtime.device), experiment=args.experiment,
            source_mean=args.source_mean, source_std=args.source_std,
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
    common.add_argument("--preset", action="append", default=[],
                        help="preset merged over the params file: 'full', 'quick', a dataset ('cifar10s', 'celeba', "
                        "'utkface', 'bffhq', 'folder') or a YAML path; repeatable, merged in order")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set synthesis.ipc=50 (repeatable)")
    common.add_argument("--workspace", default=".", help="folder holding data/ and .prefect/ (default: .)")
    parser = argparse.ArgumentParser(prog="fdd", description="Fair dataset distillation (COBRA) pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write params.yaml and dvc.yaml into a new workspace")
    init.add_argument("directory", nargs="?", default=".", help="the workspace folder (default: .; created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite params.yaml / dvc.yaml / .dvcignore there")
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
    sweep = sub.add_parser("sweep", parents=[common], help="run the sweep grid (sweep section) on a Dask cluster")
    sweep.add_argument("--from-records", action="store_true",
                       help="compute nothing: rebuild the tables from the cell records of sweep.records")
    audit = sub.add_parser(
        "audit", parents=[common], help="audit any synthetic set on the dataset of the configuration",
        description="Train the networks of audit.architectures on a synthetic set and audit them on the prepared "
        "test split of the configured dataset (prepared first when missing). PATH: fdd's synthetic.pt, a COBRA / "
        "FairDD result file res_*.pt (read with torch.load(weights_only=True)), or a folder of images with a "
        "labels.csv (columns path,label). Writes metrics.json, runs.json, architectures.csv, the recall tables "
        "and heatmap, and report.md into --out.",
    )
    audit.add_argument("path", help="synthetic.pt, a reference res_*.pt file, or a folder of images with labels.csv")
    audit.add_argument("--out", default=None,
                       help="output folder (default: <workspace>/data/audit_external/<name>; outside data/audit, which the report stage of dvc.yaml reads)")
    audit.add_argument("--name", default=None, help="label of the set in the report (default: the file or folder name)")
    audit.add_argument("--experiment", type=int, default=0,
                       help="which experiment of a res_*.pt file (its 'data' list, one per --num_exp; default 0)")
    audit.add_argument("--source-mean", type=_floats, default=None, metavar="M1,M2,M3",
                       help="normalisation mean of a res_*.pt file's images, when not the test split's")
    audit.add_argument("--source-std", type=_floats, default=None, metavar="S1,S2,S3",
                       help="normalisation std of a res_*.pt file's images (with --source-mean)")
    serve = sub.add_parser("serve", parents=[common], help="serve the scheduled deployments of the schedules section")
    serve.add_argument("--only", action="append", default=[], metavar="NAME", help="serve only this schedule (repeatable)")
    serve.add_argument("--api-url", default=None,
                       help="Prefect API of the server (default: $PREFECT_API_URL, else http://127.0.0.1:4200/api)")
    server = sub.add_parser("server", parents=[common], help="start the Prefect server and UI for this workspace")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=4200)
    return parser


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


def main(argv: list[str] | None = None) -> int:
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
        return 0
    try:
        presets = [_preset_path(p) for p in args.preset]
        config = load_config(args.params, preset=presets, overrides=_overrides(args.overrides))
        _check_command(config, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(workspace).mkdir(parents=True, exist_ok=True)
    configure_environment(workspace)
    if args.command == "serve":
        return _serve(config, workspace, args)
    from flows import pipeline

    start = time.perf_counter()
    try:
        with workspace_lock(workspace):
            if args.command == "stage":
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
                    result = run_sweep(config, workspace=workspace, compute=not args.from_records)
                except SweepCellsFailedError as exc:  # the other cells finished: their table, then the failures
                    print((Path(workspace) / SWEEP_DIR / "summary.md").read_text())
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                print((Path(workspace) / SWEEP_DIR / "summary.md").read_text())
                print(f"{result['cells']} cells ({result['computed']} computed, the rest cached or recorded; "
                      f"{result['not_run']} not run) in {time.perf_counter() - start:.0f} s; table: {result['summary']}")
                if "paper_table" in result:
                    print(f"published-table comparison: {result['paper_table']}")
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
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; report: {Path(workspace) / 'data/report/report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
