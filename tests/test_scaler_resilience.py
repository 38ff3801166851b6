"""The scaler when things go wrong, end to end: real scaler processes, a real Prometheus
scraping them, moto's ECS as a server, a real redis-server for the lease and the broker,
the real exporter.

- a crash and a restart keep the scale-down window and the rate policies;
- a broker outage never reads as an empty queue, `on_empty: zero` included;
- an operator's pause tag and manual count are respected;
- of two instances with a lease, one acts; the other takes over when it dies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scaler.config import parse_config
from scaler.decision import Counts, Inputs, decide
from scaler.ecs import PAUSE_TAG
from scaler.prometheus import PrometheusClient
from scaler.restore import restore
from tests.aws import CLUSTER, MOTO_SERVICE, REGION, desired_count
from tests.celery_app import create_app
from tests.scrape import value
from tests.services import (
    Exporter,
    MetricsTarget,
    PrometheusServer,
    RedisServer,
    ScalerProcess,
    free_port,
    wait_for,
)
from tests.services import decisions as logged_decisions

pytestmark = pytest.mark.integration

NAME = "worker-default"
QUERY = "sum by (queue) (taskqueue_queue_depth)"
RECORDING = Path(__file__).resolve().parent.parent / "alerts" / "recording.yml"

CONFIG = """
prometheus: {{url: '{prometheus}', timeout: 2s}}
interval: 1s
restore: {{matchers: 'job="taskqueue-scaler"'}}
{extra}
services:
  - name: {name}
    backend: {{type: ecs, cluster: {cluster}, service: {service}, region: {region},
              endpoint_url: '{moto}'}}
    min: 1
    max: 10
    match_labels: {{queue: default}}
    rules:
      - {{name: backlog, type: per_worker, query: '{query}', target: 10}}
    behavior:
      tolerance: 0
      scale_up:
        policies: [{up}]
      scale_down:
        stabilization_window: {window}
        policies: [{{type: percent, value: 100, period: 1s}}]
"""
FAST_UP = "{type: workers, value: 10, period: 1s}"

def decisions(scaler: ScalerProcess) -> list[dict[str, Any]]:
    return logged_decisions(scaler.text(), NAME)


def depth_text(depth: int) -> str:
    return ("# TYPE taskqueue_queue_depth gauge\n"
            f'taskqueue_queue_depth{{queue="default",system="celery"}} {depth}\n')


@pytest.fixture
def depth() -> Iterator[MetricsTarget]:
    target = MetricsTarget(depth_text(0))
    yield target
    target.close()


@pytest.fixture
def scalers() -> Iterator[list[ScalerProcess]]:
    started: list[ScalerProcess] = []
    yield started
    for scaler in started:
        scaler.stop()


def write_config(tmp_path: Path, prometheus: str, moto: str, *, window: str = "3s",
                 up: str = FAST_UP, extra: str = "", query: str = QUERY) -> Path:
    path = tmp_path / "scaler.yml"
    path.write_text(CONFIG.format(prometheus=prometheus, moto=moto, name=NAME, cluster=CLUSTER,
                                  service=MOTO_SERVICE, region=REGION, query=query,
                                  window=window, up=up, extra=extra))
    return path


def until_desired(ecs: Any, want: int, timeout: float = 30) -> float:
    """Waits for the service's desired count; returns when it was seen (epoch seconds)."""
    wait_for(lambda: desired_count(ecs, MOTO_SERVICE) == want, timeout=timeout, interval=0.1,
             what=f"desired count {want}")
    return time.time()


