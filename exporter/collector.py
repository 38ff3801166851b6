"""The Prometheus collector: reads the broker at scrape time, never in between.

Metric families are built fresh on every scrape, so a queue that disappears
from the broker disappears from /metrics. If the broker cannot be read, the
scrape still answers, with only the exporter's own series and
`taskqueue_exporter_scrape_success 0`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import redis
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.celery_events import EventStream
from exporter.celery_inspect import CeleryInspector
from exporter.event_tracker import EventTracker
from exporter.families import (
    event_families,
    exporter_families,
    queue_families,
    receiver_families,
)
from exporter.snapshot import BrokerReadError, BrokerSnapshot, QueueSnapshot
from exporter.unparseable import UnparseableLedger

log = logging.getLogger(__name__)


class BrokerReader(Protocol):
    system: str

    def read(self, now: float) -> BrokerSnapshot: ...


class QueueCollector(Collector):
    def __init__(
        self,
        readers: Sequence[BrokerReader],
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        ledger: UnparseableLedger | None = None,
        empty_warning: Callable[[], str] | None = None,
    ) -> None:
        self._readers = tuple(readers)
        self._clock = clock
        self._timer = timer
        self._ledger = ledger or UnparseableLedger()
        # What to say when the readers find no queue at all (built only then).
        self._empty_warning = empty_warning
        self._said_empty = False
        # Readers keep state between scrapes (first-seen times, discovery
        # cache); concurrent scrapes take turns.
        self._lock = threading.Lock()
        self._healthy: bool | None = None

    def describe(self) -> list[Metric]:
        # Without this, registering the collector would run a scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = self._timer()
            now = self._clock()
            queues: list[QueueSnapshot] = []
            found: list[bool | None] = []
            # A big broker means tens of thousands of parsed messages per scrape,
            # none in a reference cycle: the cyclic GC would only add pauses.
            gc_enabled = gc.isenabled()
            gc.disable()
            try:
                for reader in self._readers:
                    snapshot = reader.read(now)
                    queues.extend(snapshot.queues)
                    found.append(snapshot.found)
                    self._ledger.record(snapshot.unparseable)
                success = True
            except BrokerReadError as error:
                success = False
                self._report(False, str(error))
            except (redis.RedisError, OSError) as error:
                success = False
                self._report(False, f"{type(error).__name__}: {error}")
            except Exception:
                # A bug must not take the endpoint down with it.
                success = False
                log.exception("scrape failed")
                self._healthy = False
            finally:
                if gc_enabled:
                    gc.enable()
            if success:
                self._report(True, "")
                self._notice_empty(found)
            duration = self._timer() - started
            families = (queue_families(queues, now) if success else []) + exporter_families(
                duration, success, self._ledger.totals()
            )
        yield from families

    def _notice_empty(self, found: list[bool | None]) -> None:
        """Warn once when no reader finds a queue; again after queues came and went."""
        if any(found):
            self._said_empty = False
        elif found and None not in found and not self._said_empty:
            self._said_empty = True
            if self._empty_warning is not None:
                log.warning("%s", self._empty_warning())

    def _report(self, healthy: bool, detail: str) -> None:
        """Log when the broker becomes unreadable and when it comes back, not every scrape."""
        if healthy and self._healthy is False:
            log.info("broker readable again")
        elif not healthy and self._healthy is not False:
            log.error("cannot read the broker: %s", detail)
        elif not healthy:
            log.debug("cannot read the broker: %s", detail)
        self._healthy = healthy


class EventCollector(Collector):
    """Families from the event tracker; the tracker is fed by the event thread."""

    def __init__(
        self,
        tracker: EventTracker,
        lock: threading.Lock,
        *,
        stream: EventStream | None = None,
        inspector: CeleryInspector | None = None,
        per_worker: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tracker = tracker
        self._lock = lock
        self._stream = stream
        self._inspector = inspector
        self._per_worker = per_worker
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        # While the exporter cannot receive, workers' silence proves nothing.
        receiving = self._stream is None or self._stream.connected
        with self._lock:
            snapshot = self._tracker.snapshot(now, expire_workers=receiving)
        yield from event_families(snapshot, task_label=self._tracker.options.task_label,
                                  per_worker=self._per_worker)
        inspecting = self._inspector is not None and self._inspector.interval is not None
        yield from receiver_families(
            self._stream is not None and self._stream.connected,
            self._inspector.current(now) if self._inspector is not None else None,
            inspecting,
        )
