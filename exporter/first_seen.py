"""When the exporter first saw a task at the head of its queue.

The fallback enqueue time for Celery messages published without the producer
hook's stamp: a lower bound of the real age, since the task may have waited
before it reached the head.
"""

from __future__ import annotations

from collections.abc import Iterable


class FirstSeen:
    def __init__(self) -> None:
        self._first: dict[str, float] = {}

    def observe(self, task_ids: Iterable[str], now: float) -> dict[str, float]:
        """Record this scrape's head task ids and return when each was first seen.

        Ids not observed in this scrape are forgotten, so memory is bounded by
        the number of heads the exporter looks at, not by traffic.
        """
        current = {task_id: self._first.get(task_id, now) for task_id in task_ids}
        self._first = current
        return current

    def __len__(self) -> int:
        return len(self._first)
