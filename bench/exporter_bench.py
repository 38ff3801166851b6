"""Benchmark the exporter against a large Celery-on-Redis broker.

Starts a private redis-server, fills it with a Celery layout (priority_steps
0..9, binding sets, realistic kombu envelopes, an `unacked` hash), then
measures the real exporter:

* scrape time and peak RSS of the `taskqueue-exporter` CLI over HTTP, twice:
  with the queues left alone between scrapes, and with every sub-list's tail
  (its oldest message) replaced before each scrape, as busy workers do; the
  exporter reuses what it parsed of an unchanged tail, so the second is the
  worst case;
* Redis round trips per scrape, in-process, for the full queue count and for
  10 queues, to show that round trips do not grow with the number of queues.

Run: .venv/bin/python bench/exporter_bench.py [--queues N] [--messages N]
     [--unacked N] [--scrapes N] [--json PATH] [--profile]

Exit 0 with a report (targets may be missed), 1 if a sanity check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gzip
import io
import json
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

# The repository root, for the benchmarks' shared harness.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import SanityError, percentile, proc_status_kb, run_benchmark, step
from exporter.cli import build_collector
from exporter.config import parse_config

REPO = Path(__file__).resolve().parent.parent
EXPORTER_BIN = REPO / ".venv" / "bin" / "taskqueue-exporter"

PRIORITY_STEPS = tuple(range(10))
SEP = "\x06\x16"
BINDING_PREFIX = "_kombu.binding."
UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"
SMALL_QUEUES = 10
DEFAULT_HSCAN_BATCH = 1000  # exporter.celery_redis.DEFAULT_UNACKED_BATCH

TARGET_P99_MS = 250.0
TARGET_RSS_MB = 150.0

STARTUP_DEADLINE = 15.0
STOP_DEADLINE = 10.0
POLL_INTERVAL = 0.05
HTTP_TIMEOUT = 60.0

# Commands per pipeline while filling; with ~100 x 1 KB values per LPUSH that is ~10 MB.
FILL_PIPELINE_COMMANDS = 100
UNACKED_PIPELINE_ENTRIES = 2000

DEPTH_METRIC = "taskqueue_queue_depth"
UNACKED_METRIC = "taskqueue_tasks_unacked"
DURATION_METRIC = "taskqueue_exporter_scrape_duration_seconds"
SUCCESS_METRIC = "taskqueue_exporter_scrape_success"


# --------------------------------------------------------------------------- messages

# A real kombu envelope of `app1.add(1, 2)`; "@name@" marks a per-message field.
_ENVELOPE: dict[str, Any] = {
    "body": "W1sxLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWlu"
    "IjogbnVsbCwgImNob3JkIjogbnVsbH1d",
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": {
        "lang": "py",
        "task": "app1.add",
        "id": "@task_id@",
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": "@task_id@",
        "parent_id": None,
        "argsrepr": "(1, 2)",
        "kwargsrepr": "{}",
        "origin": "gen5808@vm",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "taskqueue_published_at": "@published_at@",
    },
    "properties": {
        "correlation_id": "@task_id@",
        "reply_to": "@reply_to@",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": "@queue@"},
        "priority": "@priority@",
        "body_encoding": "base64",
        "delivery_tag": "@delivery_tag@",
    },
}
_NUMERIC_FIELDS = frozenset({"priority", "published_at"})
_FIELD = re.compile(r'"@(\w+)@"')


@dataclass(frozen=True)
class Template:
    """A %-format string of the envelope's JSON and the field each %s stands for."""

    fmt: str
    fields: tuple[str, ...]

    @classmethod
    def of(cls, document: dict[str, Any]) -> Template:
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            names.append(match.group(1))
            return "%s" if match.group(1) in _NUMERIC_FIELDS else '"%s"'

        text = json.dumps(document).replace("%", "%%")
        return cls(_FIELD.sub(placeholder, text), tuple(names))

    def render(self, values: dict[str, str]) -> str:
        """Values must be JSON-safe as they are (ids, queue names, numbers)."""
        return self.fmt % tuple(values[name] for name in self.fields)


