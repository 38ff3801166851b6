from __future__ import annotations

import logging
import threading

import pytest

from exporter import metric_names as m
from exporter.celery_inspect import InspectResult
from exporter.collector import EventCollector, events_advice
from exporter.event_tracker import EventTracker
from exporter.families import receiver_families
from tests.scrape import collect, samples_of, value

T0 = 1_700_000_000.0


def heartbeat(tracker: EventTracker, host: str, now: float) -> None:
    tracker.handle({"type": "worker-heartbeat", "hostname": host, "freq": 1000.0}, now)


def test_advice_names_workers_that_send_no_task_events() -> None:
    tracker = EventTracker()
    for i in range(5):
        heartbeat(tracker, f"w{i}@h", T0)
    snapshot = tracker.snapshot(T0)
    assert events_advice(snapshot, T0, T0 + 59) is None
    assert events_advice(snapshot, T0, T0 + 60) == (
        "workers w0@h, w1@h, w2@h and 2 more are online but no task event has arrived in 60s: "
        "start the workers with -E (or set worker_send_task_events = True)"
    )
    tracker.handle({"type": "task-started", "uuid": "u", "hostname": "w0@h"}, T0 + 61)
    assert events_advice(tracker.snapshot(T0 + 61), T0, T0 + 61) is None


def test_the_collector_logs_the_advice_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [T0]
    tracker = EventTracker()
    collector = EventCollector(tracker, threading.Lock(), clock=lambda: now[0])
    heartbeat(tracker, "quiet@h", T0)
    with caplog.at_level(logging.WARNING):
        for step in range(0, 200, 15):
            now[0] = T0 + step
            heartbeat(tracker, "quiet@h", now[0])
            s = collect(collector)
    assert [r.getMessage() for r in caplog.records if "-E" in r.getMessage()] == [
        "workers quiet@h are online but no task event has arrived in 60s: start the workers "
        "with -E (or set worker_send_task_events = True)"
    ]
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
