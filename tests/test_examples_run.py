"""Every shipped example config does its job when run, and the commands in its header
work as written.

Each example is run as shipped; where it names an address of the user's (Prometheus on
:9090, Redis on :6379, an ECS endpoint), the test puts the address of its own real
service in that one place, and checks that the replacement happened exactly once, so
nothing else of the file is changed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.celery_app import create_app
from tests.scrape import value
from tests.services import (
    SCALER,
    Exporter,
    MetricsTarget,
    PrometheusServer,
    RedisServer,
    ScalerProcess,
    free_port,
    require,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not in the example exactly once"
    return text.replace(old, new)


def header_commands(path: Path) -> list[str]:
    """The `taskqueue-scaler ...` command lines of the file's header comment, joined where
    they continue with a backslash."""
    commands, current = [], ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        text = re.sub(r"^[A-Z][\w ]*:\s+", "", text)  # "Validate with:  taskqueue-scaler ..."
        if current:
            current += " " + text.rstrip("\\").strip()
        elif text.startswith("taskqueue-scaler "):
            current = text.rstrip("\\").strip()
        if current and not text.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def shell(command: str, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "taskqueue-scaler"
    return subprocess.run([SCALER, *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory where `examples/...` is this repository's examples, as in a clone."""
    (tmp_path / "examples").symlink_to(EXAMPLES)
    return tmp_path


# --- examples/scaler.yml: three ECS services, one grouped query per rule -------------------


QUEUES = """\
taskqueue_queue_depth{{queue="default",system="celery"}} {default}
taskqueue_queue_depth{{queue="emails",system="celery"}} 0
taskqueue_queue_depth{{queue="reports",system="celery"}} 30
taskqueue_tasks_unacked{{queue="default",system="celery"}} 20
taskqueue_tasks_unacked{{queue="emails",system="celery"}} 0
taskqueue_tasks_unacked{{queue="reports",system="celery"}} 8
taskqueue_oldest_task_age_seconds{{queue="default",system="celery"}} 20
taskqueue_oldest_task_age_seconds{{queue="emails",system="celery"}} 0
taskqueue_oldest_task_age_seconds{{queue="reports",system="celery"}} 90
"""


def test_the_ecs_example_scales_each_queues_service(
    workdir: Path, moto_ecs: tuple[str, Any], make_prometheus: Callable[..., PrometheusServer],
) -> None:
    moto, _ = moto_ecs
    from scaler.ecs import ecs_client
    from tests.aws import create_service, desired_count, prepare

    # The example's cluster and region, in moto.
    ecs = ecs_client("eu-west-1", endpoint_url=moto, max_attempts=1)
    prepare(ecs, "production")
    for queue in ("default", "emails", "reports"):
        create_service(ecs, f"celery-worker-{queue}", 1, cluster="production")
    target = MetricsTarget(QUEUES.format(default=100))
    try:
        prometheus = make_prometheus(targets=[target.address])
        prometheus.wait_for_value("count(taskqueue_oldest_task_age_seconds)",
                                  lambda v: v == [3.0], timeout=15)
        path = EXAMPLES / "scaler.yml"
        text = replaced(path.read_text(), "url: http://prometheus:9090",
                        f"url: {prometheus.url}")
        text = replaced(text, "# endpoint_url: http://localhost:5000",
                        f"endpoint_url: {moto}")
        config = workdir / "scaler.yml"
        config.write_text(text)
        # The header's commands, as written.
        commands = header_commands(path)
        assert commands == ["taskqueue-scaler check-config examples/scaler.yml",
                            "taskqueue-scaler run --config examples/scaler.yml --dry-run"]
        checked = shell(commands[0], workdir)
        assert (checked.returncode, checked.stdout) == (0, (
            "examples/scaler.yml: ok, 3 services: celery-default, celery-emails, "
            "celery-reports\n"))
        # The dry run, on the test's Prometheus and moto, for one evaluation.
        dry = shell(commands[1].replace("examples/scaler.yml", str(config)) + " --once "
                    "--port 0", workdir)
        # default: backlog (100 + 20) / 20 = 6; drain: 100 tasks at 2/min per worker within
        # 10 min, none running yet (moto's task is pending), a minute of start-up:
        # ceil(100 / (2/60 x 540)) = 6; the age rule holds while a task is pending.
        # max(+100 %, +4) per 15 s from 1 allows 5. emails: nothing waits, min 1.
        # reports: (30 + 8) / 5 = 8, allowed 5.
        assert (dry.returncode, dry.stdout) == (0, (
            "celery-default: 1 -> 5 (ScaleUpLimited, not set: dry run)\n"
            "celery-emails: 1 (unchanged, AtMin)\n"
            "celery-reports: 1 -> 5 (ScaleUpLimited, not set: dry run)\n")), dry.stderr[-2000:]
        assert "rules=[backlog=120->6 drain=100->6 age=20->1]" in dry.stderr
        done = shell(f"taskqueue-scaler run --config {config} --once --port 0", workdir)
        assert done.returncode == 0, done.stderr[-2000:]
        assert [desired_count(ecs, f"celery-worker-{q}", cluster="production")
                for q in ("default", "emails", "reports")] == [5, 1, 5]
    finally:
        target.close()


