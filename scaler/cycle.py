"""One evaluation cycle over every service, and the loop that repeats it.

The edges: queries go to Prometheus through a bounded thread pool (each
distinct query once per cycle), counts come from ECS in DescribeServices
batches, and UpdateService is called only when a count changes. Everything
between is the pure `evaluate` and `decide`. A failure of one service (a query,
its ECS service) never touches another, and nothing here lets the loop die.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from scaler.config import EcsBackend, ScalerConfig, ServiceConfig
from scaler.decision import Counts, Decision, History, Reason, decide
from scaler.ecs import BackendError, EcsService, ServiceCounts, describe_many
from scaler.evaluate import Evaluation, Result, SampleSet, evaluate, queries_of
from scaler.local import LocalBackend, LocalFleet
from scaler.prometheus import QueryError, Sample

log = logging.getLogger(__name__)

QueryFn = Callable[[str], Sequence[Sample]]
# DescribeServices calls in flight per cluster: 200 services are 20 calls, 2-3 s one
# after another against AWS, yet few enough not to meet ECS's API rate limit.
DESCRIBE_CONCURRENCY = 4
# /healthz turns 503 when no cycle has finished for 3 intervals, plus the longest a
# cycle waits for its queries, plus this (seconds): room for slow ECS calls.
STALL_GRACE = 60.0
ClientFactory = Callable[[str, str | None], Any]  # (region, endpoint_url) -> boto3 ECS client


class Backends(Protocol):
    """Where the scaler reads counts and sets desired counts: the real `Fleet`, or the
    simulator's world."""

    def read(self) -> Mapping[str, ServiceCounts | BackendError]: ...

    def set_desired(self, name: str, count: int) -> None: ...

    def restarts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class Fleet:
    """The services behind the config: ECS ones read in batches per cluster, local ones
    from their processes."""

    def __init__(self, services: Sequence[ServiceConfig], client_for: ClientFactory) -> None:
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._backends: dict[str, EcsBackend] = {
            s.name: s.backend for s in services if isinstance(s.backend, EcsBackend)}
        for backend in self._backends.values():
            key = (backend.region, backend.endpoint_url)
            if key not in self._clients:
                self._clients[key] = client_for(*key)
        self.local = LocalFleet({s.name: s.backend for s in services
                                 if isinstance(s.backend, LocalBackend)})

    def _client(self, backend: EcsBackend) -> Any:
        return self._clients[(backend.region, backend.endpoint_url)]

    def read(self) -> dict[str, ServiceCounts | BackendError]:
        groups: dict[tuple[str, str | None, str], list[str]] = {}
        for name, b in self._backends.items():
            groups.setdefault((b.region, b.endpoint_url, b.cluster), []).append(name)
        counts: dict[str, ServiceCounts | BackendError] = {
            name: workers.counts() for name, workers in self.local.workers.items()}
        for (region, endpoint, cluster), names in groups.items():
            by_service = describe_many(self._clients[(region, endpoint)], cluster,
                                       [self._backends[n].service for n in names],
                                       concurrency=DESCRIBE_CONCURRENCY)
            for name in names:
                counts[name] = by_service[self._backends[name].service]
        return counts

    def set_desired(self, name: str, count: int) -> None:
        if name in self.local.workers:
            self.local.workers[name].set_desired(count)
            return
        backend = self._backends[name]
        EcsService(self._client(backend), backend.cluster, backend.service).set_desired(count)

    def restarts(self) -> dict[str, int]:
        """Per local service, the worker processes that exited unasked and were replaced."""
        return {name: workers.restarts for name, workers in self.local.workers.items()}

    def close(self) -> None:
        """Stops the local services' workers (warm shutdown); ECS services are left as set."""
        self.local.close()


@dataclass
class ServiceState:
    """What the scaler remembers of a service between cycles, and exports."""

    history: History = field(default_factory=History)
    counts: ServiceCounts | None = None
    decision: Decision | None = None
    evaluation: Evaluation | None = None
    last_success: float | None = None
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Outcome:
    service: str
    before: int | None
    after: int | None
    reason: str
    applied: bool


