"""Job functions for the RQ tests (RQ workers import them by name)."""

from __future__ import annotations

import time

from rq import get_current_job


def ok() -> int:
    return 1


def fail() -> None:
    raise RuntimeError("this job fails on purpose")


def wait_for_key(key: str, timeout: float = 60.0) -> None:
    connection = get_current_job().connection
    deadline = time.monotonic() + timeout
    while not connection.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)
