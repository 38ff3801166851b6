from __future__ import annotations

from typing import Any

import pytest

from exporter import metric_names as m
from exporter.event_tracker import (
    OTHER,
    UNKNOWN,
    EventTracker,
    TrackerOptions,
    parse_eta,
)
from exporter.families import event_families
from tests.scrape import samples_of, value

T0 = 1_700_000_000.0
W1 = "celery@w1"


def ev(kind: str, uuid: str | None = None, ts: float = T0, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "timestamp": ts, **fields}
    if uuid is not None:
        event["uuid"] = uuid
    return event


def run(tracker: EventTracker, *events: tuple[float, dict[str, Any]]) -> None:
    for now, event in events:
        tracker.handle(event, now)


def lifecycle(uuid: str, *, sent: float, started: float, runtime: float, queue: str = "emails",
              name: str = "app.send", worker: str = W1, outcome: str = "succeeded",
              eta: str | None = None) -> list[tuple[float, dict[str, Any]]]:
    finished: dict[str, Any] = {"hostname": worker}
    if outcome == "succeeded":
        finished["runtime"] = runtime
    return [
        (sent, ev("task-sent", uuid, sent, queue=queue, name=name, eta=eta,
                  hostname="producer")),
        (sent + 0.001, ev("task-received", uuid, sent + 0.001, name=name, hostname=worker,
                          eta=eta)),
        (started, ev("task-started", uuid, started, hostname=worker)),
        (started + runtime, ev(f"task-{outcome}", uuid, started + runtime, **finished)),
    ]


def test_a_task_lifecycle_counts_each_state_and_observes_wait_and_runtime() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-online", hostname=W1, freq=2.0)),
        *lifecycle("a", sent=T0, started=T0 + 3.0, runtime=0.2))
    s = t.snapshot(T0 + 3.3)
    assert {k: v for k, v in s.tasks.items() if k[0] == "emails"} == {
        ("emails", "app.send", state): 1 for state in ("sent", "received", "started", "succeeded")
    }
    wait = s.wait[("emails", "app.send")]
    assert wait.count == 1 and wait.total == pytest.approx(3.0)
    # 3.0 s falls in the (2.5, 5] bucket.
    assert wait.counts[wait.bounds.index(5.0)] == 1
    runtime = s.runtime[("emails", "app.send")]
    assert runtime.count == 1 and runtime.counts[runtime.bounds.index(0.25)] == 1
    assert s.active == {"emails": 0}
    assert s.tracked_tasks == 0
    assert s.events["task-sent"] == 1 and s.events["worker-online"] == 1
    assert s.last_event == {"worker": T0, "sent": T0, "task": T0 + 3.2}


@pytest.mark.parametrize(
    ("eta_offset", "started_offset", "expected_wait"),
    [
        (10.0, 12.0, 2.0),  # due at +10, started at +12: waited 2 s after its ETA
        (None, 12.0, 12.0),
        (-5.0, 1.0, 1.0),  # an ETA in the past does not count
        (10.0, 9.5, 0.0),  # started "before" its ETA: clock skew, clamped
    ],
)
def test_wait_starts_at_the_later_of_publish_and_eta(
    eta_offset: float | None, started_offset: float, expected_wait: float
) -> None:
    from datetime import UTC, datetime

    eta = None
    if eta_offset is not None:
        eta = datetime.fromtimestamp(T0 + eta_offset, tz=UTC).isoformat()
    t = EventTracker()
    run(t, *lifecycle("a", sent=T0, started=T0 + started_offset, runtime=0.1, eta=eta))
    wait = t.snapshot(T0 + 20).wait[("emails", "app.send")]
    assert wait.total == pytest.approx(expected_wait)


def test_failed_runtime_comes_from_the_started_stamp() -> None:
    t = EventTracker()
    run(t, *lifecycle("a", sent=T0, started=T0 + 1, runtime=4.0, outcome="failed"))
    s = t.snapshot(T0 + 6)
    assert s.tasks[("emails", "app.send", "failed")] == 1
    assert s.runtime[("emails", "app.send")].total == pytest.approx(4.0)


