"""The demo's generated configs: Prometheus' and the scaler's, for the ports of this run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from demo.app import QUEUES
from demo.stack import MARKER

EXPORTER_JOB = "taskqueue-exporter"
SCALER_JOB = "taskqueue-scaler"


@dataclass(frozen=True)
class Ports:
    redis: int
    prometheus: int
    exporter: int
    scaler: int


@dataclass(frozen=True)
class QueuePlan:
    """How the scaler treats one queue's worker service in the demo."""

    queue: str
    max: int
    throughput: str  # per worker: 4 threads over the tasks' mean duration
    drain_within: str


PLANS = (
    # images: 0.3-1.2 s tasks, 4 threads: about 5 a second per worker.
    QueuePlan("images", max=6, throughput="5/s", drain_within="12s"),
    # emails: 0.05-0.2 s tasks: about 30 a second per worker.
    QueuePlan("emails", max=4, throughput="30/s", drain_within="6s"),
)
assert tuple(plan.queue for plan in PLANS) == QUEUES


def service_name(queue: str) -> str:
    return f"demo-{queue}"


def prometheus_config(ports: Ports, alerts: Path) -> str:
    """Scrape both every second (the demo is short) and evaluate the repository's rules."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(alerts / "*.yml")],
        "scrape_configs": [
            {"job_name": EXPORTER_JOB,
             "static_configs": [{"targets": [f"127.0.0.1:{ports.exporter}"]}]},
            {"job_name": SCALER_JOB,
             "static_configs": [{"targets": [f"127.0.0.1:{ports.scaler}"]}]},
        ],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def scaler_config(ports: Ports, python: str, repo: Path, broker_url: str) -> str:
    """Two local-backend services, one per queue, with the rules the README explains.

    The backlog comes from the shared recording rule (waiting plus held by workers);
    the drain rule asks for the workers that clear it within `drain_within`, counting
    the seconds a new worker takes to start. No arrival rate: a rate window that holds a
    burst keeps asking for workers after the queue is empty. One rule only: a threshold
    rule holds the count between its bounds, which would keep a burst's workers.
    """
    services = "\n".join(_service(plan, python, repo, broker_url) for plan in PLANS)
    return f"""\
prometheus: {{url: "http://127.0.0.1:{ports.prometheus}", timeout: 2s}}
interval: 2s
listen_address: 127.0.0.1
port: {ports.scaler}
services:
{services}"""


def _service(plan: QueuePlan, python: str, repo: Path, broker_url: str) -> str:
    command = [python, "-m", "celery", "-A", "demo.app", "worker", "-Q", plan.queue,
               "-c", "4", "-P", "threads", "-E", "-n", f"{plan.queue}-{{worker}}@%h",
               "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    env = {"DEMO_BROKER_URL": broker_url, "PYTHONPATH": str(repo)}
    return f"""\
  - name: {service_name(plan.queue)}
    match_labels: {{queue: "{plan.queue}"}}
    backend:
      type: local
      command: {json.dumps(command)}
      env: {json.dumps(env)}
      cwd: {json.dumps(str(repo))}
      ready_pattern: 'ready\\.'
      stop_timeout: 20s
      pass_env: [{MARKER}]   # the demo's sweep finds every process by it
    min: 1
    max: {plan.max}
    rules:
      - name: drain
        type: drain
        query: queue:taskqueue_backlog:sum
        throughput: {plan.throughput}
        drain_within: {plan.drain_within}
        startup_delay: 3s
        on_empty: zero
    behavior:
      scale_down:
        stabilization_window: 10s
"""
