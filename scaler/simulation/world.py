"""One queue and its workers, simulated event by event: pure and deterministic.

The world stands in for the broker, the Celery workers and the ECS service: tasks
arrive, wait in FIFO order, run on a worker's free slot for their duration, and
workers take a start-up delay between launch and their first task. It answers what
the real parts answer: the exporter's snapshots (`queue_snapshot`, `events_snapshot`,
mapped to metric families by the exporter's own code) and ECS's counts. Time is
seconds from the workload's start; nothing here reads a clock.

Scale-in follows ECS: starting tasks go first, then idle workers. With task
protection a busy worker is protected: it takes no new task and stops when its
tasks are done. Without it, ECS stops busy workers too, and their tasks go back to
the head of the queue to start over (counted in `requeued`).
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from exporter.event_tracker import DEFAULT_BUCKETS, EventsSnapshot, HistogramSnapshot
from exporter.snapshot import QueueSnapshot
from scaler.ecs import ServiceCounts

_READY, _FINISH = 0, 1
STARTING, RUNNING, DRAINING, STOPPED = "starting", "running", "draining", "stopped"


@dataclass
class Worker:
    id: int
    launched: float
    state: str = STARTING
    tasks: list[int] = field(default_factory=list)  # indexes of the tasks it runs


class World:
    def __init__(
        self,
        arrivals: Sequence[float],
        durations: Sequence[float],
        *,
        concurrency: int,
        startup: Callable[[], float],
        protection: bool,
        initial: int,
        rng: random.Random,
        queue: str = "default",
        task: str = "simulated",
        start: float = 0.0,
    ) -> None:
        if len(arrivals) != len(durations):
            raise ValueError("arrivals and durations differ in length")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
        self.arrivals = arrivals
        self.durations = durations
        self.concurrency = concurrency
        self._startup = startup
        self.protection = protection
        self._rng = rng
        self.queue_name = queue
        self.task_name = task
        self.start = start  # epoch seconds of t=0, for the snapshots' timestamps
        self.now = 0.0
        n = len(arrivals)
        # Of each task's last run: when it started; NaN until then.
        self.started = array("d", [math.nan]) * n
        self.finished = array("d", [math.nan]) * n
        self._run = array("l", [0]) * n  # bumped on requeue: the old run's finish is void
        self._next = 0  # next arrival
        self._queue: deque[int] = deque()
        self._events: list[tuple[float, int, int, int, int, int]] = []
        self._seq = 0
        self.workers: list[Worker] = []
        # Not stopped yet, by id: what scale-in, counts and billing look at on every
        # evaluation, without going over every worker a long run ever launched.
        self._live: dict[int, Worker] = {}
        self._stopped_seconds = 0.0  # billed time of the stopped ones
        self._free: list[int] = []  # ids of workers that may have a free slot (lazy heap)
        self.desired = 0
        self.busy = 0
        self.requeued = 0
        self.arrived = 0
        self.starts = 0
        self.succeeded = 0
        self.actions = 0
        self._wait = [0] * (len(DEFAULT_BUCKETS) + 1)
        self._wait_total = 0.0
        self._runtime = [0] * (len(DEFAULT_BUCKETS) + 1)
        self._runtime_total = 0.0
        for _ in range(initial):
            self._launch(ready_at=0.0)
        self.desired = initial
        self._dispatch()

    # ------------------------------------------------------------------ time

    def advance(self, until: float) -> None:
        """Runs every arrival and event up to and including `until`."""
        arrivals, n = self.arrivals, len(self.arrivals)
        while True:
            next_arrival = arrivals[self._next] if self._next < n else math.inf
            next_event = self._events[0][0] if self._events else math.inf
            at = min(next_arrival, next_event)
            if at > until:
                break
            self.now = at
            if next_event <= next_arrival:
                _, _, kind, a, b, run = heapq.heappop(self._events)
                if kind == _READY:
                    self._ready(a)
                else:
                    self._finish(a, b, run)
            else:
                self._queue.append(self._next)
                self._next += 1
                self.arrived += 1
            self._dispatch()
        self.now = until

    def _push(self, at: float, kind: int, a: int, b: int = 0, run: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, a, b, run))

    # --------------------------------------------------------------- workers

    def _launch(self, ready_at: float | None = None) -> None:
        at = self.now + max(0.0, self._startup()) if ready_at is None else ready_at
        worker = Worker(len(self.workers), self.now)
        self.workers.append(worker)
        self._live[worker.id] = worker
        self._push(at, _READY, worker.id)

    def _ready(self, wid: int) -> None:
        worker = self.workers[wid]
        if worker.state != STARTING:
            return  # stopped while starting
        worker.state = RUNNING
        heapq.heappush(self._free, wid)

    def _finish(self, wid: int, task: int, run: int) -> None:
        if run != self._run[task]:
            return  # its worker was stopped and the task requeued
        worker = self.workers[wid]
        worker.tasks.remove(task)
        self.busy -= 1
        self.finished[task] = self.now
        self.succeeded += 1
        runtime = self.now - self.started[task]
        self._runtime[bisect_left(DEFAULT_BUCKETS, runtime)] += 1
        self._runtime_total += runtime
        if worker.state == DRAINING and not worker.tasks:
            self._stop(worker)
        elif worker.state == RUNNING:
            heapq.heappush(self._free, wid)

    def _stop(self, worker: Worker) -> list[int]:
        """Stop it; the tasks it was running, for _requeue."""
        tasks = list(worker.tasks)
        for task in tasks:
            self._run[task] += 1
            self.started[task] = math.nan  # its wait goes on until it starts again
            self.busy -= 1
            self.requeued += 1
        worker.tasks.clear()
        worker.state = STOPPED
        del self._live[worker.id]
        self._stopped_seconds += self.now - worker.launched
        return tasks

    def _dispatch(self) -> None:
        queue, free, workers = self._queue, self._free, self.workers
        while queue and free:
            wid = free[0]
            worker = workers[wid]
            if worker.state != RUNNING or len(worker.tasks) >= self.concurrency:
                heapq.heappop(free)  # stale entry
                continue
            task = queue.popleft()
            worker.tasks.append(task)
            if len(worker.tasks) >= self.concurrency:
                heapq.heappop(free)
            self.busy += 1
            self.starts += 1
            self.started[task] = self.now
            wait = self.now - self.arrivals[task]
            self._wait[bisect_left(DEFAULT_BUCKETS, wait)] += 1
            self._wait_total += wait
            self._push(self.now + self.durations[task], _FINISH, wid, task, self._run[task])

    def set_desired(self, count: int) -> None:
        """What UpdateService(desiredCount) does to the service's tasks."""
        count = max(0, count)
        if count != self.desired:
            self.actions += 1
        self.desired = count
        live = [w for w in self._live.values() if w.state != DRAINING]
        # Raising the count cancels a scale-in: ECS has not stopped the protected workers
        # it was waiting on, and they keep taking tasks.
        draining = [w for w in self._live.values() if w.state == DRAINING]
        for worker in draining[:max(0, count - len(live))]:
            worker.state = RUNNING
            heapq.heappush(self._free, worker.id)
            live.append(worker)
        for _ in range(count - len(live)):
            self._launch()
        excess = len(live) - count
        if excess <= 0:
            self._dispatch()
            return
        starting = [w for w in reversed(live) if w.state == STARTING]
        idle = [w for w in reversed(live) if w.state == RUNNING and not w.tasks]
        # ECS stops a protected worker once it releases protection: the first done first.
        busy = sorted((w for w in live if w.state == RUNNING and w.tasks),
                      key=lambda w: max(self.started[t] + self.durations[t] for t in w.tasks))
        if self.protection:
            # Protected tasks are not chosen while unprotected ones remain.
            victims = (starting + idle + busy)[:excess]
        else:
            running = [w for w in live if w.state == RUNNING]
            self._rng.shuffle(running)  # ECS does not know which workers are busy
            victims = (starting + running)[:excess]
        stopped: list[int] = []
        for worker in victims:
            if worker.state == RUNNING and worker.tasks and self.protection:
                worker.state = DRAINING
            else:
                stopped += self._stop(worker)
        # ECS stopped them mid-task: the messages go back to the queue's head, oldest
        # first (across all the stopped workers), and run again from the start.
        self._queue.extendleft(sorted(stopped, key=lambda t: self.arrivals[t], reverse=True))
        self._dispatch()

    # ------------------------------------------------------------- readings

    def counts(self) -> ServiceCounts:
        """What DescribeServices says: running includes draining workers (ECS counts them
        until they stop), pending the launched ones still starting."""
        pending = sum(1 for w in self._live.values() if w.state == STARTING)
        return ServiceCounts(self.desired, len(self._live) - pending, pending)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def oldest_age(self) -> float:
        # Requeued tasks go to the head with their first arrival: the head is the oldest.
        return self.now - self.arrivals[self._queue[0]] if self._queue else 0.0

    @property
    def idle(self) -> bool:
        """Nothing waits, runs or is still to arrive."""
        return not self._queue and self.busy == 0 and self._next >= len(self.arrivals)

    def worker_seconds(self) -> float:
        return self._stopped_seconds + sum(self.now - w.launched for w in self._live.values())

    def queue_snapshot(self) -> QueueSnapshot:
        oldest = self.start + self.arrivals[self._queue[0]] if self._queue else None
        # acks_late with a prefetch of one: what workers hold is what they run.
        return QueueSnapshot("celery", self.queue_name, self.depth, oldest_enqueued_at=oldest,
                             unacked=self.busy)

    def events_snapshot(self) -> EventsSnapshot:
        key = (self.queue_name, self.task_name)
        states = {"sent": self.arrived, "received": self.starts, "started": self.starts,
                  "succeeded": self.succeeded}
        online = self.counts().running
        return EventsSnapshot(
            tasks={(*key, state): total for state, total in states.items()},
            wait={key: HistogramSnapshot(DEFAULT_BUCKETS, tuple(self._wait), self._wait_total)},
            runtime={key: HistogramSnapshot(DEFAULT_BUCKETS, tuple(self._runtime),
                                            self._runtime_total)},
            active={self.queue_name: self.busy},
            workers={self.queue_name: online},
            online=(),
            events={},
            last_event={},
            tracked_tasks=self.busy,
        )