def test_a_retry_waits_anew_from_its_republish_and_leaves_active() -> None:
    t = EventTracker()
    name = "app.flaky"
    run(t,
        (T0, ev("task-sent", "r", T0, queue="q", name=name)),
        (T0 + 1, ev("task-received", "r", T0 + 1, name=name, hostname=W1)),
        (T0 + 1, ev("task-started", "r", T0 + 1, hostname=W1)))
    assert t.snapshot(T0 + 1.5).active == {"q": 1}
    # The worker publishes the retry (task-sent), then reports task-retried.
    run(t,
        (T0 + 2, ev("task-sent", "r", T0 + 2, queue="q", name=name, hostname=W1)),
        (T0 + 2, ev("task-retried", "r", T0 + 2, hostname=W1)))
    assert t.snapshot(T0 + 2.5).active == {"q": 0}
    run(t,
        (T0 + 2.1, ev("task-received", "r", T0 + 2.1, name=name, hostname=W1)),
        (T0 + 7, ev("task-started", "r", T0 + 7, hostname=W1)),
        (T0 + 8, ev("task-succeeded", "r", T0 + 8, hostname=W1, runtime=1.0)))
    s = t.snapshot(T0 + 8)
    assert s.tasks[("q", name, "sent")] == 2
    assert s.tasks[("q", name, "retried")] == 1
    assert s.tasks[("q", name, "started")] == 2
    assert s.wait[("q", name)].count == 2
    assert s.wait[("q", name)].total == pytest.approx(1.0 + 5.0)
    assert s.active == {"q": 0} and s.tracked_tasks == 0


@pytest.mark.parametrize(
    "order",
    [
        ("sent", "started", "succeeded"),
        ("started", "sent", "succeeded"),  # the producer's event overtaken by the worker's
        ("started", "succeeded", "sent"),  # ... by the whole run
    ],
)
def test_the_wait_is_observed_once_whichever_event_comes_first(order: tuple[str, ...]) -> None:
    t = EventTracker()
    events = {
        "sent": ev("task-sent", "a", T0, queue="q", name="app.x", hostname="producer"),
        "started": ev("task-started", "a", T0 + 4, hostname=W1),
        "succeeded": ev("task-succeeded", "a", T0 + 5, hostname=W1, runtime=1.0),
    }
    run(t, *((T0 + 6, events[kind]) for kind in order))
    s = t.snapshot(T0 + 6)
    wait = s.wait[("q", "app.x")]
    assert (wait.count, wait.total) == (1, pytest.approx(4.0))
    assert s.tasks[("q", "app.x", "sent")] == 1
    assert s.tracked_tasks == 0 and s.active.get("q", 0) == 0


def test_a_retry_republished_after_its_run_started_is_not_a_late_send() -> None:
    t = EventTracker()
    # The first run's task-sent was never seen (the exporter started late).
    run(t,
        (T0, ev("task-started", "r", T0, hostname=W1)),
        (T0 + 1, ev("task-sent", "r", T0 + 1, queue="q", name="app.x", hostname=W1)),
        (T0 + 1, ev("task-retried", "r", T0 + 1, hostname=W1)))
    assert t.snapshot(T0 + 1).wait == {}
    run(t, (T0 + 3, ev("task-started", "r", T0 + 3, hostname=W1)))
    wait = t.snapshot(T0 + 3).wait[("q", "app.x")]
    assert (wait.count, wait.total) == (1, pytest.approx(2.0))


