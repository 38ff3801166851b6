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

QUEUE_CONSUMERS = MetricSpec(
    "taskqueue_queue_consumers",
    "gauge",
    "Consumers (worker channels) subscribed to the queue, as the broker reports them (RabbitMQ).",
    QUEUE_LABELS,
)

# From Celery events. `task` is left out with --no-task-label.
TASKS_TOTAL = MetricSpec(
    "taskqueue_tasks_total",
    "counter",
    "Celery task events seen, by state (sent, received, started, succeeded, failed, "
    "retried, rejected, revoked).",
    ("queue", "task", "state"),
)
TASK_WAIT = MetricSpec(
    "taskqueue_task_wait_seconds",
    "histogram",
    "Seconds from publish (or the ETA, if later) to the start of the task.",
    ("queue", "task"),
)
TASK_RUNTIME = MetricSpec(
    "taskqueue_task_runtime_seconds",
    "histogram",
    "Seconds tasks ran, from task-succeeded and task-failed events.",
    ("queue", "task"),
)
TASKS_ACTIVE = MetricSpec(
    "taskqueue_tasks_active",
    "gauge",
    "Tasks started and not finished, tracked from events; an offline or silent worker's "
    "tasks drop out.",
    ("queue",),
)
WORKERS = MetricSpec(
    "taskqueue_workers",
    "gauge",
    "Celery workers online (by heartbeat) that consume the queue; \"(unknown)\" until a "
    "worker's queues are known.",
    ("queue",),
)
WORKER_UP = MetricSpec(
    "taskqueue_worker_up",
    "gauge",
    "1 for each Celery worker online by heartbeat (only with --per-worker-metrics).",
    ("worker",),
)
WORKER_TASKS_ACTIVE = MetricSpec(
    "taskqueue_worker_tasks_active",
    "gauge",
    "Tasks the worker runs, from its last heartbeat (only with --per-worker-metrics).",
    ("worker",),
)
INSPECT_TASKS = MetricSpec(
    "taskqueue_inspect_tasks",
    "gauge",
    "Tasks held by workers as the last inspect broadcast answered, by state "
    "(active, reserved, scheduled); only with --inspect-interval.",
    ("queue", "state"),
)
EVENTS_TOTAL = MetricSpec(
    "taskqueue_exporter_events_total",
    "counter",
    "Celery events the exporter received, by type.",
    ("type",),
)
LAST_EVENT = MetricSpec(
    "taskqueue_exporter_last_event_timestamp_seconds",
    "gauge",
    "Unix time the exporter last received an event of the group: task (from workers "
    "started with -E), sent (task-sent, from producers with task_send_sent_event) or "
    "worker (heartbeats, sent by every worker).",
    ("group",),
)
EVENTS_CONNECTED = MetricSpec(
    "taskqueue_exporter_events_connected",
    "gauge",
    "1 while the event receiver is connected to the broker.",
)
TRACKED_TASKS = MetricSpec(
    "taskqueue_exporter_tracked_tasks",
    "gauge",
    "Task ids the event tracker holds (bounded by --max-tracked-tasks).",
)
INSPECT_SUCCESS = MetricSpec(
    "taskqueue_exporter_inspect_success",
    "gauge",
    "1 if the last inspect broadcast got an answer in time, 0 if not; only with "
    "--inspect-interval.",
)

