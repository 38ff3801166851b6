"""The closed loop: a simulated queue, a real Prometheus, the production scaler.

At every simulated scrape the world's state goes through the exporter's own
family builders and the scaler's own collector, and the samples are written to a
private Prometheus with the scrape's simulated timestamp. At every simulated
evaluation the production `Scaler.run_once` runs unchanged: its queries go to that
Prometheus evaluated at the simulated instant, it reads counts from the world and
sets the world's desired count, which launches workers that start after their
start-up delay. Nothing evaluates PromQL but Prometheus.

Times are whole milliseconds internally so that scrape, rule and scaler ticks that
coincide do coincide.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from exporter.families import event_families, exporter_families, queue_families
from scaler.config import ScalerConfig, ServiceConfig
from scaler.cycle import Scaler
from scaler.ecs import BackendError, ServiceCounts
from scaler.evaluate import queries_of
from scaler.metrics import ScalerCollector
from scaler.prometheus import PrometheusClient, PrometheusSettings, QueryError, Sample
from scaler.simulation.bound import LowerBound, lower_bound
from scaler.simulation.plot import SimulationSeries
from scaler.simulation.recording import RecordingRule, needed_rules
from scaler.simulation.remote_write import RemoteWriter
from scaler.simulation.summary import WaitStats, wait_stats
from scaler.simulation.workload import Distribution, Workload
from scaler.simulation.world import World

SeriesKey = tuple[tuple[str, str], ...]


class SimulationError(RuntimeError):
    pass


@dataclass(frozen=True)
class SimOptions:
    startup: Distribution
    concurrency: int = 1
    protection: bool = True
    scrape_interval: float = 15.0
    rule_interval: float = 15.0
    interval: float | None = None  # the scaler's; None: the config's
    slo: float = 60.0
    initial: int | None = None  # workers at the start; None: the service's min
    seed: int = 1
    queue: str | None = None  # None: from the service's match_labels, else "default"
    drain_limit: float = 3600.0  # after the workload ends, how long the backlog may take


@dataclass(frozen=True)
class SimulationResult:
    service: str
    workload: str
    start: float  # epoch seconds
    duration: float  # simulated seconds, the workload plus its drain
    tasks: int
    unfinished: int
    waits: WaitStats
    worker_seconds: float
    bound: LowerBound
    scale_ups: int
    scale_downs: int
    peak_desired: int
    peak_running: int
    requeued: int
    failed_evaluations: int
    first_error: str | None
    series: SimulationSeries
    # Failed before any evaluation succeeded: a rate() window still filling at the start
    # (a production scaler starts with Prometheus' history already there).
    warmup_failures: int = 0

    @property
    def failed(self) -> bool:
        """Whether the rules failed where they should have worked: after the warm-up, or
        throughout."""
        evaluations = len(self.series.times)  # one point per evaluation
        return (self.failed_evaluations > self.warmup_failures
                or self.warmup_failures == evaluations > 0)

    @property
    def bound_ratio(self) -> float:
        if self.bound.worker_seconds <= 0:
            return math.inf if self.worker_seconds > 0 else 1.0
        return self.worker_seconds / self.bound.worker_seconds


class _WorldBackend:
    """The world, seen by the scaler as its ECS service."""

    def __init__(self, name: str, world: World) -> None:
        self._name = name
        self._world = world

    def read(self) -> Mapping[str, ServiceCounts | BackendError]:
        return {self._name: self._world.counts()}

    def set_desired(self, name: str, count: int) -> None:
        self._world.set_desired(count)

    def restarts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def pick_service(config: ScalerConfig, name: str | None) -> ServiceConfig:
    names = [s.name for s in config.services]
    if name is None:
        if len(names) == 1:
            return config.services[0]
        raise SimulationError(f"the config has {len(names)} services; choose one with "
                              f"--service ({', '.join(names)})")
    for service in config.services:
        if service.name == name:
            return service
    raise SimulationError(f"--service {name!r}: no such service in the config "
                          f"({', '.join(names)})")


def queue_of(service: ServiceConfig, override: str | None) -> str:
    if override is not None:
        return override
    for selector in (service.match_labels, *(r.match_labels for r in service.rules)):
        for label, value in selector:
            if label == "queue" and value:
                return value
    return "default"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _samples(families: Sequence[Any]) -> Iterator[tuple[SeriesKey, float]]:
    for metric in families:
        for s in metric.samples:
            yield (("__name__", s.name), *sorted(s.labels.items())), float(s.value)


def _without_name(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "__name__"}


class _Series:
    """Samples waiting to be written, with staleness markers for vanished series."""

    def __init__(self, writer: RemoteWriter) -> None:
        self._writer = writer
        self._pending: dict[SeriesKey, list[tuple[int, float | None]]] = {}
        self._live: dict[str, set[SeriesKey]] = {}  # by source: what it last produced

    def add(self, source: str, at_ms: int, samples: Iterator[tuple[SeriesKey, float]]) -> None:
        seen: set[SeriesKey] = set()
        for key, value in samples:
            seen.add(key)
            self._pending.setdefault(key, []).append((at_ms, value))
        for key in self._live.get(source, set()) - seen:
            # Vanished: a staleness marker (None), as Prometheus writes after a scrape
            # or rule evaluation, so queries stop seeing it now rather than 5 min later.
            self._pending.setdefault(key, []).append((at_ms, None))
        self._live[source] = seen

    def flush(self) -> None:
        if self._pending:
            self._writer.write((dict(key), points) for key, points in self._pending.items())
            self._pending = {}


def simulate(
    config: ScalerConfig,
    service: ServiceConfig,
    workload: Workload,
    options: SimOptions,
    prometheus_url: str,
    rules: Sequence[RecordingRule] = (),
    progress: Callable[[float, float], None] | None = None,
) -> SimulationResult:
    """Runs the workload through the closed loop; `workload` must have every duration."""
    if any(math.isnan(d) for d in workload.durations):
        raise SimulationError("some tasks have no duration: fill them with with_durations()")
    interval = options.interval if options.interval is not None else config.interval
    config = replace(config, services=(service,), interval=interval,
                     prometheus=PrometheusSettings(prometheus_url, timeout=30.0))
    queries = queries_of(service)
    rules = needed_rules(rules, queries)
    rng = random.Random(options.seed)
    startup_rng = random.Random(rng.random())
    initial = service.limits.min if options.initial is None else options.initial
    world = World(workload.arrivals, workload.durations, concurrency=options.concurrency,
                  startup=lambda: options.startup.sample(startup_rng),
                  protection=options.protection, initial=initial,
                  rng=random.Random(rng.random()), queue=queue_of(service, options.queue),
                  start=workload.start)
    client = PrometheusClient(config.prometheus)
    writer = RemoteWriter(prometheus_url)
    series = _Series(writer)
    now_ms = 0
    start_ms = _ms(workload.start)  # samples carry epoch milliseconds

    def epoch(ms: int) -> float:
        return workload.start + ms / 1000

    def query(promql: str) -> Sequence[Sample]:
        return client.query_samples(promql, at=epoch(now_ms))

    scaler = Scaler(config, query, _WorldBackend(service.name, world),
                    clock=lambda: epoch(now_ms), timer=time.monotonic)
    collector = ScalerCollector(scaler)
    steps = {"scrape": _ms(options.scrape_interval), "rules": _ms(options.rule_interval),
             "scaler": _ms(interval)}
    for what, step in steps.items():
        if step <= 0:
            raise SimulationError(f"the {what} interval must be > 0")
    next_at = dict.fromkeys(steps, 0)
    horizon_ms, limit_ms = _ms(workload.horizon), _ms(workload.horizon + options.drain_limit)
    timeline: dict[str, list[float]] = {k: [] for k in (
        "times", "arrivals", "depth", "oldest_age", "desired", "running")}
    last_tick_ms, last_arrived = 0, 0
    failed, first_error, warmup, succeeded = 0, None, 0, False
    ups = downs = peak_desired = peak_running = 0
    # The production loop logs every change, and every failed query, per evaluation:
    # thousands of lines in a simulated day; the result counts failed evaluations instead.
    cycle_log = logging.getLogger("scaler.cycle")
    level = cycle_log.level
    cycle_log.setLevel(logging.ERROR)
    try:
        while True:
            now_ms = min(next_at.values())
            world.advance(now_ms / 1000)
            if next_at["scrape"] == now_ms:
                # The exporter's own health too: a rule with on_empty: zero reads it.
                families = [*queue_families([world.queue_snapshot()], epoch(now_ms)),
                            *exporter_families(0.0, True, {}),
                            *event_families(world.events_snapshot()),
                            *collector.collect()]
                series.add("scrape", start_ms + now_ms, _samples(families))
                next_at["scrape"] += steps["scrape"]
            if next_at["rules"] == now_ms:
                for rule in rules:
                    series.flush()  # a rule may read what the one before it recorded
                    try:
                        samples = client.query_samples(rule.expr, at=epoch(now_ms))
                    except QueryError as error:
                        raise SimulationError(f"recording rule {rule.record}: {error}") from None
                    series.add(f"rule:{rule.record}:{rule.expr}", start_ms + now_ms, (
                        ((("__name__", rule.record),
                          *sorted({**_without_name(s.labels), **rule.labels}.items())),
                         s.value)
                        for s in samples))
                next_at["rules"] += steps["rules"]
            if next_at["scaler"] != now_ms:
                continue
            next_at["scaler"] += steps["scaler"]
            series.flush()
            before = world.desired
            (outcome,) = scaler.run_once()
            state = scaler.states[service.name]
            if state.evaluation is None or state.evaluation.errors:
                failed += 1
                warmup += not succeeded
                first_error = first_error or (state.evaluation.errors[0][1] if state.evaluation
                                              else "; ".join(outcome.problems))
            else:
                succeeded = True
            if outcome.applied and outcome.after is not None:
                ups += outcome.after > before
                downs += outcome.after < before
            counts = world.counts()
            peak_desired = max(peak_desired, counts.desired)
            peak_running = max(peak_running, counts.running)
            dt = max(now_ms - last_tick_ms, 1) / 1000
            timeline["times"].append(epoch(now_ms))
            timeline["arrivals"].append((world.arrived - last_arrived) / dt if now_ms else 0.0)
            timeline["depth"].append(world.depth)
            timeline["oldest_age"].append(world.oldest_age())
            timeline["desired"].append(counts.desired)
            timeline["running"].append(counts.running)
            last_tick_ms, last_arrived = now_ms, world.arrived
            if progress is not None:
                progress(min(now_ms, horizon_ms) / 1000, workload.horizon)
            if now_ms >= limit_ms or (now_ms >= horizon_ms and world.idle):
                break
    finally:
        cycle_log.setLevel(level)
        scaler.close()
        client.close()
        writer.close()
    end = now_ms / 1000
    waits = wait_stats(workload.arrivals, world.started, end, options.slo)
    bound = lower_bound(workload.arrivals, workload.durations, concurrency=options.concurrency,
                        startup_mean=options.startup.mean, minimum=service.limits.min,
                        initial=initial, maximum=service.limits.max, slo=options.slo,
                        duration=end)
    return SimulationResult(
        service=service.name, workload=workload.description, start=workload.start,
        duration=end, tasks=len(workload.arrivals),
        unfinished=sum(1 for f in world.finished if math.isnan(f)), waits=waits,
        worker_seconds=world.worker_seconds(), bound=bound, scale_ups=ups, scale_downs=downs,
        peak_desired=peak_desired, peak_running=peak_running, requeued=world.requeued,
        failed_evaluations=failed, first_error=first_error, warmup_failures=warmup,
        series=SimulationSeries(**timeline),
    )
