"""The rules in alerts/: promtool's checks and unit tests, the alerts' structure (annotations,
runbook sections, a firing and a quiet test each), the metric names they read, the per-queue
SLO override as documented, and promtool's lint of a running scaler's /metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from exporter import metric_names as m
from tests.promql_names import METRIC, exported_names, names_in
from tests.scrape import Samples, parse_text, series, value
from tests.services import (
    MetricsTarget,
    PrometheusServer,
    RedisServer,
    free_port,
    require,
    stop_process,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = ROOT / "alerts"
RECORDING = ALERTS_DIR / "recording.yml"
ALERTS = ALERTS_DIR / "alerts.yml"
README = ALERTS_DIR / "README.md"
TEST_FILES = sorted((ALERTS_DIR / "tests").glob("*.yml"))
RUNBOOK_BASE = ("https://github.com/taskqueue-autoscaler/taskqueue-autoscaler/blob/main/"
                "alerts/README.md#")
SCALER = str(Path(sys.executable).parent / "taskqueue-scaler")


# ---------------------------------------------------------------------------- helpers

def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules_of(ALERTS) if "alert" in rule]


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


OVERRIDE_EXAMPLE = re.compile(r"^ *# BEGIN override example\n(.*?)^ *# END override example\n",
                              re.MULTILINE | re.DOTALL)


def override_example() -> str:
    """The commented override rules of recording.yml, uncommented in place (same indent)."""
    found = OVERRIDE_EXAMPLE.search(RECORDING.read_text())
    assert found, "recording.yml lost its BEGIN/END override example block"
    return "".join(re.sub(r"^(\s*)# ?", r"\1", line, count=1)
                   for line in found[1].splitlines(keepends=True))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def readme_anchors() -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in README.read_text().splitlines()
            if re.match(r"#{1,6} ", line)}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require("promtool")


# ---------------------------------------------------------------------------- promtool

def test_rule_files_pass_promtool_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RECORDING), str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules_of(RECORDING))} rules found" in result.stdout
    assert f"SUCCESS: {len(rules_of(ALERTS))} rules found" in result.stdout
    assert len(alert_rules()) == 14


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert len(TEST_FILES) >= 4
    result = run_promtool(promtool, "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


# ---------------------------------------------------------------------------- structure

def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    anchors = readme_anchors()
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"TaskQueue[A-Z]\w+", name), name
        for_ = str(rule.get("for", ""))
        assert re.fullmatch(r"\d+[smh]", for_), f"{name}: for: {for_!r}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # GitHub's anchors are the heading in lower case: one heading per alert name.
        assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower(), name
        assert name.lower() in anchors, f"alerts/README.md has no '### {name}' section"


def test_recording_rules_keep_the_dashboard_names() -> None:
    records = [rule["record"] for rule in rules_of(RECORDING)]
    # The four names the Grafana dashboards read.
    assert records == [
        "queue:taskqueue_backlog:sum",
        "queue:taskqueue_task_wait_seconds:p95",
        "queue:taskqueue_oldest_task_age_slo_seconds",
        "queue:taskqueue_task_wait_slo_seconds",
    ]
    # level:metric[:operations]; the two SLO names have no operation (a constant per queue).
    for record in records:
        assert re.fullmatch(r"queue:taskqueue_\w+(:\w+)?", record), record


def alert_test_cases() -> tuple[set[str], set[str]]:
    """Alert names with a test case where they fire, and names with a case where they never
    do (an empty exp_alerts at every evaluation: a pending check in a firing case does not
    count)."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in load(path).get("tests", []):
            fires_here: dict[str, bool] = {}
            for check in case.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                name = check["alertname"]
                fires_here[name] = fires_here.get(name, False) or bool(expected)
                for alert in expected:
                    assert alert.get("exp_annotations", {}).get("summary"), (
                        f"{path.name}: {case['name']}: a firing {name} "
                        "without the expected summary")
            fired |= {name for name, fires in fires_here.items() if fires}
            quiet |= {name for name, fires in fires_here.items() if not fires}
    return fired, quiet


def test_every_alert_is_tested_firing_and_quiet() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    fired, quiet = alert_test_cases()
    assert names - fired == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a test case where they stay quiet"
    assert (fired | quiet) - names == set(), "test cases for alerts that do not exist"


