"""Benchmark one evaluation cycle of the scaler against a real Prometheus.

Starts a static metrics target (a thread) with three series for each of N queues,
a private Prometheus scraping it every second, and ECS in process (moto) with N
services in cluster "workers". The config is one `for_each` service definition
over the N queues with three rules each (per_worker, threshold, drain). With
--layout grouped (the default) each rule is one `sum by (queue)` query that every
service reads its own series from (match_labels), so a cycle sends 3 queries;
with --layout per-service each service has its own queries, 3 x N a cycle. The
services are read in DescribeServices batches of 10, 4 in flight. The scaler
runs with dry_run=True: ECS is only read, never updated.

Reported: cycle time (wall, `Scaler.run_once`) p50/p99 over --cycles cycles; within
a cycle, the query phase (first query sent to last answer) and the ECS read
(moto, in process, running while the queries are in flight); HTTP requests to
Prometheus and ECS API calls per cycle.

Run: .venv/bin/python bench/scaler_bench.py [--services N] [--cycles N]
     [--concurrency N] [--layout grouped|per-service] [--json PATH]

Exit 0 with a report (the target may be missed), 1 if a sanity check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

# The test suite's real-service helpers: the same Prometheus and scrape target the
# scaler's tests use.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import SanityError, percentile, run_benchmark, step
from scaler.prometheus import Sample
from tests.aws import FAKE_CREDENTIALS
from tests.services import MetricsTarget, PrometheusServer

TARGET_P99_MS = 1000.0
CLUSTER = "workers"
REGION = "us-east-1"  # tests.aws.REGION
SCRAPE_DEADLINE = 30.0
RULES_PER_SERVICE = 3
DESCRIBE_BATCH = 10  # scaler.ecs.DESCRIBE_BATCH


def queue_names(n: int) -> list[str]:
    return [f"q{i:03d}" for i in range(n)]


# --------------------------------------------------------------------------- metrics target


def exposition(queues: Sequence[str]) -> str:
    lines: list[str] = []
    for metric, kind in (("taskqueue_queue_depth", "gauge"), ("taskqueue_tasks_unacked", "gauge"),
                         ("taskqueue_oldest_task_age_seconds", "gauge")):
        lines += [f"# HELP {metric} benchmark data", f"# TYPE {metric} {kind}"]
        for i, queue in enumerate(queues):
            value = {"taskqueue_queue_depth": (i * 37) % 500,
                     "taskqueue_tasks_unacked": i % 7,
                     "taskqueue_oldest_task_age_seconds": (i * 13) % 120}[metric]
            lines.append(f'{metric}{{queue="{queue}",system="celery"}} {value}')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- prometheus


@contextlib.contextmanager
def running_prometheus(workdir: Path, target: str, expected_series: int) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        raise SanityError("prometheus is not installed (make system-deps installs it)")
    server = PrometheusServer(workdir, targets=[target]).start()
    try:
        server.wait_for_value("count(taskqueue_queue_depth)",
                              lambda values: values == [float(expected_series)],
                              timeout=SCRAPE_DEADLINE)
        yield server.url
    finally:
        server.stop()


# --------------------------------------------------------------------------- scaler config


def config_text(prometheus_url: str, queues: Sequence[str], concurrency: int,
                layout: str) -> str:
    if layout == "grouped":
        # One query per rule for every queue; each service reads its queue's series.
        selector = {"match_labels": {"queue": "{{ item }}"}}
        backlog = ("sum by (queue) (taskqueue_queue_depth) + "
                   "sum by (queue) (taskqueue_tasks_unacked)")
        age = "max by (queue) (taskqueue_oldest_task_age_seconds)"
        depth = "sum by (queue) (taskqueue_queue_depth)"
    else:
        selector = {}
        backlog = ('sum(taskqueue_queue_depth{queue="{{ item }}"}) + '
                   'sum(taskqueue_tasks_unacked{queue="{{ item }}"})')
        age = 'max(taskqueue_oldest_task_age_seconds{queue="{{ item }}"})'
        depth = 'sum(taskqueue_queue_depth{queue="{{ item }}"})'
    service = {
        "name": "worker-{{ item }}",
        "for_each": list(queues),
        "backend": {"type": "ecs", "cluster": CLUSTER, "service": "celery-{{ item }}",
                    "region": REGION},
        "min": 0,
        "max": 50,
        **selector,
        "rules": [
            {"name": "backlog", "type": "per_worker", "target": 10, "query": backlog},
            {"name": "age", "type": "threshold", "above": 60, "below": 5, "query": age},
            {"name": "drain", "type": "drain", "throughput": "2/min", "drain_within": "10m",
             "startup_delay": "1m", "query": depth},
        ],
    }
    return json.dumps({"prometheus": {"url": prometheus_url}, "interval": "15s",
                       "concurrency": concurrency, "services": [service]}, indent=2)


# --------------------------------------------------------------------------- measuring


class QueryTrace:
    """Wraps the query function: per cycle, first send and last answer, and failures."""

    def __init__(self, query: Callable[[str], Sequence[Sample]]) -> None:
        self._query = query
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.first: float | None = None
            self.last: float | None = None
            self.calls = 0
            self.failures: list[str] = []

    def __call__(self, promql: str) -> Sequence[Sample]:
        started = time.perf_counter()
        try:
            return self._query(promql)
        except Exception as error:
            with self._lock:
                self.failures.append(f"{promql}: {error}")
            raise
        finally:
            ended = time.perf_counter()
            with self._lock:
                self.calls += 1
                self.first = started if self.first is None else min(self.first, started)
                self.last = ended if self.last is None else max(self.last, ended)

    @property
    def span_ms(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return (self.last - self.first) * 1000


class Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.value += 1

    def take(self) -> int:
        with self._lock:
            value, self.value = self.value, 0
        return value


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    services: int
    layout: str
    rules_per_service: int
    cycles: int
    concurrency: int
    cpus: int
    cycle_ms: list[float] = field(default_factory=list)
    query_phase_ms: list[float] = field(default_factory=list)
    ecs_read_ms: list[float] = field(default_factory=list)
    http_requests: list[int] = field(default_factory=list)
    ecs_calls: list[int] = field(default_factory=list)
    distinct_queries: int = 0
    setup_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def p99_ok(self) -> bool:
        return percentile(self.cycle_ms, 99) < TARGET_P99_MS

    def as_json(self) -> dict[str, Any]:
        def stats(values: Sequence[float]) -> dict[str, Any]:
            return {"p50": percentile(values, 50), "p99": percentile(values, 99),
                    "samples": list(values)}

        plain = {k: v for k, v in asdict(self).items()
                 if k not in ("cycle_ms", "query_phase_ms", "ecs_read_ms")}
        return {**plain, "cycle_ms": stats(self.cycle_ms),
                "query_phase_ms": stats(self.query_phase_ms),
                "ecs_read_ms": stats(self.ecs_read_ms),
                "targets": {"p99_ms": TARGET_P99_MS, "p99_ok": self.p99_ok}}


def _pcts(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 50):.1f} ms  p99 {percentile(values, 99):.1f} ms"


def _per_cycle(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}..{high}"


def render(r: Report) -> str:
    verdict = "PASS" if r.p99_ok else "FAIL"
    return "\n".join([
        f"scaler benchmark: {r.services} services x {r.rules_per_service} rules, "
        f"{r.layout} queries ({r.distinct_queries} distinct), concurrency {r.concurrency}, "
        f"{r.cpus} CPUs, dry run",
        f"cycle time (run_once, wall, {r.cycles} cycles)  {_pcts(r.cycle_ms)}   "
        f"target p99 < {TARGET_P99_MS:.0f} ms: {verdict}",
        f"  query phase (first query sent .. last answer)  {_pcts(r.query_phase_ms)}",
        f"  ECS read (moto in process, overlaps the queries)  {_pcts(r.ecs_read_ms)}",
        f"HTTP requests to prometheus per cycle: {_per_cycle(r.http_requests)}",
        f"ECS API calls per cycle: {_per_cycle(r.ecs_calls)} "
        f"(DescribeServices, batches of {DESCRIBE_BATCH})",
        f"setup time (target, prometheus, moto services): {r.setup_seconds:.1f} s",
        f"total benchmark time: {r.total_seconds:.1f} s",
    ])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=200)
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--layout", choices=("grouped", "per-service"), default="grouped",
                   help="grouped: one `sum by (queue)` query per rule for every service; "
                        "per-service: each service's own queries (3 x services)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = p.parse_args(argv)
    if args.services < 1 or args.cycles < 1 or args.concurrency < 1:
        p.error("--services, --cycles and --concurrency must be >= 1")
    if args.services > 1000:
        p.error("--services must be <= 1000 (queue names are q000..q999)")
    return args


def run(args: argparse.Namespace, workdir: Path) -> Report:
    # Imported here so that the fake credentials are set before boto3 is loaded.
    from moto import mock_aws

    from scaler.config import parse_config
    from scaler.cycle import Fleet, Scaler
    from scaler.ecs import ecs_client
    from scaler.evaluate import queries_of
    from scaler.prometheus import PrometheusClient

    started = time.perf_counter()
    queues = queue_names(args.services)
    report = Report(services=args.services, layout=args.layout, rules_per_service=RULES_PER_SERVICE,
                    cycles=args.cycles, concurrency=args.concurrency,
                    cpus=len(os.sched_getaffinity(0)))
    step(f"starting a metrics target and prometheus for {len(queues)} queues")
    with contextlib.closing(MetricsTarget(exposition(queues))) as target, \
            running_prometheus(workdir, target.address, len(queues)) as url, mock_aws():
        config = parse_config(config_text(url, queues, args.concurrency, args.layout), {})
        if len(config.services) != args.services:
            raise SanityError(f"config has {len(config.services)} services")
        ecs = ecs_client(REGION)
        ecs.create_cluster(clusterName=CLUSTER)
        ecs.register_task_definition(
            family="worker",
            containerDefinitions=[{"name": "worker", "image": "busybox", "memory": 128}])
        step(f"creating {len(queues)} ECS services in moto")
        for queue in queues:
            ecs.create_service(cluster=CLUSTER, serviceName=f"celery-{queue}",
                               taskDefinition="worker", desiredCount=2)
        ecs_calls = Counter()
        ecs.meta.events.register("before-call.ecs.*", ecs_calls)

        # As scaler.cli._session: one pooled connection per concurrent query.
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.concurrency)
        session.mount("http://", adapter)
        http_requests = Counter()
        session.hooks["response"].append(http_requests)
        client = PrometheusClient(config.prometheus, session=session)
        trace = QueryTrace(client.query_samples)

        class TimedFleet(Fleet):
            last_read_ms = 0.0

            def read(self) -> Any:
                t0 = time.perf_counter()
                try:
                    return super().read()
                finally:
                    TimedFleet.last_read_ms = (time.perf_counter() - t0) * 1000

        fleet = TimedFleet(config.services, lambda region, endpoint: ecs)
        scaler = Scaler(config, trace, fleet, clock=time.time, timer=time.perf_counter,
                        dry_run=True)
        report.distinct_queries = len({q for s in config.services for q in queries_of(s)})
        report.setup_seconds = time.perf_counter() - started
        step(f"{args.cycles} cycles (plus one warm-up)")
        try:
            for cycle in range(args.cycles + 1):
                trace.reset()
                http_requests.take()
                ecs_calls.take()
                t0 = time.perf_counter()
                outcomes = scaler.run_once()
                elapsed = (time.perf_counter() - t0) * 1000
                if trace.failures:
                    raise SanityError(f"{len(trace.failures)} queries failed, e.g. "
                                      f"{trace.failures[0]}")
                no_data = [o for o in outcomes if o.before is None]
                if len(outcomes) != args.services or no_data:
                    raise SanityError(f"{len(no_data)} of {len(outcomes)} services had no "
                                      f"ECS counts (e.g. {no_data[:1]})")
                if any(o.applied for o in outcomes):
                    raise SanityError("a dry run changed a service")
                requests_sent, calls = http_requests.take(), ecs_calls.take()
                if cycle == 0:  # warm-up: connections opened, moto and imports warmed
                    continue
                report.cycle_ms.append(elapsed)
                report.query_phase_ms.append(trace.span_ms)
                report.ecs_read_ms.append(TimedFleet.last_read_ms)
                report.http_requests.append(requests_sent)
                report.ecs_calls.append(calls)
        finally:
            scaler.close()
            client.close()
            session.close()
    if set(report.http_requests) != {report.distinct_queries}:
        raise SanityError(f"HTTP requests per cycle {sorted(set(report.http_requests))}, "
                          f"expected {report.distinct_queries} (each distinct query once)")
    report.total_seconds = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.update(FAKE_CREDENTIALS)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECS",
                 "MOTO_ECS_SERVICE_RUNNING"):
        os.environ.pop(name, None)
    # The scaler logs each decision; at 200 services x N cycles that is noise here.
    logging.basicConfig(level=logging.ERROR)
    return run_benchmark("scaler_bench", lambda workdir: run(args, workdir), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
