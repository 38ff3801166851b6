"""Remote-control questions to Celery workers, asked in a background thread.

Two jobs, one thread:
- every second, a worker that appeared without known queues is asked for its
  `active_queues` (only that worker, once per 30 s), so `taskqueue_workers`
  and task attribution learn a worker's queues without a fleet-wide broadcast;
- with --inspect-interval, a full `active` / `reserved` / `scheduled` /
  `active_queues` broadcast, counted by queue.

A scrape reads the last answer and never waits on a broadcast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.event_tracker import DEFAULT_MAX_SERIES, OTHER, UNKNOWN, EventTracker

log = logging.getLogger(__name__)

ASK_AGAIN_AFTER = 30.0
MAX_QUEUES = DEFAULT_MAX_SERIES
INSPECT_STATES = ("active", "reserved", "scheduled")
# An answer older than this many intervals is not exported: the poller is stuck.
STALE_AFTER_INTERVALS = 3

Replies = Mapping[str, Any]


@dataclass(frozen=True)
class InspectResult:
    at: float
    success: bool
    counts: Mapping[tuple[str, str], int]  # (queue, state) -> tasks


def queue_of_request(entry: Any) -> str:
    """The queue a task came from, as its delivery_info's routing key tells."""
    if not isinstance(entry, Mapping):
        return UNKNOWN
    # scheduled() wraps the request: {"eta": ..., "priority": ..., "request": {...}}
    request = entry.get("request", entry)
    info = request.get("delivery_info") if isinstance(request, Mapping) else None
    key = info.get("routing_key") if isinstance(info, Mapping) else None
    return key if isinstance(key, str) and key else UNKNOWN


def count_by_queue(
    replies: Mapping[str, Replies | None], max_queues: int = MAX_QUEUES
) -> dict[tuple[str, str], int]:
    """{(queue, state): tasks} from the active/reserved/scheduled answers of all workers.

    Routing keys past `max_queues` distinct ones count as "(other)": they
    become label values.
    """
    counts: dict[tuple[str, str], int] = {}
    queues: set[str] = set()
    for state in INSPECT_STATES:
        for tasks in (replies.get(state) or {}).values():
            if not isinstance(tasks, list):
                continue
            for entry in tasks:
                queue = queue_of_request(entry)
                if queue not in queues:
                    if len(queues) >= max_queues:
                        queue = OTHER
                    else:
                        queues.add(queue)
                key = (queue, state)
                counts[key] = counts.get(key, 0) + 1
    return counts


def queue_names(answer: Any) -> list[str]:
    """Queue names out of one worker's active_queues answer."""
    if not isinstance(answer, list):
        return []
    return [q["name"] for q in answer
            if isinstance(q, Mapping) and isinstance(q.get("name"), str)]


class CeleryInspector:
    def __init__(
        self,
        app: Any,
        tracker: EventTracker,
        lock: threading.Lock,
        *,
        interval: float | None,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._tracker = tracker
        self._lock = lock
        self.interval = interval
        self._timeout = timeout
        self._clock = clock
        self._asked: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-inspect", daemon=True)
        self.result: InspectResult | None = None
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def current(self, now: float) -> InspectResult | None:
        """The last full poll, or None when polling is off or its answer is stale."""
        result = self.result
        if result is None or self.interval is None:
            return None
        if now - result.at > STALE_AFTER_INTERVALS * self.interval + self._timeout * 4:
            return None
        return result

    def _run(self) -> None:
        next_poll = self._clock()
        while not self._stop.wait(1.0):
            try:
                self.ask_new_workers()
                if self.interval is not None and self._clock() >= next_poll:
                    next_poll = self._clock() + self.interval
                    self.poll()
            except Exception as error:  # a broker hiccup must not end the thread
                log.debug("inspect: %s: %s", type(error).__name__, error)

    def ask_new_workers(self) -> None:
        now = self._clock()
        with self._lock:
            waiting = self._tracker.workers_without_queues()
        # Forget hosts that are gone so the map stays as small as the fleet.
        self._asked = {h: t for h, t in self._asked.items() if h in waiting}
        ask = [h for h in waiting if now - self._asked.get(h, -ASK_AGAIN_AFTER) >= ASK_AGAIN_AFTER]
        if not ask:
            return
        for host in ask:
            self._asked[host] = now
        answers = self._inspect(ask).active_queues() or {}
        self._learn_queues(answers)

    def poll(self) -> None:
        inspect = self._inspect(None)
        replies = {state: getattr(inspect, state)() for state in INSPECT_STATES}
        queues = inspect.active_queues()
        now = self._clock()
        with self._lock:
            nobody = not self._tracker.workers_online()
        # No answer from no worker (scaled to zero) is an answer.
        success = nobody or all(r is not None for r in replies.values())
        self.result = InspectResult(now, success, count_by_queue(replies))
        if queues:
            self._learn_queues(queues)
        if success == self._failing:
            if success:
                log.info("inspect: workers answer again")
            else:
                log.warning("inspect: no worker answered within %.1fs", self._timeout)
        self._failing = not success

    def _inspect(self, destination: list[str] | None) -> Any:
        return self._app.control.inspect(
            destination=destination, timeout=self._timeout,
            limit=len(destination) if destination else None,
        )

    def _learn_queues(self, answers: Mapping[str, Any]) -> None:
        with self._lock:
            for host, answer in answers.items():
                self._tracker.set_worker_queues(host, queue_names(answer))

