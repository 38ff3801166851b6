"""The taskqueue-scaler command: check-config, run --once, exit codes, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import config_bench
from tests.aws import CLUSTER, MOTO_SERVICE, REGION, desired_count, moto_ecs_server
from tests.services import SCALER, MetricsTarget, PrometheusServer, free_port

CONFIG = """\
prometheus: {url: 'http://127.0.0.1:9'}
services:
  - name: w
    backend: {cluster: c, service: s, region: us-east-1}
    min: 1
    max: 5
    rules: [{type: per_worker, query: 'x', target: 10}]
"""


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCALER, *args], capture_output=True, text=True, timeout=timeout)


def test_usage():
    result = run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: taskqueue-scaler [-h] COMMAND")
    assert "check-config" in result.stdout and "run" in result.stdout


def test_check_config_accepts_a_good_config(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(CONFIG)
    result = run("check-config", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: ok, 1 services: w\n")


def test_check_config_imports_no_client_library(tmp_path):
    # boto3, requests, redis, the HTTP server and the simulation are a quarter of a second
    # of imports: check-config needs none of them.
    path = tmp_path / "scaler.yml"
    path.write_text(CONFIG)
    code = ("import sys; from scaler import cli; code = cli.main(['check-config', sys.argv[1]]);"
            " print(code, sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'redis', "
            "'requests', 'urllib3', 'prometheus_client', 'matplotlib', 's3transfer'}))")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.stdout.splitlines()[-1] == "0 []", result.stdout + result.stderr


def test_check_config_reports_every_error_and_exits_2(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(CONFIG.replace("min: 1", "min: -1").replace("target: 10", "target: 0"))
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"taskqueue-scaler: {path}: services[0].min: must be >= 0 (got -1)",
        f"taskqueue-scaler: {path}: services[0].rules[0].target: must be > 0 (got 0)",
    ]


def test_run_with_a_broken_config_never_starts(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(CONFIG.replace("max: 5", "max: 0"))
    result = run("run", "--config", str(path), "--once")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"taskqueue-scaler: {path}: services[0].max: must be >= 1 (got 0)"]


def test_run_needs_a_config():
    result = run("run")
    assert result.returncode == 2
    assert "the following arguments are required: --config" in result.stderr


def test_sigterm_stops_the_loop_cleanly(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(CONFIG.replace("prometheus:", "interval: 1h\nprometheus:"))
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([SCALER, "run", "--config", str(path), "--port", "0", "--dry-run"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        # The first cycle runs at once; its line about the service (a hold on no data) comes
        # after the start-up line.
        for line in proc.stderr:
            if "service=w " in line or "reading the services failed" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        proc.kill()


ONCE = """\
prometheus: {{url: '{prometheus}', timeout: 2s}}
services:
  - name: w
    backend: {backend}
    min: 1
    max: 10
    rules: [{{name: backlog, type: per_worker, query: '{query}', target: 10}}]