class Scaler:
    def __init__(
        self,
        config: ScalerConfig,
        query: QueryFn,
        fleet: Backends,
        *,
        clock: Callable[[], float],
        timer: Callable[[], float],
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self._query = query
        self.fleet = fleet
        self._clock = clock
        self._timer = timer
        self._dry_run = dry_run
        self._pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="query")
        self.lock = threading.Lock()  # held while state changes; the collector reads under it
        self.states: dict[str, ServiceState] = {s.name: ServiceState() for s in config.services}
        self.last_duration: float | None = None
        # Every distinct query of the config, each once: the config never changes.
        self._queries = list(dict.fromkeys(
            q for s in config.services for q in queries_of(s)))
        self._started = timer()
        self._last_cycle_end: float | None = None
        # A cycle waits this long for its queries, then holds the services whose
        # queries are still out: an unanswering Prometheus must not stretch a cycle to
        # (queries / concurrency) x timeout, nor make the loop look hung.
        self.query_deadline = 2 * max(config.interval, config.prometheus.timeout)
        self.stall_after = 3 * config.interval + self.query_deadline + STALL_GRACE

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run_once(self) -> list[Outcome]:
        started = self._timer()
        now = self._clock()
        futures: dict[str, Future[Sequence[Sample]]] = {
            q: self._pool.submit(self._query, q) for q in self._queries
        }
        try:
            counts = self.fleet.read()
        except Exception as error:  # a bug or an unforeseen botocore error: hold everything
            log.exception("reading the services failed")
            counts = {s.name: BackendError("other", s.name, str(error))
                      for s in self.config.services}
        results: dict[str, Result] = {}
        remaining = self.query_deadline - (self._timer() - started)
        done, _ = wait(futures.values(), timeout=max(0.0, remaining))
        for q, future in futures.items():
            if future not in done:
                future.cancel()  # not yet sent: never will be; sent: ends at its timeout
                results[q] = QueryError(
                    "timeout", f"no answer within the evaluation's {self.query_deadline:g}s "
                               "deadline for queries", query=q)
                continue
            try:
                results[q] = SampleSet(future.result())
            except Exception as error:
                results[q] = error
        outcomes = [self._service(s, counts[s.name], results, now) for s in self.config.services]
        ended = self._timer()
        with self.lock:
            self.last_duration = ended - started
            self._last_cycle_end = ended
        return outcomes

    def stalled(self) -> str | None:
        """Why the loop looks hung (no cycle finished for `stall_after` seconds), or None.

        For /healthz: a restart cures a hung loop; it does not cure an unreachable
        Prometheus or ECS, so those (the loop runs and holds) keep it healthy.
        """
        with self.lock:
            last = self._last_cycle_end
        idle = self._timer() - (self._started if last is None else last)
        if idle <= self.stall_after:
            return None
        if last is None:
            return (f"no evaluation cycle has finished in the {idle:.0f}s since start-up "
                    f"(interval {self.config.interval:g}s)")
        return (f"the last evaluation cycle finished {idle:.0f}s ago "
                f"(interval {self.config.interval:g}s)")

    def _service(self, service: ServiceConfig, read: ServiceCounts | BackendError,
                 results: Mapping[str, Result], now: float) -> Outcome:
        state = self.states[service.name]
        if isinstance(read, BackendError):
            with self.lock:
                state.errors[f"backend_{read.kind}"] += 1
                state.decisions[("none", Reason.NO_DATA.value)] += 1
            log.warning("service=%s backend error kind=%s: %s", service.name, read.kind, read)
            return Outcome(service.name, None, None, Reason.NO_DATA.value, False)
        counts = Counts(read.desired, read.running, read.pending)
        evaluation = evaluate(service, results, counts)
        decision = decide(evaluation.inputs, counts, service.limits, service.behavior,
                          state.history, now)
        applied, history = False, decision.history
        if decision.count != counts.desired and not self._dry_run:
            try:
                self.fleet.set_desired(service.name, decision.count)
                applied = True
            except BackendError as error:
                with self.lock:
                    state.errors[f"backend_{error.kind}"] += 1
                log.warning("service=%s cannot set desired count to %d, kind=%s: %s",
                            service.name, decision.count, error.kind, error)
                # Not made: the rate policies must not count it.
                history = replace(history, changes=state.history.changes)
        with self.lock:
            state.history = history
            state.counts = read
            state.decision = decision
            state.evaluation = evaluation
            for kind, _ in evaluation.errors:
                state.errors[kind] += 1
            state.decisions[(decision.direction(counts.desired), decision.reason.value)] += 1
            if not evaluation.errors:
                state.last_success = now
        self._log(service, counts, decision, evaluation, applied)
        return Outcome(service.name, counts.desired, decision.count, decision.reason.value,
                       applied)

    def _log(self, service: ServiceConfig, counts: Counts, decision: Decision,
             evaluation: Evaluation, applied: bool) -> None:
        level = logging.INFO if decision.count != counts.desired else logging.DEBUG
        if evaluation.errors:
            level = logging.WARNING
        if not log.isEnabledFor(level):
            return  # unchanged services, every cycle: skip building the line
        rules = " ".join(
            f"{o.rule}={_show(o.value)}->{_show(o.recommendation)}" for o in evaluation.rules
        )
        errors = "; ".join(message for _, message in evaluation.errors)
        log.log(
            level,
            "service=%s desired=%d running=%d pending=%d new=%d reason=%s direction=%s "
            "applied=%s dry_run=%s rules=[%s]%s",
            service.name, counts.desired, counts.running, counts.pending, decision.count,
            decision.reason.value, decision.direction(counts.desired), str(applied).lower(),
            str(self._dry_run).lower(), rules, f" errors=[{errors}]" if errors else "",
        )

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Evaluate every `interval` until `stop` is set; it is checked between cycles."""
        while not stop.is_set():
            started = self._timer()
            try:
                self.run_once()
            except Exception:
                log.exception("evaluation cycle failed")
            if once:
                return
            stop.wait(max(0.0, self.config.interval - (self._timer() - started)))


def _show(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