ENVELOPE = Template.of(_ENVELOPE)


class IdSource:
    """Cheap unique uuid-shaped ids: a counter in front of a per-run random tail."""

    def __init__(self) -> None:
        self._tail = str(uuid.uuid4())[8:]
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self._next:08x}{self._tail}"


# --------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class DataSet:
    queues: int
    messages: int
    unacked: int

    @property
    def queue_names(self) -> list[str]:
        width = max(4, len(str(self.queues - 1)))
        return [f"q{i:0{width}d}" for i in range(self.queues)]


def sublist_key(queue: str, priority: int) -> str:
    return f"{queue}{SEP}{priority}" if priority else queue


def binding_member(queue: str) -> str:
    return f"{queue}{SEP}{SEP}{queue}"


@dataclass
class Filler:
    client: redis.Redis
    published_from: float
    published_span: float
    total: int
    ids: IdSource = field(default_factory=IdSource)
    reply_to: str = field(default_factory=lambda: str(uuid.uuid4()))
    written: int = 0

    def envelope(self, queue: str, priority: int) -> str:
        stamp = self.published_from + self.published_span * self.written / max(1, self.total)
        self.written += 1
        task_id = self.ids()
        return ENVELOPE.render({
            "task_id": task_id,
            "reply_to": self.reply_to,
            "queue": queue,
            "priority": str(priority),
            "delivery_tag": self.ids(),
            "published_at": f"{stamp:.6f}",
        })


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def fill_bindings(client: redis.Redis, queues: Sequence[str]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.sadd(BINDING_PREFIX + queue, binding_member(queue))
        pipe.execute()


def fill_lists(filler: Filler, queues: Sequence[str], messages: int) -> None:
    sublists = [(q, p) for q in queues for p in PRIORITY_STEPS]
    counts = _split(messages, len(sublists))
    for batch in _batched(list(zip(sublists, counts, strict=True)), FILL_PIPELINE_COMMANDS):
        with filler.client.pipeline(transaction=False) as pipe:
            for (queue, priority), count in batch:
                if count:
                    values = [filler.envelope(queue, priority) for _ in range(count)]
                    pipe.lpush(sublist_key(queue, priority), *values)
            pipe.execute()


def fill_unacked(filler: Filler, queues: Sequence[str], unacked: int) -> None:
    now = time.time()
    entries = [queues[i % len(queues)] for i in range(unacked)]
    for batch in _batched(entries, UNACKED_PIPELINE_ENTRIES):
        with filler.client.pipeline(transaction=False) as pipe:
            for queue in batch:
                tag = filler.ids()
                # kombu: dumps([message._raw, exchange, routing_key])
                pipe.hset(UNACKED_HASH, tag, f'[{filler.envelope(queue, 0)}, "", "{queue}"]')
                pipe.zadd(UNACKED_INDEX, {tag: now})
            pipe.execute()


def fill(client: redis.Redis, data: DataSet) -> float:
    """Empty the database and store `data`; returns the seconds it took."""
    started = time.perf_counter()
    client.flushall()
    queues = data.queue_names
    # Published between 5 and 2 minutes ago, oldest pushed first (at the tail).
    filler = Filler(client, time.time() - 300, 180, data.messages + data.unacked)
    fill_bindings(client, queues)
    fill_lists(filler, queues, data.messages)
    fill_unacked(filler, queues, data.unacked)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes],
               log: Path, deadline: float = STARTUP_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"{what} not ready after {deadline:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is stopped (SIGTERM, then SIGKILL) whatever happens."""
    with log.open("wb") as out:
        # Own session: a Ctrl-C reaches only the benchmark, which then stops the child.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def _answers_ping(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """A private redis-server without persistence; yields its port."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not on PATH")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no"]
    log = workdir / "redis.log"
    with running(argv, log) as proc:
        wait_until(lambda: _answers_ping(port), "redis-server", proc, log)
        yield port


def _http_get(url: str) -> bytes:
    # As Prometheus asks: the exporter compresses, and that is part of the scrape.
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        body = bytes(response.read())
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body


