"""What the demo's live view shows: read from Prometheus and the scaler, folded in plain data.

`read_queues` and `read_scaler` are the I/O; `Tracker.update` is pure and keeps what the
view and the closing summary need (the last decision of each service, found as the
decision counter that moved since the previous look; the peak and final worker counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter import metric_names as m


@dataclass(frozen=True)
class QueueRow:
    depth: float | None = None
    unacked: float | None = None
    oldest_age: float | None = None
    active: float | None = None
    workers: float | None = None  # online by heartbeat, from Celery events


@dataclass(frozen=True)
class ServiceRow:
    desired: int
    running: int
    pending: int
    decisions: Mapping[tuple[str, str], float]  # (direction, reason) -> total


@dataclass(frozen=True)
class Decision:
    direction: str
    reason: str
    at: float  # seconds since the demo started
    desired: int


@dataclass
class ServiceHistory:
    first: int | None = None
    peak: int = 0
    last: int = 0
    ups: int = 0
    downs: int = 0
    decision: Decision | None = None


@dataclass
class Tracker:
    services: dict[str, ServiceHistory] = field(default_factory=dict)
    _previous: dict[str, Mapping[tuple[str, str], float]] = field(default_factory=dict)

    def update(self, rows: Mapping[str, ServiceRow], elapsed: float) -> None:
        for name, row in rows.items():
            history = self.services.setdefault(name, ServiceHistory())
            if history.first is None:
                history.first = row.desired
            history.peak = max(history.peak, row.desired)
            history.last = row.desired
            before = self._previous.get(name, {})
            moved = [(key, total - before.get(key, 0.0)) for key, total in row.decisions.items()
                     if total > before.get(key, 0.0)]
            for (direction, _), delta in moved:
                if direction == "up":
                    history.ups += int(delta)
                elif direction == "down":
                    history.downs += int(delta)
            # A change beats a hold when both happened between two looks.
            moved.sort(key=lambda item: item[0][0] == "none")
            if moved:
                (direction, reason), _ = moved[0]
                history.decision = Decision(direction, reason, elapsed, row.desired)
            self._previous[name] = dict(row.decisions)


def _vector(prometheus: str, promql: str, session: requests.Session) -> dict[str, float]:
    response = session.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=2)
    response.raise_for_status()
    return {sample["metric"].get("queue", ""): float(sample["value"][1])
            for sample in response.json()["data"]["result"]}


QUERIES = {
    "depth": f"sum by (queue) ({m.QUEUE_DEPTH.name})",
    "unacked": f"sum by (queue) ({m.TASKS_UNACKED.name})",
    "oldest_age": f"max by (queue) ({m.OLDEST_TASK_AGE.name})",
    "active": f"sum by (queue) ({m.TASKS_ACTIVE.name})",
    "workers": f"sum by (queue) ({m.WORKERS.name})",
}


def read_queues(prometheus: str, queues: tuple[str, ...],
                session: requests.Session) -> dict[str, QueueRow]:
    values = {field_: _vector(prometheus, promql, session) for field_, promql in QUERIES.items()}
    return {queue: QueueRow(**{field_: found.get(queue) for field_, found in values.items()})
            for queue in queues}


def read_scaler(metrics_url: str, session: requests.Session) -> dict[str, ServiceRow]:
    text = session.get(metrics_url, timeout=2).text
    counts: dict[str, dict[str, int]] = {}
    decisions: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            service = sample.labels.get("service")
            if service is None:
                continue
            if sample.name == m.SCALER_CURRENT.name:
                counts.setdefault(service, {})[sample.labels["state"]] = int(sample.value)
            elif sample.name == m.SCALER_DECISIONS.name:
                key = (sample.labels["direction"], sample.labels["reason"])
                decisions.setdefault(service, {})[key] = sample.value
    return {service: ServiceRow(state.get("desired", 0), state.get("running", 0),
                                state.get("pending", 0), decisions.get(service, {}))
            for service, state in counts.items()}