"""
DEPTH = 'sum(taskqueue_queue_depth{queue="default"})'


@pytest.fixture(scope="module")
def once_services(tmp_path_factory):
    """One Prometheus with a depth of 45 and one moto ECS server for every --once test."""
    target = MetricsTarget('taskqueue_queue_depth{queue="default"} 45\n')
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"),
                                  targets=[target.address]).start()
    try:
        with pytest.MonkeyPatch.context() as patch, moto_ecs_server(patch) as (moto, ecs):
            prometheus.wait_for_value(DEPTH, lambda values: values == [45.0], timeout=15)
            yield prometheus, moto, ecs
    finally:
        prometheus.stop()
        target.close()


@pytest.fixture
def once_world(tmp_path, once_services):
    """(write a config, moto's client), the service back at 1 worker."""
    prometheus, moto, ecs = once_services
    ecs.update_service(cluster=CLUSTER, service=MOTO_SERVICE, desiredCount=1)

    def write(prometheus_url: str = prometheus.url, query: str = DEPTH,
              backend: str | None = None) -> str:
        path = tmp_path / "once.yml"
        path.write_text(ONCE.format(
            prometheus=prometheus_url, query=query,
            backend=backend or f"{{cluster: {CLUSTER}, service: {MOTO_SERVICE}, "
                               f"region: {REGION}, endpoint_url: '{moto}'}}"))
        return str(path)

    return write, ecs


def once(config: str, *args: str, env: dict[str, str | None] | None = None):
    """`run --once`; `env` adds variables, or takes them away (None)."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run([SCALER, "run", "--config", config, "--once", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in environ.items() if v is not None})


@pytest.mark.integration
def test_run_once_says_what_it_did_to_each_service_and_exits_0_when_all_went_well(once_world):
    write, ecs = once_world
    config = write()
    dry = once(config, "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "w: 1 -> 5 (ScaleUp, not set: dry run)\n")
    assert desired_count(ecs, MOTO_SERVICE) == 1
    done = once(config)
    assert (done.returncode, done.stdout) == (0, "w: 1 -> 5 (ScaleUp, set)\n"), done.stderr
    assert desired_count(ecs, MOTO_SERVICE) == 5


@pytest.mark.integration
@pytest.mark.parametrize(("case", "line"), [
    ("prometheus unreachable",
     r"w: 1 \(unchanged, NoData\): rule backlog: cannot reach prometheus at "
     r"http://127\.0\.0\.1:\d+ for query .*: Connection refused"),
    ("metric misspelt",
     r"w: 1 \(unchanged, NoData\): rule backlog: query returned no series; the metric "
     r"taskqueue_queue_dept does not exist in Prometheus \(no series of that name was ever "
     r"stored: a typo, or a target or recording rule that is missing\)"),
    ("query rejected",
     r"w: 1 \(unchanged, NoData\): rule backlog: prometheus rejected query "
     r"'sum\(taskqueue_queue_depth @ 1e20\)' \(bad_data\): .*timestamp out of bounds.*"),
    ("ecs unreachable",
     r"w: not read: cannot read the service, kind=unreachable: .*DescribeServices failed: "
     r"EndpointConnectionError.*"),
    ("no credentials",
     r"w: not read: cannot read the service, kind=no_credentials: .*DescribeServices failed: "
     r"no AWS credentials found \(NoCredentialsError\): give the scaler's ECS task a task "
     r"role, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
    ("worker cannot start",
     r"w: 0 -> 4 \(ScaleUpLimited, not set\): cannot set desired count to 4, kind=other: w: "
     r"cannot "
     r"start worker 1 \(/nonexistent/celery\): No such file or directory"),
])
def test_run_once_exits_1_with_one_line_per_service_when_something_failed(once_world, case,
                                                                         line):
    write, ecs = once_world
    env = None
    if case == "prometheus unreachable":
        config = write(prometheus_url=f"http://127.0.0.1:{free_port()}")
    elif case == "metric misspelt":
        config = write(query='sum(taskqueue_queue_dept{queue="default"})')
    elif case == "query rejected":
        # Valid PromQL (check-config refuses a range vector such as x[1m]), but not for
        # Prometheus's bounds.
        config = write(query="sum(taskqueue_queue_depth @ 1e20)")
    elif case == "ecs unreachable":
        config = write(backend=f"{{cluster: {CLUSTER}, service: {MOTO_SERVICE}, region: "
                               f"{REGION}, endpoint_url: 'http://127.0.0.1:{free_port()}'}}")
    elif case == "no credentials":
        config = write()
        env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
               "AWS_SESSION_TOKEN": None, "AWS_SECURITY_TOKEN": None,
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
               "AWS_EC2_METADATA_DISABLED": "true"}
    else:
        config = write(backend="{type: local, command: /nonexistent/celery}")
    result = once(config, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert re.fullmatch(line, result.stdout.strip()), result.stdout
    assert desired_count(ecs, MOTO_SERVICE) == 1

# The benchmark's cases (bench/config_bench.py measures their time): here their outcome.
REFUSED = [
    "yaml: alias bomb (10^9 values)", "yaml: duplicate key", "yaml: 2 MiB file",
    "template: 'x' * 100000000", "template: nested loops of 100000",
    "template: range(100000)|join x3", "promql: unclosed parenthesis",
    "counts: max 10000000000 on ECS", "ecs: two services on one ECS service",
    "promql: quadratic strings, 1 MiB (minutes before)", "promql: 270 queries of 60 KB (16 MiB)",
    "yaml: nesting 2,280 deep through aliases (traceback before)",
    "local: ready_pattern of 5,000 nested groups (traceback before)",
]


@pytest.mark.parametrize("name", REFUSED)
def test_check_config_refuses_adversarial_configs_with_one_line_each(tmp_path, name):
    case = config_bench.CASES[name]
    path = tmp_path / "scaler.yml"
    path.write_text(case.text)
    result = run("check-config", str(path), timeout=20)  # a hang guard; bench-config times it
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"taskqueue-scaler: {path}: {case.error}"]


@pytest.mark.parametrize("command", [
    ["run", "--once", "--config"], ["backtest", "--from", "-1h", "--config"],
    ["simulate", "--workload", "steady:rate=1/s,duration=1m", "--config"]])
def test_run_backtest_and_simulate_refuse_the_same_configs(tmp_path, command):
    case = config_bench.CASES["yaml: alias bomb (10^9 values)"]
    path = tmp_path / "scaler.yml"
    path.write_text(case.text)
    result = run(*command, str(path), timeout=20)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"taskqueue-scaler: {path}: {case.error}"]


def test_check_config_accepts_regular_expressions_prometheus_accepts(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(config_bench.CASES["promql: 60 matchers =~ \\w{400} (10 s before)"].text)
    result = run("check-config", str(path), timeout=20)
    assert (result.returncode, result.stdout) == (0, f"{path}: ok, 1 services: w\n")


def test_check_config_accepts_200_services(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(config_bench.CASES["legit: 200 services written out"].text)
    result = run("check-config", str(path), timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok, 200 services: celery-q000, celery-q001, ")


def test_the_config_benchmark_reports_each_case(tmp_path):
    """`make bench-config`, for two of its cases: the report has their exit codes."""
    result = subprocess.run(
        [sys.executable, str(Path(config_bench.__file__)), "--runs", "1",
         "--case", "promql: unclosed parenthesis", "--case", "legit: 200 services, one for_each",
         "--json", str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[:2] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == [["| promql: unclosed parenthesis", "2"],
                        ["| legit: 200 services, one for_each", "0"]]
    assert [case["case"] for case in json.loads((tmp_path / "bench.json").read_text())[
        "cases"]] == ["promql: unclosed parenthesis", "legit: 200 services, one for_each"]
