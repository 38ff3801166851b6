"""Every metric the project exports: name, type, help text and labels.

Dashboards, alert rules, scaler examples and tests refer to these names; a
rename here is a rename everywhere (tests check the other files against this
module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "histogram"]

PREFIX = "taskqueue_"

QUEUE_LABELS = ("system", "queue")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


QUEUE_DEPTH = MetricSpec(
    "taskqueue_queue_depth",
    "gauge",
    "Tasks waiting in the queue. Celery: the queue's list plus its priority sub-lists.",
    QUEUE_LABELS,
)
OLDEST_TASK_AGE = MetricSpec(
    "taskqueue_oldest_task_age_seconds",
    "gauge",
    "Seconds since the oldest due task in the queue was enqueued; 0 when nothing waits.",
    QUEUE_LABELS,
)
TASKS_UNACKED = MetricSpec(
    "taskqueue_tasks_unacked",
    "gauge",
    "Celery tasks delivered to workers and not yet acknowledged "
    "(prefetched, held for an ETA, or running with acks_late).",
    QUEUE_LABELS,
)
TASKS_SCHEDULED = MetricSpec(
    "taskqueue_tasks_scheduled",
    "gauge",
    "Tasks held for a future run time: Celery tasks with a future ETA held by workers, "
    "RQ's scheduled registry.",
    QUEUE_LABELS,
)
TASKS_STARTED = MetricSpec(
    "taskqueue_tasks_started",
    "gauge",
    "RQ jobs in the started registry whose execution has not expired.",
    QUEUE_LABELS,
)
TASKS_FAILED = MetricSpec(
    "taskqueue_tasks_failed",
    "gauge",
    "RQ jobs in the failed registry that have not expired.",
    QUEUE_LABELS,
)
SCRAPE_DURATION = MetricSpec(
    "taskqueue_exporter_scrape_duration_seconds",
    "gauge",
    "Seconds the last scrape took to read the broker.",
)
SCRAPE_SUCCESS = MetricSpec(
    "taskqueue_exporter_scrape_success",
    "gauge",
    "1 if the last scrape read the broker, 0 if it could not.",
)
UNPARSEABLE_MESSAGES = MetricSpec(
    "taskqueue_exporter_unparseable_messages_total",
    "counter",
    "Distinct messages the exporter could not parse for age or scheduling; "
    "they still count in depth and unacked.",
    QUEUE_LABELS,
)

QUEUE_METRICS: tuple[MetricSpec, ...] = (
    QUEUE_DEPTH,
    OLDEST_TASK_AGE,
    TASKS_UNACKED,
    TASKS_SCHEDULED,
    TASKS_STARTED,
    TASKS_FAILED,
)
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    SCRAPE_DURATION,
    SCRAPE_SUCCESS,
    UNPARSEABLE_MESSAGES,
)
ALL_METRICS: tuple[MetricSpec, ...] = QUEUE_METRICS + EXPORTER_METRICS
