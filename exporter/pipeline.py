"""Batched Redis reads: one round trip for any number of commands.

A key of the wrong type (a string where a list should be) fails only its own
command; the rest of the scrape goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Hashable
from typing import Any

import redis

log = logging.getLogger(__name__)


def run_pipeline(client: redis.Redis, build: Callable[[Any], None]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        build(pipe)
        if not len(pipe):
            return []
        return pipe.execute(raise_on_error=False)


class KeyProblems:
    """Warnings about broken keys, once per cause rather than at every scrape.

    A cause (a key of the wrong type, a binding member that cannot be read)
    is warned about the first scrape it shows up in, then no more while it
    lasts. A complete scrape without it ends it: broken again later, it is
    warned about again. Memory is bounded by the causes of one scrape.
    """

    def __init__(self) -> None:
        self._known: set[Hashable] = set()
        self._current: set[Hashable] = set()

    def warn(self, cause: Hashable, message: str, *args: object) -> None:
        if cause not in self._known and cause not in self._current:
            log.warning(message, *args)
        self._current.add(cause)

    def as_int(self, value: Any, key: bytes | str) -> int:
        """An integer reply, or 0 (with a warning) when the command failed for this key."""
        if isinstance(value, Exception):
            self.warn(key, "cannot read %r: %s", key, value)
            return 0
        return int(value or 0)

    def as_value(self, value: Any, key: bytes | str) -> Any:
        """The reply, or None (with a warning) when the command failed for this key."""
        if isinstance(value, Exception):
            self.warn(key, "cannot read %r: %s", key, value)
            return None
        return value

    def settle(self, complete: bool) -> None:
        """The scrape is over. One cut short says nothing about causes it did not reach."""
        self._known = self._current if complete else self._known | self._current
        self._current = set()


class PackedBatch:
    """A fixed list of read commands, encoded once and sent in one round trip.

    For the per-scrape read of every queue's sub-lists (tens of thousands of
    commands): redis-py's pipeline re-encodes every command and runs Python
    callbacks per reply on each execute, which costs more than Redis itself.
    The command list changes only when the set of queues does.
    """

    def __init__(self, commands: list[tuple[str | bytes | int, ...]]) -> None:
        self.commands = commands
        self._packed: list[bytes] | None = None

    def run(self, client: redis.Redis) -> list[Any]:
        with contextlib.closing(self.stream(client)) as replies:
            return list(replies)

    def stream(self, client: redis.Redis) -> Generator[Any, None, None]:
        """The replies in order, each as soon as it arrives.

        Work done on one reply overlaps with Redis producing the next. Close
        the generator (contextlib.closing) when stopping early: a connection
        with replies left unread is dropped, never handed out again.
        """
        if not self.commands:
            return
        pool = client.connection_pool
        connection = pool.get_connection()
        read = 0
        try:
            if self._packed is None:
                self._packed = connection.pack_commands(self.commands)
            connection.send_packed_command(self._packed)
            for _ in self.commands:
                try:
                    reply = connection.read_response()
                except redis.ResponseError as error:
                    # The reply is consumed; the connection stays in step.
                    reply = error
                read += 1
                yield reply
        finally:
            if read < len(self.commands):
                connection.disconnect()
            pool.release(connection)
