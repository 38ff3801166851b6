"""Pure mapping from broker snapshots to Prometheus metric families."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from exporter import metric_names as m
from exporter.celery_inspect import InspectResult
from exporter.event_tracker import EventsSnapshot, HistogramSnapshot
from exporter.snapshot import QueueSnapshot

QueueKey = tuple[str, str]


def family(spec: m.MetricSpec, labels: tuple[str, ...] | None = None) -> Any:
    """An empty family of the spec's type; `labels` replaces the spec's (--no-task-label)."""
    labels = spec.labels if labels is None else labels
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    if spec.type == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def _buckets(h: HistogramSnapshot) -> list[tuple[str, float]]:
    cumulative = 0
    out = []
    for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
        cumulative += count
        out.append((floatToGoString(bound), float(cumulative)))
    return out


def oldest_age(queue: QueueSnapshot, now: float) -> float:
    if queue.oldest_enqueued_at is None:
        return 0.0
    # Producer and exporter clocks differ a little; never report a negative age.
    return max(0.0, now - queue.oldest_enqueued_at)


def queue_families(queues: Iterable[QueueSnapshot], now: float) -> list[Metric]:
    """One family per queue metric; a field that is None is left out for that queue."""
    depth = family(m.QUEUE_DEPTH)
    age = family(m.OLDEST_TASK_AGE)
    unacked = family(m.TASKS_UNACKED)
    scheduled = family(m.TASKS_SCHEDULED)
    started = family(m.TASKS_STARTED)
    failed = family(m.TASKS_FAILED)
    consumers = family(m.QUEUE_CONSUMERS)
    optional = ((unacked, "unacked"), (scheduled, "scheduled"), (started, "started"),
                (failed, "failed"), (consumers, "consumers"))
    for q in sorted(queues, key=lambda q: (q.system, q.queue)):
        labels = [q.system, q.queue]
        depth.add_metric(labels, q.depth)
        if q.age_known:
            age.add_metric(labels, oldest_age(q, now))
        for target, field in optional:
            value = getattr(q, field)
            if value is not None:
                target.add_metric(labels, value)
    return [depth, age, unacked, scheduled, started, failed, consumers]


def exporter_families(
    scrape_duration: float, success: bool, unparseable_totals: Mapping[QueueKey, int]
) -> list[Metric]:
    duration = family(m.SCRAPE_DURATION)
    duration.add_metric([], scrape_duration)
    ok = family(m.SCRAPE_SUCCESS)
    ok.add_metric([], 1.0 if success else 0.0)
    unparseable = family(m.UNPARSEABLE_MESSAGES)
    for (system, queue), total in sorted(unparseable_totals.items()):
        unparseable.add_metric([system, queue], total)
    return [duration, ok, unparseable]


def event_families(
    events: EventsSnapshot, *, task_label: bool = True, per_worker: bool = False
) -> list[Metric]:
    """Families from Celery events. Without task_label the `task` label is left out."""
    task_labels = ("queue", "task") if task_label else ("queue",)
    tasks = family(m.TASKS_TOTAL, (*task_labels, "state"))
    for (queue, task, state), total in sorted(events.tasks.items()):
        tasks.add_metric([queue, task, state] if task_label else [queue, state], total)
    histograms = []
    for spec, source in ((m.TASK_WAIT, events.wait), (m.TASK_RUNTIME, events.runtime)):
        h = family(spec, task_labels)
        for (queue, task), snapshot in sorted(source.items()):
            h.add_metric([queue, task] if task_label else [queue], _buckets(snapshot),
                         snapshot.total)
        histograms.append(h)
    active = family(m.TASKS_ACTIVE)
    for queue, count in sorted(events.active.items()):
        active.add_metric([queue], count)
    workers = family(m.WORKERS)
    for queue, count in sorted(events.workers.items()):
        workers.add_metric([queue], count)
    result: list[Metric] = [tasks, *histograms, active, workers]
    if per_worker:
        up = family(m.WORKER_UP)
        running = family(m.WORKER_TASKS_ACTIVE)
        for worker in events.online:
            up.add_metric([worker.hostname], 1)
            running.add_metric([worker.hostname], worker.active)
        result += [up, running]
    seen = family(m.EVENTS_TOTAL)
    for kind, total in sorted(events.events.items()):
        seen.add_metric([kind], total)
    last = family(m.LAST_EVENT)
    for group, at in sorted(events.last_event.items()):
        last.add_metric([group], at)
    tracked = family(m.TRACKED_TASKS)
    tracked.add_metric([], events.tracked_tasks)
    return [*result, seen, last, tracked]


def receiver_families(connected: bool, inspected: InspectResult | None,
                      inspecting: bool) -> list[Metric]:
    """The event receiver's connection and, with --inspect-interval, the last poll."""
    up = family(m.EVENTS_CONNECTED)
    up.add_metric([], 1.0 if connected else 0.0)
    if not inspecting:
        return [up]
    tasks = family(m.INSPECT_TASKS)
    ok = family(m.INSPECT_SUCCESS)
    ok.add_metric([], 1.0 if inspected is not None and inspected.success else 0.0)
    if inspected is not None:
        for (queue, state), count in sorted(inspected.counts.items()):
            tasks.add_metric([queue, state], count)
    return [up, tasks, ok]
