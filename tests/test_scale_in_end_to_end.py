"""Scale-in without losing a task, end to end, on one machine.

A real Redis; the real exporter; a real Prometheus scraping it every second; the
scaler (the real CLI) with the local backend running real Celery workers (acks_late,
4 threads each) between 1 and 6 processes; 2,000 tasks of 0.05-0.5 s published in one
burst, the last 48 of 2-3 s. The local backend picks which workers stop and Celery's
warm shutdown finishes their tasks; ECS task protection is not in play here (no
ECS_AGENT_URI), it has its own tests. Every task records its id when it finishes.
The service must scale up to its maximum, scale in while the queue drains (stopping
workers that are running tasks), end at its minimum, and every task must finish
exactly once, with no worker process left behind once the scaler stops.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.services import PrometheusServer, RedisServer, alive, free_port, live_members, wait_for
from tests.workers import REPO

BIN = Path(sys.executable).parent
TASKS = 2000
QUEUE = "e2e"
MIN, MAX = 1, 6

CONFIG = """
prometheus: {{url: '{prometheus}', timeout: 2s}}
interval: 1s
services:
  - name: e2e
    backend:
      type: local
      command: {command}
      env: {{TQ_TEST_BROKER_URL: '{broker}', PYTHONPATH: '{repo}'}}
      cwd: '{repo}'
      ready_pattern: 'ready\\.'
      stop_timeout: 30s
    min: {min}
    max: {max}
    match_labels: {{queue: {queue}}}
    rules:
      - name: backlog
        type: per_worker
        query: sum by (queue) (taskqueue_queue_depth)
        target: 100
    behavior:
      tolerance: 0
      scale_up:
        policies: [{{type: workers, value: 6, period: 1s}}]
      scale_down:
        stabilization_window: 2s
        policies: [{{type: workers, value: 1, period: 2s}}]
"""

LINE = re.compile(r"^(?P<time>\S+ \S+) \w+ (?P<logger>[\w.]+): (?P<message>.*)$")
STARTED = re.compile(r"service=e2e started worker (?P<n>\d+) \(pid (?P<pid>\d+)\)")
STOPPING = re.compile(r"service=e2e stopping worker (?P<n>\d+) \(pid \d+\): SIGTERM")
CRASHED = re.compile(r"service=e2e worker (?P<n>\d+) exited unasked")
LONG_TAIL = 48  # the last tasks take 2-3 s: still running while the scale-in goes on
DECISION = re.compile(r"service=e2e desired=(?P<desired>\d+) .*? new=(?P<new>\d+) "
                      r"reason=(?P<reason>\w+)")


def events(log: Path, pattern: re.Pattern[str]) -> list[tuple[float, dict[str, str]]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        parts = LINE.match(line)
        match = pattern.search(parts["message"]) if parts else None
        if parts and match:
            when = datetime.strptime(parts["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((when, match.groupdict()))
    return found


def start(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})


@pytest.mark.integration
def test_burst_scale_up_and_scale_in_lose_no_task(
    tmp_path: Path, own_redis: RedisServer, make_prometheus: Callable[..., PrometheusServer],
) -> None:
    redis_server = own_redis.start()
    client = redis.Redis.from_url(redis_server.url)
    exporter_port = free_port()
    exporter = start([str(BIN / "taskqueue-exporter"), "--broker-url", redis_server.url,
                      "--queue", QUEUE, "--listen-address", "127.0.0.1",
                      "--port", str(exporter_port)], tmp_path / "exporter.log")
    prometheus = make_prometheus(targets=[f"127.0.0.1:{exporter_port}"], scrape_interval="1s")
    command = json.dumps([sys.executable, "-m", "celery", "-A", "tests.e2e_app", "worker",
                          "-P", "threads", "-c", "4", "-Q", QUEUE, "-n", "e2e-{worker}@%h",
                          "--without-heartbeat", "--without-gossip", "--without-mingle",
                          "-l", "info"])
    config = tmp_path / "scaler.yml"
    config.write_text(CONFIG.format(prometheus=prometheus.url, command=command,
                                    broker=redis_server.url, repo=REPO, min=MIN, max=MAX,
                                    queue=QUEUE))
    log = tmp_path / "scaler.log"
    scaler = start([str(BIN / "taskqueue-scaler"), "run", "--config", str(config),
                    "--port", "0", "--log-level", "debug"], log)
    producer = Celery("producer", broker=redis_server.url, set_as_current=False)
    try:
        # Idle: the scaler has brought the service to its minimum, and Prometheus sees
        # the empty queue (its first scrape comes ~5 s after start-up).
        wait_for(lambda: any(d["new"] == str(MIN) for _, d in events(log, DECISION)),
                 timeout=30, what="the scaler's first decisions")
        prometheus.wait_for_value(f'taskqueue_queue_depth{{queue="{QUEUE}"}}',
                                  lambda values: values == [0.0], timeout=30)

        rng = random.Random(7)
        ids = [f"task-{i:04d}" for i in range(TASKS)]
        with producer.connection_for_write() as connection:
            for i, task_id in enumerate(ids):
                low, high = (2.0, 3.0) if i >= TASKS - LONG_TAIL else (0.05, 0.5)
                producer.send_task("tests.e2e.work", (task_id, round(rng.uniform(low, high), 3)),
                                   queue=QUEUE, connection=connection)

        wait_for(lambda: client.llen("e2e:done") >= TASKS, timeout=100, interval=0.5,
                 what=f"{TASKS} tasks to finish")
        # Drained: back to the minimum, the others stopped.
        wait_for(lambda: [d["new"] for _, d in events(log, DECISION)][-1] == str(MIN)
                 and len(events(log, STARTED)) - len(events(log, STOPPING))
                 - len(events(log, CRASHED)) == MIN,
                 timeout=30, what="the scale-in back to the minimum")
    finally:
        scaler.send_signal(signal.SIGTERM)
        scaler_code = scaler.wait(timeout=60)
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=10)
        producer.close()

    done = Counter(value.decode() for value in client.lrange("e2e:done", 0, -1))
    lost = [i for i in ids if done[i] == 0]
    duplicated = {i: n for i, n in done.items() if n > 1}
    assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated)
    assert set(done) == set(ids)

    decisions = [(when, int(d["desired"]), int(d["new"])) for when, d in events(log, DECISION)]
    ups = [d for d in decisions if d[2] > d[1]]
    downs = [d for d in decisions if d[2] < d[1]]
    assert max(new for _, _, new in decisions) == MAX
    assert ups and downs

    # At least one worker was told to stop while it was running a task, which it finished.
    runs = [json.loads(r) for r in client.lrange("e2e:runs", 0, -1)]
    stops = events(log, STOPPING)
    busy_stops = [
        (when, stop["n"]) for when, stop in stops
        if any(run["worker"].startswith(f"e2e-{stop['n']}@") and run["start"] < when < run["end"]
               for run in runs)
    ]
    assert busy_stops, (stops, len(runs))

    # Stopping the scaler stopped its workers: no process of theirs is left.
    assert scaler_code == 0
    pids = [int(d["pid"]) for _, d in events(log, STARTED)]
    assert len(pids) >= MAX
    assert [p for p in pids if alive(p)] == []
    # Pool processes die by the group SIGKILL, delivered asynchronously.
    wait_for(lambda: [p for p in pids if live_members(p)] == [], timeout=5,
             what="the workers' pool processes to die")
    print(f"\nscale-ups {len(ups)}, scale-ins {len(downs)}, workers started {len(pids)}, "
          f"stopped while busy {len(busy_stops)}, lost {len(lost)}, duplicated {len(duplicated)}")
