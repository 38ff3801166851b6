"""The Grafana dashboards: their structure, and every panel query against real services.

Structure (no services): the JSON parses, panel ids are unique, every panel and target
uses the provisioned datasource, every variable a query uses is defined, every metric
name is one the exporter or the scaler exports (exporter.metric_names) or a recording
rule of alerts/, and matchers only use labels the metric has.

Live: a real redis-server, the real exporter (Celery events on), the real scaler CLI
whose local backend runs a real Celery worker with -E, tasks published (some failing,
some running, one held for an ETA), and a real Prometheus scraping the exporter and the
scaler every second with the rule files of alerts/. Every panel query then runs through
Prometheus' query API, with "All" and with the test's queue or service selected: none
may be invalid, and every panel that should have data with this set-up must have a
finite value (a wrong label matcher returns nothing, and fails here).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests
import yaml

from exporter import metric_names as m
from tests import events_app
from tests.promql_names import names_in, unknown_names
from tests.scrape import value
from tests.services import Exporter, PrometheusServer, RedisServer, free_port, wait_for
from tests.workers import REPO

GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "taskqueue.yml"
DASHBOARD_FOLDER = "/var/lib/grafana/dashboards"
BIN = Path(sys.executable).parent

QUEUE = events_app.QUEUE
SERVICE = "grafana"  # the scaler's service running the Celery worker
MISSING_SERVICE = "missing"  # its rule reads a queue nobody has: errors, NoData

# Grafana's built-in variables, as a dashboard over the last hour would set them.
BUILTINS = {
    "__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
    "__range": "1h", "__range_s": "3600", "__range_ms": "3600000",
}
# Panels (dashboard uid, panel title) that have no data in this test's set-up.
NO_DATA_HERE = {
    ("taskqueue-queues", "RQ: started and failed registries"): "no RQ queue",
    ("taskqueue-queues", "Unparseable messages"): "every message is well-formed",
}


# ---------------------------------------------------------------- reading the JSON


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels nested in (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard["panels"]) if p.get("type") != "row")


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return dashboard.get("templating", {}).get("list", [])


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*([a-zA-Z_]\w*)\s*\)$")
REFERENCE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")
SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*(?:\"(?:[^\"\\]|\\.)*\"|'[^']*')")


def render(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $var, ${var}, ${var:format} and [[var]]."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    return REFERENCE.sub(replace, expr)


def rule_files() -> list[Path]:
    """alerts/*.yml that Prometheus loads (they have `groups`; promtool tests do not)."""
    found = []
    for path in sorted([*(REPO / "alerts").glob("*.yml"), *(REPO / "alerts").glob("*.yaml")]):
        content = yaml.safe_load(path.read_text())
        if isinstance(content, dict) and "groups" in content:
            found.append(path)
    return found


def known_series() -> dict[str, tuple[str, ...]]:
    """Series name -> its labels, from metric_names (histograms as _bucket/_sum/_count)."""
    known: dict[str, tuple[str, ...]] = {}
    for spec in m.ALL_METRICS:
        if spec.type == "histogram":
            known[f"{spec.name}_bucket"] = (*spec.labels, "le")
            known[f"{spec.name}_sum"] = spec.labels
            known[f"{spec.name}_count"] = spec.labels
        else:
            known[spec.name] = spec.labels
    return known


def problems_in(expr: str, known: dict[str, tuple[str, ...]]) -> list[str]:
    problems = [f"unknown metric {name}" for name in sorted(unknown_names(expr))]
    for name, matchers in SELECTOR.findall(expr):
        if name in known:
            for label in MATCHER.findall(matchers):
                if label not in (*known[name], "job", "instance"):
                    problems.append(f"{name} has no label {label!r}")
    return problems


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (queue, le) (rate(taskqueue_task_wait_seconds_bucket'
            '{queue=~"$queue", task!="a:b:c"}[5m:1m]))) / on (queue) '
            "queue:taskqueue_backlog:sum > 0")
    assert names_in(expr) == ({"taskqueue_task_wait_seconds_bucket"},
                              {"queue:taskqueue_backlog:sum"})
    known = known_series()
    assert problems_in(expr, known) == []
    assert problems_in('taskqueue_task_wait_seconds{queue="a"} + x:y:z', known) == [
        "unknown metric taskqueue_task_wait_seconds", "unknown metric x:y:z"]
    assert problems_in('taskqueue_queue_depth{service="a"}', known) == [
        "taskqueue_queue_depth has no label 'service'"]
    assert render("rate(x{q=~\"$queue\"}[$__rate_interval]) * ${c} * [[c]]",
                  {"queue": ".*", "__rate_interval": "1m", "c": "4"}) == (
        'rate(x{q=~".*"}[1m]) * 4 * 4')


# ---------------------------------------------------------------- structure


def datasource_uid() -> str:
    (datasource,) = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "${PROMETHEUS_URL}"
    # A second default datasource conflicts with the one a Grafana may already have.
    assert not datasource.get("isDefault", False)
    return datasource["uid"]


# Panels, targets and query variables name the datasource through this variable, so the
# dashboards import into any Grafana; its default is the provisioned datasource.
DATASOURCE_VARIABLE = "datasource"
PANEL_SOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_provisioning_files() -> None:
    assert datasource_uid() == "taskqueue-prometheus"
    (provider,) = yaml.safe_load(PROVIDER_FILE.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARD_FOLDER
    assert [p.name for p in DASHBOARDS] == ["queues.json", "scaler.json", "workers.json"]


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert match, f"not a duration: {text!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def scrape_interval() -> float:
    """The datasource's timeInterval: Prometheus' scrape interval the dashboards assume."""
    (datasource,) = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    return duration_seconds(datasource["jsonData"]["timeInterval"])


# Exporter series per queue or per worker: every exporter replica reports the same ones
# (same broker, same events), so queries take the max over replicas before any sum, as
# alerts/recording.yml does. Histogram quantiles are left alone (duplicates do not move
# them) and so are the exporter's own health series (min over replicas on purpose).
DUPLICATED = sorted(spec.name for spec in (*m.QUEUE_METRICS, *m.EVENT_METRICS,
                                           *m.EXPORTER_METRICS)
                    if spec.type != "histogram" and {"queue", "worker"} & set(spec.labels))
COLLAPSED = re.compile(r"max by \([^()]*\) \((?:rate\(|increase\()?$")


def uncollapsed(expr: str) -> list[str]:
    """Duplicated exporter series in `expr` not directly inside `max by (...) (`."""
    found = []
    for name in DUPLICATED:
        for match in re.finditer(rf"(?<![\w:]){name}(?![\w:])", expr):
            if not COLLAPSED.search(expr[:match.start()]):
                found.append(name)
    return found


def test_collapsed_detection() -> None:
    assert uncollapsed('sum by (queue) (taskqueue_tasks_unacked{queue="a"})') == [
        "taskqueue_tasks_unacked"]
    assert uncollapsed('sum(max by (queue, task, state) (rate(taskqueue_tasks_total[1m])))') == []
    assert uncollapsed("max by (system, queue) (taskqueue_queue_depth) / "
                       "sum(taskqueue_workers)") == ["taskqueue_workers"]


def test_dashboards_are_well_formed() -> None:
    expected_source = PANEL_SOURCE
    known = known_series()
    uids = []
    problems = []
    for path in DASHBOARDS:
        dashboard = load(path)
        uids.append(dashboard["uid"])
        assert dashboard["schemaVersion"] >= 36, path.name
        defined = {v["name"]: v for v in variables(dashboard)}
        names = {*defined, *BUILTINS}
        source = defined.get(DATASOURCE_VARIABLE, {})
        if (source.get("type"), source.get("query")) != ("datasource", "prometheus"):
            problems.append(f"{path.name}: no datasource variable of type prometheus: {source}")
        elif source.get("current", {}).get("value") != datasource_uid():
            problems.append(f"{path.name}: ${DATASOURCE_VARIABLE} defaults to "
                            f"{source.get('current')}, not the provisioned {datasource_uid()}")
        ids = [p["id"] for p in all_panels(dashboard["panels"])]
        duplicates = {i for i in ids if ids.count(i) > 1}
        if duplicates:
            problems.append(f"{path.name}: duplicate panel ids {sorted(duplicates)}")
        for panel in query_panels(dashboard):
            where = f"{path.name}: panel {panel['id']} {panel['title']!r}"
            if panel.get("datasource") != expected_source:
                problems.append(f"{where}: datasource {panel.get('datasource')}")
            if not panel.get("targets"):
                problems.append(f"{where}: no targets")
            refs = [t.get("refId") for t in panel.get("targets", [])]
            if None in refs or len(set(refs)) != len(refs):
                problems.append(f"{where}: refIds {refs}")
            for target in panel.get("targets", []):
                if target.get("datasource") != expected_source:
                    problems.append(f"{where} {target.get('refId')}: datasource "
                                    f"{target.get('datasource')}")
                expr = target.get("expr", "")
                if not expr.strip():
                    problems.append(f"{where} {target.get('refId')}: no expr")
                    continue
                used = {next(g for g in r if g) for r in REFERENCE.findall(expr)}
                if used - names:
                    problems.append(f"{where}: undefined variables {sorted(used - names)}")
                problems += [f"{where}: {p} in {expr}" for p in problems_in(expr, known)]
                problems += [f"{where}: {name} not collapsed by max over exporter replicas "
                             f"in {expr}" for name in uncollapsed(expr)]
                # increase() over overlapping windows counts each event in several bars.
                if "increase(" in expr and "$__range" not in expr:
                    if "[$__interval]" not in expr or not panel.get("interval"):
                        problems.append(f"{where}: increase() per bar needs [$__interval] "
                                        f"and a panel min interval: {expr}")
                    elif duration_seconds(panel["interval"]) < 4 * scrape_interval():
                        problems.append(f"{where}: min interval {panel['interval']} holds "
                                        "fewer than 4 scrapes")
            repeat = panel.get("repeat")
            if repeat and repeat not in defined:
                problems.append(f"{where}: repeats over undefined ${repeat}")
        for variable in variables(dashboard):
            if variable["type"] != "query":
                continue
            where = f"{path.name}: variable ${variable['name']}"
            if variable.get("datasource") != expected_source:
                problems.append(f"{where}: datasource {variable.get('datasource')}")
            match = LABEL_VALUES.match(variable_query(variable))
            if not match:
                problems.append(f"{where}: not label_values(metric, label): "
                                f"{variable_query(variable)!r}")
                continue
            metric, label = match.groups()
            if metric not in known:
                problems.append(f"{where}: unknown metric {metric}")
            elif label not in known[metric]:
                problems.append(f"{where}: {metric} has no label {label!r}")
    assert len(set(uids)) == len(uids), uids
    assert {load(p)["uid"] for p in DASHBOARDS} == {
        "taskqueue-queues", "taskqueue-workers", "taskqueue-scaler"}
    assert not problems, "\n".join(problems)


def test_queue_and_service_variables() -> None:
    by_uid = {load(p)["uid"]: {v["name"]: v for v in variables(load(p))} for p in DASHBOARDS}
    for uid, name in (("taskqueue-queues", "queue"), ("taskqueue-workers", "queue"),
                      ("taskqueue-scaler", "service")):
        variable = by_uid[uid][name]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"]
    assert by_uid["taskqueue-workers"]["concurrency"]["type"] in ("textbox", "constant")
    # Exported for every configured service from start-up, not only after a first cycle.
    assert variable_query(by_uid["taskqueue-scaler"]["service"]) == (
        f"label_values({m.SCALER_MAX.name}, service)")


# ---------------------------------------------------------------- against real services

MIN_REPLICAS, MAX_REPLICAS = 1, 2
CONCURRENCY = 4  # the worker's -c
BACKLOG_TARGET = 100  # per worker: the backlog below never needs a second worker

SCALER_CONFIG = """
prometheus: {{url: '{prometheus}', timeout: 2s}}
interval: 1s
services:
  - name: {service}
    backend:
      type: local
      command: {command}
      env: {{TQ_TEST_BROKER_URL: '{broker}', PYTHONPATH: '{repo}'}}
      cwd: '{repo}'
      ready_pattern: 'ready\\.'
      stop_timeout: 2s
    min: {min}
    max: {max}
    match_labels: {{queue: '{queue}'}}
    rules:
      - name: backlog
        type: per_worker
        query: sum by (queue) (queue:taskqueue_backlog:sum)
        target: {target}
        on_empty: zero
  - name: {missing}
    backend: {{type: local, command: [sleep, '1000']}}
    min: 0
    max: 1
    rules:
      - name: backlog
        type: per_worker
        query: sum(taskqueue_queue_depth{{queue="no-such-queue"}})
        target: 10
"""

# What the test publishes once the baseline (one task that succeeds, one that fails: the
# counters' first samples, which rate() and increase() need) is in Prometheus.
SUCCEEDING = 20
FAILING = 3
RUNNING = 2  # tasks that sleep past the end of the test: active while the queries run
HELD = 1  # a task with an ETA an hour away: unacked and scheduled, never started
RUNNING_SECONDS = 300.0

# Values the set-up fixes, by (dashboard uid, panel title, refId), read with the test's
# queue and service selected, over a time range that starts right after the baseline.
FAILURE_RATIO = FAILING / (SUCCEEDING + FAILING)
# Running tasks were acked when they started (no acks_late): only the held one is unacked.
# Nothing waits in the queue: depth 0, and the backlog is the unacked task.
UNACKED = HELD
DECIDED = max(MIN_REPLICAS, math.ceil(UNACKED / BACKLOG_TARGET))


class By(NamedTuple):
    """Exactly these series, by the value of one label."""
    label: str
    values: dict[str, float]


class Between(NamedTuple):
    """One series whose value is in [low, high]."""
    low: float
    high: float


class Only(NamedTuple):
    """Series whose label has one of these values grow (value > 0), and no others."""
    label: str
    allowed: frozenset[str]


NO_SERIES = By("", {})
Expected = float | By | Between | Only

EXACT: dict[tuple[str, str, str], Expected] = {
    ("taskqueue-queues", "Backlog (waiting + unacked)", "A"): UNACKED,
    ("taskqueue-queues", "Queues past their oldest-age SLO", "A"): 0,
    ("taskqueue-queues", "Failed / finished (time range)", "A"): FAILURE_RATIO,
    ("taskqueue-queues", "Exporter", "A"): 1,
    ("taskqueue-queues", "Exporter", "B"): 1,
    ("taskqueue-queues", "Queue depth", "A"): By("queue", {QUEUE: 0}),
    ("taskqueue-queues", "Oldest task age vs SLO", "A"): By("queue", {QUEUE: 0}),
    ("taskqueue-queues", "Oldest task age vs SLO", "B"): By("queue", {QUEUE: 300}),  # default
    ("taskqueue-queues", "Wait time p50 / p95 / p99", "D"): By("queue", {QUEUE: 60}),  # default
    ("taskqueue-queues", "Failure ratio", "A"): By("queue", {QUEUE: FAILURE_RATIO}),
    ("taskqueue-queues", "Unacked and scheduled", "A"): By("queue", {QUEUE: UNACKED}),
    ("taskqueue-queues", "Unacked and scheduled", "B"): By("queue", {QUEUE: HELD}),
    ("taskqueue-queues", "RQ: started and failed registries", "A"): NO_SERIES,
    ("taskqueue-queues", "Unparseable messages", "A"): NO_SERIES,
    ("taskqueue-workers", "Workers online", "A"): 1,
    ("taskqueue-workers", "Active tasks", "A"): RUNNING,
    ("taskqueue-workers", "Utilization", "A"): RUNNING / (1 * CONCURRENCY),
    ("taskqueue-workers", "Workers online by queue", "A"): By("queue", {QUEUE: 1}),
    ("taskqueue-workers", "Active tasks vs capacity", "A"): By("queue", {QUEUE: RUNNING}),
    ("taskqueue-workers", "Active tasks vs capacity", "B"): By("queue", {QUEUE: CONCURRENCY}),
    ("taskqueue-workers", "Utilization by queue", "A"): By("queue", {QUEUE: RUNNING / CONCURRENCY}),
    ("taskqueue-workers", "Held by workers (inspect)", "A"): By(  # nothing reserved
        "state", {"active": RUNNING, "scheduled": HELD}),
    ("taskqueue-workers", "Active tasks per worker", "A"): RUNNING,
    ("taskqueue-scaler", "Services now", "A"): DECIDED,
    ("taskqueue-scaler", "Services now", "B"): DECIDED,
    ("taskqueue-scaler", "Services now", "C"): 0,
    ("taskqueue-scaler", "Services now", "D"): MIN_REPLICAS,
    ("taskqueue-scaler", "Services now", "E"): MAX_REPLICAS,
    ("taskqueue-scaler", "Services now", "F"): Between(0, 5),  # evaluates every second
    ("taskqueue-scaler", "Replicas: $service", "A"): DECIDED,
    ("taskqueue-scaler", "Replicas: $service", "B"): By(
        "state", {"desired": DECIDED, "running": DECIDED, "pending": 0}),
    ("taskqueue-scaler", "Replicas: $service", "C"): MIN_REPLICAS,
    ("taskqueue-scaler", "Replicas: $service", "D"): MAX_REPLICAS,
    ("taskqueue-scaler", "Rule values", "A"): By("rule", {"backlog": UNACKED}),
    ("taskqueue-scaler", "Rule recommendations", "A"): By(
        "rule", {"backlog": math.ceil(UNACKED / BACKLOG_TARGET)}),
    # The count stays at the minimum: decisions in the range change nothing.
    ("taskqueue-scaler", "Decisions by reason", "A"): Only("direction", frozenset({"none"})),
    ("taskqueue-scaler", "Decisions in the time range", "A"): Only(
        "direction", frozenset({"none"})),
    ("taskqueue-scaler", "Errors by kind", "A"): NO_SERIES,
    ("taskqueue-scaler", "Time since last successful evaluation", "A"): Between(0, 5),
    ("taskqueue-scaler", "Worker restarts (local backend)", "A"): By("service", {SERVICE: 0}),
}


def test_exact_expectations_name_real_targets() -> None:
    targets = {(load(p)["uid"], panel["title"], target["refId"])
               for p in DASHBOARDS for panel in query_panels(load(p))
               for target in panel["targets"]}
    assert set(EXACT) <= targets, sorted(set(EXACT) - targets)


def worker_command() -> str:
    return json.dumps([
        sys.executable, "-m", "celery", "-A", "tests.events_app", "worker", "-E",
        "-P", "threads", "-c", str(CONCURRENCY), "-Q", QUEUE, "-n", "grafana-{worker}@%h",
        "--heartbeat-interval", "1", "--without-gossip", "--without-mingle", "-l", "info",
    ])


def start_scaler(tmp_path: Path, prometheus: PrometheusServer, broker: str,
                 port: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "scaler.yml"
    config.write_text(SCALER_CONFIG.format(
        prometheus=prometheus.url, service=SERVICE, missing=MISSING_SERVICE,
        command=worker_command(), broker=broker, repo=REPO, queue=QUEUE,
        min=MIN_REPLICAS, max=MAX_REPLICAS, target=BACKLOG_TARGET))
    with (tmp_path / "scaler.log").open("wb") as log:
        return subprocess.Popen(
            [str(BIN / "taskqueue-scaler"), "run", "--config", str(config),
             "--listen-address", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def instant(prometheus: PrometheusServer, expr: str,
            at: float | None = None) -> tuple[int, dict[str, Any]]:
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    response = requests.get(f"{prometheus.url}/api/v1/query", params=params, timeout=10)
    return response.status_code, response.json()


def series_of(body: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
    data = body["data"]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(s["metric"], float(s["value"][1])) for s in data["result"]]


def finite_values(body: dict[str, Any]) -> list[float]:
    return [v for _, v in series_of(body) if math.isfinite(v)]


def variable_values(dashboard: dict[str, Any], selection: str) -> dict[str, str]:
    """Values of the dashboard's variables: every value ("all"), the test's queue and both
    services ("mine"), or the test's queue, its Celery worker's service and its -c ("one")."""
    values = dict(BUILTINS)
    chosen = {
        # Several values selected: Grafana joins them into a regex group.
        "mine": {"queue": QUEUE, "service": f"({SERVICE}|{MISSING_SERVICE})"},
        "one": {"queue": QUEUE, "service": SERVICE, "concurrency": str(CONCURRENCY)},
    }.get(selection, {})
    for variable in variables(dashboard):
        name = variable["name"]
        if variable["type"] == "query":
            values[name] = chosen.get(name) or variable.get("allValue") or ".*"
        elif variable["type"] == "datasource":
            values[name] = variable["current"]["value"]
        else:
            values[name] = chosen.get(name) or str(variable.get("query")
                                                   or variable["current"]["value"])
    return values


def with_min_interval(values: dict[str, str], panel: dict[str, Any]) -> dict[str, str]:
    """Grafana's $__interval is at least the panel's min interval (`interval`)."""
    if not panel.get("interval"):
        return values
    seconds = max(duration_seconds(panel["interval"]), duration_seconds(values["__interval"]))
    return {**values, "__interval": f"{seconds:g}s", "__interval_ms": f"{seconds * 1000:.0f}"}


def stop_scaler(scaler: subprocess.Popen[bytes]) -> None:
    """SIGTERM: its Celery worker gets a warm shutdown, SIGKILL after stop_timeout."""
    scaler.send_signal(signal.SIGTERM)
    try:
        scaler.wait(timeout=20)
    except subprocess.TimeoutExpired:
        scaler.kill()
        scaler.wait()


@pytest.mark.integration
def test_every_panel_query_against_real_services(
    tmp_path: Path, own_redis: RedisServer, make_prometheus: Callable[..., PrometheusServer],
) -> None:
    redis_server = own_redis.start()
    with ExitStack() as cleanup:
        exporter = Exporter(tmp_path, "--broker-url", redis_server.url, "--queue", QUEUE,
                            "--per-worker-metrics", "--inspect-interval", "1")
        cleanup.callback(exporter.stop)
        scaler_port = free_port()
        prometheus = make_prometheus(
            jobs={"taskqueue-exporter": [f"127.0.0.1:{exporter.port}"],
                  "taskqueue-scaler": [f"127.0.0.1:{scaler_port}"]},
            rule_files=rule_files())
        # The exporter's health and the backlog record first: before them, on_empty: zero
        # holds (and counts an error).
        prometheus.wait_for_value("taskqueue_exporter_scrape_success", lambda v: v == [1.0],
                                  timeout=20)
        prometheus.wait_for_value("count(queue:taskqueue_backlog:sum)", lambda v: v == [1.0],
                                  timeout=20)
        scaler = start_scaler(tmp_path, prometheus, redis_server.url, scaler_port)
        cleanup.callback(stop_scaler, scaler)
        app = events_app.create_app(redis_server.url)
        cleanup.callback(app.close)

        # The scaler starts the service's minimum, one Celery worker, at its first evaluation.
        wait_for(lambda: scaler.poll() is not None
                 or value(exporter.scrape(), m.WORKERS.name, queue=QUEUE) == 1,
                 timeout=30, interval=0.2, what="the scaler's Celery worker online")
        assert scaler.poll() is None, (tmp_path / "scaler.log").read_text()
        # rate() and increase() ignore a series' first sample: the counters and histograms
        # must exist in Prometheus before the tasks whose rates the panels show.
        finished = f'taskqueue_tasks_total{{queue="{QUEUE}", state=~"succeeded|failed"}}'
        app.tasks["ev.sleep"].apply_async((0.05,))
        app.tasks["ev.fail"].apply_async()
        prometheus.wait_for_value(f"sum({finished})", lambda values: values == [2.0], timeout=20)
        # The scrape that holds the baseline: the exact checks' time range starts there.
        (baseline,) = prometheus.query(f"max(timestamp({finished}))")
        for _ in range(SUCCEEDING):
            app.tasks["ev.sleep"].apply_async((0.05,))
        for _ in range(FAILING):
            app.tasks["ev.fail"].apply_async()
        for _ in range(RUNNING):
            app.tasks["ev.sleep"].apply_async((RUNNING_SECONDS,))
        for _ in range(HELD):
            app.tasks["ev.sleep"].apply_async((0.0,), countdown=3600)

        wanted = {
            f'sum(taskqueue_tasks_total{{queue="{QUEUE}", state="succeeded"}})': 1 + SUCCEEDING,
            f'sum(taskqueue_tasks_total{{queue="{QUEUE}", state="failed"}})': 1 + FAILING,
            f'taskqueue_tasks_active{{queue="{QUEUE}"}}': RUNNING,
            f'taskqueue_tasks_scheduled{{queue="{QUEUE}"}}': HELD,
            f'taskqueue_scaler_current_replicas{{service="{SERVICE}", state="running"}}': 1,
        }
        wait_for(lambda: all(prometheus.query(q) == [v] for q, v in wanted.items()),
                 timeout=30, interval=0.2, what="Prometheus to see the tasks and the worker")
        check_panels(prometheus)
        check_exact_values(prometheus, baseline)
        check_variables(prometheus)


def check_panels(prometheus: PrometheusServer) -> None:
    known = known_series()
    problems: list[str] = []
    # Targets that must return data, polled until they do (a rate needs two samples).
    awaited: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for selection in ("all", "mine"):
            values = variable_values(dashboard, selection)
            for panel in query_panels(dashboard):
                for target in panel["targets"]:
                    expr = render(target["expr"], with_min_interval(values, panel))
                    where = (f"{path.name} panel {panel['id']} {panel['title']!r} "
                             f"{target['refId']} ({selection})")
                    problems += [f"{where}: {p}" for p in problems_in(expr, known)]
                    status, body = instant(prometheus, expr)
                    if status != 200 or body.get("status") != "success":
                        problems.append(f"{where}: HTTP {status} {body.get('errorType')}: "
                                        f"{body.get('error')}\n    {expr}")
                        continue
                    if (selection == "mine"
                            and (dashboard["uid"], panel["title"]) not in NO_DATA_HERE
                            and not finite_values(body)):
                        awaited.append((where, expr))
    assert not problems, "\n".join(problems)

    def all_have_data() -> bool:
        awaited[:] = [(w, e) for w, e in awaited if not finite_values(instant(prometheus, e)[1])]
        return not awaited

    try:
        wait_for(all_have_data, timeout=15, interval=0.5, what="every panel to have data")
    except AssertionError:
        raise AssertionError("panels without a finite value:\n" + "\n".join(
            f"{where}\n    {expr}" for where, expr in awaited)) from None


def mismatch(expected: Expected, got: list[tuple[dict[str, str], float]]) -> bool:
    def same(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    if isinstance(expected, By):
        by = {labels.get(expected.label, ""): v for labels, v in got}
        return not (len(by) == len(got) and by.keys() == expected.values.keys()
                    and all(same(by[k], v) for k, v in expected.values.items()))
    if isinstance(expected, Only):
        grown = {labels.get(expected.label, "") for labels, v in got if v > 0}
        return not grown or not grown <= expected.allowed
    if len(got) != 1:
        return True
    if isinstance(expected, Between):
        return not expected.low <= got[0][1] <= expected.high
    return not same(got[0][1], expected)


def check_exact_values(prometheus: PrometheusServer, baseline: float) -> None:
    """Every value of EXACT, over a time range from just before the baseline's scrape.

    Every increase in that range comes after its first sample, and the counters of one
    target share their sample times, so rate() and increase() extrapolate each series
    alike and ratios of them are exact: failed / finished is what the test published.
    Polled: gauges settle within a few scrapes; the last values seen are reported.
    """
    targets = {}
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                key = (dashboard["uid"], panel["title"], target["refId"])
                if key in EXACT:
                    targets[key] = (dashboard, target["expr"])
    assert targets.keys() == EXACT.keys(), sorted(EXACT.keys() - targets.keys())
    last: dict[tuple[str, str, str], tuple[str, Any]] = {}

    def all_exact() -> bool:
        start = baseline - 0.001
        window_ms = int((time.time() - start) * 1000)
        at = start + window_ms / 1000
        window = {name: f"{window_ms}ms" for name in ("__range", "__rate_interval", "__interval")}
        window.update(__range_ms=str(window_ms), __interval_ms=str(window_ms),
                      __range_s=str(window_ms // 1000))
        last.clear()
        for key, (dashboard, template) in targets.items():
            expr = render(template, {**variable_values(dashboard, "one"), **window})
            body = instant(prometheus, expr, at)[1]
            got = series_of(body) if body.get("status") == "success" else body
            if not isinstance(got, list) or mismatch(EXACT[key], got):
                last[key] = (expr, got)
        return not last

    try:
        wait_for(all_exact, timeout=20, interval=0.5, what="the values the set-up fixes")
    except AssertionError:
        raise AssertionError("panels whose value is not the one the test set up:\n" + "\n".join(
            f"{key}: expected {EXACT[key]}, last seen {got}\n    {expr}"
            for key, (expr, got) in last.items())) from None


def check_variables(prometheus: PrometheusServer) -> None:
    mine = {"queue": QUEUE, "service": SERVICE}
    for path in DASHBOARDS:
        for variable in variables(load(path)):
            if variable["type"] != "query":
                continue
            match = LABEL_VALUES.match(variable_query(variable))
            assert match, variable
            metric, label = match.groups()
            response = requests.get(f"{prometheus.url}/api/v1/label/{label}/values",
                                    params={"match[]": metric}, timeout=10)
            response.raise_for_status()
            assert mine[variable["name"]] in response.json()["data"], (
                path.name, variable["name"], response.json()["data"])
