"""`make demo`: the exporter and the scaler at work on one machine, no Docker.

    python -m demo.run [--duration S] [--summary FILE] [--keep]

Starts, on free ports in a temporary directory: redis-server, prometheus (with the
repository's alert and recording rules), the exporter, the scaler with the local backend
running real Celery workers of demo/app.py, and the bursty load of demo/load.py. Shows
each queue's depth, oldest age, workers and the scaler's last decision, live; stops
everything on Ctrl-C (a second Ctrl-C stops at once) or after --duration seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import redis
import requests
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from demo.app import QUEUES
from demo.configs import Ports, prometheus_config, scaler_config, service_name
from demo.stack import MARKER, Stack, StartError, find, free_ports
from demo.status import QueueRow, ServiceRow, Tracker, read_queues, read_scaler

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    # The venv's console scripts sit beside its python; `make demo` runs that python.
    path = BIN / name
    return str(path) if path.exists() else name


def _http_ok(url: str) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=1).status_code == 200


def start_all(stack: Stack, ports: Ports, duration: float | None,
              interrupted: Callable[[], bool]) -> None:
    directory = stack.directory
    start = functools.partial(stack.start, interrupted=interrupted)
    broker = f"redis://127.0.0.1:{ports.redis}/0"
    start("redis", [find("redis-server", "redis-server"), "--port", str(ports.redis),
                          "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(directory)],
                ready=lambda: bool(redis.Redis(port=ports.redis, socket_timeout=1).ping()))
    config = directory / "prometheus.yml"
    config.write_text(prometheus_config(ports, REPO / "alerts"))
    start("prometheus", [find("prometheus", "prometheus"), f"--config.file={config}",
                               f"--storage.tsdb.path={directory / 'prometheus-data'}",
                               f"--web.listen-address=127.0.0.1:{ports.prometheus}"],
                ready=_http_ok(f"http://127.0.0.1:{ports.prometheus}/-/ready"))
    queues = [arg for queue in QUEUES for arg in ("--queue", queue)]
    start("exporter", [_bin("taskqueue-exporter"), "--broker-url", broker,
                             "--listen-address", "127.0.0.1", "--port", str(ports.exporter),
                             *queues],
                ready=_http_ok(f"http://127.0.0.1:{ports.exporter}/healthz"))
    scaler_yml = directory / "scaler.yml"
    scaler_yml.write_text(scaler_config(ports, sys.executable, REPO, broker))
    # Its workers get 20 s to finish their tasks (stop_timeout); the scaler waits for them.
    start("scaler", [_bin("taskqueue-scaler"), "run", "--config", str(scaler_yml)],
                ready=_http_ok(f"http://127.0.0.1:{ports.scaler}/healthz"), stop_timeout=40)
    load = [sys.executable, "-m", "demo.load", "--broker-url", broker]
    if duration is not None:
        load += ["--duration", str(duration)]
    start("load", load, ready=lambda: True, env={"PYTHONPATH": str(REPO)}, cwd=REPO)


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def render(queues: dict[str, QueueRow], services: dict[str, ServiceRow], tracker: Tracker,
           elapsed: float, header: str) -> Group:
    table = Table(title=None, expand=False)
    for column in ("queue", "waiting", "unacked", "oldest age", "running tasks",
                   "workers online", "desired / running / pending", "last decision"):
        table.add_column(column, justify="left" if column in ("queue", "last decision")
                         else "right")
    for queue in QUEUES:
        row = queues.get(queue, QueueRow())
        service = services.get(service_name(queue))
        history = tracker.services.get(service_name(queue))
        counts = "-" if service is None else \
            f"{service.desired} / {service.running} / {service.pending}"
        decision = history.decision if history else None
        last = "-" if decision is None else \
            f"{decision.reason} ({decision.direction}) at {decision.at:.0f}s"
        table.add_row(queue, _fmt(row.depth), _fmt(row.unacked), _fmt(row.oldest_age, " s"),
                      _fmt(row.active), _fmt(row.workers), counts, last)
    return Group(Text(header), table, Text(f"{elapsed:.0f} s elapsed; Ctrl-C stops"))


def plain_line(queues: dict[str, QueueRow], services: dict[str, ServiceRow],
               elapsed: float) -> str:
    parts = []
    for queue in QUEUES:
        row = queues.get(queue, QueueRow())
        service = services.get(service_name(queue))
        desired = "-" if service is None else f"{service.desired}/{service.running}"
        parts.append(f"{queue}: waiting={_fmt(row.depth)} age={_fmt(row.oldest_age)}s "
                     f"workers(desired/running)={desired}")
    return f"[{elapsed:5.0f}s] " + "  ".join(parts)


def summary_lines(tracker: Tracker) -> list[str]:
    lines = []
    for name, history in sorted(tracker.services.items()):
        lines.append(f"{name}: workers {history.first} -> peak {history.peak} -> "
                     f"{history.last} ({history.ups} scale-ups, {history.downs} scale-downs)")
    return lines


class Interrupts:
    """First Ctrl-C (or SIGTERM): stop in order. Second: stop now."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds to run once everything is up (default: until Ctrl-C)")
    parser.add_argument("--summary", type=Path, help="write the closing summary here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    # soft_wrap: plain lines (no terminal) stay one line each, for logs and tests.
    console = Console(soft_wrap=True)
    interactive = console.is_terminal
    interrupts = Interrupts()
    # SIGHUP: the terminal closed. Children also get SIGTERM should the runner die
    # without stopping them (stack.py), but an orderly stop is better.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupts)

    directory = Path(tempfile.mkdtemp(prefix="taskqueue-demo-"))
    stack = Stack(directory, os.environ.get(MARKER) or uuid.uuid4().hex)
    ports = Ports(*free_ports(4))
    tracker = Tracker()
    failure: str | None = None
    prometheus = f"http://127.0.0.1:{ports.prometheus}"
    try:
        console.print(f"starting in {directory} ...")
        start_all(stack, ports, args.duration, interrupts.stop.is_set)
        header = (f"Prometheus: {prometheus}  (try queue:taskqueue_backlog:sum, "
                  f"taskqueue_scaler_desired_replicas)\n"
                  f"exporter: http://127.0.0.1:{ports.exporter}/metrics   "
                  f"scaler: http://127.0.0.1:{ports.scaler}/metrics   logs: {directory}")
        if not interactive:
            console.print(header)  # the live view shows it above its table
        failure = watch(stack, ports, tracker, args.duration, interrupts, console,
                        interactive, header)
    except StartError as error:
        # A Ctrl-C during start-up is a stop the user asked for, not a failure.
        failure = None if interrupts.stop.is_set() else str(error)
    finally:
        # From here a Ctrl-C means "hurry", whatever started the stop (time, a failure).
        interrupts.stop.set()
        console.print("stopping: load, scaler (its workers finish their tasks), exporter, "
                      "prometheus, redis ... (Ctrl-C: at once)")
        stack.stop(hurry=interrupts.hurry.is_set)
        killed, left = stack.sweep()
        if killed:
            console.print(f"killed {len(killed)} leftover processes: {killed}")
    if failure is None and not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        console.print(f"logs kept in {directory}")
    for line in summary_lines(tracker):
        console.print(line)
    if left:
        failure = failure or f"processes still running: {left}"
    else:
        console.print("stopped; nothing left running")
    if args.summary:
        args.summary.write_text(json.dumps({
            "services": {name: asdict(history) for name, history in tracker.services.items()},
            "leftovers": left, "killed": killed, "failure": failure}, indent=2))
    if failure:
        console.print(f"demo failed: {failure}", style="red", markup=False)
        return 1
    return 0


def watch(stack: Stack, ports: Ports, tracker: Tracker, duration: float | None,
          interrupts: Interrupts, console: Console, interactive: bool,
          header: str) -> str | None:
    """Refresh the view every second until the time is up, Ctrl-C, or a service dies."""
    session = requests.Session()
    prometheus = f"http://127.0.0.1:{ports.prometheus}"
    scaler = f"http://127.0.0.1:{ports.scaler}/metrics"
    started = time.monotonic()
    queues: dict[str, QueueRow] = {}
    services: dict[str, ServiceRow] = {}
    last_line = -10.0
    live = Live(console=console, refresh_per_second=4, transient=False) if interactive \
        else None
    try:
        if live:
            live.start()
        while not interrupts.stop.is_set():
            elapsed = time.monotonic() - started
            if duration is not None and elapsed >= duration:
                return None
            dead = stack.failed()
            if dead is not None:
                return f"{dead.name} exited with code {dead.process.returncode}:\n{dead.tail()}"
            try:
                queues = read_queues(prometheus, QUEUES, session)
                services = read_scaler(scaler, session)
                tracker.update(services, elapsed)
            except (requests.RequestException, ValueError, KeyError):
                pass  # a slow answer: show the last one
            if live:
                live.update(render(queues, services, tracker, elapsed, header))
            elif elapsed - last_line >= 5:
                console.print(plain_line(queues, services, elapsed), markup=False)
                last_line = elapsed
            interrupts.stop.wait(1.0)
        return None
    finally:
        if live:
            live.stop()


if __name__ == "__main__":
    sys.exit(main())