# --- examples/scaler-recommended.yml: the simulate command of its header --------------------


def test_the_recommended_example_meets_its_objective_in_its_own_simulation(
    workdir: Path,
) -> None:
    require("prometheus")
    path = EXAMPLES / "scaler-recommended.yml"
    (command,) = header_commands(path)
    assert command.startswith("taskqueue-scaler simulate --config examples/scaler-recommended.yml")
    result = shell(command, workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^waited > 5m00s\s+0\.\d\d%$", result.stdout, re.M), result.stdout
    assert (workdir / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "failed evaluations" not in result.stdout


# --- examples/scaler-local.yml: real Celery workers on this machine -----------------------------

APP = """\
from celery import Celery

app = Celery("app")  # the broker from CELERY_BROKER_URL, which the example sets


@app.task(name="app.slow")
def slow() -> None:
    import time
    time.sleep(0.2)
"""


def test_the_local_example_runs_celery_workers_that_drain_a_backlog(
    workdir: Path, own_redis: RedisServer, make_prometheus: Callable[..., PrometheusServer],
) -> None:
    own_redis.start()
    (workdir / "app.py").write_text(APP)
    exporter = Exporter(workdir, "--broker-url", own_redis.url, "--queue", "default",
                        "--queue", "emails", "--no-events")
    prometheus = make_prometheus(jobs={"taskqueue-exporter": [f"127.0.0.1:{exporter.port}"]})
    text = replaced((EXAMPLES / "scaler-local.yml").read_text(), "url: http://127.0.0.1:9090",
                    f"url: {prometheus.url}")
    text = replaced(text, '"redis://127.0.0.1:6379/0"', f'"{own_redis.url}"')
    config = workdir / "scaler-local.yml"
    config.write_text(text)
    producer = create_app(own_redis.url)
    scaler = None
    try:
        # From the app's directory, with `celery` on the PATH, as the example says.
        scaler = ScalerProcess(config, free_port(), cwd=workdir,
                               env={"PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
        # Each service's first worker becomes ready: Celery says so at INFO.
        wait_for(lambda: all(value(scaler.metrics(), "taskqueue_scaler_current_replicas",
                                   service=f"local-{q}", state="running") == 1
                             for q in ("default", "emails")),
                 timeout=60, what="one running worker per service")
        for _ in range(200):
            producer.send_task("app.slow", queue="default")
        # 200 waiting tasks at 40 per worker: more workers; they drain the queue.
        wait_for(lambda: (value(scaler.metrics(), "taskqueue_scaler_current_replicas",
                                service="local-default", state="running") or 0) >= 3,
                 timeout=60, what="the backlog to bring up more workers")
        client = own_redis.client()
        wait_for(lambda: client.llen("default") == 0, timeout=120,
                 what="the workers to drain the queue")
    finally:
        code = scaler.stop() if scaler is not None else 0
        exporter.stop()
    assert code == 0
    log = scaler.text()
    assert "service=local-default started worker 2" in log
    assert "exited unasked" not in log, log[-3000:]