# The scaler's own series.
SCALER_DESIRED = MetricSpec(
    "taskqueue_scaler_desired_replicas",
    "gauge",
    "Desired worker count the scaler decided at its last evaluation.",
    ("service",),
)
SCALER_CURRENT = MetricSpec(
    "taskqueue_scaler_current_replicas",
    "gauge",
    "Worker count of the service as last read from its backend, by state "
    "(desired, running, pending).",
    ("service", "state"),
)
SCALER_MIN = MetricSpec(
    "taskqueue_scaler_min_replicas",
    "gauge",
    "The service's configured minimum worker count.",
    ("service",),
)
SCALER_MAX = MetricSpec(
    "taskqueue_scaler_max_replicas",
    "gauge",
    "The service's configured maximum worker count.",
    ("service",),
)
SCALER_RECOMMENDED = MetricSpec(
    "taskqueue_scaler_recommended_replicas",
    "gauge",
    "The service's recommendation at the last evaluation that had one: the largest of its "
    "rules', after activation and tolerance, before windows, rate policies and limits. "
    "A restarted scaler reads it back to rebuild its windows.",
    ("service",),
)
SCALER_PAUSED = MetricSpec(
    "taskqueue_scaler_paused",
    "gauge",
    "1 while the service is paused by its taskqueue-autoscaler:paused tag, else 0.",
    ("service",),
)
SCALER_LEASE_HELD = MetricSpec(
    "taskqueue_scaler_lease_held",
    "gauge",
    "With a lease configured: 1 while this instance holds it and may change services, "
    "0 while it only evaluates (standby).",
)
SCALER_RULE_VALUE = MetricSpec(
    "taskqueue_scaler_rule_value",
    "gauge",
    "Value the rule's query returned at the last evaluation.",
    ("service", "rule"),
)
SCALER_RULE_RECOMMENDATION = MetricSpec(
    "taskqueue_scaler_rule_recommendation",
    "gauge",
    "Worker count the rule recommended at the last evaluation.",
    ("service", "rule"),
)
SCALER_DECISIONS = MetricSpec(
    "taskqueue_scaler_decisions_total",
    "counter",
    "Scaling decisions, by direction (up, down, none) and reason code.",
    ("service", "direction", "reason"),
)
SCALER_ERRORS = MetricSpec(
    "taskqueue_scaler_errors_total",
    "counter",
    "Errors while evaluating or scaling the service, by kind.",
    ("service", "kind"),
)
SCALER_LAST_SUCCESS = MetricSpec(
    "taskqueue_scaler_last_success_timestamp_seconds",
    "gauge",
    "Unix time of the service's last evaluation that read every query and its backend.",
    ("service",),
)
SCALER_EVALUATION_DURATION = MetricSpec(
    "taskqueue_scaler_evaluation_duration_seconds",
    "gauge",
    "Seconds the last evaluation cycle of all services took.",
)

QUEUE_METRICS: tuple[MetricSpec, ...] = (
    QUEUE_DEPTH,
    OLDEST_TASK_AGE,
    TASKS_UNACKED,
    TASKS_SCHEDULED,
    TASKS_STARTED,
    TASKS_FAILED,
    QUEUE_CONSUMERS,
)
EVENT_METRICS: tuple[MetricSpec, ...] = (
    TASKS_TOTAL,
    TASK_WAIT,
    TASK_RUNTIME,
    TASKS_ACTIVE,
    WORKERS,
    WORKER_UP,
    WORKER_TASKS_ACTIVE,
    INSPECT_TASKS,
    EVENTS_TOTAL,
    LAST_EVENT,
    EVENTS_CONNECTED,
    TRACKED_TASKS,
    INSPECT_SUCCESS,
)
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    SCRAPE_DURATION,
    SCRAPE_SUCCESS,
    UNPARSEABLE_MESSAGES,
)
SCALER_WORKER_RESTARTS = MetricSpec(
    "taskqueue_scaler_worker_restarts_total",
    "counter",
    "Local backend: worker processes that exited without being asked to and were replaced.",
    ("service",),
)
SCALER_METRICS: tuple[MetricSpec, ...] = (
    SCALER_DESIRED,
    SCALER_RECOMMENDED,
    SCALER_CURRENT,
    SCALER_MIN,
    SCALER_MAX,
    SCALER_RULE_VALUE,
    SCALER_RULE_RECOMMENDATION,
    SCALER_DECISIONS,
    SCALER_ERRORS,
    SCALER_LAST_SUCCESS,
    SCALER_EVALUATION_DURATION,
    SCALER_WORKER_RESTARTS,
    SCALER_PAUSED,
    SCALER_LEASE_HELD,
)
ALL_METRICS: tuple[MetricSpec, ...] = (
    QUEUE_METRICS + EVENT_METRICS + EXPORTER_METRICS + SCALER_METRICS
)