def test_names_in_reads_metric_and_recording_names() -> None:
    expr = ('sum by (queue) (rate(taskqueue_task_wait_seconds_bucket{instance="a:9808"}[5m:1m]))'
            ' / on (queue) queue:taskqueue_backlog:sum'
            ' and {__name__=~"taskqueue_queue_depth|taskqueue_tasks_unacked"}'
            " or taskqueue:task_wait_slo_seconds:override")
    assert names_in(expr) == (
        {"taskqueue_task_wait_seconds_bucket", "taskqueue_queue_depth", "taskqueue_tasks_unacked"},
        {"queue:taskqueue_backlog:sum", "taskqueue:task_wait_slo_seconds:override"},
    )


def test_rules_read_only_exported_metrics_and_defined_records() -> None:
    exported = exported_names()
    # Records of recording.yml, and those its documented override example defines.
    defined = {rule["record"] for rule in rules_of(RECORDING)}
    defined |= {rule["record"] for rule in yaml.safe_load(override_example())}
    seen_metrics: set[str] = set()
    for path in (RECORDING, ALERTS):
        for rule in rules_of(path):
            metrics, records = names_in(rule["expr"])
            name = rule.get("alert") or rule.get("record")
            assert metrics - exported == set(), f"{path.name}: {name}: unknown metrics"
            assert records - defined == set(), f"{path.name}: {name}: unknown records"
            seen_metrics |= metrics
    # The helper found names at all, among them the scaler's max gauge.
    assert {"taskqueue_queue_depth", "taskqueue_scaler_max_replicas",
            "taskqueue_task_wait_seconds_bucket"} <= seen_metrics


def test_annotations_format_values_and_query_exported_metrics() -> None:
    # A bare {{ $value }} or `humanize` prints an extrapolated count as "4.6153": every
    # value goes through printf or a humanize* that suits it (duration, percentage).
    exported = exported_names()
    for rule in alert_rules():
        for key, text in rule["annotations"].items():
            where = f"{rule['alert']}: {key}"
            for action in re.findall(r"\{\{-?\s*([^}]*\$value[^}]*?)\s*-?\}\}", text):
                if action.startswith("if "):
                    continue  # a condition, not shown
                assert re.fullmatch(
                    r"\$value \| (printf \"[^\"]*\"|humanizeDuration|humanizePercentage)",
                    action), f"{where}: {{{{ {action} }}}} prints the value unformatted"
            # Metric names in template queries (the errors alert lists kinds by one).
            assert set(METRIC.findall(text)) <= exported, where


# ---------------------------------------------------------------------------- SLO override

OVERRIDE_TEST = """
rule_files: [recording.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'taskqueue_queue_depth{system="celery",queue="emails"}'
        values: '1x5'
      - series: 'taskqueue_queue_depth{system="celery",queue="reports"}'
        values: '1x5'
      - series: 'taskqueue_task_wait_seconds_count{queue="emails",task="t"}'
        values: '0+1x5'
      - series: 'taskqueue_task_wait_seconds_count{queue="reports",task="t"}'
        values: '0+1x5'
    promql_expr_test:
      # At the very first evaluation: only an override evaluated before the SLO rule,
      # in the same group, is already there.
      - expr: queue:taskqueue_oldest_task_age_slo_seconds
        eval_time: 0m
        exp_samples:
          - labels: 'queue:taskqueue_oldest_task_age_slo_seconds{queue="emails"}'
            value: 300
          - labels: 'queue:taskqueue_oldest_task_age_slo_seconds{queue="reports"}'
            value: 900
      - expr: queue:taskqueue_task_wait_slo_seconds
        eval_time: 3m
        exp_samples:
          - labels: 'queue:taskqueue_task_wait_slo_seconds{queue="emails"}'
            value: 60
          - labels: 'queue:taskqueue_task_wait_slo_seconds{queue="reports"}'
            value: 600
"""


def with_override(where: str) -> str:
    """recording.yml with its override example uncommented: in place, or after the rules."""
    text = RECORDING.read_text()
    example = override_example()
    if where == "in place":
        return OVERRIDE_EXAMPLE.sub(lambda _: example, text, count=1)
    return text.rstrip("\n") + "\n" + example


