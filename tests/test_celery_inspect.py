from __future__ import annotations

import threading
from typing import Any

import pytest

from exporter.celery_inspect import (
    CeleryInspector,
    InspectResult,
    count_by_queue,
    queue_names,
    queue_of_request,
)
from exporter.event_tracker import UNKNOWN, EventTracker


def request(queue: str | None) -> dict[str, Any]:
    return {"id": "x", "name": "t", "delivery_info": {"routing_key": queue, "exchange": ""}}


@pytest.mark.parametrize(
    ("entry", "queue"),
    [
        (request("emails"), "emails"),
        ({"eta": "2030-01-01T00:00:00", "priority": 6, "request": request("later")}, "later"),
        (request(None), UNKNOWN),
        ({"id": "x"}, UNKNOWN),
        ("garbage", UNKNOWN),
        ({"request": "garbage"}, UNKNOWN),
    ],
)
def test_queue_of_request(entry: Any, queue: str) -> None:
    assert queue_of_request(entry) == queue


def test_count_by_queue_over_workers_and_states() -> None:
    replies = {
        "active": {"a@h": [request("emails"), request("emails")], "b@h": [request("images")]},
        "reserved": {"a@h": [request("emails")], "b@h": {"error": "no such command"}},
        "scheduled": {"b@h": [{"eta": "…", "request": request("images")}]},
    }
    assert count_by_queue(replies) == {
        ("emails", "active"): 2, ("images", "active"): 1, ("emails", "reserved"): 1,
        ("images", "scheduled"): 1,
    }
    assert count_by_queue({"active": None, "reserved": None, "scheduled": None}) == {}


def test_count_by_queue_caps_distinct_queues() -> None:
    replies = {"active": {"a@h": [request(f"q{i}") for i in range(5)]}}
    assert count_by_queue(replies, max_queues=2) == {
        ("q0", "active"): 1, ("q1", "active"): 1, ("(other)", "active"): 3}


def test_queue_names() -> None:
    answer = [{"name": "emails", "exchange": {}}, {"name": 5}, "x", {"routing_key": "r"}]
    assert queue_names(answer) == ["emails"]
    assert queue_names({"error": "x"}) == []


class FakeInspect:
    def __init__(self, control: FakeControl, destination: list[str] | None) -> None:
        self.control = control
        self.destination = destination

    def _answer(self, state: str) -> dict[str, Any] | None:
        answers = self.control.answers[state]
        if answers is None:
            return None
        return {h: a for h, a in answers.items()
                if self.destination is None or h in self.destination}

    def active(self) -> dict[str, Any] | None:
        return self._answer("active")

    def reserved(self) -> dict[str, Any] | None:
        return self._answer("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        return self._answer("scheduled")

    def active_queues(self) -> dict[str, Any] | None:
        self.control.asked.append(self.destination)
        return self._answer("active_queues")


class FakeControl:
    def __init__(self) -> None:
        self.answers: dict[str, Any] = {
            "active": {"a@h": [request("emails")]}, "reserved": {"a@h": []},
            "scheduled": {"a@h": []}, "active_queues": {"a@h": [{"name": "emails"}]},
        }
        self.asked: list[list[str] | None] = []

    def inspect(self, destination: list[str] | None = None, timeout: float = 1.0,
                limit: int | None = None) -> FakeInspect:
        return FakeInspect(self, destination)


class FakeApp:
    def __init__(self) -> None:
        self.control = FakeControl()


def inspector(interval: float | None = 10.0) -> tuple[CeleryInspector, EventTracker, FakeApp,
                                                      list[float]]:
    now = [1000.0]
    tracker = EventTracker()
    app = FakeApp()
    return (CeleryInspector(app, tracker, threading.Lock(), interval=interval, timeout=1.0,
                            clock=lambda: now[0]), tracker, app, now)


def test_a_new_worker_is_asked_for_its_queues_once_per_30s() -> None:
    inspect, tracker, app, now = inspector()
    tracker.handle({"type": "worker-heartbeat", "hostname": "a@h", "freq": 1000.0}, now[0])
    tracker.handle({"type": "worker-heartbeat", "hostname": "mute@h", "freq": 1000.0}, now[0])
    inspect.ask_new_workers()
    assert app.control.asked == [["a@h", "mute@h"]]
    assert tracker.snapshot(now[0]).workers == {"emails": 1, UNKNOWN: 1}
    inspect.ask_new_workers()  # mute@h did not answer: not again before 30 s
    assert len(app.control.asked) == 1
    now[0] += 30
    inspect.ask_new_workers()
    assert app.control.asked[-1] == ["mute@h"]


def test_poll_counts_and_goes_stale() -> None:
    inspect, tracker, app, now = inspector(interval=10.0)
    inspect.poll()
    assert inspect.current(now[0]) == InspectResult(1000.0, True, {("emails", "active"): 1})
    now[0] += 3 * 10 + 4 + 1  # three intervals and the broadcasts' own time
    assert inspect.current(now[0]) is None
    app.control.answers["active"] = None  # nobody answered
    inspect.poll()
    assert inspect.current(now[0]).success is True  # and the tracker knows no worker
    tracker.handle({"type": "worker-heartbeat", "hostname": "a@h", "freq": 1000.0}, now[0])
    inspect.poll()
    assert inspect.current(now[0]).success is False


def test_no_polling_without_an_interval() -> None:
    inspect, *_ = inspector(interval=None)
    inspect.result = InspectResult(1000.0, True, {})
    assert inspect.current(1000.0) is None
