"""One evaluation cycle over every service, and the loop that repeats it.

The edges: queries go to Prometheus through a bounded thread pool (each
distinct query once per cycle), counts come from ECS in DescribeServices
batches, and UpdateService is called only when a count changes. Everything
between is the pure `evaluate` and `decide`. A failure of one service (a query,
its ECS service) never touches another, and nothing here lets the loop die.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError

from scaler.config import EcsBackend, ScalerConfig, ServiceConfig
from scaler.decision import Counts, Decision, History, Pause, Reason, decide, parse_pause
from scaler.ecs import (
    PAUSE_TAG,
    BackendError,
    EcsService,
    ServiceCounts,
    client_error,
    describe_many,
)
from scaler.evaluate import (
    Evaluation,
    Result,
    SampleSet,
    evaluate,
    explain_missing,
    queries_of,
)
from scaler.lease import Lease
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
# How long the list of Prometheus' metric names is reused (seconds).
NAMES_FOR = 60.0
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

    def __init__(self, services: Sequence[ServiceConfig], client_for: ClientFactory,
                 update_client_for: ClientFactory | None = None) -> None:
        self._client_for = client_for
        # UpdateService may go through clients of its own (one attempt, short timeouts:
        # under a lease a change must land before the lease can pass to another instance).
        self._update_client_for = update_client_for
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._update_clients: dict[tuple[str, str | None], Any] = {}
        self._backends: dict[str, EcsBackend] = {
            s.name: s.backend for s in services if isinstance(s.backend, EcsBackend)}
        for backend in self._backends.values():
            with contextlib.suppress(BackendError):  # said at each read, made again then
                self._client(backend.region, backend.endpoint_url, backend.service)
        self.local = LocalFleet({s.name: s.backend for s in services
                                 if isinstance(s.backend, LocalBackend)})

    def _client(self, region: str, endpoint: str | None, service: str,
                update: bool = False) -> Any:
        """The client of a region, made on first use. Making one loads credentials, which
        can fail (a task role's endpoint that does not answer yet): that is an error of the
        services it serves, tried again at the next use, never the end of the scaler."""
        key = (region, endpoint)
        clients, make = self._clients, self._client_for
        if update and self._update_client_for is not None:
            clients, make = self._update_clients, self._update_client_for
        if key not in clients:
            try:
                clients[key] = make(region, endpoint)
            except BotoCoreError as error:
                raise client_error(error, service) from None
        return clients[key]

    def read(self) -> dict[str, ServiceCounts | BackendError]:
        groups: dict[tuple[str, str | None, str], list[str]] = {}
        for name, b in self._backends.items():
            groups.setdefault((b.region, b.endpoint_url, b.cluster), []).append(name)
        counts: dict[str, ServiceCounts | BackendError] = {
            name: workers.counts() for name, workers in self.local.workers.items()}
        for (region, endpoint, cluster), names in groups.items():
            try:
                client = self._client(region, endpoint, f"{cluster}/{names[0]}")
            except BackendError as error:
                for name in names:
                    counts[name] = BackendError(error.kind, f"{cluster}/"
                                                f"{self._backends[name].service}", error.detail,
                                                error.code)
                continue
            by_service = describe_many(client, cluster,
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
        client = self._client(backend.region, backend.endpoint_url, backend.service,
                              update=True)
        EcsService(client, backend.cluster, backend.service).set_desired(count)

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
    paused: Pause | None = None
    # The problems last logged, so that one that persists is logged once, not every cycle.
    logged_problems: tuple[str, ...] = ()
    logged_pause: str | None = None


@dataclass(frozen=True)
class Outcome:
    service: str
    before: int | None
    after: int | None
    reason: str
    applied: bool
    # What went wrong for this service this cycle (could not read, evaluate or set), one
    # line each; empty when it was evaluated and, if due, changed.
    problems: tuple[str, ...] = ()
    # Why a due change was not made on purpose: "dry run", "standby ...", "paused ...".
    note: str | None = None


@dataclass(frozen=True)
class _Plan:
    service: ServiceConfig
    counts: ServiceCounts
    evaluation: Evaluation | None
    decision: Decision
    problems: tuple[str, ...]


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
        histories: Mapping[str, History] | None = None,
        lease: Lease | None = None,
        metric_names: Callable[[], frozenset[str]] | None = None,
        update_budget: float = 0.0,
    ) -> None:
        self.config = config
        self._query = query
        self.fleet = fleet
        self._clock = clock
        self._timer = timer
        self._dry_run = dry_run
        self._lease = lease
        # The longest one UpdateService can take, retries included: under a lease a change
        # is only started while that much of the lease's safe time is left.
        self._update_budget = update_budget
        # Every metric name Prometheus holds, asked when a rule finds no series, to tell a
        # name that does not exist from an empty queue; kept for NAMES_FOR seconds.
        self._metric_names = metric_names
        self._names: tuple[float, frozenset[str] | None] | None = None
        self._pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="query")
        self.lock = threading.Lock()  # held while state changes; the collector reads under it
        self.states: dict[str, ServiceState] = {
            s.name: ServiceState(history=(histories or {}).get(s.name, History()))
            for s in config.services}
        self.last_duration: float | None = None
        # None without a lease; else whether this instance held it at the last cycle.
        self.lease_held: bool | None = None if lease is None else False
        self._lease_logged: tuple[bool, str | None] | None = None
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
        if self._lease is not None:
            self._lease.release()

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
        plans = [self._plan(s, counts[s.name], results, now) for s in self.config.services]
        standby, until = self._standby()
        outcomes = [self._carry_out(plan, now, standby, until) if isinstance(plan, _Plan)
                    else plan for plan in plans]
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

    def _known_names(self) -> frozenset[str] | None:
        """Prometheus' metric names, at most NAMES_FOR seconds old; None if unknown."""
        if self._metric_names is None:
            return None
        now = self._timer()
        if self._names is None or now - self._names[0] >= NAMES_FOR:
            try:
                self._names = (now, self._metric_names())
            except Exception as error:  # advice only: the rule's own error stands
                log.debug("cannot list Prometheus' metric names: %s", error)
                self._names = (now, None)
        return self._names[1]

    def _standby(self) -> tuple[str | None, float | None]:
        """Why this instance must not change services this cycle (no lease), or None; and
        the time until which it may (None: no limit)."""
        if self._lease is None:
            return None, None
        until = None
        try:
            status = self._lease.hold(self._clock())
            held, holder, error, until = status.held, status.holder, status.error, status.until
        except Exception as failure:  # hold() never raises; if it does, act as standby
            held, holder, error = False, None, f"lease: {type(failure).__name__}: {failure}"
        with self.lock:
            self.lease_held = held
        if self._lease_logged != (held, holder if not held else None):
            self._lease_logged = (held, holder if not held else None)
            if held:
                log.info("lease held by this instance (%s): changing services",
                         self._lease.identity)
            elif error:
                log.warning("standby: cannot read or renew the lease (%s): evaluating, "
                            "changing nothing", error)
            else:
                log.info("standby: the lease is held by %s: evaluating, changing nothing",
                         holder or "another instance")
        if held:
            return None, until
        return (f"standby: lease held by {holder}" if holder else "standby: no lease"), None

    def _plan(self, service: ServiceConfig, read: ServiceCounts | BackendError,
              results: Mapping[str, Result], now: float) -> _Plan | Outcome:
        state = self.states[service.name]
        if isinstance(read, BackendError):
            with self.lock:
                state.errors[f"backend_{read.kind}"] += 1
                state.decisions[("none", Reason.NO_DATA.value)] += 1
            problem = f"cannot read the service, kind={read.kind}: {read}"
            self._log_problems(service.name, state, (problem,))
            return Outcome(service.name, None, None, Reason.NO_DATA.value, False, (problem,))
        counts = Counts(read.desired, read.running, read.pending)
        pause: Pause | None = None
        pause_problem: str | None = None
        try:
            pause, pause_problem = parse_pause(read.pause)
            evaluation: Evaluation | None = evaluate(service, results, counts)
            assert evaluation is not None
            if any(kind == "no_data" for kind, _ in evaluation.errors):
                known = self._known_names()
                if known is not None:
                    evaluation = explain_missing(service, evaluation, known)
            decision = decide(evaluation.inputs, counts, service.limits, service.behavior,
                              state.history, now, pause)
            problems = tuple(message for _, message in evaluation.errors)
        except Exception as failure:
            # A bug or an input nobody foresaw, in one service's arithmetic: that service
            # holds and counts an error; every other service is evaluated as usual.
            problem = f"evaluation failed: {type(failure).__name__}: {failure}"
            if problem not in state.logged_problems:
                log.error("service=%s held: its evaluation raised; the other services go on",
                          service.name, exc_info=True)
            evaluation = None
            decision = Decision(counts.desired, Reason.NO_DATA, None, state.history,
                                state.history)
            problems = (problem,)
            with self.lock:
                state.errors["internal"] += 1
        if pause_problem:
            problems += (pause_problem,)
        with self.lock:
            state.paused = pause
        self._log_pause(service.name, state, pause, read.pause, counts.desired)
        return _Plan(service, read, evaluation, decision, problems)

    def _carry_out(self, plan: _Plan, now: float, standby: str | None,
                   until: float | None) -> Outcome:
        service, decision, state = plan.service, plan.decision, self.states[plan.service.name]
        current = plan.counts.desired
        problems, note = plan.problems, None
        applied = False
        if decision.count != current:
            if self._dry_run:
                note = "dry run"
            elif standby is not None:
                note = standby
            elif until is not None and self._clock() + self._update_budget >= until:
                # The call could outlast the lease's safe time (the cycle took long):
                # another instance may hold it by the time the change lands.
                note = "standby: the lease's safe time ran out during the evaluation"
            else:
                try:
                    self.fleet.set_desired(service.name, decision.count)
                    applied = True
                except BackendError as error:
                    with self.lock:
                        state.errors[f"backend_{error.kind}"] += 1
                    problems += (f"cannot set desired count to {decision.count}, "
                                 f"kind={error.kind}: {error}",)
                except Exception as error:  # never the end of the other services' cycle
                    log.error("service=%s setting the desired count raised", service.name,
                              exc_info=True)
                    with self.lock:
                        state.errors["internal"] += 1
                    problems += (f"cannot set desired count to {decision.count}: "
                                 f"{type(error).__name__}: {error}",)
        if decision.reason == Reason.PAUSED and note is None:
            note = "paused"
        with self.lock:
            # Not made (refused, dry run, standby): the history must not count it.
            state.history = decision.kept(applied)
            state.counts = plan.counts
            state.decision = decision
            state.evaluation = plan.evaluation
            if plan.evaluation is not None:
                for kind, _ in plan.evaluation.errors:
                    state.errors[kind] += 1
            state.decisions[(decision.direction(current), decision.reason.value)] += 1
            if plan.evaluation is not None and not plan.evaluation.errors:
                state.last_success = now
        self._log(service, plan, applied, problems, note)
        return Outcome(service.name, current, decision.count, decision.reason.value, applied,
                       problems, note)

    def _log_problems(self, name: str, state: ServiceState, problems: tuple[str, ...]) -> bool:
        """Logs the service's problems when they differ from the last logged; True if so."""
        if problems == state.logged_problems:
            return False
        if problems:
            log.warning("service=%s %s", name, "; ".join(problems))
        else:
            log.info("service=%s evaluated again without errors", name)
        state.logged_problems = problems
        return True

    def _log_pause(self, name: str, state: ServiceState, pause: Pause | None,
                   tag: str | None, desired: int) -> None:
        shown = None if pause is None else (tag or "")
        if shown == state.logged_pause:
            return
        state.logged_pause = shown
        if pause is None:
            log.info("service=%s resumed: the tag %s is gone or false", name, PAUSE_TAG)
        else:
            where = f"at {pause.count}" if pause.count is not None else f"where it is ({desired})"
            log.info("service=%s paused by the tag %s=%s: held %s, rules still evaluated",
                     name, PAUSE_TAG, tag, where)

    def _log(self, service: ServiceConfig, plan: _Plan, applied: bool,
             problems: tuple[str, ...], note: str | None) -> None:
        counts, decision, evaluation = plan.counts, plan.decision, plan.evaluation
        changed = decision.count != counts.desired
        # A problem that persists is logged when it starts and when it ends, not every cycle.
        logged_now = self._log_problems(service.name, self.states[service.name], problems)
        level = logging.INFO if changed else logging.DEBUG
        if not log.isEnabledFor(level):
            return  # unchanged services, every cycle: skip building the line
        rules = " ".join(
            f"{o.rule}={_show(o.value)}->{_show(o.recommendation)}"
            for o in (evaluation.rules if evaluation is not None else ())
        )
        errors = "; ".join(problems) if problems and not logged_now else ""
        log.log(
            level,
            "service=%s desired=%d running=%d pending=%d new=%d reason=%s direction=%s "
            "applied=%s dry_run=%s rules=[%s]%s%s",
            service.name, counts.desired, counts.running, counts.pending, decision.count,
            decision.reason.value, decision.direction(counts.desired), str(applied).lower(),
            str(self._dry_run).lower(), rules, f" errors=[{errors}]" if errors else "",
            f" note=[{note}]" if note and note != "dry run" else "",
        )

    def run(self, stop: threading.Event, once: bool = False) -> list[Outcome] | None:
        """Evaluate every `interval` until `stop` is set; it is checked between cycles.

        Returns the last cycle's outcomes (None if it failed as a whole): with `once`, what
        the one evaluation did to each service.
        """
        outcomes: list[Outcome] | None = None
        while not stop.is_set():
            started = self._timer()
            try:
                outcomes = self.run_once()
            except Exception:
                log.exception("evaluation cycle failed")
                outcomes = None
            if once:
                break
            stop.wait(max(0.0, self.config.interval - (self._timer() - started)))
        return outcomes


def _show(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