def _answers_healthz(url: str) -> bool:
    try:
        return _http_get(url) == b"ok\n"
    except (urllib.error.URLError, OSError):
        return False


def exporter_argv(redis_port: int) -> list[str]:
    """Flags shared by the CLI run and the in-process collector."""
    return [
        "--broker-url", f"redis://127.0.0.1:{redis_port}/0",
        "--broker-transport-option", "priority_steps=" + ",".join(map(str, PRIORITY_STEPS)),
        "--discovery-interval", "30",
    ]


@contextlib.contextmanager
def exporter(workdir: Path, redis_port: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The real CLI; yields the process and its base URL."""
    port = free_port()
    argv = [str(EXPORTER_BIN), *exporter_argv(redis_port),
            "--port", str(port), "--listen-address", "127.0.0.1"]
    base = f"http://127.0.0.1:{port}"
    log = workdir / "exporter.log"
    with running(argv, log) as proc:
        wait_until(lambda: _answers_healthz(base + "/healthz"), "exporter", proc, log)
        yield proc, base


# --------------------------------------------------------------------------- metrics


def totals(families: Iterable[Metric]) -> dict[str, float]:
    """Sum of every sample's value, by sample name."""
    sums: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def check(sums: dict[str, float], data: DataSet, where: str) -> None:
    expected = {SUCCESS_METRIC: 1, DEPTH_METRIC: data.messages, UNACKED_METRIC: data.unacked}
    for name, value in expected.items():
        got = sums.get(name)
        if got != value:
            raise SanityError(f"{where}: sum of {name} is {got}, expected {value}")


# --------------------------------------------------------------------------- HTTP scrapes


@dataclass
class HttpResult:
    wall_ms: list[float]
    broker_ms: list[float]
    peak_rss_mb: float
    rss_mb: float


def rotate_tails(client: redis.Redis, data: DataSet) -> None:
    """Give every sub-list a new tail without changing any depth.

    LMOVE key key RIGHT LEFT moves the oldest message to the newest end, so the
    next scrape meets a message it has not parsed at every sub-list.
    """
    with client.pipeline(transaction=False) as pipe:
        for queue in data.queue_names:
            for priority in PRIORITY_STEPS:
                key = sublist_key(queue, priority)
                pipe.lmove(key, key, "RIGHT", "LEFT")
        pipe.execute()


def scrape_over_http(workdir: Path, redis_port: int, data: DataSet, scrapes: int,
                     before_each: Callable[[], None] | None = None) -> HttpResult:
    wall: list[float] = []
    broker: list[float] = []
    with exporter(workdir, redis_port) as (proc, base):
        url = base + "/metrics"
        check(totals(text_string_to_metric_families(_http_get(url).decode())), data, "warm-up")
        for i in range(scrapes):
            if before_each is not None:
                before_each()
            started = time.perf_counter()
            body = _http_get(url)
            wall.append((time.perf_counter() - started) * 1000)
            sums = totals(text_string_to_metric_families(body.decode()))
            check(sums, data, f"HTTP scrape {i + 1}")
            broker.append(sums[DURATION_METRIC] * 1000)
        peak = proc_status_kb(proc.pid, "VmHWM") / 1024
        rss = proc_status_kb(proc.pid, "VmRSS") / 1024
    return HttpResult(wall, broker, peak, rss)


# --------------------------------------------------------------------------- round trips


def command_name(packed: Any) -> str:
    """The first command's name in a packed RESP request (str, bytes or list of chunks)."""
    first = packed if isinstance(packed, str | bytes) else packed[0]
    head = first.encode() if isinstance(first, str) else bytes(first[:64])
    # *<argc>\r\n$<len>\r\n<NAME>\r\n...
    return head.split(b"\r\n")[2].decode().upper()


class CountingConnection(redis.connection.Connection):
    """Records one entry per round trip: each call sends one command or one whole pipeline."""

    def __init__(self, *, round_trips: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_trips = round_trips

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.round_trips.append(command_name(command))
        super().send_packed_command(command, check_health)


@dataclass
class RoundTrips:
    queues: int
    total: int
    hscan: int
    by_command: dict[str, int]


def count_round_trips(redis_port: int, data: DataSet) -> RoundTrips:
    """Round trips of one in-process scrape, after a warm-up that connects and discovers."""
    trips: list[str] = []
    pool = redis.ConnectionPool(connection_class=CountingConnection, host="127.0.0.1",
                                port=redis_port, round_trips=trips)
    client = redis.Redis(connection_pool=pool)
    try:
        collector = build_collector(parse_config(exporter_argv(redis_port), {}), client)
        check(totals(collector.collect()), data, f"in-process warm-up, {data.queues} queues")
        trips.clear()
        families = list(collector.collect())
        counted = list(trips)
        check(totals(families), data, f"in-process scrape, {data.queues} queues")
    finally:
        client.close()
        pool.disconnect()
    by_command = Counter(counted)
    return RoundTrips(data.queues, len(counted), by_command["HSCAN"], dict(by_command))


def profile_scrape(redis_port: int, top: int = 20) -> str:
    """cProfile of one in-process scrape (after a warm-up), top entries by own time."""
    client = redis.Redis(port=redis_port)
    try:
        collector = build_collector(parse_config(exporter_argv(redis_port), {}), client)
        list(collector.collect())
        profiler = cProfile.Profile()
        profiler.runcall(lambda: list(collector.collect()))
    finally:
        client.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    queues: int
    priority_steps: int
    messages: int
    unacked: int
    scrapes: int
    fill_seconds: float
    small_fill_seconds: float
    http: HttpResult
    churned: HttpResult
    round_trips: list[RoundTrips]
    total_seconds: float = 0.0

    @property
    def p99_ok(self) -> bool:
        return all(percentile(h.wall_ms, 99) < TARGET_P99_MS for h in (self.http, self.churned))

    @property
    def round_trips_ok(self) -> bool:
        # The HSCAN batches follow the unacked hash (same size in both data sets);
        # HSCAN's COUNT is a hint, so their number may differ by one with the
        # hash's bucket layout. Every other round trip must not move at all.
        others = {t.total - t.hscan for t in self.round_trips}
        hscans = [t.hscan for t in self.round_trips]
        return len(others) == 1 and max(hscans) - min(hscans) <= 1

    @property
    def rss_ok(self) -> bool:
        return max(self.http.peak_rss_mb, self.churned.peak_rss_mb) < TARGET_RSS_MB

    def as_json(self) -> dict[str, Any]:
        def timings(h: HttpResult) -> dict[str, Any]:
            return {
                "scrape_wall_ms": {"p50": percentile(h.wall_ms, 50),
                                   "p99": percentile(h.wall_ms, 99), "samples": h.wall_ms},
                "broker_read_ms": {"p50": percentile(h.broker_ms, 50),
                                   "p99": percentile(h.broker_ms, 99), "samples": h.broker_ms},
                "peak_rss_mb": h.peak_rss_mb,
                "rss_after_scrapes_mb": h.rss_mb,
            }

        return {
            **{k: v for k, v in asdict(self).items() if k not in ("http", "churned")},
            "tails_unchanged": timings(self.http),
            "tails_changed": timings(self.churned),
            "targets": {"p99_ms": TARGET_P99_MS, "rss_mb": TARGET_RSS_MB,
                        "p99_ok": self.p99_ok, "round_trips_ok": self.round_trips_ok,
                        "rss_ok": self.rss_ok},
        }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _trips_line(t: RoundTrips) -> str:
    rest = ", ".join(f"{n} {name}" for name, n in sorted(t.by_command.items()) if name != "HSCAN")
    return (f"  {t.queues:>5} queues: {t.total:>3} round trips = {t.hscan} HSCAN batches "
            f"(unacked hash, batch {DEFAULT_HSCAN_BATCH}) + {t.total - t.hscan} other "
            f"(by first command: {rest})")


def _timing_lines(what: str, h: HttpResult, scrapes: int) -> list[str]:
    return [
        f"scrape time, {what} (HTTP, wall, {scrapes} scrapes)  "
        f"p50 {percentile(h.wall_ms, 50):.1f} ms  p99 {percentile(h.wall_ms, 99):.1f} ms   "
        f"target p99 < {TARGET_P99_MS:.0f} ms: "
        f"{_verdict(percentile(h.wall_ms, 99) < TARGET_P99_MS)}",
        f"  broker read time (self-reported)  p50 {percentile(h.broker_ms, 50):.1f} ms  "
        f"p99 {percentile(h.broker_ms, 99):.1f} ms",
    ]


def render(report: Report) -> str:
    small = report.round_trips[-1].queues if len(report.round_trips) > 1 else "-"
    counts = ", ".join(f"{t.queues} queues {t.total}" for t in report.round_trips)
    lines = [
        f"exporter benchmark: {report.queues} queues x {report.priority_steps} priority steps, "
        f"{report.messages} messages, {report.unacked} unacked",
        f"fill time: {report.fill_seconds:.1f} s ({report.queues} queues), "
        f"{report.small_fill_seconds:.1f} s ({small} queues)",
        *_timing_lines("tails unchanged", report.http, report.scrapes),
        *_timing_lines("every tail changed before each scrape", report.churned,
                       report.scrapes),
        f"redis round trips per scrape: {counts}   "
        f"(target: independent of queue count) {_verdict(report.round_trips_ok)}",
        "  (non-HSCAN round trips must be equal; HSCAN batches follow the unacked hash, +-1)",
        *(_trips_line(t) for t in report.round_trips),
        f"exporter peak RSS {max(report.http.peak_rss_mb, report.churned.peak_rss_mb):.1f} MB "
        f"(RSS after scrapes {max(report.http.rss_mb, report.churned.rss_mb):.1f} MB)   "
        f"target < {TARGET_RSS_MB:.0f} MB: {_verdict(report.rss_ok)}",
        f"total benchmark time: {report.total_seconds:.1f} s",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queues", type=int, default=1000)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--unacked", type=int, default=10_000)
    p.add_argument("--scrapes", type=int, default=50)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    p.add_argument("--profile", action="store_true",
                   help="print a cProfile of one in-process scrape of the big data set")
    args = p.parse_args(argv)
    if args.queues < 1 or args.messages < 0 or args.unacked < 0 or args.scrapes < 1:
        p.error("--queues and --scrapes must be >= 1, --messages and --unacked >= 0")
    return args


def run(args: argparse.Namespace, workdir: Path) -> Report:
    started = time.perf_counter()
    big = DataSet(args.queues, args.messages, args.unacked)
    small_queues = min(SMALL_QUEUES, args.queues)
    small = DataSet(small_queues, args.messages * small_queues // args.queues, args.unacked)
    with redis_server(workdir) as port:
        client = redis.Redis(port=port)
        step(f"filling {big.queues} queues, {big.messages} messages, {big.unacked} unacked")
        fill_seconds = fill(client, big)
        step(f"filled in {fill_seconds:.1f} s; counting round trips")
        trips = [count_round_trips(port, big)]
        if args.profile:
            print(profile_scrape(port))
        step(f"{args.scrapes} HTTP scrapes of the exporter")
        http = scrape_over_http(workdir, port, big, args.scrapes)
        step(f"{args.scrapes} HTTP scrapes, every tail changed before each")
        churned = scrape_over_http(workdir, port, big, args.scrapes,
                                   before_each=lambda: rotate_tails(client, big))
        step(f"refilling with {small.queues} queues, {small.messages} messages")
        small_fill = fill(client, small)
        trips.append(count_round_trips(port, small))
        client.close()
    return Report(
        queues=big.queues, priority_steps=len(PRIORITY_STEPS), messages=big.messages,
        unacked=big.unacked, scrapes=args.scrapes, fill_seconds=fill_seconds,
        small_fill_seconds=small_fill, http=http, churned=churned, round_trips=trips,
        total_seconds=time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.access(EXPORTER_BIN, os.X_OK):
        print(f"exporter_bench: {EXPORTER_BIN} not found; install the package into .venv",
              file=sys.stderr)
        return 1
    return run_benchmark("exporter_bench", lambda workdir: run(args, workdir), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
