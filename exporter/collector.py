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

from exporter.families import exporter_families, queue_families
from exporter.snapshot import BrokerSnapshot, QueueSnapshot
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
    ) -> None:
        self._readers = tuple(readers)
        self._clock = clock
        self._timer = timer
        self._ledger = ledger or UnparseableLedger()
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
            # A big broker means tens of thousands of parsed messages per scrape,
            # none in a reference cycle: the cyclic GC would only add pauses.
            gc_enabled = gc.isenabled()
            gc.disable()
            try:
                for reader in self._readers:
                    snapshot = reader.read(now)
                    queues.extend(snapshot.queues)
                    self._ledger.record(snapshot.unparseable)
                success = True
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
            duration = self._timer() - started
            families = (queue_families(queues, now) if success else []) + exporter_families(
                duration, success, self._ledger.totals()
            )
        yield from families

    def _report(self, healthy: bool, detail: str) -> None:
        """Log when the broker becomes unreadable and when it comes back, not every scrape."""
        if healthy and self._healthy is False:
            log.info("broker readable again")
        elif not healthy and self._healthy is not False:
            log.error("cannot read the broker: %s", detail)
        elif not healthy:
            log.debug("cannot read the broker: %s", detail)
        self._healthy = healthy
