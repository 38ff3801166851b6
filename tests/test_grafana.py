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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from exporter import metric_names as m
from tests import events_app
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
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
BRACKETS = re.compile(r"\[[^\]]*\]")
IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*")
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


def recorded_names(rule_files: list[Path]) -> set[str]:
    return {rule["record"] for path in rule_files
            for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
            for rule in group.get("rules", []) if "record" in rule}


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


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: ours (taskqueue_...) and recorded (a:b:c)."""
    bare = BRACKETS.sub("", STRING.sub('""', expr))
    return {name for name in IDENTIFIER.findall(bare)
            if name.startswith(m.PREFIX) or ":" in name}


def problems_in(expr: str, known: dict[str, tuple[str, ...]], recorded: set[str]) -> list[str]:
    problems = []
    for name in sorted(metric_names(expr)):
        if name not in known and name not in recorded:
            problems.append(f"unknown metric {name}")
    for name, matchers in SELECTOR.findall(expr):
        if name in known:
            for label in MATCHER.findall(matchers):
                if label not in (*known[name], "job", "instance"):
                    problems.append(f"{name} has no label {label!r}")
    return problems


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (queue, le) (rate(taskqueue_task_wait_seconds_bucket'
            '{queue=~"$queue", task!="taskqueue_x"}[5m:1m]))) / on (queue) '
            "queue:taskqueue_backlog:sum > 0")
    assert metric_names(expr) == {"taskqueue_task_wait_seconds_bucket",
                                  "queue:taskqueue_backlog:sum"}
    known = known_series()
    assert problems_in(expr, known, {"queue:taskqueue_backlog:sum"}) == []
    assert problems_in('taskqueue_task_wait_seconds{queue="a"}', known, set()) == [
        "unknown metric taskqueue_task_wait_seconds"]
    assert problems_in('taskqueue_queue_depth{service="a"}', known, set()) == [
        "taskqueue_queue_depth has no label 'service'"]
    assert render("rate(x{q=~\"$queue\"}[$__rate_interval]) * ${c} * [[c]]",
                  {"queue": ".*", "__rate_interval": "1m", "c": "4"}) == (
        'rate(x{q=~".*"}[1m]) * 4 * 4')


# ---------------------------------------------------------------- structure


def datasource_uid() -> str:
    (datasource,) = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "${PROMETHEUS_URL}"
    return datasource["uid"]


def test_provisioning_files() -> None:
    assert datasource_uid() == "taskqueue-prometheus"
    (provider,) = yaml.safe_load(PROVIDER_FILE.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARD_FOLDER
    assert [p.name for p in DASHBOARDS] == ["queues.json", "scaler.json", "workers.json"]


def test_dashboards_are_well_formed() -> None:
    uid = datasource_uid()
    expected_source = {"type": "prometheus", "uid": uid}
    known, recorded = known_series(), recorded_names(rule_files())
    uids = []
    problems = []
    for path in DASHBOARDS:
        dashboard = load(path)
        uids.append(dashboard["uid"])
        assert dashboard["schemaVersion"] >= 36, path.name
        defined = {v["name"]: v for v in variables(dashboard)}
        names = {*defined, *BUILTINS}
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
                problems += [f"{where}: {p} in {expr}" for p in problems_in(expr, known, recorded)]
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


# ---------------------------------------------------------------- against real services

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
    min: 1
    max: 2
    match_labels: {{queue: '{queue}'}}
    rules:
      - name: backlog
        type: per_worker
        query: sum by (queue) (queue:taskqueue_backlog:sum)
        target: 100
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


def worker_command() -> str:
    return json.dumps([
        sys.executable, "-m", "celery", "-A", "tests.events_app", "worker", "-E",
        "-P", "threads", "-c", "4", "-Q", QUEUE, "-n", "grafana-{worker}@%h",
        "--heartbeat-interval", "1", "--without-gossip", "--without-mingle", "-l", "info",
    ])


def start_scaler(tmp_path: Path, prometheus: PrometheusServer, broker: str,
                 port: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "scaler.yml"
    config.write_text(SCALER_CONFIG.format(
        prometheus=prometheus.url, service=SERVICE, missing=MISSING_SERVICE,
        command=worker_command(), broker=broker, repo=REPO, queue=QUEUE))
    with (tmp_path / "scaler.log").open("wb") as log:
        return subprocess.Popen(
            [str(BIN / "taskqueue-scaler"), "run", "--config", str(config),
             "--listen-address", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def instant(prometheus: PrometheusServer, expr: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
    return response.status_code, response.json()


def finite_values(body: dict[str, Any]) -> list[float]:
    data = body["data"]
    if data["resultType"] == "scalar":
        samples = [data["result"][1]]
    else:
        samples = [s["value"][1] for s in data["result"]]
    return [float(v) for v in samples if math.isfinite(float(v))]


def variable_values(dashboard: dict[str, Any], selection: str) -> dict[str, str]:
    """Values of the dashboard's variables: every value ("all") or the test's own."""
    values = dict(BUILTINS)
    # Several values selected: Grafana joins them into a regex group.
    mine = {"queue": QUEUE, "service": f"({SERVICE}|{MISSING_SERVICE})"}
    for variable in variables(dashboard):
        name = variable["name"]
        if variable["type"] == "query":
            values[name] = (variable.get("allValue") or ".*") if selection == "all" else mine[name]
        else:
            values[name] = str(variable.get("query") or variable["current"]["value"])
    return values


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
        app.tasks["ev.sleep"].apply_async((0.05,))
        app.tasks["ev.fail"].apply_async()
        prometheus.wait_for_value(
            f'sum(taskqueue_tasks_total{{queue="{QUEUE}", state=~"succeeded|failed"}})',
            lambda values: values == [2.0], timeout=20)
        for _ in range(20):
            app.tasks["ev.sleep"].apply_async((0.05,))
        for _ in range(3):
            app.tasks["ev.fail"].apply_async()
        for _ in range(2):
            app.tasks["ev.sleep"].apply_async((30.0,))  # running while the queries run
        app.tasks["ev.sleep"].apply_async((0.0,), countdown=3600)  # held for its ETA

        wanted = {
            f'sum(taskqueue_tasks_total{{queue="{QUEUE}", state="succeeded"}})': 21,
            f'sum(taskqueue_tasks_total{{queue="{QUEUE}", state="failed"}})': 4,
            f'taskqueue_tasks_active{{queue="{QUEUE}"}}': 2,
            f'taskqueue_tasks_scheduled{{queue="{QUEUE}"}}': 1,
            f'taskqueue_scaler_current_replicas{{service="{SERVICE}", state="running"}}': 1,
        }
        wait_for(lambda: all(prometheus.query(q) == [v] for q, v in wanted.items()),
                 timeout=30, interval=0.2, what="Prometheus to see the tasks and the worker")
        check_panels(prometheus)
        check_variables(prometheus)


def check_panels(prometheus: PrometheusServer) -> None:
    known, recorded = known_series(), recorded_names(rule_files())
    problems: list[str] = []
    # Targets that must return data, polled until they do (a rate needs two samples).
    awaited: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for selection in ("all", "mine"):
            values = variable_values(dashboard, selection)
            for panel in query_panels(dashboard):
                for target in panel["targets"]:
                    expr = render(target["expr"], values)
                    where = (f"{path.name} panel {panel['id']} {panel['title']!r} "
                             f"{target['refId']} ({selection})")
                    problems += [f"{where}: {p}" for p in problems_in(expr, known, recorded)]
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
