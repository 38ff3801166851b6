"""`taskqueue-scaler simulate`: the closed loop through a real Prometheus."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from scaler.cli import main
from scaler.config import parse_config
from scaler.simulation.prometheus_process import LocalPrometheus
from scaler.simulation.recording import load_rule_files, missing_records, needed_rules
from scaler.simulation.report import to_json
from scaler.simulation.simulate import SimOptions, pick_service, simulate
from scaler.simulation.workload import Fixed, load_workload, parse_distribution, with_durations
from tests.services import require

ROOT = Path(__file__).resolve().parent.parent

# One service, its rules below (the Prometheus URL is replaced by the simulation's own).
SERVICE = """
prometheus: {url: http://127.0.0.1:9}
interval: 15s
services:
  - name: celery-default
    backend: {type: ecs, cluster: c, service: s, region: eu-west-1}
    match_labels: {queue: default}
    min: 1
    max: 20
    rules:
"""

BACKLOG_CONFIG = SERVICE + """
      - name: backlog
        type: per_worker
        query: sum by (queue) (taskqueue_queue_depth) + sum by (queue) (taskqueue_tasks_unacked)
        target: 4
    behavior:
      scale_down: {stabilization_window: 1m}
"""

# A constant stream: a task every 0.4 s (2.5/s), each 1.8 s, one per worker: 4.5 workers'
# worth. The drain rule reads the arrival rate from the simulated task-sent counter.
STEADY_CONFIG = SERVICE + """
      - name: drain
        type: drain
        query: sum by (queue) (taskqueue_queue_depth)
        throughput: 0.5555555556
        arrival_query: sum by (queue) (rate(taskqueue_tasks_total{state="sent"}[1m]))
        drain_within: 2m
        startup_delay: 20s
    behavior:
      scale_down: {stabilization_window: 1m}
"""


@pytest.fixture
def prometheus(tmp_path):
    server = LocalPrometheus(require("prometheus"), tmp_path / "prometheus")
    server.start()
    yield server
    server.stop()


def run(config_text: str, spec: str, prometheus_url: str, *, seed: int = 1, **options):
    config = parse_config(config_text, {})
    workload = load_workload(spec, seed=seed)
    if any(math.isnan(d) for d in workload.durations):
        workload = with_durations(workload, parse_distribution("exp:mean=2s", "t"), seed)
    defaults = {"startup": Fixed(20.0), "concurrency": 2, "seed": seed, "slo": 60.0}
    return simulate(config, pick_service(config, None), workload,
                    SimOptions(**(defaults | options)), prometheus_url)


def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path):
    binary = require("prometheus")
    results = []
    for seed in (7, 7, 8):
        with LocalPrometheus(binary, tmp_path / f"p{len(results)}") as server:
            results.append(run(BACKLOG_CONFIG, "steady:rate=4/s,noise=0.3,duration=5m",
                               server.url, seed=seed))
    first, again, other = results
    assert to_json(first) == to_json(again)
    assert first.series == again.series
    assert to_json(first) != to_json(other)
    # The loop really scaled: the backlog rule asked for more than the minimum.
    assert first.peak_desired > 1 and first.scale_ups > 0
    assert first.failed_evaluations == 0


def test_a_constant_workload_settles_at_the_expected_count(tmp_path, prometheus):
    csv = tmp_path / "constant.csv"
    rows = [f"{1767225600 + i * 0.4:.1f},1.8" for i in range(3000)]  # 20 minutes
    csv.write_text("timestamp,duration_seconds\n" + "\n".join(rows) + "\n")
    result = run(STEADY_CONFIG, str(csv), prometheus.url, concurrency=1)
    # ceil(2.5 tasks/s x 1.8 s) = ceil(4.5) = 5 workers, once the first minute's rate
    # window is full: the last 15 minutes hold at 5, every task starts at once.
    settled = [d for t, d in zip(result.series.times, result.series.desired, strict=True)
               if 1767225600 + 300 <= t <= 1767225600 + 1200]
    assert set(settled) == {5}
    # Only the first evaluation, at t=0: rate() needs two samples.
    assert result.failed_evaluations == 1
    assert result.tasks == 3000 and result.unfinished == 0
    # 5 workers leave 10 % idle: once they are up nothing waits (only the first minute's
    # tasks, on the one worker of the start, did).
    late = [d for t, d in zip(result.series.times, result.series.depth, strict=True)
            if t >= 1767225600 + 300]
    assert set(late) == {0}
    assert 0 < result.waits.max < 60
    # Work: 3000 x 1.8 s; bound: that, or the minimum over the run if more.
    assert result.bound.work_seconds == pytest.approx(5400.0)


def test_recorded_series_are_computed_in_simulated_time(tmp_path, prometheus):
    config = BACKLOG_CONFIG.replace(
        "sum by (queue) (taskqueue_queue_depth) + sum by (queue) (taskqueue_tasks_unacked)",
        "sum by (queue) (queue:taskqueue_backlog:sum)")
    service = pick_service(parse_config(config, {}), None)
    rules = load_rule_files([ROOT / "alerts" / "recording.yml"])
    assert [r.record for r in needed_rules(rules, [service.rules[0].query])] == [
        "queue:taskqueue_backlog:sum"]
    assert missing_records([], [service.rules[0].query]) == ["queue:taskqueue_backlog:sum"]
    parsed = parse_config(config, {})
    workload = with_durations(load_workload("steady:rate=4/s,duration=5m"),
                              parse_distribution("exp:mean=2s", "t"), 1)
    result = simulate(parsed, service, workload,
                      SimOptions(startup=Fixed(20.0), concurrency=2), prometheus.url, rules)
    assert result.failed_evaluations == 0
    assert result.peak_desired > 1


def test_cli_table_json_and_plot(tmp_path, capsys):
    require("prometheus")
    config = tmp_path / "scaler.yml"
    config.write_text(BACKLOG_CONFIG)
    args = ["simulate", "--config", str(config), "--workload",
            "burst:base=1/s,peak=10/s,every=4m,length=1m,duration=8m",
            "--service-time", "exp:mean=2s", "--concurrency", "2", "--startup-delay", "20s",
            "--slo", "30s"]
    assert main([*args, "--plot", str(tmp_path / "run.png")]) == 0
    table = capsys.readouterr().out
    for row in ("worker time", "lower bound", "task wait p95", "waited > 30.0s",
                "scaling actions", "peak workers"):
        assert row in table
    png = (tmp_path / "run.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1200, 800)

    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["service"] == "celery-default"
    assert data["slo_seconds"] == 30.0
    assert data["tasks"] > 0 and data["unfinished_tasks"] == 0
    # Every task ran on a billed worker's slot: billed time covers the work.
    assert data["worker_seconds"] >= data["lower_bound"]["work_seconds"] > 0
    assert set(data["wait_seconds"]) == {"p50", "p95", "p99", "max"}
    assert data["scaling_actions"]["up"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workload", "steady:rate=1/s"],
         "taskqueue-scaler simulate: --service-time is needed: the workload gives no duration "
         "for"),
        (["--workload", "steady:speed=1", "--service-time", "1s"],
         "taskqueue-scaler simulate: workload steady: unknown key 'speed' (accepted keys: "
         "rate, noise, duration, start)"),
        (["--workload", "steady:rate=1/s", "--service-time", "1s", "--service", "nope"],
         "taskqueue-scaler simulate: --service 'nope': no such service in the config "
         "(celery-default)"),
        (["--workload", "steady:rate=1/s", "--service-time", "1s", "--slo", "soon"],
         "taskqueue-scaler simulate: --slo: must be a duration"),
        (["--workload", "steady:rate=1/s", "--service-time", "1s", "--concurrency", "0"],
         "taskqueue-scaler simulate: --concurrency: must be >= 1 (got 0)"),
        (["--workload", "steady:rate=1/s", "--service-time", "1s", "--scrape-interval", "0s"],
         "taskqueue-scaler simulate: --scrape-interval: must be > 0 (got '0s')"),
        (["--workload", "steady:rate=1/s", "--service-time", "1s", "--initial", "-2"],
         "taskqueue-scaler simulate: --initial: must be between 0 and the service's max"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    config = tmp_path / "scaler.yml"
    config.write_text(BACKLOG_CONFIG)
    assert main(["simulate", "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_cli_needs_the_rules_for_recorded_names(tmp_path, capsys):
    config = tmp_path / "scaler.yml"
    config.write_text(BACKLOG_CONFIG.replace("sum by (queue) (taskqueue_tasks_unacked)",
                                             "sum by (queue) (queue:taskqueue_backlog:sum)"))
    args = ["simulate", "--config", str(config), "--workload", "steady:rate=1/s",
            "--service-time", "1s"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "taskqueue-scaler simulate: the config reads queue:taskqueue_backlog:sum, which no "
        "--rules file records (the project's recording rules are in alerts/recording.yml)\n")


def test_cli_without_prometheus_says_how_to_install_it(tmp_path, capsys):
    config = tmp_path / "scaler.yml"
    config.write_text(BACKLOG_CONFIG)
    assert main(["simulate", "--config", str(config), "--workload",
                 "steady:rate=1/s,duration=1m", "--service-time", "1s",
                 "--prometheus-binary", str(tmp_path / "no-such-prometheus")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prometheus" in err and "--prometheus-binary" in err


def test_cli_exits_1_after_its_report_when_evaluations_failed(tmp_path, capsys):
    require("prometheus")
    config = tmp_path / "scaler.yml"
    # A metric the simulated exporter never produces: every evaluation fails.
    config.write_text(BACKLOG_CONFIG.replace("taskqueue_tasks_unacked", "taskqueue_tasks_unacke"))
    args = ["simulate", "--config", str(config), "--workload", "steady:rate=1/s,duration=2m",
            "--service-time", "1s"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "failed evaluations" in captured.out  # the report is printed first
    assert captured.err.startswith("taskqueue-scaler simulate: ")
    assert "evaluations failed" in captured.err and "query returned no series" in captured.err
