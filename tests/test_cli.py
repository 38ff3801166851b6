"""The real `taskqueue-exporter` process: start-up errors, HTTP endpoints, Redis restarts."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from exporter import metric_names as m
from tests.celery_app import create_app
from tests.scrape import value
from tests.services import (
    EXPORTER,
    Exporter,
    RedisServer,
    free_port,
    get,
    require,
    wait_for,
)

PASSWORD = "s3cret-Pa55"


def run_exporter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXPORTER, *args], capture_output=True, text=True, timeout=30)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskqueue-exporter: error: ")
    return lines[0]


def test_serves_metrics_health_and_a_landing_page(redis_server, redis_client, tmp_path):
    app = create_app(redis_server.url)
    app.tasks["tests.add"].apply_async((1, 2))
    app.close()
    exporter = Exporter(tmp_path, "--broker-url", redis_server.url)
    try:
        samples = exporter.scrape()
        assert value(samples, m.QUEUE_DEPTH.name, system="celery", queue="celery") == 1
        assert value(samples, m.SCRAPE_SUCCESS.name) == 1
        assert get(exporter.url("/healthz")) == (200, "ok\n")
        assert "/metrics" in get(exporter.url("/"))[1]
        assert get(exporter.url("/nope"))[0] == 404
    finally:
        assert exporter.stop() == 0


def test_metrics_pass_promtool_lint(redis_server, redis_client, tmp_path):
    promtool = require("promtool")
    app = create_app(redis_server.url)
    app.tasks["tests.add"].apply_async((1, 2))
    app.close()
    exporter = Exporter(tmp_path, "--broker-url", redis_server.url, "--queue", "rq:jobs")
    try:
        text = get(exporter.url("/metrics"))[1]
    finally:
        exporter.stop()
    assert "taskqueue_queue_depth{" in text
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout + lint.stderr == ""


def test_flags_from_environment(redis_server, redis_client, tmp_path):
    exporter = Exporter(tmp_path, env={
        "TASKQUEUE_EXPORTER_BROKER_URL": redis_server.url,
        "TASKQUEUE_EXPORTER_QUEUE": "emails rq:reports",
        "TASKQUEUE_EXPORTER_NO_DISCOVERY": "true",
    })
    try:
        samples = exporter.scrape()
    finally:
        exporter.stop()
    assert value(samples, m.QUEUE_DEPTH.name, system="celery", queue="emails") == 0
    assert value(samples, m.QUEUE_DEPTH.name, system="rq", queue="reports") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker-url", "amqp://guest:guest@localhost//"],
         "--queue is required for RabbitMQ without --rabbitmq-management-url"),
        (["--broker-url", "http://localhost:6379"],
         "--broker-url: scheme must be one of redis, rediss, unix, amqp, amqps, pyamqp "
         "(got 'http') (see --help)"),
        (["--broker-url", "redis://127.0.0.1:6379", "--port", "0"], "--port: must be between"),
        ([], "--broker-url is required"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message):
    assert message in one_line_error(run_exporter(*args))


def test_unreachable_broker_is_a_one_line_error():
    port = free_port()
    line = one_line_error(run_exporter("--broker-url", f"redis://:{PASSWORD}@127.0.0.1:{port}/0"))
    assert f"cannot connect to the broker at redis://:***@127.0.0.1:{port}/0" in line
    assert PASSWORD not in line


def test_wrong_password_is_a_one_line_error_without_the_password(own_redis: RedisServer):
    own_redis.password = PASSWORD
    own_redis.start()
    wrong = f"redis://:not-{PASSWORD}@127.0.0.1:{own_redis.port}/0"
    line = one_line_error(run_exporter("--broker-url", wrong))
    assert "cannot connect to the broker" in line
    assert PASSWORD not in line
    line = one_line_error(run_exporter("--broker-url", f"redis://127.0.0.1:{own_redis.port}/0"))
    assert "cannot connect to the broker" in line


def test_port_in_use_is_a_one_line_error(redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_exporter(
            "--broker-url", redis_server.url, "--listen-address", "127.0.0.1",
            "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line


def test_survives_a_redis_restart_and_never_shows_the_password(own_redis, tmp_path):
    own_redis.password = PASSWORD
    own_redis.start()
    exporter = Exporter(tmp_path, "--broker-url", own_redis.url, "--queue", "default",
                        "--log-level", "debug")
    try:
        assert value(exporter.scrape(), m.SCRAPE_SUCCESS.name) == 1
        own_redis.stop()
        down = wait_for(lambda: (s := exporter.scrape()) and value(
            s, m.SCRAPE_SUCCESS.name) == 0 and s, what="scrape_success 0")
        assert value(down, m.QUEUE_DEPTH.name, system="celery", queue="default") is None
        assert get(exporter.url("/healthz"))[0] == 200

        own_redis.start()
        app = create_app(own_redis.url)
        app.tasks["tests.add"].apply_async((1, 2), queue="default")
        app.close()
        up = wait_for(lambda: (s := exporter.scrape()) and value(
            s, m.QUEUE_DEPTH.name, system="celery", queue="default") == 1 and s,
            what="the exporter to read the restarted Redis")
        assert value(up, m.SCRAPE_SUCCESS.name) == 1
        text = get(exporter.url("/metrics"))[1]
    finally:
        assert exporter.stop() == 0
    output = exporter.output()
    assert "cannot read the broker" in output
    assert "broker readable again" in output
    assert "redis://:***@127.0.0.1" in output
    assert PASSWORD not in output
    assert PASSWORD not in text


def test_bad_url_option_is_a_one_line_error():
    line = one_line_error(run_exporter(
        "--broker-url", f"redis://127.0.0.1:{free_port()}/0?socket_timeout=x&password={PASSWORD}"))
    assert "cannot connect to the broker at" in line
    assert PASSWORD not in line


@pytest.mark.parametrize(
    "password",
    # Unencoded / and #: the first makes urlsplit fail on a "port" that is half of the
    # password, the second parses (port 1234, no password) and would be logged whole.
    ["Pw9/x-" + PASSWORD, "1234#x-" + PASSWORD],
)
def test_a_password_that_breaks_the_url_never_shows(password):
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    result = subprocess.run([EXPORTER], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "TASKQUEUE_EXPORTER_BROKER_URL": url})
    line = one_line_error(result)
    assert "must be percent-encoded" in line
    for piece in (password, *password.replace("#", "/").split("/")):
        assert piece not in line.partition("(")[0], line