def test_a_retried_event_after_its_rerun_finished_keeps_its_labels() -> None:
    t = EventTracker()
    name = "app.flaky"
    run(t,
        (T0, ev("task-sent", "r", T0, queue="q", name=name)),
        (T0, ev("task-started", "r", T0, hostname=W1)),
        (T0 + 1, ev("task-sent", "r", T0 + 1, queue="q", name=name, hostname=W1)),
        (T0 + 1, ev("task-started", "r", T0 + 1, hostname="celery@w2")),
        (T0 + 1, ev("task-succeeded", "r", T0 + 1, hostname="celery@w2", runtime=0.1)),
        # The first run's report comes last.
        (T0 + 2, ev("task-retried", "r", T0 + 2, hostname=W1)))
    s = t.snapshot(T0 + 2)
    assert s.tasks[("q", name, "retried")] == 1
    assert s.tracked_tasks == 0 and s.active == {"q": 0}


def test_a_retried_event_after_its_rerun_started_leaves_the_rerun_active() -> None:
    t = EventTracker()
    name = "app.flaky"
    run(t,
        (T0, ev("task-sent", "r", T0, queue="q", name=name)),
        (T0, ev("task-started", "r", T0, hostname=W1)),
        (T0 + 1, ev("task-sent", "r", T0 + 1, queue="q", name=name, hostname=W1)),
        (T0 + 1.5, ev("task-started", "r", T0 + 1.5, hostname=W1)),
        (T0 + 2, ev("task-retried", "r", T0 + 2, hostname=W1)))
    assert t.snapshot(T0 + 2).active == {"q": 1}
    run(t, (T0 + 3, ev("task-failed", "r", T0 + 3, hostname=W1)))
    s = t.snapshot(T0 + 3)
    assert s.active == {"q": 0} and s.runtime[("q", name)].total == pytest.approx(1.5)


def test_without_task_sent_the_queue_comes_from_a_one_queue_worker() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-online", hostname=W1)),
        (T0, ev("worker-online", hostname="celery@w2")))
    t.set_worker_queues(W1, ["images"])
    for uuid, worker in (("a", W1), ("b", "celery@w2")):
        run(t, (T0 + 1, ev("task-received", uuid, T0 + 1, name="app.resize", hostname=worker)),
            (T0 + 1, ev("task-started", uuid, T0 + 1, hostname=worker)))
    s = t.snapshot(T0 + 2)
    assert s.tasks[("images", "app.resize", "started")] == 1
    assert s.tasks[(UNKNOWN, "app.resize", "started")] == 1
    assert s.active == {"images": 1, UNKNOWN: 1}
    # No publish time: no wait observation rather than a made-up one.
    assert s.wait == {}
    assert s.workers == {"images": 1, UNKNOWN: 1}


def test_workers_per_queue_from_inspect_learned_and_unknown() -> None:
    t = EventTracker()
    for host in ("a@h", "b@h", "c@h"):
        run(t, (T0, ev("worker-heartbeat", hostname=host, freq=2.0, active=0)))
    t.set_worker_queues("a@h", ["emails", "images"])
    # b learns "emails" from a task whose task-sent named it.
    run(t, (T0, ev("task-sent", "x", T0, queue="emails", name="n")),
        (T0, ev("task-received", "x", T0, name="n", hostname="b@h")))
    assert t.snapshot(T0 + 1).workers == {"emails": 2, "images": 1, UNKNOWN: 1}
    assert t.workers_without_queues() == ["b@h", "c@h"]


def test_an_offline_worker_takes_its_tasks_out() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-online", hostname=W1, freq=2.0)),
        (T0, ev("task-sent", "a", T0, queue="q", name="n")),
        (T0, ev("task-started", "a", T0, hostname=W1)))
    assert t.snapshot(T0).active == {"q": 1}
    run(t, (T0 + 1, ev("worker-offline", hostname=W1)))
    s = t.snapshot(T0 + 1)
    assert s.active == {"q": 0} and s.workers == {"q": 0}
    # The id stays (until it ends or expires) so that a late end keeps its labels.
    assert s.tracked_tasks == 1


