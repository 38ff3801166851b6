"""Pure mapping from broker snapshots to Prometheus metric families."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import metric_names as m
from exporter.snapshot import QueueSnapshot

QueueKey = tuple[str, str]


def family(spec: m.MetricSpec) -> GaugeMetricFamily | CounterMetricFamily:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


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
    optional = ((unacked, "unacked"), (scheduled, "scheduled"), (started, "started"),
                (failed, "failed"))
    for q in sorted(queues, key=lambda q: (q.system, q.queue)):
        labels = [q.system, q.queue]
        depth.add_metric(labels, q.depth)
        age.add_metric(labels, oldest_age(q, now))
        for target, field in optional:
            value = getattr(q, field)
            if value is not None:
                target.add_metric(labels, value)
    return [depth, age, unacked, scheduled, started, failed]


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
