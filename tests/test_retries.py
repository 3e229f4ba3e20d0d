"""Retries are declared for transient faults only, never for bad input."""

from __future__ import annotations

import pytest

from tasks.base import _retry_transient_only
from tasks.ingest import ingest
from tasks.synthesize import synthesize_set


class _State:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self):
        raise self.error


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (OSError("disk hiccup"), True),
        (TimeoutError("slow mirror"), True),
        (ConnectionError("registry unreachable"), True),
        (FileNotFoundError("missing input"), False),
        (PermissionError("read-only"), False),
        (ValueError("bad labels"), False),
        (RuntimeError("no data source worked"), False),
    ],
)
def test_retry_condition(error: BaseException, retry: bool) -> None:
    assert _retry_transient_only(None, None, _State(error)) is retry


def test_declared_retries() -> None:
    assert ingest.retries == 2  # downloads can hiccup
    assert synthesize_set.retries == 0  # a failed synthesis resumes from its checkpoint on the next run


def test_server_binds_loopback_by_default_and_warns_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    from flows import cli

    args = cli._parser().parse_args(["server"])
    assert (args.host, args.port) == ("127.0.0.1", 4200)
    command = cli.server_command(args.host, args.port)
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "4200"] and capsys.readouterr().err == ""
    cli.server_command("0.0.0.0", 8080)
    assert "not loopback" in capsys.readouterr().err
