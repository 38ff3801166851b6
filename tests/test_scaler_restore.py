"""Reading the scaler's history back from its own series: the pure part, by table."""

from __future__ import annotations

from scaler.config import parse_config
from scaler.decision import Counts, Inputs, decide, restart_history
from scaler.prometheus import QueryError, RangeSeries
from scaler.restore import histories_from, queries, restore

CONFIG = """
prometheus: {url: 'http://p:9090'}
interval: 15s
services:
  - name: "w-{{ item }}"
    for_each: [a, b]
    backend: {cluster: c, service: "s-{{ item }}", region: us-east-1}
    min: 1
    max: 20
    rules: [{type: per_worker, query: x, target: 1}]
    behavior:
      tolerance: 0
      scale_down:
        stabilization_window: 60s
        policies: [{type: percent, value: 100, period: 5m}]
"""
CONFIG_OBJECT = parse_config(CONFIG, {})
SERVICES = CONFIG_OBJECT.services


def series(service: str, points: list[tuple[float, float]]) -> RangeSeries:
    return RangeSeries({"service": service}, tuple(points))


def test_queries_pick_the_scalers_own_series():
    assert queries("") == (
        "max by (service) (taskqueue_scaler_recommended_replicas{})",
        'max by (service) (taskqueue_scaler_current_replicas{state="desired"})')
    assert queries('job="taskqueue-scaler"') == (
        'max by (service) (taskqueue_scaler_recommended_replicas{job="taskqueue-scaler"})',
        'max by (service) (taskqueue_scaler_current_replicas{state="desired", '
        'job="taskqueue-scaler"})')


def test_history_from_the_series_and_the_default_for_a_service_without_any():
    found = histories_from(
        SERVICES, [series("w-a", [(700, 10), (715, 10), (730, 3)])],
        [series("w-a", [(700, 2), (715, 10), (730, 10)])], now=745.0)
    a = found.histories["w-a"]
    assert a.recommendations == ((700, 10), (715, 10), (730, 3), (745.0, 3))
    assert a.changes == ((715, 8),) and a.desired == 10 and a.hold is None
    assert found.histories["w-b"] == restart_history(745.0, SERVICES[1].behavior)
    assert found.restored == ("w-a",)


def test_a_gap_longer_than_the_window_still_holds_the_last_recommendation():
    # The scaler was down 250 s; its last recommendation, 10, left the 60 s window long
    # ago. What the rules said meanwhile is unknown: 10 is taken to have held until now.
    found = histories_from(SERVICES, [series("w-a", [(500, 10)])], [series("w-a", [(500, 10)])],
                           now=750.0)
    decision = decide(Inputs((1,)), Counts(10, 10, 0), SERVICES[0].limits,
                      SERVICES[0].behavior, found.histories["w-a"], 765.0)
    assert (decision.count, decision.reason.value) == (10, "ScaleDownStabilized")
    later = decide(Inputs((1,)), Counts(10, 10, 0), SERVICES[0].limits, SERVICES[0].behavior,
                   decision.history, 811.0)
    assert later.count == 1


def test_prometheus_unreachable_gives_every_service_the_default():
    def failing(promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        raise QueryError("unreachable", "cannot reach prometheus", query=promql)

    result = restore(CONFIG_OBJECT, failing, 1000.0)
    assert result.error == "cannot reach prometheus" and result.restored == ()
    assert result.histories == {s.name: restart_history(1000.0, s.behavior) for s in SERVICES}


def test_restore_asks_for_the_longest_window_or_period_at_the_interval():
    asked = []

    def answer(promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        asked.append((start, end, step))
        return []

    restore(CONFIG_OBJECT, answer, 1000.0)
    assert asked == [(700.0, 1000.0, 15.0), (700.0, 1000.0, 15.0)]  # the 5 min period
