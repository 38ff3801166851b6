"""Celery events folded into counters, histograms and live task/worker state.

No I/O and no clock of its own: every call gets `now` (the exporter's time
when the event arrived). Every map is bounded: task ids by a cap and an
expiry, workers by heartbeat expiry, label sets by a cap on distinct series,
so a feed of any length leaves memory flat.

Which queue a task belongs to: the `task-sent` event names it (producers send
it with task_send_sent_event, which `instrument_celery(app)` turns on). A
task seen without it takes the queue of the worker that received it when that
worker consumes exactly one queue (known from inspect `active_queues`, or
learned from earlier tasks), else "(unknown)".
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.messages import MessageError, parse_iso_time

UNKNOWN = "(unknown)"
OTHER = "(other)"

# 10 ms to 1 hour: quick tasks and hour-long backlogs both land in a bucket.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)
DEFAULT_MAX_TRACKED_TASKS = 100_000
# A task can wait in a backlog for hours; past this its publish time is forgotten.
DEFAULT_TASK_EXPIRY = 6 * 3600.0
DEFAULT_MAX_SERIES = 2_000
DEFAULT_MAX_WORKERS = 10_000
# Events can cross: a retry's re-published message may run and succeed on
# another thread before the first one reports task-retried. Finished ids are
# remembered this long (in ids) to label such late events.
FINISHED_MEMORY = 10_000
# Celery's own monitors call a worker gone after 2 heartbeat intervals; one
# more absorbs a slow broker without flapping.
HEARTBEAT_EXPIRY_FACTOR = 3.0
DEFAULT_HEARTBEAT_FREQ = 2.0
# A heartbeat saying "0 active" clears tracked tasks that started at least
# this many heartbeat intervals earlier: their end events were lost.
STALE_ACTIVE_FACTOR = 2.0

# "task" events come from workers started with -E, "sent" from producers with
# task_send_sent_event, "worker" (heartbeats) from every worker.
_GROUPS = {"task-sent": "sent", "worker-online": "worker", "worker-heartbeat": "worker",
           "worker-offline": "worker"}

@dataclass(frozen=True)
class TrackerOptions:
    wait_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    runtime_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    task_label: bool = True
    max_tracked_tasks: int = DEFAULT_MAX_TRACKED_TASKS
    task_expiry: float = DEFAULT_TASK_EXPIRY
    max_series: int = DEFAULT_MAX_SERIES
    max_workers: int = DEFAULT_MAX_WORKERS


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]
    # One count per bucket, not cumulative; the last is above every bound.
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class WorkerSnapshot:
    hostname: str
    active: int


@dataclass(frozen=True)
class EventsSnapshot:
    tasks: Mapping[tuple[str, str, str], int]  # (queue, task, state)
    wait: Mapping[tuple[str, str], HistogramSnapshot]
    runtime: Mapping[tuple[str, str], HistogramSnapshot]
    active: Mapping[str, int]  # queue -> started, not finished
    workers: Mapping[str, int]  # queue -> online workers
    online: tuple[WorkerSnapshot, ...]
    events: Mapping[str, int]  # event type -> received
    last_event: Mapping[str, float]  # "task" / "worker" -> unix time
    tracked_tasks: int


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left puts a value
        # equal to a bound in that bound's bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)


class _Task:
    __slots__ = ("eta", "name", "published_at", "queue", "seen_at", "started_at", "waited",
                 "worker")

    def __init__(self, seen_at: float) -> None:
        self.queue: str | None = None
        self.name: str | None = None
        self.published_at: float | None = None
        self.eta: float | None = None
        self.worker: str | None = None
        self.started_at: float | None = None
        # Whether the current run's wait was observed: task-sent may arrive after
        # task-started (different senders), and the wait is observed once.
        self.waited = False
        self.seen_at = seen_at


@dataclass
class _Worker:
    last_seen: float
    freq: float = DEFAULT_HEARTBEAT_FREQ
    active: int = 0
    # From inspect active_queues: exact. None until asked and answered.
    queues: frozenset[str] | None = None
    learned: set[str] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)
    # Whether it sends task events (-E), told from its heartbeats' `processed`
    # count: at the first heartbeat watched, and at the last one.
    processed_from: int | None = None
    processed: int = 0
    task_events: bool = False
    silent: bool = False  # said to run tasks without task events

    def serves(self) -> frozenset[str] | set[str]:
        return self.queues if self.queues is not None else self.learned


def parse_eta(value: Any) -> float | None:
    """Celery sends an ETA as an ISO 8601 string (naive = UTC); None if absent or unreadable."""
    if not value or not isinstance(value, str):
        return None
    try:
        return parse_iso_time(value)
    except MessageError:
        return None


def _sent_late(task: _Task, published: float) -> bool:
    """Whether a task-sent stamped `published` belongs to the run already started.

    A retry's re-publish is stamped after its previous run started; the
    producer's own late event is stamped before.
    """
    return (task.started_at is not None and not task.waited
            and published <= task.started_at)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class EventTracker:
    def __init__(self, options: TrackerOptions | None = None) -> None:
        self.options = options or TrackerOptions()
        # OrderedDicts, not dicts: ids leave from the front all the time, and a
        # plain dict's first item is found by skipping every slot deleted since
        # its last resize (70 us per event at the cap instead of 8).
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._finished: OrderedDict[str, _Task] = OrderedDict()
        self._workers: dict[str, _Worker] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._wait: dict[tuple[str, str], _Histogram] = {}
        self._runtime: dict[tuple[str, str], _Histogram] = {}
        self._series: set[tuple[str, str]] = set()
        self._queues: set[str] = set()
        self._events: dict[str, int] = {}
        self._last_event: dict[str, float] = {}
        self._handlers = {
            "task-sent": self._on_sent,
            "task-received": self._on_received,
            "task-started": self._on_started,
            "task-succeeded": self._on_finished,
            "task-failed": self._on_finished,
            "task-retried": self._on_retried,
            "task-rejected": self._on_finished,
            "task-revoked": self._on_finished,
            "worker-online": self._on_heartbeat,
            "worker-heartbeat": self._on_heartbeat,
            "worker-offline": self._on_offline,
        }
        self._since_sweep = 0
        self._silent: list[tuple[str, int]] = []

    # -- input -------------------------------------------------------------

    def handle(self, event: Mapping[str, Any], now: float) -> None:
        """Fold one event in. Malformed events are counted and otherwise ignored."""
        kind = event.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._events["other"] = self._events.get("other", 0) + 1
            return
        self._events[kind] = self._events.get(kind, 0) + 1
        group = _GROUPS.get(kind, "task")
        self._last_event[group] = now
        handler(event, now)
        hostname = event.get("hostname")
        if group == "task" and isinstance(hostname, str) and hostname in self._workers:
            self._workers[hostname].task_events = True
        self._since_sweep += 1
        if self._since_sweep >= 10_000:
            self.expire(now, workers=False)

    def set_worker_queues(self, hostname: str, queues: Iterable[str]) -> None:
        """The queues a worker consumes, as inspect `active_queues` answered."""
        worker = self._workers.get(hostname)
        if worker is None:
            return
        worker.queues = frozenset(queues)
        for queue in worker.queues:
            if len(self._queues) < self.options.max_series:
                self._queues.add(queue)

    def resume(self, now: float) -> None:
        """The exporter receives again: workers' silence while it could not proves nothing.

        Without this, the first scrape after a reconnect would drop every worker
        silent through the outage and their running tasks would stop counting as
        active for good (only task-started attaches a task to a worker).
        """
        for worker in self._workers.values():
            worker.last_seen = max(worker.last_seen, now)
            # Task events of the outage are lost: watch its tasks anew.
            worker.processed_from = None

    def workers_online(self) -> int:
        return len(self._workers)

    def take_silent_workers(self) -> list[tuple[str, int]]:
        """Workers found running tasks without sending task events since the last call.

        (hostname, tasks run while watched). Each worker once per run of it:
        again only when it comes back online.
        """
        found, self._silent = self._silent, []
        return found

    def workers_without_queues(self) -> list[str]:
        return [h for h, w in self._workers.items() if w.queues is None]

    def expire(self, now: float, workers: bool = True) -> None:
        """Drop silent workers (their tasks stop counting as active) and old task ids.

        `workers=False` while the exporter itself cannot receive: silence is
        then no sign that a worker is gone.
        """
        self._since_sweep = 0
        if workers:
            for hostname in [h for h, w in self._workers.items()
                             if now - w.last_seen > w.freq * HEARTBEAT_EXPIRY_FACTOR]:
                self._drop_worker(hostname)
        horizon = now - self.options.task_expiry
        tasks = self._tasks
        # Insertion order is arrival order, so expired ids sit at the front;
        # a running task (it has a worker) is kept while its worker lives.
        while tasks:
            uuid, task = next(iter(tasks.items()))
            if task.seen_at >= horizon:
                break
            if task.worker is not None and task.started_at is not None:
                task.seen_at = now
                tasks.move_to_end(uuid)
            else:
                del tasks[uuid]

    # -- output ------------------------------------------------------------

    def snapshot(self, now: float, expire_workers: bool = True) -> EventsSnapshot:
        self.expire(now, workers=expire_workers)
        active = dict.fromkeys(self._queues, 0)
        workers = dict.fromkeys(self._queues, 0)
        online = []
        for hostname, worker in self._workers.items():
            serves = worker.serves()
            # A worker counts once per label, however many capped queues it has.
            labels = {q if q in self._queues else OTHER for q in serves} or {UNKNOWN}
            for queue in labels:
                workers[queue] = workers.get(queue, 0) + 1
            for uuid in worker.tasks:
                task = self._tasks.get(uuid)
                if task is not None:
                    queue = self._queue_of(task, worker)
                    if queue not in self._queues:
                        queue = OTHER if queue != UNKNOWN else UNKNOWN
                    active[queue] = active.get(queue, 0) + 1
            online.append(WorkerSnapshot(hostname, worker.active))
        return EventsSnapshot(
            tasks=dict(self._counts),
            wait={k: h.snapshot() for k, h in self._wait.items()},
            runtime={k: h.snapshot() for k, h in self._runtime.items()},
            active=active,
            workers=workers,
            online=tuple(sorted(online, key=lambda w: w.hostname)),
            events=dict(self._events),
            last_event=dict(self._last_event),
            tracked_tasks=len(self._tasks),
        )

    # -- handlers ----------------------------------------------------------

    def _task(self, event: Mapping[str, Any], now: float) -> tuple[str, _Task] | None:
        uuid = event.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            return None
        task = self._tasks.get(uuid)
        if task is None:
            task = _Task(now)
            self._tasks[uuid] = task
            if len(self._tasks) > self.options.max_tracked_tasks:
                self._evict_oldest()
        return uuid, task

    def _evict_oldest(self) -> None:
        tasks = self._tasks
        # Running tasks on a live worker go to the back: they end by
        # themselves, and they are what taskqueue_tasks_active counts. Bounded,
        # so a flood of made-up "started" ids cannot make each event slow.
        for _ in range(min(len(tasks), 64)):
            uuid, task = next(iter(tasks.items()))
            if task.worker is None:
                break
            tasks.move_to_end(uuid)
        uuid, task = tasks.popitem(last=False)
        if task.worker is not None and (worker := self._workers.get(task.worker)):
            worker.tasks.discard(uuid)

    def _on_sent(self, event: Mapping[str, Any], now: float) -> None:
        published = _number(event.get("timestamp")) or now
        uuid = event.get("uuid")
        done = (self._finished.get(uuid)
                if isinstance(uuid, str) and uuid not in self._tasks else None)
        if done is not None and _sent_late(done, published):
            # The producer's event came after the whole run: count and observe
            # its wait, but track nothing.
            task = done
        else:
            found = self._task(event, now)
            if found is None:
                return
            _, task = found
        queue = event.get("queue") or event.get("routing_key")
        if isinstance(queue, str) and queue:
            task.queue = queue
        self._take_name(task, event)
        late = _sent_late(task, published)
        # A retry re-publishes the same id: it waits anew from this moment.
        task.published_at = published
        task.eta = parse_eta(event.get("eta"))
        key = self._count(task, None, "sent")
        if late and task.started_at is not None:
            self._observe_wait(key, task, published, task.started_at)

    def _on_received(self, event: Mapping[str, Any], now: float) -> None:
        found = self._task(event, now)
        if found is None:
            return
        _, task = found
        self._take_name(task, event)
        eta = parse_eta(event.get("eta"))
        if eta is not None:
            task.eta = eta
        worker = self._worker_event(event, now)
        self._count(task, worker, "received")
        self._learn(worker, task)

    def _on_started(self, event: Mapping[str, Any], now: float) -> None:
        found = self._task(event, now)
        if found is None:
            return
        uuid, task = found
        worker = self._worker_event(event, now)
        started = _number(event.get("timestamp")) or now
        key = self._count(task, worker, "started")
        task.waited = False
        if task.published_at is not None:
            self._observe_wait(key, task, task.published_at, started)
        task.started_at = started
        self._learn(worker, task)
        if worker is not None:
            hostname = event["hostname"]
            if task.worker is not None and task.worker != hostname:
                self._detach(uuid, task)
            task.worker = hostname
            worker.tasks.add(uuid)

    def _on_finished(self, event: Mapping[str, Any], now: float) -> None:
        state = event["type"][5:]
        uuid = event.get("uuid")
        task = self._tasks.pop(uuid, None) if isinstance(uuid, str) else None
        worker = self._worker_event(event, now)
        if task is None:
            task = _Task(now)
        key = self._count(task, worker, state)
        if state in ("succeeded", "failed"):
            runtime = _number(event.get("runtime"))
            if runtime is None and task.started_at is not None:
                # task-failed carries no runtime; both stamps are the worker's clock.
                finished = _number(event.get("timestamp"))
                if finished is not None:
                    runtime = finished - task.started_at
            if runtime is not None:
                self._observe(self._runtime, key, self.options.runtime_buckets, max(0.0, runtime))
        if isinstance(uuid, str):
            self._detach(uuid, task)
            self._remember_finished(uuid, task)

    def _remember_finished(self, uuid: str, task: _Task) -> None:
        finished = self._finished
        finished.pop(uuid, None)
        finished[uuid] = task
        if len(finished) > FINISHED_MEMORY:
            finished.popitem(last=False)

    def _on_retried(self, event: Mapping[str, Any], now: float) -> None:
        uuid = event.get("uuid")
        worker = self._worker_event(event, now)
        late = self._finished.get(uuid) if isinstance(uuid, str) else None
        if late is not None and uuid not in self._tasks:
            # The re-published run already finished: count, track nothing.
            self._count(late, worker, "retried")
            return
        found = self._task(event, now)
        if found is None:
            return
        uuid, task = found
        self._count(task, worker, "retried")
        # The retry's own task-sent (if any) came first and set a new publish
        # time. If the re-published run has started already (both stamps from
        # the retrying worker's clock), that run is the one tracked.
        if (task.started_at is not None and task.published_at is not None
                and task.started_at > task.published_at):
            return
        self._detach(uuid, task)
        task.started_at = None

    def _on_heartbeat(self, event: Mapping[str, Any], now: float) -> None:
        worker = self._worker_event(event, now)
        if worker is None:
            return
        freq = _number(event.get("freq"))
        if freq is not None and freq > 0:
            worker.freq = freq
        processed = _number(event.get("processed"))
        if processed is not None:
            self._watch_task_events(event["hostname"], worker, int(processed),
                                    online=event["type"] == "worker-online")
        active = _number(event.get("active"))
        if active is None:
            return
        worker.active = int(active)
        if active == 0 and worker.tasks:
            sent = _number(event.get("timestamp")) or now
            horizon = sent - worker.freq * STALE_ACTIVE_FACTOR
            for uuid in [u for u in worker.tasks
                         if (self._tasks[u].started_at or 0.0) < horizon]:
                worker.tasks.discard(uuid)
                self._tasks[uuid].worker = None

    def _watch_task_events(self, hostname: str, worker: _Worker, processed: int,
                           online: bool) -> None:
        """Note a worker that runs tasks and sends no task event: one started without -E.

        `processed` counts the tasks a worker has started since it started.
        Grown by the previous heartbeat with no task event from the worker
        since watching began, it is a worker without -E: with -E, task-received
        goes out before the count grows, and a whole heartbeat interval has
        passed since. Idle workers and tasks run before the exporter listened
        prove nothing either way.
        """
        if online or worker.processed_from is None or processed < worker.processed:
            # A (re)started worker, or a first look: watch from here.
            if online or processed < worker.processed:
                worker.silent = False
            worker.processed_from = worker.processed = processed
            worker.task_events = False
            return
        if (not worker.task_events and not worker.silent
                and worker.processed > worker.processed_from):
            worker.silent = True
            self._silent.append((hostname, worker.processed - worker.processed_from))
        worker.processed = processed

    def _on_offline(self, event: Mapping[str, Any], now: float) -> None:
        hostname = event.get("hostname")
        if isinstance(hostname, str) and hostname in self._workers:
            self._drop_worker(hostname)

    # -- helpers -----------------------------------------------------------

    def _worker_event(self, event: Mapping[str, Any], now: float) -> _Worker | None:
        """The worker that sent the event, refreshed: any event from it shows it is alive."""
        hostname = event.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return None
        worker = self._workers.get(hostname)
        if worker is None:
            if len(self._workers) >= self.options.max_workers:
                return None
            worker = self._workers[hostname] = _Worker(last_seen=now)
        else:
            worker.last_seen = now
        return worker

    def _drop_worker(self, hostname: str) -> None:
        # Its tasks stop counting as active but keep their names and queues: a
        # worker that was only silent finishes them with labelled events.
        worker = self._workers.pop(hostname)
        for uuid in worker.tasks:
            task = self._tasks.get(uuid)
            if task is not None:
                task.worker = None

    def _detach(self, uuid: str, task: _Task) -> None:
        if task.worker is not None:
            worker = self._workers.get(task.worker)
            if worker is not None:
                worker.tasks.discard(uuid)
            task.worker = None

    def _learn(self, worker: _Worker | None, task: _Task) -> None:
        # Only queues that made it under the series cap: a worker's queues
        # become label values of taskqueue_workers.
        if worker is not None and task.queue is not None and task.queue in self._queues:
            worker.learned.add(task.queue)

    @staticmethod
    def _take_name(task: _Task, event: Mapping[str, Any]) -> None:
        name = event.get("name")
        if isinstance(name, str) and name:
            task.name = name

    def _queue_of(self, task: _Task, worker: _Worker | None) -> str:
        if task.queue is not None:
            return task.queue
        if worker is not None:
            serves = worker.serves()
            if len(serves) == 1:
                return next(iter(serves))
        return UNKNOWN

    def _count(self, task: _Task, worker: _Worker | None, state: str) -> tuple[str, str]:
        key = self._series_key(self._queue_of(task, worker), task.name or UNKNOWN)
        counts = self._counts
        full = (key[0], key[1], state)
        counts[full] = counts.get(full, 0) + 1
        return key

    def _series_key(self, queue: str, name: str) -> tuple[str, str]:
        key = (queue, name if self.options.task_label else "")
        if key in self._series:
            return key
        if len(self._series) >= self.options.max_series:
            # Distinct names come from the events themselves: a flood of made-up
            # ones must not become a flood of series.
            queue = queue if queue in self._queues else OTHER
            return (queue, OTHER if self.options.task_label else "")
        self._series.add(key)
        self._queues.add(queue)
        return key

    def _observe_wait(self, key: tuple[str, str], task: _Task, published: float,
                      started: float) -> None:
        ready = max(published, task.eta or 0.0)
        self._observe(self._wait, key, self.options.wait_buckets, max(0.0, started - ready))
        task.waited = True

    @staticmethod
    def _observe(
        histograms: dict[tuple[str, str], _Histogram],
        key: tuple[str, str],
        bounds: tuple[float, ...],
        value: float,
    ) -> None:
        histogram = histograms.get(key)
        if histogram is None:
            histogram = histograms[key] = _Histogram(bounds)
        histogram.observe(value)