def test_slo_override_example_works_as_written(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "recording.yml").write_text(with_override("in place"))
    (tmp_path / "override_test.yml").write_text(OVERRIDE_TEST)
    check = run_promtool(promtool, "check", "rules", "recording.yml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    result = run_promtool(promtool, "test", "rules", "override_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_override_after_the_slo_rule_lags_one_evaluation(promtool: str,
                                                             tmp_path: Path) -> None:
    # Why the README insists on the place: evaluated after the SLO rule, the override is
    # missed at the first evaluation and reports gets the default.
    (tmp_path / "recording.yml").write_text(with_override("after the rules"))
    (tmp_path / "override_test.yml").write_text(OVERRIDE_TEST)
    result = run_promtool(promtool, "test", "rules", "override_test.yml", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert 'queue="reports"} 3E+02' in output, output


# ---------------------------------------------------------------------------- scaler lint

SCALER_CONFIG = """
prometheus:
  url: {prometheus}
  timeout: 2s
interval: 1s
# A lease, so that every family of the scaler has a sample.
lease: {{type: redis, url: '{redis}', name: alerts-test, ttl: 3s}}
services:
  # Reads its queue: 25 tasks at 10 per worker, 3 sleeping "workers".
  - name: w-ok
    backend: {{type: local, command: "sleep 600", stop_timeout: 5s}}
    min: 1
    max: 4
    match_labels: {{queue: default}}
    rules:
      - name: backlog
        type: per_worker
        query: "sum by (queue) (taskqueue_queue_depth)"
        target: 10
  # Its queue is missing from the answer: a no_data error at every evaluation.
  - name: w-nodata
    backend: {{type: local, command: "sleep 600", stop_timeout: 5s}}
    min: 1
    max: 2
    match_labels: {{queue: missing}}
    rules:
      - name: backlog
        type: per_worker
        query: "sum by (queue) (taskqueue_queue_depth)"
        target: 10
"""


@pytest.fixture
def depth_target() -> Iterator[MetricsTarget]:
    target = MetricsTarget("# TYPE taskqueue_queue_depth gauge\n"
                           'taskqueue_queue_depth{queue="default",system="celery"} 25\n')
    yield target
    target.close()


@pytest.mark.integration
def test_scaler_metrics_pass_promtool_lint(
    promtool: str,
    tmp_path: Path,
    depth_target: MetricsTarget,
    make_prometheus: Callable[..., PrometheusServer],
    redis_server: RedisServer,
) -> None:
    prometheus = make_prometheus(targets=[depth_target.address])
    prometheus.wait_for_value('taskqueue_queue_depth{queue="default"}',
                              lambda values: values == [25.0], timeout=20)
    config = tmp_path / "scaler.yml"
    config.write_text(SCALER_CONFIG.format(prometheus=prometheus.url, redis=redis_server.url))
    port = free_port()
    log = tmp_path / "scaler.log"
    with log.open("wb") as log_file:
        scaler = subprocess.Popen(
            [SCALER, "run", "--config", str(config), "--listen-address", "127.0.0.1",
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=log_file,
        )
    text = ""

    def evaluated() -> Samples | str | None:
        # Until both services have been evaluated with the workers up: every family
        # then has samples, decisions and rule values included. (A scaler that died
        # ends the wait at once: wait_for retries through exceptions, asserts too.)
        nonlocal text
        if scaler.poll() is not None:
            return "exited"
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        samples = parse_text(text)
        running = value(samples, m.SCALER_CURRENT.name, service="w-ok", state="running")
        no_data = value(samples, m.SCALER_ERRORS.name, service="w-nodata",
                        kind="no_data")
        return samples if running == 3 and no_data else None

    try:
        samples = wait_for(evaluated, timeout=30, interval=0.2,
                           what="the scaler to evaluate both services")
    finally:
        stop_process(scaler)
    assert samples != "exited", log.read_text()
    assert scaler.returncode == 0, log.read_text()

    assert value(samples, m.SCALER_RULE_VALUE.name, service="w-ok", rule="backlog") == 25
    assert value(samples, m.SCALER_RULE_RECOMMENDATION.name, service="w-ok", rule="backlog") == 3
    assert value(samples, m.SCALER_DESIRED.name, service="w-ok") == 3
    assert value(samples, m.SCALER_MIN.name, service="w-ok") == 1
    assert value(samples, m.SCALER_MAX.name, service="w-ok") == 4
    assert value(samples, m.SCALER_WORKER_RESTARTS.name, service="w-ok") == 0
    assert value(samples, m.SCALER_DECISIONS.name, service="w-ok",
                 direction="up", reason="ScaleUp") == 1
    assert value(samples, m.SCALER_LAST_SUCCESS.name, service="w-nodata") is None
    for spec in m.SCALER_METRICS:
        assert series(samples, spec.name), f"{spec.name} has no sample"

    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout + lint.stderr == ""