def test_a_crash_and_restart_keep_the_scale_down_window(
    tmp_path: Path, depth: MetricsTarget, moto_ecs: tuple[str, Any],
    make_prometheus: Callable[..., PrometheusServer], scalers: list[ScalerProcess],
) -> None:
    moto, ecs = moto_ecs
    port = free_port()
    prometheus = make_prometheus(jobs={"depth": [depth.address],
                                       "taskqueue-scaler": [f"127.0.0.1:{port}"]})
    config = write_config(tmp_path, prometheus.url, moto, window="8s")
    first = ScalerProcess(config, port)
    scalers.append(first)
    depth.text = depth_text(45)
    until_desired(ecs, 5)
    depth.text = depth_text(0)
    # The window holds 5 while the rules say 1; Prometheus keeps what the scaler exported.
    wait_for(lambda: sum(d["value"] == "0" for d in decisions(first)) >= 3, timeout=20,
             what="three evaluations of the empty queue")
    prometheus.wait_for_value('taskqueue_scaler_recommended_replicas{job="taskqueue-scaler"}',
                              lambda values: values == [0.0], timeout=10)
    last_high = max(d["time"] for d in decisions(first) if d["value"] == "45")
    first.kill()  # a crash: nothing saved on the way out
    assert desired_count(ecs, MOTO_SERVICE) == 5

    second = ScalerProcess(config, port)
    scalers.append(second)
    dropped = until_desired(ecs, 1, timeout=40)
    # As if it had never stopped: the drop comes one window (8 s) after the last high
    # recommendation. Forgetting would drop at once after the restart (~5 s after it);
    # the no-history default would hold a whole window from the restart (>= 13 s).
    assert 6.5 <= dropped - last_high <= 11.5, (dropped - last_high, second.text()[-2000:])
    assert f"history of 1 services read back from Prometheus: {NAME}" in second.text()
    assert decisions(second)[0]["reason"] == "ScaleDownStabilized"


def test_a_restart_keeps_the_rate_policys_steps(
    tmp_path: Path, make_prometheus: Callable[..., PrometheusServer],
) -> None:
    # The scaler's own series as Prometheus would have scraped them: desired 1, then the
    # scaler's step to 2 (+1 per 60 s allowed), rules asking for 5 all along.
    scaler_series = MetricsTarget(
        '# TYPE taskqueue_scaler_recommended_replicas gauge\n'
        'taskqueue_scaler_recommended_replicas{service="w"} 5\n'
        '# TYPE taskqueue_scaler_current_replicas gauge\n'
        'taskqueue_scaler_current_replicas{service="w",state="desired"} 1\n')
    try:
        prometheus = make_prometheus(jobs={"taskqueue-scaler": [scaler_series.address]})
        prometheus.wait_for_value("taskqueue_scaler_current_replicas", lambda v: v == [1.0])
        scaler_series.text = scaler_series.text.replace("} 1\n", "} 2\n")
        prometheus.wait_for_value("taskqueue_scaler_current_replicas", lambda v: v == [2.0])
        config = parse_config(f"""
prometheus: {{url: '{prometheus.url}'}}
interval: 1s
services:
  - name: w
    backend: {{cluster: c, service: s, region: r}}
    min: 1
    max: 10
    rules: [{{type: per_worker, query: x, target: 1}}]
    behavior:
      scale_up: {{policies: [{{type: workers, value: 1, period: 60s}}]}}
""", {})
        now = time.time()
        with PrometheusClient(config.prometheus) as client:
            restored = restore(config, client.query_range, now)
    finally:
        scaler_series.close()
    history = restored.histories["w"]
    assert restored.restored == ("w",) and restored.error is None
    assert history.desired == 2
    assert [d for _, d in history.changes] == [1]
    assert {r for _, r in history.recommendations} == {5}
    # The restarted scaler wants 5: the step already taken this period leaves none.
    service = config.services[0]
    decision = decide(Inputs((5,)), Counts(2, 2, 0), service.limits, service.behavior,
                      history, now + 1)
    assert (decision.count, decision.reason.value) == (2, "ScaleUpLimited")