def test_a_silent_worker_expires_after_three_heartbeat_intervals() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-heartbeat", hostname=W1, freq=2.0, active=1)),
        (T0, ev("task-sent", "a", T0, queue="q", name="n")),
        (T0, ev("task-started", "a", T0, hostname=W1)))
    assert t.snapshot(T0 + 6.0).workers == {"q": 1}
    s = t.snapshot(T0 + 6.1)
    assert s.workers == {"q": 0} and s.active == {"q": 0} and s.online == ()


def test_a_worker_silent_only_to_the_exporter_finishes_with_labels() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-heartbeat", hostname=W1, freq=2.0, active=1)),
        (T0, ev("task-sent", "a", T0, queue="q", name="n")),
        (T0, ev("task-started", "a", T0, hostname=W1)))
    # While the exporter cannot receive, silence proves nothing.
    assert t.snapshot(T0 + 60, expire_workers=False).active == {"q": 1}
    assert t.snapshot(T0 + 60).active == {"q": 0}
    run(t, (T0 + 61, ev("task-succeeded", "a", T0 + 61, hostname=W1, runtime=61.0)))
    s = t.snapshot(T0 + 61)
    assert s.tasks[("q", "n", "succeeded")] == 1
    assert s.runtime[("q", "n")].count == 1 and s.tracked_tasks == 0


def test_after_a_reconnect_workers_get_a_fresh_heartbeat_window() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-heartbeat", hostname=W1, freq=2.0, active=1)),
        (T0, ev("task-sent", "a", T0, queue="q", name="n")),
        (T0, ev("task-started", "a", T0, hostname=W1)))
    assert t.snapshot(T0 + 30, expire_workers=False).active == {"q": 1}
    t.resume(T0 + 30)  # connected again: the outage's silence does not count
    assert t.snapshot(T0 + 30.5).active == {"q": 1}
    run(t, (T0 + 32, ev("worker-heartbeat", hostname=W1, freq=2.0, active=1)))
    assert t.snapshot(T0 + 37).active == {"q": 1}
    # Silent after the reconnect too: gone three intervals after its last heartbeat.
    s = t.snapshot(T0 + 38.1)
    assert s.active == {"q": 0} and s.online == ()


def test_the_cap_evicts_waiting_ids_before_running_ones() -> None:
    t = EventTracker(TrackerOptions(max_tracked_tasks=10))
    run(t, (T0, ev("worker-heartbeat", hostname=W1, freq=1000.0, active=1)),
        (T0, ev("task-sent", "running", T0, queue="q", name="n")),
        (T0, ev("task-started", "running", T0, hostname=W1)))
    for i in range(50):
        run(t, (T0 + 1, ev("task-sent", f"w{i}", T0 + 1, queue="q", name="n")))
    assert t.snapshot(T0 + 2).active == {"q": 1}


def test_a_heartbeat_with_nothing_active_clears_tasks_whose_end_was_lost() -> None:
    t = EventTracker()
    run(t, (T0, ev("task-sent", "old", T0, queue="q", name="n")),
        (T0, ev("task-started", "old", T0, hostname=W1)),
        (T0 + 9, ev("task-sent", "new", T0 + 9, queue="q", name="n")),
        (T0 + 9, ev("task-started", "new", T0 + 9, hostname=W1)),
        # Sent at +10, the heartbeat may predate "new" (started 1 s ago) but not "old".
        (T0 + 10, ev("worker-heartbeat", ts=T0 + 10, hostname=W1, freq=2.0, active=0)))
    s = t.snapshot(T0 + 10)
    assert s.active == {"q": 1} and s.online[0].active == 0


def test_task_ids_are_capped_and_expire() -> None:
    t = EventTracker(TrackerOptions(max_tracked_tasks=100, task_expiry=60.0))
    for i in range(1000):
        run(t, (T0 + i * 0.01, ev("task-sent", f"id{i}", T0, queue="q", name="n")))
    assert t.snapshot(T0 + 10).tracked_tasks == 100
    # The newest ones were kept: their start still gives a wait.
    run(t, (T0 + 11, ev("worker-heartbeat", hostname=W1, freq=1000.0, active=1)),
        (T0 + 11, ev("task-started", "id999", T0 + 11, hostname=W1)))
    assert t.snapshot(T0 + 11).wait[("q", "n")].count == 1
    # Past the expiry only the task still running on a live worker is held.
    assert t.snapshot(T0 + 100).tracked_tasks == 1
    assert t.snapshot(T0 + 200).active == {"q": 1}


