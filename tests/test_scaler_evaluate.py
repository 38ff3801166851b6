"""From query results to decision inputs: table tests."""

from __future__ import annotations

import math

import pytest

from scaler.config import parse_config
from scaler.decision import Counts, Inputs
from scaler.evaluate import RuleOutcome, evaluate, queries_of
from scaler.prometheus import QueryError

CONFIG = """
prometheus: {url: 'http://p:9090'}
services:
  - name: w
    backend: {cluster: c, service: s, region: r}
    min: 0
    max: 50
    activation_query: activation
    scale_down_guard: guard
    rules:
      - {name: backlog, type: per_worker, query: backlog, target: 10}
      - {name: drain, type: drain, query: backlog, throughput_query: throughput,
         arrival_query: arrival, drain_within: 100s, startup_delay: 0s}
      - {name: age, type: threshold, query: age, above: 60, below: 5}
      - {name: several, type: expression, query: several, aggregate: max}
"""
SERVICE = parse_config(CONFIG, {}).services[0]
COUNTS = Counts(desired=3, running=2, pending=1)
GOOD = {"backlog": [95.0], "throughput": [0.5], "arrival": [1.0], "age": [30.0],
        "several": [2.0, 4.0], "activation": [1.0], "guard": [1.0]}


def test_queries_are_listed_once():
    assert queries_of(SERVICE) == ["backlog", "throughput", "arrival", "age", "several",
                                   "activation", "guard"]


def test_every_rule_recommends():
    evaluation = evaluate(SERVICE, GOOD, COUNTS)
    assert evaluation.rules == (
        RuleOutcome("backlog", 95.0, 10),
        RuleOutcome("drain", 95.0, 4),  # (95 + 1 * 100) / (0.5 * 100) = 3.9
        RuleOutcome("age", 30.0, 3),  # between the bounds: hold at desired
        RuleOutcome("several", 4.0, 4),
    )
    assert evaluation.inputs == Inputs((10, 4, 3, 4), failed=False, activation=True, guard=True)
    assert evaluation.errors == ()


@pytest.mark.parametrize(
    ("query", "result", "kind", "message"),
    [
        ("backlog", QueryError("timeout", "prometheus did not answer within 5s", query="backlog"),
         "timeout", "rule backlog: prometheus did not answer within 5s"),
        ("backlog", [], "no_data", "rule backlog: query returned no series"),
        ("backlog", [math.nan], "not_finite", "rule backlog: query returned nan"),
        ("age", [1.0, 2.0], "several_series",
         "rule age: query returned 2 series; set aggregate: sum or max, or narrow it"),
        ("throughput", [0.0], "bad_value", "rule drain: throughput must be > 0 (got 0)"),
    ],
)
def test_a_failed_rule_fails_the_service(query, result, kind, message):
    evaluation = evaluate(SERVICE, {**GOOD, query: result}, COUNTS)
    assert evaluation.inputs.failed
    assert (kind, message) in evaluation.errors


def test_activation_and_guard_are_conditions():
    evaluation = evaluate(SERVICE, {**GOOD, "activation": [0.0], "guard": []}, COUNTS)
    assert (evaluation.inputs.activation, evaluation.inputs.guard) == (False, False)
    assert not evaluation.inputs.failed


def test_a_guard_that_cannot_be_read_blocks_scale_in_without_failing_the_service():
    error = QueryError("http", "prometheus returned HTTP 500", query="guard")
    evaluation = evaluate(SERVICE, {**GOOD, "guard": error}, COUNTS)
    assert evaluation.inputs.guard is False
    assert not evaluation.inputs.failed
    assert evaluation.errors == (("http", "scale_down_guard: prometheus returned HTTP 500"),)


def test_a_failed_activation_query_fails_the_service():
    error = QueryError("unreachable", "cannot reach prometheus", query="activation")
    evaluation = evaluate(SERVICE, {**GOOD, "activation": error}, COUNTS)
    assert evaluation.inputs.failed
    assert evaluation.errors == (("unreachable", "activation_query: cannot reach prometheus"),)
