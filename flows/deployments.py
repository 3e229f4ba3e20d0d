"""Scheduled deployments from the ``schedules`` section of ``params.yaml`` (``fdd serve``).

Each entry names a flow (``compare``, ``distill`` or ``sweep``), a cron expression and
time zone, and ``parameters``: ``params.yaml`` sections merged over the file for that
deployment only. For example a nightly re-distillation and a weekly comparison::

    schedules:
      - name: nightly-cobra
        flow: distill
        mode: cobra
        cron: "0 2 * * *"
        timezone: Europe/Paris
      - name: weekly-compare
        flow: compare
        cron: "0 6 * * 1"
        parameters: {synthesis: {modes: [vanilla, fairdd, cobra]}}

The configuration of each deployment is validated when it is registered (a bad entry
names the schedule), and passed to the flow as its ``config`` parameter, visible in the
Prefect UI; edit ``params.yaml`` and restart ``fdd serve`` to change it.

Every run of these flows takes the workspace lock (:mod:`flows.lock`): a run that falls
due while another fdd command writes the workspace fails at once, naming that command,
and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fdd.config import ConfigError, deep_merge
from flows.configuration import FlowConfig, ScheduleConfig, parse_params, sweep_cell_configs, with_modes

ERR_NO_SCHEDULES = (
    "{params} has no schedules: add a 'schedules' section (a list of name, flow, cron, timezone, "
    "parameters; see docs/operations.md)"
)
ERR_UNKNOWN_SCHEDULE = "no schedule named {name!r} in {params}; its schedules are {known}"
ERR_BAD_PARAMETERS = "schedules[{name}].parameters do not give a valid configuration: {error}"
FLOW_NAMES = {"compare": "fdd-compare", "distill": "fdd-distill", "sweep": "fdd-sweep"}


def deployment_config(config: FlowConfig, schedule: ScheduleConfig) -> FlowConfig:
    """``config`` with ``schedule.parameters`` merged in (the schedules themselves dropped)."""
    raw = deep_merge(config.model_dump(mode="json"), schedule.parameters)
    raw["schedules"] = []
    try:
        merged = parse_params(raw)
        if schedule.flow == "distill":  # the mode the run will use must suit the backbone
            with_modes(merged, [schedule.mode or "cobra"])
        if schedule.flow == "sweep":
            sweep_cell_configs(merged)
        return merged
    except ConfigError as exc:
        raise ConfigError(ERR_BAD_PARAMETERS.format(name=schedule.name, error=exc)) from None


def deployment_parameters(config: FlowConfig, schedule: ScheduleConfig, workspace: str) -> dict[str, Any]:
    """The flow parameters of the deployment of ``schedule`` (JSON, as Prefect stores them)."""
    parameters: dict[str, Any] = {
        "config": deployment_config(config, schedule).model_dump(mode="json"),
        "workspace": str(Path(workspace).resolve()),
    }
    if schedule.flow == "distill":
        parameters["mode"] = schedule.mode or "cobra"
    return parameters


def build_deployments(
    config: FlowConfig, workspace: str, *, only: list[str] | None = None, params: str = "params.yaml"
) -> list[Any]:
    """One Prefect ``RunnerDeployment`` per schedule (or per name in ``only``)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import compare_flow, distill_flow
    from flows.sweep import sweep_flow

    if not config.schedules:
        raise ConfigError(ERR_NO_SCHEDULES.format(params=params))
    known = [s.name for s in config.schedules]
    for name in only or []:
        if name not in known:
            raise ConfigError(ERR_UNKNOWN_SCHEDULE.format(name=name, params=params, known=known))
    flows: dict[str, Any] = {"compare": compare_flow, "distill": distill_flow, "sweep": sweep_flow}
    deployments = []
    for schedule in config.schedules:
        if only and schedule.name not in only:
            continue
        deployments.append(
            flows[schedule.flow].to_deployment(
                name=schedule.name,
                schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
                parameters=deployment_parameters(config, schedule, workspace),
                description=schedule.description or f"{schedule.flow} on cron '{schedule.cron}' ({schedule.timezone})",
                concurrency_limit=1,
                tags=["fdd", schedule.flow],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def api_reachable(url: str, *, timeout: float = 5.0) -> bool:
    """Whether the Prefect API at ``url`` (ending in ``/api``) answers its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