def test_a_broker_outage_holds_a_rule_that_reads_empty_as_zero(
    tmp_path: Path, own_redis: RedisServer, moto_ecs: tuple[str, Any],
    make_prometheus: Callable[..., PrometheusServer], scalers: list[ScalerProcess],
) -> None:
    moto, ecs = moto_ecs
    own_redis.start()
    exporter = Exporter(tmp_path, "--broker-url", own_redis.url, "--queue", "default",
                        "--no-events")
    try:
        prometheus = make_prometheus(jobs={"taskqueue-exporter": [f"127.0.0.1:{exporter.port}"]},
                                     rule_files=[RECORDING])
        # The demo's rule: the shared backlog series, a queue that vanishes reads as 0.
        config = write_config(tmp_path, prometheus.url, moto, window="0s",
                              query="queue:taskqueue_backlog:sum")
        config.write_text(config.read_text().replace("target: 10}", "target: 10,\n"
                                                     "         on_empty: zero}"))
        app = create_app(own_redis.url)
        for _ in range(45):
            app.send_task("tests.add", args=(1, 2), queue="default")
        scaler = ScalerProcess(config, free_port())
        scalers.append(scaler)
        until_desired(ecs, 5)
        own_redis.stop()
        prometheus.wait_for_value("taskqueue_exporter_scrape_success", lambda v: v == [0.0],
                                  timeout=20)
        seen = len(decisions(scaler))
        wait_for(lambda: sum(d["reason"] == "NoData" for d in decisions(scaler)[seen:]) >= 4,
                 timeout=20, what="four evaluations during the outage")
        assert desired_count(ecs, MOTO_SERVICE) == 5
        assert all(d["new"] == 5 for d in decisions(scaler)[seen:]), decisions(scaler)[seen:]
        assert ("on_empty: zero does not apply: health_query returned no series (an exporter "
                "is down, gone or failing?)") in scaler.text()
        errors = value(scaler.metrics(), "taskqueue_scaler_errors_total", service=NAME,
                       kind="no_data")
        assert errors is not None and errors >= 4
    finally:
        exporter.stop()
    # The exporter gone too: no health series at all, still held.
    seen = len(decisions(scaler))
    wait_for(lambda: sum(d["reason"] == "NoData" for d in decisions(scaler)[seen:]) >= 2,
             timeout=20, what="two evaluations without the exporter")
    assert desired_count(ecs, MOTO_SERVICE) == 5


def test_an_operators_pause_tag_and_manual_count_are_respected(
    tmp_path: Path, depth: MetricsTarget, moto_ecs: tuple[str, Any],
    make_prometheus: Callable[..., PrometheusServer], scalers: list[ScalerProcess],
) -> None:
    moto, ecs = moto_ecs
    prometheus = make_prometheus(jobs={"depth": [depth.address]})
    scaler = ScalerProcess(write_config(tmp_path, prometheus.url, moto), free_port())
    scalers.append(scaler)
    depth.text = depth_text(15)
    until_desired(ecs, 2)
    arn = ecs.describe_services(cluster=CLUSTER, services=[MOTO_SERVICE])["services"][0][
        "serviceArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": PAUSE_TAG, "value": "true"}])
    ecs.update_service(cluster=CLUSTER, service=MOTO_SERVICE, desiredCount=7)
    wait_for(lambda: value(scaler.metrics(), "taskqueue_scaler_paused", service=NAME) == 1,
             timeout=10, what="the scaler to see the pause")
    seen = len(decisions(scaler))
    wait_for(lambda: sum(d["reason"] == "Paused" and d["desired"] == 7
                         for d in decisions(scaler)[seen:]) >= 4,
             timeout=15, what="four paused evaluations at the operator's 7")
    assert desired_count(ecs, MOTO_SERVICE) == 7
    assert (f"service={NAME} paused by the tag {PAUSE_TAG}=true: held where it is (7)"
            in scaler.text())
    # A count in the tag holds the service at that count.
    ecs.tag_resource(resourceArn=arn, tags=[{"key": PAUSE_TAG, "value": "4"}])
    until_desired(ecs, 4, timeout=10)
    ecs.untag_resource(resourceArn=arn, tagKeys=[PAUSE_TAG])
    until_desired(ecs, 2, timeout=20)
    assert f"service={NAME} resumed" in scaler.text()
    assert value(scaler.metrics(), "taskqueue_scaler_paused", service=NAME) == 0


