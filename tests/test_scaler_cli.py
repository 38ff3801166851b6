"""The taskqueue-scaler command: check-config, run --once, exit codes, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import config_bench

SCALER = str(Path(sys.executable).parent / "taskqueue-scaler")

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


# The benchmark's cases (bench/config_bench.py measures their time): here their outcome.
REFUSED = [
    "yaml: alias bomb (10^9 values)", "yaml: duplicate key", "yaml: 2 MiB file",
    "template: 'x' * 100000000", "template: nested loops of 100000",
    "template: range(100000)|join x3", "promql: unclosed parenthesis",
    "counts: max 10000000000 on ECS", "ecs: two services on one ECS service",
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