def test_distinct_series_are_capped() -> None:
    t = EventTracker(TrackerOptions(max_series=3))
    for i in range(10):
        run(t, (T0, ev("task-sent", f"id{i}", T0, queue="q", name=f"made.up.{i}")))
    tasks = t.snapshot(T0).tasks
    assert len(tasks) == 4
    assert tasks[("q", OTHER, "sent")] == 7


def test_made_up_queue_names_do_not_become_labels_past_the_cap() -> None:
    t = EventTracker(TrackerOptions(max_series=2))
    for i in range(10):
        run(t, (T0, ev("task-sent", f"id{i}", T0, queue=f"q{i}", name="n")),
            (T0, ev("task-received", f"id{i}", T0, name="n", hostname=W1)),
            (T0, ev("task-started", f"id{i}", T0, hostname=W1)))
    s = t.snapshot(T0)
    assert s.active == {"q0": 1, "q1": 1, OTHER: 8}
    assert s.workers == {"q0": 1, "q1": 1}
    # Queues from inspect are held to the same cap.
    t.set_worker_queues(W1, [f"dq{i}" for i in range(50)])
    assert t.snapshot(T0).workers == {"q0": 0, "q1": 0, OTHER: 1}
    assert {k[0] for k in s.tasks} == {"q0", "q1", OTHER}


def test_without_the_task_label_series_merge() -> None:
    t = EventTracker(TrackerOptions(task_label=False))
    run(t, *lifecycle("a", sent=T0, started=T0 + 1, runtime=0.1, name="x"),
        *lifecycle("b", sent=T0, started=T0 + 2, runtime=0.1, name="y"))
    s = t.snapshot(T0 + 3)
    assert s.tasks[("emails", "", "started")] == 2
    assert s.wait[("emails", "")].count == 2


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"type": 5},
        {"type": "custom-thing"},
        {"type": "task-started"},  # no uuid
        {"type": "task-started", "uuid": 7, "hostname": W1},
        {"type": "task-sent", "uuid": "z", "timestamp": "yesterday", "eta": "not a date"},
        {"type": "task-succeeded", "uuid": "never-seen", "runtime": "fast"},
        {"type": "worker-heartbeat", "hostname": None, "freq": "often"},
        {"type": "worker-heartbeat", "hostname": W1, "freq": -1, "active": float("nan")},
    ],
)
def test_malformed_events_are_counted_and_break_nothing(event: dict[str, Any]) -> None:
    t = EventTracker()
    t.handle(event, T0)
    s = t.snapshot(T0)
    assert sum(s.events.values()) == 1
    run(t, *lifecycle("ok", sent=T0, started=T0 + 1, runtime=0.1))
    assert t.snapshot(T0 + 2).tasks[("emails", "app.send", "succeeded")] == 1


def test_parse_eta() -> None:
    assert parse_eta("2023-11-14T22:13:20+00:00") == T0
    assert parse_eta("2023-11-14T22:13:20") == T0
    assert parse_eta("2023-11-14T23:13:20+01:00") == T0
    assert parse_eta(None) is None and parse_eta("soon") is None and parse_eta(5) is None


