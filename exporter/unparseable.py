"""Counting each broken message once, however many scrapes see it, and saying so once."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterable

from exporter.snapshot import Unparseable

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100_000
# Distinct (queue, reason) pairs remembered as already logged.
DEFAULT_SAID_CAPACITY = 10_000


class Said:
    """Which causes were already logged, so that a flood of messages logs each once.

    Remembers at most `capacity` causes, least recently seen forgotten first.
    """

    def __init__(self, capacity: int = DEFAULT_SAID_CAPACITY) -> None:
        self._capacity = capacity
        self._said: OrderedDict[Hashable, None] = OrderedDict()

    def first(self, cause: Hashable) -> bool:
        """True the first time `cause` shows up (again after it was forgotten)."""
        if cause in self._said:
            self._said.move_to_end(cause)
            return False
        self._said[cause] = None
        if len(self._said) > self._capacity:
            self._said.popitem(last=False)
        return True


class UnparseableLedger:
    """Totals per (system, queue) of distinct unparseable messages.

    Remembers at most `capacity` fingerprints (least recently seen go first),
    so a flood of garbage cannot grow memory without bound; a forgotten
    message seen again counts again. Each message counts; the log says each
    (system, queue, reason) once.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, said: Said | None = None) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._totals: dict[tuple[str, str], int] = {}
        self._said = said or Said()

    def record(self, messages: Iterable[Unparseable]) -> None:
        for message in messages:
            key = (message.system, message.queue, message.fingerprint)
            if key in self._seen:
                self._seen.move_to_end(key)
                continue
            self._seen[key] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            queue_key = (message.system, message.queue)
            self._totals[queue_key] = self._totals.get(queue_key, 0) + 1
            if self._said.first((message.system, message.queue, message.reason)):
                log.warning(
                    "%s queue %r: skipped a message for age: %s (more such messages are "
                    "counted in taskqueue_exporter_unparseable_messages_total, not logged)",
                    message.system, message.queue, message.reason,
                )

    def totals(self) -> dict[tuple[str, str], int]:
        return dict(self._totals)