def test_of_two_instances_with_a_lease_one_acts_and_the_other_takes_over(
    tmp_path: Path, depth: MetricsTarget, moto_ecs: tuple[str, Any], redis_server: RedisServer,
    make_prometheus: Callable[..., PrometheusServer], scalers: list[ScalerProcess],
) -> None:
    moto, ecs = moto_ecs
    prometheus = make_prometheus(jobs={"depth": [depth.address]})
    lease = (f"lease: {{type: redis, url: 'redis://127.0.0.1:{redis_server.port}/0', "
             f"name: lease-{free_port()}, ttl: 3s}}")
    # +1 per 30 s: two instances acting on their own would take two steps at once.
    config = write_config(tmp_path, prometheus.url, moto, extra=lease,
                          up="{type: workers, value: 1, period: 30s}")
    depth.text = depth_text(45)
    first = ScalerProcess(config, free_port())
    scalers.append(first)
    wait_for(lambda: value(first.metrics(), "taskqueue_scaler_lease_held") == 1, timeout=15,
             what="the first instance to hold the lease")
    until_desired(ecs, 2)
    second = ScalerProcess(config, free_port())
    scalers.append(second)
    wait_for(lambda: sum(d["value"] == "45" for d in decisions(second)) >= 4, timeout=15,
             what="four evaluations of the second instance")
    assert value(second.metrics(), "taskqueue_scaler_lease_held") == 0
    assert "standby: the lease is held by" in second.text()
    assert "applied=true" not in second.text()
    assert desired_count(ecs, MOTO_SERVICE) == 2  # one step, by the holder alone
    # The rules of both are still evaluated and exported.
    assert value(second.metrics(), "taskqueue_scaler_rule_recommendation", service=NAME,
                 rule="backlog") == 5

    first.kill()
    killed = time.monotonic()
    wait_for(lambda: value(second.metrics(), "taskqueue_scaler_lease_held") == 1, timeout=15,
             what="the second instance to take the lease")
    took = time.monotonic() - killed
    # The ttl (3 s) plus one interval (1 s), and the time to see it.
    assert took <= 5.5, took
    assert "lease held by this instance" in second.text()


def test_the_default_health_query_notices_one_of_two_exporters_gone_or_failing(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    from scaler.config import DEFAULT_HEALTH_QUERY

    healthy = "taskqueue_exporter_scrape_success 1\n"
    images, emails = MetricsTarget(healthy), MetricsTarget(healthy)
    try:
        prometheus = make_prometheus(jobs={"taskqueue-exporter": [images.address,
                                                                  emails.address]})
        prometheus.wait_for_value(DEFAULT_HEALTH_QUERY, lambda v: v == [2.0], timeout=20)
        # One exporter cannot read its broker: not healthy.
        emails.text = "taskqueue_exporter_scrape_success 0\n"
        prometheus.wait_for_value(DEFAULT_HEALTH_QUERY, lambda v: v == [], timeout=20)
        emails.text = healthy
        # One exporter gone (its series stale at once): `min` over the one left would still
        # say 1; the default compares with the exporters seen in the last 10 minutes.
        emails.close()
        prometheus.wait_for_value("count(taskqueue_exporter_scrape_success)",
                                  lambda v: v == [1.0], timeout=20)
        assert prometheus.query(DEFAULT_HEALTH_QUERY) == []
        assert prometheus.query("min(taskqueue_exporter_scrape_success)") == [1.0]
    finally:
        images.close()