def test_event_families() -> None:
    t = EventTracker()
    run(t, (T0, ev("worker-heartbeat", hostname=W1, freq=2.0, active=1)),
        *lifecycle("a", sent=T0, started=T0 + 0.5, runtime=2.0),
        (T0 + 3, ev("task-sent", "b", T0 + 3, queue="emails", name="app.send")),
        (T0 + 4, ev("task-started", "b", T0 + 4, hostname=W1)))
    snapshot = t.snapshot(T0 + 4)
    s = samples_of(event_families(snapshot, per_worker=True))
    assert value(s, "taskqueue_tasks_total", queue="emails", task="app.send",
                 state="started") == 2
    assert value(s, "taskqueue_task_wait_seconds_bucket", queue="emails", task="app.send",
                 le="0.5") == 1
    assert value(s, "taskqueue_task_wait_seconds_bucket", queue="emails", task="app.send",
                 le="1.0") == 2
    assert value(s, "taskqueue_task_wait_seconds_count", queue="emails", task="app.send") == 2
    assert value(s, "taskqueue_task_runtime_seconds_bucket", queue="emails", task="app.send",
                 le="+Inf") == 1
    assert value(s, "taskqueue_task_runtime_seconds_sum", queue="emails",
                 task="app.send") == 2.0
    assert value(s, m.TASKS_ACTIVE.name, queue="emails") == 1
    assert value(s, m.WORKERS.name, queue="emails") == 1
    assert value(s, m.WORKER_UP.name, worker=W1) == 1
    assert value(s, m.WORKER_TASKS_ACTIVE.name, worker=W1) == 1
    assert value(s, "taskqueue_exporter_events_total", type="task-started") == 2
    assert value(s, m.LAST_EVENT.name, group="task") == T0 + 4
    assert value(s, m.TRACKED_TASKS.name) == 1

    plain = samples_of(event_families(snapshot, task_label=False))
    assert value(plain, "taskqueue_tasks_total", queue="emails", state="started") == 2
    assert not any(name.startswith(m.WORKER_UP.name) for name, _ in plain)


def beat(tracker: EventTracker, processed: int, now: float = T0, kind: str = "worker-heartbeat",
         host: str = W1) -> list[tuple[str, int]]:
    tracker.handle(ev(kind, hostname=host, freq=2.0, active=0, processed=processed), now)
    return tracker.take_silent_workers()


def test_a_worker_that_runs_tasks_without_task_events_is_found_once() -> None:
    tracker = EventTracker()
    assert beat(tracker, 0, kind="worker-online") == []
    assert beat(tracker, 0) == []  # idle: proves nothing
    assert beat(tracker, 2) == []  # ran two: its task events get a heartbeat to arrive
    assert beat(tracker, 3) == [(W1, 2)]
    assert beat(tracker, 9) == []  # said once
    # Restarted (back online, the count from 0): said again after it runs a task.
    assert beat(tracker, 0, kind="worker-online") == []
    assert beat(tracker, 1) == []
    assert beat(tracker, 1) == [(W1, 1)]
    # Restarted without a worker-online seen (the count went down): again too.
    assert beat(tracker, 0) == []
    assert beat(tracker, 4) == []
    assert beat(tracker, 4) == [(W1, 4)]


def test_workers_with_task_events_or_idle_are_never_found() -> None:
    tracker = EventTracker()
    # Seen first mid-way through its life (tasks run before the exporter listened), idle.
    for _ in range(5):
        assert beat(tracker, 100, host="idle@h") == []
    # Runs tasks and sends their events (-E).
    assert beat(tracker, 7) == []
    run(tracker, *lifecycle("a", sent=T0, started=T0 + 1, runtime=0.1))
    for processed in (8, 8, 9):
        assert beat(tracker, processed) == []


def test_tasks_run_while_the_receiver_was_away_prove_nothing() -> None:
    tracker = EventTracker()
    beat(tracker, 0, kind="worker-online")
    beat(tracker, 0)
    tracker.resume(T0 + 60)  # it ran five tasks meanwhile; their events are lost
    assert beat(tracker, 5) == []
    assert beat(tracker, 5) == []
    run(tracker, *lifecycle("b", sent=T0, started=T0 + 61, runtime=0.1))
    assert beat(tracker, 6) == []
    assert beat(tracker, 6) == []
