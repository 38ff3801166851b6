"""Batched Redis reads: one round trip for any number of commands.

A key of the wrong type (a string where a list should be) fails only its own
command; the rest of the scrape goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)


def run_pipeline(client: redis.Redis, build: Callable[[Any], None]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        build(pipe)
        if not len(pipe):
            return []
        return pipe.execute(raise_on_error=False)


def as_int(value: Any, key: bytes | str) -> int:
    """An integer reply, or 0 (with a warning) when the command failed for this key."""
    if isinstance(value, Exception):
        log.warning("cannot read %r: %s", key, value)
        return 0
    return int(value or 0)


def as_value(value: Any, key: bytes | str) -> Any:
    if isinstance(value, Exception):
        log.warning("cannot read %r: %s", key, value)
        return None
    return value
