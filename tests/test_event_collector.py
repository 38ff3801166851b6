from __future__ import annotations

import logging
import threading

import pytest

from exporter import metric_names as m
from exporter.celery_events import TrackerFeed
from exporter.celery_inspect import InspectResult
from exporter.collector import EventCollector
from exporter.event_tracker import EventTracker
from exporter.families import receiver_families
from tests.scrape import collect, samples_of, value

T0 = 1_700_000_000.0


def heartbeat(tracker: EventTracker, host: str, now: float) -> None:
    tracker.handle({"type": "worker-heartbeat", "hostname": host, "freq": 1000.0}, now)


def test_the_feed_names_a_worker_without_task_events_once(
        caplog: pytest.LogCaptureFixture) -> None:
    tracker = EventTracker()
    feed = TrackerFeed(tracker, threading.Lock(), clock=lambda: T0)
    with caplog.at_level(logging.WARNING):
        for processed in (0, 0, 1, 1, 2, 3):  # nothing scrapes
            feed({"type": "worker-heartbeat", "hostname": "quiet@h", "freq": 2.0,
                  "processed": processed})
    assert [r.getMessage() for r in caplog.records] == [
        "worker quiet@h ran 1 task but sent no task event: start the workers with -E (or set "
        "worker_send_task_events = True)"
    ]


def test_the_collector_counts_workers_by_heartbeat() -> None:
    tracker = EventTracker()
    collector = EventCollector(tracker, threading.Lock(), clock=lambda: T0)
    heartbeat(tracker, "quiet@h", T0)
    s = collect(collector)
    assert value(s, m.WORKERS.name, queue="(unknown)") == 1
    assert value(s, m.EVENTS_CONNECTED.name) == 0
    assert value(s, m.INSPECT_SUCCESS.name) is None


def test_receiver_families() -> None:
    s = samples_of(receiver_families(True, None, inspecting=False))
    assert s == {(m.EVENTS_CONNECTED.name, frozenset()): 1.0}
    result = InspectResult(T0, True, {("emails", "reserved"): 4})
    s = samples_of(receiver_families(False, result, inspecting=True))
    assert value(s, m.INSPECT_TASKS.name, queue="emails", state="reserved") == 4
    assert value(s, m.INSPECT_SUCCESS.name) == 1
    # A stale or missing answer: success 0 and no task counts.
    s = samples_of(receiver_families(True, None, inspecting=True))
    assert value(s, m.INSPECT_SUCCESS.name) == 0
    assert not [n for n, _ in s if n == m.INSPECT_TASKS.name]
