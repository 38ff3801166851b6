"""Benchmark the exporter's Celery event processing: events per second and memory.

Part A, the tracker in process: synthetic Celery events, shaped as the event
receiver hands them over (JSON-decoded dicts with every field Celery sends),
go through the exporter's own `TrackerFeed` (lock included) into an
`EventTracker` with the default `TrackerOptions`, on one pinned core; the
`EventCollector` is scraped (exposition text included) every 15 s of
simulated time. The clock is simulated and advances with the events. Three
scenarios, each in a fresh process so that its RSS is its own:

* busy: 2,000 tasks/s over 10 queues, 30 task names, 50 workers (one replaced
  every 20 s, half of them killed without worker-offline), 3 % failures, 2 %
  retries, 2 % ETA tasks, 10 % without task-sent, and 5 % whose end events are
  lost (sent only, received only, started and never finished);
* backlog: busy, plus 6,000 tasks/s sent to a queue scaled to zero: the task
  id cap (100,000) is reached early and every new id evicts the oldest;
* quiet: 2.5 tasks/s on 10 workers for about 19 hours simulated: lost tasks
  leave by the 6-hour expiry, idle heartbeats clear stale running ones.

The events come from a generator process, in chunks, in lockstep (it never
runs while the tracker does), so neither its state nor its time is counted;
decoding the chunk's JSON is not timed either. A tenth of the chunks time
every event on its own for the per-type figures and are left out of the
overall rate. RSS (VmRSS) is read after every chunk; "flat" compares the peak
of the second half of the run with the peak of the first. Where the ids held
still grow (below the cap, younger than the expiry) only the RSS growth beyond
the tracker's own objects counts.

Part B, end to end: a private redis-server, the exporter's real receiver
(`EventStream` with `celery_app(url, {}, 5.0)` and a `TrackerFeed`) in this
process on one pinned core, and two publisher processes (with redis-server)
on the other cores sending the busy mix with Celery's own
`app.events.Dispatcher`: paced one event per message (as task-sent and
non-prefork workers send them), paced in batches of 24 task events (as
prefork workers send them), and in bursts published while the receiver is
held (its lock taken, as a long scrape would), to see it drain flat out.
Reported: events processed vs sent, receive rates, the receiver thread's CPU
per event and the part of it spent in TrackerFeed, reconnects, Redis' pub/sub
output buffer (peak, disconnections), and a cProfile split of the receiver.
The publishers reuse one Redis client per channel: kombu builds a new one for
every publish, which would make them, not the receiver, the bottleneck.

Run: .venv/bin/python bench/events_bench.py [--events N] [--scenario NAME]
     [--broker-events N] [--broker-rate N] [--no-broker] [--json PATH] [--profile]

Exit 0 with a report; 1 if a sanity check fails, which includes part A below
10,000 events/s or its RSS not flat (the report is printed first). Part B is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import cProfile
import gc
import heapq
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import pstats
import random
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The repository root, for the benchmarks' shared harness and the tests' services.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import SanityError, percentile, proc_status_kb, run_benchmark, step
from exporter.celery_events import EventStream, TrackerFeed, celery_app
from exporter.collector import EventCollector
from exporter.event_tracker import DEFAULT_MAX_TRACKED_TASKS, EventTracker, TrackerOptions

TARGET_EVENTS_PER_S = 10_000.0
# RSS may grow this much from 50 % to 100 % of the events and still be flat.
FLAT_RSS_MB = 5.0
CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 1.00)
FLAT_FROM = 0.50
SCRAPE_INTERVAL = 15.0  # simulated seconds, as Prometheus would
CHUNK = 5_000
SAMPLE_EVERY = 10  # every 10th chunk is timed event by event
PROGRESS_EVERY = 250_000

# --------------------------------------------------------------------------- the mix

START = 1_750_000_000.0  # simulated unix time of the first event (June 2025)
TRANSIT = 0.0015  # published -> received by the exporter
HEARTBEAT_FREQ = 2.0  # Celery's default worker heartbeat
RETRY_DELAY = 0.0003

# (queue, share of tasks, mean wait in the queue in seconds, task names); the
# names' shares are 60/30/10 %, their median runtimes 20 ms, 150 ms, 1.2 s
# (x10 on reports and exports).
QUEUES: tuple[tuple[str, float, float, tuple[str, str, str]], ...] = (
    ("default", 0.25, 0.05, ("app.tasks.process_order", "app.tasks.update_inventory",
                             "app.tasks.add")),
    ("emails", 0.15, 0.2, ("mail.send_receipt", "mail.send_welcome", "mail.send_digest")),
    ("notifications", 0.15, 0.1, ("notify.push", "notify.sms", "notify.in_app")),
    ("reports", 0.05, 5.0, ("reports.daily_sales", "reports.user_activity",
                            "reports.export_pdf")),
    ("billing", 0.05, 0.5, ("billing.charge_card", "billing.sync_invoices", "billing.refund")),
    ("webhooks", 0.10, 0.1, ("hooks.deliver", "hooks.retry_failed", "hooks.verify_endpoint")),
    ("thumbnails", 0.10, 1.0, ("media.thumbnail", "media.transcode_preview",
                               "media.strip_exif")),
    ("search-index", 0.08, 0.3, ("search.index_document", "search.reindex_user",
                                 "search.purge")),
    ("exports", 0.04, 10.0, ("exports.csv", "exports.xlsx", "exports.archive")),
    ("maintenance", 0.03, 2.0, ("maint.expire_tokens", "maint.vacuum_sessions",
                                "maint.rotate_keys")),
)
NAME_SHARES = (0.6, 0.3, 0.1)
RUNTIME_MEDIANS = (0.02, 0.15, 1.2)
SLOW_QUEUES = frozenset({"reports", "exports"})
RUNTIME_SIGMA = 0.8
BACKLOG_QUEUE, BACKLOG_TASK = "bulk-import", "imports.load_row"
PRODUCERS = 20

# Fates, drawn per run of a task (a retry draws again), as cumulative shares.
SENT_ONLY, RECEIVED_ONLY, STARTED_ONLY, FAIL, RETRY, SUCCEED = range(6)
FATES = ((0.020, SENT_ONLY), (0.035, RECEIVED_ONLY), (0.050, STARTED_ONLY),
         (0.080, FAIL), (0.100, RETRY), (1.0, SUCCEED))
NO_SENT_EVENT = 0.10  # producers without task_send_sent_event
ETA_SHARE = 0.02
MAX_RETRIES = 3

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 453, in '
    "trace_task\n    R = retval = fun(*args, **kwargs)\n"
    '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 736, in '
    "__protected_call__\n    return self.run(*args, **kwargs)\n"
    '  File "/app/src/%s.py", line 88, in run\n    response = client.post(url, json=payload, '
    "timeout=30)\n"
    '  File "/app/.venv/lib/python3.12/site-packages/requests/api.py", line 115, in post\n'
    '    return request("post", url, data=data, json=json, **kwargs)\n'
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.example.com', "
    "port=443): Read timed out. (read timeout=30)\n"
)
EXCEPTION = ("ConnectionError(ReadTimeoutError(\"HTTPSConnectionPool(host='api.example.com', "
             "port=443): Read timed out. (read timeout=30)\"))")
RETRY_EXCEPTION = "Retry in %ds: TimeoutError('upstream timed out')"
RESULTS = ("None", "True", "{'status': 'ok', 'id': %d}", "'done'")
SOFTWARE = {"sw_ident": "py-celery", "sw_ver": "5.5.3", "sw_sys": "Linux"}


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    tasks_per_second: float
    workers: int
    churn_interval: float  # one worker replaced every this many simulated seconds
    backlog_per_second: float = 0.0  # tasks sent to a queue with no worker


SCENARIOS = {
    "busy": Scenario("busy", "2,000 tasks/s, 10 queues, 50 workers, 5 % lost end events",
                     2000.0, 50, 20.0),
    "backlog": Scenario("backlog", "busy + 6,000 tasks/s to a queue with no worker "
                        "(id cap reached, oldest evicted)", 2000.0, 50, 20.0, 6000.0),
    "quiet": Scenario("quiet", "2.5 tasks/s, 10 workers, ~19 h simulated "
                      "(6 h id expiry, idle heartbeats)", 2.5, 10, 600.0),
}


class _Worker:
    __slots__ = ("active", "alive", "hostname", "pid", "processed", "queue")

    def __init__(self, hostname: str, queue: int, pid: int) -> None:
        self.hostname = hostname
        self.queue = queue
        self.pid = pid
        self.active = 0
        self.processed = 0
        self.alive = True


class _Task:
    __slots__ = ("args", "name", "queue", "retries", "sent_event", "slow", "uuid")

    def __init__(self, task_id: str, queue: int, name: str, slow: bool, args: str,
                 sent_event: bool) -> None:
        self.uuid = task_id
        self.queue = queue
        self.name = name
        self.slow = slow
        self.args = args
        self.sent_event = sent_event
        self.retries = 0


# Heap actions.
ARRIVE, BACKLOG, BEAT, CHURN, EMIT, SILENT_END, REPUBLISH, OFFLINE = range(8)


class Simulation:
    """A discrete-event simulation of a Celery cluster that emits its events in time order.

    Its state is bounded by the tasks in flight (a few thousand): lost tasks are
    forgotten by the simulation at once, so it does not grow with the run.
    """

    def __init__(self, scenario: Scenario, seed: int, start: float = START,
                 prefix: str = "") -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.now = start
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._clock = itertools.count(1)
        self._tail = str(uuid.UUID(int=self.rng.getrandbits(128)))[8:]
        self._ids = itertools.count()
        self._prefix = prefix
        self._hosts = itertools.count(1)
        self.counts: dict[str, int] = {}
        self.lost_tasks = 0
        self.tasks = 0
        shares = [q[1] for q in QUEUES]
        self._queue_weights = list(itertools.accumulate(shares))
        self._producers = [(f"gen{self.rng.randint(7, 60000)}@{prefix}web-{i:02d}",
                            self.rng.randint(7, 60000)) for i in range(PRODUCERS)]
        self.workers: list[list[_Worker]] = [[] for _ in QUEUES]
        for i in range(scenario.workers):
            self._add_worker(i % len(QUEUES), start + self.rng.random() * HEARTBEAT_FREQ)
        self._push(start, ARRIVE, None)
        if scenario.backlog_per_second:
            self._push(start, BACKLOG, None)
        self._push(start + scenario.churn_interval, CHURN, None)

    # -- scheduling --------------------------------------------------------

    def _push(self, at: float, action: int, payload: Any) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), action, payload))

    def _add_worker(self, queue: int, at: float) -> None:
        n = next(self._hosts)
        hostname = f"celery@{self._prefix}ip-10-0-{n // 250}-{n % 250}.ec2.internal"
        worker = _Worker(hostname, queue, self.rng.randint(7, 60000))
        self.workers[queue].append(worker)
        self._push(at, EMIT, ("worker-online", worker, None, None))
        self._push(at + HEARTBEAT_FREQ, BEAT, worker)

    def _new_task(self) -> _Task:
        rng = self.rng
        q = bisect.bisect_right(self._queue_weights, rng.random() * self._queue_weights[-1])
        q = min(q, len(QUEUES) - 1)
        r = rng.random()
        k = 0 if r < NAME_SHARES[0] else 1 if r < NAME_SHARES[0] + NAME_SHARES[1] else 2
        queue = QUEUES[q]
        args = f"({rng.randint(1, 10**7)}, '{queue[3][k].split('.')[-1]}')"
        self.tasks += 1
        return _Task(self._task_id(), q, queue[3][k], queue[0] in SLOW_QUEUES, args,
                     rng.random() >= NO_SENT_EVENT)

    def _task_id(self) -> str:
        return f"{next(self._ids):08x}{self._tail}"

    def _publish(self, task: _Task, at: float, sender: tuple[str, int] | _Worker,
                 eta: float | None) -> None:
        """One run of a task: its task-sent at `at`, the rest as its fate has it."""
        rng = self.rng
        queue = QUEUES[task.queue]
        eta_iso = datetime.fromtimestamp(eta, UTC).isoformat() if eta is not None else None
        if task.sent_event:
            fields = {"uuid": task.uuid, "root_id": task.uuid, "parent_id": None,
                      "name": task.name, "args": task.args, "kwargs": "{}",
                      "retries": task.retries, "eta": eta_iso, "expires": None,
                      "queue": queue[0], "exchange": "", "routing_key": queue[0]}
            self._push(at, EMIT, ("task-sent", sender, task, fields))
        r = rng.random()
        fate = next(f for share, f in FATES if r < share)
        if fate == RETRY and task.retries >= MAX_RETRIES:
            fate = SUCCEED
        candidates = self.workers[task.queue]
        if fate == SENT_ONLY or not candidates:
            self.lost_tasks += 1
            return
        worker = candidates[int(rng.random() * len(candidates))]
        received = at + rng.expovariate(1.0 / queue[2]) + 0.001
        started = received + 0.001 + rng.random() * 0.01
        if eta is not None:
            # Workers take ETA tasks at once and run them when due.
            received = at + 0.002 + rng.random() * 0.01
            started = max(started, eta + rng.random() * 0.05)
        fields = {"uuid": task.uuid, "name": task.name, "args": task.args, "kwargs": "{}",
                  "root_id": task.uuid, "parent_id": None, "retries": task.retries,
                  "eta": eta_iso, "expires": None}
        self._push(received, EMIT, ("task-received", worker, task, fields))
        if fate == RECEIVED_ONLY:
            self.lost_tasks += 1
            return
        self._push(started, EMIT, ("task-started", worker, task, {"uuid": task.uuid}))
        median = RUNTIME_MEDIANS[QUEUES[task.queue][3].index(task.name)]
        runtime = median * (10 if task.slow else 1) * math.exp(rng.gauss(0, RUNTIME_SIGMA))
        ended = started + runtime
        if fate == STARTED_ONLY:
            self.lost_tasks += 1
            self._push(ended, SILENT_END, worker)
        elif fate == FAIL:
            self._push(ended, EMIT, ("task-failed", worker, task,
                                     {"uuid": task.uuid, "exception": EXCEPTION,
                                      "traceback": TRACEBACK % task.name.replace(".", "/")}))
        elif fate == RETRY:
            self._push(ended, REPUBLISH, (task, worker))
        else:
            result = RESULTS[int(rng.random() * len(RESULTS))]
            if "%d" in result:
                result = result % rng.randint(1, 10**6)
            self._push(ended, EMIT, ("task-succeeded", worker, task,
                                     {"uuid": task.uuid, "result": result,
                                      "runtime": round(runtime, 6)}))

    # -- running -----------------------------------------------------------

    def take(self, n: int) -> list[dict[str, Any]]:
        """The next n events, in time order, as the receiver hands them over."""
        rng = self.rng
        heap = self._heap
        scenario = self.scenario
        out: list[dict[str, Any]] = []
        while len(out) < n:
            at, _, action, payload = heapq.heappop(heap)
            self.now = at
            if action == EMIT:
                kind, sender, task, fields = payload
                if isinstance(sender, _Worker):
                    if not sender.alive:
                        continue
                    hostname, pid = sender.hostname, sender.pid
                    if kind == "task-started":
                        sender.active += 1
                    elif kind in ("task-succeeded", "task-failed", "task-retried"):
                        sender.active -= 1
                        sender.processed += 1
                    elif kind in ("worker-online", "worker-offline"):
                        fields = self._worker_fields(sender)
                    if kind == "worker-offline":
                        sender.alive = False
                else:
                    hostname, pid = sender
                event = {"hostname": hostname, "utcoffset": 0, "pid": pid,
                         "clock": next(self._clock)}
                event.update(fields)
                event["timestamp"] = at
                event["type"] = kind
                event["local_received"] = at + TRANSIT
                out.append(event)
                self.counts[kind] = self.counts.get(kind, 0) + 1
            elif action == ARRIVE:
                self._push(at + rng.expovariate(scenario.tasks_per_second), ARRIVE, None)
                task = self._new_task()
                eta = at + rng.uniform(10, 60) if rng.random() < ETA_SHARE else None
                self._publish(task, at, self._producers[int(rng.random() * PRODUCERS)], eta)
            elif action == BACKLOG:
                self._push(at + rng.expovariate(scenario.backlog_per_second), BACKLOG, None)
                self.tasks += 1
                self.lost_tasks += 1
                task_id = self._task_id()
                fields = {"uuid": task_id, "root_id": task_id, "parent_id": None,
                          "name": BACKLOG_TASK, "args": f"({rng.randint(1, 10**9)},)",
                          "kwargs": "{}", "retries": 0, "eta": None, "expires": None,
                          "queue": BACKLOG_QUEUE, "exchange": "", "routing_key": BACKLOG_QUEUE}
                producer = self._producers[int(rng.random() * PRODUCERS)]
                self._push(at, EMIT, ("task-sent", producer, None, fields))
            elif action == BEAT:
                worker = payload
                if worker.alive:
                    self._push(at, EMIT, ("worker-heartbeat", worker, None,
                                          self._worker_fields(worker)))
                    self._push(at + HEARTBEAT_FREQ, BEAT, worker)
            elif action == SILENT_END:
                if payload.alive:
                    payload.active -= 1
            elif action == REPUBLISH:
                task, worker = payload
                if worker.alive:
                    # The worker re-publishes (its own task-sent) and then reports the retry.
                    task.retries += 1
                    delay = rng.randint(1, 10)
                    self._publish(task, at, worker, at + delay)
                    self._push(at + RETRY_DELAY, EMIT, (
                        "task-retried", worker, task,
                        {"uuid": task.uuid, "exception": RETRY_EXCEPTION % delay,
                         "traceback": TRACEBACK % task.name.replace(".", "/")}))
            elif action == CHURN:
                self._push(at + scenario.churn_interval, CHURN, None)
                self._churn(at)
            elif action == OFFLINE:
                self._push(at, EMIT, ("worker-offline", payload, None, None))
        return out

    def _worker_fields(self, worker: _Worker) -> dict[str, Any]:
        load = round(0.5 + worker.active / 4, 2)
        return {"freq": HEARTBEAT_FREQ, "active": worker.active,
                "processed": worker.processed, "loadavg": [load, load, load], **SOFTWARE}

    def _churn(self, at: float) -> None:
        """Scale one worker in and a new one out (a new hostname), as an autoscaler does."""
        queue = int(self.rng.random() * len(QUEUES))
        workers = self.workers[queue]
        if not workers:
            return
        old = workers.pop(int(self.rng.random() * len(workers)))
        if self.rng.random() < 0.5:
            # Warm shutdown: running tasks finish, then worker-offline.
            self._push(at + 10.0, OFFLINE, old)
        else:
            # SIGKILL: no goodbye, its running tasks' end events never come.
            old.alive = False
        self._add_worker(queue, at)



# --------------------------------------------------------------------------- part A


def rss_mb() -> float:
    return proc_status_kb(os.getpid(), "VmRSS") / 1024


_SHARED = (type, types.ModuleType, types.FunctionType, types.MethodType,
           types.BuiltinFunctionType, types.CodeType)
_LEAVES = (str, bytes, int, float)


def deep_size(root: object) -> int:
    """Bytes of the objects reachable from root (code and classes left out).

    Light on memory, so that measuring does not move RSS: a depth-first walk
    over iterators (no list of a big map's members is built); strings,
    numbers and the tracker's per-task objects are counted where referenced
    (the tracker shares none of them), other objects once.
    """
    seen: set[int] = set()
    total = 0
    end = object()
    stack: list[Iterator[Any]] = [iter((root,))]
    while stack:
        obj = next(stack[-1], end)
        if obj is end:
            stack.pop()
            continue
        if obj is None or obj is True or obj is False or isinstance(obj, _SHARED):
            continue
        if isinstance(obj, _LEAVES):
            total += sys.getsizeof(obj)
            continue
        if type(obj).__name__ != "_Task":
            if id(obj) in seen:
                continue
            seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.append(itertools.chain.from_iterable(obj.items()))
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.append(iter(obj))
        else:
            stack.append(iter(gc.get_referents(obj)))
    return total


@dataclass
class Checkpoint:
    events: int
    simulated_seconds: float
    rss_mb: float
    tracked_tasks: int
    workers_online: int
    tracker_mb: float  # what the tracker holds, object by object (sys.getsizeof)


@dataclass
class TypeCost:
    events: int
    us_per_event: float


@dataclass
class TrackerResult:
    scenario: str
    about: str
    events: int
    tasks: int
    lost_tasks: int
    simulated_seconds: float
    cpu: int
    generate_seconds: float
    timed_events: int
    feed_seconds: float
    scrape_ms: list[float]
    final_scrape_ms: float
    metrics_bytes: int
    metrics_lines: int
    baseline_rss_mb: float
    peak_rss_mb: float
    checkpoints: list[Checkpoint]
    rss_samples: list[tuple[int, float]]  # (events, RSS MB) after every chunk
    by_type: dict[str, TypeCost]
    errors: list[str] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        """Feed time of the chunks timed as a whole, scaled to every event, plus the scrapes."""
        feed = self.feed_seconds * self.events / max(1, self.timed_events)
        return self.events / (feed + sum(self.scrape_ms) / 1000)

    @property
    def feed_events_per_second(self) -> float:
        return self.timed_events / self.feed_seconds if self.feed_seconds else 0.0

    def rss_at(self, share: float) -> Checkpoint:
        wanted = round(self.events * share)
        return min(self.checkpoints, key=lambda c: abs(c.events - wanted))

    @property
    def late_growth_mb(self) -> float:
        """Peak RSS after FLAT_FROM of the events minus peak RSS up to it.

        Peaks, read after every chunk, are steadier than single readings: the
        chunk being decoded and the scrapes come and go in both halves.
        """
        cut = self.events * FLAT_FROM
        early = [rss for done, rss in self.rss_samples if done <= cut]
        late = [rss for done, rss in self.rss_samples if done > cut]
        return max(late) - max(early) if early and late else 0.0

    @property
    def bound(self) -> str:
        """What holds the task ids from FLAT_FROM on: "cap", "expiry", or "filling"."""
        mid, end = self.rss_at(FLAT_FROM), self.checkpoints[-1]
        if mid.tracked_tasks >= 0.99 * DEFAULT_MAX_TRACKED_TASKS:
            return "cap"
        if end.tracked_tasks <= mid.tracked_tasks * 1.1 + 50:
            return "expiry"
        return "filling"

    @property
    def tracker_growth_mb(self) -> float:
        return self.checkpoints[-1].tracker_mb - self.rss_at(FLAT_FROM).tracker_mb

    @property
    def unexplained_growth_mb(self) -> float:
        """RSS growth beyond what the tracker's own objects grew."""
        return self.late_growth_mb - max(0.0, self.tracker_growth_mb)

    @property
    def at_cap_tracker_mb(self) -> float:
        """The tracker's objects with the id map full, from their growth per id."""
        mid, end = self.rss_at(FLAT_FROM), self.checkpoints[-1]
        added = end.tracked_tasks - mid.tracked_tasks
        per_id = (end.tracker_mb - mid.tracker_mb) / added if added > 0 else 0.0
        return end.tracker_mb + (DEFAULT_MAX_TRACKED_TASKS - end.tracked_tasks) * per_id

    @property
    def at_cap(self) -> Checkpoint | None:
        """The first checkpoint with the task id map full."""
        return next((c for c in self.checkpoints
                     if c.tracked_tasks >= 0.99 * DEFAULT_MAX_TRACKED_TASKS), None)

    @property
    def rate_ok(self) -> bool:
        return self.events_per_second >= TARGET_EVENTS_PER_S

    @property
    def flat_ok(self) -> bool:
        # Still filling (below the cap, younger than the expiry): the ids held grow,
        # as they should; nothing else may.
        growth = self.unexplained_growth_mb if self.bound == "filling" else self.late_growth_mb
        return growth < FLAT_RSS_MB


class _Errors(logging.Handler):
    """Records what TrackerFeed logs: it logs (once) when the tracker raises."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f": {type(error).__name__}: {error}"
        self.messages.append(text)


def chunk_plan(total: int) -> list[int]:
    """Chunk sizes: CHUNK each, cut at every checkpoint."""
    cuts = sorted({round(total * share) for share in CHECKPOINTS} |
                  set(range(CHUNK, total, CHUNK)) | {total})
    sizes, done = [], 0
    for cut in cuts:
        if cut > done:
            sizes.append(cut - done)
            done = cut
    return sizes


def _generator(conn: Any, scenario_name: str, seed: int, cpus: set[int]) -> None:
    """The event source, in its own process so that its state stays out of the RSS figure.

    Lockstep with the tracker: it asks for n events (JSON, as on the wire), is sent
    them, and asks again only after feeding them, so the two never run at once.
    n = 0 asks for the totals instead.
    """
    os.sched_setaffinity(0, cpus)
    sim = Simulation(SCENARIOS[scenario_name], seed)
    try:
        while n := conn.recv():
            conn.send_bytes(json.dumps(sim.take(n)).encode())
        conn.send({"counts": sim.counts, "tasks": sim.tasks, "lost_tasks": sim.lost_tasks,
                   "simulated_seconds": sim.now - START})
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


def run_tracker(source: Any, scenario_name: str, total: int, cpu: int,
                profile: bool) -> tuple[TrackerResult, str]:
    """Part A for one scenario, in its own process pinned to `cpu`; events from `source`."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    os.sched_setaffinity(0, {cpu})
    scenario = SCENARIOS[scenario_name]
    errors = _Errors()
    logging.getLogger("exporter").addHandler(errors)
    tracker = EventTracker(TrackerOptions())
    lock = threading.Lock()
    sim_now = [START]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EventCollector(tracker, lock, clock=lambda: sim_now[0]))
    checkpoints = {round(total * share) for share in CHECKPOINTS}
    profiler = cProfile.Profile() if profile else None

    def scrape() -> tuple[float, bytes]:
        started = time.perf_counter()
        body = generate_latest(registry)
        return (time.perf_counter() - started) * 1000, body

    timer = time.perf_counter_ns
    overhead = min(-(timer() - timer()) for _ in range(10_000))
    baseline = rss_mb()
    step(f"[{scenario_name}] {total:,} events on CPU {cpu}, baseline RSS {baseline:.1f} MB")
    generate = feed_seconds = 0.0
    timed = done = 0
    scrape_ms: list[float] = []
    next_scrape = START + SCRAPE_INTERVAL
    type_ns: dict[str, int] = {}
    type_n: dict[str, int] = {}
    points: list[Checkpoint] = []
    samples: list[tuple[int, float]] = []
    for i, size in enumerate(chunk_plan(total)):
        began = time.perf_counter()
        source.send(size)
        # Decoded here, as kombu decodes them: every string a fresh object.
        events = json.loads(source.recv_bytes())
        times = [event["local_received"] for event in events]
        generate += time.perf_counter() - began
        feed = TrackerFeed(tracker, lock, iter(times).__next__)
        if i % SAMPLE_EVERY == SAMPLE_EVERY - 1:
            for event in events:
                t0 = timer()
                feed(event)
                spent = timer() - t0 - overhead
                kind = event["type"]
                type_ns[kind] = type_ns.get(kind, 0) + spent
                type_n[kind] = type_n.get(kind, 0) + 1
        else:
            if profiler is not None:
                profiler.enable()
            began = time.perf_counter()
            for event in events:
                feed(event)
            feed_seconds += time.perf_counter() - began
            if profiler is not None:
                profiler.disable()
            timed += size
        done += size
        sim_now[0] = times[-1]
        del events, times, feed
        if sim_now[0] >= next_scrape:
            spent_ms, _ = scrape()
            scrape_ms.append(spent_ms)
            next_scrape += SCRAPE_INTERVAL * max(1, (sim_now[0] - next_scrape) // SCRAPE_INTERVAL)
        rss = rss_mb()
        samples.append((done, rss))
        if done in checkpoints:
            with lock:
                snapshot = tracker.snapshot(sim_now[0])
            points.append(Checkpoint(done, sim_now[0] - START, rss, snapshot.tracked_tasks,
                                     len(snapshot.online), deep_size(tracker) / 2**20))
        if done % PROGRESS_EVERY == 0 and done < total:
            step(f"[{scenario_name}] {done:,} events, RSS {rss_mb():.1f} MB")
    final_ms, body = scrape()
    peak = proc_status_kb(os.getpid(), "VmHWM") / 1024
    source.send(0)
    totals = source.recv()
    with lock:
        snapshot = tracker.snapshot(sim_now[0])
    logging.getLogger("exporter").removeHandler(errors)
    check_counts(scenario_name, totals["counts"], snapshot.events, snapshot.tasks,
                 errors.messages)
    text = body.decode()
    result = TrackerResult(
        scenario=scenario_name, about=scenario.about, events=total, tasks=totals["tasks"],
        lost_tasks=totals["lost_tasks"], simulated_seconds=totals["simulated_seconds"],
        cpu=cpu, generate_seconds=generate, timed_events=timed, feed_seconds=feed_seconds,
        scrape_ms=scrape_ms, final_scrape_ms=final_ms, metrics_bytes=len(body),
        metrics_lines=sum(1 for line in text.splitlines() if not line.startswith("#")),
        baseline_rss_mb=baseline, peak_rss_mb=peak, checkpoints=points, rss_samples=samples,
        by_type={kind: TypeCost(type_n[kind], type_ns[kind] / type_n[kind] / 1000)
                 for kind in sorted(type_n)},
        errors=errors.messages,
    )
    return result, profile_text(profiler) if profiler is not None else ""


def check_counts(where: str, sent: dict[str, int], seen: dict[str, int],
                 tasks: dict[tuple[str, str, str], int], errors: list[str]) -> None:
    """Every event reached the tracker and every end state was counted."""
    if errors:
        raise SanityError(f"{where}: the tracker raised: {errors[0]}")
    if dict(sorted(sent.items())) != dict(sorted(seen.items())):
        raise SanityError(f"{where}: events generated {sent} != counted {seen}")
    for state in ("succeeded", "failed", "retried"):
        counted = sum(n for (_, _, s), n in tasks.items() if s == state)
        if counted != sent.get(f"task-{state}", 0):
            raise SanityError(f"{where}: {counted} tasks counted {state}, "
                              f"{sent.get(f'task-{state}', 0)} sent")


def profile_text(profiler: cProfile.Profile, top: int = 20) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _tracker_child(conn: Any, source: Any, scenario: str, total: int, cpu: int,
                   profile: bool) -> None:
    try:
        conn.send(("ok", run_tracker(source, scenario, total, cpu, profile)))
    except SanityError as error:
        conn.send(("sanity", str(error)))
    except BaseException as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()
        source.close()


def run_scenario(scenario: str, total: int, seed: int, cpu: int, others: set[int],
                 profile: bool) -> tuple[TrackerResult, str]:
    """The tracker and its event source, each in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    results, results_child = context.Pipe(duplex=False)
    source, sink = context.Pipe(duplex=True)
    processes = [
        context.Process(target=_generator, args=(source, scenario, seed, others), daemon=True),
        context.Process(target=_tracker_child, daemon=True,
                        args=(results_child, sink, scenario, total, cpu, profile)),
    ]
    try:
        for process in processes:
            process.start()
        for end in (results_child, source, sink):
            end.close()
        try:
            status, value = results.recv()
        except EOFError:
            raise RuntimeError(f"[{scenario}] the tracker process exited with "
                               f"{processes[1].exitcode}") from None
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join()
    if status == "sanity":
        raise SanityError(value)
    if status != "ok":
        raise RuntimeError(f"[{scenario}] {value}")
    return value


# --------------------------------------------------------------------------- part B

PACE_EVERY = 50  # events between two looks at the clock when pacing
SETTLE_SECONDS = 3.0  # no new event for this long after publishing: the rest is lost
BUFFER_LIMIT = 24  # what prefork workers batch task events by (Celery's default)
BURST_EVENTS = 10_000  # ~15 MB in Redis' pub/sub output buffer: under the 32 MB hard limit
MAX_BURSTS = 5
PROFILE_EVENTS = 10_000
RECEIVER_THREAD = "celery-events"
OUTPUT_BUFFER_CLOSED = "scheduled to be closed ASAP for overcoming of output buffer limits"
COMMON_FIELDS = ("hostname", "utcoffset", "pid", "clock", "timestamp", "type", "local_received")


def _reuse_publish_client() -> None:
    """Load generator only: kombu's Redis channel builds a new redis.Redis for every
    publish (about 0.4 ms with redis-py 8 here, more than the rest of a send), which
    would make the publishers, not the receiver, the bottleneck. One client per
    channel sends the same PUBLISH commands with the same payloads."""
    from kombu.transport import redis as kombu_redis

    create = kombu_redis.Channel._create_client

    def cached(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return create(self, asynchronous)
        client = self.__dict__.get("_bench_publish_client")
        if client is None:
            client = self.__dict__["_bench_publish_client"] = create(self, False)
        return client

    kombu_redis.Channel._create_client = cached


def _publisher(conn: Any, url: str, index: int, count: int, buffered: bool,
               cpus: set[int]) -> None:
    """A publisher process: the busy mix through Celery's own event dispatchers.

    Commands: (n, rate) publishes the next n events at `rate` per second and
    answers (n, seconds); None ends it.
    """
    try:
        os.sched_setaffinity(0, cpus)
        from celery import Celery

        _reuse_publish_client()
        busy = SCENARIOS["busy"]
        sim = Simulation(Scenario(busy.name, busy.about, busy.tasks_per_second / 2,
                                  busy.workers // 2, busy.churn_interval),
                         seed=1000 + index, start=time.time(), prefix=f"p{index}-")
        events = [(e["hostname"], e["type"],
                   {k: v for k, v in e.items() if k not in COMMON_FIELDS})
                  for e in sim.take(count)]
        app = Celery("bench-publisher", broker=url, set_as_current=False)
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
            direct: dict[str, Any] = {}
            batching: dict[str, Any] = {}
            for hostname, _, _ in events:
                if hostname not in direct:
                    direct[hostname] = app.events.Dispatcher(connection, hostname=hostname)
                    batching[hostname] = app.events.Dispatcher(
                        connection, hostname=hostname, buffer_group=["task"],
                        buffer_limit=BUFFER_LIMIT) if buffered else direct[hostname]
            # Prefork workers buffer their task events, but task-sent (published
            # with the task message) goes at once.
            plan = [((direct if kind == "task-sent" else batching)[hostname].send, kind, fields)
                    for hostname, kind, fields in events]
            del events
            conn.send(("ready", sim.counts))
            position = 0
            while (command := conn.recv()) is not None:
                n, rate = command
                began = time.perf_counter()
                for i, (send, kind, fields) in enumerate(plan[position:position + n]):
                    if i % PACE_EVERY == 0:
                        delay = began + i / rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    send(kind, **fields)
                for dispatcher in batching.values():
                    dispatcher.flush()
                position += n
                conn.send(("done", (n, time.perf_counter() - began)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except BaseException as error:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


class Publishers:
    """Two publisher processes on `cpus`, `count` events between them, ready to go."""

    def __init__(self, url: str, count: int, buffered: bool, cpus: set[int]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.processes: list[Any] = []
        self.shares = [count // 2 + count % 2, count // 2]
        for index, share in enumerate(self.shares):
            parent, child = context.Pipe(duplex=True)
            process = context.Process(target=_publisher, daemon=True,
                                      args=(child, url, index, share, buffered, cpus))
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            self._answer(pipe, "ready")

    def _answer(self, pipe: Any, expected: str) -> Any:
        try:
            status, value = pipe.recv()
        except EOFError:
            raise RuntimeError("a publisher process died") from None
        if status != expected:
            raise RuntimeError(f"publisher: {value}")
        return value

    def publish(self, count: int, rate: float) -> tuple[int, float]:
        """`count` events in all at `rate` in all; returns (events, seconds of the slower)."""
        parts = [count // 2 + count % 2, count // 2]
        for pipe, part in zip(self.pipes, parts, strict=True):
            pipe.send((part, rate / 2))
        answers = [self._answer(pipe, "done") for pipe in self.pipes]
        return sum(n for n, _ in answers), max(seconds for _, seconds in answers)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join()

    def __enter__(self) -> Publishers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class BrokerRun:
    name: str
    target_rate: float
    sent: int
    processed: int
    publish_seconds: float
    receive_seconds: float
    receiver_cpu_seconds: float
    connects: int
    output_buffer_disconnects: int
    peak_output_buffer_mb: float
    lag_seconds: float  # last event received after the publishers finished
    feed_cpu_seconds: float  # of receiver_cpu_seconds, in TrackerFeed (lock + tracker)
    bursts: int = 0  # > 0: the receiver was held while each burst was published

    @property
    def dropped(self) -> int:
        return self.sent - self.processed

    @property
    def publish_rate(self) -> float:
        return self.sent / self.publish_seconds if self.publish_seconds else 0.0

    @property
    def receive_rate(self) -> float:
        return self.processed / self.receive_seconds if self.receive_seconds else 0.0

    @property
    def cpu_rate(self) -> float:
        """Events per second of the receiver thread's CPU time."""
        return self.processed / self.receiver_cpu_seconds if self.receiver_cpu_seconds else 0.0

    @property
    def us_per_event(self) -> float:
        return self.receiver_cpu_seconds / self.processed * 1e6 if self.processed else 0.0

    @property
    def feed_us_per_event(self) -> float:
        return self.feed_cpu_seconds / self.processed * 1e6 if self.processed else 0.0


@dataclass
class BrokerResult:
    cpu: int
    publisher_cpus: list[int]
    runs: list[BrokerRun]
    profile_shares: dict[str, float] = field(default_factory=dict)
    profile_events: int = 0
    profile_us_per_event: float = 0.0
    profile_top: str = ""
    failed: str = ""


class Counting:
    """The TrackerFeed's clock: time.time(), noting the count and the first and last event."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def __call__(self) -> float:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        return now


class TimedFeed:
    """CPU time of the feed (the exporter's part: lock + tracker), apart from the
    receive path around it. thread_time costs ~0.35 us a call here, twice per event."""

    def __init__(self, feed: Callable[[Any], None]) -> None:
        self.feed = feed
        self.seconds = 0.0

    def __call__(self, event: Any) -> None:
        began = time.thread_time()
        self.feed(event)
        self.seconds += time.thread_time() - began


def thread_cpu_seconds(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(") ", 1)[1].split()
    # Fields after the command start at 3 (state); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise SanityError(f"timed out after {timeout:.0f}s waiting for {what}")


def settle(clock: Counting, expected: int) -> None:
    """Until `expected` events arrived or none came for SETTLE_SECONDS."""
    last, quiet_since = -1, time.monotonic()
    while clock.count < expected and time.monotonic() - quiet_since < SETTLE_SECONDS:
        if clock.count != last:
            last, quiet_since = clock.count, time.monotonic()
        time.sleep(0.02)


def output_buffer_disconnects(client: Any, log: Path) -> int:
    info = client.info("stats")
    if "client_output_buffer_limit_disconnections" in info:
        return int(info["client_output_buffer_limit_disconnections"])
    try:
        return log.read_text(errors="replace").count(OUTPUT_BUFFER_CLOSED)
    except OSError:
        return 0


class Receiver:
    """The exporter's own receiver (EventStream, TrackerFeed) feeding a fresh tracker,
    with a watcher of Redis' pub/sub output buffer."""

    def __init__(self, url: str, client: Any, wrap: Callable[[Any], Any] | None = None) -> None:
        self.clock = Counting()
        self.tracker = EventTracker(TrackerOptions())
        self.lock = threading.Lock()
        self.feed = TimedFeed(TrackerFeed(self.tracker, self.lock, self.clock))
        self.stream = EventStream(celery_app(url, {}, 5.0),
                                  wrap(self.feed) if wrap else self.feed, shown_url=url)
        self._client = client
        self.peak_omem = 0
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self.thread_id = 0

    def _watch(self) -> None:
        # Pinned with the receiver, but cheap: a CLIENT LIST every 100 ms.
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):
                for entry in self._client.client_list():
                    if entry.get("psub", "0") != "0" or entry.get("sub", "0") != "0":
                        self.peak_omem = max(self.peak_omem, int(entry.get("omem", 0)))

    def cpu_seconds(self) -> float:
        return thread_cpu_seconds(self.thread_id)

    def counted(self) -> int:
        with self.lock:
            return sum(self.tracker.snapshot(time.time()).events.values())

    def __enter__(self) -> Receiver:
        self.stream.start()
        wait_for(lambda: self.stream.connected, 30, "the event receiver to connect")
        self.thread_id = next(t.native_id for t in threading.enumerate()
                              if t.name == RECEIVER_THREAD and t.native_id is not None)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watcher.join()
        self.stream.stop()


def broker_run(url: str, client: Any, log: Path, name: str, count: int, rate: float,
               buffered: bool, cpus: set[int], bursts: int = 0) -> BrokerRun:
    """Paced: publish `count` at `rate`. Bursts: `bursts` times, hold the receiver
    (its lock, as a slow scrape would) while count/bursts events are published as
    fast as the publishers can, then let it drain them."""
    how = f"{bursts} bursts, receiver held while publishing" if bursts else f"{rate:,.0f}/s"
    step(f"part B, {name}: {count:,} events, {how}")
    before = output_buffer_disconnects(client, log)
    with Receiver(url, client) as receiver, Publishers(url, count, buffered, cpus) as pubs:
        clock = receiver.clock
        cpu_before = receiver.cpu_seconds()
        feed_before = receiver.feed.seconds
        if not bursts:
            sent, publish_seconds = pubs.publish(count, rate)
            finished = time.time()
            settle(clock, sent)
            receive_seconds = clock.last - clock.first if clock.count > 1 else 0.0
        else:
            sent, publish_seconds, receive_seconds = 0, 0.0, 0.0
            for i in range(bursts):
                part = count // bursts + (1 if i < count % bursts else 0)
                already = clock.count
                with receiver.lock:
                    n, seconds = pubs.publish(part, 1e9)
                    released = time.time()
                sent += n
                publish_seconds += seconds
                settle(clock, sent)
                if clock.count > already:
                    receive_seconds += clock.last - released
            finished = time.time()
        cpu = receiver.cpu_seconds() - cpu_before
        feed_cpu = receiver.feed.seconds - feed_before
        counted = receiver.counted()
        if counted != clock.count:
            raise SanityError(f"{name}: {clock.count} events fed, the tracker counted {counted}")
        return BrokerRun(
            name=name, target_rate=rate, sent=sent, processed=clock.count,
            publish_seconds=publish_seconds, receive_seconds=receive_seconds,
            receiver_cpu_seconds=cpu, connects=receiver.stream.connects,
            output_buffer_disconnects=output_buffer_disconnects(client, log) - before,
            peak_output_buffer_mb=receiver.peak_omem / 2**20,
            lag_seconds=max(0.0, clock.last - finished) if not bursts else 0.0,
            feed_cpu_seconds=feed_cpu, bursts=bursts,
        )


class ProfiledFeed:
    """Profiles the receiver thread from its second event to a "bench-stop" event.

    The first event of a burst waits for the lock the benchmark holds while
    publishing; that wait is not work, so profiling starts after it.
    """

    def __init__(self, feed: Any) -> None:
        self.feed = feed
        self.profiler = cProfile.Profile()
        self.running = False
        self.stopped = threading.Event()
        self.events = 0

    def __call__(self, event: Any) -> None:
        if event.get("type") == "bench-stop":
            if self.running:
                self.profiler.disable()
                self.running = False
            self.stopped.set()
            return
        self.events += 1
        if self.events == 2 and not self.stopped.is_set():
            self.profiler.enable()
            self.running = True
        self.feed(event)


PROFILE_GROUPS = (
    ("exporter (TrackerFeed, EventTracker)", ("/exporter/",)),
    ("celery (EventReceiver: clock, timestamp)", ("/celery/",)),
    ("kombu (transport, Message, decode)", ("/kombu/",)),
    ("redis-py (pub/sub read, RESP)", ("/redis/",)),
    ("json and base64 decode", ("/json/", "binascii", "base64", ":loads")),
)
# Blocked, not working: waiting for the socket, or for the lock while held.
WAITING = ("method 'poll' of 'select.epoll'", "method 'acquire' of '_thread.lock'",
           "method '__enter__' of '_thread.lock'", "built-in method select.select")


def profile_shares(profiler: cProfile.Profile) -> tuple[dict[str, float], float]:
    """Own time by package, as shares of the time not spent waiting; and that time."""
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = {}
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in raw.items():
        where = f"{filename}:{function}"
        if any(mark in where for mark in WAITING):
            continue
        group = next((name for name, marks in PROFILE_GROUPS
                      if any(mark in where for mark in marks)), "other (stdlib, builtins)")
        totals[group] = totals.get(group, 0.0) + own
    busy = sum(totals.values()) or 1.0
    return {k: v / busy for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}, busy


def profile_receiver(url: str, client: Any, count: int, cpus: set[int],
                     result: BrokerResult) -> None:
    """A burst of `count` events, one per message, drained under cProfile."""
    step(f"part B, profiled receiver: a burst of {count:,} events")
    holder: list[ProfiledFeed] = []

    def wrap(feed: Any) -> ProfiledFeed:
        holder.append(ProfiledFeed(feed))
        return holder[0]

    with Receiver(url, client, wrap) as receiver, Publishers(url, count, False, cpus) as pubs:
        with receiver.lock:
            sent, _ = pubs.publish(count, 1e9)
        settle(receiver.clock, sent)
        app = celery_app(url, {}, 5.0)
        with app.connection_for_write() as connection:
            app.events.Dispatcher(connection, hostname="bench@stop").send("bench-stop")
        wait_for(holder[0].stopped.is_set, 30, "the profiler to stop")
    profiled = holder[0]
    shares, seconds = profile_shares(profiled.profiler)
    result.profile_shares = shares
    result.profile_events = profiled.events - 1
    result.profile_us_per_event = seconds / max(1, profiled.events - 1) * 1e6
    result.profile_top = profile_text(profiled.profiler, 25)


def run_broker(workdir: Path, args: argparse.Namespace, cpu: int,
               others: set[int]) -> BrokerResult:
    from tests.services import RedisServer

    result = BrokerResult(cpu, sorted(others), [])
    server = RedisServer(workdir).start()
    previous = os.sched_getaffinity(0)
    client = server.client()
    try:
        if server.process is not None and others != {cpu}:
            os.sched_setaffinity(server.process.pid, others)
        # The receiver thread inherits the affinity of the thread that starts it.
        os.sched_setaffinity(0, {cpu})
        log = workdir / "redis.log"
        count, rate = args.broker_events, args.broker_rate
        bursts = max(1, min(MAX_BURSTS, count // BURST_EVENTS))
        plan = [
            ("one event per message, paced", count, rate, False, 0),
            (f"task events in batches of {BUFFER_LIMIT} (prefork), paced", count, rate, True, 0),
            ("one event per message, bursts", min(count, bursts * BURST_EVENTS), rate, False,
             bursts),
            (f"task events in batches of {BUFFER_LIMIT}, bursts",
             min(count, bursts * BURST_EVENTS), rate, True, bursts),
        ]
        for name, n, r, buffered, b in plan:
            result.runs.append(broker_run(server.url, client, log, name, n, r, buffered,
                                          others, bursts=b))
        profile_receiver(server.url, client, min(count, PROFILE_EVENTS), others, result)
    except Exception as error:  # best effort: part A's figures stand without it
        step(f"part B failed: {type(error).__name__}: {error}")
        result.failed = f"{type(error).__name__}: {error}"
    finally:
        os.sched_setaffinity(0, previous)
        client.close()
        server.stop()
    return result


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    events: int
    trackers: list[TrackerResult]
    broker: BrokerResult | None
    profiles: dict[str, str] = field(default_factory=dict)
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.rate_ok and t.flat_ok for t in self.trackers)

    def as_json(self) -> dict[str, Any]:
        trackers = []
        for t in self.trackers:
            trackers.append({**asdict(t), "events_per_second": t.events_per_second,
                             "feed_events_per_second": t.feed_events_per_second,
                             "late_rss_growth_mb": t.late_growth_mb,
                             "rate_ok": t.rate_ok, "flat_ok": t.flat_ok})
        broker = None
        if self.broker is not None:
            broker = {**asdict(self.broker),
                      "runs": [{**asdict(r), "dropped": r.dropped, "publish_rate": r.publish_rate,
                                "receive_rate": r.receive_rate, "cpu_rate": r.cpu_rate}
                               for r in self.broker.runs]}
        return {"events": self.events, "trackers": trackers, "broker": broker,
                "targets": {"events_per_second": TARGET_EVENTS_PER_S,
                            "late_rss_growth_mb": FLAT_RSS_MB, "ok": self.ok},
                "total_seconds": self.total_seconds}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _k(n: float) -> str:
    return f"{n / 1000:.0f}k" if n >= 1000 and n % 1000 == 0 else f"{n:,.0f}"


def _tracker_lines(t: TrackerResult) -> list[str]:
    per_event_us = 1e6 / t.events_per_second
    scrapes = t.scrape_ms
    lines = [
        f"  {t.scenario}: {t.about}",
        f"    {t.events:,} events = {t.tasks:,} tasks ({t.lost_tasks:,} never finished) over "
        f"{t.simulated_seconds:,.0f} s simulated; generating and decoding them took "
        f"{t.generate_seconds:.1f} s (another process; not timed)",
        f"    events/s on CPU {t.cpu}: {t.events_per_second:,.0f} "
        f"({per_event_us:.1f} us/event, {len(scrapes)} scrapes included; feed alone "
        f"{t.feed_events_per_second:,.0f}/s)   target >= {TARGET_EVENTS_PER_S:,.0f}/s: "
        f"{_verdict(t.rate_ok)}",
        "    by type (us/event, sampled): " + ", ".join(
            f"{kind} {cost.us_per_event:.1f}" for kind, cost in t.by_type.items()),
        "    at events:    " + "".join(f"{_k(c.events):>9}" for c in t.checkpoints),
        "    RSS MB:       " + "".join(f"{c.rss_mb:>9.1f}" for c in t.checkpoints)
        + f"   (before: {t.baseline_rss_mb:.1f}, peak {t.peak_rss_mb:.1f})",
        "    tracked tasks:" + "".join(f"{c.tracked_tasks:>9,}" for c in t.checkpoints)
        + f"   (cap {DEFAULT_MAX_TRACKED_TASKS:,})",
        "    tracker MB:   " + "".join(f"{c.tracker_mb:>9.1f}" for c in t.checkpoints)
        + "   (objects the tracker holds, by sys.getsizeof)",
        "    workers:      " + "".join(f"{c.workers_online:>9,}" for c in t.checkpoints),
        "    simulated s:  " + "".join(f"{c.simulated_seconds:>9,.0f}" for c in t.checkpoints),
    ]
    span = f"{_k(t.rss_at(FLAT_FROM).events)} -> {_k(t.events)} events"
    growth = f"RSS growth {span} (peak of each half): {t.late_growth_mb:+.1f} MB"
    target = f"target < {FLAT_RSS_MB:.0f} MB: {_verdict(t.flat_ok)}"
    cap = t.at_cap
    if t.bound == "cap" and cap is not None:
        lines.append(f"    {growth}, id map at its cap since {_k(cap.events)}   {target}")
    elif t.bound == "expiry":
        lines.append(f"    {growth}, ids held steady by the expiry   {target}")
    else:
        added = t.checkpoints[-1].tracked_tasks - t.rss_at(FLAT_FROM).tracked_tasks
        lines += [
            f"    {growth}: still filling toward the cap (+{added:,} ids held, tracker "
            f"{t.tracker_growth_mb:+.1f} MB);",
            f"      growth beyond the tracker's objects {t.unexplained_growth_mb:+.1f} MB   "
            f"{target}; full, the tracker would hold ~{t.at_cap_tracker_mb:.0f} MB",
        ]
    lines.append(
        f"    scrape (EventCollector + exposition): p50 "
        f"{percentile(scrapes, 50) if scrapes else 0:.1f} ms, max "
        f"{max(scrapes) if scrapes else 0:.1f} ms; final scrape {t.final_scrape_ms:.1f} ms, "
        f"/metrics (event families) {t.metrics_bytes / 1024:.0f} KB, {t.metrics_lines:,} samples")
    return lines


def _broker_lines(b: BrokerResult) -> list[str]:
    lines = [f"part B: redis-server, the exporter's EventStream + TrackerFeed (celery_app(url, "
             f"{{}}, 5.0)) on CPU {b.cpu}; 2 publisher processes (Celery's "
             f"app.events.Dispatcher, the busy mix) and redis-server on CPU {b.publisher_cpus}"]
    if b.failed:
        lines.append(f"  FAILED: {b.failed}")
    for r in b.runs:
        if r.bursts:
            sent = (f"{r.sent:,} sent in {r.bursts} bursts of {r.sent // r.bursts:,} while the "
                    f"receiver was held (publishers {r.publish_rate:,.0f}/s)")
            received = (f"drain rate (release to last event) {r.receive_rate:,.0f}/s = the "
                        "receiver flat out")
        else:
            sent = (f"{r.sent:,} sent at {r.publish_rate:,.0f}/s (asked "
                    f"{r.target_rate:,.0f}/s)")
            received = (f"receive rate (first to last event) {r.receive_rate:,.0f}/s, last "
                        f"event {r.lag_seconds:.1f} s after the publishers finished")
        lines += [
            f"  {r.name}: {sent}; {r.processed:,} processed, {r.dropped:,} dropped",
            f"    {received}; receiver thread CPU {r.receiver_cpu_seconds:.1f} s = "
            f"{r.cpu_rate:,.0f} events per CPU-second",
            f"    per event: {r.us_per_event:.0f} us of receiver CPU, of which TrackerFeed "
            f"(lock + tracker) {r.feed_us_per_event:.1f} us "
            f"({r.feed_us_per_event / r.us_per_event * 100 if r.us_per_event else 0:.0f} %); "
            "the rest is redis-py, kombu and celery's receiver",
            f"    connects {r.connects} (1: never dropped), output-buffer disconnects "
            f"{r.output_buffer_disconnects}, peak pub/sub output buffer "
            f"{r.peak_output_buffer_mb:.1f} MB (limits: 32 MB, or 8 MB for 60 s)",
        ]
    if b.profile_shares:
        lines.append(f"  cProfile of the receiver thread draining a burst of "
                     f"{b.profile_events:,} events, one per message ("
                     f"{b.profile_us_per_event:.0f} us/event profiled, waits left out; "
                     "cProfile weighs call-heavy Python more):")
        lines += [f"    {share * 100:5.1f} %  {name}" for name, share in b.profile_shares.items()]
    return lines


def render(report: Report) -> str:
    lines = [
        f"events benchmark: {report.events:,} synthetic Celery events per scenario, default "
        f"TrackerOptions (max_tracked_tasks {DEFAULT_MAX_TRACKED_TASKS:,})",
        "part A: TrackerFeed -> EventTracker in process, one core, simulated clock, "
        f"EventCollector scraped every {SCRAPE_INTERVAL:.0f} s simulated",
    ]
    for t in report.trackers:
        lines += _tracker_lines(t)
    if report.broker is not None:
        lines += _broker_lines(report.broker)
    for name, text in report.profiles.items():
        lines += [f"--- cProfile, {name}, by own time", text]
    lines.append("summary:")
    lines += [
        f"  part A {t.scenario}: {t.events_per_second:,.0f} events/s "
        f"{_verdict(t.rate_ok)}; RSS MB at "
        + " / ".join(f"{_k(c.events)} {c.rss_mb:.0f}" for c in t.checkpoints)
        + f"; ids held {t.checkpoints[-1].tracked_tasks:,} ({t.bound}); "
        f"late growth {t.late_growth_mb:+.1f} MB {_verdict(t.flat_ok)}"
        for t in report.trackers]
    if report.broker is not None:
        lines += [f"  part B {r.name}: {r.receive_rate:,.0f}/s received, "
                  f"{r.cpu_rate:,.0f} per receiver CPU-second ({r.us_per_event:.0f} us/event, "
                  f"TrackerFeed {r.feed_us_per_event:.1f} us), {r.dropped:,} of {r.sent:,} "
                  "dropped, reconnects "
                  f"{r.connects - 1}" for r in report.broker.runs]
        if report.broker.failed:
            lines.append(f"  part B FAILED: {report.broker.failed}")
    lines.append(f"total benchmark time: {report.total_seconds:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000,
                   help="events per part A scenario (default 1,000,000)")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                   help="part A scenario (repeatable; default: all)")
    p.add_argument("--broker-events", type=int, default=100_000,
                   help="events per part B run (default 100,000)")
    p.add_argument("--broker-rate", type=float, default=TARGET_EVENTS_PER_S,
                   help="part B publishing rate, events/s in all (default 10,000)")
    p.add_argument("--no-broker", action="store_true", help="part A only")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    p.add_argument("--profile", action="store_true",
                   help="print cProfile of the tracker (busy; slows its timed chunks) and of "
                   "the part B receiver")
    args = p.parse_args(argv)
    if args.events < 100 or args.broker_events < 100 or args.broker_rate <= 0:
        p.error("--events and --broker-events must be >= 100, --broker-rate > 0")
    return args


def run(args: argparse.Namespace, workdir: Path) -> Report:
    started = time.perf_counter()
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1]
    others = set(cpus[:-1]) or {cpu}
    trackers: list[TrackerResult] = []
    profiles: dict[str, str] = {}
    for seed, name in enumerate(args.scenario or list(SCENARIOS)):
        result, text = run_scenario(name, args.events, seed, cpu, others,
                                    args.profile and name == "busy")
        trackers.append(result)
        if text:
            profiles[f"the tracker, {name} (timed chunks)"] = text
        step(f"[{name}] {result.events_per_second:,.0f} events/s, RSS "
             f"{result.checkpoints[-1].rss_mb:.1f} MB, tracked "
             f"{result.checkpoints[-1].tracked_tasks:,}")
    broker: BrokerResult | None = None
    if not args.no_broker:
        broker = run_broker(workdir, args, cpu, others)
        if args.profile and broker.profile_top:
            profiles["part B receiver"] = broker.profile_top
    report = Report(args.events, trackers, broker, profiles,
                    total_seconds=time.perf_counter() - started)
    if not report.ok:
        # The figures first, then the failure (the harness prints only its message).
        print(render(report))
        failed = [f"{t.scenario}: {t.events_per_second:,.0f} events/s" for t in trackers
                  if not t.rate_ok]
        failed += [f"{t.scenario}: RSS grew {t.late_growth_mb:+.1f} MB from "
                   f"{_k(t.rss_at(FLAT_FROM).events)} to {_k(t.events)} events "
                   f"({t.unexplained_growth_mb:+.1f} MB beyond the tracker's objects)"
                   for t in trackers if not t.flat_ok]
        raise SanityError("part A targets missed: " + "; ".join(failed))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_benchmark("events_bench", lambda workdir: run(args, workdir), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
