"""Counting each broken message once, however many scrapes see it."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

from exporter.snapshot import Unparseable

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100_000


class UnparseableLedger:
    """Totals per (system, queue) of distinct unparseable messages.

    Remembers at most `capacity` fingerprints (least recently seen go first),
    so a flood of garbage cannot grow memory without bound; a forgotten
    message seen again counts again.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._totals: dict[tuple[str, str], int] = {}

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
            log.warning(
                "%s queue %r: skipped a message for age: %s",
                message.system, message.queue, message.reason,
            )

    def totals(self) -> dict[tuple[str, str], int]:
        return dict(self._totals)
