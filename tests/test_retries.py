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
