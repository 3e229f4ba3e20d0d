"""Environment for Prefect and DVC, set before either is imported.

Prefect keeps its database, results and logs under ``<workspace>/.prefect`` (not the
user's home), analytics are off, and the first start of the ephemeral API server may
take a while (database migrations), so its start-up timeout is raised.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "DVC_NO_ANALYTICS": "1",
}


def configure_environment(workspace: str | os.PathLike[str]) -> None:
    """Point Prefect at ``<workspace>/.prefect`` unless the user chose otherwise."""
    os.environ.setdefault("PREFECT_HOME", str(Path(workspace).resolve() / ".prefect"))
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
